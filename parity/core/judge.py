"""Comparisons and verdicts, computed in one place for the pipeline, the per-layer view, the
diagnosis and the reproduction alike, so every figure is measured the same way wherever it
is shown.

Two rules (README "Tolerances" and "Per-layer"):

* the element rule, for outputs: ``|c - r| <= atol + rtol * |r|`` per element
  (``metrics.TensorDiff``);
* the layer rule, for intermediate tensors: ``max|c - r| <= atol + layer_rtol * max|r|``,
  scaled by the tensor's own magnitude so that legitimate differences that grow with the
  activations (Winograd, tanh GELU) do not flag a layer. A graph output is judged by both.
"""

from __future__ import annotations

import dataclasses

from typing import Mapping, Sequence

import numpy as np

from parity.core.align import AlignmentError, best_alignment, pair_outputs
from parity.core.links import link_for
from parity.core import metrics
from parity.core.metrics import TensorDiff, Tolerance, fmt
from parity.core.report import Comparison, OutputComparison, Verdict
from parity.core.check_stats import CHECK_STATS  # noqa: F401  kept importable from here


# -- tensors --------------------------------------------------------------------------------------
def layer_passes(diff: TensorDiff, tol: Tolerance, layer_rtol: float) -> bool:
    """The layer rule (see the module docstring); classes (masks, NaN) must match exactly."""
    if diff.kind in ("integer", "bool"):
        return diff.passed
    if diff.kind == "empty":
        return True
    if diff.class_mismatches:
        return False
    if diff.max_abs_diff is None:
        return diff.passed
    absmax = diff.reference_absmax or 0.0
    return diff.max_abs_diff <= tol.atol_for(absmax) + layer_rtol * absmax


def scaled_error(diff: TensorDiff) -> float | None:
    """max|c - r| / max|r| (over regular values): the error on the tensor's own scale."""
    if diff.max_abs_diff is None:
        return None
    return float(diff.max_abs_diff) / max(float(diff.reference_absmax or 0.0), 1e-12)


def diff_tensors(name: str, reference: np.ndarray, candidate: np.ndarray, tol: Tolerance,
                 layer_rtol: float | None = None, *, reread_same_shape: bool = False, dtype_known: bool = False):
    """Align ``candidate`` to ``reference`` (align.best_alignment) and measure it: returns
    ``(Judged, TensorDiff)``. With ``layer_rtol`` a layout passes by the layer rule, else by
    the element rule. ``reread_same_shape``: see align.layouts. Raises AlignmentError when no
    layout fits."""
    reference = np.asarray(reference)

    def judge(aligned):
        diff = TensorDiff.from_arrays(name, reference, aligned, tol)
        passed = diff.passed if layer_rtol is None else layer_passes(diff, tol, layer_rtol)
        score = scaled_error(diff)
        return passed, float("inf") if score is None else score, diff

    judged = best_alignment(reference, np.asarray(candidate), judge, reread_same_shape=reread_same_shape,
                            dtype_known=dtype_known)
    return judged, judged.judgement


