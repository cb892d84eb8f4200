"""What a compressed .mnn is judged by, and the verdict when it misses: the compression policy
of a check.

On a link whose row says so (core/links.py ``compression_budget``: ONNX -> MNN), the .mnn's
compression is read from the file; a compressed model is then compared with the float
conversion of the same ONNX, which joins the chain between them, so the loss splits into ONNX
-> float MNN (conversion and runtime) and float MNN -> compressed MNN (the cost of
compression), the latter judged by the budget (budget.py) instead of the element tolerance.
When it misses, the verdict is compression, unless MNN's own compression of the float model
costs far less (the given file is then wrong beyond compression: conversion); the ranking
(mnn/ranking.py) says which layers cost it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from parity.checking.budget import Budget
from parity.core import inputs as inputs_mod
from parity.core.errors import ParityError, UsageError
from parity.core.judge import compare_outputs
from parity.core.links import link_for
from parity.core.metrics import Tolerance
from parity.core.paths import argument
from parity.core.report import Comparison, Verdict
from parity.options import CheckOptions


def attribute(chain, options: CheckOptions, stack: ExitStack, say):
    """For an MNN model right after its ONNX model: read its compression from the file; when
    it is compressed (or --float-mnn is given), the float conversion of the same ONNX (given,
    or made here) joins the chain between them, so the loss splits into ONNX -> float MNN
    (conversion and runtime) and float MNN -> compressed MNN (the cost of compression).
    Returns the chain, the roles of the MNN entries by index, and the compression (or None)."""
    if not options.attribute:
        return chain, {}, None
    index = next((i for i in range(len(chain) - 1, 0, -1)
                  if link_for(chain[i - 1][0], chain[i][0]).compression_budget), None)
    if index is None:
        if options.float_mnn is not None:
            raise UsageError("--float-mnn needs an ONNX model followed by its compressed .mnn")
        return chain, {}, None
    from parity.mnn import compression as compression_mod

    onnx_path, mnn_path = chain[index - 1][1], chain[index][1]
    say(f"reading the compression of {mnn_path.name}")
    try:
        found = compression_mod.of_model(mnn_path, timeout=options.timeout)
    except ParityError:
        return chain, {}, None  # an unreadable .mnn: loading it says why, as without attribution
    if not found.compressed and options.float_mnn is None:
        return chain, {}, None
    if options.float_mnn is not None:
        float_path = Path(options.float_mnn)
        _refuse_compressed_float(float_path, options, compression_mod)
    else:
        from parity.mnn.converter import convert

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parity-float-")))
        float_path = workdir / f"{mnn_path.stem}.float.mnn"
        say(f"converting {onnx_path.name} without compression: the float reference of {mnn_path.name}")
        convert(onnx_path, float_path, options=[], timeout=options.timeout)
    chain = [*chain[:index], (chain[index][0], float_path), *chain[index:]]
    label = found.kind_label() if found.compressed else "as given"
    return chain, {index: "float conversion", index + 1: label}, found


def _refuse_compressed_float(path: Path, options: CheckOptions, compression_mod) -> None:
    """--float-mnn is the float reference of the compressed model: a compressed one (the model
    itself, or another bit width) would put compression on both sides of the split."""
    from parity.core.errors import InputError

    try:
        given = compression_mod.of_model(path, timeout=options.timeout)
    except ParityError:
        return  # an unreadable .mnn: loading it says why
    if given.compressed:
        raise InputError(f"--float-mnn {path.name} is itself compressed ({given.kind_label()}): give the float "
                         f"conversion of the ONNX model (parity convert without compression options)")


def budget_for(options: CheckOptions, compression) -> Budget:
    """The budget given (--budget), or the default of the model's compression."""
    if options.budget is not None:
        return Budget.parse(options.budget)
    return Budget.default_for(compression.kind if compression is not None else None)


def is_compressed(backend) -> bool:
    """The compressed model of a check that attributes compression (not its float conversion)."""
    return bool(backend.role) and backend.role != "float conversion"


