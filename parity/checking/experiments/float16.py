"""Experiment 1's float16 half: the same file at precision high on the same target. When that
fixes the numbers, either the reference values leave float16's range, or the diverging op is
emulated in float16 on the same inputs (fp16_emulation.py) to tell float16 as designed from a
kernel defect."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from parity.checking.experiments.measure import Measurement, decisive, fmt, measure_run
from parity.checking.isolation import cut_feeds
from parity.checking.pairing import best_pair
from parity.core.report import Verdict

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe


def float16_experiment(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    candidate = ctx.candidate
    on = candidate.target.spec
    setting = f"precision high on {on}"
    high, error = measure_run(ctx, probe, setting, "high")
    if high is None:
        evidence.append({"experiment": "precision", "setting": setting, "error": error})
        return None
    evidence.append({"experiment": "precision", "setting": setting, **high.to_dict()})
    if not high.passed and probe.mode == "isolated" and candidate.reduced_precision:
        retried = _float16_in_model(ctx, probe, high, setting, evidence)
        if retried is not None:
            base, high = retried
    if not decisive(base, high):
        return None
    fp16 = candidate.reduced_precision
    arithmetic = "float16" if fp16 else f"precision {candidate.precision}"
    outside, range_text = _float16_range(ctx, probe)
    evidence.append({"experiment": "float16 range at the divergence", "outside_float16": outside,
                     "detail": range_text})
    figures = (f"error {base.describe()} with precision {candidate.precision}, {high.describe()} "
               f"with precision high on the same target (measured {high.how})")
    if outside:
        summary = (f"{arithmetic} arithmetic on {on} breaks {probe.where}: the reference values there "
                   f"{range_text}; {figures}. The converted graph is right; float16 cannot hold "
                   f"these values")
        steps = ("run this model with precision high (or normal) on the device: float32 arithmetic",
                 "or rescale the model so activations stay within float16 (e.g. scale attention "
                 "scores before the MatMul, clamp before Exp)")
        return Verdict("runtime", where, summary, evidence=tuple(evidence), next_steps=steps)
    emulation = _float16_emulation(ctx, probe, evidence) if fp16 else None
    if emulation is not None:
        return _float16_choice(ctx, probe, where, f"its values fit float16's range ({range_text}); {figures}",
                               high, emulation, evidence)
    summary = (f"{arithmetic} arithmetic on {on} gives other numbers at {probe.where}, though its "
               f"values fit float16's range ({range_text}): {figures}. What is lost is float16's "
               f"precision (11 significant bits: large values that nearly cancel, long sums) or "
               f"an MNN float16 kernel is wrong"
               + (" (the op could not be emulated in float16 to tell which: see the evidence)" if fp16 else ""))
    steps = ("run with precision high on the device where accuracy matters",
             "report the kernel to MNN with --repro DIR (--mnn-target and --mnn-precision low reproduce it)")
    return Verdict("runtime", where, summary, evidence=tuple(evidence), next_steps=steps)


def _float16_in_model(ctx: Context, probe: Probe, high_isolated: Measurement, setting: str,
                      evidence: list) -> tuple[Measurement, Measurement] | None:
    """Precision high fails at the divergence fed the reference's inputs too: when float32
    arithmetic fails there, the cut itself is not trustworthy (an isolation artefact: MNN's
    Pooling3D cut measured 0.48 where the uncut layer's error is 3e-6). Measure both
    precisions in the whole model instead; keep that way (return (base, high)) only when
    precision high passes there, else leave the probe as it was."""
    probe.mode = "in_model"
    high, error = measure_run(ctx, probe, f"{setting}, in the whole model", "high")
    if high is None or not high.passed:
        probe.mode = "isolated"
        if high is not None:
            evidence.append({"experiment": "precision", "setting": f"{setting}, in the whole model",
                             **high.to_dict()})
        return None
    base = probe.base = probe.in_model(ctx.candidate)
    note = (f"precision high fails in isolation too (error {fmt(high_isolated.scaled)} fed the reference's "
            f"inputs) but passes in the whole model: the isolated measurement is not trustworthy "
            f"here; both precisions measured in the whole model")
    probe.notes.append(note)
    evidence.append({"experiment": "precision", "setting": f"{setting}, in the whole model", **high.to_dict(),
                     "baseline_in_the_model": base.to_dict(), "note": note})
    return base, high


def _float16_emulation(ctx: Context, probe: Probe, evidence: list) -> dict | None:
    """The diverging op evaluated the ways a float16 kernel can (fp16_emulation) on the
    inputs MNN's own output came from: the reference's inputs when the probe measures the
    layer isolated, MNN's own inputs from the same whole run otherwise. Returns the figures
    (also added to the evidence), or None (with the reason in the evidence)."""
    from parity.checking import fp16_emulation
    from parity.checking import numerics

    d, layer = probe.divergence, probe.layer
    if d is None or layer is None:
        return None
    entry: dict = {"experiment": "float16 emulation of the op"}
    # the layer is cut from the loaded model (only its own nodes and weights are copied); a
    # model beyond numerics' float64 bound is not loaded for it at all
    weights = numerics.float_weight_bytes(ctx.graph.model)
    if weights > numerics.MAX_FLOAT64_WEIGHT_BYTES:
        evidence.append({**entry, "result": "not run",
                         "reason": f"{weights / (1 << 20):.0f} MiB of float weights: no float16 emulation above "
                                   f"{numerics.MAX_FLOAT64_WEIGHT_BYTES >> 20} MiB"})
        return None
    ctx.progress(f"diagnosing: {probe.where} emulated in float16")
    try:
        feeds, produced, inputs_are = _float16_operands(ctx, probe)
        subgraph = numerics.layer_model(ctx.reference.model_proto(), ctx.graph, d.name, list(d.inputs))
        result = fp16_emulation.evaluate(subgraph, feeds)
        outputs = {scheme: values[d.name] for scheme, values in result["outputs"].items()}
        exact = outputs.pop("exact")
        produced = np.asarray(produced, np.float64).reshape(exact.shape)
        where = fp16_emulation.emulated_positions(outputs)  # all, unless a big op was sampled; raises if none
    except Exception as exc:  # noqa: BLE001 (an op the emulation cannot run leaves the verdict undecided, with why)
        first = str(exc).splitlines()[0] if str(exc) else ""
        evidence.append({**entry, "error": f"{type(exc).__name__}: {first}"})
        return None
    errors = fp16_emulation.scaled_errors(exact, outputs, where)
    mnn_error = fp16_emulation.scaled_errors(exact, {"mnn": produced}, where)["mnn"]
    overflows = fp16_emulation.shared_overflow(exact, produced, outputs, where)
    choice = fp16_emulation.judge_kernel(mnn_error, errors, complete=result["complete"], overflows_with_mnn=overflows)
    nearest, distance = fp16_emulation.nearest_scheme(produced, outputs, where)
    figures = {
        **entry, "ops": [n.op_type for n in subgraph.graph.node], "inputs": inputs_are,
        "mnn_scaled_error": mnn_error,
        "emulated_scaled_error": {fp16_emulation.SCHEMES[k]: v for k, v in errors.items()},
        "worst_emulated": fp16_emulation.SCHEMES[choice["worst"]], "worst_emulated_error": choice["worst_error"],
        "ratio": choice["ratio"], "finding": choice["finding"],
        "nearest_to_mnn": fp16_emulation.SCHEMES[nearest], "nearest_max_abs_distance": distance,
        "accumulating_ops_emulated": result["accumulating"], "complete": result["complete"],
        "positions_compared": int(exact.size if where is None else np.count_nonzero(where)),
        "positions": int(exact.size),
        "thresholds": {"as_designed_at_most": fp16_emulation.AS_DESIGNED,
                       "defect_beyond": fp16_emulation.DEFECT},
    }
    if result["notes"]:
        figures["notes"] = result["notes"]
    evidence.append(figures)
    return figures


def _float16_operands(ctx: Context, probe: Probe) -> tuple[dict, np.ndarray, str]:
    """(the layer's input values by ONNX name, MNN's output computed from them, which inputs).
    Isolated: the reference's inputs through MNN cut at the layer, as the probe measured it.
    In the model: MNN's own inputs and output, captured in one whole run (aligned to the
    reference's layout)."""
    d, layer = probe.divergence, probe.layer
    graph_inputs = set(ctx.graph.inputs)
    layers = {x.name: x for x in ctx.comparison.layers}
    needed = [f for f in d.inputs if f not in graph_inputs]
    ref = probe.reference_values(needed + [d.name])
    if probe.mode == "isolated":
        out = probe.given_isolated_output  # the baseline's own cut run, when it measured one
        if out is None:  # the model's inputs too: MNN's Gemm/MatMul cut reads its shape from Shape(x)
            tensors = cut_feeds(ctx.graph, ctx.feeds, d.inputs, layers, ref)
            out = ctx.candidate.run_cut(tensors, [layer.candidate_name], inputs=ctx.feeds).outputs[layer.candidate_name]
        feeds = {f: (ctx.feeds[f] if f in graph_inputs else ref[f]) for f in d.inputs}
        return feeds, _aligned(probe, ref[d.name], np.asarray(out)), "the reference's inputs (isolated)"
    names = [layers[f].candidate_name for f in needed] + [layer.candidate_name]
    captured = ctx.candidate.capture(ctx.feeds, list(dict.fromkeys(names)), cache=False).outputs
    feeds = {f: (ctx.feeds[f] if f in graph_inputs else
                 _aligned(probe, ref[f], np.asarray(captured[layers[f].candidate_name])))
             for f in d.inputs}
    out = _aligned(probe, ref[d.name], np.asarray(captured[layer.candidate_name]))
    return feeds, out, "MNN's own inputs, in the whole model (isolation is not trustworthy here)"


def _aligned(probe: Probe, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """``candidate`` in the reference's layout (the layout parity's pairing picks)."""
    pair = best_pair(np.asarray(reference), {"c": candidate}, probe.ctx.tolerance, probe.ctx.layer_rtol)
    if pair is None or pair.aligned is None:
        raise ValueError(f"MNN's tensor {candidate.shape} does not fit the reference's {reference.shape}")
    return np.asarray(pair.aligned).reshape(reference.shape)


def _float16_choice(ctx: Context, probe: Probe, where: str, figures: str, high: Measurement, emulation: dict,
                    evidence: list) -> Verdict:
    """The float16 verdict that chooses: float16's precision as designed, a float16 kernel
    defect, or (honestly) in between, from MNN's error against the emulated ones."""
    on = ctx.candidate.target.spec
    errors = emulation["emulated_scaled_error"]
    listed = "; ".join(f"{name} {fmt(err)}" for name, err in errors.items())
    ways = (f"the ways a float16 kernel computes it give {listed}" if len(errors) > 1 else
            f"no op here adds long sums, and {listed}" if emulation["complete"] else
            f"it could be emulated as {listed} only")
    if emulation["positions_compared"] < emulation["positions"]:
        ways += (f" (on {emulation['positions_compared']} of its {emulation['positions']} values, evenly "
                 f"spaced: a large op)")
    nearest = (f"MNN's output is identical to {emulation['nearest_to_mnn']}"
               if emulation["nearest_max_abs_distance"] == 0 else
               f"nearest to MNN's output: {emulation['nearest_to_mnn']} (max abs distance "
               f"{fmt(emulation['nearest_max_abs_distance'])})")
    measured = (f"on {emulation['inputs']}, MNN's error is {fmt(emulation['mnn_scaled_error'])} against "
                f"the exact op; {ways}; {nearest}")
    keep = ("run the model with --mnn-precision high (or normal): float32 arithmetic on ARM (MNN 3.6.1 "
            "sets precision per runtime or session; parity knows no per-op setting)")
    if probe.mode == "isolated" and high.passed:
        keep += (f"; to keep only {probe.where} in float32, run the part from "
                 f"{', '.join(probe.divergence.inputs)} to {probe.divergence.name} as its own MNN Module "
                 f"(Module API, loaded between those tensors) with a precision-high runtime: that is how "
                 f"parity measured it passing")
    finding = emulation["finding"]
    ratio = f"{emulation['ratio']:.2g}x the worst emulated ({emulation['worst_emulated']})"
    if not np.isfinite(emulation["worst_emulated_error"]):  # judged by an overflow (fp16_emulation.judge_kernel)
        ratio = (f"not finite where {emulation['worst_emulated']} overflows too" if finding == "as designed" else
                 f"finite where every emulated way overflows ({emulation['worst_emulated']} among them)")
    if finding == "as designed":
        summary = (f"float16 precision as designed at {probe.where} on {on}: {figures}; {measured}. MNN's "
                   f"error is {ratio}, within float16 arithmetic's own: the converted graph and the kernel "
                   f"are right, float16's 11 significant bits are not enough for this op here")
        steps = (keep,
                 "or accept float16's error for this op with a looser --atol/--rtol",
                 "a kernel that sums pairwise or in float32 would be far closer (see the emulated figures): "
                 "a request to MNN, not a bug report")
    elif finding == "defect":
        summary = (f"a float16 kernel defect worth a report at {probe.where} on {on}: {figures}; {measured}. "
                   f"MNN's error is {ratio}: no way of computing this op in float16 explains it")
        steps = ("report the kernel to MNN with --repro DIR (--mnn-target and --mnn-precision low "
                 "reproduce it), quoting these figures",
                 keep)
    else:
        limits = emulation["thresholds"]
        why = ("" if emulation["complete"] else
               f"; {'; '.join(emulation.get('notes', ()))}, so a defect cannot be claimed")
        summary = (f"float16 arithmetic on {on} gives other numbers at {probe.where}, between what float16 "
                   f"arithmetic explains and a clear kernel defect: {figures}; {measured}. MNN's error is "
                   f"{ratio} (as designed up to {limits['as_designed_at_most']:g}x, a defect beyond {limits['defect_beyond']:g}x){why}")
        steps = (keep,
                 "report it to MNN with --repro DIR if float16 accuracy matters for this op, quoting "
                 "these figures")
    return Verdict("runtime", where, summary, evidence=tuple(evidence), next_steps=steps)


def _float16_range(ctx: Context, probe: Probe) -> tuple[bool, str]:
    """Whether the reference values at the probe's tensor leave float16's range, and how:
    "reach max|r| 7.1e4, beyond float16's largest value 65504", "lie below float16's smallest
    normal ...", or "max|r| 12.3"."""
    from parity.checking.fp16_headroom import FP16_MAX, fp16_fit

    if probe.layer is not None:
        values = probe.reference_values([probe.layer.name])[probe.layer.name]
    elif probe.output is not None:
        values = probe.reference_values([probe.output.reference_name])[probe.output.reference_name]
    else:
        return False, "no reference tensor to measure"
    fit = fp16_fit(np.asarray(values))
    largest = fit["fp16_range"] * FP16_MAX
    if fit["fp16_range"] > 1:
        return True, (f"reach max|r| {largest:.3g}, beyond float16's largest value 65504 (inf, or "
                      f"saturation at 65504)")
    if fit["fp16_subnormal"] > 0.01:
        return True, (f"lie below float16's smallest normal 6.1e-05 for {fit['fp16_subnormal']:.0%} of "
                      f"them (flushed to zero in float16)")
    return False, f"max|r| {largest:.3g}"
