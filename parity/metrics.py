"""Pure numpy diffs and statistics: no I/O, no printing, no numpy warnings.

Every figure is exact for every dtype and magnitude:

* floats are compared in float64, so float16/float32 differences cannot overflow or round
  away; cosine and norms are accumulated on values divided by a running scale, so squares of
  values near float max cannot overflow;
* integers are compared exactly (differences are unsigned 64-bit, or Python ints when even
  those would wrap): uint64 2**64-1 against 0 differs by 2**64-1, int64 minimum against 0 by
  2**63.

Element classes (float tensors). A value at or beyond ``SENTINEL`` in magnitude (or the
largest finite value of its dtype, for float16), or an infinity, is a *mask value*: what
attention masks hold (Hugging Face uses float32 min or -inf). Mask values must match class
for class (both masked, same sign); they are counted apart and left out of the figures and
of the tolerance scale, so the rest of the tensor is checked as strictly as a tensor without
a mask. NaN matches NaN. Any other pairing of classes (mask against a regular value,
opposite masks, NaN against a number) is a mismatch.

Element rule (as numpy.isclose) on pairs of regular values: ``|c - r| <= atol + rtol * |r|``.
Arrays are walked in chunks so memory stays flat on large outputs.
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

# |v| >= SENTINEL: a mask or sentinel value, not a number to measure (float32 max is 3.4e38).
SENTINEL = 1e38
# Below this share of max|reference|, the default atol's floor is noted as loose (README).
LOOSE_SHARE = 0.01

_CHUNK = 1 << 16  # 512 KiB of float64: every pass over a chunk stays in cache


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

    def looseness(self, reference_absmax: float | None) -> str | None:
        """A note when the default atol's floor is a large share of a small reference's
        magnitude, so the check is looser there than on larger outputs; None otherwise."""
        if self.atol is not None or not reference_absmax:
            return None
        atol = self.atol_for(reference_absmax)
        share = atol / reference_absmax
        if share <= LOOSE_SHARE:
            return None
        return (f"small reference (max|r| {reference_absmax:.3g}): the default atol {atol:g} is "
                f"{share:.1%} of it, looser than the {self.atol_scale:.1%} applied to outputs of "
                f"magnitude >= 1; give --atol for a stricter check")

    def describe(self) -> str:
        atol = f"{self.atol:g}" if self.atol is not None else f"{self.atol_scale:g} * max(1, max|r|)"
        return f"|c - r| <= {atol} + {self.rtol:g} * |r|"

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "atol_scale": self.atol_scale,
                "rule": self.describe(), "sentinel": SENTINEL}


def fmt(x: float | int | None, spec: str = ".3g") -> str:
    """A figure for a sentence; None (no finite pair) reads as n/a; integers exactly."""
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return format(x, spec)


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
    max_abs_diff: float | int | None = None  # an exact int for integer tensors
    max_rel_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine: float | None = None
    mismatch_fraction: float = 0.0
    mismatch_count: int = 0
    exact_match_fraction: float | None = None
    reference_absmax: float | int | None = None  # over regular values: the tolerance scale
    nan_reference: int = 0
    nan_candidate: int = 0
    inf_reference: int = 0
    inf_candidate: int = 0
    masked_reference: int = 0  # mask values (|v| >= SENTINEL or inf) on each side
    masked_candidate: int = 0
    masked_matched: int = 0  # pairs masked on both sides with the same sign: left out of figures
    class_mismatches: int = 0  # pairs whose classes differ (mask vs number, NaN vs number...)
    atol: float | None = None  # the absolute tolerance applied (float tensors)
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
        if not kinds <= set("biuf"):
            raise ValueError(f"{name}: cannot compare dtypes {reference.dtype} and {candidate.dtype}")
        if kinds <= {"b"}:
            return _exact(name, reference, candidate, "bool")
        if kinds <= {"i", "u", "b"}:
            return _exact(name, reference, candidate, "integer")
        return _float(name, reference, candidate, tol)


# -- integers: exact ---------------------------------------------------------------------------
def _int_absdiff(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """|c - r| exactly: uint64 where it fits, Python ints (object array) where it cannot."""
    if r.dtype.kind == "b":
        r = r.astype(np.uint8)
    if c.dtype.kind == "b":
        c = c.astype(np.uint8)
    signed = {r.dtype.kind == "i", c.dtype.kind == "i"}
    if signed == {True, False}:  # mixed: bring the unsigned side into int64 when it fits
        u, s = (r, c) if r.dtype.kind == "u" else (c, r)
        if u.size == 0 or int(u.max()) <= np.iinfo(np.int64).max:
            r, c = r.astype(np.int64), c.astype(np.int64)
            signed = {True}
        elif int(s.min()) >= 0:
            r, c = r.astype(np.uint64), c.astype(np.uint64)
            signed = {False}
        else:  # a difference can pass 2**64 - 1: Python ints, only for such chunks
            return np.abs(c.astype(object) - r.astype(object))
    wide = np.int64 if signed == {True} else np.uint64
    a, b = r.astype(wide), c.astype(wide)
    ge = a >= b
    # in two's complement, (a - b) mod 2**64 is the exact difference whenever a >= b
    ua, ub = a.view(np.uint64), b.view(np.uint64)
    return np.where(ge, ua - ub, ub - ua)


def _int_absmax(r: np.ndarray) -> int:
    return max(abs(int(r.max())), abs(int(r.min())))


def _exact(name, reference, candidate, kind) -> TensorDiff:
    r_all = reference.reshape(-1)
    c_all = candidate.reshape(-1)
    unequal, max_abs, total, absmax = 0, 0, 0.0, 0
    for start in range(0, r_all.size, _CHUNK):
        r, c = r_all[start:start + _CHUNK], c_all[start:start + _CHUNK]
        diff = _int_absdiff(r, c)
        unequal += int(np.count_nonzero(diff))
        max_abs = max(max_abs, int(diff.max()))
        total += float(diff.astype(np.float64).sum())
        absmax = max(absmax, _int_absmax(r.astype(np.uint8) if r.dtype.kind == "b" else r))
    n = int(r_all.size)
    fraction = unequal / n
    return TensorDiff(
        name, unequal == 0, kind, n,
        max_abs_diff=max_abs, mean_abs_diff=total / n, mismatch_fraction=fraction,
        mismatch_count=unequal, exact_match_fraction=1.0 - fraction, reference_absmax=absmax,
    )


# -- floats: classes, then figures over measured pairs -----------------------------------------
def _threshold(dtype: np.dtype) -> float:
    """The magnitude from which a value of ``dtype`` is a mask value."""
    if dtype.kind != "f":
        return math.inf  # integers are never masks
    return min(SENTINEL, float(np.finfo(dtype).max))


def _regular_absmax(r_all: np.ndarray, threshold: float) -> float:
    """max|r| over the reference's regular values (not NaN, not masks): the tolerance scale."""
    peak = 0.0
    with np.errstate(all="ignore"):
        for start in range(0, r_all.size, _CHUNK):
            a = np.abs(r_all[start:start + _CHUNK].astype(np.float64))
            a = a[a < threshold]  # NaN compares False: dropped with the masks
            if a.size:
                peak = max(peak, float(a.max()))
    return peak


