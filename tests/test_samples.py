"""Many input samples (--inputs DIR, a glob, or --samples-axis): every sample runs through
every model, figures are aggregated per output (the worst sample's, mean cosine, top-1
agreement), per-sample figures go to the JSON. Through ``parity.check``; the terminal's summary
line and the one-line errors through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from helpers import MODELS, assert_one_line_error, report_json, run_parity
from parity.core.errors import ExitCode

CNN = (MODELS / "cnn.onnx", MODELS / "cnn.mnn")


@pytest.fixture()
def sample_dir(tmp_path):
    rng = np.random.default_rng(3)
    directory = tmp_path / "samples"
    directory.mkdir()
    for i in range(10):
        np.savez(directory / f"s{i:02d}.npz", x=rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    (directory / "README.txt").write_text("not a sample")
    return directory


def test_ten_samples_from_a_directory(sample_dir):
    checked = parity.check(CNN, inputs=sample_dir)
    assert checked.exit_code == 0, checked.verdict.summary
    output = report_json(checked)["comparisons"][0]["outputs"][0]
    samples = output["samples"]
    assert samples["count"] == 10 and samples["failed"] == 0
    assert [s["sample"] for s in samples["per_sample"]] == [f"s{i:02d}.npz" for i in range(10)]
    assert samples["top1"] == 1.0 and samples["top1_rows"] == 10
    # the figures shown are the worst sample's
    assert output["max_abs_diff"] == max(s["max_abs_diff"] for s in samples["per_sample"])


def test_the_terminal_sums_up_the_samples(sample_dir):
    terminal = run_parity("check", *CNN, "--inputs", sample_dir)
    assert terminal.code == 0, terminal.err
    assert "10 samples, 0 failing" in terminal.out and "top-1 agreement 100.0% of 10 rows" in terminal.out


def test_a_glob_and_a_samples_axis_give_the_same_samples(sample_dir, tmp_path):
    stacked = tmp_path / "stacked.npz"
    arrays = [np.load(sample_dir / f"s{i:02d}.npz")["x"] for i in range(10)]
    np.savez(stacked, x=np.concatenate(arrays, axis=0))
    by_glob = parity.check(CNN, inputs=str(sample_dir / "s0[0-4].npz"))
    by_axis = parity.check(CNN, inputs=stacked, samples_axis=0)
    assert by_glob.exit_code == by_axis.exit_code == 0, by_glob.verdict.summary + by_axis.verdict.summary
    glob_samples = report_json(by_glob)["comparisons"][0]["outputs"][0]["samples"]["per_sample"]
    axis_samples = report_json(by_axis)["comparisons"][0]["outputs"][0]["samples"]["per_sample"]
    assert len(glob_samples) == 5 and len(axis_samples) == 10
    assert [s["max_abs_diff"] for s in glob_samples] == [s["max_abs_diff"] for s in axis_samples[:5]]


def test_a_directory_without_samples_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_parity("check", *CNN, "--inputs", tmp_path / "empty")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "without .npz files")


def test_samples_of_different_counts_are_refused(tmp_path):
    from onnx import helper

    from helpers import save_model, tensor, to_mnn

    model = save_model([helper.make_node("Add", ["a", "b"], ["y"])], [tensor("a", shape=[1, 3]), tensor("b", shape=[1, 3])],
                       [tensor("y", shape=[1, 3])], tmp_path / "add.onnx")
    path = tmp_path / "odd.npz"
    np.savez(path, a=np.zeros((3, 1, 3), np.float32), b=np.zeros((2, 1, 3), np.float32))
    result = run_parity("check", model, to_mnn(model), "--inputs", path, "--samples-axis", "0")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "different numbers of samples", "'a': 3", "'b': 2")


def test_an_npz_without_samples_is_refused(tmp_path):
    path = tmp_path / "none.npz"
    np.savez(path, x=np.zeros((0, 3, 32, 32), np.float32))
    result = run_parity("check", *CNN, "--inputs", path, "--samples-axis", "0")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "holds no samples")