# -- outputs of one link ------------------------------------------------------------------------
def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tol: Tolerance,
    *,
    reference_name: str,
    candidate_name: str,
    candidate_steps: Mapping[str, tuple[str, ...]] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    check_stat: str = "elementwise",
) -> Comparison:
    """Pair, align and measure every output of one link. ``tolerances`` (--tol) overrides
    ``tol`` per output name; ``check_stat`` (--check-stat) says which statistic decides a
    float output (see ``stat_passes``); integers always match exactly."""
    candidate_steps = candidate_steps or {}
    tolerances = tolerances or {}
    by_candidate = link_for(reference_name, candidate_name).rows_named_by == "candidate"
    pairing = pair_outputs(list(reference), list(candidate))
    results: list[OutputComparison] = []
    for pair in pairing.pairs:
        ref = np.asarray(reference[pair.reference_name])
        cand = np.asarray(candidate[pair.candidate_name])
        steps = list(candidate_steps.get(pair.candidate_name, ()))
        if pair.how == "order":
            steps.insert(0, f"paired by order: reference {pair.reference_name!r} <-> "
                            f"candidate {pair.candidate_name!r}")
        # a row is named as the models that name their outputs do: torch's flattened names
        # ("output", "0") give way to ONNX/MNN names, so links line up side by side
        row_name = pair.candidate_name if by_candidate else pair.name
        common = dict(
            name=row_name, reference_name=pair.reference_name, candidate_name=pair.candidate_name,
            reference_shape=tuple(ref.shape), candidate_shape=tuple(cand.shape),
            reference_dtype=ref.dtype.name, candidate_dtype=cand.dtype.name,
        )
        own = next((tolerances[n] for n in (row_name, pair.reference_name, pair.candidate_name) if n in tolerances), None)
        used = own or tol
        try:
            # outputs of frameworks: their dtypes are real, so no "float16 read as float32" hint
            judged, diff = diff_tensors(row_name, ref, cand, used, dtype_known=True)
        except AlignmentError as exc:
            results.append(OutputComparison(passed=False, alignment=tuple(steps), error=str(exc), **common))
            continue
        output = OutputComparison.from_diff(diff, alignment=tuple(steps) + judged.alignment.steps, **common)
        notes = list(output.notes)
        if own is not None:
            notes.append(f"tolerance of this output (--tol): {own.describe()}")
        if check_stat != "elementwise" and diff.kind == "float":
            passed, detail = stat_passes(check_stat, ref, judged.alignment.array, used)
            output = dataclasses.replace(output, passed=passed)
            notes.append(detail)
        results.append(dataclasses.replace(output, notes=tuple(notes)))
    for name in pairing.missing_in_candidate:
        results.append(OutputComparison(
            name=name, reference_name=name, candidate_name=None, passed=False,
            reference_shape=tuple(np.shape(reference[name])),
            error=f"no candidate output pairs with it; the candidate has {list(candidate)}",
        ))
    notes = tuple(
        f"candidate output {n!r} has no reference partner and was not compared"
        for n in pairing.extra_in_candidate
    )
    return Comparison(reference_name, candidate_name, all(r.passed for r in results), tuple(results), notes)


