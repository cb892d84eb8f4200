"""The numerics verdict: amplified float32 rounding is nobody's bug, and real bugs stay bugs.

The models (numerics_models.py) are correct in both frameworks; their layers' gains amplify
last-bit differences. Ground truth is independent of parity: each test checks with plain numpy
that ONNX Runtime and MNN really are both correct layer by layer (float64 on their own inputs)
before asserting the verdict, and the planted bugs are weight changes made in the ONNX before
conversion.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import numerics_models as nm
import parity
from helpers import report_json, run_json, save_model, tensor, to_mnn
from parity.checking import numerics
from parity.core.errors import ExitCode

AMPLIFIERS = [
    ("tanh_chain", {"depth": 40, "width": 64, "gain": 3.0, "seed": 4}),
    ("tanh_chain", {"depth": 30, "width": 128, "gain": 3.0, "seed": 0}),
    ("tanh_chain", {"depth": 40, "width": 32, "gain": 4.0, "seed": 0}),
    ("residual_mlp", {"depth": 32, "gain": 3.0, "act": "Tanh"}),
    ("recurrent", {"steps": 48, "radius": 4.0}),
    ("recurrent", {"steps": 64, "radius": 6.0}),
    ("conv_chain", {"depth": 24, "gain": 3.0}),
]


def _ids(params):
    name, kw = params
    return name + "-" + "-".join(f"{k}{v}" for k, v in kw.items())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """name -> (onnx, mnn), converted once per module."""
    cache = {}

    def make(name, kw, change=None):
        key = (name, tuple(sorted(kw.items())), change)
        if key not in cache:
            d = tmp_path_factory.mktemp("numerics")
            onnx_path = nm.BUILDERS[name](d / f"{name}.onnx", **kw)
            if change is None:
                cache[key] = onnx_path, to_mnn(onnx_path)
            else:  # the bug: the MNN file converted from the ONNX with one weight changed
                changed = nm.BUILDERS[name](d / f"{name}_changed.onnx", change=change, **kw)
                cache[key] = onnx_path, to_mnn(changed, d / f"{name}.mnn")
        return cache[key]

    return make


@pytest.mark.parametrize("params", AMPLIFIERS, ids=_ids)
def test_amplified_rounding_is_numerics_with_the_growth_figures(made, params):
    name, kw = params
    onnx_path, mnn_path = made(name, kw)
    checked = parity.check([onnx_path, mnn_path])
    assert checked.exit_code == ExitCode.MISMATCH
    verdict = report_json(checked)["verdict"]
    assert verdict["kind"] == "numerics", verdict["summary"]
    summary = verdict["summary"]
    assert "per layer" in summary and "crosses the tolerance at" in summary and "float64" in summary
    finding = next(e for e in verdict["evidence"] if e["experiment"] == "amplified rounding")
    assert finding["growth_per_layer"] > 1
    # the growth is real: the error at the end of the path is far above its start
    errors = [p["error_in_model"] for p in finding["path"]]
    assert errors[-1] > 100 * min(errors)
    # every sampled layer was evaluated on both sides, within float32 rounding
    assert len(finding["sampled_layers"]) >= 5
    for layer in finding["sampled_layers"]:
        assert layer["local_error_mnn"] <= 1e-5 and layer["local_error_onnxruntime"] <= 1e-5, layer
    # both frameworks are far from float64 where the outputs fail: nobody computes it exactly
    for row in finding["distance_from_float64"]:
        assert row["onnxruntime"] > 1e-5 and row["mnn"] > 1e-5
    assert "not a bug" in summary and not any("--repro" in step for step in verdict["next_steps"])


@pytest.mark.parametrize("name, kw, layer", [
    ("tanh_chain", {"depth": 40}, 12),
    ("tanh_chain", {"depth": 40}, 2),
    # late: the accumulated rounding is already large there, and the crossing comes right after
    ("tanh_chain", {"depth": 40, "width": 64, "gain": 3.0, "seed": 4}, 35),
    ("residual_mlp", {"depth": 32, "gain": 3.0, "act": "Tanh"}, 3),
    ("conv_chain", {"depth": 24, "gain": 3.0}, 10),
], ids=["chain-layer12", "chain-layer2", "chain-layer35", "residual-block3", "conv-layer10"])
def test_a_half_percent_weight_change_stays_conversion(made, name, kw, layer):
    onnx_path, mnn_path = made(name, kw, change=(layer, 0.005))
    checked = parity.check([onnx_path, mnn_path])
    assert checked.exit_code == ExitCode.MISMATCH
    verdict = report_json(checked)["verdict"]
    assert verdict["kind"] == "conversion", verdict["summary"]
    finding = next(e for e in verdict["evidence"] if e["experiment"] == "amplified rounding")
    assert finding["result"] == "not amplified rounding"
    assert "wrong on its own inputs" in finding["reason"]
    prefix = {"tanh_chain": "m", "residual_mlp": "/block", "conv_chain": "/conv"}[name]
    assert f"{prefix}{layer}" in finding["reason"]


def _logistic_map(path, steps: int = 40, changed_at: int | None = None):
    """x <- 3.9 x (1 - x), 40 times: chaotic. ``changed_at``: that step's 3.9 raised by 1e-5."""
    nodes, inits, current = [helper.make_node("Sigmoid", ["x"], ["x0"])], [], "x0"
    inits.append(numpy_helper.from_array(np.array([1.0], np.float32), "one"))
    for i in range(steps):
        r = 3.9 * (1 + 1e-5) if i == changed_at else 3.9
        inits.append(numpy_helper.from_array(np.array([r], np.float32), f"r{i}"))
        nodes += [helper.make_node("Sub", ["one", current], [f"s{i}"]),
                  helper.make_node("Mul", [current, f"s{i}"], [f"p{i}"]),
                  helper.make_node("Mul", [f"p{i}", f"r{i}"], [f"x{i + 1}"])]
        current = f"x{i + 1}"
    return save_model(nodes, [tensor("x", shape=[4, 64])], [tensor(current, shape=[4, 64])], path, inits)


