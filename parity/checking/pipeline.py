"""``parity.check`` (module named pipeline so it never shadows the function): run two or more
models on the same inputs and compare them link by link.

The steps, each a function below: open the backends (MNN's child starts loading first), make
or load the feeds, run every model (MNN computes in its child while the others run here),
compare each link's outputs (judge.py), compare layers when asked (layers.py), decide the
verdict (judge.py) and, on a failing ONNX Runtime -> MNN link, run the experiments that say
why (diagnose.py).
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from parity.core import inputs as inputs_mod
from parity.backends.registry import SUFFIXES, framework_for, open_backend
from parity.core.errors import ModelError, ParityError, UsageError
from parity.core.judge import compare_outputs, layer_only_findings, verdict_for
from parity.options import CheckOptions
from parity.checking.preflight import refuse_bad_options
from parity.core.paths import argument
from parity.core.report import BackendInfo, Comparison, InputInfo, Report, Verdict

Progress = Callable[[str], None]


def _version() -> str:
    from parity import __version__

    return __version__


def resolve_models(models: Sequence[str | os.PathLike], minimum: int = 2) -> list[tuple[str, Path]]:
    if len(models) < minimum:
        if minimum == 1:
            raise UsageError("give the model to check against the saved outputs (e.g. model.mnn)")
        raise UsageError("give at least two models, the reference first (e.g. model.onnx model.mnn)")
    resolved = []
    for model in models:
        framework = framework_for(model)
        if framework is None:
            known = ", ".join(sorted(SUFFIXES))
            raise UsageError(f"cannot tell the framework of {str(model)!r} from its suffix; known: {known}")
        resolved.append((framework, Path(model)))
    if len(resolved) > 3:
        raise UsageError("give two or three models: torch, ONNX and MNN, in chain order")
    return resolved


def chain_links(n: int) -> list[tuple[int, int]]:
    """Each model against the one before it; with three, also first against last (end to end)."""
    return stage_links([[i] for i in range(n)])


def stage_links(stages: list[list[int]]) -> list[tuple[int, int]]:
    """Links between backend indices, ``stages`` being one list per model of the chain (an MNN
    model run in several precisions is one stage of several backends): every backend of a stage
    against the first of the stage before; with three stages, the first against each of the
    last too (end to end)."""
    links = [(stages[i - 1][0], c) for i in range(1, len(stages)) for c in stages[i]]
    if len(stages) == 3:
        links += [(stages[0][0], c) for c in stages[2]]
    return links


def check(
    models: Sequence[str | os.PathLike],
    options: CheckOptions | None = None,
    *,
    progress: Progress | None = None,
    **keywords,
) -> Report:
    """Run every model on the same inputs; compare each model with the one before it.

    The first model is the reference. ``options`` is a CheckOptions; the keywords of earlier
    versions (``seed=``, ``layers=True``, ``mnn_options={...}``...) build one. A mismatch is a
    result (``Report.passed`` is False); anything that prevents a trustworthy comparison
    raises a ``ParityError``.
    """
    if options is None:
        options = CheckOptions.from_keywords(**keywords)
    elif keywords:
        raise UsageError(f"give check options either as an options object or as keywords, not both "
                         f"({sorted(keywords)[0]!r})")
    refuse_bad_options(options)  # a budget or target the options could not judge themselves
    say = _with_counts(progress)
    if options.load_outputs is not None:  # saved outputs lead the chain as its reference
        chain = [("saved", Path(options.load_outputs)), *resolve_models(models, minimum=1)]
        if len(chain) > 3:
            raise UsageError("with --load-outputs, give one or two models (the saved outputs are the reference)")
    else:
        chain = resolve_models(models)
    _check_paths(options, [path for _, path in chain])
    mnn = options.mnn
    if not any(framework == "mnn" for framework, _ in chain) and (
            mnn.target.strip() != "local" or mnn.precisions() != ("normal",) or mnn.memories() != (None,)):
        raise UsageError("--mnn-target, --mnn-precision and --mnn-memory say how .mnn models run, and "
                         "none is given: nothing would run there")

    with ExitStack() as stack:
        chain, roles, compression = _attribution(chain, options, stack, say)
        budget = _budget(options, compression) if roles else None
        backends, stages = _open_backends(chain, options, stack, say, roles=roles)
        specs = _input_specs(backends)
        samples = _samples(backends, specs, options)
        _, feeds, input_infos = samples[0]
        if options.save_inputs is not None:
            inputs_mod.save_npz(options.save_inputs, feeds)
        if options.load_outputs is not None and len(samples) > 1:
            raise UsageError("--load-outputs holds the outputs of one run: give one input sample")
        links = stage_links(stages)
        if len(samples) == 1:
            results = _run_all(backends, feeds, say)
            if options.layers.enabled:
                _prepare_layers(backends, links, feeds, options)
            comparisons = [_compare_link(backends, results, link, options, say, budget) for link in links]
        else:  # the later steps (layers, diagnosis, ranking) look at the worst sample
            comparisons, results, worst = _run_samples(samples, backends, links, options, say, budget)
            _, feeds, input_infos = samples[worst]
        if options.layers.enabled:
            comparisons = _add_layers(comparisons, backends, links, feeds, options, say)
        verdict = verdict_for(comparisons, fail_on_layers=options.layers.fail_on_layers)
        ranking = None
        if budget is not None:
            verdict = _compression_verdict(comparisons, backends, links, verdict, compression, budget)
            if verdict.kind == "compression" and options.diagnose:
                verdict = _recompression_check(comparisons, backends, feeds, verdict, compression, budget, options, say)
            if verdict.kind == "compression" or (options.rank_layers and compression is not None
                                                 and compression.compressed):
                ranking = _rank(backends, feeds, budget, options, say, compression)
                verdict = _with_ranking(verdict, ranking)
        if options.diagnose and verdict.kind == "mismatch":
            comparisons, verdict = _diagnose(comparisons, backends, links, feeds, options, verdict, say)
        if options.save_outputs is not None:
            inputs_mod.save_npz(options.save_outputs, results[0].outputs)
        notes = [n for r in results for n in r.notes]
        if options.write_fixed is not None and ranking is None:
            notes.append(f"--write-fixed: nothing written to {options.write_fixed}: no layer ranking ran "
                         f"(the model is not compressed, or its budget holds: add --rank-layers)")
        if len(samples) > 1:
            notes.append(f"{len(samples)} input samples, each run and compared; every figure is the worst "
                         f"sample's (per-sample figures in the JSON); the later steps used the worst, "
                         f"{samples[worst][0]}")
        if options.repro is not None:
            notes.append(_write_repro(comparisons, backends, links, feeds, options, verdict, say))
        infos = tuple(BackendInfo(b.framework, getattr(b, "spec", str(b.path)), b.version, b.settings())
                      for b in backends)

    findings = tuple(layer_only_findings(comparisons))
    passed = all(c.passed for c in comparisons) and not (options.layers.fail_on_layers and findings)
    tolerance = options.tolerance.to_dict()
    if any(c.layers is not None for c in comparisons):
        tolerance["layer_rtol"] = options.layers.rtol(options.tolerance)
    return Report(
        passed=passed, backends=infos, inputs=tuple(input_infos), comparisons=tuple(comparisons),
        verdict=verdict, tolerance=tolerance, notes=tuple(notes), parity_version=_version(),
        findings=findings, options=options.to_dict(),
        compression=compression.to_dict() if compression is not None and compression.compressed else None,
        ranking=ranking.to_dict() if ranking is not None else None,
    )


# -- steps -----------------------------------------------------------------------------------
def _check_paths(options: CheckOptions, models) -> None:
    """Refuse output paths before any model runs: unwritable, devices, or one of the inputs."""
    if options.save_outputs is not None:
        inputs_mod.check_writable(options.save_outputs, "--save-outputs",
                                  inputs=[*models, *[p for p in (options.load_outputs,) if p]])
    if options.save_inputs is not None:
        given = options.inputs if isinstance(options.inputs, (str, os.PathLike)) else None
        inputs_mod.check_writable(options.save_inputs, "--save-inputs", inputs=[*models, *([given] if given else [])])
    if options.repro is not None:
        from parity.checking.repro import check_repro_dir

        check_repro_dir(options.repro)
    if options.write_fixed is not None:
        from parity.core.paths import check_output

        check_output(options.write_fixed, "--write-fixed", inputs=models)


def _attribution(chain, options: CheckOptions, stack: ExitStack, say):
    """For an MNN model right after its ONNX model: read its compression from the file; when
    it is compressed (or --float-mnn is given), the float conversion of the same ONNX (given,
    or made here) joins the chain between them, so the loss splits into ONNX -> float MNN
    (conversion and runtime) and float MNN -> compressed MNN (the cost of compression).
    Returns the chain, the roles of the MNN entries by index, and the compression (or None)."""
    if not options.attribute:
        return chain, {}, None
    index = next((i for i in range(len(chain) - 1, 0, -1)
                  if chain[i][0] == "mnn" and chain[i - 1][0] == "onnxruntime"), None)
    if index is None:
        if options.float_mnn is not None:
            raise UsageError("--float-mnn needs an ONNX model followed by its compressed .mnn")
        return chain, {}, None
    from parity.mnn import compression as compression_mod
    from parity.core.errors import ParityError

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
    else:
        import tempfile

        from parity.mnn.converter import convert

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parity-float-")))
        float_path = workdir / f"{mnn_path.stem}.float.mnn"
        say(f"converting {onnx_path.name} without compression: the float reference of {mnn_path.name}")
        convert(onnx_path, float_path, options=[], timeout=options.timeout)
    chain = [*chain[:index], ("mnn", float_path), *chain[index:]]
    label = found.kind_label() if found.compressed else "as given"
    return chain, {index: "float conversion", index + 1: label}, found


def _budget(options: CheckOptions, compression):
    from parity.checking.budget import Budget

    if options.budget is not None:
        return Budget.parse(options.budget)
    return Budget.default_for(compression.kind if compression is not None else None)


def _with_counts(progress):
    """``progress`` called as say(message, done, total): a callback of one argument (what
    parity.check documents) gets the message only."""
    if progress is None:
        return lambda message, *counts: None
    import inspect

    try:
        inspect.signature(progress).bind("message", 0, 0)
        return progress
    except TypeError:
        return lambda message, *counts: progress(message)
    except ValueError:  # no signature to read (a builtin): the message only
        return lambda message, *counts: progress(message)


def _open_backends(chain, options: CheckOptions, stack: ExitStack, say, roles=None) -> list:
    """Open every model; an MNN model opens once per precision asked for (--mnn-precision
    high,low), each its own backend (the float conversion of a compressed model: once).
    Returns the backends and the stages (see stage_links)."""
    roles = roles or {}
    backends, stages = [], []
    for position, (framework, path) in enumerate(chain):
        if framework == "mnn":
            role = roles.get(position, "")
            runs = options.mnn.runs()[:1] if role == "float conversion" else options.mnn.runs()
            variants = [dict(options.mnn.backend_kwargs(p, m), timeout=options.timeout, **({"role": role} if role else {}))
                        for p, m in runs]
        elif framework == "torch":
            variants = [{"input_names": list(options.torch_inputs) if options.torch_inputs else None}]
        else:
            variants = [{}]
        stages.append(list(range(len(backends), len(backends) + len(variants))))
        backends += [open_backend(framework, path, **kwargs) for kwargs in variants]
    for backend in backends:  # children start loading while the others load here
        stack.callback(backend.close)
        backend.begin_open()
    for backend in backends:
        say(f"loading {_run_name(backend)}")
        stack.enter_context(backend)
    return backends, stages


def _run_name(backend) -> str:
    """"model.mnn (mnn)", or "model.mnn (mnn on arm64, precision low)" for a target's run."""
    run = getattr(backend, "run_label", "")
    return f"{backend.path.name} ({backend.framework}{' on ' + run if run else ''})"


