"""Pure numpy diffs and statistics: no I/O, no printing.

Element rule (as numpy.isclose): ``|c - r| <= atol + rtol * |r|``. NaN matches NaN and an
infinity matches the same infinity; any other non-finite pair is a mismatch. Arrays are
walked in chunks so memory stays flat on large outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Chosen from measured fp32 conversions (README: "Tolerances"): MNN's Winograd 3x3
# convolutions differ from ONNX Runtime by up to ~1e-3 of the output's largest magnitude, and
# tanh-GELU by ~1e-4. So by default the absolute term scales with the output:
# atol = ATOL_SCALE * max(1, max|reference|). A changed weight or a wrong op moves values by
# far more. An explicit --atol is absolute.
DEFAULT_ATOL = None
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL_SCALE = 2e-3

_CHUNK = 1 << 16  # 256 KiB of float32: every pass over a chunk stays in cache


@dataclass(frozen=True)
class Tolerance:
    atol: float | None = DEFAULT_ATOL  # None: ATOL_SCALE * max(1, max|reference|)
    rtol: float = DEFAULT_RTOL
    atol_scale: float = DEFAULT_ATOL_SCALE

    def __post_init__(self):
        if not ((self.atol is None or self.atol >= 0) and self.rtol >= 0 and self.atol_scale >= 0):
            raise ValueError("atol, rtol and atol_scale must be >= 0")

    def atol_for(self, reference_absmax: float) -> float:
        if self.atol is not None:
            return self.atol
        return self.atol_scale * max(1.0, reference_absmax)

    def describe(self) -> str:
        atol = f"{self.atol:g}" if self.atol is not None else f"{self.atol_scale:g} * max(1, max|r|)"
        return f"|c - r| <= {atol} + {self.rtol:g} * |r|"

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "atol_scale": self.atol_scale,
                "rule": self.describe()}


def fmt(x: float | None, spec: str = ".3g") -> str:
    """A figure for a sentence; None (no finite pair) reads as n/a."""
    return "n/a" if x is None else format(x, spec)


def _clean(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class TensorDiff:
    name: str
    passed: bool
    kind: str  # "float", "integer", "bool" or "empty"
    size: int
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine: float | None = None
    mismatch_fraction: float = 0.0
    mismatch_count: int = 0
    exact_match_fraction: float | None = None
    reference_absmax: float | None = None
    nan_reference: int = 0
    nan_candidate: int = 0
    inf_reference: int = 0
    inf_candidate: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_arrays(
        cls, name: str, reference: np.ndarray, candidate: np.ndarray, tol: Tolerance = Tolerance()
    ) -> "TensorDiff":
        reference = np.asarray(reference)
        candidate = np.asarray(candidate)
        if reference.shape != candidate.shape:
            raise ValueError(f"{name}: shapes differ {reference.shape} vs {candidate.shape}")
        size = int(reference.size)
        if size == 0:
            return cls(name, True, "empty", 0, notes=("empty output: nothing to compare",))
        kinds = {reference.dtype.kind, candidate.dtype.kind}
        if kinds <= {"b"}:
            return cls._exact(name, reference, candidate, "bool")
        if kinds <= {"i", "u", "b"}:
            return cls._exact(name, reference, candidate, "integer")
        return cls._float(name, reference, candidate, tol)

    @classmethod
    def _exact(cls, name, reference, candidate, kind) -> "TensorDiff":
        r = reference.reshape(-1)
        c = candidate.reshape(-1)
        unequal = 0
        max_abs = 0.0
        for start in range(0, r.size, _CHUNK):
            rc = r[start:start + _CHUNK].astype(np.int64)
            cc = c[start:start + _CHUNK].astype(np.int64)
            diff = np.abs(cc - rc)
            unequal += int(np.count_nonzero(diff))
            max_abs = max(max_abs, float(diff.max()))
        fraction = unequal / r.size
        return cls(
            name,
            unequal == 0,
            kind,
            int(r.size),
            max_abs_diff=max_abs,
            mismatch_fraction=fraction,
            mismatch_count=unequal,
            exact_match_fraction=1.0 - fraction,
            reference_absmax=float(np.abs(r.astype(np.int64)).max()),
        )

    @classmethod
    def _float(cls, name, reference, candidate, tol: Tolerance) -> "TensorDiff":
        """One pass per chunk over cache-sized slices, in float32 when both sides are float32
        (differences of float32 values are exact enough; sums accumulate in float64)."""
        r_all = reference.reshape(-1)
        c_all = candidate.reshape(-1)
        n = r_all.size
        work = np.float64 if np.float64 in (r_all.dtype, c_all.dtype) or r_all.dtype.kind != "f" \
            or c_all.dtype.kind != "f" else np.float32
        size = min(_CHUNK, n)
        d = np.empty(size, work)
        ar = np.empty(size, work)
        t = np.empty(size, work)
        mask = np.empty(size, bool)

        def chunk(array, start, stop):
            part = array[start:stop]
            return part if part.dtype == work else part.astype(work)

        if tol.atol is None:  # the absolute term scales with the reference: one cheap pass
            peak = 0.0
            for start in range(0, n, _CHUNK):
                r = chunk(r_all, start, start + _CHUNK)
                k = r.size
                np.abs(r, out=ar[:k])
                m = float(np.nanmax(ar[:k])) if np.isnan(ar[:k]).any() else float(ar[:k].max())
                if math.isfinite(m):
                    peak = max(peak, m)
                elif not np.isnan(m):  # inf present: the largest finite value counts
                    finite = ar[:k][np.isfinite(ar[:k])]
                    if finite.size:
                        peak = max(peak, float(finite.max()))
            atol = tol.atol_for(peak)
        else:
            atol = tol.atol
        rtol = tol.rtol

        max_abs = max_rel = sum_abs = 0.0
        rr = cc = dd = 0.0
        mismatches = finite_pairs = 0
        nan_r = nan_c = inf_r = inf_c = 0
        absmax = 0.0
        maybe_constant, constant = True, None  # whether every reference value so far is one value
        for start in range(0, n, _CHUNK):
            r = chunk(r_all, start, start + _CHUNK)
            c = chunk(c_all, start, start + _CHUNK)
            k = r.size
            dk, ark, tk, mk = d[:k], ar[:k], t[:k], mask[:k]
            with np.errstate(invalid="ignore", over="ignore"):
                np.subtract(c, r, out=dk)
            np.abs(dk, out=dk)
            np.abs(r, out=ark)
            if np.isfinite(dk).all():
                fr, fc, fd, far = r, c, dk, ark
                np.multiply(ark, rtol, out=tk)
                tk += atol
                np.greater(dk, tk, out=mk)
                mismatches += int(np.count_nonzero(mk))
            else:
                nr, nc = np.isnan(r), np.isnan(c)
                nan_r += int(nr.sum())
                nan_c += int(nc.sum())
                inf_r += int(np.isinf(r).sum())
                inf_c += int(np.isinf(c).sum())
                finite = np.isfinite(dk)
                same_special = (nr & nc) | (r == c)
                with np.errstate(invalid="ignore"):
                    bad = np.where(finite, dk > atol + rtol * ark, ~same_special)
                mismatches += int(np.count_nonzero(bad))
                fr, fc, fd, far = r[finite], c[finite], dk[finite], ark[finite]
            if not fd.size:
                continue
            finite_pairs += fd.size
            max_abs = max(max_abs, float(fd.max()))
            sum_abs += float(fd.sum(dtype=np.float64))
            np.greater(far, 0, out=mk[:fd.size])
            rel = tk[:fd.size]
            rel.fill(0)
            np.divide(fd, far, out=rel, where=mk[:fd.size])
            max_rel = max(max_rel, float(rel.max()))
            rr += float(np.dot(fr, fr))
            cc += float(np.dot(fc, fc))
            dd += float(np.dot(fd, fd))
            absmax = max(absmax, float(far.max()))
            if maybe_constant:
                lo, hi = float(fr.min()), float(fr.max())
                if lo != hi or (constant is not None and lo != constant):
                    maybe_constant = False
                else:
                    constant = lo
        notes = []
        if rr > 0 and cc > 0:
            # (|r|^2 + |c|^2 - |c - r|^2) / (2 |r||c|): exact for cosine, and precise near 1
            # because |c - r| is summed from the differences themselves
            cosine = (rr + cc - dd) / (2 * math.sqrt(rr * cc))
            cosine = max(-1.0, min(1.0, cosine))
        elif rr == 0 and cc == 0 and finite_pairs:
            cosine = 1.0
        else:
            cosine = None
        if finite_pairs and maybe_constant and constant is not None:
            if constant == 0:
                notes.append("reference is all zero: relative figures and cosine mean little here")
            else:
                notes.append(f"reference is constant ({constant:g}): cosine and relative figures mean little here")
        if nan_r or nan_c or inf_r or inf_c:
            notes.append(
                f"non-finite values: reference {nan_r} NaN / {inf_r} Inf, "
                f"candidate {nan_c} NaN / {inf_c} Inf"
            )
        return cls(
            name,
            mismatches == 0,
            "float",
            int(n),
            max_abs_diff=_clean(max_abs) if finite_pairs else None,
            max_rel_diff=_clean(max_rel) if finite_pairs else None,
            mean_abs_diff=_clean(sum_abs / finite_pairs) if finite_pairs else None,
            cosine=cosine,
            mismatch_fraction=mismatches / n,
            mismatch_count=mismatches,
            reference_absmax=absmax if finite_pairs else None,
            nan_reference=nan_r,
            nan_candidate=nan_c,
            inf_reference=inf_r,
            inf_candidate=inf_c,
            notes=tuple(notes),
        )