def test_a_constant_changed_by_a_hundred_ulps_in_a_chaotic_model_is_conversion_not_numerics(tmp_path):
    """A relative change of 1e-5 hid under the rounding allowed to any layer (2e-5), and a model
    that amplifies rounding then took the blame off the file. An op float32 computes exactly
    (this Mul) is allowed a few ulps: the changed one is wrong on its own inputs."""
    onnx_path = _logistic_map(tmp_path / "map.onnx")
    faithful = report_json(parity.check([onnx_path, to_mnn(onnx_path)]))["verdict"]
    assert faithful["kind"] == "numerics", faithful["summary"]
    changed = to_mnn(_logistic_map(tmp_path / "map_changed.onnx", changed_at=5), tmp_path / "map_changed.mnn")
    verdict = report_json(parity.check([onnx_path, changed]))["verdict"]
    assert verdict["kind"] == "conversion", verdict["summary"]
    finding = next(e for e in verdict["evidence"] if e["experiment"] == "amplified rounding")
    assert "x6 (Mul) is wrong on its own inputs" in finding["reason"], finding
    # the outputs fail layers later (the change crosses the tolerance downstream): where names x6 first
    assert verdict["where"].startswith("x6 (Mul), wrong on its own inputs"), verdict["where"]


def test_self_multiplying_chain_under_convert_is_numerics(tmp_path):
    """The suite's own 24-layer chain (x @ x, then Tanh): was called a converter bug."""
    nodes, previous = [], "x"
    for i in range(24):
        nodes.append(helper.make_node("MatMul", [previous, previous], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        previous = f"t{i}"
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 256, 256])], [tensor(previous, shape=[1, 256, 256])],
                           tmp_path / "chain.onnx")
    result = run_json("convert", onnx_path, "-o", tmp_path / "chain.mnn")
    assert result.code == ExitCode.MISMATCH, result.err
    assert result.json()["verdict"]["kind"] == "numerics", result.json()["verdict"]["summary"]


def test_without_a_float64_figure_the_verdict_is_undetermined(made, monkeypatch):
    """Growth and right layers, but the model is over the float64 size limit: nobody is blamed."""
    monkeypatch.setattr(numerics, "MAX_FLOAT64_WEIGHT_BYTES", 0)
    onnx_path, mnn_path = made(*AMPLIFIERS[0])
    report = parity.check([onnx_path, mnn_path])
    assert report.exit_code == ExitCode.MISMATCH
    assert report.verdict.kind == "undetermined", report.verdict.summary
    finding = next(e for e in report.verdict.evidence if e["experiment"] == "amplified rounding")
    assert finding["result"] == "not run" and "MiB" in finding["reason"]


