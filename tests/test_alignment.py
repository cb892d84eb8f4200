"""Output pairing and alignment, on real ORT/MNN outputs and on hand-packed buffers."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import parity
from helpers import MODELS, ort_run, randn, report_json, save_model, tensor, to_mnn
from parity.core.align import AlignmentError, pair_outputs, unpack_nc4hw4
from parity.core.errors import ExitCode, ParityError
from parity.core.judge import diff_tensors
from parity.core.metrics import Tolerance


def align_array(reference, candidate):
    judged, _ = diff_tensors("t", reference, candidate, Tolerance())
    return judged.alignment.array, judged.alignment.steps


def test_nc4hw4_tensors_are_converted_and_reported(tmp_path):
    """MNN keeps conv results in NC4HW4; asked for one, parity converts it and says so."""
    from parity.backends.mnn import MnnBackend

    model = onnx.load(str(MODELS / "cnn.onnx"))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.output.append(helper.make_empty_tensor_value_info(relu.output[0]))
    onnx.save(model, str(tmp_path / "marked.onnx"))
    x = randn(1, 3, 32, 32)
    expected = ort_run(tmp_path / "marked.onnx", {"x": x})[relu.output[0]]
    with MnnBackend(MODELS / "cnn.mnn") as mnn:
        result = mnn.run({"x": x}, outputs=[relu.output[0]])
    got = result.outputs[relu.output[0]]
    assert got.shape == expected.shape == (1, 16, 32, 32)
    assert result.steps[relu.output[0]][0].startswith("nc4hw4 -> nchw")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_integer_outputs_compare_by_value_across_widths(tmp_path):
    onnx_path = save_model([helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0)],
                           [tensor("x", shape=[2, 9])], [tensor("idx", TensorProto.INT64, [2])],
                           tmp_path / "argmax.onnx")
    checked = parity.check([onnx_path, to_mnn(onnx_path)])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    output = report_json(checked)["comparisons"][0]["outputs"][0]
    assert output["reference_dtype"] == "int64"
    assert output["exact_match_fraction"] == 1.0
    if output["candidate_dtype"] != "int64":
        assert any("compared by value" in s for s in output["alignment"])


def test_outputs_with_other_names_pair_by_order(tmp_path):
    renamed = onnx.load(str(MODELS / "cnn.onnx"))
    for node in renamed.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    renamed.graph.output[0].name = "scores"
    onnx.save(renamed, str(tmp_path / "renamed.onnx"))
    checked = parity.check([tmp_path / "renamed.onnx", MODELS / "cnn.mnn"])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    output = report_json(checked)["comparisons"][0]["outputs"][0]
    assert (output["reference_name"], output["candidate_name"]) == ("scores", "logits")
    assert "paired by order" in output["alignment"][0]


def test_gather_indices_stay_inside_the_table(tmp_path):
    table = numpy_helper.from_array(randn(5, 4), "table")
    onnx_path = save_model([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                           [tensor("ids", TensorProto.INT64, [1, 50])], [tensor("y", shape=[1, 50, 4])],
                           tmp_path / "emb.onnx", initializers=[table])
    checked = parity.check([onnx_path, to_mnn(onnx_path)], save_inputs=tmp_path / "i.npz")
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    ids = np.load(tmp_path / "i.npz")["ids"]
    assert ids.min() >= 0 and ids.max() < 5 and len(np.unique(ids)) == 5
    report = report_json(checked)
    assert any("Gather table of 5 rows" in n for n in report["inputs"]["ids"]["notes"])
    assert any("int32" in n for n in report["notes"])  # MNN took the int64 feed as int32


def test_dynamic_dims_default_and_shape_option(tmp_path):
    onnx_path = save_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                           [tensor("x", shape=["batch", "seq", 8])], [tensor("y", shape=["batch", "seq", 8])],
                           tmp_path / "dyn.onnx")
    mnn_path = to_mnn(onnx_path)
    default = parity.check([onnx_path, mnn_path])
    assert default.exit_code == ExitCode.PASS, default.verdict.summary
    info = report_json(default)["inputs"]["x"]
    assert info["shape"] == [1, 1, 8] and "dynamic dims" in info["notes"][0]
    given = parity.check([onnx_path, mnn_path], shapes={"x": [3, 5, 8]})
    assert given.exit_code == ExitCode.PASS, given.verdict.summary
    assert report_json(given)["inputs"]["x"]["shape"] == [3, 5, 8]
    with pytest.raises(ParityError, match="conflicts") as conflict:
        parity.check([onnx_path, mnn_path], shapes={"x": [3, 5, 9]})
    assert conflict.value.exit_code == ExitCode.MODEL_OR_INPUT


def test_flat_buffer_reshaped_to_reference():
    reference = ort_run(MODELS / "transformer.onnx",
                        {"src": randn(1, 64, 32), "src_mask": np.ones((1, 64), np.float32)})["out"]
    flat = reference.reshape(-1).copy()
    aligned, steps = align_array(reference, flat)
    assert steps == ("reshape (32768,) -> (1, 64, 512)",)
    assert np.array_equal(aligned, reference)


def _pack_nc4hw4(x):
    n, c, h, w = x.shape
    blocks = -(-c // 4)
    padded = np.zeros((n, blocks * 4, h, w), x.dtype)
    padded[:, :c] = x
    return padded.reshape(n, blocks, 4, h, w).transpose(0, 1, 3, 4, 2).reshape(-1)


def test_nc4hw4_flat_buffer_unpacked():
    x = randn(2, 6, 3, 5)
    packed = _pack_nc4hw4(x)
    assert packed.size == 2 * 8 * 3 * 5
    np.testing.assert_array_equal(unpack_nc4hw4(packed, x.shape), x)
    aligned, steps = align_array(x, packed)
    np.testing.assert_array_equal(aligned, x)
    assert steps[0].startswith("nc4hw4 -> nchw")


def test_wrong_length_cannot_be_aligned():
    with pytest.raises(AlignmentError, match="element count differs"):
        align_array(np.zeros((1, 64, 512), np.float32), np.zeros(10000, np.float32))
    with pytest.raises(AlignmentError, match="float16 data read as float32"):
        align_array(np.zeros((1, 64, 512), np.float32), np.zeros(16384, np.float32))


def test_pairing_rules():
    p = pair_outputs(["a", "b", "c"], ["c", "x", "y"])
    # in the reference's order, wherever the name match stands on the candidate's side
    assert [(q.reference_name, q.candidate_name, q.how) for q in p.pairs] == [
        ("a", "x", "order"), ("b", "y", "order"), ("c", "c", "name")]
    p = pair_outputs(["c", "a", "b"], ["x", "y", "c"])
    assert [(q.reference_name, q.candidate_name, q.how) for q in p.pairs] == [
        ("c", "c", "name"), ("a", "x", "order"), ("b", "y", "order")]
    assert p.missing_in_candidate == () and p.extra_in_candidate == ()
    q = pair_outputs(["a", "b"], ["a"])
    assert q.missing_in_candidate == ("b",) and len(q.pairs) == 1
