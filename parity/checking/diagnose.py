"""The verdict for a failing ONNX Runtime -> MNN link: conversion, runtime, numerics or
undetermined.

Experiments run at the first divergence (or, without one, at the worst output) and stop at
the first decisive one, in this order:

0. the same run twice: an MNN that differs from itself is runtime (experiments/repeat.py).
1. for a run in float16 or on a target: the same file at precision high (float16 or not? the
   diverging op is then emulated in float16 on the same inputs, fp16_emulation.py, to tell
   float16 as designed from a kernel defect), then on this machine (the target's kernels?)
   (experiments/target.py, experiments/float16.py).
2. amplified rounding (numerics.py): the error grows along the graph while every layer is
   right on its own inputs in float64, and MNN is no farther from a float64 evaluation than
   correct float32 evaluations -> numerics (undetermined without a float64 figure)
   (experiments/rounding.py).
3. a fresh conversion of the ONNX with default options: if it matches, a structural diff shows
   how the given .mnn differs from it, and a second conversion under other paths tells a file
   converted differently (or altered) from a converter that is not deterministic. It runs
   before the variants: when it matches under the same runtime, no runtime variant can change
   the verdict (experiments/conversion.py).
4. runtime variants: the same .mnn under other MNN settings (1 thread, Winograd off,
   precision modes, memory mode, rearrange). The layer is re-run in isolation, on the
   reference's inputs, when it can be; the model is re-run otherwise.
5. converter variants: reconversions with the options that change numbers (4 and 5:
   experiments/variants.py).
6. an independent reference: the diverging MNN op, as the MNN file defines it (type and
   parameters from the converter's JSON dump), evaluated in numpy, every comparison on the
   same inputs (mnn_ops.check_op). Kernel != numpy(op) == ONNX Runtime -> runtime;
   kernel == numpy(op) != ONNX Runtime -> conversion (experiments/numpy_reference.py).
7. nothing decisive: undetermined, with everything measured.

A variant is decisive when it brings the error within tolerance, or lowers it tenfold
(experiments/measure.py). This module holds the probe that measures the target, the context and
the sequence; a new experiment is a module of experiments/ and one entry of EXPERIMENTS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from parity.checking.experiments.conversion import Reconversions, fresh_conversion
from parity.checking.experiments.measure import Measurement, fmt
from parity.checking.experiments.numpy_reference import numpy_reference
from parity.checking.experiments.repeat import repeat
from parity.checking.experiments.rounding import numerics_experiment
from parity.checking.experiments.target import target_experiments
from parity.checking.experiments.variants import converter_variants, runtime_variants
from parity.checking.isolation import cut_feeds
from parity.checking.pairing import best_pair, mnn_candidates
from parity.core import judge
from parity.core.errors import BackendCrash, BackendError
from parity.core.metrics import TensorDiff, Tolerance
from parity.core.report import Verdict

Progress = Callable[[str], None]


class Probe:
    """Measures the error at the target (first divergence, or worst output) for an MNN model.

    Every figure a verdict compares is measured the same way on both sides: the first
    measurement fixes the way (the divergence alone when MNN can be cut there, else in a whole
    run), and another conversion is measured against the given file in one way for both."""

    def __init__(self, ctx: "Context"):
        self.ctx = ctx
        comparison = ctx.comparison
        self.divergence = comparison.first_divergence
        self.layer = None
        if self.divergence is not None:
            self.layer = next((x for x in comparison.layers or () if x.name == self.divergence.name), None)
        self.output = judge.worst_output(comparison)
        if self.output is not None and self.output.error is not None:
            self.output = None
        self._ref_cache: dict[str, np.ndarray] = {}
        self._ref_outputs: dict | None = None
        self._given_in_model: Measurement | None = None
        self.base: Measurement | None = None
        self.mode: str | None = None
        self.notes: list[str] = []
        # the given MNN's output at the divergence, cut and fed the reference's inputs: the
        # float16 emulation compares it with the op run on the same inputs
        self.given_isolated_output: np.ndarray | None = None

    @property
    def element_rule(self) -> bool:
        """A failing graph output reached through an unpaired stretch is judged as outputs are."""
        return self.layer is not None and self.layer.rule == "element"

    @property
    def where(self) -> str:
        if self.divergence is not None:
            d = self.divergence
            return f"{d.name} ({d.op_type})"
        if self.output is not None:
            return f"output {self.output.name!r}"
        return "the outputs"

    def reference_values(self, names) -> dict:
        missing = [n for n in names if n not in self._ref_cache]
        if missing:
            graph_outputs = set(self.ctx.graph.outputs)
            if all(n in graph_outputs for n in missing):
                run = self.ctx.reference.run(self.ctx.feeds)
            else:
                run = self.ctx.reference.capture(self.ctx.feeds, missing, cache=False)
            for n in missing:
                self._ref_cache[n] = np.asarray(run.outputs[n])
        return {n: self._ref_cache[n] for n in names}

    def _passes(self, diff) -> bool:
        if self.element_rule:
            return diff.passed
        return judge.layer_passes(diff, self.ctx.tolerance, self.ctx.layer_rtol)

    def _judge(self, reference, candidate, how) -> Measurement:
        if candidate.size != reference.size:
            return Measurement(None, None, False, how)
        diff = TensorDiff.from_arrays("probe", reference, candidate.reshape(reference.shape), self.ctx.tolerance)
        return Measurement(judge.scaled_error(diff), diff.max_abs_diff, self._passes(diff), how,
                           int(diff.class_mismatches or 0))

    def isolated(self, mnn) -> Measurement | None:
        """The first divergence alone: reference inputs fed into ``mnn`` cut there."""
        d = self.divergence
        if d is None or self.layer is None:
            return None
        graph_inputs = set(self.ctx.graph.inputs)
        layers = {x.name: x for x in self.ctx.comparison.layers}
        needed = [f for f in d.inputs if f not in graph_inputs]
        if any(f not in layers for f in needed):
            return None
        ref = self.reference_values(needed + [d.name])
        tensors = cut_feeds(self.ctx.graph, self.ctx.feeds, d.inputs, layers, ref)
        name = self.layer.candidate_name  # the model's inputs too: a cut may compute shapes from them
        out = np.asarray(mnn.run_cut(tensors, [name], inputs=self.ctx.feeds).outputs[name])
        if mnn is self.ctx.candidate:
            self.given_isolated_output = out
        return self._judge(ref[d.name], out, "isolated")

    def in_model(self, mnn) -> Measurement:
        """The target tensor in a whole run of ``mnn`` (which may be another conversion)."""
        if self.layer is not None:
            by_base, _ = mnn_candidates(mnn.graph())
            names = by_base.get(self.layer.name, []) or (
                [self.layer.candidate_name] if self.layer.candidate_name in {e["name"] for e in mnn.graph()} else [])
            if names:
                ref = self.reference_values([self.layer.name])[self.layer.name]
                arrays = mnn.capture(self.ctx.feeds, names, cache=False).outputs
                pair = best_pair(ref, arrays, self.ctx.tolerance, self.ctx.layer_rtol)
                if pair is not None:
                    return Measurement(judge.scaled_error(pair.diff), pair.diff.max_abs_diff,
                                       self._passes(pair.diff), "in the model", int(pair.diff.class_mismatches or 0))
        return self.outputs(mnn)

    def outputs(self, mnn) -> Measurement:
        if self._ref_outputs is None:  # the reference does not change between variants
            self._ref_outputs = self.ctx.reference.run(self.ctx.feeds).outputs
        comparison = judge.compare_outputs(self._ref_outputs, mnn.run(self.ctx.feeds).outputs,
                                           self.ctx.tolerance, reference_name=self.ctx.reference.framework,
                                           candidate_name=mnn.framework)
        worst = judge.worst_output(comparison) or max(
            comparison.outputs, key=lambda o: judge.output_scaled_error(o) or 0.0)
        return Measurement(judge.output_scaled_error(worst), worst.max_abs_diff, comparison.passed, "outputs")

    def measure(self, mnn) -> Measurement:
        """Isolated when MNN can be cut at the divergence's inputs, else in the whole model;
        the first call fixes the way, so every variant is measured like the baseline."""
        if self.mode != "in_model":
            try:
                isolated = self.isolated(mnn)
            except BackendCrash:
                raise
            except BackendError as exc:
                if self.mode == "isolated":
                    raise
                self.notes.append(f"isolation not possible ({str(exc).splitlines()[0]}); measured in the whole model")
                isolated = None
            if isolated is not None:
                self.mode = "isolated"
                return isolated
        self.mode = "in_model"
        return self.in_model(mnn)

    def measure_pair(self, mnn) -> tuple[Measurement, Measurement]:
        """The given model and ``mnn`` (another conversion), measured the same way: isolated
        when both can be cut at the divergence, else both in a whole run."""
        if self.mode == "isolated" and self.base is not None:
            try:
                other = self.isolated(mnn)
            except BackendCrash:
                raise
            except BackendError:
                other = None
            if other is not None:
                return self.base, other
        if self._given_in_model is None:
            self._given_in_model = self.in_model(self.ctx.candidate)
        return self._given_in_model, self.in_model(mnn)


@dataclass
class Context:
    onnx_path: Path
    mnn_path: Path
    reference: object  # the opened OnnxRuntimeBackend
    candidate: object  # the opened MnnBackend
    graph: object  # onnx_graph.OnnxGraph
    comparison: object  # the failing onnxruntime -> mnn Comparison (with layers when captured)
    feeds: dict
    tolerance: Tolerance
    layer_rtol: float
    timeout: float
    progress: Progress
    # the same .mnn's other runs, already open (--mnn-precision high,low: the other precisions)
    siblings: list = field(default_factory=list)


@dataclass
class Run:
    """What every experiment of one diagnosis sees: the context, the probe at the target, the
    baseline measurement, the evidence gathered so far (each experiment appends its own), and
    the fresh conversions converting in the background."""
    ctx: Context
    probe: Probe
    where: str
    base: Measurement
    evidence: list
    reconversions: Reconversions
    workdir: Path


def _fresh_conversion_experiment(run: Run) -> Verdict | None:
    # a fresh conversion that matches ONNX Runtime, under the same runtime, decides it: no
    # runtime variant can change that verdict, so they run after it (on a BERT-base they cost
    # 20 s; the two conversions 5 s each)
    verdict = fresh_conversion(run.ctx, run.probe, run.base, run.where, run.reconversions, run.evidence)
    if verdict is None:
        run.reconversions.drop_again()  # not needed: nothing converts beside what follows
    return verdict


# The experiments, in the order they run (the module docstring says why this order); the
# first that returns a verdict decides. A new experiment is one entry: a function of a Run.
EXPERIMENTS: tuple[tuple[str, Callable[[Run], Verdict | None]], ...] = (
    ("repeat", lambda run: repeat(run.ctx, run.probe, run.where, run.evidence)),
    ("precision and target", lambda run: target_experiments(run.ctx, run.probe, run.base, run.where,
                                                            run.evidence)),
    ("amplified rounding", lambda run: numerics_experiment(run.ctx, run.probe, run.where, run.evidence)),
    ("fresh conversion", _fresh_conversion_experiment),
    ("runtime variants", lambda run: runtime_variants(run.ctx, run.probe, run.base, run.where, run.evidence)),
    ("converter variants", lambda run: converter_variants(run.ctx, run.probe, run.where, run.workdir,
                                                          run.evidence)),
    ("numpy reference", lambda run: numpy_reference(run.ctx, run.probe, run.where, run.workdir, run.evidence)),
)


def diagnose(ctx: Context) -> Verdict:
    """Run the experiments (EXPERIMENTS) in turn; return the first decisive verdict (or
    undetermined) with every measurement as evidence."""
    probe = Probe(ctx)
    evidence: list[dict] = []
    where = f"{probe.where} on {ctx.reference.framework} -> {ctx.candidate.framework}"
    candidate = ctx.candidate
    # the fresh conversions convert while the first experiments run, unless those are the
    # float16 and target experiments, which often decide alone
    eager = candidate.target.local and candidate.precision not in ("low", "low_bf16")
    reconversions = Reconversions(ctx.onnx_path, ctx.timeout, eager=eager)
    try:
        base = _baseline(ctx, probe, evidence)
        run = Run(ctx, probe, where, base, evidence, reconversions, reconversions.workdir)
        verdict = next((v for v in (experiment(run) for _, experiment in EXPERIMENTS) if v is not None), None)
    finally:
        reconversions.close()
    if verdict is not None:
        return _pinned(verdict, probe)
    return Verdict(
        "undetermined", where,
        f"{probe.where} differs (error {fmt(base.scaled)}), and no runtime variant, "
        f"reconversion or reference evaluation explains it; see the evidence",
        evidence=tuple(evidence),
        next_steps=("rerun with --layers --isolate all to see every failing layer",
                    "write a minimal reproduction with --repro DIR"),
    )


def _pinned(verdict: Verdict, probe: Probe) -> Verdict:
    """A conversion or runtime verdict whose amplified-rounding test found a layer wrong on its
    own inputs, upstream of where the outputs start to fail (in a model that amplifies errors, a
    small one crosses the tolerance layers later): ``where`` names that layer first."""
    if verdict.kind not in ("conversion", "runtime"):
        return verdict
    finding = next((e for e in verdict.evidence if e.get("experiment") == "amplified rounding"), {})
    wrong = next((x for x in finding.get("sampled_layers", ())
                  if not x["within_float32_rounding"] and x["local_error_mnn"] is not None), None)
    if wrong is None or wrong["layer"] == probe.where.split(" (")[0] or verdict.where is None:
        return verdict
    where = (f"{wrong['layer']} ({wrong['op']}), wrong on its own inputs (local error {fmt(wrong['local_error_mnn'])} "
             f"in MNN, {fmt(wrong['local_error_onnxruntime'])} in ONNX Runtime); the layers fail from {verdict.where}")
    return dataclasses.replace(verdict, where=where)


def _baseline(ctx: Context, probe: Probe, evidence: list) -> Measurement:
    ctx.progress(f"diagnosing {probe.where}: baseline")
    base = probe.base = probe.measure(ctx.candidate)
    if probe.mode == "isolated" and base.passed:
        # right when fed the reference's inputs: the error is carried in, so every experiment
        # measures the tensor in a whole run, where the error shows
        probe.notes.append("the target is right in isolation (its error is carried in); measured in the whole model")
        probe.mode = "in_model"
        base = probe.base = probe.in_model(ctx.candidate)
    evidence.append({"experiment": "baseline", "setting": "as given", **base.to_dict(),
                     **({"note": probe.notes[0]} if probe.notes else {})})
    return base


