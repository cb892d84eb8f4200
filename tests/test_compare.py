"""parity compare: hand-dumped outputs, flat, raw, NC4HW4 and NHWC, and usage mistakes;
through ``parity.compare``, and the CLI where its output or arguments are the subject."""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

import parity
from helpers import MODELS, ROOT, assert_one_line_error, ort_run, randn, report_json, run_json, run_parity
from parity.core.errors import ExitCode
from parity.core.metrics import Tolerance


def mnn_dump(model, feeds, tensor, mode, out, tmp_path):
    np.savez(tmp_path / "feeds.npz", **feeds)
    subprocess.run([sys.executable, str(ROOT / "tests" / "mnn_dump.py"), str(model), str(tmp_path / "feeds.npz"),
                    tensor, mode, str(out)], check=True, capture_output=True)
    return out


@pytest.fixture
def transformer_case(tmp_path):
    feeds = {"src": randn(1, 64, 32), "src_mask": np.ones((1, 64), np.float32)}
    np.save(tmp_path / "ref.npy", ort_run(MODELS / "transformer.onnx", feeds)["out"])
    return feeds, tmp_path / "ref.npy"


@pytest.fixture
def conv_case(tmp_path):
    model = onnx.load(str(MODELS / "cnn.onnx"))
    relu = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    model.graph.output.append(helper.make_empty_tensor_value_info(relu))
    onnx.save(model, str(tmp_path / "marked.onnx"))
    feeds = {"x": randn(1, 3, 32, 32, seed=2)}
    np.save(tmp_path / "ref.npy", ort_run(tmp_path / "marked.onnx", feeds)[relu])
    return feeds, relu, tmp_path / "ref.npy"


def test_flat_npy_is_reshaped(transformer_case, tmp_path):
    feeds, ref = transformer_case
    dump = mnn_dump(MODELS / "transformer.mnn", feeds, "out", "flat", tmp_path / "out.npy", tmp_path)
    assert np.load(dump).shape == (32768,)
    report = parity.compare(ref, dump)
    assert report.exit_code == ExitCode.PASS, report.verdict.summary
    output = report_json(report)["comparisons"][0]["outputs"][0]
    assert output["alignment"] == ["reshape (32768,) -> (1, 64, 512)"]
    assert report.verdict.kind == "pass"


def test_raw_bin_is_reshaped(transformer_case, tmp_path):
    feeds, ref = transformer_case
    dump = mnn_dump(MODELS / "transformer.mnn", feeds, "out", "flat", tmp_path / "out.bin", tmp_path)
    result = run_json("compare", ref, dump, "--dtype", "float32")
    assert result.code == ExitCode.PASS, result.err
    assert result.json()["comparisons"][0]["outputs"][0]["alignment"] == ["reshape (32768,) -> (1, 64, 512)"]
    missing_dtype = run_parity("compare", ref, dump)
    assert_one_line_error(missing_dtype, ExitCode.USAGE, "--dtype")


def test_nc4hw4_dump_is_unpacked(conv_case, tmp_path):
    feeds, relu, ref = conv_case
    dump = mnn_dump(MODELS / "cnn.mnn", feeds, relu, "nc4hw4", tmp_path / "conv.npy", tmp_path)
    assert not np.allclose(np.load(dump), np.load(ref), atol=1e-3)  # read as-is it is scrambled
    report = parity.compare(ref, dump)
    assert report.exit_code == ExitCode.PASS, report.verdict.summary
    assert report.comparisons[0].outputs[0].alignment[0].startswith("nc4hw4 -> nchw")


def test_nhwc_dump_is_transposed(conv_case, tmp_path):
    feeds, relu, ref = conv_case
    dump = mnn_dump(MODELS / "cnn.mnn", feeds, relu, "nhwc", tmp_path / "conv.npy", tmp_path)
    assert np.load(dump).shape == (1, 32, 32, 16)
    report = parity.compare(ref, dump)
    assert report.exit_code == ExitCode.PASS, report.verdict.summary
    assert report.comparisons[0].outputs[0].alignment[0].startswith("nhwc -> nchw")


