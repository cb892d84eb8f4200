"""What the experiments share: a measurement at the target, when another is decisive against the
baseline, and the given .mnn opened under other settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.core.errors import ParityError

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe

_MATERIAL = 10.0  # a variant that lowers the error this many times is decisive


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
        return fmt(self.scaled) + extra


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def decisive(base: Measurement, other: Measurement) -> bool:
    if base.passed:
        return False
    if other.passed:
        return True
    if base.scaled is not None and other.scaled is not None and other.scaled > 0:
        return base.scaled / other.scaled >= _MATERIAL
    return False


def open_variant(ctx: Context, path, **changes):
    from parity.backends.mnn import MnnBackend

    options = dict(ctx.candidate.reopen_options())
    options.update(changes)
    return MnnBackend(path, **options)


def measure_run(ctx: Context, probe: Probe, setting: str, precision: str, target: str | None = None):
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
        with open_variant(ctx, ctx.mnn_path, precision=precision, target=wanted_target) as mnn:
            return probe.measure(mnn), None
    except ParityError as exc:
        return None, str(exc)
