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


def _loader(path, arrays):
    """A --data-loader file yielding ``arrays`` (saved beside it) as samples of input x."""
    np.save(path.with_suffix(".npy"), np.stack(arrays))
    path.write_text(f"import numpy as np\n\ndef samples():\n"
                    f"    for x in np.load({str(path.with_suffix('.npy'))!r}):\n        yield {{'x': x[None]}}\n")
    return f"{path}:samples"


@pytest.mark.parametrize("source", ["samples-axis", "data-loader"])
def test_a_sample_with_nan_is_refused_wherever_it_comes_from(tmp_path, source):
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    stack[2, 1, 5, 5] = np.nan
    if source == "samples-axis":
        np.savez(tmp_path / "s.npz", x=stack)
        args = ["--inputs", tmp_path / "s.npz", "--samples-axis", "0"]
    else:
        args = ["--data-loader", _loader(tmp_path / "dl.py", list(stack))]
    refused = run_parity("check", *CNN, *args)
    assert_one_line_error(refused, ExitCode.MODEL_OR_INPUT, "[2]", "1 NaN/Inf", "--allow-nonfinite")
    allowed = run_parity("check", *CNN, *args, "--allow-nonfinite", "-q")
    assert allowed.code in (ExitCode.PASS, ExitCode.MISMATCH), allowed.err


@pytest.mark.parametrize("source", ["inputs", "data-loader"])
def test_big_endian_inputs_are_fed_in_this_machine_s_byte_order_with_a_note(tmp_path, source):
    x = np.random.default_rng(6).standard_normal((1, 3, 32, 32)).astype(np.float32)
    figures, notes = [], []
    for order in ("<f4", ">f4"):
        if source == "inputs":
            np.savez(tmp_path / f"{order[0] == '>'}.npz", x=x.astype(order))
            checked = parity.check(CNN, inputs=tmp_path / f"{order[0] == '>'}.npz")
        else:
            loader = tmp_path / f"dl{order[0] == '>'}.py"
            np.save(loader.with_suffix(".npy"), x.astype(order))
            loader.write_text(f"import numpy as np\n\ndef samples():\n"
                              f"    yield {{'x': np.load({str(loader.with_suffix('.npy'))!r})}}\n")
            checked = parity.check(CNN, data_loader=f"{loader}:samples")
        report = report_json(checked)
        assert checked.exit_code == 0, checked.verdict.summary
        figures.append(report["comparisons"][0]["outputs"][0]["max_abs_diff"])
        notes.append(report["inputs"]["x"]["notes"])
    assert figures[0] == figures[1]
    assert notes[0] == [] and "big-endian" in notes[1][0]
