"""Experiment 2, amplified rounding (numerics.py): the error grows along the graph while every
layer is right on its own inputs in float64, and MNN is no farther from a float64 evaluation
than correct float32 evaluations -> numerics (undetermined without a float64 figure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from parity.checking.experiments.measure import fmt
from parity.checking.pairing import best_pair
from parity.core.errors import BackendCrash
from parity.core.report import Verdict

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe


def numerics_experiment(ctx: Context, probe: Probe, where: str, evidence: list) -> Verdict | None:
    """Amplified rounding (numerics.py): the error grows along the graph while every layer is
    right on its own inputs, and MNN is as far from a float64 evaluation as ONNX Runtime is.
    Then neither party is wrong: verdict ``numerics`` (``undetermined`` without a float64 figure)."""
    from parity.checking import numerics

    target = (probe.divergence.name if probe.divergence is not None else
              probe.output.reference_name if probe.output is not None else None)
    if target is None or not ctx.comparison.layers or target not in ctx.graph.producer:
        return None
    weights = numerics.float_weight_bytes(ctx.graph.model)
    if weights > numerics.MAX_FLOAT64_WEIGHT_BYTES:
        evidence.append({"experiment": "amplified rounding", "result": "not run",
                         "reason": f"{weights / (1 << 20):.0f} MiB of float weights: no float64 evaluation above "
                                   f"{numerics.MAX_FLOAT64_WEIGHT_BYTES >> 20} MiB"})
        return None
    sides = numerics.Sides(reference=probe.reference_values, candidate=lambda names: _candidate_values(ctx, probe, names))
    try:
        finding = numerics.measure(ctx.reference.model_proto(), ctx.graph, ctx.comparison, target, ctx.feeds,
                                   sides, lambda layer: not layer.passed, progress=ctx.progress)
    except BackendCrash:
        raise
    except Exception as exc:  # a value MNN cannot return or align: this experiment decides nothing
        evidence.append({"experiment": "amplified rounding",
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        return None
    evidence.append({"experiment": "amplified rounding", **finding.to_dict()})
    if finding.kind is None:
        return None
    growth = _growth_text(finding)
    locals_text = _locals_text(finding)
    if finding.kind == "undetermined":
        return Verdict(
            "undetermined", where,
            f"{probe.where} differs, but every layer evaluated along the way is right on its own inputs "
            f"({locals_text}) while the error grows ({growth}): that is what amplified float32 rounding looks "
            f"like, and {finding.reason}, so neither the converter nor a kernel can be blamed",
            evidence=tuple(evidence),
            next_steps=("evaluate the model in float64 yourself (onnx.reference on a float64 copy) and compare "
                        "both frameworks with it",
                        "if both are as far from it, the model is ill-conditioned in float32: loosen "
                        "--atol/--rtol for it or normalise it"),
        )
    distances = "; ".join(
        f"{d['tensor']}: MNN {fmt(d['mnn'])}, ONNX Runtime {fmt(d['onnxruntime'])}, onnx.reference in float32 "
        f"{fmt(d.get('numpy float32'))} and {fmt(d.get('numpy float32, inputs nudged by one ulp'))} with its "
        f"inputs nudged by one ulp" for d in finding.distances[:2])
    return Verdict(
        "numerics", where,
        f"amplified float32 rounding, not a bug: the error grows along the graph ({growth}), yet every layer "
        f"along the way is right on its own inputs ({locals_text}), and MNN is no farther from a float64 "
        f"evaluation of the graph than correct float32 evaluations are (relative L2 distance, {distances}). "
        f"The model turns last-bit differences into visible ones; neither framework computes it better",
        evidence=tuple(evidence),
        next_steps=(
            "treat it as a tolerance or conditioning question, not a bug report: loosen --atol/--rtol for "
            "this model to the float64 distances above, or make it better conditioned (normalisation, "
            "smaller weight gains)",
            "check the model's accuracy on real data rather than bit-level agreement",
        ),
    )


def _growth_text(finding) -> str:
    path = [(n, e) for n, e in finding.path if e]
    first, last = path[0], path[-1]
    per_layer = finding.growth_per_layer()
    text = (f"from {fmt(first[1])} at {first[0]} to {fmt(last[1])} at {last[0]} over {len(path)} compared "
            f"layers" + (f", about {per_layer:.2g}x per layer" if per_layer else ""))
    if finding.crossing:
        text += f"; it crosses the tolerance at {finding.crossing}"
    return text


def _locals_text(finding) -> str:
    worst = max(finding.locals, key=lambda x: x.candidate or 0.0)
    if finding.sampled:
        names = ", ".join(x.name for x in finding.locals[:6]) + (
            f" and {len(finding.locals) - 6} more" if len(finding.locals) > 6 else "")
        which = f"{len(finding.locals)} of the {len(finding.path)} layers ({names}, a sample)"
    else:
        which = f"all {len(finding.locals)} layers"
    return (f"{which} evaluated in float64 on each framework's own inputs; "
            f"largest local error {fmt(worst.candidate)} in MNN at {worst.name}, {fmt(worst.reference)} in "
            f"ONNX Runtime there, within float32 rounding")


def _candidate_values(ctx: Context, probe: Probe, names) -> dict:
    """MNN's values of ONNX tensors ``names`` in one run, aligned to the reference's layout as
    the layer comparison aligns them (layers by their paired MNN tensor, graph outputs by the
    compared output)."""
    layers = {x.name: x for x in ctx.comparison.layers or ()}
    outputs = {o.reference_name: o.candidate_name for o in ctx.comparison.outputs}
    captured = list(dict.fromkeys(layers[n].candidate_name for n in names if n in layers))
    arrays = dict(ctx.candidate.capture(ctx.feeds, captured, cache=False).outputs) if captured else {}
    missing = [n for n in names if n not in layers and n in outputs]
    if missing:
        run = ctx.candidate.run(ctx.feeds).outputs
        arrays.update({outputs[n]: run[outputs[n]] for n in missing})
    references = probe.reference_values(list(names))
    values = {}
    for n in names:
        source = layers[n].candidate_name if n in layers else outputs.get(n)
        if source is None or source not in arrays:
            raise KeyError(f"MNN has no tensor paired with {n!r}")
        pair = best_pair(np.asarray(references[n]), {source: np.asarray(arrays[source])}, ctx.tolerance,
                         ctx.layer_rtol)
        if pair is None or pair.aligned is None:
            raise KeyError(f"MNN's {source!r} does not align with {n!r}")
        values[n] = pair.aligned
    return values