def _input_specs(backends) -> list:
    """The reference's input specs, after checking every model takes the same inputs. torch
    models and saved outputs have no specs of their own: they borrow the chain's."""
    described = [b for b in backends if b.framework not in ("torch", "saved")]
    for backend in backends:
        if backend.framework in ("torch", "saved"):
            backend.bind_inputs(described[0].input_specs if described else [])
    first = described[0] if described else backends[0]
    first_names = [s.name for s in first.input_specs]
    for other in described[1:]:
        names = [s.name for s in other.input_specs]
        if sorted(names) != sorted(first_names):
            raise ModelError(f"the models' inputs differ: {first.path.name} has {first_names}, "
                             f"{other.path.name} has {names}")
    reference = backends[0]
    return first.input_specs if reference.framework in ("torch", "saved") and described else reference.input_specs


def _samples(backends, specs, options: CheckOptions) -> list[tuple[str | None, dict, list]]:
    """The samples to run: (label, feeds, input infos) each. One, unless --inputs names a
    directory or a glob of .npz files, or --samples-axis splits one .npz."""
    given = options.inputs
    if options.data_loader is not None:
        if given is not None or options.val_ranges or options.shapes:
            raise UsageError("--data-loader gives the inputs: leave out --inputs, --val-range and --shape")
        samples = inputs_mod.load_data_loader(options.data_loader)
        return [(f"{options.data_loader}[{i}]", *_conform(backends, specs, feeds)) for i, feeds in enumerate(samples)]
    if given is not None and options.val_ranges:
        raise UsageError("--val-range applies to generated inputs; it cannot be used with --inputs")
    if given is None or isinstance(given, dict) or hasattr(given, "items"):
        return [(None, *_make_feeds(backends, specs, options))]
    files = inputs_mod.sample_files(given)
    if options.samples_axis is not None:
        if len(files) != 1:
            raise UsageError("--samples-axis splits one .npz; give a single file with --inputs")
        feeds, infos = _make_feeds(backends, specs, options, raw=True)
        split = inputs_mod.split_samples(feeds, options.samples_axis, files[0].name)
        return [(f"{files[0].name}[{i}]", *_conform(backends, specs, part)) for i, part in enumerate(split)]
    if len(files) == 1:
        return [(None, *_make_feeds(backends, specs, dataclasses.replace(options, inputs=files[0])))]
    return [(file.name, *_make_feeds(backends, specs, dataclasses.replace(options, inputs=file))) for file in files]


