"""The verdict for a failing ONNX Runtime -> MNN link: conversion, runtime, numerics or
undetermined.

Experiments run at the first divergence (or, without one, at the worst output) and stop at
the first decisive one, in this order:

0. the same run twice: an MNN that differs from itself is runtime.
1. for a run in float16 or on a target: the same file at precision high (float16 or not? the
   diverging op is then emulated in float16 on the same inputs, fp16_emulation.py, to tell
   float16 as designed from a kernel defect), then on this machine (the target's kernels?).
2. amplified rounding (numerics.py): the error grows along the graph while every layer is
   right on its own inputs in float64, and MNN is no farther from a float64 evaluation than
   correct float32 evaluations -> numerics (undetermined without a float64 figure).
3. a fresh conversion of the ONNX with default options: if it matches, a structural diff shows
   how the given .mnn differs from it, and a second conversion under other paths tells a file
   converted differently (or altered) from a converter that is not deterministic. It runs
   before the variants: when it matches under the same runtime, no runtime variant can change
   the verdict.
4. runtime variants: the same .mnn under other MNN settings (1 thread, Winograd off,
   precision modes, memory mode, rearrange). The layer is re-run in isolation, on the
   reference's inputs, when it can be; the model is re-run otherwise.
5. converter variants: reconversions with the options that change numbers.
6. an independent reference: the diverging MNN op, as the MNN file defines it (type and
   parameters from the converter's JSON dump), evaluated in numpy, every comparison on the
   same inputs (mnn_ops.check_op). Kernel != numpy(op) == ONNX Runtime -> runtime;
   kernel == numpy(op) != ONNX Runtime -> conversion.
7. nothing decisive: undetermined, with everything measured.

A variant is decisive when it brings the error within tolerance, or lowers it tenfold.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from parity.core import judge
from parity.core.errors import BackendCrash, BackendError, ParityError
from parity.core.metrics import TensorDiff, Tolerance
from parity.core.paths import argument
from parity.core.report import Verdict

Progress = Callable[[str], None]

RUNTIME_VARIANTS = (
    ("threads=1", {"threads": 1}),
    ("Winograd off (hint WINOGRAD_MEMORY_LEVEL=0)", {"hints": ((3, 0),)}),
    ("precision=high", {"precision": "high"}),
    ("precision=low", {"precision": "low"}),
    ("memory mode 2 (low)", {"memory": 2}),
    ("rearrange=True", {"rearrange": True}),
)
CONVERTER_VARIANTS = (
    ("--useGeluApproximation 0 (exact GELU instead of MNN's tanh approximation)",
     ["--useGeluApproximation", "0"]),
    ("--optimizeLevel 0 (no graph optimisation passes)", ["--optimizeLevel", "0"]),
    ("--useGeluApproximation 0 --optimizeLevel 0", ["--useGeluApproximation", "0", "--optimizeLevel", "0"]),
)
_MATERIAL = 10.0


@dataclass
class Measurement:
    scaled: float | None  # max_abs_diff / max|reference|
    max_abs: float | None
    passed: bool
    how: str  # "isolated", "in the model", "outputs"
    # values that are inf, NaN or a mask value on one side only (not in the figures above)
    class_mismatches: int = 0

    def to_dict(self) -> dict:
        return {"scaled_error": self.scaled, "max_abs_diff": self.max_abs, "passed": self.passed,
                "measured": self.how, "class_mismatches": self.class_mismatches}

    def describe(self) -> str:
        """"0.0005 (and 37 values inf or NaN on one side only)"."""
        extra = (f" (and {self.class_mismatches} values inf, NaN or masks on one side only)"
                 if self.class_mismatches else "")
        return _fmt(self.scaled) + extra


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _decisive(base: Measurement, other: Measurement) -> bool:
    if base.passed:
        return False
    if other.passed:
        return True
    if base.scaled is not None and other.scaled is not None and other.scaled > 0:
        return base.scaled / other.scaled >= _MATERIAL
    return False


class Probe:
    """Measures the error at the target (first divergence, or worst output) for an MNN model.

    Every figure a verdict compares is measured the same way on both sides: the first
    measurement fixes the way (the divergence alone when MNN can be cut there, else in a whole
    run), and another conversion is measured against the given file in one way for both."""

    def __init__(self, ctx: "Context"):
        from parity.checking import layers as L

        self.ctx = ctx
        self.L = L
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
        tensors = self.L.cut_feeds(self.ctx.graph, self.ctx.feeds, d.inputs, layers, ref)
        name = self.layer.candidate_name  # the model's inputs too: a cut may compute shapes from them
        out = np.asarray(mnn.run_cut(tensors, [name], inputs=self.ctx.feeds).outputs[name])
        if mnn is self.ctx.candidate:
            self.given_isolated_output = out
        return self._judge(ref[d.name], out, "isolated")

    def in_model(self, mnn) -> Measurement:
        """The target tensor in a whole run of ``mnn`` (which may be another conversion)."""
        if self.layer is not None:
            by_base, _ = self.L.mnn_candidates(mnn.graph())
            names = by_base.get(self.layer.name, []) or (
                [self.layer.candidate_name] if self.layer.candidate_name in {e["name"] for e in mnn.graph()} else [])
            if names:
                ref = self.reference_values([self.layer.name])[self.layer.name]
                arrays = mnn.capture(self.ctx.feeds, names, cache=False).outputs
                pair = self.L.best_pair(ref, arrays, self.ctx.tolerance, self.ctx.layer_rtol)
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
    graph: object  # layers.OnnxGraph
    comparison: object  # the failing onnxruntime -> mnn Comparison (with layers when captured)
    feeds: dict
    tolerance: Tolerance
    layer_rtol: float
    timeout: float
    progress: Progress
    # the same .mnn's other runs, already open (--mnn-precision high,low: the other precisions)
    siblings: list = field(default_factory=list)


def _open_variant(ctx: Context, path, **changes):
    from parity.backends.mnn import MnnBackend

    options = dict(ctx.candidate.reopen_options())
    options.update(changes)
    return MnnBackend(path, **options)


class Reconversions:
    """The two fresh conversions of the ONNX model that experiment d needs (the second, under
    other paths, tells whether the converter is deterministic), each in its own child process.

    The first starts with the diagnosis (``eager``) and converts while its first experiments
    run; the second starts when the first is done, and converts while the first is measured.
    One after the other, not side by side: on 2 cores (BERT-base) two conversions at once took
    9 s, one 5 s, and each holds about four times the model's weights. ``close`` stops what is
    still running and removes every file."""

    def __init__(self, onnx_path, timeout: float, *, eager: bool = True):
        self.onnx_path = Path(onnx_path)
        self.timeout = timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="parity-diagnose-"))
        self._targets = {"fresh": self.workdir / "fresh" / "fresh.mnn",
                         "again": self.workdir / "second-conversion-elsewhere" / "model_converted_again.mnn"}
        self._running: dict = {}
        self._done: dict = {}  # which -> Path, or the ParityError it failed with
        try:
            if eager:
                self._start("fresh")
        except BaseException:
            self.close()
            raise

    def _start(self, which: str) -> None:
        from parity.mnn.converter import start_conversion

        if which in self._running or which in self._done:
            return
        target = self._targets[which]
        target.parent.mkdir(exist_ok=True)
        try:
            self._running[which] = start_conversion(self.onnx_path, target, timeout=self.timeout)
        except ParityError as exc:
            self._done[which] = exc

    def _get(self, which: str) -> Path:
        self._start(which)
        conversion = self._running.pop(which, None)
        if conversion is not None:
            try:
                conversion.result()
                self._done[which] = self._targets[which]
            except ParityError as exc:
                self._done[which] = exc
        outcome = self._done[which]
        if which == "fresh" and not isinstance(outcome, ParityError):
            self._start("again")  # converts while the first is measured
        if isinstance(outcome, ParityError):
            raise outcome
        return outcome

    def fresh(self) -> Path:
        """The first conversion's .mnn (waiting for it); raises the ParityError it failed with."""
        return self._get("fresh")

    def again(self) -> Path:
        """The second conversion's .mnn, converted under another directory and file name."""
        return self._get("again")

    def drop_again(self) -> None:
        """The second conversion is not needed (the first decided nothing): stop it, so it
        does not convert beside the experiments that follow."""
        conversion = self._running.pop("again", None)
        if conversion is not None:
            conversion.cancel()

    def close(self) -> None:
        for conversion in self._running.values():
            conversion.cancel()
        self._running.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


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
    verdict = _fresh_conversion(run.ctx, run.probe, run.base, run.where, run.reconversions, run.evidence)
    if verdict is None:
        run.reconversions.drop_again()  # not needed: nothing converts beside what follows
    return verdict


