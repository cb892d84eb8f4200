"""Every bad input gets one clear line, a distinct exit code and no traceback."""

import shutil

import numpy as np
import pytest
from onnx import helper

from helpers import MODELS, assert_one_line_error, run_parity, save_model, tensor, to_mnn
from parity.core.errors import ExitCode

CNN_ONNX = MODELS / "cnn.onnx"
CNN_MNN = MODELS / "cnn.mnn"
BAD = ExitCode.MODEL_OR_INPUT


def test_missing_file(tmp_path):
    result = run_parity("check", CNN_ONNX, tmp_path / "nope.mnn")
    assert_one_line_error(result, BAD, "nope.mnn", "does not exist")


@pytest.mark.parametrize("suffix", [".onnx", ".mnn"])
def test_empty_file(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    args = (empty, CNN_MNN) if suffix == ".onnx" else (CNN_ONNX, empty)
    assert_one_line_error(run_parity("check", *args), BAD, "empty")


@pytest.mark.parametrize("suffix", [".onnx", ".mnn"])
def test_random_bytes_are_not_a_model(tmp_path, suffix):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    args = (junk, CNN_MNN) if suffix == ".onnx" else (CNN_ONNX, junk)
    line = assert_one_line_error(run_parity("check", *args), BAD, "junk")
    assert "not" in line and "model" in line


def test_onnx_renamed_to_mnn(tmp_path):
    renamed = tmp_path / "model.mnn"
    shutil.copy(CNN_ONNX, renamed)
    assert_one_line_error(run_parity("check", CNN_ONNX, renamed), BAD, "ONNX model with an .mnn name")


def test_truncated_mnn(tmp_path):
    truncated = tmp_path / "cut.mnn"
    truncated.write_bytes(CNN_MNN.read_bytes()[:5000])
    result = run_parity("check", CNN_ONNX, truncated)
    # MNN either refuses the file (3) or dies on it (4): never a traceback, never exit 0/1
    assert result.code in (BAD, ExitCode.BACKEND), result.err
    assert_one_line_error(result, result.code, "cut.mnn")


def test_directory_as_model(tmp_path):
    folder = tmp_path / "m.mnn"
    folder.mkdir()
    assert_one_line_error(run_parity("check", CNN_ONNX, folder), BAD, "directory")


def test_unknown_suffix_is_a_usage_error(tmp_path):
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    assert_one_line_error(run_parity("check", CNN_ONNX, other), ExitCode.USAGE, "suffix")


def test_input_names_differ_lists_both_sides(tmp_path):
    a = save_model([helper.make_node("Relu", ["a"], ["y"])], [tensor("a", shape=[1, 4])],
                   [tensor("y", shape=[1, 4])], tmp_path / "a.onnx")
    b = save_model([helper.make_node("Relu", ["b"], ["y"])], [tensor("b", shape=[1, 4])],
                   [tensor("y", shape=[1, 4])], tmp_path / "b.onnx")
    mnn_b = to_mnn(b)
    assert_one_line_error(run_parity("check", a, mnn_b), BAD, "['a']", "['b']")


def test_inputs_file_missing_a_name(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, src=np.zeros((1, 64, 32), np.float32))
    result = run_parity("check", MODELS / "transformer.onnx", MODELS / "transformer.mnn", "--inputs", npz)
    assert_one_line_error(result, BAD, "missing ['src_mask']")


def test_inputs_file_with_unknown_name(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.zeros((1, 3, 32, 32), np.float32), y=np.zeros(3, np.float32))
    assert_one_line_error(run_parity("check", CNN_ONNX, CNN_MNN, "--inputs", npz), BAD, "unknown ['y']")


def test_inputs_file_wrong_shape(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.zeros((1, 3, 31, 32), np.float32))
    assert_one_line_error(run_parity("check", CNN_ONNX, CNN_MNN, "--inputs", npz), BAD,
                          "'x'", "(1, 3, 31, 32)", "1x3x32x32")


def test_inputs_file_wrong_rank(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.zeros((3, 32, 32), np.float32))
    assert_one_line_error(run_parity("check", CNN_ONNX, CNN_MNN, "--inputs", npz), BAD, "rank 4")


def test_inputs_file_wrong_dtype(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.zeros((1, 3, 32, 32), np.float64))
    assert_one_line_error(run_parity("check", CNN_ONNX, CNN_MNN, "--inputs", npz), BAD,
                          "float64", "float32")


def test_inputs_file_with_nan(tmp_path):
    npz = tmp_path / "in.npz"
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(npz, x=x)
    assert_one_line_error(run_parity("check", CNN_ONNX, CNN_MNN, "--inputs", npz), BAD, "NaN")


def test_inputs_file_not_an_npz(tmp_path):
    bogus = tmp_path / "in.npz"
    bogus.write_text("hello")
    assert_one_line_error(run_parity("check", CNN_ONNX, CNN_MNN, "--inputs", bogus), BAD, "in.npz")


def test_shape_for_unknown_input():
    result = run_parity("check", CNN_ONNX, CNN_MNN, "--shape", "nope=1x3")
    assert_one_line_error(result, BAD, "'nope'", "['x']")


def test_shape_malformed_is_usage():
    result = run_parity("check", CNN_ONNX, CNN_MNN, "--shape", "x=1xfoo")
    assert result.code == ExitCode.USAGE and "Traceback" not in result.err


@pytest.mark.parametrize("where", ["missing_dir", "is_dir"])
def test_unwritable_json_path(tmp_path, where):
    path = tmp_path / "no" / "such" / "r.json" if where == "missing_dir" else tmp_path
    result = run_parity("check", CNN_ONNX, CNN_MNN, "--json", path)
    assert_one_line_error(result, BAD, "--json")


def test_unwritable_save_inputs_fails_before_running(tmp_path):
    from helpers import crashing_model

    crashing = crashing_model(tmp_path)  # MNN dies (SIGFPE) when it runs this one: exit 4 if it ran
    result = run_parity("check", *crashing, "--save-inputs", tmp_path / "x" / "in.npz")
    assert_one_line_error(result, BAD, "--save-inputs")
    assert run_parity("check", *crashing).code == ExitCode.BACKEND  # what running it gives


def test_mnn_returning_nothing_is_an_input_error():
    """MNN's onForward returns [] on shapes its graph cannot take; parity says so (exit 3)."""
    from parity.backends.mnn import MnnBackend
    from parity.core.errors import InputError

    with MnnBackend(MODELS / "transformer.mnn") as mnn:
        feeds = {"src": np.zeros((1, 64, 31), np.float32), "src_mask": np.ones((1, 64), np.float32)}
        with pytest.raises(InputError, match="MNN returned no outputs") as info:
            mnn.run(feeds)
        assert info.value.exit_code == BAD


def test_timeout_is_a_backend_failure(tmp_path):
    """A step that really takes longer than --timeout (a reply that has arrived is always
    taken, so MNN must still be computing when parity looks)."""
    from helpers import slow_matmul_model

    _, mnn_path = slow_matmul_model(tmp_path)
    # MNN against itself: no ONNX Runtime run in parity's process that MNN could outlast
    result = run_parity("check", mnn_path, mnn_path, "--timeout", "0.05", "--mnn-threads", "1", "--no-diagnose")
    assert_one_line_error(result, ExitCode.BACKEND, "within", "--timeout")


def test_traceback_flag_shows_the_traceback(tmp_path):
    result = run_parity("check", CNN_ONNX, tmp_path / "nope.mnn", "--traceback")
    assert result.code == BAD
    assert "Traceback" in result.err and "does not exist" in result.err
