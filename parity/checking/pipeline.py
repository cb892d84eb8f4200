"""``parity.check`` (module named pipeline so it never shadows the function): run two or more
models on the same inputs and compare them link by link.

The steps, each a function below: open the backends (MNN's child starts loading first), make
or load the feeds (samples.py), run every model (MNN computes in its child while the others
run here), compare each link's outputs (judge.py; a compressed model by its budget,
compression_policy.py), aggregate them over the samples (samples.py), compare layers when
asked (layers.py), decide the verdict (judge.py, compression_policy.py) and, on a failing
link the experiments apply to (core/links.py: ONNX Runtime -> MNN), run the experiments that
say why (diagnose.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

from parity.checking import compression_policy
from parity.checking import samples as samples_mod
from parity.core import inputs as inputs_mod
from parity.backends.registry import backend_class, framework_for, open_backend, suffixes
from parity.core.errors import InputError, ModelError, ParityError, UsageError
from parity.core.judge import compare_outputs, layer_only_findings, verdict_for
from parity.core.links import LINKS, link_for, with_layers
from parity.options import CheckOptions
from parity.checking.preflight import refuse_bad_options
from parity.core.report import BackendInfo, Comparison, Report, Verdict

Progress = Callable[[str], None]


def _version() -> str:
    from parity import __version__

    return __version__


def resolve_models(models: Sequence[str | os.PathLike], minimum: int = 2) -> list[tuple[str, Path]]:
    if isinstance(models, (str, bytes, os.PathLike)):  # one path: its characters would be taken as models
        raise UsageError(f"give the models as a list of paths (e.g. [\"model.onnx\", \"model.mnn\"]), "
                         f"not one {type(models).__name__} {os.fsdecode(models)!r}")
    if len(models) < minimum:
        if minimum == 1:
            raise UsageError("give the model to check against the saved outputs (e.g. model.mnn)")
        raise UsageError("give at least two models, the reference first (e.g. model.onnx model.mnn)")
    resolved = []
    for model in models:
        framework = framework_for(model)
        if framework is None:
            known = ", ".join(sorted(suffixes()))
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
    if all(backend_class(framework).options_group != "mnn" for framework, _ in chain) and (
            mnn.target.strip() != "local" or mnn.precisions() != ("normal",) or mnn.memories() != (None,)):
        raise UsageError("--mnn-target, --mnn-precision and --mnn-memory say how .mnn models run, and "
                         "none is given: nothing would run there")

    with ExitStack() as stack:
        chain, roles, compression = compression_policy.attribute(chain, options, stack, say)
        budget = compression_policy.budget_for(options, compression) if roles else None
        one_run = None if roles else _one_run(chain, options)
        backends, stages = _open_backends(chain, options, stack, say, roles=roles, one_run=one_run)
        specs = _input_specs(backends)
        _refuse_unknown_tolerances(backends, options)
        samples = samples_mod.load(backends, specs, options)
        _, feeds, input_infos = samples[0]
        if options.save_inputs is not None:
            inputs_mod.save_npz(options.save_inputs, feeds)
        if options.load_outputs is not None and len(samples) > 1:
            raise UsageError("--load-outputs holds the outputs of one run: give one input sample")
        links = stage_links(stages)
        if len(samples) == 1:
            # the layer capture's module and session are made while MNN's child runs the model
            prepare = functools.partial(_prepare_layers, backends, links, feeds, options)
            results = _run_all(backends, feeds, say, submitted=prepare if options.layers.enabled else None)
            comparisons = [_compare_link(backends, results, link, options, say, budget) for link in links]
        else:  # the later steps (layers, diagnosis, ranking) look at the worst sample
            run = functools.partial(_run_and_compare, backends, links, options, budget)
            comparisons, results, worst = samples_mod.run_all(samples, links, run, say)
            _, feeds, input_infos = samples[worst]
        if options.layers.enabled:
            comparisons = _add_layers(comparisons, backends, links, feeds, options, say)
        verdict = verdict_for(comparisons, fail_on_layers=options.layers.fail_on_layers)
        ranking = None
        if budget is not None:
            verdict, ranking = compression_policy.decide(comparisons, backends, links, verdict, compression, budget,
                                                         feeds, options, say)
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
        infos = tuple(BackendInfo(b.framework, b.spec, b.version, b.settings())
                      for b in backends)

    findings = tuple(layer_only_findings(comparisons))
    # every link within tolerance, and nothing that judged the models beyond it (a compressed
    # file within its budget that is not this ONNX's) found them wrong
    passed = (all(c.passed for c in comparisons) and not (options.layers.fail_on_layers and findings)
              and verdict.kind == "pass")
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


def _one_run(chain, options: CheckOptions) -> list[str] | None:
    """A --layers check of an ONNX model whose tensors fit the default budget (no --max-memory):
    ONNX Runtime and MNN then run once each, returning every tensor of the ONNX graph's values
    (the list returned), and those runs serve the layer capture (capture.one_run_fits)."""
    if not options.layers.enabled or options.layers.max_memory is not None or options.load_outputs is not None:
        return None
    onnx_path = next((path for framework, path in chain if framework == "onnxruntime"), None)
    if onnx_path is None:
        return None
    from parity.checking.capture import one_run_fits

    return one_run_fits(onnx_path, options.shapes)


def _open_backends(chain, options: CheckOptions, stack: ExitStack, say, roles=None, one_run=None) -> list:
    """Open every model; an MNN model opens once per precision asked for (--mnn-precision
    high,low), each its own backend (the float conversion of a compressed model: once).
    With ``one_run`` (the ONNX graph's values: see _one_run) the backends that take it return
    every tensor from their run. Returns the backends and the stages (see stage_links)."""
    roles = roles or {}
    backends, stages = [], []
    for position, (framework, path) in enumerate(chain):
        cls = backend_class(framework)
        variants = [dict(v, one_run=one_run) if one_run and cls.takes_one_run and not roles.get(position) else v
                    for v in cls.variants(options, roles.get(position, ""))]
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
    run = backend.run_label
    return f"{backend.path.name} ({backend.framework}{' on ' + run if run else ''})"


def _input_specs(backends) -> list:
    """The reference's input specs, after checking every model takes the same inputs. torch
    models and saved outputs have no specs of their own: they borrow the chain's."""
    described = [b for b in backends if b.describes_inputs]
    for backend in backends:
        if not backend.describes_inputs:
            backend.bind_inputs(described[0].input_specs if described else [])
    first = described[0] if described else backends[0]
    first_names = [s.name for s in first.input_specs]
    for other in described[1:]:
        names = [s.name for s in other.input_specs]
        if sorted(names) != sorted(first_names):
            raise ModelError(f"the models' inputs differ: {first.path.name} has {first_names}, "
                             f"{other.path.name} has {names}")
    reference = backends[0]
    return first.input_specs if not reference.describes_inputs and described else reference.input_specs


def _refuse_unknown_tolerances(backends, options: CheckOptions) -> None:
    """A --tol naming no output of any model is refused before the run, as a --val-range naming
    no input is (it would be ignored, and the output judged by the default). Models that name
    their outputs only when they run (torch) leave it to the comparison."""
    outputs = [[s.name for s in b.output_specs or ()] for b in backends]
    if not options.tolerances or not all(outputs):
        return
    known = {name for names in outputs for name in names}
    unknown = [name for name in options.tolerances if name not in known]
    if unknown:
        raise InputError(f"--tol names unknown output {unknown[0]!r}; the models' outputs are "
                         f"{list(dict.fromkeys(n for names in outputs for n in names))}")


def _run_all(backends, feeds, say, submitted: Callable[[], None] | None = None) -> list:
    """Backends whose work runs in a child are sent their run first and collected last, so
    they compute while the others run here; ``submitted`` is called once every run is sent
    and the in-process ones are done, while the children still compute."""
    order = sorted(range(len(backends)), key=lambda i: not backends[i].runs_in_child)
    handles = {}
    for i in order:
        say(f"running {_run_name(backends[i])}")
        handles[i] = backends[i].begin_run(feeds)
    if submitted is not None:
        submitted()
    return [backends[i].finish_run(handles[i]) for i in range(len(backends))]


def _run_and_compare(backends, links, options: CheckOptions, budget, feeds):
    """One sample through every model and every link, quietly (the samples step says which)."""
    def quiet(message, *counts):
        return None

    results = _run_all(backends, feeds, quiet)
    return results, [_compare_link(backends, results, link, options, quiet, budget) for link in links]


def link_tolerance(options: CheckOptions, candidate):
    """The tolerance of a link: the one given, or, where none was given and the candidate ran
    in reduced precision (MNN precision low on a CPU with float16 arithmetic), the default of
    that precision (metrics.FP16_TOLERANCE)."""
    from parity.core.metrics import FP16_TOLERANCE

    if not options.tolerance_given and candidate.reduced_precision:
        return FP16_TOLERANCE
    return options.tolerance


def _compare_link(backends, results, link, options: CheckOptions, say, budget=None) -> Comparison:
    ref_i, cand_i = link
    candidate = backends[cand_i]
    if budget is not None and compression_policy.is_compressed(candidate):
        return compression_policy.compare_by_budget(backends, results, link, budget, say)
    run = candidate.run_label
    say(f"comparing {backends[ref_i].framework} -> {candidate.framework}{' (' + run + ')' if run else ''}")
    tolerance = link_tolerance(options, candidate)
    comparison = compare_outputs(results[ref_i].outputs, results[cand_i].outputs, tolerance,
                                 reference_name=backends[ref_i].framework,
                                 candidate_name=candidate.framework,
                                 candidate_steps=results[cand_i].steps,
                                 tolerances=options.tolerances, check_stat=options.check_stat)
    notes = candidate.precision_notes
    if tolerance is not options.tolerance:
        notes = (*notes, f"tolerance of float16 arithmetic (precision {candidate.precision} ran in "
                         f"float16 here): {tolerance.describe()}; give --atol/--rtol to set your own")
    return dataclasses.replace(comparison, candidate_run=run, reference_run=backends[ref_i].run_label,
                               tolerance=tolerance.to_dict() if
                               tolerance is not options.tolerance else None, notes=comparison.notes + tuple(notes))


def _failing_outputs(comparison: Comparison) -> dict:
    """ONNX output name -> failing OutputComparison (the ONNX model is the candidate on the
    torch link, the reference on the others)."""
    onnx_is_candidate = link_for(comparison.reference, comparison.candidate).onnx_side == "candidate"
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
            f"no per-layer view on this link (layers are compared on {' and '.join(with_layers())})",))
    return dataclasses.replace(
        comparison, layers=tuple(result.layers), unpaired=tuple(result.unpaired),
        first_divergence=result.first_divergence, notes=comparison.notes + tuple(result.notes),
    )