def _conform(backends, specs, feeds):
    from parity.backends.base import conform_feeds

    feeds, _ = conform_feeds(specs, feeds, backends[0].label)
    return feeds, [InputInfo(n, tuple(a.shape), a.dtype.name, "given") for n, a in feeds.items()]


def _run_samples(samples, backends, links, options: CheckOptions, say, budget):
    """Every sample through every model; each link's outputs aggregated over the samples: the
    worst sample's figures, whether all passed, per-sample figures and the top-1 agreement.
    Returns the comparisons, the first sample's results (for their notes) and the index of the
    worst sample."""
    from parity.checking.budget import top1_rows

    per_sample, first_results = [], None
    top1: dict[tuple[int, str], list[int]] = {}
    for k, (label, feeds, _) in enumerate(samples):
        say(f"sample {k + 1}/{len(samples)}: {label}")
        results = _run_all(backends, feeds, lambda message: None)
        first_results = first_results or results
        comparisons = [_compare_link(backends, results, link, options, lambda message: None, budget) for link in links]
        for j, (comparison, (ref_i, cand_i)) in enumerate(zip(comparisons, links)):
            for o in comparison.outputs:
                if o.reference_name is None or o.candidate_name is None:
                    continue
                counts = top1_rows(results[ref_i].outputs[o.reference_name], results[cand_i].outputs[o.candidate_name])
                if counts is not None:
                    total = top1.setdefault((j, o.name), [0, 0])
                    total[0] += counts[0]
                    total[1] += counts[1]
        per_sample.append(comparisons)
    labels = [label for label, _, _ in samples]
    scores = [_sample_badness(comparisons) for comparisons in per_sample]
    worst = max(range(len(samples)), key=lambda k: scores[k])
    aggregated = [_aggregate([per_sample[k][j] for k in range(len(samples))], labels, top1, j)
                  for j in range(len(links))]
    return aggregated, first_results, worst


