"""An LLM link's budget: clauses such as ``kl_mean<=0.02,top1>=0.9,error<=0.05`` over a summary
(figures.Summary), and the first step that breaks a clause a single step can break.

Defaults: ``FLOAT_FLOOR`` is what an export with float16 weights (llmexport --quant_bit 16) keeps
against transformers in float32 (measured: KL mean 3e-6 on SmolLM2-135M, scaled error ~1e-3 on
tiny random models), with room; ``DEFAULT`` is what a quantized export may cost (measured on
SmolLM2-135M: 8-bit weights with memory normal KL mean 0.0016, with memory low 0.073, 4-bit 0.45):
an 8-bit export passes, dynamic int8 activations and 4-bit weights do not.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from parity.core.errors import UsageError

# clause name -> (the Summary field it bounds, the per-step figure a single step can break it by)
FIGURES = {
    "kl_mean": ("kl_mean", "kl"),  # a step whose KL exceeds the mean's bound is out of budget
    "kl_p99": ("kl_p99", "kl"),
    "kl_max": ("kl_max", "kl"),
    "top1": ("top1", "top1"),
    "top5": ("top5", None),
    "error": ("error", "scaled_error"),
    "p_lost": ("p_lost_max", "p_lost"),
}
_OPS = {"<=": operator.le, ">=": operator.ge}
_CLAUSE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=)\s*([-+0-9.eE]+|inf)\s*$")


@dataclass(frozen=True)
class Clause:
    name: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"

    def holds(self, summary) -> bool:
        value = getattr(summary, FIGURES[self.name][0])
        return not math.isnan(value) and _OPS[self.op](value, self.bound)

    def broken_by(self, step) -> bool:
        """Whether this one step alone breaks the clause (a step's KL above a KL bound, a
        flipped top token under a top-1 clause)."""
        figure = FIGURES[self.name][1]
        if figure is None:
            return False
        value = getattr(step, figure)
        if figure == "top1":
            return not value and self.bound > 0
        return not _OPS[self.op](float(value), self.bound)


@dataclass(frozen=True)
class Budget:
    clauses: tuple

    def __str__(self) -> str:
        return ",".join(map(str, self.clauses))

    @classmethod
    def parse(cls, text: str) -> "Budget":
        clauses = []
        for part in [p for p in text.split(",") if p.strip()]:
            m = _CLAUSE.match(part)
            if not m or m.group(1) not in FIGURES:
                raise UsageError(
                    f"budget clause {part.strip()!r} is not NAME<=NUMBER or NAME>=NUMBER with NAME one of "
                    f"{', '.join(FIGURES)} (e.g. 'kl_mean<=0.02,top1>=0.9')")
            clauses.append(Clause(m.group(1), m.group(2), float(m.group(3))))
        if not clauses:
            raise UsageError(f"budget {text!r} has no clause (e.g. 'kl_mean<=0.02,top1>=0.9')")
        return cls(tuple(clauses))

    def broken(self, summary) -> list[Clause]:
        return [c for c in self.clauses if not c.holds(summary)]

    def first_step_out(self, steps):
        """The first step that alone breaks a clause, or None."""
        for step in steps:
            if any(c.broken_by(step) for c in self.clauses):
                return step
        return None


FLOAT_FLOOR = Budget.parse("kl_mean<=0.001,kl_max<=0.01,error<=0.02")
DEFAULT = Budget.parse("kl_mean<=0.02,kl_p99<=0.25")
