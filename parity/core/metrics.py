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

_CHUNK = 1 << 15  # 256 KiB per float64 work array: a chunk's passes stay in cache


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
        portion = f"{share:.1%} of it" if share < 10 else f"{share:.3g} times it"
        return (f"small reference (max|r| {reference_absmax:.3g}): the default atol {atol:g} is "
                f"{portion}, looser than the {self.atol_scale:.1%} applied to outputs of "
                f"magnitude >= 1; give --atol for a stricter check")

    def describe(self) -> str:
        atol = f"{self.atol:g}" if self.atol is not None else f"{self.atol_scale:g} * max(1, max|r|)"
        return f"|c - r| <= {atol} + {self.rtol:g} * |r|"

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "atol_scale": self.atol_scale,
                "rule": self.describe(), "sentinel": SENTINEL}


# The default tolerance of a link whose MNN ran in float16 (precision low on a CPU with float16
# arithmetic), used when no --atol/--rtol is given. float16 keeps 11 significant bits: healthy
# models measured on emulated arm64 (README, "Targets") stay within it; overflow to inf,
# saturation at 65504 and flushed underflows do not.
FP16_TOLERANCE = Tolerance(atol=None, rtol=1e-2, atol_scale=1e-2)


@dataclass(frozen=True)
class Column:
    """One figure of a compared output as the reports show it (the text table, HTML): a new
    figure is a field of TensorDiff (and OutputComparison, which copies it) plus a row here."""

    field: str  # the TensorDiff / OutputComparison field
    header: str
    spec: str = ".3g"  # format spec; "%" for a share, shown as a percentage
    integer: bool = True  # shown for integer and bool tensors too ("-" otherwise)


OUTPUT_COLUMNS = (
    Column("max_abs_diff", "max_abs"),
    Column("max_rel_diff", "max_rel", integer=False),
    Column("mean_abs_diff", "mean_abs"),
    Column("cosine", "cosine", ".6f", integer=False),
    Column("mismatch_fraction", "out of tol", "%"),
)


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
    """The magnitude from which a value of ``dtype`` is a mask value: SENTINEL as that dtype
    holds it (float32(1e38) is 9.99999968e37, and a float32 mask written as -1e38 must count),
    or the dtype's largest finite value when smaller (float16: 65504)."""
    if dtype.kind != "f":
        return math.inf  # integers are never masks
    with np.errstate(over="ignore"):
        rounded = float(np.asarray(SENTINEL, dtype=dtype))
    return min(rounded, float(np.finfo(dtype).max))


def _regular_absmax(r_all: np.ndarray, threshold: float, buf: "_Buffers") -> float:
    """max|r| over the reference's regular values (not NaN, not masks): the tolerance scale."""
    peak = 0.0
    for start in range(0, r_all.size, _CHUNK):
        part = r_all[start:start + _CHUNK]
        top = max(float(part.max()), -float(part.min()))  # in the source dtype: no copy
        if not top < threshold:  # a mask value or NaN in this chunk: leave them out
            a = buf.ar[:part.size]
            np.copyto(a, part, casting="unsafe")
            np.abs(a, out=a)
            a = a[a < threshold]
            top = float(a.max()) if a.size else 0.0
        peak = max(peak, top)
    return peak


class _Buffers:
    """Work arrays for one chunk, allocated once: fresh temporaries of this size would each
    cost an allocation (and page faults) per numpy call."""

    def __init__(self, size: int):
        self.r, self.c, self.d, self.ar, self.t = (np.empty(size, np.float64) for _ in range(5))
        self.m = np.empty(size, bool)


