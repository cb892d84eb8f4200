"""Experiment 1, for a run in float16 or on a target: the same file at precision high on the
same target (float16 or not? float16.py), then the same file and settings on this machine (the
target's kernels or not?)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from parity.checking.experiments.float16 import float16_experiment
from parity.checking.experiments.measure import Measurement, decisive, fmt, measure_run
from parity.core.report import Verdict

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe


def target_experiments(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    """For a run in float16 or on a target: the same file in full precision on the same target
    (float16 or not?), then the same file and settings on this machine (the target's kernels or
    not?). Measured like the baseline; a sibling run already open is reused."""
    candidate = ctx.candidate
    target = candidate.target
    verdict = None
    if candidate.precision in ("low", "low_bf16"):
        verdict = float16_experiment(ctx, probe, base, where, evidence)
    if verdict is None and not target.local:
        verdict = _local_experiment(ctx, probe, base, where, evidence)
    return verdict


def _local_experiment(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    candidate = ctx.candidate
    setting = f"the same file, precision {candidate.precision}, on this machine (local)"
    local, error = measure_run(ctx, probe, setting, candidate.precision, target="local")
    if local is None:
        evidence.append({"experiment": "target", "setting": setting, "error": error})
        return None
    evidence.append({"experiment": "target", "setting": setting, **local.to_dict()})
    if not decisive(base, local):
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
        f"for the same file and settings: error {fmt(base.scaled)} there, {fmt(local.scaled)} here "
        f"({local.how}). The converted graph is right; {cause}",
        evidence=tuple(evidence),
        next_steps=("compare precision high and low on the target (--mnn-precision high,low) to see "
                    "whether float16 is involved",
                    "report the kernel to MNN with --repro DIR and the target's facts (parity target check)"),
    )
