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
        common = dict(
            name=pair.name,
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
        diff = TensorDiff.from_arrays(pair.name, ref, aligned, tol)
        results.append(
            OutputComparison(
                passed=diff.passed,
                max_abs_diff=diff.max_abs_diff,
                max_rel_diff=diff.max_rel_diff,
                mean_abs_diff=diff.mean_abs_diff,
                cosine=diff.cosine,
                mismatch_fraction=diff.mismatch_fraction,
                alignment=tuple(steps),
                kind=diff.kind,
                size=diff.size,
                mismatch_count=diff.mismatch_count,
                exact_match_fraction=diff.exact_match_fraction,
                reference_absmax=diff.reference_absmax,
                nan_reference=diff.nan_reference,
                nan_candidate=diff.nan_candidate,
                inf_reference=diff.inf_reference,
                inf_candidate=diff.inf_candidate,
                notes=diff.notes,
                **common,
            )
        )
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
    for comparison in comparisons:
        failed = comparison.failed_outputs
        if not failed:
            continue
        first = failed[0]
        link = f"{comparison.reference} -> {comparison.candidate}"
        if first.error:
            detail = first.error
        else:
            detail = (
                f"max_abs_diff {first.max_abs_diff:.3g}, {first.mismatch_fraction:.1%} of elements "
                f"out of tolerance"
            )
        summary = (
            f"{len(failed)} of {len(comparison.outputs)} outputs differ on {link}; "
            f"first: {first.name!r} ({detail})"
        )
        return Verdict("mismatch", f"output {first.name!r} ({link})", summary)
    n = sum(len(c.outputs) for c in comparisons)
    return Verdict("pass", None, f"all {n} outputs match within tolerance on every link")


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
    options = {"mnn": dict(mnn_options or {}, timeout=timeout)}

    with ExitStack() as stack:
        backends = []
        for framework, path in chain:
            say(f"loading {path.name} ({framework})")
            backend = open_backend(framework, path, **options.get(framework, {}))
            stack.enter_context(backend)
            backends.append(backend)

        reference = backends[0]
        ref_specs = reference.input_specs
        ref_names = [s.name for s in ref_specs]
        for other in backends[1:]:
            names = [s.name for s in other.input_specs]
            if sorted(names) != sorted(ref_names):
                raise ModelError(
                    f"the models' inputs differ: {reference.path.name} has {ref_names}, "
                    f"{other.path.name} has {names}"
                )

        if inputs is None:
            bounds = {}
            onnx_model = next((b.path for b in backends if b.framework == "onnxruntime"), None)
            if onnx_model is not None:
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

        results = []
        for backend in backends:
            say(f"running {backend.path.name} ({backend.framework})")
            results.append(backend.run(feeds))

        comparisons = []
        for i in range(1, len(backends)):
            say(f"comparing {backends[i - 1].framework} -> {backends[i].framework}")
            comparison = compare_outputs(
                results[i - 1].outputs,
                results[i].outputs,
                tolerance,
                reference_name=backends[i - 1].framework,
                candidate_name=backends[i].framework,
                candidate_steps=results[i].steps,
            )
            comparisons.append(comparison)

        notes = [n for r in results for n in r.notes]
        infos = tuple(
            BackendInfo(b.framework, str(b.path), b.version, b.settings()) for b in backends
        )

    passed = all(c.passed for c in comparisons)
    return Report(
        passed=passed,
        backends=infos,
        inputs=tuple(input_infos),
        comparisons=tuple(comparisons),
        verdict=verdict_for(comparisons),
        tolerance=tolerance.to_dict(),
        notes=tuple(notes),
        parity_version=_version(),
    )