def _badness(o) -> tuple:
    from parity.core.judge import output_scaled_error

    if o.budget and o.budget.get("cosine") is not None:
        error = 1.0 - o.budget["cosine"]
    else:
        error = output_scaled_error(o) or 0.0
    return (not o.passed, o.error is not None, error)


def _sample_badness(comparisons) -> tuple:
    outputs = [o for c in comparisons for o in c.outputs]
    return (sum(not o.passed for o in outputs), max((_badness(o)[2] for o in outputs), default=0.0))


def _aggregate(comparisons, labels, top1, index) -> Comparison:
    """One link over all samples: per output, the worst sample's figures, passed only when
    every sample passed, and the per-sample figures in ``samples``."""
    base = comparisons[0]
    outputs = []
    for position, output in enumerate(base.outputs):
        versions = [c.outputs[position] for c in comparisons if position < len(c.outputs)]
        worst_k = max(range(len(versions)), key=lambda k: _badness(versions[k]))
        worst = versions[worst_k]
        cosines = [v.budget["cosine"] if v.budget and v.budget.get("cosine") is not None else v.cosine
                   for v in versions]
        cosines = [c for c in cosines if c is not None]
        agreed = top1.get((index, output.name))
        samples = {
            "count": len(versions), "failed": sum(not v.passed for v in versions), "worst": labels[worst_k],
            "mean_cosine": sum(cosines) / len(cosines) if cosines else None,
            "top1": agreed[0] / agreed[1] if agreed and agreed[1] else None,
            "top1_rows": agreed[1] if agreed else None,
            "per_sample": [{"sample": labels[k], "passed": v.passed, "max_abs_diff": v.max_abs_diff,
                            "cosine": v.cosine, "mismatch_fraction": v.mismatch_fraction,
                            **({"budget": v.budget} if v.budget else {})} for k, v in enumerate(versions)],
        }
        note = (f"{samples['count']} samples, {samples['failed']} failing; figures of the worst, "
                f"{labels[worst_k]}" + (f"; mean cosine {samples['mean_cosine']:.6f}" if samples['mean_cosine'] is not None else "")
                + (f"; top-1 agreement {samples['top1']:.1%} of {agreed[1]} rows" if samples["top1"] is not None else ""))
        outputs.append(dataclasses.replace(worst, passed=all(v.passed for v in versions), samples=samples,
                                           notes=(note, *worst.notes)))
    return dataclasses.replace(base, outputs=tuple(outputs), passed=all(o.passed for o in outputs))