def _onnx_graph(backends):
    from parity.checking.onnx_graph import OnnxGraph

    onnx_backend = next((b for b in backends if b.onnx_graph), None)
    return None if onnx_backend is None else OnnxGraph(onnx_backend.graph_proto())


def _prepare_layers(backends, links, feeds, options: CheckOptions) -> None:
    """MNN's child loads the module of the first layer capture right after the model's run
    (unless the model's module returns every tensor already), and ONNX Runtime builds its
    capture session meanwhile (on a BERT-base, 0.8 s and 0.5 s of the layer step). What goes
    wrong here goes wrong again in the layer step, which says so."""
    from parity.checking import layers as layers_mod

    graph = _onnx_graph(backends)
    link = next(((r, c) for r, c in links if backends[c].runs_in_child and not compression_policy.is_compressed(backends[c])
                 and link_for(backends[r].framework, backends[c].framework).layer_pairing), None)
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
        if compression_policy.is_compressed(backends[cand_i]):
            out.append(dataclasses.replace(comparison, notes=comparison.notes + (
                "no per-layer view on a compressed link: every compressed layer differs by design; "
                "the layer ranking measures what each costs",)))
            continue
        say(f"per-layer: {comparison.link}")
        out.append(_layer_view(comparison, graph, backends[ref_i], backends[cand_i], feeds, options, say))
    return out


