"""Tensors MNN's read() refuses. A capture once failed as a whole on one, and was bisected with
one more run per half (BERT-base's --layers went from 155 s to 21 s); now a tensor MNN cannot
return fails alone, named with its reason, and an empty one (a dim of 0, where read() raises too:
a Slice of nn.MultiheadAttention's export) comes back as an empty array and is compared."""

from __future__ import annotations

import pytest

import parity
from helpers import report_json, to_mnn

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from torch import nn

    d = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    onnx_path = d / "enc.onnx"
    torch.onnx.export(model, (torch.randn(1, 8, 16),), str(onnx_path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return onnx_path, to_mnn(onnx_path)


SLICE = "/layers.0/self_attn/Slice_1_output_0"  # empty in both frameworks


def test_an_empty_tensor_comes_back_as_an_empty_array_of_its_shape(encoder):
    """MNN's read() of a tensor with a dim of 0 raises; the child returns it as an empty array of
    the shape MNN computed (it once failed here, and was reported as a tensor MNN cannot return)."""
    import numpy as np

    from parity.backends.mnn import MnnBackend
    from parity.backends.onnxruntime import OnnxRuntimeBackend
    from parity.checking.onnx_graph import OnnxGraph

    onnx_path, mnn_path = encoder
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32)}
    with OnnxRuntimeBackend(onnx_path) as ort:
        names = [v.name for v in OnnxGraph(ort.model_proto()).values if "/" in v.name]
        reference = ort.capture(feeds, [SLICE]).outputs[SLICE]
    with MnnBackend(mnn_path) as mnn:
        graph_names = {e["name"] for e in mnn.graph()}
        asked = [n for n in names if n in graph_names]
        result = mnn.capture(feeds, asked)
    assert not result.failed and set(result.outputs) == set(asked)
    assert reference.size == 0 and result.outputs[SLICE].size == 0 and 0 in result.outputs[SLICE].shape


def test_layers_compare_the_empty_tensor_instead_of_calling_it_unreturnable(encoder, tmp_path):
    onnx_path, mnn_path = encoder
    checked = parity.check([onnx_path, mnn_path], layers=True)
    assert checked.exit_code == 0, checked.verdict.summary
    comparison = report_json(checked)["comparisons"][0]
    assert SLICE not in {u["name"] for u in comparison["unpaired"]}
    (layer,) = [layer for layer in comparison["layers"] if layer["name"] == SLICE]
    assert layer["passed"] and layer["max_abs_diff"] is None


def test_the_reason_for_a_tensor_mnn_cannot_return_holds_no_memory_address():
    """Under a profiler (inherited by MNN's forked child) MNN's binding names the failed call
    "<built-in method read of Var object at 0x...>": a reason that differs from run to run and
    from tensor to tensor would split the terminal's groups and every report's diff."""
    from parity.run.worker import failure_reason

    first = SystemError("<built-in method read of Var object at 0x7f3a9c0d1e20> returned a result with an "
                        "exception set\nmore")
    second = SystemError("<built-in method read of Var object at 0x55d0aa01b3c8> returned a result with an "
                         "exception set")
    assert failure_reason(first) == failure_reason(second) == (
        "SystemError: <built-in method read of Var object> returned a result with an exception set")