class _Moments:
    """Running sums for cosine over values divided by a running scale (as LAPACK's nrm2), so
    no square or product can overflow whatever the magnitudes."""

    def __init__(self):
        self.scale = 0.0
        self.rr = self.cc = self.dd = 0.0

    def add(self, r: np.ndarray, c: np.ndarray, d: np.ndarray) -> None:
        peak = max(float(np.abs(r).max()), float(np.abs(c).max()))
        if peak == 0.0:
            return
        if peak > self.scale:
            shrink = (self.scale / peak) ** 2
            self.rr, self.cc, self.dd = self.rr * shrink, self.cc * shrink, self.dd * shrink
            self.scale = peak
        rs, cs, ds = r / self.scale, c / self.scale, d / self.scale
        self.rr += float(np.dot(rs, rs))
        self.cc += float(np.dot(cs, cs))
        self.dd += float(np.dot(ds, ds))

    def cosine(self, pairs: int) -> float | None:
        if not pairs:
            return None
        if self.rr == 0 and self.cc == 0:
            return 1.0  # both all zero
        if self.rr == 0 or self.cc == 0:
            return None  # one side all zero: no direction to compare
        # (|r|^2 + |c|^2 - |c - r|^2) / (2 |r||c|): precise near 1, since |c - r| is summed
        # from the differences themselves
        value = (self.rr + self.cc - self.dd) / (2 * math.sqrt(self.rr * self.cc))
        return max(-1.0, min(1.0, value))


@dataclass
class _FloatTally:
    mismatches: int = 0
    pairs: int = 0  # measured pairs: both finite, not masked on both sides
    max_abs: float = 0.0
    max_rel: float = 0.0
    sum_abs: float = 0.0
    nan_r: int = 0
    nan_c: int = 0
    inf_r: int = 0
    inf_c: int = 0
    masked_r: int = 0
    masked_c: int = 0
    masked_matched: int = 0
    class_mismatches: int = 0
    constant: float | None = None
    maybe_constant: bool = True

    def measure(self, r, c, d, moments: _Moments) -> None:
        """Figures over measured pairs ``r``, ``c`` with differences ``d`` (all float64)."""
        if not d.size:
            return
        self.pairs += d.size
        self.max_abs = max(self.max_abs, float(d.max()))
        self.sum_abs += float(d.sum())
        ar = np.abs(r)
        nonzero = ar > 0
        if nonzero.any():
            self.max_rel = max(self.max_rel, float((d[nonzero] / ar[nonzero]).max()))
        moments.add(r, c, d)
        if self.maybe_constant:
            lo, hi = float(r.min()), float(r.max())
            if lo != hi or (self.constant is not None and lo != self.constant):
                self.maybe_constant = False
            else:
                self.constant = lo


