"""The verdict with evidence: conversion, runtime (and usage/export elsewhere), on real cases,
through ``parity.check``; the convert command's own behaviour through the CLI."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import parity
from helpers import MODELS, alter_filter, report_json, run_json, run_parity, save_model, tensor, to_mnn
from parity.core.errors import ExitCode


def _experiments(verdict):
    return [(e["experiment"], e.get("setting")) for e in verdict["evidence"]]


def test_mnn_from_an_altered_onnx_is_conversion_at_the_altered_op(tmp_path):
    altered = alter_filter(MODELS / "cnn.onnx", tmp_path / "altered.onnx", "conv3.weight", channel=2)
    mnn = to_mnn(altered, tmp_path / "cnn.mnn")
    checked = parity.check([MODELS / "cnn.onnx", mnn])
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    verdict = report["verdict"]
    assert verdict["kind"] == "conversion"
    divergence = report["comparisons"][0]["first_divergence"]
    assert divergence["nodes"][0] == "/conv3/Conv" and divergence["name"] in verdict["where"]
    fresh = next(e for e in verdict["evidence"] if e["experiment"] == "fresh conversion")
    assert fresh["passed"] is True
    # the divergence can be cut out: every figure is measured on it alone, fed ONNX Runtime's inputs
    assert verdict["evidence"][0]["measured"] == fresh["measured"] == "isolated"
    # the fresh conversion, under the same runtime, decided it: no runtime variant was needed
    kinds = [kind for kind, _ in _experiments(verdict)]
    assert kinds[:4] == ["baseline", "repeat", "amplified rounding", "fresh conversion"]
    assert "runtime variant" not in kinds
    # the altered filter is wrong on its own inputs: not amplified rounding
    rounding = next(e for e in verdict["evidence"] if e["experiment"] == "amplified rounding")
    assert rounding["result"] == "not amplified rounding" and "wrong on its own inputs" in rounding["reason"]
    assert verdict["next_steps"]


def test_exact_gelu_at_tight_tolerance_is_conversion_naming_the_approximation():
    checked = parity.check([MODELS / "transformer.onnx", MODELS / "transformer.mnn"],
                           tolerance=parity.Tolerance(atol=1e-6, rtol=1e-6))
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    verdict = report["verdict"]
    assert verdict["kind"] == "conversion"
    assert "useGeluApproximation" in verdict["summary"]
    divergence = report["comparisons"][0]["first_divergence"]
    assert "Erf" in divergence["op_type"] and "/blocks.0/act/" in divergence["nodes"][0]
    assert divergence["name"] in verdict["where"]
    decisive = next(e for e in verdict["evidence"] if e["experiment"] == "converter variant")
    assert decisive["passed"] and "useGeluApproximation 0" in decisive["setting"]


@pytest.fixture(scope="module")
def winograd_pair(tmp_path_factory):
    """Three 3x3 convolutions, 64 channels, unit-scale weights: MNN runs them via Winograd."""
    d = tmp_path_factory.mktemp("winograd")
    rng = np.random.default_rng(0)
    nodes, inits, previous, channels = [], [], "x", 8
    for i in range(3):
        w = (rng.standard_normal((64, channels, 3, 3)) / np.sqrt(channels * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        previous, channels = f"r{i}", 64
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 8, 48, 48])], [tensor(previous, shape=[1, 64, 48, 48])],
                           d / "convs.onnx", initializers=inits)
    return onnx_path, to_mnn(onnx_path)


def test_winograd_at_tight_tolerance_is_runtime_naming_winograd(winograd_pair, tmp_path):
    onnx_path, mnn_path = winograd_pair
    tight = parity.Tolerance(atol=1e-5, rtol=1e-5)
    default = parity.check([onnx_path, mnn_path])
    assert default.exit_code == ExitCode.PASS, default.verdict.summary  # not a bug at the default tolerance
    checked = parity.check([onnx_path, mnn_path], tolerance=tight, repro=tmp_path / "repro")
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    verdict = report["verdict"]
    assert verdict["kind"] == "runtime" and "Winograd" in verdict["summary"]
    assert report["comparisons"][0]["first_divergence"]["nodes"] == ["conv0", "relu0"]
    assert "r0" in verdict["where"]
    decisive = next(e for e in verdict["evidence"] if e.get("setting", "").startswith("Winograd off"))
    assert decisive["passed"] and decisive["scaled_error"] < 1e-5
    baseline = verdict["evidence"][0]
    assert baseline["experiment"] == "baseline" and baseline["scaled_error"] > 1e-4
    # the reproduction: the first conv alone, converted, with its inputs, and it reproduces
    repro = tmp_path / "repro"
    assert sorted(p.name for p in repro.iterdir()) == ["README.txt", "inputs.npz", "repro.mnn", "repro.onnx"]
    readme = (repro / "README.txt").read_text()
    assert "it reproduces" in readme and "parity check repro.onnx repro.mnn" in readme
    again = parity.check([repro / "repro.onnx", repro / "repro.mnn"], inputs=repro / "inputs.npz",
                         tolerance=tight, diagnose=False)
    assert again.exit_code == ExitCode.MISMATCH


def test_convert_then_check_leaves_only_the_model(tmp_path):
    import shutil

    for name in ("cnn", "transformer"):
        shutil.copy(MODELS / f"{name}.onnx", tmp_path / f"{name}.onnx")
        result = run_parity("convert", f"{name}.onnx", "-o", f"out_{name}.mnn", cwd=tmp_path)
        assert result.code == ExitCode.PASS, result.err
        assert "PASS" in result.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "out_cnn.mnn", "out_transformer.mnn",
                                                          "transformer.onnx"]


def test_convert_passes_converter_options_and_reports_them(tmp_path):
    import shutil

    shutil.copy(MODELS / "transformer.onnx", tmp_path / "t.onnx")
    exact = run_json("convert", "t.onnx", "--useGeluApproximation", "0", "--atol", "1e-5", "--rtol", "1e-5", cwd=tmp_path)
    assert exact.code == ExitCode.PASS, exact.err
    assert "converted with --useGeluApproximation 0" in exact.json()["notes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mnn", "t.onnx"]
    bad = run_parity("convert", "t.onnx", "--fp16", "--MNNModel", "x.mnn", cwd=tmp_path)
    assert bad.code == ExitCode.USAGE and "Traceback" not in bad.err


def test_convert_failure_is_a_clean_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage")
    result = run_parity("convert", junk, cwd=tmp_path)
    assert result.code in (ExitCode.MODEL_OR_INPUT, ExitCode.BACKEND)
    assert "Traceback" not in result.err and result.err.startswith("Error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_conversion_cancelled_midway_leaves_no_file_and_no_process(tmp_path):
    from parity.mnn.converter import start_conversion

    target = tmp_path / "out.mnn"
    conversion = start_conversion(MODELS / "transformer.onnx", target)
    private, pid = conversion._worker.dir, conversion._worker._proc.pid
    conversion.cancel()
    assert not target.exists() and not private.exists() and not _alive(pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="cancelled"):
        conversion.result()
    again = start_conversion(MODELS / "transformer.onnx", target)
    assert again.result().output == str(target) and target.stat().st_size > 0


def test_the_diagnosis_fresh_conversions_are_two_files_and_closing_removes_them(tmp_path):
    """Experiment d converts twice under other paths: the first starts with the diagnosis, the
    second when the first is collected (it converts while the first is measured)."""
    from parity.checking.experiments.conversion import Reconversions

    reconversions = Reconversions(MODELS / "cnn.onnx", 120.0)
    assert sorted(reconversions._running) == ["fresh"]
    fresh = reconversions.fresh()
    assert sorted(reconversions._running) == ["again"]
    again = reconversions.again()
    assert fresh.stat().st_size > 0 and again.stat().st_size > 0
    assert fresh.name != again.name and fresh.parent != again.parent
    workdir = reconversions.workdir
    reconversions.close()
    assert not workdir.exists()
    idle = Reconversions(MODELS / "cnn.onnx", 120.0, eager=False)
    assert not idle._running
    assert idle.fresh().stat().st_size > 0  # converted when asked for
    idle.close()


def test_the_second_conversion_starts_only_after_a_first_that_converted(tmp_path):
    from parity.checking.experiments.conversion import Reconversions
    from parity.core.errors import ParityError

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage")
    failing = Reconversions(junk, 60.0)
    with pytest.raises(ParityError):
        failing.fresh()
    assert not failing._running  # no second conversion of a model that does not convert
    failing.close()
    needless = Reconversions(MODELS / "transformer.onnx", 60.0)
    needless.fresh()
    pid = needless._running["again"]._worker._proc.pid
    needless.drop_again()  # the first decided nothing: the second stops at once
    assert not needless._running and not _alive(pid)
    needless.close()


def test_the_diagnosis_fresh_conversions_stop_when_closed_unfinished(tmp_path):
    from parity.checking.experiments.conversion import Reconversions

    reconversions = Reconversions(MODELS / "transformer.onnx", 120.0)
    pids = [c._worker._proc.pid for c in reconversions._running.values()]
    workdir = reconversions.workdir
    reconversions.close()
    assert pids and not any(_alive(pid) for pid in pids) and not workdir.exists()


def test_real_mnn_kernel_bug_is_runtime_at_that_op(tmp_path):
    """MNN 3.6's CPU Less kernel is wrong on ~20% of float elements (found by the ONNX node test
    test_less through scripts/onnx_node_sweep.py); here it sits inside a small model."""
    from onnx import TensorProto

    inits = [numpy_helper.from_array(np.array([0.1], np.float32), "shift"),
             numpy_helper.from_array(np.array([3.0], np.float32), "three")]
    onnx_path = save_model(
        [helper.make_node("Add", ["x", "shift"], ["xs"], name="add"),
         helper.make_node("Less", ["xs", "y"], ["lt"], name="less"),
         helper.make_node("Cast", ["lt"], ["ltf"], to=TensorProto.FLOAT, name="cast"),
         helper.make_node("Mul", ["ltf", "three"], ["out"], name="scale")],
        [tensor("x", shape=[3, 4, 5]), tensor("y", shape=[3, 4, 5])], [tensor("out", shape=[3, 4, 5])],
        tmp_path / "less.onnx", initializers=inits)
    checked = parity.check([onnx_path, to_mnn(onnx_path)])
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    verdict = report["verdict"]
    assert verdict["kind"] == "runtime", verdict
    divergence = report["comparisons"][0]["first_divergence"]
    assert divergence["nodes"] == ["less"] and "Less" in verdict["where"]
    numpy_check = next(e for e in verdict["evidence"] if e["experiment"] == "numpy reference of the MNN op")
    assert numpy_check["op"] == "BinaryOp" and numpy_check["parameters"]["opType"] == "LESS"
    assert numpy_check["numpy_op_vs_onnxruntime"] == 0 and numpy_check["kernel_vs_numpy_op"] > 0
    # every cheaper experiment was run first and changed nothing
    kinds = [e["experiment"] for e in verdict["evidence"]]
    # the fresh conversion reproduces the error (it is not the file), then the runtime variants
    assert [k for k in kinds if k != "amplified rounding"][:4] == ["baseline", "repeat", "fresh conversion",
                                                                   "runtime variant"]


def test_real_converter_bug_is_conversion_at_that_op(tmp_path):
    """MNN's converter drops ArgMax's select_last_index (found by the ONNX node tests
    test_argmax_*_select_last_index); after a Relu, ties make it matter."""
    from onnx import TensorProto

    onnx_path = save_model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("ArgMax", ["r"], ["idx"], axis=1, keepdims=0, select_last_index=1, name="argmax"),
         helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT, name="cast")],
        [tensor("x", shape=[8, 6])], [tensor("idxf", shape=[8])], tmp_path / "argmax.onnx")
    checked = parity.check([onnx_path, to_mnn(onnx_path)])
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    verdict = report["verdict"]
    assert verdict["kind"] == "conversion", verdict
    assert report["comparisons"][0]["first_divergence"]["nodes"] == ["argmax"] and "ArgMax" in verdict["where"]
    numpy_check = next(e for e in verdict["evidence"] if e["experiment"] == "numpy reference of the MNN op")
    assert numpy_check["op"] == "ArgMax" and numpy_check["kernel_vs_numpy_op"] == 0
    assert numpy_check["numpy_op_vs_onnxruntime"] > 0


def test_an_axis_given_as_its_default_counted_from_the_front_is_not_called_dropped(tmp_path):
    """TopK axis=1 on a rank-2 input is its default, the last axis (-1): the converted TopKV2
    needs no parameter for it. Tied values (after a Round) make the index orders differ; the
    cause may stay undetermined, but never 'the conversion drops axis'."""
    from onnx import TensorProto

    onnx_path = tmp_path / "topk.onnx"
    graph = helper.make_graph(
        [helper.make_node("Round", ["x"], ["rx"], name="round"),
         helper.make_node("TopK", ["rx", "k"], ["v", "i"], axis=1, name="topk")], "topk",
        [tensor("x", shape=[2, 8])],
        [tensor("v", shape=[2, 3]), helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3])],
        [numpy_helper.from_array(np.array([3], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, onnx_path)
    report = report_json(parity.check([onnx_path, to_mnn(onnx_path)], seed=0))
    verdict = report["verdict"]
    assert verdict["kind"] != "conversion" and "axis" not in verdict["summary"], verdict


def test_an_empty_output_is_compared_not_an_mnn_error(tmp_path):
    """MNN's read() raises on a tensor with a dim of 0 (an empty Slice): it was exit 4 with MNN's
    SystemError; the empty output is compared (nothing to differ) beside the model's others."""
    from onnx import TensorProto

    onnx_path = tmp_path / "empty.onnx"
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s", "s", "a"], ["y"], name="slice"),
         helper.make_node("Relu", ["x"], ["z"], name="relu")], "empty", [tensor("x", shape=[2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 0]), tensor("z", shape=[2, 8])],
        [numpy_helper.from_array(np.array([3], np.int64), "s"), numpy_helper.from_array(np.array([1], np.int64), "a")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, onnx_path)
    checked = parity.check([onnx_path, to_mnn(onnx_path)])
    outputs = {o["name"]: o for o in report_json(checked)["comparisons"][0]["outputs"]}
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    assert outputs["y"]["passed"] and outputs["y"]["reference_shape"] == outputs["y"]["candidate_shape"] == [2, 0]

