"""MNN on the emulated arm64 target (``parity target setup arm64``), run for real under qemu:
float16 arithmetic with precision low, and the verdicts that name it.

Run by tox's ``arm64`` environment, which sets the target up first (.ci/run runs it on CI).
Elsewhere these tests skip when the target is not set up, unless PARITY_REQUIRE_ARM64=1.
"""

from __future__ import annotations


import pytest

import fp16_models
import parity
from helpers import MODELS, report_json, require_arm64, run_parity

pytestmark = pytest.mark.arm64


@pytest.fixture(scope="module", autouse=True)
def arm64_ready():
    require_arm64()


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp16")
    return {name: getattr(fp16_models, name)(d) for name in ("attention_overflow", "exp_saturation", "cancellation")}


def _check(*models, precision=None, **options):
    """parity.check (with ``precision``: MNN on the arm64 target, in that precision mode or
    modes): (exit code, the report as its JSON reads)."""
    mnn = {"target": "arm64", "precision": precision} if precision else None
    report = parity.check(models, mnn_options=mnn, **options)
    return report.exit_code, report_json(report)


def test_target_check_reports_float16():
    result = run_parity("target", "check", "arm64")
    assert result.code == 0, result.err
    assert "aarch64" in result.out and "fp16:1" in result.out
    assert "yes: precision low runs float16 arithmetic" in result.out


@pytest.mark.parametrize("model", ["transformer", "cnn"])
def test_shipped_models_pass_high_and_low_on_arm64(model):
    result = run_parity("check", MODELS / f"{model}.onnx", MODELS / f"{model}.mnn", "--mnn-target", "arm64",
                        "--mnn-precision", "high,low")
    assert result.code == 0, result.out + result.err
    lines = [ln for ln in result.out.splitlines() if ln.startswith("target: ")]
    assert len(lines) == 2 and all("aarch64" in ln and "fp16" in ln for ln in lines)
    assert "precision low (float16 arithmetic)" in lines[1]
    code, report = _check(MODELS / f"{model}.onnx", MODELS / f"{model}.mnn", precision="high,low")
    low = report["backends"][-1]["settings"]
    assert low["float16_arithmetic"] is True and low["platform"]["machine"] == "aarch64"
    assert low["cpu_features"]["fp16"] == 1 and low["backend_ran"] == "CPU"
    high_link, low_link = report["comparisons"]
    assert "tolerance" not in high_link and low_link["tolerance"]["rtol"] > report["tolerance"]["rtol"]
    # float16 really ran: the low link's error is far above float32's and still within its rule
    assert low_link["outputs"][0]["max_abs_diff"] > 10 * high_link["outputs"][0]["max_abs_diff"]


@pytest.mark.parametrize("name, layer, words", [
    ("attention_overflow", "scores", "beyond float16's largest value 65504"),
    ("exp_saturation", "out", "beyond float16's largest value 65504"),
])
def test_float16_overflow_is_a_runtime_verdict_naming_layer_and_range(broken, name, layer, words):
    onnx_path, mnn_path = broken[name]
    code, local = _check(onnx_path, mnn_path)
    assert code == 0 and local["passed"]  # on this machine the model is fine
    code, high = _check(onnx_path, mnn_path, precision="high")
    assert code == 0, high["verdict"]
    code, low = _check(onnx_path, mnn_path, precision="low")
    assert code == 1
    verdict = low["verdict"]
    assert verdict["kind"] == "runtime"
    assert verdict["where"].startswith(layer), verdict["where"]
    assert words in verdict["summary"] and "precision high on the same target" in verdict["summary"]
    precision = next(e for e in verdict["evidence"] if e.get("experiment") == "precision")
    assert precision["passed"] is True


def test_float16_failure_no_range_explains_is_runtime_with_high_vs_low(broken):
    onnx_path, mnn_path = broken["cancellation"]
    code, low = _check(onnx_path, mnn_path, precision="high,low")
    assert code == 1
    high_link, low_link = low["comparisons"]
    assert high_link["passed"] and not low_link["passed"]
    verdict = low["verdict"]
    assert verdict["kind"] == "runtime" and verdict["where"].startswith("out (Sub)")
    assert "fit float16's range" in verdict["summary"] and "precision high on the same target" in verdict["summary"]
    ranges = next(e for e in verdict["evidence"] if e.get("experiment") == "float16 range at the divergence")
    assert ranges["outside_float16"] is False


