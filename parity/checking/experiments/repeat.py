"""Experiment 0: the same run twice. An MNN that differs from itself is runtime, and invalidates
every comparison after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from parity.core.metrics import TensorDiff
from parity.core.report import Verdict

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe


def repeat(ctx: Context, probe: Probe, where: str, evidence: list) -> Verdict | None:
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
