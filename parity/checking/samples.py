"""The input samples of a check: which to run (generated, one .npz, a directory or glob of
them, one split along an axis, a data loader) and each link aggregated over them (the worst
sample's figures, whether every sample passed, per-sample figures, top-1 agreement)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from parity.backends.base import conform_feeds
from parity.checking.budget import top1_rows
from parity.core import inputs as inputs_mod
from parity.core.errors import UsageError
from parity.core.judge import output_scaled_error
from parity.core.report import Comparison, InputInfo
from parity.options import CheckOptions


def load(backends, specs, options: CheckOptions) -> list[tuple[str | None, dict, list]]:
    """The samples to run: (label, feeds, input infos) each. One, unless --inputs names a
    directory or a glob of .npz files, or --samples-axis splits one .npz."""
    given = options.inputs
    if options.data_loader is not None:
        if given is not None or options.val_ranges or options.shapes:
            raise UsageError("--data-loader gives the inputs: leave out --inputs, --val-range and --shape")
        samples = inputs_mod.load_data_loader(options.data_loader)
        labels = [f"{options.data_loader}[{i}]" for i in range(len(samples))]
        return [(label, *_conform(backends, specs, feeds, label, options)) for label, feeds in zip(labels, samples)]
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
        labels = [f"{files[0].name}[{i}]" for i in range(len(split))]
        return [(label, *_conform(backends, specs, part, label, options)) for label, part in zip(labels, split)]
    if len(files) == 1:
        return [(None, *_make_feeds(backends, specs, dataclasses.replace(options, inputs=files[0])))]
    return [(file.name, *_make_feeds(backends, specs, dataclasses.replace(options, inputs=file))) for file in files]


def _conform(backends, specs, feeds, source: str, options: CheckOptions):
    """Given feeds (a data loader's, a split sample's, a dict's) as the reference takes them,
    refused where they hold NaN or infinity (unless --allow-nonfinite), with their infos."""
    given = {name: np.asarray(array) for name, array in feeds.items()}
    conformed, _ = conform_feeds(specs, given, backends[0].label)
    if not options.allow_nonfinite:
        for name, array in conformed.items():
            inputs_mod.refuse_nonfinite(name, array, source)
    return conformed, [InputInfo(n, tuple(a.shape), a.dtype.name, "given", inputs_mod.byte_order_notes(given[n]))
                       for n, a in conformed.items()]


def _make_feeds(backends, specs, options: CheckOptions, raw: bool = False):
    if options.inputs is None:
        bounds = {}
        onnx_model = next((b.path for b in backends if b.onnx_graph), None)
        if onnx_model is not None and any(s.dtype.startswith(("int", "uint")) for s in specs):
            bounds = inputs_mod.integer_input_bounds(onnx_model)  # parsing the graph costs: ints only
        return inputs_mod.generate(specs, seed=options.seed, shapes=options.shapes, int_bounds=bounds,
                                   ranges=dict(options.val_ranges))
    if options.shapes:
        raise UsageError("--shape applies to generated inputs; it cannot be used with --inputs")
    if isinstance(options.inputs, dict) or hasattr(options.inputs, "items"):
        return _conform(backends, specs, options.inputs, "the inputs given", options)
    if raw:  # --samples-axis: the arrays as stored, split into samples by the caller
        return inputs_mod.read_npz(Path(inputs_mod.sample_files(options.inputs)[0]), "--inputs file",
                                   not_a="an .npz file"), None
    feeds, infos = inputs_mod.load_npz(options.inputs, specs, allow_nonfinite=options.allow_nonfinite)
    # the reference's input spec is the contract: exact dtypes, fixed dims
    feeds, _ = conform_feeds(specs, feeds, backends[0].label)
    return feeds, infos


def run_all(samples, links, run: Callable, say) -> tuple[list, list, int]:
    """Every sample through every model (``run(feeds)`` returns the results and the links'
    comparisons); each link's outputs aggregated over the samples: the worst sample's figures,
    whether all passed, per-sample figures and the top-1 agreement. Returns the comparisons,
    the first sample's results (for their notes) and the index of the worst sample."""
    per_sample, first_results = [], None
    top1: dict[tuple[int, str], list[int]] = {}
    for k, (label, feeds, _) in enumerate(samples):
        say(f"sample {k + 1}/{len(samples)}: {label}")
        results, comparisons = run(feeds)
        first_results = first_results or results
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
