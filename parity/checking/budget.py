"""The budget of a compressed model: how much accuracy its compression may cost (``--budget``).

A compressed .mnn is compared with the float conversion of the same ONNX (the cost of
compression alone), and that link passes when every output meets the budget rather than the
element tolerance, which compression is not meant to meet. A budget is one or more
comma-separated clauses, all of which must hold:

    cosine>=0.999      cosine similarity of the output with the float model's
    top1>=0.99         share of rows whose largest entry is the same (classifier-like outputs:
                       two or more dims, last dim >= 2; ignored for others)
    snr_db>=30         signal to noise, 10 log10(sum r^2 / sum (c - r)^2), in dB
    error<=0.05        max |c - r| / max(1, max|r|)

The default depends on the compression (``DEFAULTS``), from measurements in the README.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from parity.core.errors import UsageError
from parity.core import metrics
from parity.core.metrics import dot

_CLAUSE = re.compile(r"^\s*(cosine|top1|snr_db|error)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")
_DIRECTION = {"cosine": ">=", "top1": ">=", "snr_db": ">=", "error": "<="}

# Per compression kind (compression.Compression.kind): what healthy compressions of the test
# models reach, with room to spare (README, "Compressed models").
DEFAULTS = {
    "fp16": "cosine>=0.9999",
    "int8": "cosine>=0.999",
    "int4": "cosine>=0.98",
    "int8-full": "cosine>=0.99",
}
FALLBACK = "cosine>=0.98"


@dataclass(frozen=True)
class Budget:
    clauses: tuple  # (metric, op, value)
    text: str

    @classmethod
    def parse(cls, text: str) -> "Budget":
        clauses = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            match = _CLAUSE.match(part)
            if match is None:
                raise UsageError(f"--budget {text!r}: {part.strip()!r} is not METRIC>=VALUE or METRIC<=VALUE "
                                 f"(metrics: cosine, top1, snr_db, error; e.g. cosine>=0.999,top1>=0.99)")
            metric, op, value = match.groups()
            try:
                number = float(value)
            except ValueError:
                raise UsageError(f"--budget {text!r}: {value!r} is not a number") from None
            if not math.isfinite(number):
                raise UsageError(f"--budget {text!r}: {value!r} is not a finite number")
            if op != _DIRECTION[metric]:
                raise UsageError(f"--budget {text!r}: {metric} is bounded with {_DIRECTION[metric]} "
                                 f"(higher {'is better' if _DIRECTION[metric] == '>=' else 'is worse'})")
            clauses.append((metric, op, number))
        if not clauses:
            raise UsageError("--budget is empty: give e.g. cosine>=0.999")
        return cls(tuple(clauses), ",".join(f"{m}{o}{v:g}" for m, o, v in clauses))

    @classmethod
    def default_for(cls, kind: str | None) -> "Budget":
        if kind and "+" in kind:  # a mix: the loosest of its kinds
            budgets = [cls.default_for(k) for k in kind.split("+")]
            return min(budgets, key=lambda b: b.clauses[0][2])
        return cls.parse(DEFAULTS.get(kind or "", FALLBACK))

    def judge(self, reference: np.ndarray, candidate: np.ndarray) -> tuple[bool, dict, str]:
        """(passed, figures, detail) for one output pair of equal size."""
        figures = measure(reference, candidate)
        failed = []
        for metric, op, value in self.clauses:
            got = figures.get(metric)
            if got is None:  # top1 of a non-classifier output: the clause does not apply
                continue
            ok = got >= value if op == ">=" else got <= value
            if not ok:
                failed.append(f"{metric} {_show(got)} (budget {op}{value:g})")
        shown = ", ".join(f"{m} {_show(figures[m])}" for m, _, _ in self.clauses if figures.get(m) is not None)
        detail = (f"within budget {self.text}: {shown}" if not failed else
                  f"over budget {self.text}: {'; '.join(failed)}")
        return not failed, figures, detail


def _show(value: float) -> str:
    return f"{value:.6g}"


def top1_rows(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int] | None:
    """(rows whose largest entry is the same, rows) for a classifier-like output (floats, two
    or more dims, last dim >= 2); None for others."""
    shape = np.shape(reference)
    if len(shape) < 2 or shape[-1] < 2 or not np.issubdtype(np.asarray(reference).dtype, np.floating):
        return None
    if np.size(candidate) != np.size(reference):
        return None
    rr = np.asarray(reference).reshape(-1, shape[-1])
    cc = np.asarray(candidate).reshape(-1, shape[-1])
    return int(np.count_nonzero(np.argmax(rr, axis=-1) == np.argmax(cc, axis=-1))), rr.shape[0]


def measure(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """cosine, snr_db, error and (for classifier-like outputs) top1, in float64, over the finite
    pairs; a non-finite value on one side only counts as a complete miss (cosine 0)."""
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    c = np.asarray(candidate, dtype=np.float64).reshape(-1)
    finite = np.isfinite(r) & np.isfinite(c)
    broken = bool(np.any(np.isfinite(r) != np.isfinite(c)))
    rf, cf = r[finite], c[finite]
    scale = max(float(np.max(np.abs(rf))) if rf.size else 0.0, float(np.max(np.abs(cf))) if cf.size else 0.0, 1e-300)
    rs, cs = rf / scale, cf / scale
    cosine = metrics.cosine(rf, cf)
    if cosine is None:  # nothing to compare (equal: 1), or one side all zero (a complete miss: 0)
        cosine = 1.0 if np.array_equal(rf, cf) else 0.0
    noise = dot(rs - cs, rs - cs)
    signal = dot(rs, rs)
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    error = float(np.max(np.abs(rf - cf))) / max(1.0, float(np.max(np.abs(rf))) if rf.size else 1.0) if rf.size else 0.0
    figures = {"cosine": 0.0 if broken else cosine, "snr_db": -math.inf if broken else snr,
               "error": math.inf if broken else error}
    ref_shape = np.shape(reference)
    if len(ref_shape) >= 2 and ref_shape[-1] >= 2 and np.issubdtype(np.asarray(reference).dtype, np.floating):
        rr = np.asarray(reference).reshape(-1, ref_shape[-1])
        cc = np.asarray(candidate).reshape(-1, ref_shape[-1])
        figures["top1"] = float(np.mean(np.argmax(rr, axis=-1) == np.argmax(cc, axis=-1)))
    return figures