def test_layers_on_arm64_low_name_the_overflowing_layer(broken):
    onnx_path, mnn_path = broken["attention_overflow"]
    code, report = _check(onnx_path, mnn_path, precision="low", layers=True, diagnose=False)
    assert code == 1
    divergence = report["comparisons"][0]["first_divergence"]
    assert divergence["name"] == "scores"
    scores = next(x for x in report["comparisons"][0]["layers"] if x["name"] == "scores")
    assert scores["fp16_range"] > 1


def test_a_given_tolerance_is_kept_on_a_float16_link():
    """--rtol 0.001 given is 0.001, even though it is the default value: only a tolerance nobody
    gave becomes float16's."""
    code, report = _check(MODELS / "transformer.onnx", MODELS / "transformer.mnn", precision="low",
                          tolerance=parity.Tolerance(atol=None, rtol=0.001), diagnose=False)
    link = report["comparisons"][0]
    assert "tolerance" not in link and code == 1  # float16's 0.4% error is beyond the float32 rule


def test_low_bf16_is_not_reported_as_float16():
    code, report = _check(MODELS / "cnn.onnx", MODELS / "cnn.mnn", precision="low_bf16")
    assert code == 0
    settings = report["backends"][-1]["settings"]
    assert settings["float16_arithmetic"] is False and "tolerance" not in report["comparisons"][0]


def _emulation(verdict) -> dict:
    return next(e for e in verdict["evidence"] if e.get("experiment") == "float16 emulation of the op")


def test_classifier_gemm_after_pooling_is_float16_precision_as_designed(tmp_path):
    """A Gemm with K=1280 after a global average pool, as MobileNetV2-like classifiers have:
    MNN's float16 Gemm adds its 1280 products one after another in float16 (its output is
    identical to that emulation), so its error is float16's own, not a kernel defect."""
    onnx_path, mnn_path = fp16_models.pooled_classifier(tmp_path)
    code, high = _check(onnx_path, mnn_path, precision="high", layers=True)
    assert code == 0, high["verdict"]
    code, low = _check(onnx_path, mnn_path, precision="low", layers=True)
    assert code == 1
    verdict = low["verdict"]
    assert verdict["kind"] == "runtime" and verdict["where"].startswith("logits (Gemm)"), verdict["where"]
    assert verdict["summary"].startswith("float16 precision as designed at logits (Gemm)")
    assert "kernel defect" not in verdict["summary"] and " or an MNN float16 kernel" not in verdict["summary"]
    emulation = _emulation(verdict)
    assert emulation["ops"] == ["Gemm"] and emulation["complete"] is True
    assert emulation["inputs"] == "the reference's inputs (isolated)"
    errors = emulation["emulated_scaled_error"]
    assert len(errors) == 7 and all(e > 0 for e in errors.values())
    # float16 sums cost far more than float16 rounding alone on this op: the choice is not trivial
    assert errors["sequential float16 sums (fused multiply-add)"] > 5 * errors["pairwise float16 sums"]
    assert emulation["mnn_scaled_error"] > 0.01  # fails float16's 1% rule, as the HF classifiers did
    assert emulation["finding"] == "as designed" and emulation["ratio"] <= 2
    assert emulation["nearest_to_mnn"] == "sequential float16 sums (fused multiply-add)"
    assert emulation["nearest_max_abs_distance"] < 1e-3 * emulation["mnn_scaled_error"]
    # the figures are in the summary, and the way to keep the op in float32 in the next steps
    assert f"{emulation['mnn_scaled_error']:.3g}" in verdict["summary"]
    assert "pairwise float16 sums" in verdict["summary"]
    assert any("--mnn-precision high" in step for step in verdict["next_steps"])


