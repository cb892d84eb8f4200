"""Structural diff of MNN graphs (parity.mnn.graph), on real conversions by MNN's converter."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import helpers
from mnn_edit import alter_mnn_constant
from parity.mnn.converter import convert
from parity.core.errors import BackendCrash, ModelError
from parity.mnn.graph import (GraphDiff, dump_json, fast_structural_diff, load_graph, read_graph, read_graphs,
                               structural_diff)


def _one_line(text: str) -> str:
    assert "\n" not in text and text.endswith("."), text
    return text


@pytest.fixture(scope="module")
def const_model(tmp_path_factory):
    """y = x + C with C a (4, 16) float constant: MNN keeps C as a Const op named 'C'."""
    d = tmp_path_factory.mktemp("const_model")
    c = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    onnx_path = helpers.save_model(
        [helper.make_node("Add", ["x", "C"], ["y"])],
        [helpers.tensor("x", TensorProto.FLOAT, [4, 16])],
        [helpers.tensor("y", TensorProto.FLOAT, [4, 16])],
        d / "add_const.onnx", initializers=[numpy_helper.from_array(c, "C")])
    return helpers.to_mnn(onnx_path, d / "add_const.mnn"), c


def test_two_conversions_of_one_model_diff_as_empty(tmp_path):
    # Different directories and file names: the command line differs, the graph must not.
    (tmp_path / "one").mkdir()
    (tmp_path / "second" / "deeper").mkdir(parents=True)
    source = tmp_path / "second" / "deeper" / "copy_of_cnn.onnx"
    shutil.copy(helpers.MODELS / "cnn.onnx", source)
    first = convert(helpers.MODELS / "cnn.onnx", tmp_path / "one" / "a.mnn").output
    second = convert(source, tmp_path / "second" / "b_longer_name.mnn").output
    a, b = read_graphs(first, second)
    assert a["mnn_uuid"] != b["mnn_uuid"]  # the field that always differs, and is ignored
    diff = structural_diff(a, b)
    assert diff.empty, diff.summary()
    assert diff.to_dict()["empty"] is True
    assert _one_line(diff.summary()) == "a and b have the same ops, parameters and constants."
    # The committed model was converted elsewhere, at another time: the same graph
    assert structural_diff(a, read_graph(helpers.MODELS / "cnn.mnn")).empty


def test_altered_const_is_named_with_count_and_max_abs_diff(const_model, tmp_path):
    mnn, c = const_model
    altered = tmp_path / "altered.mnn"
    name = alter_mnn_constant(mnn, altered, index=5, delta=0.5)
    assert name == "C"
    diff = structural_diff(*read_graphs(mnn, altered), labels=("given", "fresh"))
    assert not diff.empty
    assert (diff.params, diff.type_changes, diff.only_in_a, diff.only_in_b) == ((), (), (), ())
    (const,) = diff.constants
    assert (const.tensor, const.field, const.op_type) == ("C", None, "Const")
    assert (const.shape_a, const.shape_b, const.dtype_a, const.dtype_b) == ((4, 16), (4, 16), "float32", "float32")
    assert (const.size, const.differing) == (64, 1)
    assert const.max_abs_diff == pytest.approx(0.5, abs=2e-6)  # the dump prints six decimals
    assert _one_line(diff.summary()) == (
        "fresh differs from given: 1 constant differs: 'C' (1 of 64 values, max abs diff 0.5).")
    # The altered file loads and computes the change, at that element only
    from parity.backends.registry import open_backend

    x = helpers.randn(4, 16)
    outputs = []
    for path in (mnn, altered):
        with open_backend("mnn", path) as backend:
            outputs.append(backend.run({"x": x}).outputs["y"])
    gap = np.abs(outputs[1] - outputs[0])
    assert gap.flat[5] == pytest.approx(0.5, abs=1e-5)
    assert np.delete(gap.ravel(), 5).max() < 1e-6
    np.testing.assert_allclose(outputs[0], x + c, atol=1e-6)


def _figures(diff):
    return [(c.tensor, c.field, c.op_type, c.shape_a, c.shape_b, c.dtype_a, c.dtype_b, c.size, c.differing)
            for c in diff.constants]


@pytest.mark.parametrize("model", ["const", "conv"])
def test_the_fast_diff_reads_altered_values_as_the_dump_does(const_model, tmp_path, model):
    """Values changed in place: the bytes give the same constants as MNN's JSON dump, exactly
    (the dump prints six decimals), in milliseconds."""
    from parity.mnn.flatbuffer import data_vectors

    given = const_model[0] if model == "const" else helpers.MODELS / "cnn.mnn"
    data = bytearray(given.read_bytes())
    vector = next(v for v in data_vectors(bytes(data))[0] if v["dtype"] == "float32")
    at = vector["start"] + 4 * 5  # the sixth value, changed in place as a stray write would
    value = np.frombuffer(bytes(data[at:at + 4]), np.float32)[0]
    data[at:at + 4] = np.float32(value + 0.5).tobytes()
    altered = tmp_path / "altered.mnn"
    altered.write_bytes(bytes(data))
    fast = fast_structural_diff(given, altered, labels=("given", "fresh"))
    dumped = structural_diff(*read_graphs(given, altered), labels=("given", "fresh"))
    assert fast is not None and _figures(fast) == _figures(dumped) and len(fast.constants) == 1
    assert fast.constants[0].max_abs_diff == pytest.approx(0.5, abs=1e-6)
    assert fast.summary() == dumped.summary()


def test_the_fast_diff_leaves_structure_to_the_dump(tmp_path):
    assert fast_structural_diff(helpers.MODELS / "cnn.mnn", helpers.MODELS / "transformer.mnn") is None
    same = tmp_path / "same.mnn"
    helpers.to_mnn(helpers.MODELS / "cnn.onnx", same)  # a second conversion: only the uuid differs
    fast = fast_structural_diff(helpers.MODELS / "cnn.mnn", same)
    assert fast is not None and fast.empty


def test_altered_conv_weight_is_a_constant_of_its_op(tmp_path):
    altered = tmp_path / "cnn_altered.mnn"
    name = alter_mnn_constant(helpers.MODELS / "cnn.mnn", altered, index=3, delta=-0.25)
    diff = structural_diff(*read_graphs(helpers.MODELS / "cnn.mnn", altered))
    (const,) = diff.constants
    assert (const.tensor, const.field, const.op_type) == (name, "main.weight", "Convolution")
    assert (const.size, const.differing) == (16 * 3 * 3 * 3, 1)
    assert const.max_abs_diff == pytest.approx(0.25, abs=2e-6)
    assert diff.params == ()


@pytest.fixture(scope="module")
def transformer_variants(tmp_path_factory):
    d = tmp_path_factory.mktemp("transformer_variants")
    source = helpers.MODELS / "transformer.onnx"
    paths = {
        "default": convert(source, d / "default.mnn").output,
        "erf_gelu": convert(source, d / "erf_gelu.mnn", options=["--useGeluApproximation", "0"]).output,
        "fp16": convert(source, d / "fp16.mnn", options=["--fp16"]).output,
    }
    return dict(zip(paths, read_graphs(*paths.values())))


def test_gelu_option_shows_as_op_parameter(transformer_variants):
    diff = structural_diff(transformer_variants["default"], transformer_variants["erf_gelu"],
                           labels=("default", "--useGeluApproximation 0"))
    assert diff.constants == () and diff.only_in_a == () and diff.only_in_b == ()
    assert len(diff.params) == 2  # one GELU per block
    for param in diff.params:
        assert (param.op_type, param.path, param.value_a, param.value_b) == (
            "UnaryOp", "main.opType", "'GELU'", "'GELU_STANDARD'")
    summary = _one_line(diff.summary())
    assert summary.startswith("--useGeluApproximation 0 differs from default: 2 op parameters differ: ")
    assert "main.opType 'GELU' -> 'GELU_STANDARD'" in summary


def test_fp16_option_shows_as_constants_in_half_precision(transformer_variants):
    diff = structural_diff(transformer_variants["default"], transformer_variants["fp16"])
    weights = [c for c in diff.constants if c.field == "main.weight"]
    assert len(weights) == 10 and all(c.op_type == "Convolution" for c in weights)
    for const in weights:
        assert (const.dtype_a, const.dtype_b) == ("float32", "float16")
        assert const.shape_a == const.shape_b and const.differing > 0
        assert 0 < const.max_abs_diff < 1e-3  # fp16 rounding of weights below 1
    # A Const stored as DT_HALF: same value, another dtype
    (pow_const,) = [c for c in diff.constants if c.field is None]
    assert (pow_const.differing, pow_const.dtype_b) == (0, "float16")
    assert "same values, float32 vs float16" in _one_line(diff.summary(limit=20))
    summary = diff.summary(limit=2)
    assert "11 constants differ" in summary and "and 9 more" in summary
    capped = diff.to_dict(limit=3)
    json.dumps(capped, allow_nan=False)
    assert len(capped["constants"]) == 3 and capped["more"]["constants"] == 8
    assert capped["counts"]["constants"] == 11


# -- pure Python: hand-built dumps -------------------------------------------------------------
def _graph(ops, names, **top):
    return {"oplists": ops, "tensorName": names, "bizCode": "parity",
            "extraInfo": {"version": "3.6.1"}, "mnn_uuid": "x", **top}


def _const(out, values, dims, data_type="DT_FLOAT", field="float32s"):
    return {"type": "Const", "main_type": "Blob", "name": f"c{out}", "outputIndexes": [out],
            "main": {"dims": dims, "dataFormat": "NCHW", "dataType": data_type, field: values}}


def test_structural_diff_of_hand_built_graphs():
    names = ["x", "w", "y", "z"]
    a = _graph([
        {"type": "Input", "main_type": "Input", "outputIndexes": [0], "main": {"dims": [1, 4]}},
        _const(1, [1.0, 2.0, float("nan"), 4.0], [4]),
        {"type": "BinaryOp", "main_type": "BinaryOp", "inputIndexes": [0, 1], "outputIndexes": [2],
         "main": {"opType": "ADD"}},
        {"type": "ReLU", "main_type": "Relu", "inputIndexes": [2], "outputIndexes": [3], "main": {}},
    ], names, outputName=["z"])
    b = _graph([
        {"type": "Input", "main_type": "Input", "outputIndexes": [0], "main": {"dims": [1, 4]}},
        _const(1, [1.0, 2.5, float("nan"), -math.inf], [2, 2]),
        {"type": "BinaryOp", "main_type": "BinaryOp", "inputIndexes": [1, 0], "outputIndexes": [2],
         "main": {"opType": "MUL"}},
        {"type": "Sigmoid", "main_type": "NONE", "inputIndexes": [2], "outputIndexes": [3]},
        {"type": "Const", "main_type": "Blob", "outputIndexes": [4], "main": {"dims": [], "int32s": [1]}},
    ], names + ["extra"], outputName=["z"], bizCode="other")
    diff = structural_diff(a, b)
    (const,) = diff.constants
    assert (const.tensor, const.shape_a, const.shape_b, const.differing) == ("w", (4,), (2, 2), 2)
    assert const.max_abs_diff == math.inf  # NaN equals NaN; -inf against 4 is infinitely off
    assert [(p.tensor, p.path) for p in diff.params] == [("y", "inputs"), ("y", "main.opType")]
    assert [(t.tensor, t.op_type_a, t.op_type_b) for t in diff.type_changes] == [("z", "ReLU", "Sigmoid")]
    assert [o.tensor for o in diff.only_in_b] == ["extra"] and diff.only_in_a == ()
    assert [(m.path, m.value_a, m.value_b) for m in diff.metadata] == [("bizCode", "'parity'", "'other'")]
    summary = _one_line(diff.summary())
    assert summary.startswith("b differs from a: 1 constant differs: 'w' (shape [4] vs [2, 2], 2 of 4 values, "
                              "max abs diff inf); 1 op changed type: 'z' ReLU -> Sigmoid; ")
    assert summary.endswith("(metadata: bizCode 'parity' vs 'other').")
    assert json.loads(json.dumps(diff.to_dict()))["constants"][0]["max_abs_diff"] == "inf"
    # Metadata alone is no difference
    same = structural_diff(a, dict(a, bizCode="other", mnn_uuid="y", extraInfo={"version": "3.5.0"}))
    assert same.empty and len(same.metadata) == 2
    assert GraphDiff().empty


def test_load_graph_reads_long_lists_as_arrays_and_bare_inf(tmp_path):
    values = ", ".join(["0.5"] * 100 + ["inf", "-inf", "nan"])
    path = tmp_path / "g.json"
    path.write_text('\n{ "oplists": \n[ \n{ "type": "Const", "main_type": "Blob", "outputIndexes": \n[ 0 ]\n'
                    ', "main": \n{ "dims": \n[ 103 ]\n, "dataType": "DT_FLOAT", "float32s": \n'
                    f'[ {values} ]\n, "epsilon": inf }}\n }}\n]\n, "tensorName": \n[ "c" ]\n }}\n')
    graph = load_graph(path)
    data = graph["oplists"][0]["main"]["float32s"]
    assert isinstance(data, np.ndarray) and data.shape == (103,)
    assert data[99] == 0.5 and data[100] == np.inf and data[101] == -np.inf and np.isnan(data[102])
    assert graph["oplists"][0]["main"]["epsilon"] == math.inf


def test_files_that_are_not_mnn_models_are_model_errors(tmp_path):
    fake = tmp_path / "model.mnn"
    shutil.copy(helpers.MODELS / "cnn.onnx", fake)
    with pytest.raises(ModelError, match="is not an MNN model"):
        dump_json(fake, tmp_path / "out.json")
    truncated = tmp_path / "truncated.mnn"
    truncated.write_bytes((helpers.MODELS / "cnn.mnn").read_bytes()[:30000])
    # MNN's dump of a truncated file either prints ops without types or segfaults, from run to
    # run: both end as one clear error naming the file as corrupt
    with pytest.raises((ModelError, BackendCrash), match="corrupt"):
        read_graph(truncated)
    with pytest.raises(ModelError, match="does not exist"):
        read_graph(tmp_path / "missing.mnn")
