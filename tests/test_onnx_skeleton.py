"""onnx_skeleton: the graph of an ONNX model without its weights, equal to onnx.load's in
everything but the initializers' values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import MODELS
from parity.core import onnx_skeleton


def _model(tmp_path, external: bool = False):
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "weight")
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 32], rng.standard_normal(320).tolist())
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 2048])  # int64_data, not raw
    constant = helper.make_node("Constant", [], ["offset"], value=numpy_helper.from_array(
        np.full((1, 64), 0.5, np.float32), "offset_value"))
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], axis=0),
        helper.make_node("MatMul", ["embedded", "weight_t"], ["projected"], name=""),  # unnamed
        helper.make_node("Transpose", ["weight"], ["weight_t"], perm=[1, 0]),
        constant,
        helper.make_node("Add", ["projected", "offset"], ["added"]),
        helper.make_node("Reshape", ["added", "shape"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[weight, table, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    if external:
        onnx.save(model, path, save_as_external_data=True, location="model.data", size_threshold=0)
    else:
        onnx.save(model, path)
    return path


def _same_graph(light, full):
    assert [n.SerializeToString() for n in light.graph.node] == [n.SerializeToString() for n in full.graph.node]
    assert light.graph.input == full.graph.input and light.graph.output == full.graph.output
    assert light.opset_import == full.opset_import and light.ir_version == full.ir_version
    described = [(t.name, list(t.dims), t.data_type, t.data_location, list(t.external_data))
                 for t in full.graph.initializer]
    assert [(t.name, list(t.dims), t.data_type, t.data_location, list(t.external_data))
            for t in light.graph.initializer] == described


@pytest.mark.parametrize("external", [False, True], ids=["weights inside", "external data"])
def test_the_skeleton_is_the_graph_without_the_weights(tmp_path, external):
    path = _model(tmp_path, external)
    light, full = onnx_skeleton.load(path), onnx.load(str(path), load_external_data=False)
    _same_graph(light, full)
    for tensor in light.graph.initializer:  # no values travel
        assert not (tensor.raw_data or tensor.float_data or tensor.int64_data)
    assert light.ByteSize() < full.ByteSize() or external


def test_shipped_models_read_the_same(tmp_path):
    for path in sorted(MODELS.glob("*.onnx")):
        _same_graph(onnx_skeleton.load(path), onnx.load(str(path), load_external_data=False))


def test_input_bounds_come_from_the_skeleton(tmp_path):
    from parity.core.inputs import integer_input_bounds

    assert integer_input_bounds(_model(tmp_path)) == {"ids": 10}  # rows of the Gather table


@pytest.mark.parametrize("content", [b"", b"\x0f\xff\xff", b"not a model at all " * 10])
def test_what_is_not_a_model_raises_as_onnx_does(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    try:
        expected = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        with pytest.raises(type(exc)):
            onnx_skeleton.load(path)
    else:  # protobuf reads some garbage as an (empty) model: so does the skeleton
        assert onnx_skeleton.load(path) == expected
