"""parity compare: hand-dumped outputs, flat, raw, NC4HW4 and NHWC, and usage mistakes."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import MODELS, ROOT, assert_one_line_error, ort_run, randn, run_parity
from parity.errors import ExitCode


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
    result = run_parity("compare", ref, dump, "--json", "-")
    assert result.code == ExitCode.PASS, result.err
    output = result.json()["comparisons"][0]["outputs"][0]
    assert output["alignment"] == ["reshape (32768,) -> (1, 64, 512)"]
    assert result.json()["verdict"]["kind"] == "pass"


def test_raw_bin_is_reshaped(transformer_case, tmp_path):
    feeds, ref = transformer_case
    dump = mnn_dump(MODELS / "transformer.mnn", feeds, "out", "flat", tmp_path / "out.bin", tmp_path)
    result = run_parity("compare", ref, dump, "--dtype", "float32", "--json", "-")
    assert result.code == ExitCode.PASS, result.err
    assert result.json()["comparisons"][0]["outputs"][0]["alignment"] == ["reshape (32768,) -> (1, 64, 512)"]
    missing_dtype = run_parity("compare", ref, dump)
    assert_one_line_error(missing_dtype, ExitCode.USAGE, "--dtype")


def test_nc4hw4_dump_is_unpacked(conv_case, tmp_path):
    feeds, relu, ref = conv_case
    dump = mnn_dump(MODELS / "cnn.mnn", feeds, relu, "nc4hw4", tmp_path / "conv.npy", tmp_path)
    assert not np.allclose(np.load(dump), np.load(ref), atol=1e-3)  # read as-is it is scrambled
    result = run_parity("compare", ref, dump, "--json", "-")
    assert result.code == ExitCode.PASS, result.err
    assert result.json()["comparisons"][0]["outputs"][0]["alignment"][0].startswith("nc4hw4 -> nchw")


def test_nhwc_dump_is_transposed(conv_case, tmp_path):
    feeds, relu, ref = conv_case
    dump = mnn_dump(MODELS / "cnn.mnn", feeds, relu, "nhwc", tmp_path / "conv.npy", tmp_path)
    assert np.load(dump).shape == (1, 32, 32, 16)
    result = run_parity("compare", ref, dump, "--json", "-")
    assert result.code == ExitCode.PASS, result.err
    assert result.json()["comparisons"][0]["outputs"][0]["alignment"][0].startswith("nhwc -> nchw")


def test_all_zero_dump_is_usage(transformer_case, tmp_path):
    _, ref = transformer_case
    np.zeros(32768, np.float32).tofile(tmp_path / "zeros.bin")
    result = run_parity("compare", ref, tmp_path / "zeros.bin", "--dtype", "float32", "--json", "-")
    assert result.code == ExitCode.MISMATCH, result.err
    verdict = result.json()["verdict"]
    assert verdict["kind"] == "usage" and "all zeros" in verdict["summary"]


def test_output_read_before_the_run_is_usage(tmp_path):
    """With the Session API an output read before runSession can hold the input's memory."""
    x = randn(1, 8, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", np.tanh(x))  # what the model computes
    np.save(tmp_path / "stale.npy", x.copy())
    result = run_parity("compare", tmp_path / "ref.npy", tmp_path / "stale.npy",
                        "--model-input", tmp_path / "x.npy", "--json", "-")
    assert result.code == ExitCode.MISMATCH
    assert result.json()["verdict"]["kind"] == "usage" and "read before the run" in result.json()["verdict"]["summary"]


def test_float16_read_as_float32_names_the_cause(transformer_case, tmp_path):
    feeds, ref = transformer_case
    np.load(ref).astype(np.float16).tofile(tmp_path / "half.bin")
    result = run_parity("compare", ref, tmp_path / "half.bin", "--dtype", "float32", "--json", "-")
    assert result.code == ExitCode.MISMATCH
    summary = result.json()["verdict"]["summary"]
    assert result.json()["verdict"]["kind"] == "usage" and "float16" in summary
    fixed = run_parity("compare", ref, tmp_path / "half.bin", "--dtype", "float16", "--atol", "0.01")
    assert fixed.code == ExitCode.PASS, fixed.out + fixed.err


def test_npz_with_several_outputs(tmp_path):
    a, b = randn(2, 3), randn(4, seed=1)
    np.savez(tmp_path / "ref.npz", logits=a, boxes=b)
    np.savez(tmp_path / "cand.npz", boxes=b + 1e-6, logits=a.reshape(-1))
    result = run_parity("compare", tmp_path / "ref.npz", tmp_path / "cand.npz", "--json", "-")
    assert result.code == ExitCode.PASS, result.err
    names = {o["name"]: o["alignment"] for o in result.json()["comparisons"][0]["outputs"]}
    assert names == {"logits": ["reshape (6,) -> (2, 3)"], "boxes": []}
