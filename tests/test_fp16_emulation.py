"""The float16 emulation (parity/checking/fp16_emulation.py), pure numpy and onnx: its sums obey the
textbook error bounds of floating-point summation, its lowering of each accumulating op is
onnx's own reference when nothing is rounded, and its judgement follows the documented
thresholds. No framework runs here; the arm64 tests use it against MNN's real kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from parity.checking import fp16_emulation as fe

U16 = 2.0 ** -11  # float16 unit roundoff (11-bit significand, round to nearest)
U32 = 2.0 ** -24
SUM_SCHEMES = ("fp32_sum", "pairwise", "lanes8", "lanes4", "sequential", "sequential_rounded")


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the bound on the relative error of n roundings."""
    assert n * u < 1
    return n * u / (1 - n * u)


def float16_terms(seed: int, k: int, positive: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2, (64, k)) if positive else rng.standard_normal((64, k))
    return t.astype(np.float16).astype(np.float64)  # float16 values: no rounding before the sum


def exact_sum(terms: np.ndarray) -> np.ndarray:
    return np.array([math.fsum(row) for row in terms])


# -- summation: textbook facts and bounds ----------------------------------------------------------
def test_sequential_float16_sum_of_ones_stagnates_at_2048_and_pairwise_does_not():
    """2048 + 1 is a tie between 2048 and 2050 in float16 (spacing 2): it rounds to even, 2048."""
    ones = np.ones((1, 8192))
    assert fe.accumulate(ones, "sequential")[0] == 2048
    assert fe.accumulate(ones, "sequential_rounded")[0] == 2048
    assert fe.accumulate(ones, "pairwise")[0] == 8192  # every partial sum is a power of two
    assert fe.accumulate(ones, "fp32_sum")[0] == 8192
    assert fe.accumulate(ones, "lanes8")[0] == 8192  # each lane reaches 1024, exactly


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("positive", [True, False])
def test_every_sum_is_within_its_error_bound(seed, positive):
    """|computed - exact| <= gamma_n * sum|t| with n the roundings on a term's path: K-1 for a
    sequential sum, ceil(log2 K) for a pairwise one, K/L - 1 + log2 L for L lanes."""
    k = 256
    terms = float16_terms(seed, k, positive)
    exact = exact_sum(terms)
    magnitude = np.abs(terms).sum(axis=1)
    paths = {"sequential": (k - 1, U16), "sequential_rounded": (k - 1, U16),
             "pairwise": (math.ceil(math.log2(k)), U16), "lanes8": (k // 8 - 1 + 3, U16),
             "lanes4": (k // 4 - 1 + 2, U16), "fp32_sum": (k - 1, U32)}
    for scheme, (n, u) in paths.items():
        error = np.abs(fe.accumulate(terms, scheme) - exact)
        assert np.all(error <= gamma(n, u) * magnitude), scheme
        assert np.any(error > 0) or scheme == "fp32_sum", scheme  # float16 sums do round here


@pytest.mark.parametrize("seed", range(3))
def test_pairwise_beats_lanes_beats_sequential_on_long_positive_sums(seed):
    """8192 terms in [0, 2): past 4096 float16's spacing is 4, so a sequential float16 sum
    adds nothing more (every term rounds away); 8 lanes each add 1024 terms, and a pairwise
    sum never adds two numbers of very different size."""
    terms = float16_terms(seed, 8192, positive=True)
    exact = exact_sum(terms)
    err = {s: float(np.max(np.abs(fe.accumulate(terms, s) - exact) / exact)) for s in SUM_SCHEMES}
    assert err["fp32_sum"] < err["pairwise"] < err["lanes8"] < err["lanes4"] < err["sequential"]
    assert err["pairwise"] <= gamma(13, U16)  # log2(8192) roundings
    assert err["sequential"] > 0.4  # stagnation near 4096 of about 8192, not a slow drift


def test_round16_overflows_to_inf_and_a_float16_sum_can_overflow():
    assert fe.round16(70000.0) == np.inf and fe.round16(65504.0) == 65504.0
    assert fe.accumulate(np.full((1, 4), 30000.0), "sequential")[0] == np.inf
    assert fe.accumulate(np.full((1, 4), 30000.0), "fp32_sum")[0] == 120000.0


# -- the accumulating ops, lowered: with nothing rounded they are onnx's own reference -----------------
def _node_cases():
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape)

    return [
        ("matmul batched", helper.make_node("MatMul", ["a", "b"], ["y"]), [r(2, 1, 3, 5), r(4, 5, 6)], 13),
        ("matmul vector", helper.make_node("MatMul", ["a", "b"], ["y"]), [r(5), r(5, 3)], 13),
        ("gemm", helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0),
         [r(7, 3), r(4, 7), r(4)], 13),
        ("conv", helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1],
                                  dilations=[1, 2], group=2), [r(2, 4, 9, 8), r(6, 2, 3, 2), r(6)], 13),
        ("global average pool", helper.make_node("GlobalAveragePool", ["x"], ["y"]), [r(2, 3, 5, 7)], 13),
        ("average pool", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2]),
         [r(1, 3, 9, 8)], 13),
        ("reduce mean, axes attribute", helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 3], keepdims=0),
         [r(2, 3, 4, 5)], 13),
        ("reduce sum, axes input", helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1),
         [r(2, 3, 4), np.array([-1, 0], np.int64)], 13),
    ]


