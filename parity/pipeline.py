"""``parity.check`` (module named pipeline so it never shadows the function): run two or more models on the same inputs and compare them link by link."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from parity import inputs as inputs_mod
from parity.align import AlignmentError, align_array, pair_outputs
from parity.backends import SUFFIXES, framework_for, open_backend
from parity.errors import InputError, ModelError, UsageError
from parity.metrics import TensorDiff, Tolerance
from parity.report import BackendInfo, Comparison, OutputComparison, Report, Verdict
from parity.specs import TensorMap

Progress = Callable[[str], None]


def _version() -> str:
    from parity import __version__

    return __version__


def resolve_models(models: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    if len(models) < 2:
        raise UsageError("give at least two models, the reference first (e.g. model.onnx model.mnn)")
    resolved = []
    for model in models:
        framework = framework_for(model)
        if framework is None:
            known = ", ".join(sorted(SUFFIXES))
            raise UsageError(f"cannot tell the framework of {str(model)!r} from its suffix; known: {known}")
        resolved.append((framework, Path(model)))
    return resolved


def compare_outputs(
    reference: TensorMap,
    candidate: TensorMap,
    tol: Tolerance,
    *,
    reference_name: str,
    candidate_name: str,
    candidate_steps: Mapping[str, tuple[str, ...]] | None = None,
) -> Comparison:
    """Pair, align and measure every output of one link."""
    candidate_steps = candidate_steps or {}
    pairing = pair_outputs(list(reference), list(candidate))
    results: list[OutputComparison] = []
    for pair in pairing.pairs:
        ref = np.asarray(reference[pair.reference_name])
        cand = np.asarray(candidate[pair.candidate_name])
        steps = list(candidate_steps.get(pair.candidate_name, ()))
        if pair.how == "order":
            steps.insert(0, f"paired by order: reference {pair.reference_name!r} <-> candidate {pair.candidate_name!r}")
        # a row is named as the models that name their outputs do: torch's flattened names
        # ("output", "0") give way to ONNX/MNN names, so links line up side by side
        row_name = pair.candidate_name if reference_name == "torch" else pair.name
        common = dict(
            name=row_name,
            reference_name=pair.reference_name,
            candidate_name=pair.candidate_name,
            reference_shape=tuple(ref.shape),
            candidate_shape=tuple(cand.shape),
            reference_dtype=ref.dtype.name,
            candidate_dtype=cand.dtype.name,
        )
        try:
            aligned, align_steps = align_array(ref, cand)
        except AlignmentError as exc:
            results.append(OutputComparison(passed=False, alignment=tuple(steps), error=str(exc), **common))
            continue
        steps.extend(align_steps)
        diff = TensorDiff.from_arrays(row_name, ref, aligned, tol)
        results.append(OutputComparison.from_diff(diff, alignment=steps, **common))
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


def verdict_for(comparisons: Sequence[Comparison]) -> Verdict:
    """The first broken link, in chain order, decides. A failing torch -> onnxruntime link is
    the export's fault whatever MNN does."""
    for comparison in comparisons:
        failed = comparison.failed_outputs
        if not failed:
            continue
        first = failed[0]
        link = f"{comparison.reference} -> {comparison.candidate}"
        if first.error:
            detail = first.error
        else:
            biggest = "n/a (no finite pair)" if first.max_abs_diff is None else f"{first.max_abs_diff:.3g}"
            detail = f"max_abs_diff {biggest}, {first.mismatch_fraction:.1%} of elements out of tolerance"
            if first.nan_reference != first.nan_candidate or first.inf_reference != first.inf_candidate:
                detail += (f"; NaN/Inf differ: reference {first.nan_reference}/{first.inf_reference}, "
                           f"candidate {first.nan_candidate}/{first.inf_candidate}")
        where = f"output {first.name!r} ({link})"
        counts = f"{len(failed)} of {len(comparison.outputs)} outputs differ on {link}"
        divergence = comparison.first_divergence
        if divergence is not None:
            module = f", module {divergence.module}" if divergence.module else ""
            where = f"{divergence.name} ({divergence.op_type}{module}) on {link}"
            counts += f"; {divergence.summary}"
        if (comparison.reference, comparison.candidate) == ("torch", "onnxruntime"):
            return Verdict(
                "export", where,
                f"the export (torch -> ONNX) changed the numbers: {counts}; first: {first.name!r} ({detail})",
                next_steps=(
                    "check the export with the inputs that fail: data-dependent control flow, "
                    "shapes baked in by tracing and training-mode layers are the usual causes",
                ),
            )
        return Verdict("mismatch", where, f"{counts}; first: {first.name!r} ({detail})")
    n = sum(len(c.outputs) for c in comparisons)
    links = len(comparisons)
    return Verdict("pass", None, f"all {n} compared outputs match within tolerance on {links} link{'s' * (links != 1)}")