def compare_by_budget(backends, results, link, budget, say) -> Comparison:
    """A link to the compressed model: measured as any link, judged by the budget (every
    output meets every clause) instead of the element tolerance."""
    ref_i, cand_i = link
    candidate = backends[cand_i]
    say(f"comparing {backends[ref_i].framework} -> {candidate.framework} ({candidate.run_label}) against "
        f"the budget {budget.text}")
    reference_outputs, candidate_outputs = results[ref_i].outputs, results[cand_i].outputs
    comparison = compare_outputs(reference_outputs, candidate_outputs, Tolerance(),
                                 reference_name=backends[ref_i].framework, candidate_name=candidate.framework,
                                 candidate_steps=results[cand_i].steps)
    judged = []
    for output in comparison.outputs:
        if output.error is not None or output.reference_name is None or output.candidate_name is None:
            judged.append(output)
            continue
        ref = np.asarray(reference_outputs[output.reference_name])
        cand = np.asarray(candidate_outputs[output.candidate_name])
        if cand.size != ref.size:
            judged.append(output)
            continue
        passed, figures, detail = budget.judge(ref, cand.reshape(ref.shape))
        judged.append(dataclasses.replace(output, passed=passed, budget={"rule": budget.text, "passed": passed, **figures},
                                          notes=(detail, *output.notes)))
    return dataclasses.replace(comparison, outputs=tuple(judged), passed=all(o.passed for o in judged),
                               candidate_run=candidate.run_label,
                               reference_run=backends[ref_i].run_label,
                               notes=comparison.notes + (f"judged by the compression budget {budget.text} "
                                                         f"(--budget), not the element tolerance",))


def decide(comparisons, backends, links, verdict: Verdict, compression, budget, feeds,
           options: CheckOptions, say) -> tuple[Verdict, object]:
    """The verdict of a check whose compressed model is judged by its budget, and the layer
    ranking when one ran: compression when the float conversion matches and the compressed
    model misses its budget, conversion when MNN's own compression of the float model costs far
    less (the recompression check), each with the ranking of the layers that cost it."""
    ranking = None
    verdict = _compression_verdict(comparisons, backends, links, verdict, compression, budget)
    if verdict.kind == "compression" and options.diagnose:
        verdict = _recompression_check(comparisons, backends, feeds, verdict, compression, budget, options, say)
    elif verdict.kind == "pass" and options.diagnose and compression is not None and compression.compressed:
        verdict = _recompression_check(comparisons, backends, feeds, verdict, compression, budget, options, say,
                                       passed=True)
    if verdict.kind == "compression" or (options.rank_layers and compression is not None
                                         and compression.compressed):
        ranking = _rank(backends, feeds, budget, options, say, compression)
        verdict = _with_ranking(verdict, ranking)
    return verdict, ranking


def _compression_verdict(comparisons, backends, links, verdict, compression, budget):
    """When the float conversion matches ONNX and the compressed model misses its budget: the
    verdict is compression. A failing float link keeps its verdict (conversion or runtime,
    decided by the diagnosis): compression cannot be blamed for a wrong conversion."""
    if verdict.kind == "pass":
        judged = [o for c in comparisons for o in c.outputs if o.budget]
        if not judged:
            return verdict
        worst = min(judged, key=lambda o: o.budget.get("cosine") if o.budget.get("cosine") is not None else 1.0)
        what = compression.summary() if compression is not None and compression.compressed else "the given model"
        return dataclasses.replace(verdict, summary=(
            f"{verdict.summary}; the float conversion matches ONNX Runtime within tolerance, and the "
            f"compression ({what}) costs cosine {worst.budget.get('cosine'):.6g} at output {worst.name!r}, "
            f"within its budget {budget.text}"))
    if verdict.kind != "mismatch":
        return verdict
    first = next((c, link) for c, link in zip(comparisons, links) if not c.passed)
    comparison, (ref_i, cand_i) = first
    if not is_compressed(backends[cand_i]):
        return verdict
    worst = min((o for o in comparison.outputs if o.budget), key=lambda o: o.budget.get("cosine") or 0.0, default=None)
    what = compression.summary() if compression is not None else "the given model"
    evidence = [{"link": c.link, "passed": c.passed,
                 **({"outputs": {o.name: o.budget for o in c.outputs if o.budget}} if any(o.budget for o in c.outputs) else
                    {"max_abs_diff": max((o.max_abs_diff or 0.0 for o in c.outputs), default=None)})}
                for c in comparisons]
    detail = next((n for n in (worst.notes if worst else ()) if "budget" in n), "")
    return Verdict(
        "compression", f"output {worst.name!r} ({comparison.link})" if worst else comparison.link,
        f"the compression costs more than its budget: {what}; the float conversion matches ONNX "
        f"Runtime, and {comparison.link} is {detail}",
        evidence=tuple(evidence),
        next_steps=("rank the layers that cost it and keep the worst in float: see the ranking below "
                    "(--rank-layers)",
                    "or compress less: 8 bits instead of 4, a smaller --weightQuantBlock (e.g. 32), "
                    "or a looser --budget if this loss is acceptable"),
    )