def _classes(x: np.ndarray, threshold: float):
    """(nan, +mask, -mask) boolean arrays of a float64 chunk."""
    nan = np.isnan(x)
    return nan, x >= threshold, x <= -threshold


def _float_chunk(r, c, atol, rtol, tr, tc, tally: _FloatTally, moments: _Moments) -> None:
    d = np.abs(c - r)
    if (np.abs(r) < tr).all() and (np.abs(c) < tc).all():  # the common case: all regular
        tally.mismatches += int(np.count_nonzero(d > atol + rtol * np.abs(r)))
        tally.measure(r, c, d, moments)
        return
    nan_r, pos_r, neg_r = _classes(r, tr)
    nan_c, pos_c, neg_c = _classes(c, tc)
    tally.nan_r += int(nan_r.sum())
    tally.nan_c += int(nan_c.sum())
    tally.inf_r += int(np.isinf(r).sum())
    tally.inf_c += int(np.isinf(c).sum())
    mask_r, mask_c = pos_r | neg_r, pos_c | neg_c
    tally.masked_r += int(mask_r.sum())
    tally.masked_c += int(mask_c.sum())
    regular = ~(nan_r | mask_r | nan_c | mask_c)
    same_class = (nan_r & nan_c) | (pos_r & pos_c) | (neg_r & neg_c)
    tally.masked_matched += int(np.count_nonzero((pos_r & pos_c) | (neg_r & neg_c)))
    other = ~regular & ~same_class
    tally.class_mismatches += int(np.count_nonzero(other))
    bad = np.zeros(r.shape, bool)
    bad[regular] = d[regular] > atol + rtol * np.abs(r[regular])
    tally.mismatches += int(np.count_nonzero(bad)) + int(np.count_nonzero(other))
    # figures: regular pairs and mismatched pairs whose difference is a number
    measured = regular | (other & np.isfinite(d))
    tally.measure(r[measured], c[measured], d[measured], moments)


def _float(name, reference, candidate, tol: Tolerance) -> TensorDiff:
    r_all = reference.reshape(-1)
    c_all = candidate.reshape(-1)
    n = int(r_all.size)
    tr, tc = _threshold(reference.dtype), _threshold(candidate.dtype)
    absmax = _regular_absmax(r_all, tr)
    atol = tol.atol_for(absmax)
    tally, moments = _FloatTally(), _Moments()
    with np.errstate(all="ignore"):
        for start in range(0, n, _CHUNK):
            r = r_all[start:start + _CHUNK].astype(np.float64)
            c = c_all[start:start + _CHUNK].astype(np.float64)
            _float_chunk(r, c, atol, tol.rtol, tr, tc, tally, moments)
    pairs = tally.pairs
    return TensorDiff(
        name, tally.mismatches == 0, "float", n,
        max_abs_diff=_clean(tally.max_abs) if pairs else None,
        max_rel_diff=_clean(tally.max_rel) if pairs else None,
        mean_abs_diff=_clean(tally.sum_abs / pairs) if pairs else None,
        cosine=moments.cosine(pairs),
        mismatch_fraction=tally.mismatches / n,
        mismatch_count=tally.mismatches,
        reference_absmax=absmax if pairs or tally.masked_matched < n else None,
        nan_reference=tally.nan_r, nan_candidate=tally.nan_c,
        inf_reference=tally.inf_r, inf_candidate=tally.inf_c,
        masked_reference=tally.masked_r, masked_candidate=tally.masked_c,
        masked_matched=tally.masked_matched, class_mismatches=tally.class_mismatches,
        atol=atol, notes=_float_notes(tally, tol, absmax, n),
    )


def _float_notes(tally: _FloatTally, tol: Tolerance, absmax: float, n: int) -> tuple[str, ...]:
    notes = []
    if tally.pairs and tally.maybe_constant and tally.constant is not None:
        if tally.constant == 0:
            notes.append("reference is all zero: relative figures and cosine mean little here")
        else:
            notes.append(f"reference is constant ({tally.constant:g}): cosine and relative figures "
                         f"mean little here")
    if tally.masked_r or tally.masked_c:
        notes.append(
            f"mask values (|v| >= {SENTINEL:g} or inf): reference {tally.masked_r}, candidate "
            f"{tally.masked_c}; {tally.masked_matched} match by class and are left out of the "
            f"figures and the tolerance scale; figures cover the other "
            f"{n - tally.masked_matched} elements")
    if tally.nan_r or tally.nan_c:
        notes.append(f"NaN values: reference {tally.nan_r}, candidate {tally.nan_c}")
    if tally.class_mismatches:
        notes.append(f"{tally.class_mismatches} elements differ in class (a mask, infinity or NaN "
                     f"on one side only, or masks of opposite sign)")
    loose = tol.looseness(absmax)
    if loose:
        notes.append(loose)
    return tuple(notes)
