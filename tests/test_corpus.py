"""The bad-input corpus: every case gets its exit code, one line on stderr, no traceback, no
orphaned child process and no stray file (in the working directory or in TMPDIR).

Cases are generated into a private directory per case; parity runs there as a user would,
through the hostile-input harness (hostile.run_hostile: a private TMPDIR, a marker in the
environment that finds every surviving child, the input files' bytes watched).
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from onnx import helper

from helpers import MODELS, copy_cnn, save_model, slow_matmul_model, tensor, to_mnn
from hostile import RUNNING, run_hostile
from parity.core.errors import ExitCode

BAD, BACKEND, USAGE, PASS, MISMATCH = (ExitCode.MODEL_OR_INPUT, ExitCode.BACKEND, ExitCode.USAGE,
                                       ExitCode.PASS, ExitCode.MISMATCH)


@dataclass
class Case:
    name: str
    build: Callable[[Path], list]  # writes files into the case dir, returns the parity arguments
    code: int
    fragment: str = ""  # must appear in the one error line
    error_line: bool = True  # exit codes 0/1 print a report, not an error line


def _copy(d: Path, *names) -> None:
    for name in names:
        shutil.copy(MODELS / name, d / name)


def _transformer(d):
    _copy(d, "transformer.onnx", "transformer.mnn")
    return ["transformer.onnx", "transformer.mnn"]


def _with_inputs(**arrays):
    def build(d):
        args = copy_cnn(d)
        np.savez(d / "in.npz", **arrays)
        return ["check", *args, "--inputs", "in.npz"]
    return build


def _reference_bytes(name, data: bytes):
    def build(d):
        _copy(d, "cnn.mnn")
        (d / name).write_bytes(data)
        return ["check", name, "cnn.mnn"]
    return build


def _candidate_bytes(name, data: bytes):
    def build(d):
        _copy(d, "cnn.onnx")
        (d / name).write_bytes(data)
        return ["check", "cnn.onnx", name]
    return build


def _relu_pair(d, input_name="a", shape=(1, 4)):
    onnx_path = save_model([helper.make_node("Relu", [input_name], ["y"])], [tensor(input_name, shape=list(shape))],
                           [tensor("y", shape=list(shape))], d / f"relu_{input_name}.onnx")
    return onnx_path, to_mnn(onnx_path)


def _names_differ(d):
    a, _ = _relu_pair(d, "a")
    _, b_mnn = _relu_pair(d, "b")
    return ["check", a.name, b_mnn.name]


def _maxpool_no_strides(d):
    onnx_path = save_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])],
                           [tensor("x", shape=[1, 3, 8, 8])], [tensor("y", shape=[1, 3, 7, 7])], d / "pool.onnx")
    to_mnn(onnx_path)
    return onnx_path.name, "pool.mnn"


def _crash_at_run(d):
    return ["check", *_maxpool_no_strides(d)]


def _crash_at_load(d):
    return ["check", *_maxpool_no_strides(d), "--mnn-static-shapes"]


def _crash_in_converter(d):
    save_model([helper.make_node("Max", ["x"], ["y"])], [tensor("x", shape=[2, 3])], [tensor("y", shape=[2, 3])],
               d / "max1.onnx")
    return ["convert", "max1.onnx"]


def _nan_outputs(d):
    """Sqrt of negative inputs: NaN on both sides, which matches (NaN == NaN)."""
    onnx_path = save_model([helper.make_node("Sqrt", ["x"], ["y"])], [tensor("x", shape=[2, 8])],
                           [tensor("y", shape=[2, 8])], d / "sqrt.onnx")
    to_mnn(onnx_path)
    return ["check", "sqrt.onnx", "sqrt.mnn"]


def _inf_outputs(d):
    onnx_path = save_model([helper.make_node("Reciprocal", ["x"], ["y"])], [tensor("x", shape=[2, 8])],
                           [tensor("y", shape=[2, 8])], d / "recip.onnx")
    to_mnn(onnx_path)
    np.savez(d / "in.npz", x=np.array([[0.0, 1, 2, 4, -1, -2, 0.5, 8]] * 2, np.float32))
    return ["check", "recip.onnx", "recip.mnn", "--inputs", "in.npz"]


def _nan_allowed(d):
    args = copy_cnn(d)
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(d / "in.npz", x=x)
    return ["check", *args, "--inputs", "in.npz", "--allow-nonfinite", "--no-diagnose"]


def _out_file(flag, sub="missing/dir/out"):
    def build(d):
        return ["check", *copy_cnn(d), flag, sub]
    return build


def _report_is_dir(flag):
    def build(d):
        (d / "adir").mkdir()
        return ["check", *copy_cnn(d), flag, "adir"]
    return build


def _repro_is_file(d):
    (d / "afile").write_text("x")
    return ["check", *copy_cnn(d), "--repro", "afile"]


def _convert_output_missing_dir(d):
    _copy(d, "cnn.onnx")
    return ["convert", "cnn.onnx", "-o", "no/such/cnn.mnn"]


def _compare(d, ref, cand, *extra):
    np.save(d / "ref.npy", ref)
    cand_path = d / ("cand.bin" if not isinstance(cand, np.ndarray) else "cand.npy")
    if isinstance(cand, np.ndarray):
        np.save(cand_path, cand)
    else:
        cand_path.write_bytes(cand)
    return ["compare", "ref.npy", cand_path.name, *extra]


RNG = np.random.default_rng(0)
CNN_BYTES = (MODELS / "cnn.mnn").read_bytes()
ONNX_BYTES = (MODELS / "cnn.onnx").read_bytes()

CASES = [
    # model files
    Case("missing reference", lambda d: ["check", "nope.onnx", *(copy_cnn(d)[1:])], BAD, "does not exist"),
    Case("missing candidate", lambda d: ["check", copy_cnn(d)[0], "nope.mnn"], BAD, "does not exist"),
    Case("empty onnx", _reference_bytes("e.onnx", b""), BAD, "empty"),
    Case("empty mnn", _candidate_bytes("e.mnn", b""), BAD, "empty"),
    Case("random onnx", _reference_bytes("r.onnx", RNG.bytes(3000)), BAD, "not a valid ONNX model"),
    Case("random mnn", _candidate_bytes("r.mnn", RNG.bytes(3000)), BAD, "not a readable MNN model"),
    Case("truncated onnx", _reference_bytes("t.onnx", ONNX_BYTES[: len(ONNX_BYTES) // 2]), BAD, "t.onnx"),
    Case("truncated mnn", _candidate_bytes("t.mnn", CNN_BYTES[: len(CNN_BYTES) // 3]), BAD, "t.mnn"),
    Case("text as onnx", _reference_bytes("notes.onnx", b"hello, this is not a model\n" * 20), BAD, "notes.onnx"),
    Case("onnx renamed mnn", _candidate_bytes("renamed.mnn", ONNX_BYTES), BAD, "ONNX model with an .mnn name"),
    Case("mnn renamed onnx", _reference_bytes("renamed.onnx", CNN_BYTES), BAD, "renamed.onnx"),
    Case("directory as onnx", lambda d: ((d / "m.onnx").mkdir(), ["check", "m.onnx", *(copy_cnn(d)[1:])])[1], BAD, "directory"),
    Case("directory as mnn", lambda d: ((d / "m.mnn").mkdir(), ["check", copy_cnn(d)[0], "m.mnn"])[1], BAD, "directory"),
    Case("unknown suffix", lambda d: ((d / "m.tflite").write_bytes(b"x"), ["check", copy_cnn(d)[0], "m.tflite"])[1], USAGE, "suffix"),
    Case("one model only", lambda d: ["check", copy_cnn(d)[0]], USAGE, "at least two models"),
    Case("four models", lambda d: ["check", *copy_cnn(d), *copy_cnn(d)], USAGE, "two or three models"),
    # names
    Case("input names differ", _names_differ, BAD, "['a']"),
    Case("inputs missing a name", lambda d: (np.savez(d / "i.npz", src=np.zeros((1, 64, 32), np.float32)),
                                             ["check", *_transformer(d), "--inputs", "i.npz"])[1], BAD, "missing ['src_mask']"),
    Case("inputs unknown name", _with_inputs(x=np.zeros((1, 3, 32, 32), np.float32), z=np.zeros(2)), BAD, "unknown ['z']"),
    Case("shape unknown input", lambda d: ["check", *copy_cnn(d), "--shape", "nope=1x2"], BAD, "'nope'"),
    Case("shape malformed", lambda d: ["check", *copy_cnn(d), "--shape", "x=1xABC"], USAGE, "--shape"),
    Case("shape conflicts", lambda d: ["check", *copy_cnn(d), "--shape", "x=1x3x31x32"], BAD, "conflicts"),
    # shapes, dtypes, ranks in --inputs
    Case("inputs wrong shape", _with_inputs(x=np.zeros((1, 3, 30, 32), np.float32)), BAD, "1x3x32x32"),
    Case("inputs wrong rank", _with_inputs(x=np.zeros((3, 32, 32), np.float32)), BAD, "rank 4"),
    Case("inputs scalar", _with_inputs(x=np.float32(1.0)), BAD, "rank 4"),
    Case("inputs float64", _with_inputs(x=np.zeros((1, 3, 32, 32), np.float64)), BAD, "float64"),
    Case("inputs int32", _with_inputs(x=np.zeros((1, 3, 32, 32), np.int32)), BAD, "int32"),
    Case("inputs not npz", lambda d: ((d / "in.npz").write_text("no"), ["check", *copy_cnn(d), "--inputs", "in.npz"])[1], BAD, "in.npz"),
    Case("inputs single npy", lambda d: (np.save(d / "in.npy", np.zeros(3)), ["check", *copy_cnn(d), "--inputs", "in.npy"])[1], BAD, "np.savez"),
    Case("inputs missing file", lambda d: ["check", *copy_cnn(d), "--inputs", "nope.npz"], BAD, "does not exist"),
    Case("inputs directory", lambda d: ((d / "dir.npz").mkdir(), ["check", *copy_cnn(d), "--inputs", "dir.npz"])[1], BAD, "directory"),
    Case("inputs with shape option", lambda d: (np.savez(d / "i.npz", x=np.zeros((1, 3, 32, 32), np.float32)),
                                                ["check", *copy_cnn(d), "--inputs", "i.npz", "--shape", "x=1x3x32x32"])[1],
         USAGE, "--shape"),
    # NaN and Inf
    Case("nan input", _with_inputs(x=np.full((1, 3, 32, 32), np.nan, np.float32)), BAD, "NaN"),
    Case("inf input", _with_inputs(x=np.full((1, 3, 32, 32), np.inf, np.float32)), BAD, "NaN/Inf"),
    # ORT propagates a NaN pixel to every logit; MNN's ReLU/pooling swallow it: a real difference
    Case("nan input allowed", _nan_allowed, MISMATCH, error_line=False),
    Case("nan outputs on both sides", _nan_outputs, PASS, error_line=False),
    Case("inf outputs on both sides", _inf_outputs, PASS, error_line=False),
    # crashes and timeouts
    Case("crash at run", _crash_at_run, BACKEND, "SIGFPE"),
    Case("crash at load", _crash_at_load, BACKEND, "while loading pool.mnn"),
    Case("crash in converter (Max)", _crash_in_converter, BACKEND, "while converting max1.onnx"),
    # (LogSoftmax without axis also crashes MNN's converter, but not on every run: left out)
    Case("timeout", lambda d: ["check", *(slow_matmul_model(d)[1].name,) * 2, "--timeout", "0.05",
                               "--mnn-threads", "1", "--no-diagnose"], BACKEND, "--timeout"),
    Case("timeout in converter", lambda d: (_copy(d, "cnn.onnx"), ["convert", "cnn.onnx", "--timeout", "0.001"])[1],
         BACKEND, "within"),
    # report paths
    Case("json missing dir", _out_file("--json"), BAD, "--json"),
    Case("json is a dir", _report_is_dir("--json"), BAD, "directory"),
    Case("html missing dir", _out_file("--html"), BAD, "--html"),
    Case("junit is a dir", _report_is_dir("--junit"), BAD, "--junit"),
    Case("model explorer missing dir", _out_file("--model-explorer"), BAD, "--model-explorer"),
    Case("save inputs missing dir", _out_file("--save-inputs", "no/in.npz"), BAD, "--save-inputs"),
    Case("repro is a file", _repro_is_file, BAD, "--repro"),
    Case("convert output missing dir", _convert_output_missing_dir, BAD, "-o"),
    Case("convert needs onnx", lambda d: ["convert", copy_cnn(d)[1]], USAGE, "takes an .onnx model"),
    # compare
    Case("compare raw without dtype", lambda d: _compare(d, np.zeros((2, 3), np.float32), b"\0" * 24), USAGE, "--dtype"),
    Case("compare raw wrong shape", lambda d: _compare(d, np.ones((2, 3), np.float32), b"\0" * 24, "--dtype",
                                                      "float32", "--shape", "4x4"), BAD, "needs 16"),
    Case("compare missing", lambda d: (np.save(d / "ref.npy", np.ones(3)), ["compare", "ref.npy", "nope.npy"])[1], BAD,
         "does not exist"),
    Case("compare usage zeros", lambda d: _compare(d, np.ones((2, 3), np.float32), np.zeros(6, np.float32)), MISMATCH,
         error_line=False),
]


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path):
    case_dir = tmp_path / "work"
    case_dir.mkdir()
    args = case.build(case_dir)
    if args and args[0] not in ("check", "convert", "compare", "sweep", "inspect"):
        args = ["check", *args]
    outcome = run_hostile(*args, cwd=case_dir, inputs=list(case_dir.iterdir()), timeout=300)
    outcome.assert_clean(case.code, *([case.fragment] if case.error_line else []), limit=300,
                         error_line=case.error_line)


def test_sigint_during_a_run_stops_cleanly(tmp_path):
    """Ctrl-C reaches the whole foreground process group: parity and its MNN child."""
    case_dir = tmp_path / "work"
    case_dir.mkdir()
    nodes, previous = [], "x"
    for i in range(30):
        nodes.append(helper.make_node("Relu" if i % 2 else "Neg", [previous], [f"t{i}"]))
        previous = f"t{i}"
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 32, 256, 256])], [tensor(previous, shape=[1, 32, 256, 256])],
                           case_dir / "big.onnx")
    to_mnn(onnx_path)
    # the MNN run has its first feed: parity's handlers are in place and the work is under way
    outcome = run_hostile("check", "big.onnx", "big.mnn", "--layers", "--isolate", "all", "--max-memory", "64M",
                          "--json", "report.json", cwd=case_dir, timeout=60,
                          signal_when=(RUNNING, signal.SIGINT), signal_group=True)
    outcome.assert_clean(ExitCode.INTERRUPTED, "Interrupted", limit=60)
    assert not (case_dir / "report.json").exists()