def _recompression_check(comparisons, backends, feeds, verdict, compression, budget, options: CheckOptions, say,
                         passed: bool = False):
    """Is the compressed file what MNN's compression of this ONNX makes? Compress the float
    conversion again with the settings read from the file, measured the same way against the
    float model: when that costs far less than the given file (within the budget, or ten times
    less), the given file is wrong beyond its compression: conversion (another ONNX, a changed
    file, a converter bug in that conversion), not compression. ``passed``: the given file is
    within its budget, which a cosine budget keeps for a file of another model whose outputs
    are scaled or moderately wrong; it is conversion then when its cost, or its error, is ten
    times the recompression's and above rounding (the same file costs the same)."""
    settings = compression.converter_options() if compression is not None else None
    if settings is None and passed:
        return verdict
    if settings is None:
        return dataclasses.replace(verdict, evidence=verdict.evidence + (
            {"experiment": "recompression", "detail": "not run: the layers are compressed in several ways"},))
    compressed = next(b for b in backends if is_compressed(b))
    measured = _recompressed(backends, feeds, settings, options, say, passed)
    if isinstance(measured, str):  # evidence, not the end
        return dataclasses.replace(verdict, evidence=verdict.evidence + (
            {"experiment": "recompression", "setting": " ".join(settings), "error": measured},))
    from parity.mnn.ranking import within_budget, worst_figures

    reference, outputs, given_outputs = measured
    figures = worst_figures(reference, outputs)
    if passed:
        given_figures = worst_figures(reference, given_outputs)
        given_cosine, given_error = given_figures.get("cosine") or 0.0, given_figures.get("error")
    else:
        given = next(c for c in comparisons if not c.passed and c.candidate_run == compressed.run_label)
        given_cosine, given_error = min((o.budget or {}).get("cosine", 1.0) or 0.0 for o in given.outputs), None
    entry = {"experiment": "recompression of the float conversion", "setting": " ".join(settings),
             "cosine": figures.get("cosine"), "error": figures.get("error"), "given_cosine": given_cosine,
             "within_budget": within_budget(budget, figures)}
    if not _beyond_compression(figures, given_cosine, given_error, budget, passed):
        return dataclasses.replace(verdict, evidence=verdict.evidence + (entry,))
    return Verdict(
        "conversion", verdict.where,
        f"{compressed.path.name} is not what compressing this ONNX makes: MNN's converter compressing "
        f"the float conversion with the file's own settings ({' '.join(settings)}) costs cosine "
        f"{figures.get('cosine'):.6g}{_error_text(figures.get('error'), passed)}, the given file "
        f"{given_cosine:.6g}{_error_text(given_error, passed)} against the same float model"
        f"{' (within its budget, which does not see this)' if passed else ''}. "
        f"The loss is not compression's: the file was converted from another ONNX or with other "
        f"options, or changed after conversion",
        evidence=verdict.evidence + (entry,),
        next_steps=(f"reconvert and check in one step: parity convert "
                    f"{next((argument(b.path) for b in backends if b.onnx_graph), 'MODEL.onnx')} "
                    f"-o {argument(compressed.path)} {' '.join(settings)}",),
    )