def _make_feeds(backends, specs, options: CheckOptions, raw: bool = False):
    if options.inputs is None:
        bounds = {}
        onnx_model = next((b.path for b in backends if b.framework == "onnxruntime"), None)
        if onnx_model is not None and any(s.dtype.startswith(("int", "uint")) for s in specs):
            bounds = inputs_mod.integer_input_bounds(onnx_model)  # parsing the graph costs: ints only
        return inputs_mod.generate(specs, seed=options.seed, shapes=options.shapes, int_bounds=bounds,
                                   ranges=dict(options.val_ranges))
    if options.shapes:
        raise UsageError("--shape applies to generated inputs; it cannot be used with --inputs")
    if isinstance(options.inputs, dict) or hasattr(options.inputs, "items"):
        feeds = {k: np.asarray(v) for k, v in options.inputs.items()}
        infos = None
    elif raw:  # --samples-axis: the arrays as stored, split into samples by the caller
        return inputs_mod.read_npz(Path(inputs_mod.sample_files(options.inputs)[0]), "--inputs file",
                                   not_a="an .npz file"), None
    else:
        feeds, infos = inputs_mod.load_npz(options.inputs, specs, allow_nonfinite=options.allow_nonfinite)
    # the reference's input spec is the contract: exact dtypes, fixed dims
    from parity.backends.base import conform_feeds

    feeds, _ = conform_feeds(specs, feeds, backends[0].label)
    if infos is None:
        infos = [InputInfo(n, tuple(a.shape), a.dtype.name, "given") for n, a in feeds.items()]
    return feeds, infos


def _run_all(backends, feeds, say) -> list:
    """Backends whose work runs in a child are sent their run first and collected last, so
    they compute while the others run here."""
    order = sorted(range(len(backends)), key=lambda i: not backends[i].runs_in_child)
    handles = {}
    for i in order:
        say(f"running {_run_name(backends[i])}")
        handles[i] = backends[i].begin_run(feeds)
    return [backends[i].finish_run(handles[i]) for i in range(len(backends))]


def link_tolerance(options: CheckOptions, candidate):
    """The tolerance of a link: the one given, or, where none was given and the candidate ran
    in reduced precision (MNN precision low on a CPU with float16 arithmetic), the default of
    that precision (metrics.FP16_TOLERANCE)."""
    from parity.core.metrics import FP16_TOLERANCE

    if not options.tolerance_given and getattr(candidate, "reduced_precision", False):
        return FP16_TOLERANCE
    return options.tolerance


def _compressed(backend) -> bool:
    role = getattr(backend, "role", "")
    return bool(role) and role != "float conversion"