# Sums of squares of values within these bounds, and their products, stay normal float64s.
_SAFE_LOW, _SAFE_HIGH = 1e-70, 1e70


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) without BLAS: numpy's BLAS dot on a 32K chunk costs 0.5 ms of thread start-up
    (15x a plain multiply and pairwise sum) and spins whole cores while MNN's child computes.
    einsum multiplies and sums in one pass without a temporary array: the per-layer comparison
    of a BERT-base (66M elements) 0.62 s -> 0.50 s."""
    return float(np.einsum("i,i->", a, b))


class _Moments:
    """Running sums for cosine, ``sum(r*c) / (|r| |c|)``. Each side has its own scale: values
    within [1e-70, 1e70] of it are summed as they are; a side whose values leave that range
    (float64 inputs, mismatched masks at 3e38, a side 1e-300 the other's size) is divided by
    a running scale first, as LAPACK's nrm2 does, so no square overflows or underflows and
    very different norms do not cancel."""

    def __init__(self):
        self.sr = self.sc = 1.0
        self.rr = self.cc = self.rc = 0.0

    def needs_peak(self, high: float, low: float) -> bool:
        """Whether ``add`` may rescale for a side whose peak lies in [low, high] (NaN bounds:
        it may): only then is that side's exact peak needed."""
        return not high <= self.sc * _SAFE_HIGH or (not self.cc and not low >= _SAFE_LOW)

    def add(self, r: np.ndarray, c: np.ndarray, peak_r: float, peak_c: float | None) -> None:
        """Add a chunk. ``peak_c`` may be None where ``needs_peak`` said the candidate's peak
        cannot rescale it."""
        if peak_r > 0 and (peak_r > self.sr * _SAFE_HIGH or (not self.rr and peak_r < _SAFE_LOW)):
            if self.rr:  # only ever to a larger scale then: the factor cannot overflow
                factor = self.sr / peak_r
                self.rr, self.rc = self.rr * factor * factor, self.rc * factor
            self.sr = peak_r
        if peak_c is not None and peak_c > 0 and (
                peak_c > self.sc * _SAFE_HIGH or (not self.cc and peak_c < _SAFE_LOW)):
            if self.cc:
                factor = self.sc / peak_c
                self.cc, self.rc = self.cc * factor * factor, self.rc * factor
            self.sc = peak_c
        rs = r if self.sr == 1.0 else r / self.sr
        cs = c if self.sc == 1.0 else c / self.sc
        self.rr += dot(rs, rs)
        self.cc += dot(cs, cs)
        self.rc += dot(rs, cs)

    def cosine(self, pairs: int) -> float | None:
        if not pairs:
            return None
        if self.rr == 0 and self.cc == 0:
            return 1.0  # both all zero
        if self.rr == 0 or self.cc == 0:
            return None  # one side all zero: no direction to compare
        product = self.rr * self.cc
        if 1e-300 < product < math.inf:
            norms = math.sqrt(product)  # one rounding: x against -x gives exactly -1
        else:
            norms = math.sqrt(self.rr) * math.sqrt(self.cc)
        return max(-1.0, min(1.0, self.rc / norms))


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Cosine similarity ``sum(r*c) / (|r| |c|)`` of two arrays of finite values, in float64,
    summed as TensorDiff sums it (_Moments: no square overflows or underflows): 1.0 when both
    are all zero, None when only one is (no direction to compare) or when they are empty. The
    one definition: the outputs' figures, --check-stat cosine and the compression budget."""
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    c = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if r.size == 0:
        return None
    moments = _Moments()
    moments.add(r, c, float(np.max(np.abs(r))), float(np.max(np.abs(c))))
    return moments.cosine(r.size)


@dataclass
class _FloatTally:
    mismatches: int = 0
    pairs: int = 0  # measured pairs: both finite, not masked on both sides
    max_abs: float = 0.0
    max_rel: float = 0.0
    sum_abs: float = 0.0
    sum_huge: float = 0.0  # sums of chunks with differences past 1e300, times 2**-64
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

    def mean_abs(self) -> float | None:
        if not self.pairs:
            return None
        return _clean(self.sum_abs / self.pairs + (self.sum_huge / self.pairs) * 2.0 ** 64)

    def measure(self, r, c, d, ar, moments: _Moments, peaks: tuple[float, float | None], rel: np.ndarray,
                nonzero: np.ndarray, top: float | None = None) -> None:
        """Figures over measured pairs ``r``, ``c`` (float64) with differences ``d`` and
        ``ar = |r|``; ``rel`` and ``nonzero`` are scratch arrays of the same size; ``top`` is
        ``d.max()`` when the caller has it."""
        if not d.size:
            return
        self.pairs += d.size
        top = float(d.max()) if top is None else top
        self.max_abs = max(self.max_abs, top)
        if top > 1e300:  # the sum could pass float64's maximum: sum a scaled copy (exact power of 2)
            self.sum_huge += float((d * 2.0 ** -64).sum())
        else:
            self.sum_abs += float(d.sum())
        if top > 0:  # else every relative difference is 0 too, and max_rel starts at 0
            if float(ar.min()) > 0:  # no zero in the reference: one division
                np.divide(d, ar, out=rel)
            else:  # relative figures leave out elements whose reference is zero
                np.greater(ar, 0, out=nonzero)
                rel.fill(0.0)
                np.divide(d, ar, out=rel, where=nonzero)
            self.max_rel = max(self.max_rel, float(rel.max()))
        moments.add(r, c, *peaks)
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


# |c| <= |r| + |c - r| element by element, and max|c| >= max|r| - 2 max|c - r|: the
# reference's and the differences' peaks bound the candidate's; these margins cover roundings
_OVER, _UNDER = 1 + 2.0 ** -40, 1 - 2.0 ** -40


def _float_chunk(r_src, c_src, atol, rtol, tr, tc, tally: _FloatTally, moments: _Moments, buf: _Buffers) -> None:
    k = r_src.size
    r, c, d, ar, t, m = buf.r[:k], buf.c[:k], buf.d[:k], buf.ar[:k], buf.t[:k], buf.m[:k]
    np.copyto(r, r_src, casting="unsafe")
    np.copyto(c, c_src, casting="unsafe")
    np.subtract(c, r, out=d)
    np.abs(d, out=d)
    np.abs(r, out=ar)
    r_top, d_top = float(ar.max()), float(d.max())
    high, low = (r_top + d_top) * _OVER, (r_top - 2 * d_top) * _UNDER  # NaN where d holds NaN
    regular, c_peak = r_top < tr, None  # NaN fails the comparisons
    if regular and (not high < tc or moments.needs_peak(high, low)):  # the bounds cannot tell
        c_max, c_min = float(c.max()), float(c.min())
        regular, c_peak = c_max < tc and c_min > -tc, max(c_max, -c_min)
    if regular:  # the common case: no NaN or mask value on either side
        if d_top > atol or rtol < 0:  # else no difference can pass atol + rtol |r|
            np.multiply(ar, rtol, out=t)
            t += atol
            np.greater(d, t, out=m)
            tally.mismatches += int(np.count_nonzero(m))
        tally.measure(r, c, d, ar, moments, (r_top, c_peak), t, m, top=d_top)
        return
    _float_chunk_classes(r.copy(), c.copy(), d.copy(), atol, rtol, tr, tc, tally, moments)


def _float_chunk_classes(r, c, d, atol, rtol, tr, tc, tally: _FloatTally, moments: _Moments) -> None:
    """A chunk holding NaN or mask values: classify every element first."""
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
    # equal values match whatever their dtypes call them (float16's -65504 is a mask, the
    # same value in float32 is not)
    masked_both = (pos_r & pos_c) | (neg_r & neg_c) | ((r == c) & (mask_r | mask_c))
    same_class = (nan_r & nan_c) | masked_both
    tally.masked_matched += int(np.count_nonzero(masked_both))
    other = ~regular & ~same_class
    tally.class_mismatches += int(np.count_nonzero(other))
    bad = np.zeros(r.shape, bool)
    bad[regular] = d[regular] > atol + rtol * np.abs(r[regular])
    tally.mismatches += int(np.count_nonzero(bad)) + int(np.count_nonzero(other))
    # figures: regular pairs and mismatched pairs whose difference is a number
    measured = regular | (other & np.isfinite(d))
    rm, cm, dm = r[measured], c[measured], d[measured]
    if dm.size:
        arm = np.abs(rm)
        peaks = (float(arm.max()), float(np.abs(cm).max()))
        tally.measure(rm, cm, dm, arm, moments, peaks, np.empty(dm.size), np.empty(dm.size, bool))


def _float(name, reference, candidate, tol: Tolerance) -> TensorDiff:
    r_all = reference.reshape(-1)
    c_all = candidate.reshape(-1)
    n = int(r_all.size)
    tr, tc = _threshold(reference.dtype), _threshold(candidate.dtype)
    buf = _Buffers(min(n, _CHUNK))
    tally, moments = _FloatTally(), _Moments()
    with np.errstate(all="ignore"):
        absmax = _regular_absmax(r_all, tr, buf)
        atol = tol.atol_for(absmax)
        for start in range(0, n, _CHUNK):
            _float_chunk(r_all[start:start + _CHUNK], c_all[start:start + _CHUNK], atol, tol.rtol,
                         tr, tc, tally, moments, buf)
    pairs = tally.pairs
    return TensorDiff(
        name, tally.mismatches == 0, "float", n,
        max_abs_diff=_clean(tally.max_abs) if pairs else None,
        max_rel_diff=_clean(tally.max_rel) if pairs else None,
        mean_abs_diff=tally.mean_abs(),
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
    max_rel = _clean(tally.max_rel) if tally.pairs else None
    if tally.mismatches == 0 and max_rel is not None and max_rel > max(10 * tol.rtol, 0.01):
        # every element met |c - r| <= atol + rtol |r|, so where |c - r| / |r| = max_rel, |r| is
        # at most atol / (max_rel - rtol): a large relative error can only sit on tiny references
        bound = tol.atol_for(absmax) / (max_rel - tol.rtol)
        notes.append(f"max_rel {max_rel:.3g} comes from elements whose reference is near zero (|r| <= "
                     f"{bound:.2g}, within the absolute tolerance): relative error means little there")
    return tuple(notes)