def stat_passes(stat: str, reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> tuple[bool, str]:
    """Whether one statistic of the error meets the tolerance (--check-stat), over the finite
    pairs, in float64: max |c - r| <= atol + rtol max|r| ("max"), the same with means
    ("mean") or medians ("median"), or cosine >= 1 - rtol ("cosine"). "elementwise" (every
    element within atol + rtol |r|) is the default and is judged by the metrics themselves."""
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    c = np.asarray(candidate, dtype=np.float64).reshape(-1)
    finite = np.isfinite(r) & np.isfinite(c)
    if not np.all(np.isfinite(r) == np.isfinite(c)):
        return False, f"--check-stat {stat}: NaN or inf on one side only"
    r, c = r[finite], c[finite]
    if r.size == 0:
        return True, f"--check-stat {stat}: no finite pairs"
    atol = tol.atol_for(float(np.max(np.abs(r))))
    error, scale = np.abs(c - r), np.abs(r)
    if stat == "cosine":
        cosine = metrics.cosine(r, c)
        cosine = 1.0 if cosine is None else cosine  # one side all zero: no direction to fail on
        ok = cosine >= 1 - tol.rtol
        return ok, f"--check-stat cosine: {cosine:.6g} {'>=' if ok else '<'} 1 - rtol = {1 - tol.rtol:g}"
    reduce = {"max": np.max, "mean": np.mean, "median": np.median}[stat]
    got, allowed = float(reduce(error)), atol + tol.rtol * float(reduce(scale))
    ok = got <= allowed
    return ok, (f"--check-stat {stat}: {stat} |c - r| {got:.3g} {'<=' if ok else '>'} atol + rtol * "
                f"{stat} |r| = {allowed:.3g}")


def worst_output(comparison: Comparison) -> OutputComparison | None:
    """The failing output with the largest error on its own scale."""
    failing = [o for o in comparison.outputs if not o.passed]
    if not failing:
        return None
    return max(failing, key=lambda o: -1.0 if o.error else output_scaled_error(o) or 0.0)


def output_scaled_error(output: OutputComparison) -> float | None:
    if output.max_abs_diff is None:
        return None
    return float(output.max_abs_diff) / max(float(output.reference_absmax or 0.0), 1e-12)


# -- findings and verdicts ------------------------------------------------------------------------
def _failing_layers_detail(c: Comparison) -> str | None:
    """'3 of 40 layers differ beyond the layer rule (first ...)' for a link whose outputs all
    pass, or None."""
    if not c.passed or not c.layers:
        return None
    failing = [layer for layer in c.layers if not layer.passed]
    if not failing:
        return None
    first = failing[0]
    return (f"{len(failing)} of {len(c.layers)} layers differ beyond the layer rule (first "
            f"{first.name} ({first.op_type}): max_abs_diff {fmt(first.max_abs_diff)}, "
            f"{fmt(first.scaled_error)} of its largest value)")


def layer_only_findings(comparisons: Sequence[Comparison]) -> list[str]:
    """One sentence per link whose outputs all pass while some layer fails the layer rule."""
    findings = []
    for c in comparisons:
        detail = _failing_layers_detail(c)
        if detail:
            findings.append(f"layer-only finding on {c.link}: every output "
                            f"matches, but {detail}")
    return findings


def output_detail(output: OutputComparison) -> str:
    if output.error:
        return output.error
    detail = (f"max_abs_diff {fmt(output.max_abs_diff)}, {output.mismatch_count} of {output.size} "
              f"elements ({output.mismatch_fraction:.1%}) out of tolerance")
    if output.masked_matched:
        detail += f" ({output.masked_matched} mask values matched on both sides)"
    if output.class_mismatches:
        detail += (f"; {output.class_mismatches} elements differ in class (mask/Inf/NaN on one "
                   f"side only)")
    return detail


def verdict_for(comparisons: Sequence[Comparison], *, fail_on_layers: bool = False) -> Verdict:
    """The first broken link, in chain order, decides, with the verdict its row in the links
    table gives (core/links.py): a failing torch -> onnxruntime link is the export's fault
    whatever MNN does."""
    for comparison in comparisons:
        failed = comparison.failed_outputs
        if not failed:
            continue
        first = failed[0]
        link = comparison.link
        where = f"output {first.name!r} ({link})"
        counts = f"{len(failed)} of {len(comparison.outputs)} outputs differ on {link}"
        divergence = comparison.first_divergence
        if divergence is not None:
            module = f", module {divergence.module}" if divergence.module else ""
            where = f"{divergence.name} ({divergence.op_type}{module}) on {link}"
            counts += f"; {divergence.summary}"
        summary = f"{counts}; first: {first.name!r} ({output_detail(first)})"
        link_row = link_for(comparison.reference, comparison.candidate)
        if link_row.failure_cause:
            summary = f"{link_row.failure_cause}: {summary}"
        return Verdict(link_row.failure, where, summary, next_steps=link_row.failure_next_steps)
    n = sum(len(c.outputs) for c in comparisons)
    links = len(comparisons)
    summary = f"all {n} compared outputs match within tolerance on {links} link{'s' * (links != 1)}"
    flagged = [(c, _failing_layers_detail(c)) for c in comparisons]
    flagged = [(c, detail) for c, detail in flagged if detail]
    if not flagged:
        return Verdict("pass", None, summary)
    c, detail = flagged[0]
    layer = next(x for x in c.layers if not x.passed)
    link = c.link
    if fail_on_layers:
        return Verdict("mismatch", f"{layer.name} ({layer.op_type}) on {link}",
                       f"{summary}, but on {link} {detail}; --fail-on-layers makes a layer-only "
                       f"finding a failure",
                       next_steps=("rerun with --isolate all to see which failing layers introduce "
                                   "their error and which carry it",))
    return Verdict("pass", None,
                   f"{summary}; layer-only finding: on {link} {detail}. The outputs decide the exit "
                   f"code; --fail-on-layers would make this a failure",
                   next_steps=("the difference does not reach the outputs on these inputs; try "
                               "other inputs (--seed, --inputs), or gate on it with --fail-on-layers",))