def test_without_a_float64_evaluation_of_the_graph_numerics_says_undetermined(made, monkeypatch):
    """Every layer is right and the error grows, but the whole graph cannot be evaluated in
    float64 (its values would not fit): the numerics test itself says undetermined."""
    monkeypatch.setattr(numerics, "MAX_FLOAT64_ACTIVATION_BYTES", 0)
    onnx_path, mnn_path = made(*AMPLIFIERS[0])
    report = parity.check([onnx_path, mnn_path])
    assert report.verdict.kind == "undetermined", report.verdict.summary
    finding = next(e for e in report.verdict.evidence if e["experiment"] == "amplified rounding")
    assert finding["result"] == "undetermined" and "no float64 evaluation" in finding["reason"]
    assert "neither the converter nor a kernel can be blamed" in report.verdict.summary
    # it decided: the reconversions and runtime variants did not run
    assert not any(e["experiment"] in ("fresh conversion", "runtime variant") for e in report.verdict.evidence)


def test_numpy_op_reference_compares_on_the_same_inputs(made, monkeypatch):
    """With the numerics test out of the way, the op-level numpy check must not call a correct
    Tanh a converter bug: its evaluation on ONNX Runtime's inputs matches ONNX Runtime."""
    monkeypatch.setattr(numerics, "GROWTH", float("inf"))  # the growth test never holds
    onnx_path, mnn_path = made(*AMPLIFIERS[0])
    report = parity.check([onnx_path, mnn_path])
    assert report.verdict.kind not in ("conversion", "runtime"), report.verdict.summary
    op_check = next(e for e in report.verdict.evidence if e["experiment"] == "numpy reference of the MNN op")
    assert op_check["kind"] is None
    assert op_check["numpy_op_vs_onnxruntime"] < 1e-5 and op_check["kernel_vs_numpy_op"] < 1e-5
    assert op_check["numpy_op_vs_onnxruntime_inputs"] == "ONNX Runtime's"


# -- the pure parts -------------------------------------------------------------------------------
def test_float64_model_widens_floats_only(tmp_path):
    """Casts to float, float constants and weights become float64; integers stay; the float64
    evaluation agrees with ONNX Runtime to float32 rounding on a model mixing them."""
    import onnxruntime as ort

    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "w")
    shape = numpy_helper.from_array(np.array([4, 2], np.int64), "shape")
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32(0.5), "c")),
             helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "fi"], ["s"]),
             helper.make_node("Mul", ["s", "c"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["y"])]
    path = save_model(nodes, [tensor("x", shape=[2, 3]), tensor("i", TensorProto.INT32, [2, 4])],
                      [tensor("y", shape=[4, 2])], tmp_path / "mixed.onnx", initializers=[w, shape])
    model = onnx.load(str(path))
    wide = numerics.float64_model(model)
    assert {t.name: t.data_type for t in wide.graph.initializer} == {"w": TensorProto.DOUBLE,
                                                                    "shape": TensorProto.INT64}
    cast = next(n for n in wide.graph.node if n.op_type == "Cast")
    assert cast.attribute[0].i == TensorProto.DOUBLE
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
             "i": np.arange(8, dtype=np.int32).reshape(2, 4)}
    exact = numerics.evaluate(model, feeds, ["y"])["y"]
    assert exact.dtype == np.float64
    weights = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4).astype(np.float64)  # as stored
    expected = (feeds["x"].astype(np.float64) @ weights + feeds["i"]) * 0.5
    np.testing.assert_allclose(exact, expected.reshape(4, 2), rtol=1e-12)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]
    assert numerics.scaled(got, exact) < 1e-6


def test_layer_model_holds_only_the_layers_nodes_and_the_weights_they_read(tmp_path):
    """The layer between its frontier and its output, cut without copying the whole model: its
    nodes, the constants and initializers they read and nothing else (a large weight elsewhere
    stays out), in the model's own types; span_model is the same layer widened to float64.
    Evaluated alone on the whole model's values at the frontier it gives the whole model's."""
    from onnx.reference import ReferenceEvaluator

    from parity.checking.onnx_graph import OnnxGraph

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w2")
    big = numpy_helper.from_array(rng.standard_normal((4, 256)).astype(np.float32), "big")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32(0.5), "c")),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Mul", ["m", "c"], ["y"]),
             helper.make_node("MatMul", ["y", "big"], ["z"])]
    path = save_model(nodes, [tensor("x", shape=[2, 3])], [tensor("z", shape=[2, 256])], tmp_path / "chain.onnx",
                      initializers=[w1, w2, big])
    model = onnx.load(str(path))
    graph = OnnxGraph(model)
    layer = numerics.layer_model(model, graph, "y", ["r"])
    assert [n.op_type for n in layer.graph.node] == ["Constant", "MatMul", "Mul"]
    assert [(t.name, t.data_type) for t in layer.graph.initializer] == [("w2", TensorProto.FLOAT)]
    assert [i.name for i in layer.graph.input] == ["r"] and [o.name for o in layer.graph.output] == ["y"]
    x = rng.standard_normal((2, 3)).astype(np.float32)
    whole = ReferenceEvaluator(model).run(None, {"x": x}, intermediate=True)
    alone = ReferenceEvaluator(layer).run(["y"], {"r": whole["r"]})[0]
    assert alone.dtype == np.float32
    np.testing.assert_array_equal(alone, whole["y"])
    wide = numerics.span_model(model, graph, "y", ["r"])
    assert [(t.name, t.data_type) for t in wide.graph.initializer] == [("w2", TensorProto.DOUBLE)]
    assert [n.op_type for n in wide.graph.node] == ["Constant", "MatMul", "Mul"]


