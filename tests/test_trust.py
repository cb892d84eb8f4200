"""Findings that never vanish and evidence that explains, end to end on real models (through
``parity.check``, and the real CLI where its output is the subject): masked transformers under
--layers, an output that fails while every paired layer passes, a layer-only finding, a .mnn
altered after conversion."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import parity
from helpers import MODELS, report_json, run_parity, save_model, tensor, to_mnn
from parity.core.errors import ExitCode

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
import transformer_models as tm  # noqa: E402  (needs torch)

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    d = tmp_path_factory.mktemp("encoders")
    return tm.build_masked_encoder(d / "clean"), tm.build_masked_encoder(d / "planted", planted=tm.K_PROJ)


def _check_without_warnings(models, capfd, **options):
    """parity.check, asserting that no warning reaches the user: none raised in this process
    (a numpy RuntimeWarning) and none written to stderr (here or by a child)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = parity.check(models, **options)
    # the warnings Python shows a user by default (a DeprecationWarning of a library is not shown)
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning,
                                                              ImportWarning, ResourceWarning))]
    assert not shown, [str(w.message) for w in shown]
    err = capfd.readouterr().err
    assert "Warning" not in err, err
    return report


def test_masked_layers_are_measured_over_their_unmasked_entries(encoders, capfd):
    clean, _ = encoders
    checked = _check_without_warnings([clean.onnx_path, clean.mnn_path], capfd, inputs=clean.inputs,
                                      layers=True, diagnose=False)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    layers = report_json(checked)["comparisons"][0]["layers"]
    masked = [layer for layer in layers if layer["masked"]]
    assert masked, "the attention scores + mask tensors hold -3.4e38 at padded keys"
    for layer in masked:
        # the tolerance scale is the unmasked entries' magnitude, not 3.4e38
        assert layer["reference_absmax"] < 1e3, layer
        assert layer["max_abs_diff"] is not None and layer["max_abs_diff"] < 1e-2, layer
        assert layer["passed"], layer


def test_planted_two_percent_change_is_found_in_its_projection(encoders, capfd):
    _, planted = encoders
    checked = _check_without_warnings([planted.onnx_path, planted.mnn_path], capfd, inputs=planted.inputs,
                                      layers=True, diagnose=False)
    assert checked.exit_code == ExitCode.MISMATCH
    divergence = report_json(checked)["comparisons"][0]["first_divergence"]
    assert divergence["name"] in tm.projection_tensors(planted.onnx_path, tm.K_PROJ).values, divergence
    assert divergence["introduced_here"] is True


def test_the_first_divergence_is_isolated_from_the_tensors_the_layer_capture_kept(encoders, monkeypatch):
    """Isolating the first divergence and its histogram take its inputs' and its own values from
    the layer capture: neither framework captures the model again for them."""
    from parity.checking import pipeline
    from parity.backends.mnn import MnnBackend
    from parity.backends.onnxruntime import OnnxRuntimeBackend

    captures = []
    session_for, begin_capture = OnnxRuntimeBackend._session_for, MnnBackend.begin_capture
    monkeypatch.setattr(OnnxRuntimeBackend, "_session_for",
                        lambda self, data, key, folder=None, initializers=None: captures.append(
                            ("onnxruntime", key[0])) or session_for(self, data, key, folder, initializers))
    monkeypatch.setattr(MnnBackend, "begin_capture",
                        lambda self, feeds, names, cache=True: captures.append(("mnn", tuple(names)))
                        or begin_capture(self, feeds, names, cache=cache))
    _, planted = encoders
    report = pipeline.check([planted.onnx_path, planted.mnn_path], inputs=planted.inputs, layers=True,
                            diagnose=False)
    divergence = report.comparisons[0].first_divergence
    assert divergence.introduced_here is True and divergence.local_max_abs_diff is not None
    assert divergence.histogram is not None
    # the layer capture alone: one ONNX Runtime session (the model's own, returning every
    # value); MNN's tensors asked for once each (in batches, read from the model's run)
    assert [key for side, key in captures if side == "onnxruntime"] == ["every"], captures
    asked = [name for side, names in captures if side == "mnn" for name in names]
    assert asked and len(asked) == len(set(asked)), captures


def test_output_failing_with_every_paired_layer_passing_gets_a_location(tmp_path):
    built = tm.build_llama_like(tmp_path, scale_weight=tm.OUTPUT_ONLY_WEIGHT)
    checked = parity.check([built.onnx_path, built.mnn_path], inputs=built.inputs, layers=True, diagnose=False)
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    comparison = report["comparisons"][0]
    divergence = comparison["first_divergence"]
    assert divergence is not None and divergence["name"] == "logits"
    assert divergence["rule"] == "element" and divergence["nodes"]
    # every other paired layer passes the layer rule: the output rule located it
    others = [x for x in comparison["layers"] if x["name"] != "logits"]
    assert others and all(x["passed"] for x in others)
    assert report["verdict"]["where"].startswith("logits")


def test_output_failing_with_every_paired_layer_passing_gets_a_verdict(tmp_path):
    built = tm.build_llama_like(tmp_path, scale_weight=tm.OUTPUT_ONLY_WEIGHT)
    checked = parity.check([built.onnx_path, built.mnn_path], inputs=built.inputs)
    assert checked.exit_code == ExitCode.MISMATCH
    verdict = report_json(checked)["verdict"]
    # the .mnn was converted from an edited copy of the ONNX: a fresh conversion fixes it, and
    # the structural diff names the weight that differs
    assert verdict["kind"] == "conversion", verdict
    assert "logits" in verdict["where"]
    diff = next(e for e in verdict["evidence"] if e.get("experiment", "").startswith("structural diff: given"))
    assert diff["identical"] is False and diff["differences"]["constants"]