def chain_links(n: int) -> list[tuple[int, int]]:
    """Each model against the one before it; with three, also first against last (end to end)."""
    links = [(i - 1, i) for i in range(1, n)]
    if n == 3:
        links.append((0, 2))
    return links


def _add_layers(comparisons, backends, links, feeds, tolerance, *, layer_rtol, isolate, max_memory, say):
    """Attach per-layer results to every link that has a per-layer view."""
    import dataclasses

    from parity import layers as layers_mod

    onnx_backend = next((b for b in backends if b.framework == "onnxruntime"), None)
    if onnx_backend is None:
        return [dataclasses.replace(c, notes=c.notes + (
            "per-layer comparison needs the ONNX model in the chain: its graph is the map",)) for c in comparisons]
    graph = layers_mod.OnnxGraph(onnx_backend.model_proto())
    out = []
    for comparison, (ref_i, cand_i) in zip(comparisons, links):
        say(f"per-layer: {comparison.reference} -> {comparison.candidate}")
        result = layers_mod.compare_layers(
            graph, backends[ref_i], backends[cand_i], feeds, tolerance,
            layer_rtol=layers_mod.default_layer_rtol(tolerance, layer_rtol),
            max_memory=max_memory, isolate=isolate, progress=say,
        )
        if result is None:
            out.append(dataclasses.replace(comparison, notes=comparison.notes + (
                "no per-layer view on this link (layers are compared on torch -> onnxruntime and "
                "onnxruntime -> mnn)",)))
            continue
        out.append(dataclasses.replace(
            comparison, layers=tuple(result.layers), unpaired=tuple(result.unpaired),
            first_divergence=result.first_divergence, notes=comparison.notes + tuple(result.notes),
        ))
    return out


def _diagnose(comparisons, backends, links, feeds, tolerance, verdict, *, layer_rtol, isolate,
              max_memory, timeout, say):
    """Run the verdict experiments on the first failing onnxruntime -> mnn link."""
    import dataclasses

    from parity import diagnose as diagnose_mod
    from parity import layers as layers_mod

    for i, (comparison, (ref_i, cand_i)) in enumerate(zip(comparisons, links)):
        if comparison.passed:
            continue
        if (comparison.reference, comparison.candidate) != ("onnxruntime", "mnn"):
            return comparisons, verdict
        reference, candidate = backends[ref_i], backends[cand_i]
        graph = layers_mod.OnnxGraph(reference.model_proto())
        rtol = layers_mod.default_layer_rtol(tolerance, layer_rtol)
        if comparison.layers is None:
            say("per-layer capture for the diagnosis")
            result = layers_mod.compare_layers(graph, reference, candidate, feeds, tolerance,
                                               layer_rtol=rtol, max_memory=max_memory,
                                               isolate=isolate if isolate != "none" else "first", progress=say)
            comparison = dataclasses.replace(
                comparison, layers=tuple(result.layers), unpaired=tuple(result.unpaired),
                first_divergence=result.first_divergence, notes=comparison.notes + tuple(result.notes))
            comparisons = list(comparisons)
            comparisons[i] = comparison
        context = diagnose_mod.Context(
            onnx_path=reference.path, mnn_path=candidate.path, reference=reference, candidate=candidate,
            graph=graph, comparison=comparison, feeds=feeds, tolerance=tolerance, layer_rtol=rtol,
            timeout=timeout, progress=say,
        )
        return list(comparisons), diagnose_mod.diagnose(context)
    return comparisons, verdict