def test_sample_path_puts_the_target_and_the_jumps_first():
    from parity.core.report import LayerResult

    def layer(i, error):
        return LayerResult(f"v{i}", f"v{i}", f"v{i}", "Op", None, None, True, error, None, None, None,
                           error, 1.0, (1,), (1,), index=i)

    errors = [1e-7 * 1.2 ** i for i in range(40)]
    errors[17] = 5e-3  # a bug: its error appears at once
    errors[18:] = [5e-3 * 1.2 ** i for i in range(22)]
    path = [layer(i, e) for i, e in enumerate(errors)]
    sample = numerics.sample_path(path, limit=12)  # without the graph: no jumps, the rest spread
    assert len(sample) == 12 and len({x.name for x in sample}) == 12
    assert [x.name for x in sample[:5]] == ["v39", "v38", "v37", "v36", "v35"]
    spread = sorted(x.index for x in sample[5:])
    assert spread[0] <= 5 and spread[-1] >= 25  # over the whole path, not its first half
    short = numerics.sample_path(path[:5], limit=12)
    assert {x.name for x in short} == {f"v{i}" for i in range(5)}


def test_sample_path_ranks_jumps_against_each_layers_own_inputs(tmp_path):
    """A chain whose layer 17 jumps: with the graph, the jump comes right after the target."""
    import onnx
    from parity.checking.onnx_graph import OnnxGraph
    from parity.core.report import LayerResult

    path_model = nm.tanh_chain(tmp_path / "c.onnx", depth=20, width=4)
    graph = OnnxGraph(onnx.load(str(path_model)))
    names = [v.name for v in graph.values]
    errors = [1e-7 * 1.3 ** i for i in range(len(names))]
    jump = names.index("m17")
    errors[jump] = errors[jump - 1] * 1000
    path = [LayerResult(n, n, n, "Op", None, None, True, e, None, None, None, e, 1.0, (1, 4), (1, 4), index=i)
            for i, (n, e) in enumerate(zip(names, errors))]
    sample = numerics.sample_path(path, graph, set(names), limit=10)
    assert sample[0].name == names[-1] and sample[1].name == "m17"


def test_distances_are_relative_and_shape_checked():
    exact = np.array([3.0, 4.0])
    assert numerics.relative_l2(exact * 1.01, exact) == pytest.approx(0.01)
    assert numerics.scaled(np.array([3.0, 4.04]), exact) == pytest.approx(0.01)
    assert numerics.relative_l2(np.zeros(3), exact) is None
    assert numerics.relative_l2(np.array([np.nan, 4.0]), exact) == 0.0


def test_where_names_only_a_layer_measured_wrong_never_one_left_unevaluated():
    """A layer whose evaluation failed has no local error: it is not 'wrong on its own inputs'."""
    from types import SimpleNamespace

    from parity.checking.diagnose import _pinned
    from parity.core.report import Verdict

    def verdict(*layers):
        finding = {"experiment": "amplified rounding", "sampled_layers": [
            {"layer": name, "op": "Mul", "local_error_mnn": mnn, "local_error_onnxruntime": 1e-8,
             "within_float32_rounding": False} for name, mnn in layers]}
        return Verdict("conversion", "t9 (Tanh) on onnxruntime -> mnn", "s", evidence=(finding,))

    probe = SimpleNamespace(where="t9 (Tanh)")
    assert _pinned(verdict(("m2", None)), probe).where == "t9 (Tanh) on onnxruntime -> mnn"
    assert _pinned(verdict(("m2", None), ("m3", 5e-3)), probe).where.startswith("m3 (Mul), wrong on its own inputs")