def _diagnose(comparisons, backends, links, feeds, options: CheckOptions, verdict, say):
    """Run the verdict experiments on the first failing link, when they apply to it (the
    links table's ``diagnosable``: onnxruntime -> mnn)."""
    from parity.checking import diagnose as diagnose_mod

    for i, (comparison, (ref_i, cand_i)) in enumerate(zip(comparisons, links)):
        if comparison.passed:
            continue
        if not link_for(comparison.reference, comparison.candidate).diagnosable or compression_policy.is_compressed(backends[cand_i]):
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
            siblings=[backends[c] for r, c in links if r == ref_i and c != cand_i and backends[c].framework == backends[cand_i].framework],
        )
        return list(comparisons), diagnose_mod.diagnose(context)
    return comparisons, verdict


def _write_repro(comparisons, backends, links, feeds, options: CheckOptions, verdict: Verdict, say) -> str:
    directory = options.repro
    if verdict.kind not in ("conversion", "runtime"):
        return f"no reproduction written to {directory}: the verdict is {verdict.kind}"
    for comparison, (ref_i, cand_i) in zip(comparisons, links):
        if link_for(comparison.reference, comparison.candidate).reproducible and not comparison.passed:
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
    return f"no reproduction written to {directory}: no failing {_reproducible()} link"


def _reproducible() -> str:
    """The links --repro can reproduce, as "onnxruntime -> mnn"."""
    return " or ".join(f"{row.reference} -> {row.candidate}" for row in LINKS if row.reproducible)
