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


def _external_everywhere(tmp_path):
    """A model with external tensors in every place a TensorProto can sit: initializers, a
    Constant, a sparse initializer, an If branch's Constant and a function's Constant."""
    def constant(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.full((1, 4), value, np.float32), f"{name}_value"))

    branch = helper.make_graph([constant("b", 2.0)], "then", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([constant("c", 3.0)], "else", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4])])
    function = helper.make_function("local", "Offset", ["x"], ["y"], [constant("k", 4.0),
                                    helper.make_node("Add", ["x", "k"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), "sparse"),
                                       numpy_helper.from_array(np.array([0, 3], np.int64), "sparse_i"), [4])
    graph = helper.make_graph(
        [constant("a", 1.0), helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Add", ["s", "a"], ["t"]),
         helper.make_node("If", ["cond"], ["u"], then_branch=branch, else_branch=other),
         helper.make_node("Add", ["t", "u"], ["v"]), helper.make_node("Offset", ["v"], ["y"], domain="local")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.zeros((1, 4), np.float32), "w")], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function])
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0,
                                                         convert_attribute=True)
    for tensor in (function.node[0].attribute[0].t, model.graph.sparse_initializer[0].values):  # not moved by onnx
        onnx.external_data_helper.set_external_data(tensor, "w.bin", offset=0, length=8)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    model.functions[0].CopyFrom(function)
    path = tmp_path / "everywhere.onnx"
    onnx.save(model, path, save_as_external_data=False)
    return path


def _parsed_external(path):
    model = onnx.load(str(path), load_external_data=False)
    return _ordered([(t.name, {e.key: e.value for e in t.external_data}) for t in onnx_skeleton._tensors(model)
                     if t.data_location == TensorProto.EXTERNAL])


def _ordered(found):  # the walk goes in file order, onnx's parse in field order
    return sorted(found, key=lambda item: (item[0], sorted(item[1].items())))


def test_external_tensors_are_found_everywhere_without_parsing(tmp_path):
    path = _external_everywhere(tmp_path)
    found = _ordered(onnx_skeleton.external_tensors(path))
    assert found == _parsed_external(path)
    names = {name for name, _ in found}
    assert {"w", "a_value", "b_value", "c_value", "k_value", "sparse"} <= names, names
    assert all(info["location"] == "w.bin" for _, info in found)
    assert onnx_skeleton.external_tensors(_model(tmp_path)) == []  # weights inside: none


def test_external_tensors_agree_with_onnx_on_damaged_files(tmp_path):
    """Every one-byte change of a model with external data: whenever the wire walk reads the
    file, onnx's parse of it (when it parses) names the same tensors and files."""
    data = _external_everywhere(tmp_path).read_bytes()
    damaged, agreed = tmp_path / "damaged.onnx", 0
    for position in range(0, len(data), 3):
        for value in (0x00, 0xFF, data[position] ^ 0x08):
            damaged.write_bytes(data[:position] + bytes([value]) + data[position + 1:])
            walked = onnx_skeleton._mapped(damaged, onnx_skeleton._external_in)
            try:
                parsed = _parsed_external(damaged)
            except Exception:
                continue  # not a model to onnx: what the walk says is left to the framework
            if walked is not None:
                assert _ordered(walked) == parsed, (position, value)
                agreed += 1
    assert agreed > len(data) // 2


def test_reading_external_data_locations_does_not_import_onnx(tmp_path):
    import subprocess
    import sys

    path = _external_everywhere(tmp_path)
    code = ("import sys; from parity.core.paths import external_data; found = external_data(sys.argv[1]); "
            "print(len(found), 'onnx' in sys.modules, 'ml_dtypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False", "False"], out


def _mixed_weights(tmp_path):
    """Initializers of every kind the in-memory capture meets: raw float32, float16, int64 and
    bool (taken out), typed float_data and bfloat16 (left inline), a small one (left inline)."""
    rng = np.random.default_rng(1)
    big = numpy_helper.from_array(rng.standard_normal((48, 16)).astype(np.float32), "big")
    half = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float16), "half")
    index = numpy_helper.from_array(rng.integers(0, 48, (40,)).astype(np.int64), "index")
    keep = numpy_helper.from_array(rng.random((8, 16)) > 0.5, "keep")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [16, 16], rng.standard_normal(256).tolist())
    brain = helper.make_tensor("brain", TensorProto.BFLOAT16, [16], [0x3F80] * 16, raw=False)
    small = numpy_helper.from_array(np.float32([0.25]), "small")
    nodes = [
        helper.make_node("Gather", ["big", "index"], ["rows"], axis=0),
        helper.make_node("Cast", ["half"], ["half32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["rows", "half32"], ["mixed"]),
        helper.make_node("MatMul", ["mixed", "typed"], ["typed_out"]),
        helper.make_node("Cast", ["brain"], ["brain32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["typed_out", "brain32"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "small"], ["scaled"]),
        helper.make_node("Add", ["scaled", "x"], ["summed"]),
        helper.make_node("Slice", ["summed", "zero", "eight", "zero"], ["head"]),
        helper.make_node("Where", ["keep", "head", "zero_f"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [40, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[big, half, index, keep, typed, brain, small,
                     numpy_helper.from_array(np.int64([0]), "zero"), numpy_helper.from_array(np.int64([8]), "eight"),
                     numpy_helper.from_array(np.float32(0), "zero_f")])
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, [n.output[0] for n in nodes]


def test_a_capture_with_weights_in_memory_computes_what_the_file_does(tmp_path):
    """ONNX Runtime given the raw initializers as arrays (the capture session's fast form)
    returns, bit for bit, what it returns from the whole file; only the raw tensors of types
    numpy holds are taken out, and the model bytes left are small."""
    import onnxruntime as ort

    path, values = _mixed_weights(tmp_path)
    model_bytes, arrays = onnx_skeleton.with_outputs_in_memory(path, values, keep_below=64)
    assert sorted(arrays) == ["big", "half", "index", "keep"]
    full = onnx.load(str(path))
    for name, array in arrays.items():
        expected = numpy_helper.to_array(next(t for t in full.graph.initializer if t.name == name))
        assert array.dtype == expected.dtype and np.array_equal(array, expected), name
    assert len(model_bytes) < path.stat().st_size - sum(a.nbytes for a in arrays.values()) + 400

    feeds = {"x": np.random.default_rng(2).standard_normal((40, 16)).astype(np.float32)}
    options = ort.SessionOptions()
    options.add_external_initializers(list(arrays), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()])
    in_memory = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]).run(values, feeds)
    whole = ort.InferenceSession(onnx_skeleton.with_outputs(path, values),
                                 providers=["CPUExecutionProvider"]).run(values, feeds)
    for name, a, b in zip(values, in_memory, whole):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