def _compare_link(backends, results, link, options: CheckOptions, say, budget=None) -> Comparison:
    ref_i, cand_i = link
    candidate = backends[cand_i]
    if budget is not None and _compressed(candidate):
        return _compare_by_budget(backends, results, link, budget, say)
    run = getattr(candidate, "run_label", "")
    say(f"comparing {backends[ref_i].framework} -> {candidate.framework}{' (' + run + ')' if run else ''}")
    tolerance = link_tolerance(options, candidate)
    comparison = compare_outputs(results[ref_i].outputs, results[cand_i].outputs, tolerance,
                                 reference_name=backends[ref_i].framework,
                                 candidate_name=candidate.framework,
                                 candidate_steps=results[cand_i].steps,
                                 tolerances=options.tolerances, check_stat=options.check_stat)
    notes = getattr(candidate, "precision_notes", ())
    if tolerance is not options.tolerance:
        notes = (*notes, f"tolerance of float16 arithmetic (precision {candidate.precision} ran in "
                         f"float16 here): {tolerance.describe()}; give --atol/--rtol to set your own")
    return dataclasses.replace(comparison, candidate_run=run, reference_run=getattr(backends[ref_i], "run_label", ""),
                               tolerance=tolerance.to_dict() if
                               tolerance is not options.tolerance else None, notes=comparison.notes + tuple(notes))


def _compare_by_budget(backends, results, link, budget, say) -> Comparison:
    """A link to the compressed model: measured as any link, judged by the budget (every
    output meets every clause) instead of the element tolerance."""
    from parity.core.metrics import Tolerance

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
                               reference_run=getattr(backends[ref_i], "run_label", ""),
                               notes=comparison.notes + (f"judged by the compression budget {budget.text} "
                                                         f"(--budget), not the element tolerance",))


def _compression_verdict(comparisons, backends, links, verdict, compression, budget):
    """When the float conversion matches ONNX and the compressed model misses its budget: the
    verdict is compression. A failing float link keeps its verdict (conversion or runtime,
    decided by the diagnosis): compression cannot be blamed for a wrong conversion."""
    from parity.core.report import Verdict

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
    if not _compressed(backends[cand_i]):
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


def _recompression_check(comparisons, backends, feeds, verdict, compression, budget, options: CheckOptions, say):
    """Is the compressed file what MNN's compression of this ONNX makes? Compress the float
    conversion again with the settings read from the file, measured the same way against the
    float model: when that costs far less than the given file (within the budget, or ten times
    less), the given file is wrong beyond its compression: conversion (another ONNX, a changed
    file, a converter bug in that conversion), not compression."""
    import tempfile

    from parity.backends.mnn import MnnBackend
    from parity.mnn.compression import recompress
    from parity.core.report import Verdict

    settings = compression.converter_options() if compression is not None else None
    if settings is None:
        return dataclasses.replace(verdict, evidence=verdict.evidence + (
            {"experiment": "recompression", "detail": "not run: the layers are compressed in several ways"},))
    float_backend = next(b for b in backends if getattr(b, "role", "") == "float conversion")
    compressed = next(b for b in backends if _compressed(b))
    given = next(c for c in comparisons if not c.passed and c.candidate_run == compressed.run_label)
    given_cosine = min((o.budget or {}).get("cosine", 1.0) or 0.0 for o in given.outputs)
    say(f"recompressing the float conversion with {' '.join(settings)} (is the given file what compression makes?)")
    with tempfile.TemporaryDirectory(prefix="parity-recompress-") as workdir:
        target = Path(workdir) / "recompressed.mnn"
        try:
            recompress(float_backend.path, target, settings, timeout=options.timeout)
            with MnnBackend(target, **compressed.reopen_options()) as again:
                outputs = again.run(feeds).outputs
            reference = float_backend.run(feeds).outputs
        except Exception as exc:  # evidence, not the end
            from parity.core.errors import ParityError

            if not isinstance(exc, ParityError):
                raise
            return dataclasses.replace(verdict, evidence=verdict.evidence + (
                {"experiment": "recompression", "setting": " ".join(settings), "error": str(exc)},))
    from parity.mnn.ranking import within_budget, worst_figures

    figures = worst_figures(reference, outputs)
    entry = {"experiment": "recompression of the float conversion", "setting": " ".join(settings),
             "cosine": figures.get("cosine"), "error": figures.get("error"), "given_cosine": given_cosine,
             "within_budget": within_budget(budget, figures)}
    again_cost = 1 - (figures.get("cosine") or 0.0)
    given_cost = 1 - given_cosine
    if within_budget(budget, figures) or (again_cost > 0 and given_cost / again_cost >= 10):
        return Verdict(
            "conversion", verdict.where,
            f"{compressed.path.name} is not what compressing this ONNX makes: MNN's converter compressing "
            f"the float conversion with the file's own settings ({' '.join(settings)}) costs cosine "
            f"{figures.get('cosine'):.6g}, the given file {given_cosine:.6g} against the same float model. "
            f"The loss is not compression's: the file was converted from another ONNX or with other "
            f"options, or changed after conversion",
            evidence=verdict.evidence + (entry,),
            next_steps=(f"reconvert and check in one step: parity convert "
                        f"{next((argument(b.path) for b in backends if b.framework == 'onnxruntime'), 'MODEL.onnx')} "
                        f"-o {argument(compressed.path)} {' '.join(settings)}",),
        )
    return dataclasses.replace(verdict, evidence=verdict.evidence + (entry,))