def test_squeeze_excitation_pool_on_112x112_is_runtime_float16_and_high_passes(tmp_path):
    """The acceptance line: Conv -> GlobalAveragePool(112x112) -> Conv/Relu -> Conv/Sigmoid ->
    Mul. Precision high passes; precision low fails at the pool, and the verdict is runtime,
    names float16 and the GlobalAveragePool layer (not undetermined, even where the isolated
    measurement at MNN's Pooling3D is not trustworthy)."""
    onnx_path, mnn_path = fp16_models.squeeze_excitation(tmp_path)
    code, high = _check(onnx_path, mnn_path, precision="high")
    assert code == 0, high["verdict"]
    code, low = _check(onnx_path, mnn_path, precision="low")
    assert code == 1
    verdict = low["verdict"]
    assert verdict["kind"] == "runtime", verdict["summary"]
    assert verdict["where"].startswith("squeezed (GlobalAveragePool)"), verdict["where"]
    assert "float16" in verdict["summary"] and "GlobalAveragePool" in verdict["summary"]
    emulation = _emulation(verdict)
    assert emulation["ops"] == ["GlobalAveragePool"]
    precision = [e for e in verdict["evidence"] if e.get("experiment") == "precision"]
    if not precision[0]["passed"]:
        # precision high failed at the cut too: the cut is not trusted, both precisions and the
        # emulation's inputs come from whole runs (MNN 3.6.1's Pooling3D cut measured so)
        assert precision[1]["setting"] == "precision high on arm64, in the whole model" and precision[1]["passed"]
        assert emulation["inputs"].startswith("MNN's own inputs")
    else:
        assert emulation["inputs"] == "the reference's inputs (isolated)"
    errors = emulation["emulated_scaled_error"]
    # 12544 positive values: a sequential float16 sum stagnates, a pairwise one does not
    assert errors["sequential float16 sums (fused multiply-add)"] > 0.05 > 0.005 > errors["pairwise float16 sums"]
    assert emulation["finding"] in ("as designed", "between", "defect")
    assert verdict["summary"].startswith({"as designed": "float16 precision as designed",
                                          "defect": "a float16 kernel defect worth a report",
                                          "between": "float16 arithmetic on"}[emulation["finding"]])


def test_float16_emulation_reuses_the_baseline_cut_and_a_fresh_cut_agrees(tmp_path, monkeypatch):
    """In isolation the emulation compares the output of the baseline's own cut run (MNN fed
    the reference's inputs); cut again, fed the model's inputs too as every cut is (MNN's
    Gemm/MatMul may read its shape from them), MNN gives the same values."""
    import numpy as np

    import parity
    from parity.checking.experiments import float16

    onnx_path, mnn_path = fp16_models.pooled_classifier(tmp_path)
    original, seen = float16._float16_operands, []

    def both_ways(ctx, probe):
        reused = original(ctx, probe)
        cached, probe.given_isolated_output = probe.given_isolated_output, None
        try:
            fresh = original(ctx, probe)
        finally:
            probe.given_isolated_output = cached
        seen.append((probe.mode, cached is not None, reused, fresh))
        return reused

    monkeypatch.setattr(float16, "_float16_operands", both_ways)
    report = parity.check([onnx_path, mnn_path], layers=True, mnn_options={"target": "arm64", "precision": "low"})
    emulation = _emulation(report.to_dict()["verdict"])
    assert emulation["finding"] == "as designed"
    [(mode, had_cache, reused, fresh)] = seen
    assert mode == "isolated" and had_cache
    assert reused[2] == fresh[2] == "the reference's inputs (isolated)"
    assert reused[0].keys() == fresh[0].keys() == {"flat"}
    np.testing.assert_array_equal(reused[1], fresh[1])


def test_float16_emulation_is_not_run_above_the_weight_bound(tmp_path, monkeypatch):
    """Above numerics.MAX_FLOAT64_WEIGHT_BYTES of float weights the layer is not cut out of the
    loaded model: the evidence says the emulation did not run and why, and the verdict stays
    the undecided float16 one."""
    import parity
    from parity.checking import numerics

    onnx_path, mnn_path = fp16_models.pooled_classifier(tmp_path)  # 1280 x 1000 float32 weights: 4.9 MiB
    monkeypatch.setattr(numerics, "MAX_FLOAT64_WEIGHT_BYTES", 1 << 20)
    verdict = parity.check([onnx_path, mnn_path], layers=True,
                           mnn_options={"target": "arm64", "precision": "low"}).to_dict()["verdict"]
    assert verdict["kind"] == "runtime" and verdict["where"].startswith("logits (Gemm)"), verdict["summary"]
    emulation = _emulation(verdict)
    assert emulation["result"] == "not run" and "5 MiB of float weights" in emulation["reason"]
    assert "above 1 MiB" in emulation["reason"] and "finding" not in emulation
    assert "could not be emulated in float16" in verdict["summary"]