@pytest.mark.parametrize("name, node, inputs, opset", _node_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_each_lowered_op_is_onnx_reference_when_nothing_is_rounded(name, node, inputs, opset):
    names = list(node.input)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype),
                                                                          None) for n, x in zip(names, inputs)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    expected = ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))[0]
    got = fe._accumulating(node, list(inputs), "exact", lambda v: v, opset)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def _gemm_model(k: int, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, k, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), w


def test_evaluate_runs_a_subgraph_under_every_scheme_within_bounds():
    k, n = 512, 64
    model, w = _gemm_model(k, n)
    p = np.random.default_rng(2).uniform(0, 3, (1, k, 1, 1)).astype(np.float32)
    result = fe.evaluate(model, {"p": p})
    assert result["complete"] and result["accumulating"] == ["Gemm"] and not result["notes"]
    outputs = {s: v["y"] for s, v in result["outputs"].items()}
    assert set(outputs) == set(fe.SCHEMES)
    exact = p.reshape(1, k).astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(outputs["exact"], exact, rtol=1e-12, atol=1e-12)
    magnitude = np.abs(p.reshape(1, k).astype(np.float64)) @ np.abs(w.T.astype(np.float64))
    for scheme, value in outputs.items():
        # operands rounded (2 roundings per product), the sum's own, the output's
        n_round = {"exact": 0, "rounding": 3, "fp32_sum": 3, "pairwise": 3 + 9, "lanes8": 3 + 63 + 3,
                   "lanes4": 3 + 127 + 2, "sequential": 3 + k - 1, "sequential_rounded": 4 + k - 1}[scheme]
        if scheme == "fp32_sum":
            assert np.all(np.abs(value - exact) <= gamma(3, U16) * magnitude + gamma(k, U32) * magnitude)
        elif n_round:
            assert np.all(np.abs(value - exact) <= gamma(n_round, U16) * magnitude), scheme
    errors = fe.scaled_errors(outputs["exact"], {s: v for s, v in outputs.items() if s != "exact"})
    assert errors["rounding"] <= errors["sequential"]


def test_an_op_without_sums_gets_the_rounding_scheme_only_and_unknown_ops_are_incomplete():
    x = np.linspace(-3, 3, 50).reshape(1, 50).astype(np.float32)
    for op, complete in (("Sigmoid", True), ("Softmax", False)):
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 50])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 50])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        result = fe.evaluate(model, {"x": x})
        assert set(result["outputs"]) == {"exact", "rounding"}
        assert result["complete"] is complete
        assert bool(result["notes"]) is (not complete)