def _rank(backends, feeds, budget, options: CheckOptions, say, compression=None):
    """Rank the compressed model's layers (ranking.py), run as the compressed model runs."""
    from parity.mnn import ranking as ranking_mod
    from parity.backends.mnn import MnnBackend

    float_backend = next(b for b in backends if getattr(b, "role", "") == "float conversion")
    compressed = next(b for b in backends if _compressed(b))
    settings = compressed.reopen_options()
    if compression is not None and compression.kind == "int8-full":
        if options.calibration is None:
            return ranking_mod.Ranking((), budget.text, {}, None, notes=(
                "no layer ranking: a full-int8 model is ranked by quantizing it again layer by layer, "
                "which needs its calibration samples (parity convert MODEL.onnx --int8-calibration DIR)",))
        from parity.core import inputs as inputs_mod

        samples = [inputs_mod.read_npz(f, "--int8-calibration file", not_a="an .npz file")
                   for f in inputs_mod.sample_files(options.calibration)]
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


def _failing_outputs(comparison: Comparison) -> dict:
    """ONNX output name -> failing OutputComparison (the ONNX model is the candidate on the
    torch link, the reference on the others)."""
    onnx_is_candidate = comparison.candidate == "onnxruntime"
    return {(o.candidate_name if onnx_is_candidate else o.reference_name): o
            for o in comparison.failed_outputs if o.candidate_name}


def _layer_view(comparison, graph, reference, candidate, feeds, options: CheckOptions, say, *, isolate=None):
    from parity.checking import layers as layers_mod

    tolerance = link_tolerance(options, candidate)
    result = layers_mod.compare_layers(
        graph, reference, candidate, feeds, tolerance,
        layer_rtol=options.layers.rtol(tolerance), max_memory=options.layers.max_memory,
        isolate=isolate or options.layers.isolate, failing_outputs=_failing_outputs(comparison), progress=say,
    )
    if result is None:
        return dataclasses.replace(comparison, notes=comparison.notes + (
            "no per-layer view on this link (layers are compared on torch -> onnxruntime and "
            "onnxruntime -> mnn)",))
    return dataclasses.replace(
        comparison, layers=tuple(result.layers), unpaired=tuple(result.unpaired),
        first_divergence=result.first_divergence, notes=comparison.notes + tuple(result.notes),
    )


def _onnx_graph(backends):
    from parity.checking import layers as layers_mod

    onnx_backend = next((b for b in backends if b.framework == "onnxruntime"), None)
    return None if onnx_backend is None else layers_mod.OnnxGraph(onnx_backend.graph_proto())


def _prepare_layers(backends, links, feeds, options: CheckOptions) -> None:
    """MNN loads the module of the first layer capture while the outputs are compared (on a
    BERT-base, 0.8 s of the layer step). What goes wrong here goes wrong again in the layer
    step, which says so."""
    from parity.checking import layers as layers_mod

    graph = _onnx_graph(backends)
    link = next(((r, c) for r, c in links if (backends[r].framework, backends[c].framework)
                 == ("onnxruntime", "mnn") and not _compressed(backends[c])), None)
    if graph is None or link is None:
        return
    try:
        layers_mod.prepare_capture(graph, backends[link[0]], backends[link[1]], feeds, options.layers.max_memory)
    except (ParityError, ValueError, KeyError, OSError):
        pass