def _write_repro(directory, comparisons, backends, links, feeds, tolerance, verdict, timeout, say) -> str:
    if verdict.kind not in ("conversion", "runtime"):
        return f"no reproduction written to {directory}: the verdict is {verdict.kind}"
    for comparison, (ref_i, cand_i) in zip(comparisons, links):
        if (comparison.reference, comparison.candidate) == ("onnxruntime", "mnn") and not comparison.passed:
            from parity import layers as layers_mod
            from parity.repro import write_repro

            say(f"writing the reproduction to {directory}")
            reference = backends[ref_i]
            result = write_repro(directory, reference=reference, candidate=backends[cand_i],
                                 graph=layers_mod.OnnxGraph(reference.model_proto()), comparison=comparison,
                                 verdict=verdict, feeds=feeds, tolerance=tolerance, timeout=timeout)
            state = {True: "reproduces", False: "does not reproduce in isolation", None: "could not be checked"}
            return f"reproduction written to {directory} ({state[result['reproduces']]}): {result['command']}"
    return f"no reproduction written to {directory}: no failing onnxruntime -> mnn link"


def _default_layer_rtol(tolerance, layer_rtol):
    from parity.layers import default_layer_rtol  # layers imports onnx tooling only when used

    return default_layer_rtol(tolerance, layer_rtol)


