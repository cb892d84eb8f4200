"""Tensors larger than a message takes (1 MiB) come back from MNN's child through files, which
the parent maps read-only instead of reading into a copy (backends.mnn._read_npy). The run, a
--layers capture, the first divergence's isolation and the diagnosis work on those arrays as
on any other. MNN and ONNX Runtime run for real, on a model whose every tensor is 1.5 MiB."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import parity
from helpers import alter_filter, ort_run, randn, report_json, save_model, tensor, to_mnn
from parity.core.errors import ExitCode

SHAPE = (1, 3, 128, 128)
CHANNELS = 24  # 1x24x128x128 float32: 1.5 MiB a tensor


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(ONNX, its .mnn, an .mnn converted from a copy with one filter of the second conv changed).
    1x1 convolutions: no Winograd, whose rounding would blur what the tests look at."""
    d = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(7)
    weights = [numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)
               for name, shape in (("w1", (CHANNELS, 3, 1, 1)), ("w2", (CHANNELS, CHANNELS, 1, 1)))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2"),
        helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid"),
    ]
    onnx_path = save_model(nodes, [tensor("x", shape=list(SHAPE))],
                           [tensor("y", shape=[1, CHANNELS, *SHAPE[2:]])], d / "wide.onnx", initializers=weights)
    altered = alter_filter(onnx_path, d / "altered.onnx", "w2", channel=5)
    return onnx_path, to_mnn(onnx_path, d / "wide.mnn"), to_mnn(altered, d / "wide_altered.mnn")


def test_a_large_output_comes_back_mapped_with_the_values_mnn_computed(wide):
    from parity.backends.mnn import MnnBackend

    onnx_path, mnn_path, _ = wide
    x = randn(*SHAPE)
    with MnnBackend(mnn_path) as mnn:
        result = mnn.run({"x": x})
    got = result.outputs["y"]
    assert got.nbytes > 1 << 20
    assert not got.flags.writeable  # through a file, mapped: not a message, not a copy
    np.testing.assert_allclose(got, ort_run(onnx_path, {"x": x})["y"], atol=1e-4, rtol=1e-4)


def test_layers_over_large_tensors_pass_where_the_models_agree(wide):
    onnx_path, mnn_path, _ = wide
    checked = parity.check([onnx_path, mnn_path], layers=True)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    layers = report_json(checked)["comparisons"][0]["layers"]
    assert layers and all(layer["passed"] for layer in layers)


def test_a_divergence_in_large_tensors_is_located_isolated_and_diagnosed(wide):
    onnx_path, _, altered = wide
    checked = parity.check([onnx_path, altered], layers=True)
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    comparison = report["comparisons"][0]
    divergence = comparison["first_divergence"]
    assert divergence["nodes"][0] == "conv2" and divergence["introduced_here"] is True
    layer = next(x for x in comparison["layers"] if x["name"] == divergence["name"])
    # isolation fed the conv ONNX Runtime's own (captured, mapped) input: far off alone too
    assert layer["local_max_abs_diff"] == pytest.approx(layer["max_abs_diff"], rel=0.05)
    assert report["verdict"]["kind"] == "conversion"  # a fresh conversion of the ONNX matches