def test_an_op_beyond_the_work_bound_is_emulated_on_evenly_spaced_outputs(monkeypatch):
    k, n = 256, 32
    model, w = _gemm_model(k, n)
    p = np.random.default_rng(3).uniform(0, 3, (1, k, 1, 1)).astype(np.float32)
    full = fe.evaluate(model, {"p": p})["outputs"]
    monkeypatch.setattr(fe, "MAX_TERMS", k * n // 4)  # a quarter of the op's products
    result = fe.evaluate(model, {"p": p})
    assert set(result["outputs"]) == set(fe.SCHEMES) and result["complete"] is True
    assert "emulated on 25.0% of its outputs" in result["notes"][0]
    outputs = {s: v["y"] for s, v in result["outputs"].items()}
    where = fe.emulated_positions(outputs)
    assert where is not None and np.count_nonzero(where) == n // 4
    for scheme, value in outputs.items():  # the emulated positions hold the full run's values
        np.testing.assert_array_equal(value[where], full[scheme]["y"][where])
        if scheme not in ("exact", "rounding"):
            assert np.all(np.isnan(value[~where]))
    errors = fe.scaled_errors(outputs["exact"], {"sequential": outputs["sequential"]}, where)
    assert np.isfinite(errors["sequential"]) and errors["sequential"] > 0
    assert fe.emulated_positions({s: v["y"] for s, v in full.items()}) is None


# -- the judgement ---------------------------------------------------------------------------------
def test_judge_kernel_thresholds():
    emulated = {"rounding": 1e-4, "pairwise": 2e-4, "sequential": 1e-2}
    assert fe.judge_kernel(1e-2, emulated)["finding"] == "as designed"
    assert fe.judge_kernel(2e-2, emulated)["finding"] == "as designed"  # 2x: the limit included
    assert fe.judge_kernel(5e-2, emulated)["finding"] == "between"
    assert fe.judge_kernel(0.2, emulated) == {"finding": "defect", "ratio": pytest.approx(20.0),
                                              "worst": "sequential", "worst_error": 1e-2}
    # part of the op only rounded: the worst emulated figure may be too low to claim a defect
    assert fe.judge_kernel(0.2, emulated, complete=False)["finding"] == "between"
    assert fe.judge_kernel(float("inf"), emulated)["finding"] == "defect"
    with pytest.raises(ValueError):
        fe.judge_kernel(1.0, {"exact": 0.0})


def test_an_overflowing_scheme_explains_only_an_mnn_output_that_overflows_too():
    """A scheme whose float16 sum overflows (error inf) says nothing about a finite error: that
    is judged against the worst finite scheme, and an overflow explains only an MNN output
    that is not finite either."""
    inf = float("inf")
    emulated = {"rounding": 1e-4, "pairwise": 1e-3, "sequential": inf}
    choice = fe.judge_kernel(50.0, emulated)
    assert choice == {"finding": "defect", "ratio": pytest.approx(5e4), "worst": "pairwise", "worst_error": 1e-3}
    assert fe.judge_kernel(1.5e-3, emulated)["finding"] == "as designed"  # within 2x of pairwise
    assert fe.judge_kernel(inf, emulated)["finding"] == "as designed"  # no positions given: any overflow
    assert fe.judge_kernel(inf, emulated, overflows_with_mnn={"sequential"})["finding"] == "as designed"
    # MNN not finite where no scheme overflows: no float16 arithmetic explains it
    assert fe.judge_kernel(inf, emulated, overflows_with_mnn=set())["finding"] == "defect"
    # every scheme overflows and MNN does not: nothing to measure it by, no claim either way
    assert fe.judge_kernel(0.1, {"rounding": inf, "sequential": inf})["finding"] == "between"


def _pool_model(shape):
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape[:2] + [1, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_pool_whose_float16_sums_overflow_still_finds_a_kernel_off_by_10x():
    """A 112x112 average pool of values near 8: the sum (about 100,000) passes float16's 65504
    in the pairwise, lane and float32-then-float16 schemes, while a sequential float16 sum
    stagnates at 32768 (adding 8 there is below half float16's spacing of 32) and stays
    finite. A kernel 10x off is a defect; one that overflows where they do is as designed."""
    x = np.random.default_rng(0).uniform(7, 9, (1, 2, 112, 112)).astype(np.float32)
    x[0, 1] *= 0.01  # a channel far from overflow
    result = fe.evaluate(_pool_model([1, 2, 112, 112]), {"x": x})
    outputs = {s: v["y"] for s, v in result["outputs"].items()}
    exact = outputs.pop("exact")
    np.testing.assert_allclose(exact.ravel(), x.reshape(2, -1).astype(np.float64).mean(axis=1), rtol=1e-12)
    where = fe.emulated_positions(outputs)
    errors = fe.scaled_errors(exact, outputs, where)
    assert errors["pairwise"] == errors["lanes8"] == errors["fp32_sum"] == float("inf")
    assert 0.5 < errors["sequential"] < 1  # 32768 / 12544 = 2.6 where 8.0 is exact
    wrong = exact * 10  # finite everywhere, 10x off
    mnn_error = fe.scaled_errors(exact, {"mnn": wrong}, where)["mnn"]
    shared = fe.shared_overflow(exact, wrong, outputs, where)
    assert shared == set()
    choice = fe.judge_kernel(mnn_error, errors, complete=result["complete"], overflows_with_mnn=shared)
    assert choice["worst"] in ("sequential", "sequential_rounded") and choice["finding"] == "defect", choice
    overflowing = outputs["pairwise"]  # inf at the large channel, as a pairwise float16 kernel gives
    shared = fe.shared_overflow(exact, overflowing, outputs, where)
    assert {"pairwise", "lanes8", "lanes4", "fp32_sum"} <= shared and "sequential" not in shared
    mnn_error = fe.scaled_errors(exact, {"mnn": overflowing}, where)["mnn"]
    assert fe.judge_kernel(mnn_error, errors, overflows_with_mnn=shared)["finding"] == "as designed"


def test_a_sampled_op_followed_by_one_that_mixes_positions_is_not_judged(monkeypatch):
    """A Gemm emulated on a quarter of its outputs, then Softmax over them: every emulated
    output is NaN. Figures over no position would be 0 for every scheme and for any MNN
    output (a kernel 3x off judged as designed); emulated_positions refuses instead."""
    k, n = 256, 32
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["p", "w"], ["g"], transB=1),
                               helper.make_node("Softmax", ["g"], ["y"], axis=-1)], "g",
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    p = np.random.default_rng(1).uniform(0, 3, (1, k)).astype(np.float32)
    monkeypatch.setattr(fe, "MAX_TERMS", k * n // 4)
    outputs = {s: v["y"] for s, v in fe.evaluate(model, {"p": p})["outputs"].items()}
    exact = outputs.pop("exact")
    assert all(np.isnan(v).all() for s, v in outputs.items() if s != "rounding")
    with pytest.raises(ValueError, match="no output position could be emulated"):
        fe.emulated_positions(outputs)
    with pytest.raises(ValueError, match="no position to compare"):
        fe.scaled_errors(exact, {"mnn": exact * 3}, np.zeros(exact.shape, bool))


def test_the_readme_states_the_work_bound():
    """README, "float16 verdicts": the products per op the emulation follows term by term."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert fe.MAX_TERMS == 20_000_000
    assert "up to 20 million products per op" in readme


def test_nearest_scheme_finds_the_identical_output():
    outputs = {"exact": np.zeros(3), "rounding": np.array([1.0, 2.0, 3.0]), "sequential": np.array([1.0, 2.5, 3.0])}
    assert fe.nearest_scheme(np.array([1.0, 2.5, 3.0]), outputs) == ("sequential", 0.0)
    assert fe.nearest_scheme(np.array([1.0, 2.1, 3.0]), outputs) == ("rounding", pytest.approx(0.1))