def check(
    models: Sequence[str | os.PathLike],
    *,
    tolerance: Tolerance = Tolerance(),
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    save_inputs: str | os.PathLike | None = None,
    allow_nonfinite: bool = False,
    timeout: float = 300.0,
    mnn_options: Mapping | None = None,
    torch_inputs: Sequence[str] | None = None,
    layers: bool = False,
    layer_rtol: float | None = None,
    isolate: str = "first",
    max_memory: int | None = None,
    diagnose: bool = True,
    repro: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> Report:
    """Run every model on the same inputs; compare each model with the one before it.

    The first model is the reference. A mismatch is a result (``Report.passed`` is False);
    anything that prevents a trustworthy comparison raises a ``ParityError``.
    """
    say = progress or (lambda message: None)
    chain = resolve_models(models)
    if save_inputs is not None:
        inputs_mod.check_writable(save_inputs, "--save-inputs")
    if repro is not None:
        from parity.repro import check_repro_dir

        check_repro_dir(repro)
    if len(chain) > 3:
        raise UsageError("give two or three models: torch, ONNX and MNN, in chain order")
    options = {
        "mnn": dict(mnn_options or {}, timeout=timeout),
        "torch": {"input_names": list(torch_inputs) if torch_inputs else None},
    }

    with ExitStack() as stack:
        backends = [open_backend(framework, path, **options.get(framework, {})) for framework, path in chain]
        for backend in backends:  # MNN children start loading while the others load here
            if hasattr(backend, "begin_open"):
                stack.callback(backend.close)
                backend.begin_open()
        for backend in backends:
            say(f"loading {backend.path.name} ({backend.framework})")
            stack.enter_context(backend)

        # torch models have no input specs of their own: they borrow them from the chain
        described = [b for b in backends if b.framework != "torch"]
        for backend in backends:
            if backend.framework == "torch":
                backend.bind_inputs(described[0].input_specs if described else [])
        first = described[0] if described else backends[0]
        first_names = [s.name for s in first.input_specs]
        for other in described[1:]:
            names = [s.name for s in other.input_specs]
            if sorted(names) != sorted(first_names):
                raise ModelError(
                    f"the models' inputs differ: {first.path.name} has {first_names}, "
                    f"{other.path.name} has {names}"
                )
        reference = backends[0]
        ref_specs = first.input_specs if reference.framework == "torch" and described else reference.input_specs

        if inputs is None:
            bounds = {}
            onnx_model = next((b.path for b in backends if b.framework == "onnxruntime"), None)
            has_integers = any(s.dtype.startswith(("int", "uint")) for s in ref_specs)
            if onnx_model is not None and has_integers:  # parsing the graph costs; only for ints
                bounds = inputs_mod.integer_input_bounds(onnx_model)
            feeds, input_infos = inputs_mod.generate(ref_specs, seed=seed, shapes=shapes, int_bounds=bounds)
        else:
            if shapes:
                raise UsageError("--shape applies to generated inputs; it cannot be used with --inputs")
            if isinstance(inputs, Mapping):
                feeds = {k: np.asarray(v) for k, v in inputs.items()}
                input_infos = None
                source = "given"
            else:
                feeds, input_infos = inputs_mod.load_npz(inputs, ref_specs, allow_nonfinite=allow_nonfinite)
                source = "file"
            # the reference's input spec is the contract: exact dtypes, fixed dims
            from parity.backends.base import conform_feeds

            feeds, _ = conform_feeds(ref_specs, feeds, reference.label)
            if input_infos is None:
                from parity.report import InputInfo

                input_infos = [InputInfo(n, tuple(a.shape), a.dtype.name, source) for n, a in feeds.items()]
        if save_inputs is not None:
            inputs_mod.save_npz(save_inputs, feeds)

        # MNN runs in its child while the others run here: send first, collect last
        started = {}
        for i, backend in enumerate(backends):
            if hasattr(backend, "begin_run"):
                say(f"running {backend.path.name} ({backend.framework})")
                started[i] = backend.begin_run(feeds)
        results = []
        for i, backend in enumerate(backends):
            if i in started:
                results.append(backend.finish_run(started[i]))
            else:
                say(f"running {backend.path.name} ({backend.framework})")
                results.append(backend.run(feeds))

        comparisons = []
        for ref_i, cand_i in chain_links(len(backends)):
            say(f"comparing {backends[ref_i].framework} -> {backends[cand_i].framework}")
            comparison = compare_outputs(
                results[ref_i].outputs,
                results[cand_i].outputs,
                tolerance,
                reference_name=backends[ref_i].framework,
                candidate_name=backends[cand_i].framework,
                candidate_steps=results[cand_i].steps,
            )
            comparisons.append(comparison)

        if layers:
            comparisons = _add_layers(comparisons, backends, chain_links(len(backends)), feeds, tolerance,
                                      layer_rtol=layer_rtol, isolate=isolate, max_memory=max_memory, say=say)

        verdict = verdict_for(comparisons)
        if diagnose and verdict.kind == "mismatch":
            comparisons, verdict = _diagnose(comparisons, backends, chain_links(len(backends)), feeds,
                                             tolerance, verdict, layer_rtol=layer_rtol, isolate=isolate,
                                             max_memory=max_memory, timeout=timeout, say=say)

        notes = [n for r in results for n in r.notes]
        if repro is not None:
            notes.append(_write_repro(repro, comparisons, backends, chain_links(len(backends)), feeds,
                                      tolerance, verdict, timeout, say))
        infos = tuple(
            BackendInfo(b.framework, getattr(b, "spec", str(b.path)), b.version, b.settings())
            for b in backends
        )

    passed = all(c.passed for c in comparisons)
    return Report(
        passed=passed,
        backends=infos,
        inputs=tuple(input_infos),
        comparisons=tuple(comparisons),
        verdict=verdict,
        tolerance=dict(tolerance.to_dict(), **({"layer_rtol": _default_layer_rtol(tolerance, layer_rtol)}
                                                if any(c.layers is not None for c in comparisons) else {})),
        notes=tuple(notes),
        parity_version=_version(),
    )
