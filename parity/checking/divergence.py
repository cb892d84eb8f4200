"""Judging each paired layer, and finding and describing the first divergence.

A layer passes when ``max_abs_diff <= atol + layer_rtol * max|reference|`` (README
"Per-layer", judge.layer_passes); a graph output that fails the outputs' element rule fails as
a layer too. The first divergence is the earliest failing layer whose nearest paired inputs all
pass. Part of the layer comparison (layers.py)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from parity.checking.fp16_headroom import fp16_fit
from parity.checking.onnx_graph import Value
from parity.checking.pairing import OUTPUT_PREFIX, Pair, Plan, best_pair
from parity.core.errors import BackendError, first_line
from parity.core.judge import layer_passes, output_scaled_error, scaled_error
from parity.core.metrics import TensorDiff, Tolerance, fmt
from parity.core.report import FirstDivergence, LayerResult, Unpaired

_SAMPLE = 4096


def take_sample(array: np.ndarray) -> tuple[int, np.ndarray]:
    flat = array.reshape(-1)
    if flat.size <= _SAMPLE:
        return flat.size, flat.astype(np.float64)
    index = np.linspace(0, flat.size - 1, _SAMPLE).astype(np.int64)
    return flat.size, flat[index].astype(np.float64)


def _sample_matches(reference: tuple, candidate: tuple, tol: Tolerance, layer_rtol: float) -> bool:
    if reference[0] != candidate[0] or reference[1].shape != candidate[1].shape:
        return False
    diff = TensorDiff.from_arrays("sample", reference[1], candidate[1], tol)
    return layer_passes(diff, tol, layer_rtol)


def _candidate_op(plan: Plan, name: str, value: Value) -> str | None:
    return plan.op_types.get(name) if plan.link.candidate_fuses_ops else value.op_type


def judge_entry(graph, entry, ref, cands, tol, layer_rtol, plan, state, report) -> None:
    v = entry.value
    pair = best_pair(ref, cands, tol, layer_rtol)
    if pair is None:
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in cands.items())
        if v.name in set(graph.outputs) and v.name in cands:
            # a graph output must match: a different size there is a divergence, not a
            # pairing problem (e.g. a pooling or reduction converted to another shape)
            cand = cands[v.name]
            state.results[v.name] = LayerResult(
                name=v.name, reference_name=entry.reference_name, candidate_name=v.name,
                op_type=v.op_type, candidate_op_type=_candidate_op(plan, v.name, v),
                module=entry.module or None, passed=False, max_abs_diff=None, max_rel_diff=None,
                cosine=None, mismatch_fraction=1.0, scaled_error=None, reference_absmax=None,
                reference_shape=tuple(ref.shape), candidate_shape=tuple(cand.shape),
                alignment=(f"shape differs: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}",),
                status="fail", index=v.index)
            state.chosen[v.name] = Pair(v.name, None, (), None, False, tuple(cand.shape))
            return
        report.unpaired.append(Unpaired(v.name, f"element count differs: reference {tuple(ref.shape)}, "
                                                f"candidate {shapes}"))
        return
    steps = pair.steps
    if pair.candidate_name != v.name and plan.link.candidate_fuses_ops:
        steps = (f"mnn tensor {pair.candidate_name!r}",) + steps
    d = pair.diff
    state.results[v.name] = LayerResult(
        name=v.name, reference_name=entry.reference_name, candidate_name=pair.candidate_name,
        op_type=v.op_type, candidate_op_type=_candidate_op(plan, pair.candidate_name, v),
        module=entry.module or None, passed=pair.passed, max_abs_diff=d.max_abs_diff,
        max_rel_diff=d.max_rel_diff, cosine=d.cosine, mismatch_fraction=d.mismatch_fraction,
        scaled_error=scaled_error(d), reference_absmax=d.reference_absmax,
        reference_shape=tuple(ref.shape), candidate_shape=pair.candidate_shape,
        alignment=steps, status="pass" if pair.passed else "fail", index=v.index,
        masked=d.masked_matched, **fp16_fit(ref),
    )
    state.chosen[v.name] = Pair(pair.candidate_name, None, pair.steps, d, pair.passed, pair.candidate_shape)
    if not pair.passed:
        state.failing_samples[v.name] = take_sample(pair.aligned)


def drop_fused(graph, state, tol, layer_rtol, report) -> None:
    """A failing MNN tensor whose values are those of a value just downstream holds a fused
    result under an earlier name: not a divergence, not a pair."""
    for name, sample in state.failing_samples.items():
        for later in graph.downstream(name):
            if later in state.samples and _sample_matches(state.samples[later], sample, tol, layer_rtol):
                layer = state.results.pop(name)
                state.chosen.pop(name, None)
                report.unpaired.append(Unpaired(
                    name, f"MNN tensor {layer.candidate_name!r} holds the values of ONNX {later!r} "
                          f"(a later op fused into it)"))
                break


def apply_output_rule(graph, plan, state, failing_outputs) -> None:
    """A graph output that fails the outputs' element rule fails as a layer too (rule
    "element"), paired or not, so the search for the first divergence cannot miss it."""
    for name, output in failing_outputs.items():
        value = graph.producer.get(name)
        if value is None:
            continue
        layer = state.results.get(name)
        if layer is not None:
            if layer.passed:
                state.results[name] = dataclasses.replace(
                    layer, passed=False, status="fail", rule="element",
                    alignment=layer.alignment + ("within the layer rule, but fails the outputs' element rule",))
            continue
        cand_name = output.candidate_name if plan.link.candidate_fuses_ops else name
        ref_name = name if plan.link.onnx_side == "reference" else OUTPUT_PREFIX + str(output.reference_name)
        if not cand_name:
            continue
        state.results[name] = LayerResult(
            name=name, reference_name=ref_name, candidate_name=cand_name, op_type=value.op_type,
            candidate_op_type=_candidate_op(plan, cand_name, value), module=None, passed=False,
            max_abs_diff=output.max_abs_diff, max_rel_diff=output.max_rel_diff, cosine=output.cosine,
            mismatch_fraction=output.mismatch_fraction, scaled_error=output_scaled_error(output),
            reference_absmax=output.reference_absmax, reference_shape=tuple(output.reference_shape or ()),
            candidate_shape=tuple(output.candidate_shape or ()),
            alignment=("graph output without a paired layer: figures from the output comparison",)
            + tuple(output.alignment) + ((output.error,) if output.error else ()),
            status="fail", index=value.index, rule="element")
        state.chosen[name] = Pair(cand_name, None, (), None, False, tuple(output.candidate_shape or ()))


def first_divergence(graph, ordered) -> tuple[LayerResult, list[str]] | None:
    """The earliest failing layer whose nearest paired inputs all pass."""
    paired = {r.name for r in ordered}
    passing = {r.name for r in ordered if r.passed}
    inputs = set(graph.inputs)
    for layer in ordered:
        if layer.passed:
            continue
        frontier = graph.frontier(layer.name, paired)
        if all(f in passing or f in inputs for f in frontier):
            return layer, frontier
    return None


def ops_label(ops: Sequence[str], limit: int = 6) -> str:
    """``Conv+Relu``; a long stretch as ``MatMul+Add+Softmax+...+Add (23 ops)``."""
    if len(ops) <= limit:
        return "+".join(ops)
    return "+".join(ops[:3]) + "+...+" + "+".join(ops[-2:]) + f" ({len(ops)} ops)"


def describe_divergence(graph, reference, candidate, feeds, report, first) -> FirstDivergence:
    layer = next(x for x in report.layers if x.name == first[0].name)
    frontier = first[1]
    span = graph.span(layer.name, set(frontier))
    ops = [graph.producer[n].op_type for n in span]
    introduced = None if layer.status == "fail" else layer.status == "introduced"
    where = f"{layer.name} ({ops_label(ops)}" + (f", module {layer.module}" if layer.module else "") + ")"
    if layer.rule == "element":
        start = ", ".join(frontier[-3:]) or "the model's inputs"
        head = (f"the numbers first go wrong between the last matching tensors ({start}) and output "
                f"{layer.name}: a stretch of {len(ops)} ONNX op{'s' * (len(ops) != 1)} with no failing paired tensor "
                f"({ops_label(ops)})")
        tail = {None: "", True: f"; fed the reference's values there it still differs (local max_abs_diff "
                                 f"{fmt(layer.local_max_abs_diff)}): the error is introduced in that stretch",
                False: f"; fed the reference's values there it matches (local max_abs_diff "
                       f"{fmt(layer.local_max_abs_diff)}): the error is carried in, below the layer rule"}
        summary = head + tail[introduced]
    elif introduced is None:
        summary = f"first divergence at {where}: its paired inputs match, its output does not"
    elif introduced:
        summary = (f"first divergence at {where}: fed the reference's inputs it still differs "
                   f"(local max_abs_diff {fmt(layer.local_max_abs_diff)}): the error is introduced here")
    else:
        summary = (f"first out-of-tolerance tensor {where} is right when fed the reference's inputs "
                   f"(local max_abs_diff {fmt(layer.local_max_abs_diff)}): the error is carried from upstream")
    histogram = None
    try:
        ref_value = reference.capture(feeds, [layer.reference_name], cache=False).outputs[layer.reference_name]
        cand_value = candidate.capture(feeds, [layer.candidate_name], cache=False).outputs[layer.candidate_name]
        histogram = diff_histogram(np.asarray(ref_value), np.asarray(cand_value))
    except (BackendError, KeyError, ValueError) as exc:
        report.notes.append(f"no histogram at the first divergence: {first_line(exc)}")
    return FirstDivergence(
        name=layer.name, op_type=ops_label(ops), candidate_op_type=layer.candidate_op_type,
        nodes=tuple(graph.producer[n].label for n in span), module=layer.module, inputs=tuple(frontier),
        max_abs_diff=layer.max_abs_diff, scaled_error=layer.scaled_error,
        local_max_abs_diff=layer.local_max_abs_diff, local_scaled_error=layer.local_scaled_error,
        introduced_here=introduced, summary=summary, histogram=histogram, rule=layer.rule,
    )


def diff_histogram(reference: np.ndarray, candidate: np.ndarray, low: int = -12, high: int = 4) -> dict | None:
    """Counts of log10 |c - r| in decades [low, high); exact zeros and non-finite counted apart."""
    if reference.size != candidate.size:
        return None
    with np.errstate(all="ignore"):
        d = np.abs(candidate.reshape(-1).astype(np.float64) - reference.reshape(-1).astype(np.float64))
        finite = np.isfinite(d)
        zeros = int(np.count_nonzero(d[finite] == 0))
        positive = d[finite & (d > 0)]
        logs = np.clip(np.floor(np.log10(positive)), low, high - 1) if positive.size else np.array([])
    counts = (np.bincount((logs - low).astype(np.int64), minlength=high - low) if positive.size
              else np.zeros(high - low, np.int64))
    return {"edges": list(range(low, high + 1)), "counts": [int(c) for c in counts], "zeros": zeros,
            "non_finite": int(np.count_nonzero(~finite))}
