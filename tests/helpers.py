"""Shared test helpers: run the real CLI, build tiny ONNX models, convert them with MNN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


# Signals the tests send to parity, or that a terminal would: a test's child starts with these at
# their default disposition whatever the test runner inherited (under `nohup` SIGHUP is ignored,
# in a background job of a non-interactive shell SIGINT is; an ignored disposition survives exec,
# and parity rightly keeps a signal ignored at its start ignored).
SENT_SIGNALS = ("SIGHUP", "SIGINT", "SIGTERM", "SIGQUIT")


def default_signals() -> None:
    """``preexec_fn`` for a child that will be sent signals: their default dispositions."""
    import signal

    for name in SENT_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def wait_until(ready, proc, what: str, timeout: float = 120.0, poll: float = 0.01):
    """Poll ``ready()`` until it returns something true, and return that; fail the test when
    ``proc`` ends first or ``timeout`` passes. A readiness marker instead of a fixed sleep: a
    loaded machine makes a process slower, never the wait wrong."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(poll)


def run_parity(*args, cwd=None, env=None, timeout=600) -> Result:
    """Run ``python -m parity`` as a user would, in a real child process."""
    full_env = dict(os.environ)
    full_env.pop("PARITY_TRACEBACK", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "parity", *map(str, args)],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_json(*args, cwd=None, env=None, timeout=600) -> Result:
    """``parity *args --json -``: the report on stdout, read with ``Result.json()``. The one
    place the tests ask the CLI for its JSON on stdout."""
    return run_parity(*args, *JSON_STDOUT, cwd=cwd, env=env, timeout=timeout)


JSON_STDOUT = ("--json", "-")  # for harnesses that start parity themselves (hostile.run_hostile, Popen)


def report_json(report) -> dict:
    """A ``parity.Report`` as its JSON reads (what ``--json`` writes, less the ``rerun`` record
    a CLI run adds): lists, not tuples, so assertions read as they do on the CLI's JSON."""
    return json.loads(report.to_json())


def copy_cnn(directory) -> tuple[str, str]:
    """models/cnn.onnx and cnn.mnn copied into ``directory``; their names, relative to it."""
    for name in ("cnn.onnx", "cnn.mnn"):
        (Path(directory) / name).write_bytes((MODELS / name).read_bytes())
    return "cnn.onnx", "cnn.mnn"


def add_model(directory) -> tuple[Path, Path]:
    """y = x + x on a [1, 4] input, and its MNN conversion: the smallest real pair."""
    directory = Path(directory)
    onnx_path = save_model([helper.make_node("Add", ["x", "x"], ["y"])], [tensor("x", shape=[1, 4])],
                           [tensor("y", shape=[1, 4])], directory / "add.onnx")
    return onnx_path, to_mnn(onnx_path)


def assert_one_line_error(result: Result, code: int, *fragments: str) -> str:
    """Exit ``code``, stderr is one ``Error:`` line naming each fragment, and no traceback."""
    assert result.code == int(code), (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def save_model(nodes, inputs, outputs, path, initializers=(), opset=13) -> Path:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def tensor(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def to_mnn(onnx_path, mnn_path=None) -> Path:
    from parity.mnn.converter import convert

    mnn_path = Path(mnn_path or Path(onnx_path).with_suffix(".mnn"))
    convert(onnx_path, mnn_path)
    return mnn_path


def _edit_initializer(src, dst, name: str, edit) -> Path:
    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            array = numpy_helper.to_array(init).copy()
            edit(array)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            break
    else:
        raise KeyError(name)
    onnx.save(model, str(dst))
    return Path(dst)


def alter_initializer(src, dst, name: str, index=0, delta=1.0) -> Path:
    """Copy ``src`` with one element of initializer ``name`` moved by ``delta``."""
    def edit(array):
        array.flat[index] += delta
    return _edit_initializer(src, dst, name, edit)


def ort_run(onnx_path, feeds) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def alter_filter(src, dst, name: str, channel: int, scale=-1.0, shift=0.5) -> Path:
    """Copy ``src`` with output channel ``channel`` of weight ``name`` replaced by
    ``weight * scale + shift``: one conv filter altered."""
    def edit(array):
        array[channel] = array[channel] * scale + shift
    return _edit_initializer(src, dst, name, edit)


def crashing_model(directory) -> tuple[Path, Path]:
    """MaxPool without explicit strides: MNN 3.6 dies with SIGFPE when it runs it on x86
    (MNN_NOTES; on arm64 an integer division by zero does not trap)."""
    directory = Path(directory)
    onnx_path = save_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])],
                           [tensor("x", shape=[1, 3, 8, 8])], [tensor("y", shape=[1, 3, 7, 7])],
                           directory / "pool.onnx")
    return onnx_path, to_mnn(onnx_path)


def slow_matmul_model(directory, count: int = 12) -> tuple[Path, Path]:
    """An ONNX model and its MNN conversion that MNN takes seconds on with one thread (12
    MatMuls of 1024x1024) while ONNX Runtime takes a fraction of that: a step that really
    outlasts a small --timeout, since a reply that has arrived is always taken."""
    directory = Path(directory)
    weight = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((1024, 1024)) / 32).astype(np.float32), "w")
    nodes, previous = [], "x"
    for i in range(count):
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"m{i}"]))
        previous = f"m{i}"
    onnx_path = save_model(nodes, [tensor("x", shape=[1024, 1024])], [tensor(previous, shape=[1024, 1024])],
                           directory / "slow.onnx", initializers=[weight])
    return onnx_path, to_mnn(onnx_path, directory / "slow.mnn")


def require_arm64() -> None:
    """Skip (or, with PARITY_REQUIRE_ARM64=1 as tox's arm64 env sets, fail) when the emulated
    arm64 target is not set up."""
    import pytest

    from parity.core.errors import ParityError
    from parity.run.target_setup import arm64_python

    try:
        arm64_python()
    except ParityError as exc:
        if os.environ.get("PARITY_REQUIRE_ARM64") == "1":
            pytest.fail(f"the arm64 target is required here: {exc}")
        pytest.skip(str(exc))