def _recompressed(backends, feeds, settings, options: CheckOptions, say, passed: bool):
    """(the float model's outputs, its recompression's, the given file's when ``passed``), or
    the error that stopped the recompression."""
    from parity.backends.mnn import MnnBackend
    from parity.mnn.compression import recompress

    float_backend = next(b for b in backends if b.role == "float conversion")
    compressed = next(b for b in backends if is_compressed(b))
    say(f"recompressing the float conversion with {' '.join(settings)} (is the given file what compression makes?)")
    with tempfile.TemporaryDirectory(prefix="parity-recompress-") as workdir:
        target = Path(workdir) / "recompressed.mnn"
        try:
            recompress(float_backend.path, target, settings, timeout=options.timeout)
            with MnnBackend(target, **compressed.reopen_options()) as again:
                outputs = again.run(feeds).outputs
            return (float_backend.run(feeds).outputs, outputs,
                    compressed.run(feeds).outputs if passed else None)
        except ParityError as exc:
            return str(exc)


def _beyond_compression(figures, given_cosine, given_error, budget, passed: bool) -> bool:
    """Whether the given file costs far more than MNN's own compression of the float model: ten
    times (on a pass, above rounding: cosine 0.999, error 1e-3), or the recompression within a
    budget the given file misses."""
    from parity.mnn.ranking import within_budget

    again_cost, given_cost = 1 - (figures.get("cosine") or 0.0), 1 - given_cosine
    if not passed:
        return within_budget(budget, figures) or (again_cost > 0 and given_cost / again_cost >= 10)
    again_error = figures.get("error") or 0.0
    return ((given_cost >= 1e-3 and given_cost >= 10 * again_cost)
            or (given_error is not None and given_error >= 1e-3 and given_error >= 10 * again_error))


def _error_text(error, shown: bool) -> str:
    return f" (error {error:.3g})" if shown and error is not None else ""


def _rank(backends, feeds, budget, options: CheckOptions, say, compression=None):
    """Rank the compressed model's layers (ranking.py), run as the compressed model runs."""
    from parity.mnn import ranking as ranking_mod
    from parity.backends.mnn import MnnBackend

    float_backend = next(b for b in backends if b.role == "float conversion")
    compressed = next(b for b in backends if is_compressed(b))
    settings = compressed.reopen_options()
    if compression is not None and compression.kind == "int8-full":
        if options.calibration is None:
            return ranking_mod.Ranking((), budget.text, {}, None, notes=(
                "no layer ranking: a full-int8 model is ranked by quantizing it again layer by layer, "
                "which needs its calibration samples (parity convert MODEL.onnx --int8-calibration DIR)",))
        samples = [inputs_mod.read_npz(f, "--int8-calibration file", not_a="an .npz file")
                   for f in inputs_mod.sample_files(options.calibration, "--int8-calibration")]
        return ranking_mod.rank_int8(float_backend.path, samples, options.calibration_method, feeds, budget,
                                     lambda path: MnnBackend(path, **settings), timeout=options.timeout,
                                     progress=say, write_fixed=options.write_fixed,
                                     protected=[b.path for b in backends])
    return ranking_mod.rank(float_backend.path, compressed.path, feeds, budget,
                            lambda path: MnnBackend(path, **settings), timeout=options.timeout, progress=say,
                            write_fixed=options.write_fixed, protected=[b.path for b in backends])


def _with_ranking(verdict, ranking):
    """The verdict, with the ranking's top layers and the fix as evidence and next step."""
    if not ranking.layers:
        return dataclasses.replace(verdict, evidence=verdict.evidence + tuple({"ranking": n} for n in ranking.notes))
    top = [{"experiment": "one layer compressed at a time", "rank": x.rank, "layer": x.name,
            "op_type": x.op_type, "compression": x.compression, "cosine": x.cosine, "error": x.error}
           for x in ranking.layers[:5]]
    steps = verdict.next_steps
    if ranking.fix and verdict.kind == "compression":
        fix = ranking.fix
        kept = ", ".join(fix["kept"])
        outcome = ("brings it within" if fix["within_budget"] else "is not enough for")
        steps = (f"keep {kept} in float: measured here, that {outcome} the budget {ranking.budget} (cosine "
                 f"{fix['before'].get('cosine'):.6g} -> {fix['after'].get('cosine'):.6g})", *steps[1:])
        top.append({"experiment": "keep the worst layers in float", **fix})
    where = verdict.where
    if verdict.kind == "compression":
        first = ranking.layers[0]
        where = f"{first.name} ({first.op_type}, {first.compression}), the most costly compressed layer"
    return dataclasses.replace(verdict, where=where, evidence=verdict.evidence + tuple(top), next_steps=steps)