@pytest.fixture(scope="module", params=["padding", "lora"])
def layer_only(request, tmp_path_factory):
    """(kind, built): a model whose layers differ while its outputs match (tm.build_layer_only)."""
    return request.param, tm.build_layer_only(tmp_path_factory.mktemp(request.param), kind=request.param)


def test_layer_only_finding_is_shown_on_the_terminal(layer_only):
    _, built = layer_only
    text = run_parity("check", built.onnx_path, built.mnn_path, "--inputs", built.inputs, "--layers", "--no-diagnose",
                      "--no-color")
    assert text.code == ExitCode.PASS, text.err
    assert "FINDING" in text.out and "layer-only finding" in text.out, text.out


def test_layer_only_finding_is_visible_and_gates_on_request(layer_only):
    kind, built = layer_only
    models, options = [built.onnx_path, built.mnn_path], {"inputs": built.inputs, "layers": True, "diagnose": False}
    checked = parity.check(models, **options)
    report = report_json(checked)
    assert checked.exit_code == ExitCode.PASS and report["passed"] and report["findings"]
    assert "layer-only finding" in report["verdict"]["summary"]
    origin = tm.layer_only_origin(built.onnx_path, kind)
    first_failing = next(x for x in report["comparisons"][0]["layers"] if not x["passed"])
    assert first_failing["name"] in origin
    gated = parity.check(models, **options, fail_on_layers=True)
    assert gated.exit_code == ExitCode.MISMATCH
    assert gated.verdict.kind == "mismatch"


def test_constant_altered_after_conversion_is_named_and_not_called_stale(tmp_path):
    from mnn_edit import alter_mnn_constant

    onnx_path = MODELS / "cnn.onnx"
    altered = tmp_path / "cnn_altered.mnn"
    name = alter_mnn_constant(MODELS / "cnn.mnn", altered, index=3, delta=5.0)
    checked = parity.check([onnx_path, altered])
    assert checked.exit_code == ExitCode.MISMATCH
    verdict = report_json(checked)["verdict"]
    assert verdict["kind"] == "conversion", verdict
    assert name in verdict["summary"], verdict["summary"]
    assert "stale" not in verdict["summary"]
    assert "deterministic here" in verdict["summary"]
    experiments = {e.get("experiment") for e in verdict["evidence"]}
    assert "structural diff: two fresh conversions (other paths)" in experiments
    # the fresh conversion is measured the same way as the given file
    fresh = next(e for e in verdict["evidence"] if e.get("experiment") == "fresh conversion")
    assert fresh["measured"] == fresh["given_file"]["measured"]


def test_unnamed_onnx_nodes_are_labelled(tmp_path):
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "w")
    onnx_path = save_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["out"])],
        [tensor("x", shape=[2, 4])], [tensor("out", shape=[2, 4])], tmp_path / "unnamed.onnx",
        initializers=[weight])
    altered = tmp_path / "altered.onnx"
    from helpers import alter_initializer

    alter_initializer(onnx_path, altered, "w", index=0, delta=3.0)
    mnn = to_mnn(altered, tmp_path / "unnamed.mnn")
    result = run_parity("check", onnx_path, mnn, "--layers", "--no-diagnose", "--no-color")
    assert result.code == ExitCode.MISMATCH, result.err
    assert "(ONNX nodes )" not in result.out
    assert "MatMul -> y" in result.out or "Relu -> out" in result.out, result.out


def test_generated_attention_mask_is_a_padding_mask_not_a_false_alarm(encoders):
    """Random integers in an attention mask make (1 - mask) * float32.min overflow to inf:
    ONNX Runtime then gives NaN, and parity reported a false divergence. A mask-like input is
    generated as 1s with a padded tail."""
    clean, _ = encoders
    checked = parity.check([clean.onnx_path, clean.mnn_path])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    mask = report_json(checked)["inputs"]["attention_mask"]
    assert any("mask-like input" in note for note in mask["notes"])


def test_failing_output_that_cannot_be_aligned_still_gets_a_location(tmp_path):
    """The .mnn computes another output (another name and shape): the output is paired by
    order, cannot be aligned, and the per-layer view still names it as the location."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    other = save_model([helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
                        helper.make_node("ReduceSum", ["m", "axes"], ["q"], name="sum", keepdims=1)],
                       [tensor("x", TensorProto.FLOAT, [1, 3, 4, 4])], [tensor("q", TensorProto.FLOAT, [1, 1, 4, 4])],
                       tmp_path / "other.onnx", initializers=[w, axes])
    onnx_path = save_model([helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
                            helper.make_node("Relu", ["m"], ["y"], name="relu")],
                           [tensor("x", TensorProto.FLOAT, [1, 3, 4, 4])], [tensor("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                           tmp_path / "model.onnx", initializers=[w])
    checked = parity.check([onnx_path, to_mnn(other, tmp_path / "other.mnn")], layers=True, diagnose=False)
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    assert report["comparisons"][0]["first_divergence"]["name"] == "y"
    assert report["verdict"]["where"].startswith("y ")
