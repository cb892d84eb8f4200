"""parity check, end to end through the real CLI on real models (ORT in-process, MNN in a child)."""

import numpy as np
import pytest

from helpers import MODELS, assert_one_line_error, run_json, run_parity
from parity.core.errors import ExitCode

CONTRACT_OUTPUT_KEYS = {
    "name", "reference_name", "candidate_name", "passed", "max_abs_diff", "max_rel_diff",
    "mean_abs_diff", "cosine", "mismatch_fraction", "reference_shape", "candidate_shape",
    "alignment",
}


@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_shipped_pair_passes_with_table(model):
    result = run_parity("check", MODELS / f"{model}.onnx", MODELS / f"{model}.mnn")
    assert result.code == ExitCode.PASS, result.err
    assert "onnxruntime -> mnn: pass" in result.out
    assert "PASS:" in result.out
    assert "max_abs" in result.out  # the per-output table


def test_json_contract_on_cnn():
    result = run_json("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn")
    assert result.code == ExitCode.PASS, result.err
    report = result.json()
    assert report["schema"] == "parity.report/1"
    assert report["passed"] is True
    assert [b["name"] for b in report["backends"]] == ["onnxruntime", "mnn"]
    assert all(b["version"] and b["model"].endswith(("cnn.onnx", "cnn.mnn")) for b in report["backends"])
    assert report["inputs"]["x"] == {"shape": [1, 3, 32, 32], "dtype": "float32", "source": "random", "notes": []}
    (comparison,) = report["comparisons"]
    assert (comparison["reference"], comparison["candidate"], comparison["passed"]) == ("onnxruntime", "mnn", True)
    (output,) = comparison["outputs"]
    assert CONTRACT_OUTPUT_KEYS <= set(output)
    assert output["name"] == output["reference_name"] == output["candidate_name"] == "logits"
    assert output["reference_shape"] == output["candidate_shape"] == [1, 10]
    assert 0 <= output["max_abs_diff"] < 1e-3 and output["cosine"] > 0.9999
    assert output["mismatch_fraction"] == 0.0
    assert report["verdict"]["kind"] == "pass" and report["verdict"]["where"] is None
    assert report["verdict"]["summary"]


def test_altered_weight_is_a_mismatch(altered_cnn, tmp_path):
    onnx_path, mnn_path = altered_cnn
    report_path = tmp_path / "r.json"
    result = run_parity("check", onnx_path, mnn_path, "--json", report_path)
    assert result.code == ExitCode.MISMATCH, result.err
    assert "FAIL" in result.out
    import json

    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    output = report["comparisons"][0]["outputs"][0]
    assert output["name"] == "logits" and output["passed"] is False
    assert output["max_abs_diff"] > 1e-2
    assert output["mismatch_fraction"] > 0
    assert output["cosine"] < 1.0
    # the diagnosis: a fresh conversion of cnn.onnx matches, so the .mnn is not its conversion
    assert report["verdict"]["kind"] == "conversion"
    assert "/Relu_2_output_0" in report["verdict"]["where"]  # conv3 (+ its fused Relu)
    assert any(e["experiment"] == "fresh conversion" and e["passed"] for e in report["verdict"]["evidence"])


def test_save_and_reuse_inputs_give_the_same_figures(tmp_path):
    saved = tmp_path / "in.npz"
    first = run_json("check", MODELS / "transformer.onnx", MODELS / "transformer.mnn",
                       "--seed", "3", "--save-inputs", saved)
    assert first.code == ExitCode.PASS, first.err
    with np.load(saved) as data:
        assert sorted(data.files) == ["src", "src_mask"]
        assert data["src"].shape == (1, 64, 32) and data["src"].dtype == np.float32
    second = run_json("check", MODELS / "transformer.onnx", MODELS / "transformer.mnn",
                        "--inputs", saved)
    assert second.code == ExitCode.PASS, second.err
    a = first.json()["comparisons"][0]["outputs"][0]
    b = second.json()["comparisons"][0]["outputs"][0]
    assert a["max_abs_diff"] == b["max_abs_diff"]
    assert second.json()["inputs"]["src"]["source"] == "file"


def test_help_explains_every_option():
    for command in ([], ["check"], ["inspect"]):
        result = run_parity(*command, "--help")
        assert result.code == 0
        assert "Usage:" in result.out
    check_help = run_parity("check", "--help").out
    for option in ("--atol", "--rtol", "--seed", "--shape", "--inputs", "--save-inputs", "--json",
                   "--timeout", "--mnn-threads", "--mnn-precision"):
        assert option in check_help


def test_inspect_lists_inputs_and_outputs():
    result = run_parity("inspect", MODELS / "transformer.mnn")
    assert result.code == 0, result.err
    for word in ("src", "src_mask", "out", "1x64x32"):
        assert word in result.out
    result = run_parity("inspect", MODELS / "cnn.onnx")
    assert result.code == 0 and "logits" in result.out and "1x3x32x32" in result.out


def test_inspect_of_an_empty_name_is_one_line_not_the_working_directory():
    result = run_parity("inspect", "")
    assert_one_line_error(result, ExitCode.USAGE, "empty")


def test_a_backend_mnn_lacks_is_reported_as_the_cpu_that_ran():
    """MNN falls back to CPU with nothing but a printed line: the report says what ran."""
    result = run_json("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-backend", "OPENCL")
    assert result.code == ExitCode.PASS, result.err
    report = result.json()
    settings = report["backends"][1]["settings"]
    assert settings["backend"] == "OPENCL" and settings["backend_ran"] == "CPU"
    assert any("no OPENCL backend here: it ran on CPU" in note for note in report["notes"])
    text = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-backend", "OPENCL", "--no-color")
    assert "it ran on CPU" in text.out
    plain = run_json("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn").json()
    assert plain["backends"][1]["settings"]["backend_ran"] == "CPU" and not plain["notes"]