def _add_layers(comparisons, backends, links, feeds, options: CheckOptions, say) -> list:
    """Attach per-layer results to every link that has a per-layer view."""
    graph = _onnx_graph(backends)
    if graph is None:
        return [dataclasses.replace(c, notes=c.notes + (
            "per-layer comparison needs the ONNX model in the chain: its graph is the map",)) for c in comparisons]
    out = []
    for comparison, (ref_i, cand_i) in zip(comparisons, links):
        if _compressed(backends[cand_i]):
            out.append(dataclasses.replace(comparison, notes=comparison.notes + (
                "no per-layer view on a compressed link: every compressed layer differs by design; "
                "the layer ranking measures what each costs",)))
            continue
        say(f"per-layer: {comparison.link}")
        out.append(_layer_view(comparison, graph, backends[ref_i], backends[cand_i], feeds, options, say))
    return out


def _diagnose(comparisons, backends, links, feeds, options: CheckOptions, verdict, say):
    """Run the verdict experiments on the first failing onnxruntime -> mnn link."""
    from parity.checking import diagnose as diagnose_mod

    for i, (comparison, (ref_i, cand_i)) in enumerate(zip(comparisons, links)):
        if comparison.passed:
            continue
        if (comparison.reference, comparison.candidate) != ("onnxruntime", "mnn") or _compressed(backends[cand_i]):
            return comparisons, verdict
        reference, candidate = backends[ref_i], backends[cand_i]
        graph = _onnx_graph(backends)
        if comparison.layers is None:
            say("per-layer capture for the diagnosis")
            isolate = options.layers.isolate if options.layers.isolate != "none" else "first"
            comparison = _layer_view(comparison, graph, reference, candidate, feeds, options, say, isolate=isolate)
            comparisons = list(comparisons)
            comparisons[i] = comparison
        tolerance = link_tolerance(options, candidate)
        context = diagnose_mod.Context(
            onnx_path=reference.path, mnn_path=candidate.path, reference=reference, candidate=candidate,
            graph=graph, comparison=comparison, feeds=feeds, tolerance=tolerance,
            layer_rtol=options.layers.rtol(tolerance), timeout=options.timeout, progress=say,
            siblings=[backends[c] for r, c in links if r == ref_i and c != cand_i and backends[c].framework == "mnn"],
        )
        return list(comparisons), diagnose_mod.diagnose(context)
    return comparisons, verdict


def _write_repro(comparisons, backends, links, feeds, options: CheckOptions, verdict: Verdict, say) -> str:
    directory = options.repro
    if verdict.kind not in ("conversion", "runtime"):
        return f"no reproduction written to {directory}: the verdict is {verdict.kind}"
    for comparison, (ref_i, cand_i) in zip(comparisons, links):
        if (comparison.reference, comparison.candidate) == ("onnxruntime", "mnn") and not comparison.passed:
            from parity.checking.repro import write_repro

            say(f"writing the reproduction to {directory}")
            candidate = backends[cand_i]

            def check_pair(onnx_path, mnn_path, npz_path) -> Report:
                settings = candidate.settings()
                repro_options = dataclasses.replace(
                    options, inputs=npz_path, save_inputs=None, diagnose=False, allow_nonfinite=True,
                    repro=None, shapes={}, layers=dataclasses.replace(options.layers, enabled=False),
                    mnn=dataclasses.replace(options.mnn, **{k: settings[k] for k in ("backend", "threads", "precision", "target")}))
                return check([onnx_path, mnn_path], repro_options)

            result = write_repro(directory, reference=backends[ref_i], candidate=candidate,
                                 graph=_onnx_graph(backends), comparison=comparison, verdict=verdict,
                                 feeds=feeds, tolerance=options.tolerance, timeout=options.timeout,
                                 check_pair=check_pair)
            state = {True: "reproduces", False: "does not reproduce in isolation", None: "could not be checked"}
            what = "reproduction (the given .mnn and the ONNX, whole)" if result["given_file"] else "reproduction"
            return f"{what} written to {directory} ({state[result['reproduces']]}): {result['command']}"
    return f"no reproduction written to {directory}: no failing onnxruntime -> mnn link"