def test_all_zero_dump_is_usage(transformer_case, tmp_path):
    _, ref = transformer_case
    np.zeros(32768, np.float32).tofile(tmp_path / "zeros.bin")
    report = parity.compare(ref, tmp_path / "zeros.bin", dtype="float32")
    assert report.exit_code == ExitCode.MISMATCH
    verdict = report_json(report)["verdict"]
    assert verdict["kind"] == "usage" and "all zeros" in verdict["summary"]


def test_output_read_before_the_run_is_usage(tmp_path):
    """With the Session API an output read before runSession can hold the input's memory."""
    x = randn(1, 8, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", np.tanh(x))  # what the model computes
    np.save(tmp_path / "stale.npy", x.copy())
    report = parity.compare(tmp_path / "ref.npy", tmp_path / "stale.npy", model_inputs=tmp_path / "x.npy")
    assert report.exit_code == ExitCode.MISMATCH
    assert report.verdict.kind == "usage" and "read before the run" in report.verdict.summary


def test_a_pass_through_output_that_equals_the_input_is_no_reading_mistake(tmp_path):
    """An Identity, Reshape or Dropout output holds the input's values in the reference too."""
    x = randn(2, 8, seed=5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "out.npy", x.copy())
    report = parity.compare(tmp_path / "out.npy", tmp_path / "out.npy", model_inputs=tmp_path / "x.npy")
    assert report.passed and report.verdict.kind == "pass", report.verdict


def test_zeros_within_the_tolerance_of_a_near_zero_reference_pass(tmp_path):
    """A flushed or legitimately tiny output is not 'read before the run' when it meets the
    tolerance; zeros against an output of real magnitude still are (test_all_zero_dump_is_usage)."""
    reference = np.zeros((4, 8), np.float32)
    reference[0, 0] = 1e-9
    np.save(tmp_path / "ref.npy", reference)
    np.save(tmp_path / "zeros.npy", np.zeros((4, 8), np.float32))
    report = parity.compare(tmp_path / "ref.npy", tmp_path / "zeros.npy")
    assert report.passed and report.verdict.kind == "pass", report.verdict
    np.zeros(32, np.float32).tofile(tmp_path / "zeros.bin")  # a raw dump is flat: the same values
    report = parity.compare(tmp_path / "ref.npy", tmp_path / "zeros.bin", dtype="float32")
    assert report.passed and report.verdict.kind == "pass", report.verdict
    report = parity.compare(tmp_path / "ref.npy", tmp_path / "zeros.npy", tolerance=Tolerance(atol=1e-12, rtol=0.0))
    assert report.verdict.kind == "usage" and "all zeros" in report.verdict.summary


def test_float16_read_as_float32_names_the_cause(transformer_case, tmp_path):
    feeds, ref = transformer_case
    np.load(ref).astype(np.float16).tofile(tmp_path / "half.bin")
    report = parity.compare(ref, tmp_path / "half.bin", dtype="float32")
    assert report.exit_code == ExitCode.MISMATCH
    summary = report.verdict.summary
    assert report.verdict.kind == "usage" and "float16" in summary
    fixed = parity.compare(ref, tmp_path / "half.bin", dtype="float16", tolerance=parity.Tolerance(atol=0.01))
    assert fixed.exit_code == ExitCode.PASS, fixed.verdict.summary


def test_npz_with_several_outputs(tmp_path):
    a, b = randn(2, 3), randn(4, seed=1)
    np.savez(tmp_path / "ref.npz", logits=a, boxes=b)
    np.savez(tmp_path / "cand.npz", boxes=b + 1e-6, logits=a.reshape(-1))
    report = parity.compare(tmp_path / "ref.npz", tmp_path / "cand.npz")
    assert report.exit_code == ExitCode.PASS, report.verdict.summary
    names = {o["name"]: o["alignment"] for o in report_json(report)["comparisons"][0]["outputs"]}
    assert names == {"logits": ["reshape (6,) -> (2, 3)"], "boxes": []}


# -- wrong numbers users found, rebuilt as .npy files (exact figures, as the JSON report has them)
def _compare_npy(tmp_path, reference, candidate):
    """parity.compare of the two arrays saved as .npy files: (the report as its JSON reads,
    its first output), asserting that no warning (a numpy RuntimeWarning) reached the user."""
    np.save(tmp_path / "ref.npy", reference)
    np.save(tmp_path / "cand.npy", candidate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = report_json(parity.compare(tmp_path / "ref.npy", tmp_path / "cand.npy"))
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert not shown, [str(w.message) for w in shown]
    return report, report["comparisons"][0]["outputs"][0]


def test_masked_reference_does_not_hide_the_rest(tmp_path):
    reference = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    reference[:, 32:] = np.float32(-3.4028235e38)  # a Hugging Face attention mask
    candidate = reference.copy()
    candidate[:, :32] += 0.5
    report, output = _compare_npy(tmp_path, reference, candidate)
    assert not report["passed"]
    assert output["mismatch_count"] == 128 and output["masked_matched"] == 128
    assert output["reference_absmax"] == float(np.abs(reference[:, :32]).max())
    assert output["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)
    assert "128 of 256 elements" in report["verdict"]["summary"]


def test_opposite_vectors_near_float_max_have_cosine_minus_one(tmp_path):
    v = np.random.default_rng(1).uniform(0.5, 0.99, 64).astype(np.float32) * np.float32(1e38)
    report, output = _compare_npy(tmp_path, v, -v)
    assert not report["passed"]
    assert output["cosine"] == -1.0
    assert output["max_abs_diff"] == float(np.abs(v.astype(np.float64) * 2).max())


def test_opposite_mask_values_get_figures(tmp_path):
    report, output = _compare_npy(tmp_path, np.full(8, 3e38, np.float32), np.full(8, -3e38, np.float32))
    assert not report["passed"]
    assert output["class_mismatches"] == 8 and output["cosine"] == -1.0
    assert output["max_abs_diff"] == pytest.approx(6e38, rel=1e-7)


@pytest.mark.parametrize("reference, candidate, expected", [
    (np.array([2**64 - 1, 5], np.uint64), np.array([0, 5], np.uint64), 2**64 - 1),
    (np.array([np.iinfo(np.int64).min, 7]), np.array([0, 7]), 2**63),
    (np.array([2**64 - 1], np.uint64), np.array([-1], np.int64), 2**64),
])
def test_integer_extremes_give_the_exact_difference(tmp_path, reference, candidate, expected):
    report, output = _compare_npy(tmp_path, reference, candidate)
    assert not report["passed"]
    assert output["max_abs_diff"] == expected and isinstance(output["max_abs_diff"], int)
    assert str(expected) in report["verdict"]["summary"]


def test_integer_rows_show_the_unequal_share_and_the_exact_rule(tmp_path):
    np.save(tmp_path / "ref.npy", np.array([2**64 - 1, 5, 6, 7], np.uint64))
    np.save(tmp_path / "cand.npy", np.array([0, 5, 6, 7], np.uint64))
    result = run_parity("compare", tmp_path / "ref.npy", tmp_path / "cand.npy")
    assert result.code == ExitCode.MISMATCH
    assert "25.00% unequal" in result.out  # the column is the share out of tolerance
    assert "integers are compared exactly" in result.out


def test_small_reference_carries_a_looseness_note(tmp_path):
    reference = np.linspace(-0.05, 0.05, 100).astype(np.float32)
    report, output = _compare_npy(tmp_path, reference, reference + np.float32(1e-3))
    assert report["passed"]  # 2% of the signal passes by the default floor...
    assert any("small reference" in note for note in output["notes"])  # ...and says so
    strict = parity.compare(tmp_path / "ref.npy", tmp_path / "cand.npy", tolerance=parity.Tolerance(atol=1e-4))
    assert strict.exit_code == ExitCode.MISMATCH


def test_reference_outputs_without_a_partner_fail(tmp_path):
    report = parity.compare({"a": np.ones(8, np.float32), "b": np.ones(8, np.float32)},
                            {"a": np.ones(8, np.float32)})
    assert not report.passed and report.verdict.kind == "mismatch"
    assert "no candidate output pairs" in report.verdict.summary


def test_non_numeric_dumps_are_a_result_not_a_crash(tmp_path):
    np.save(tmp_path / "s1.npy", np.array(["a", "b"]))
    np.save(tmp_path / "s2.npy", np.array(["a", "b"]))
    result = run_parity("compare", tmp_path / "s1.npy", tmp_path / "s2.npy")
    assert result.code == ExitCode.MISMATCH, result.err
    assert "Traceback" not in result.err and "dtypes cannot be compared" in result.out
