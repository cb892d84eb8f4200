"""A --layers check loads the MNN model once, as a module that returns every tensor: its run
serves the model's outputs and the layer capture. MNN runs for real, in child processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import helpers
import parity
from parity.mnn import flatbuffer


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    """Two graph outputs, the first one also read by the op that makes the second, and a
    Conv whose weights MNN packs: the outputs MNN picks are not simply the unread tensors."""
    d = tmp_path_factory.mktemp("two_outputs")
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["first"]),
        helper.make_node("Sigmoid", ["first"], ["gate"]),
        helper.make_node("Mul", ["first", "gate"], ["second"]),
    ]
    onnx_path = helpers.save_model(nodes, [helpers.tensor("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                                   [helpers.tensor("first", TensorProto.FLOAT, [1, 8, 8, 8]),
                                    helpers.tensor("second", TensorProto.FLOAT, [1, 8, 8, 8])],
                                   d / "two_outputs.onnx", initializers=[weight])
    return onnx_path, helpers.to_mnn(onnx_path, d / "two_outputs.mnn")


def _models(two_outputs):
    """(ONNX, MNN) pairs."""
    return [(helpers.MODELS / "cnn.onnx", helpers.MODELS / "cnn.mnn"),
            (helpers.MODELS / "transformer.onnx", helpers.MODELS / "transformer.mnn"), two_outputs]


# Run in a child: MNN's own choice of inputs and outputs; then the model loaded both ways
# (parity.backends.mnn_child, as the worker runs it), its run and a capture of every tensor.
_PROBE = r"""
import json, sys
import numpy as np
import MNN
from parity.backends import mnn_child

import onnx

onnx_path, path = sys.argv[1:3]
values = [v for node in onnx.load(onnx_path).graph.node for v in node.output]
info = MNN.nn.load_module_from_file(path, [], []).get_info()
runs = {}
for every in (True, False):  # the second load asks for the tensors the first one returned
    loaded = mnn_child.load(path, "CPU", 1, "normal", [], every_tensor=values if every else None)
    rng = np.random.default_rng(0)
    feeds = {i["name"]: (rng.integers(0, 4, i["shape"]) if i["dtype"].startswith("int")
                         else rng.standard_normal(i["shape"])).astype(i["dtype"]) for i in loaded["inputs"]}
    names = mnn_child._state["every"][len(loaded["outputs"]):] if every else runs[True]["names"]
    plain = mnn_child.run(feeds, None)
    mnn_child.prepare(names)
    captured = mnn_child.run(feeds, None, outputs=names)
    runs[every] = {"names": names, "modules": len(mnn_child._state["modules"]),
                   "outputs": {k: v["array"].tolist() for k, v in plain.items()},
                   "captured": {k: v["array"].tolist() for k, v in captured.items() if "array" in v},
                   "declared": loaded["outputs"], "inputs": [i["name"] for i in loaded["inputs"]]}
sys.stdout.flush()
print("\nPROBE " + json.dumps({"mnn": [list(info["inputNames"]), list(info["outputNames"])],
                  "plain": runs[False], "every": runs[True]}))
"""


def _probe(pair):
    done = subprocess.run([sys.executable, "-c", _PROBE, *map(str, pair)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # MNN prints on C's stdout too, before or after (its buffer flushes at exit): the line alone
    return json.loads(done.stdout.rsplit("\nPROBE ", 1)[1].splitlines()[0])


def test_the_inputs_and_outputs_mnn_picks_are_read_from_the_file(two_outputs):
    for pair in _models(two_outputs):
        path = pair[1]
        probe = _probe(pair)
        assert list(flatbuffer.module_io(path)) == probe["mnn"], path.name
        assert probe["every"]["declared"] == probe["plain"]["declared"] == probe["mnn"][1]
        assert probe["every"]["inputs"] == probe["plain"]["inputs"] == probe["mnn"][0]


def test_one_module_serves_the_run_and_the_capture_with_the_same_values(two_outputs):
    """Loaded to return every tensor, the model is one module: its outputs and every captured
    tensor are those of the model's own module and of a capture module, bit for bit."""
    for pair in _models(two_outputs):
        path = pair[1]
        probe = _probe(pair)
        plain, every = probe["plain"], probe["every"]
        assert every["modules"] == 1 and plain["modules"] == 2, path.name  # no second load
        assert len(every["names"]) >= 3 or path == two_outputs[1]  # (its tensors pair with no ONNX value)
        assert every["outputs"] == plain["outputs"], path.name
        assert every["captured"].keys() == plain["captured"].keys() and len(every["captured"]) >= len(every["names"]) // 2
        assert every["captured"] == plain["captured"], path.name


def test_a_layers_check_reports_what_it_did_with_a_second_module(two_outputs):
    """The check with one module and one session returning every tensor (the default budget)
    and with capture modules and sessions (a budget given) report the same layers, verdicts
    and unpaired values; the figures agree to ONNX Runtime's rounding (a session returning
    every value makes none of the fusions that would hide one)."""
    from parity.backends.onnxruntime import OnnxRuntimeBackend

    for path in (helpers.MODELS / "transformer.onnx", two_outputs[0]):
        with OnnxRuntimeBackend(path, one_run=True) as every, OnnxRuntimeBackend(path) as plain:
            assert every._every and every.output_specs == plain.output_specs and every.input_specs == plain.input_specs
    onnx_path, mnn_path = two_outputs
    for pair in ([helpers.MODELS / "transformer.onnx", helpers.MODELS / "transformer.mnn"], [onnx_path, mnn_path]):
        one = parity.check(pair, layers=True, diagnose=False).to_dict()["comparisons"][0]
        two = parity.check(pair, layers=True, diagnose=False, max_memory=8 << 30).to_dict()["comparisons"][0]
        assert one["layers"] and one["unpaired"] == two["unpaired"]
        for a, b in zip(one["layers"] + one["outputs"], two["layers"] + two["outputs"], strict=True):
            assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
                {k: v for k, v in b.items() if not isinstance(v, float)}
            assert abs(a["max_abs_diff"] - b["max_abs_diff"]) <= 1e-5 + 1e-2 * b["max_abs_diff"], (a, b)


def test_one_run_only_where_every_tensor_fits_the_budget(tmp_path, two_outputs):
    """Every value of the graph, both sides, within a capture chunk of the default budget,
    sized from the declared input shapes (or --shapes): otherwise the capture goes in chunks."""
    from parity.checking.capture import default_max_memory, one_run_fits

    assert one_run_fits(helpers.MODELS / "transformer.onnx") and one_run_fits(two_outputs[0]) == ["conv", "first", "gate", "second"]
    free = helpers.save_model([helper.make_node("Relu", ["x"], ["y"])], [helpers.tensor("x", TensorProto.FLOAT, ["n", 8])],
                              [helpers.tensor("y", TensorProto.FLOAT, ["n", 8])], tmp_path / "free.onnx")
    assert not one_run_fits(free) and one_run_fits(free, {"x": [4, 8]})
    side = int((default_max_memory() // 8 // 4) ** 0.5) + 1  # one value alone is a chunk's worth
    big = helpers.save_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])],
                             [helpers.tensor("x", TensorProto.FLOAT, [side, side])],
                             [helpers.tensor("z", TensorProto.FLOAT, [side, side])], tmp_path / "big.onnx")
    assert not one_run_fits(big)
    assert not one_run_fits(tmp_path / "missing.onnx")