# The experiments, in the order they run (the module docstring says why this order); the
# first that returns a verdict decides. A new experiment is one entry: a function of a Run.
EXPERIMENTS: tuple[tuple[str, Callable[[Run], Verdict | None]], ...] = (
    ("repeat", lambda run: _repeat(run.ctx, run.probe, run.where, run.evidence)),
    ("precision and target", lambda run: _target_experiments(run.ctx, run.probe, run.base, run.where,
                                                             run.evidence)),
    ("amplified rounding", lambda run: _numerics_experiment(run.ctx, run.probe, run.where, run.evidence)),
    ("fresh conversion", _fresh_conversion_experiment),
    ("runtime variants", lambda run: _runtime_variants(run.ctx, run.probe, run.base, run.where, run.evidence)),
    ("converter variants", lambda run: _converter_variants(run.ctx, run.probe, run.where, run.workdir,
                                                           run.evidence)),
    ("numpy reference", lambda run: _numpy_reference(run.ctx, run.probe, run.where, run.workdir, run.evidence)),
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
        return verdict
    return Verdict(
        "undetermined", where,
        f"{probe.where} differs (error {_fmt(base.scaled)}), and no runtime variant, "
        f"reconversion or reference evaluation explains it; see the evidence",
        evidence=tuple(evidence),
        next_steps=("rerun with --layers --isolate all to see every failing layer",
                    "write a minimal reproduction with --repro DIR"),
    )


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


def _repeat(ctx: Context, probe: Probe, where: str, evidence: list) -> Verdict | None:
    """Experiment 0: the same run again. An MNN that differs from itself invalidates every
    comparison after it."""
    unstable = _repeatability(ctx)
    if unstable is None:
        evidence.append({"experiment": "repeat", "setting": "the same inputs, twice", "passed": True,
                         "detail": "MNN gives the same outputs on both runs"})
        return None
    evidence.append({"experiment": "repeat", "setting": "the same inputs, twice", **unstable})
    return Verdict(
        "runtime", where,
        f"MNN gives different outputs for the same inputs on two runs ({unstable['detail']}): a kernel "
        f"reads uninitialised memory or races; the numbers at {probe.where} cannot be trusted",
        evidence=tuple(evidence),
        next_steps=("rerun with --mnn-threads 1 to see whether threading is involved",
                    "report it with --repro DIR; MNN should be deterministic on CPU"),
    )


def _target_experiments(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    """For a run in float16 or on a target: the same file in full precision on the same target
    (float16 or not?), then the same file and settings on this machine (the target's kernels or
    not?). Measured like the baseline; a sibling run already open is reused."""
    candidate = ctx.candidate
    target = candidate.target
    verdict = None
    if candidate.precision in ("low", "low_bf16"):
        verdict = _float16_experiment(ctx, probe, base, where, evidence)
    if verdict is None and not target.local:
        verdict = _local_experiment(ctx, probe, base, where, evidence)
    return verdict


def _measure_run(ctx: Context, probe: Probe, setting: str, precision: str, target: str | None = None):
    """``probe.measure`` of the given .mnn with another precision (and target): an open sibling
    run when there is one, else a fresh load. Returns (Measurement | None, error text | None)."""
    wanted_target = ctx.candidate.target.spec if target is None else target
    for sibling in ctx.siblings:
        if sibling.precision == precision and sibling.target.spec == wanted_target:
            try:
                return probe.measure(sibling), None
            except ParityError as exc:
                return None, str(exc)
    ctx.progress(f"diagnosing: {setting}")
    try:
        with _open_variant(ctx, ctx.mnn_path, precision=precision, target=wanted_target) as mnn:
            return probe.measure(mnn), None
    except ParityError as exc:
        return None, str(exc)


def _float16_experiment(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    candidate = ctx.candidate
    on = candidate.target.spec
    setting = f"precision high on {on}"
    high, error = _measure_run(ctx, probe, setting, "high")
    if high is None:
        evidence.append({"experiment": "precision", "setting": setting, "error": error})
        return None
    evidence.append({"experiment": "precision", "setting": setting, **high.to_dict()})
    if not high.passed and probe.mode == "isolated" and candidate.reduced_precision:
        retried = _float16_in_model(ctx, probe, high, setting, evidence)
        if retried is not None:
            base, high = retried
    if not _decisive(base, high):
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
    high, error = _measure_run(ctx, probe, f"{setting}, in the whole model", "high")
    if high is None or not high.passed:
        probe.mode = "isolated"
        if high is not None:
            evidence.append({"experiment": "precision", "setting": f"{setting}, in the whole model",
                             **high.to_dict()})
        return None
    base = probe.base = probe.in_model(ctx.candidate)
    note = (f"precision high fails in isolation too (error {_fmt(high_isolated.scaled)} fed the reference's "
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
            tensors = probe.L.cut_feeds(ctx.graph, ctx.feeds, d.inputs, layers, ref)
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
    pair = probe.L.best_pair(np.asarray(reference), {"c": candidate}, probe.ctx.tolerance, probe.ctx.layer_rtol)
    if pair is None or pair.aligned is None:
        raise ValueError(f"MNN's tensor {candidate.shape} does not fit the reference's {reference.shape}")
    return np.asarray(pair.aligned).reshape(reference.shape)


def _float16_choice(ctx: Context, probe: Probe, where: str, figures: str, high: Measurement, emulation: dict,
                    evidence: list) -> Verdict:
    """The float16 verdict that chooses: float16's precision as designed, a float16 kernel
    defect, or (honestly) in between, from MNN's error against the emulated ones."""
    on = ctx.candidate.target.spec
    errors = emulation["emulated_scaled_error"]
    listed = "; ".join(f"{name} {_fmt(err)}" for name, err in errors.items())
    ways = (f"the ways a float16 kernel computes it give {listed}" if len(errors) > 1 else
            f"no op here adds long sums, and {listed}" if emulation["complete"] else
            f"it could be emulated as {listed} only")
    if emulation["positions_compared"] < emulation["positions"]:
        ways += (f" (on {emulation['positions_compared']} of its {emulation['positions']} values, evenly "
                 f"spaced: a large op)")
    nearest = (f"MNN's output is identical to {emulation['nearest_to_mnn']}"
               if emulation["nearest_max_abs_distance"] == 0 else
               f"nearest to MNN's output: {emulation['nearest_to_mnn']} (max abs distance "
               f"{_fmt(emulation['nearest_max_abs_distance'])})")
    measured = (f"on {emulation['inputs']}, MNN's error is {_fmt(emulation['mnn_scaled_error'])} against "
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
    from parity.checking.layers import FP16_MAX, fp16_fit

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


def _local_experiment(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    candidate = ctx.candidate
    setting = f"the same file, precision {candidate.precision}, on this machine (local)"
    local, error = _measure_run(ctx, probe, setting, candidate.precision, target="local")
    if local is None:
        evidence.append({"experiment": "target", "setting": setting, "error": error})
        return None
    evidence.append({"experiment": "target", "setting": setting, **local.to_dict()})
    if not _decisive(base, local):
        return None
    there_version = (candidate.target_facts or {}).get("mnn")
    try:
        import importlib.metadata

        here_version = importlib.metadata.version("MNN")
    except Exception:
        here_version = None
    cause = ("a kernel of the target's CPU differs" if not there_version or there_version == here_version else
             f"the target runs MNN {there_version} and this machine MNN {here_version}: the version or the "
             f"target's CPU kernels differ (install MNN {here_version} there to tell them apart)")
    return Verdict(
        "runtime", where,
        f"MNN on {candidate.target.spec} gives other numbers at {probe.where} than MNN on this machine "
        f"for the same file and settings: error {_fmt(base.scaled)} there, {_fmt(local.scaled)} here "
        f"({local.how}). The converted graph is right; {cause}",
        evidence=tuple(evidence),
        next_steps=("compare precision high and low on the target (--mnn-precision high,low) to see "
                    "whether float16 is involved",
                    "report the kernel to MNN with --repro DIR and the target's facts (parity target check)"),
    )


def _numerics_experiment(ctx: Context, probe: Probe, where: str, evidence: list) -> Verdict | None:
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
        f"{d['tensor']}: MNN {_fmt(d['mnn'])}, ONNX Runtime {_fmt(d['onnxruntime'])}, onnx.reference in float32 "
        f"{_fmt(d.get('numpy float32'))} and {_fmt(d.get('numpy float32, inputs nudged by one ulp'))} with its "
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
    text = (f"from {_fmt(first[1])} at {first[0]} to {_fmt(last[1])} at {last[0]} over {len(path)} compared "
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
            f"largest local error {_fmt(worst.candidate)} in MNN at {worst.name}, {_fmt(worst.reference)} in "
            f"ONNX Runtime there, within float32 rounding")


def _candidate_values(ctx: Context, probe: Probe, names) -> dict:
    """MNN's values of ONNX tensors ``names`` in one run, aligned to the reference's layout as
    the layer comparison aligns them (layers by their paired MNN tensor, graph outputs by the
    compared output)."""
    from parity.checking import layers as L

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
        pair = L.best_pair(np.asarray(references[n]), {source: np.asarray(arrays[source])}, ctx.tolerance,
                           ctx.layer_rtol)
        if pair is None or pair.aligned is None:
            raise KeyError(f"MNN's {source!r} does not align with {n!r}")
        values[n] = pair.aligned
    return values


def _runtime_variants(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    """Experiment a: the same file under other MNN settings, measured like the baseline."""
    for name, change in RUNTIME_VARIANTS:
        ctx.progress(f"diagnosing: MNN runtime variant {name}")
        try:
            with _open_variant(ctx, ctx.mnn_path, **change) as mnn:
                m = probe.measure(mnn)
        except ParityError as exc:  # a crash under one setting is evidence, not the end
            evidence.append({"experiment": "runtime variant", "setting": name, "error": str(exc)})
            continue
        evidence.append({"experiment": "runtime variant", "setting": name, **m.to_dict()})
        if _decisive(base, m):
            return Verdict(
                "runtime", where,
                f"{_runtime_phrase(probe, name)} at {probe.where}: error {_fmt(base.scaled)} as run, "
                f"{_fmt(m.scaled)} with {name} ({m.how}); the converted graph is right, an MNN "
                f"kernel or setting gives other numbers",
                evidence=tuple(evidence),
                next_steps=(f"run MNN with {name} where accuracy matters, or accept the difference "
                            f"with a looser --atol/--rtol",
                            "attach --repro DIR's output to an MNN issue if the kernel is wrong"),
            )
    return None


def _converter_variants(ctx: Context, probe: Probe, where: str, workdir: Path, evidence: list) -> Verdict | None:
    """Experiment b: reconversions with the options that change numbers, each measured
    against the given file in one way."""
    from parity.mnn.converter import convert

    for name, options in CONVERTER_VARIANTS:
        ctx.progress(f"diagnosing: conversion with {' '.join(options)}")
        target = workdir / f"variant{len(evidence)}.mnn"
        try:
            convert(ctx.onnx_path, target, options=options, timeout=ctx.timeout)
            with _open_variant(ctx, target) as mnn:
                given, m = probe.measure_pair(mnn)
        except ParityError as exc:
            evidence.append({"experiment": "converter variant", "setting": name, "error": str(exc)})
            continue
        evidence.append({"experiment": "converter variant", "setting": name, **m.to_dict(),
                         "given_file": given.to_dict()})
        if _decisive(given, m):
            return Verdict(
                "conversion", where,
                f"the converter's default {name.split(' (')[0].split()[0]} "
                f"changes the numbers at {probe.where}: error {_fmt(given.scaled)} as converted, "
                f"{_fmt(m.scaled)} converted with {' '.join(options)} (both measured {m.how})",
                evidence=tuple(evidence),
                next_steps=(f"convert with {' '.join(options)}: parity convert {argument(ctx.onnx_path)} "
                            f"-o {argument(ctx.mnn_path)} {' '.join(options)}",),
            )
    return None


def _numpy_reference(ctx: Context, probe: Probe, where: str, workdir: Path, evidence: list) -> Verdict | None:
    """Experiment c: the MNN op as the file defines it, evaluated in numpy."""
    if probe.layer is None:
        return None
    ctx.progress("diagnosing: numpy reference of the MNN op")
    from parity.mnn import ops as mnn_ops

    result = mnn_ops.check_op(ctx, probe, workdir)
    evidence.append({"experiment": "numpy reference of the MNN op", **result})
    kind = result.get("kind")
    if kind in ("runtime", "conversion"):
        return Verdict(kind, where, result["summary"], evidence=tuple(evidence),
                       next_steps=tuple(result.get("next_steps", ())))
    return None


def _fresh_conversion(ctx: Context, probe: Probe, base: Measurement, where: str, reconversions: Reconversions,
                      evidence: list) -> Verdict | None:
    """Experiment d: convert the ONNX afresh. When that fixes the numbers, show how the given
    file differs from it (a structural diff of the two graphs), and convert once more under
    another path to tell a file converted differently from a converter that is not
    deterministic (MNN can fold a constant from uninitialised memory)."""
    ctx.progress("diagnosing: fresh conversion of the ONNX model")
    try:
        fresh = reconversions.fresh()
        with _open_variant(ctx, fresh) as mnn:
            given, m = probe.measure_pair(mnn)
            outputs_ok = probe.outputs(mnn).passed
    except ParityError as exc:
        evidence.append({"experiment": "fresh conversion", "error": str(exc)})
        return None
    evidence.append({"experiment": "fresh conversion", "setting": "default converter options",
                     **m.to_dict(), "outputs_passed": outputs_ok, "given_file": given.to_dict()})
    if not (outputs_ok or _decisive(given, m)):
        return None
    agrees = "matches ONNX Runtime" if m.passed else "comes at least tenfold closer to ONNX Runtime"
    figures = (f"{agrees} at {probe.where} (error {_fmt(m.scaled)} vs {_fmt(given.scaled)} in the given file, "
               f"both measured {m.how})")
    ctx.progress("diagnosing: how the given file differs from the fresh conversion")
    given_diff = _graph_diff(ctx, ctx.mnn_path, fresh, ("given", "fresh"))
    if given_diff is not None:
        evidence.append({"experiment": "structural diff: given file vs fresh conversion",
                         "identical": given_diff.empty, "summary": given_diff.summary(),
                         "differences": given_diff.to_dict()})
    if given_diff is not None and given_diff.empty:
        return None  # the same graph gives other numbers: not the file; the runtime variants look further
    again = _second_conversion(ctx, probe, fresh, reconversions, evidence)
    if again is not None and not again[0].empty:
        return _nondeterministic_verdict(ctx, probe, where, figures, given_diff, again, evidence)
    return _different_file_verdict(ctx, probe, where, figures, given_diff, deterministic=again is not None,
                                   evidence=evidence)


def _second_conversion(ctx: Context, probe: Probe, fresh: Path, reconversions: Reconversions, evidence: list):
    """Convert again under another directory and file name; return (diff against the first
    conversion, its measurement or None, whether its outputs pass), or None on failure."""
    ctx.progress("diagnosing: a second conversion under another path (is the converter deterministic?)")
    try:
        again = reconversions.again()
        diff = _graph_diff(ctx, fresh, again, ("first conversion", "second conversion"))
        if diff is None:
            return None
        measured, passed = None, None
        if not diff.empty:
            with _open_variant(ctx, again) as mnn:
                _, measured = probe.measure_pair(mnn)
                passed = probe.outputs(mnn).passed
    except ParityError as exc:
        evidence.append({"experiment": "second fresh conversion", "error": str(exc)})
        return None
    entry = {"experiment": "structural diff: two fresh conversions (other paths)", "identical": diff.empty,
             "summary": diff.summary(), "differences": diff.to_dict()}
    if measured is not None:
        entry.update(second_conversion=measured.to_dict(), second_outputs_passed=passed)
    evidence.append(entry)
    return diff, measured, passed


def _given_file_is_wrong(evidence) -> tuple:
    """The evidence of a verdict that the given file, not today's converter, shows the error:
    its fresh-conversion entry flagged ``given_file_is_wrong``, the one fact --repro reads
    (repro.given_file_is_wrong) to carry the given file whole. The flag is the verdict's own
    decision (outputs passing, or the layer decisively better, in a fresh conversion), not
    something --repro re-derives from the figures."""
    return tuple({**e, "given_file_is_wrong": True} if isinstance(e, dict) and e.get("experiment") == "fresh conversion"
                 else e for e in evidence)


def _nondeterministic_verdict(ctx, probe, where, figures, given_diff, again, evidence) -> Verdict:
    diff, measured, passed = again
    outcome = ("" if measured is None else
               f"; the first {figures}, the second gives error "
               f"{_fmt(measured.scaled)}{'' if passed else ' and fails'}")
    given = (f"; the given file differs from a fresh conversion ({'; '.join(given_diff.clauses())})"
             if given_diff is not None and not given_diff.empty else "")
    return Verdict(
        "conversion", where,
        f"MNN's converter is not deterministic on {ctx.onnx_path.name}: two conversions with the "
        f"same options under other paths differ ({'; '.join(diff.clauses())}){outcome}. Whether a "
        f"conversion comes out right depends on the command line, so reconverting fixes "
        f"{ctx.mnn_path.name} only by luck{given}",
        evidence=_given_file_is_wrong(evidence),
        next_steps=(
            "check every conversion of this model with parity check before shipping it, and keep "
            "the file that passes (reconverting elsewhere can bring the error back)",
            "report it to MNN with --repro DIR: the constants named above come out differently "
            "from one conversion to the next",
        ),
    )


def _different_file_verdict(ctx, probe, where, figures, given_diff, *, deterministic, evidence) -> Verdict:
    how = ("yet the two graphs are structurally identical (same ops, parameters and constants)"
           if given_diff is not None and given_diff.empty else
           f"the two files differ: {'; '.join(given_diff.clauses())}" if given_diff is not None else
           "the graphs could not be compared")
    checked = ("two fresh conversions under different paths are identical, so the converter is "
               "deterministic here" if deterministic else "the converter's determinism could not be checked")
    return Verdict(
        "conversion", where,
        f"{ctx.mnn_path.name} is not what MNN's converter makes of {ctx.onnx_path.name} here: a fresh "
        f"conversion {figures}; {how}; {checked}. The given "
        f"file was converted from another ONNX, with other options or another MNN version, or "
        f"changed after conversion",
        evidence=_given_file_is_wrong(evidence),
        next_steps=(f"reconvert and check in one step: parity convert {argument(ctx.onnx_path)} -o "
                    f"{argument(ctx.mnn_path)}",),
    )


def _graph_diff(ctx: Context, a, b, labels: tuple[str, str]):
    """The structural diff of two MNN files (mnn_graph), or None when one cannot be dumped."""
    from parity.mnn import graph as mnn_graph

    try:  # values changed in place are read from the bytes; anything else needs MNN's dump
        fast = mnn_graph.fast_structural_diff(a, b, labels=labels)
    except OSError:
        fast = None
    if fast is not None:
        return fast
    try:
        graph_a, graph_b = mnn_graph.read_graphs(a, b, timeout=ctx.timeout)
    except ParityError as exc:
        ctx.progress(f"no structural diff: {exc}")
        return None
    return mnn_graph.structural_diff(graph_a, graph_b, labels=labels)


def _repeatability(ctx: Context) -> dict | None:
    """None when two runs of the candidate on the same feeds agree (to tolerance), else figures."""
    first = ctx.candidate.run(ctx.feeds).outputs
    second = ctx.candidate.run(ctx.feeds).outputs
    for name, a in first.items():
        b = second.get(name)
        if b is None or a.shape != b.shape:
            return {"detail": f"output {name!r} changed shape between runs", "passed": False}
        differ = TensorDiff.from_arrays(name, a, b, ctx.tolerance).mismatch_count
        if differ:
            return {"detail": f"{differ} of {a.size} elements of output {name!r} changed", "passed": False,
                    "changed_elements": differ}
    return None


def _runtime_phrase(probe: Probe, variant: str) -> str:
    if probe.divergence is None:
        return f"the model under {variant}"
    ops = probe.divergence.op_type
    if "Winograd" in variant and "Conv" in ops:
        return f"{ops} computed via Winograd"
    return f"{ops} under the MNN setting {variant.split(' (')[0]}"
