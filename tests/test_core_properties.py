"""Property tests of the comparison core (metrics, align, judge), called directly.

Every figure of ``TensorDiff.from_arrays`` is checked against an independent exact reference
written here with Python ints and ``fractions.Fraction`` over the elements, following the
rules of ``parity/core/metrics.py``'s docstring, not its code. Wrong numbers these tests found are
pinned as regression tests at the end of each section.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from math import prod

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from parity.core import metrics
from parity.core.align import (
    AlignmentError,
    best_alignment,
    channels_last_shape,
    explain_size,
    layouts,
    nc4hw4_size,
    pair_outputs,
    unpack_nc4hw4,
)
from parity.core.judge import (
    compare_outputs,
    diff_tensors,
    layer_only_findings,
    layer_passes,
    scaled_error,
    verdict_for,
)
from parity.core.metrics import TensorDiff, Tolerance
from parity.core.report import Comparison, FirstDivergence, LayerResult, OutputComparison

pytestmark = pytest.mark.filterwarnings("error")  # no numpy warning may escape parity

# PARITY_PROPERTY_EXAMPLES=5000 for a longer hunt; the default keeps the file well under 30 s
_EXAMPLES = int(os.environ.get("PARITY_PROPERTY_EXAMPLES", "150"))
FAST = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=max(_EXAMPLES // 3, 20), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])

F64_MAX = sys.float_info.max
F32_MAX = float(np.finfo(np.float32).max)
F16_MAX = 65504.0
FLOAT_DTYPES = ["float16", "float32", "float64"]
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
EXACT_DTYPES = INT_DTYPES + ["bool"]
CHUNK = metrics._CHUNK  # parity's chunk length: the long tests straddle its boundaries


# -- building arrays ----------------------------------------------------------------------------
def cast(values, dtype) -> np.ndarray:
    """Python numbers -> an array of ``dtype``: floats round (overflowing to inf), integers clamp."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        with np.errstate(all="ignore"):  # the test's own casts, not parity's
            return np.array([float(v) for v in values], np.float64).astype(dtype)
    if dtype.kind == "b":
        return np.array([v == v and v != 0 for v in values], bool)
    info = np.iinfo(dtype)
    out = []
    for v in values:
        if isinstance(v, float):
            v = 0 if math.isnan(v) else (info.max if v > 0 else info.min) if math.isinf(v) else int(v)
        out.append(min(max(int(v), int(info.min)), int(info.max)))
    return np.array(out, dtype=dtype)


SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e38, -1e38, 9.9e37, -9.9e37, 3e38, -3e38,
           F32_MAX, -F32_MAX, F16_MAX, -F16_MAX, 65500.0, 6e4, F64_MAX, -F64_MAX, 1e300, 5e-324,
           1e-45, 6e-8, 1.0, -1.0, 0.1, 2.0]
VALUES = st.one_of(
    st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), st.floats(-2.0, 2.0),
    st.floats(allow_nan=True, allow_infinity=True),  # every magnitude up to float max
    st.floats(-1e-30, 1e-30), st.sampled_from(SPECIAL),
)
RELATIVE_NUDGES = st.sampled_from([0.0, 1e-9, -1e-6, 1e-4, -1e-3, 2e-3, -0.01, 0.5, -2.0])
ABSOLUTE_NUDGES = st.sampled_from([0.0, 0.0, 1e-7, -1e-4, 1e-3, -2e-3, 0.01, 1.0])
SHAPES = array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4).filter(lambda s: prod(s) <= 64)
TOLERANCES = st.one_of(
    st.just(Tolerance()),
    st.builds(Tolerance,
              atol=st.one_of(st.none(), st.sampled_from([0.0, 1e-6, 1e-3, 0.1])),
              rtol=st.sampled_from([0.0, 1e-5, 1e-3, 0.1]),
              atol_scale=st.sampled_from([0.0, 1e-3, 2e-3, 0.1])),
)


@st.composite
def float_cases(draw):
    """(reference, candidate): at least one float side; candidates equal, near or unrelated."""
    dr, dc = draw(st.one_of(
        st.tuples(st.sampled_from(FLOAT_DTYPES), st.sampled_from(FLOAT_DTYPES)),
        st.tuples(st.sampled_from(FLOAT_DTYPES), st.sampled_from(EXACT_DTYPES)),
        st.tuples(st.sampled_from(EXACT_DTYPES), st.sampled_from(FLOAT_DTYPES)),
    ))
    shape = draw(SHAPES)
    n = prod(shape)
    ref = draw(st.lists(VALUES, min_size=n, max_size=n))
    cand = []
    for v in ref:
        mode = draw(st.sampled_from(["same", "near", "near", "other"]))
        if mode == "same":
            cand.append(v)
        elif mode == "near":  # Python floats: overflow gives inf, as in numpy
            cand.append(v * (1 + draw(RELATIVE_NUDGES)) + draw(ABSOLUTE_NUDGES))
        else:
            cand.append(draw(VALUES))
    return cast(ref, dr).reshape(shape), cast(cand, dc).reshape(shape)


def exact_values(dtype):
    if np.dtype(dtype).kind == "b":
        return st.booleans()
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1, hi - 1, lo + 1]),
                     st.integers(max(lo, -3), 3))


@st.composite
def exact_cases(draw):
    """(reference, candidate): both integer or bool, same or mixed widths and signedness."""
    dr, dc = draw(st.sampled_from(EXACT_DTYPES)), draw(st.sampled_from(EXACT_DTYPES))
    shape = draw(SHAPES)
    n = prod(shape)
    ref = draw(st.lists(exact_values(dr), min_size=n, max_size=n))
    cand = []
    for v in ref:
        mode = draw(st.sampled_from(["same", "near", "other"]))
        if mode == "same":
            cand.append(int(v))
        elif mode == "near":
            cand.append(int(v) + draw(st.integers(-2, 2)))
        else:
            cand.append(int(draw(exact_values(dc))))
    return cast([int(v) for v in ref], dr).reshape(shape), cast(cand, dc).reshape(shape)


# -- the exact reference ------------------------------------------------------------------------
def mask_threshold(dtype) -> float:
    """Spec: |v| >= 1e38 as the dtype holds it (float32: 9.99999968e37), or inf, is a mask
    value; for float16, its largest finite value."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return math.inf
    if dtype == np.float16:
        return F16_MAX
    return float(np.asarray(1e38, dtype=dtype))


def element_class(x: float, threshold: float) -> str:
    if math.isnan(x):
        return "nan"
    if x >= threshold:
        return "+mask"
    if x <= -threshold:
        return "-mask"
    return "regular"


@dataclass
class Expected:
    n: int
    certain: int  # mismatches beyond doubt (class mismatches included)
    ambiguous: int  # regular pairs within 1e-12 of the tolerance's edge: either way is right
    class_mismatches: int
    masked_matched: int
    masked_reference: int
    masked_candidate: int
    nan_reference: int
    nan_candidate: int
    inf_reference: int
    inf_candidate: int
    absmax: float
    atol: Fraction
    measured: list  # (r, c, |c - r|) as Fractions


def expected_float(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> Expected:
    # compared in float64: integers become the nearest double, as any float64 conversion does
    rv = [float(x) for x in reference.reshape(-1).tolist()]
    cv = [float(x) for x in candidate.reshape(-1).tolist()]
    kr = [element_class(x, mask_threshold(reference.dtype)) for x in rv]
    kc = [element_class(x, mask_threshold(candidate.dtype)) for x in cv]
    absmax = max((abs(x) for x, k in zip(rv, kr) if k == "regular"), default=0.0)
    if tol.atol is not None:
        atol = Fraction(tol.atol)
    else:
        atol = Fraction(tol.atol_scale) * max(Fraction(1), Fraction(absmax))
    rtol, edge = Fraction(tol.rtol), Fraction(1, 10**12)
    certain = ambiguous = class_mismatches = matched = 0
    measured = []
    for x, y, a, b in zip(rv, cv, kr, kc):
        if a == "regular" and b == "regular":
            d = abs(Fraction(y) - Fraction(x))
            bound = atol + rtol * abs(Fraction(x))
            if d > bound * (1 + edge):
                certain += 1
            elif d > bound * (1 - edge):
                ambiguous += 1
            measured.append((Fraction(x), Fraction(y), d))
        elif a == b:
            matched += a != "nan"
        elif x == y:  # equal values match whatever their dtypes call them
            matched += 1
        else:
            class_mismatches += 1
            if math.isfinite(y - x):  # the difference in float64 is a number
                measured.append((Fraction(x), Fraction(y), abs(Fraction(y) - Fraction(x))))
    return Expected(
        n=len(rv), certain=certain + class_mismatches, ambiguous=ambiguous,
        class_mismatches=class_mismatches, masked_matched=matched,
        masked_reference=sum(k.endswith("mask") for k in kr),
        masked_candidate=sum(k.endswith("mask") for k in kc),
        nan_reference=sum(k == "nan" for k in kr), nan_candidate=sum(k == "nan" for k in kc),
        inf_reference=sum(math.isinf(x) for x in rv), inf_candidate=sum(math.isinf(x) for x in cv),
        absmax=absmax, atol=atol, measured=measured,
    )


def exact_cosine(pairs) -> tuple[float | None, Fraction | None]:
    """(cosine, ratio of the squared norms) over pairs of Fractions, exactly then one sqrt."""
    if not pairs:
        return None, None
    rr = sum((r * r for r, _, _ in pairs), Fraction(0))
    cc = sum((c * c for _, c, _ in pairs), Fraction(0))
    rc = sum((r * c for r, c, _ in pairs), Fraction(0))
    if rr == 0 and cc == 0:
        return 1.0, Fraction(1)
    if rr == 0 or cc == 0:
        return None, None
    value = math.sqrt(float(rc * rc / (rr * cc)))
    return (value if rc > 0 else -value) if rc else 0.0, max(rr, cc) / min(rr, cc)


def check_float(diff: TensorDiff, reference, candidate, tol: Tolerance) -> None:
    e = expected_float(reference, candidate, tol)
    assert diff.kind == "float" and diff.size == e.n
    assert e.certain <= diff.mismatch_count <= e.certain + e.ambiguous
    assert diff.passed is (diff.mismatch_count == 0)
    assert diff.mismatch_fraction == pytest.approx(diff.mismatch_count / e.n, rel=1e-15)
    counts = (diff.class_mismatches, diff.masked_matched, diff.masked_reference,
              diff.masked_candidate, diff.nan_reference, diff.nan_candidate,
              diff.inf_reference, diff.inf_candidate)
    assert counts == (e.class_mismatches, e.masked_matched, e.masked_reference, e.masked_candidate,
                      e.nan_reference, e.nan_candidate, e.inf_reference, e.inf_candidate)
    assert diff.atol == pytest.approx(float(e.atol), rel=1e-15, abs=0)
    if not e.measured and e.masked_matched == e.n:
        assert diff.reference_absmax is None
    else:
        assert diff.reference_absmax == e.absmax  # a max of doubles: exact
    loose = tol.atol is None and e.absmax > 0 and tol.atol_for(e.absmax) / e.absmax > 0.01
    assert any("small reference" in note for note in diff.notes) is loose
    if not e.measured:
        assert (diff.max_abs_diff, diff.mean_abs_diff, diff.max_rel_diff, diff.cosine) == (None,) * 4
        return
    ds = [d for _, _, d in e.measured]
    assert diff.max_abs_diff == pytest.approx(float(max(ds)), rel=1e-12, abs=0)
    total = sum(ds, Fraction(0))
    if total <= F64_MAX:  # a sum past float max: test_mean_of_huge_differences_is_finite
        # abs: a mean of subnormal differences rounds to the subnormal grid
        assert diff.mean_abs_diff == pytest.approx(float(total / len(ds)), rel=1e-12, abs=1e-300)
    rels = [d / abs(r) for r, _, d in e.measured if r]
    if not rels:
        assert diff.max_rel_diff in (0.0, None)
    elif max(rels) <= 1e300:
        assert diff.max_rel_diff == pytest.approx(float(max(rels)), rel=1e-12, abs=0)
    elif max(rels) > 2 * Fraction(F64_MAX):
        assert diff.max_rel_diff is None  # past float max: no finite figure
    cosine, spread = exact_cosine(e.measured)
    if diff.cosine is not None:
        assert -1.0 <= diff.cosine <= 1.0
    if cosine is None:
        assert diff.cosine is None
    else:
        assert diff.cosine == pytest.approx(cosine, abs=1e-9)


def check_exact(diff: TensorDiff, reference, candidate) -> None:
    rv = [int(x) for x in reference.reshape(-1).tolist()]
    cv = [int(x) for x in candidate.reshape(-1).tolist()]
    ds = [abs(c - r) for r, c in zip(rv, cv)]
    unequal = sum(d != 0 for d in ds)
    both_bool = reference.dtype.kind == candidate.dtype.kind == "b"
    assert diff.kind == ("bool" if both_bool else "integer") and diff.size == len(rv)
    assert type(diff.max_abs_diff) is int and diff.max_abs_diff == max(ds)
    assert diff.mismatch_count == unequal and diff.passed is (unequal == 0)
    assert diff.exact_match_fraction == pytest.approx(1 - unequal / len(rv), rel=1e-15)
    assert diff.mean_abs_diff == pytest.approx(float(Fraction(sum(ds), len(ds))), rel=1e-12)
    assert diff.reference_absmax == max(abs(r) for r in rv)
    assert diff.cosine is None and diff.class_mismatches == 0


# -- metrics: properties ------------------------------------------------------------------------
@FAST
@given(case=float_cases(), tol=TOLERANCES)
def test_float_figures_match_the_exact_reference(case, tol):
    reference, candidate = case
    check_float(TensorDiff.from_arrays("t", reference, candidate, tol), reference, candidate, tol)


@FAST
@given(case=exact_cases())
def test_integer_and_bool_figures_are_exact(case):
    reference, candidate = case
    check_exact(TensorDiff.from_arrays("t", reference, candidate), reference, candidate)


@FAST
@given(case=st.one_of(float_cases(), exact_cases()))
def test_swapping_sides_keeps_the_symmetric_figures(case):
    reference, candidate = case
    ab = TensorDiff.from_arrays("t", reference, candidate)
    ba = TensorDiff.from_arrays("t", candidate, reference)
    assert ab.max_abs_diff == ba.max_abs_diff and type(ab.max_abs_diff) is type(ba.max_abs_diff)
    assert ab.mean_abs_diff == ba.mean_abs_diff
    assert ab.cosine == ba.cosine
    assert (ab.class_mismatches, ab.masked_matched) == (ba.class_mismatches, ba.masked_matched)
    assert (ab.masked_reference, ab.nan_reference, ab.inf_reference) == (
        ba.masked_candidate, ba.nan_candidate, ba.inf_candidate)
    if ab.kind != "float":
        assert ab.mismatch_count == ba.mismatch_count  # exact equality is symmetric


@FAST
@given(case=st.one_of(float_cases(), exact_cases()), tol=TOLERANCES)
def test_identical_arrays_always_pass(case, tol):
    reference, _ = case
    diff = TensorDiff.from_arrays("t", reference, reference.copy(), tol)
    assert diff.passed and diff.mismatch_count == 0 and diff.class_mismatches == 0
    assert diff.max_abs_diff in (0, None)
    if diff.cosine is not None:
        assert diff.cosine == 1.0


def regular_arrays(dtype, max_size=64):
    """Nonzero arrays of regular values (no mask, NaN or inf) up to just below the mask edge."""
    limit = float(np.nextafter(np.float16(F16_MAX), np.float16(0))) if dtype == "float16" else 9.99e37
    values = st.one_of(st.floats(-limit, limit), st.sampled_from([limit, -limit, 1.0, 0.0, 1e-30]))
    def regular_nonzero(a):  # a float16 cast may round up onto the mask edge
        return bool(np.any(a)) and bool(np.all(np.abs(a.astype(np.float64)) < mask_threshold(dtype)))

    return st.lists(values, min_size=1, max_size=max_size).map(lambda v: cast(v, dtype)).filter(regular_nonzero)


@FAST
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES))
def test_cosine_of_x_with_itself_is_1_and_with_minus_x_is_minus_1(data, dtype):
    x = data.draw(regular_arrays(dtype))
    same = TensorDiff.from_arrays("t", x, x.copy())
    opposite = TensorDiff.from_arrays("t", x, -x)
    assert same.cosine == pytest.approx(1.0, abs=1e-12) and same.passed
    assert opposite.cosine == pytest.approx(-1.0, abs=1e-12)
    assert opposite.masked_reference == opposite.class_mismatches == 0
    assert opposite.max_abs_diff == pytest.approx(2 * float(np.abs(x.astype(np.float64)).max()), rel=1e-12)


@FAST
@given(case=float_cases(), a=st.integers(-4, 4), b=st.integers(-4, 4))
def test_cosine_is_in_range_and_invariant_under_positive_scaling(case, a, b):
    reference, candidate = (x.astype(np.float64) for x in case)
    for x in (reference, candidate):
        x[~(np.abs(x) < 1e30)] = 1.0  # regular values only, so scaling keeps every class
        x[np.abs(x) < 1e-250] = 0.0  # and never rounds into subnormals
    base = TensorDiff.from_arrays("t", reference, candidate).cosine
    scaled = TensorDiff.from_arrays("t", reference * 2.0**a, candidate * 2.0**b).cosine
    if base is None:
        assert scaled is None
    else:
        assert -1.0 <= base <= 1.0
        assert scaled == pytest.approx(base, abs=1e-9)


@QUICK
@given(shape=array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=3).filter(lambda s: 0 in s),
       dr=st.sampled_from(FLOAT_DTYPES + EXACT_DTYPES), dc=st.sampled_from(FLOAT_DTYPES + EXACT_DTYPES))
def test_zero_size_arrays_are_empty_and_pass(shape, dr, dc):
    diff = TensorDiff.from_arrays("t", np.zeros(shape, dr), np.ones(shape, dc))
    assert (diff.kind, diff.passed, diff.size, diff.mismatch_count) == ("empty", True, 0, 0)
    with pytest.raises(ValueError, match="shapes differ"):
        TensorDiff.from_arrays("t", np.zeros(shape, dr), np.zeros(shape + (1,), dc))


# -- metrics: chunk boundaries (arrays longer than one chunk) ---------------------------------
def test_figures_across_chunks_with_masks_nan_and_a_late_tolerance_scale():
    n = 2 * CHUNK + 100
    rng = np.random.default_rng(0)
    r = rng.standard_normal(n).astype(np.float32)
    c = (r + rng.standard_normal(n).astype(np.float32) * np.float32(1e-5)).astype(np.float32)
    r[2 * CHUNK + 50] = c[2 * CHUNK + 50] = 50.0  # max|r| is in the last chunk: atol = 0.1
    c[10] = r[10] + np.float32(0.05)  # passes only with the global scale
    for i in (CHUNK - 1, CHUNK, 2 * CHUNK - 1, 2 * CHUNK):
        c[i] = r[i] + np.float32(1.0)  # failures on both sides of each boundary
    r[CHUNK - 5:CHUNK - 2] = c[CHUNK - 5:CHUNK - 2] = -F32_MAX  # matched masks
    r[CHUNK + 2:CHUNK + 4] = c[CHUNK + 2:CHUNK + 4] = np.inf
    r[CHUNK + 100] = c[CHUNK + 100] = np.nan
    c[2 * CHUNK - 100] = np.inf  # a class mismatch, left out of the figures
    diff = TensorDiff.from_arrays("t", r, c)
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    edge = float(np.float32(1e38))
    regular = (np.abs(r64) < edge) & (np.abs(c64) < edge)
    d = np.abs(c64[regular] - r64[regular])
    assert diff.reference_absmax == 50.0 and diff.atol == pytest.approx(0.1)
    assert diff.mismatch_count == 5 and diff.class_mismatches == 1
    assert (diff.masked_matched, diff.masked_reference, diff.masked_candidate) == (5, 5, 6)
    assert (diff.nan_reference, diff.inf_reference, diff.inf_candidate) == (1, 2, 3)
    assert diff.max_abs_diff == pytest.approx(d.max(), rel=1e-12)
    assert diff.mean_abs_diff == pytest.approx(math.fsum(d) / d.size, rel=1e-12)
    rr, cc = r64[regular], c64[regular]
    cosine = math.fsum(rr * cc) / math.sqrt(math.fsum(rr * rr) * math.fsum(cc * cc))
    assert diff.cosine == pytest.approx(cosine, abs=1e-9)


def test_a_mask_in_the_candidate_alone_past_the_first_chunk_is_a_class_mismatch():
    # a chunk reads the candidate's own extremes only where |r| and |c - r| cannot bound them:
    # a mask value on the candidate's side alone, in a chunk whose reference is regular
    rng = np.random.default_rng(2)
    r = rng.standard_normal(3 * CHUNK).astype(np.float32)
    for where, mask, dtype in ((2 * CHUNK + 7, -F32_MAX, np.float32), (CHUNK + 3, 65504.0, np.float16)):
        c = r.astype(dtype)
        c[where] = mask
        diff = TensorDiff.from_arrays("t", r, c)
        assert not diff.passed and diff.mismatch_count == 1
        assert (diff.masked_candidate, diff.class_mismatches, diff.masked_reference) == (1, 1, 0)
        assert diff.max_abs_diff == abs(float(mask) - float(r[where]))


def test_cosine_across_chunks_whose_magnitudes_grow_by_1e30():
    rng = np.random.default_rng(1)
    scales = np.repeat([1e-30, 1.0, 1e30], CHUNK)
    r = (rng.standard_normal(3 * CHUNK) * scales).astype(np.float32)
    c = (r * (1 + rng.standard_normal(3 * CHUNK) * 1e-3)).astype(np.float32)
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    cosine = math.fsum(r64 * c64) / math.sqrt(math.fsum(r64 * r64) * math.fsum(c64 * c64))
    diff = TensorDiff.from_arrays("t", r, c)
    assert diff.cosine == pytest.approx(cosine, abs=1e-9)
    assert TensorDiff.from_arrays("t", r, -r).cosine == -1.0
    big = np.tile(np.float32([9.9e37, -5e37, 1e-3]), CHUNK)  # just below the mask edge
    assert TensorDiff.from_arrays("t", big, -big).cosine == pytest.approx(-1.0, abs=1e-12)


def test_exact_integers_across_chunks_mixing_uint64_and_int64():
    n = max(2 * CHUNK, 1 << 16) + 10
    r = np.arange(n, dtype=np.uint64)
    c = np.arange(n, dtype=np.int64)
    r[n - 3] = 2**64 - 1
    c[n - 3] = -5  # only the last chunk needs Python ints: 2**64 + 4
    c[7] = 8  # one off in the first chunk
    diff = TensorDiff.from_arrays("t", r, c)
    assert diff.max_abs_diff == 2**64 + 4 and type(diff.max_abs_diff) is int
    assert diff.mismatch_count == 2 and diff.reference_absmax == 2**64 - 1
    assert diff.mean_abs_diff == pytest.approx((2**64 + 5) / n, rel=1e-12)


def test_identical_masked_tensor_over_chunks_passes():
    r = np.tile(np.float32([1.0, -F32_MAX, 2.0, np.inf, np.nan]), CHUNK // 2)
    diff = TensorDiff.from_arrays("t", r, r.copy())
    assert diff.passed and diff.masked_matched == 2 * (CHUNK // 2)
    assert diff.reference_absmax == 2.0 and diff.max_abs_diff == 0.0


# -- metrics: regressions (wrong numbers found by users) ----------------------------------------
def test_a_float32_min_attention_mask_does_not_hide_a_shift_of_half():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4, 64)).astype(np.float32)
    reference[:, 32:] = np.float32(-3.4028235e38)
    candidate = reference.copy()
    candidate[:, :32] += np.float32(0.5)
    diff = TensorDiff.from_arrays("attention", reference, candidate)
    assert diff.passed is False
    assert diff.mismatch_count == 128
    assert diff.reference_absmax < 10
    assert diff.masked_matched == 128 and diff.class_mismatches == 0
    assert diff.max_abs_diff == pytest.approx(0.5, rel=1e-6)


def test_opposite_vectors_of_magnitude_1e38_have_cosine_minus_1():
    x = np.float32([9.98e37, -9.98e37, 5e37, 1.0, -3e37, 9.9e37])  # each below float32(1e38)
    diff = TensorDiff.from_arrays("t", x, -x)
    assert diff.masked_reference == 0 and diff.class_mismatches == 0
    assert diff.cosine == pytest.approx(-1.0, abs=1e-12)
    assert diff.passed is False


def test_opposite_masks_give_finite_figures_and_fail():
    diff = TensorDiff.from_arrays("t", np.float32([3e38, 3e38]), np.float32([-3e38, -3e38]))
    assert diff.passed is False and diff.class_mismatches == 2
    for figure in (diff.max_abs_diff, diff.mean_abs_diff, diff.max_rel_diff):
        assert figure is not None and math.isfinite(figure)
    assert diff.max_abs_diff == pytest.approx(6e38, rel=1e-7)


def test_uint64_max_against_zero_differs_by_exactly_2_to_the_64_minus_1():
    diff = TensorDiff.from_arrays("t", np.array([2**64 - 1], np.uint64), np.array([0], np.uint64))
    assert diff.max_abs_diff == 18446744073709551615 and type(diff.max_abs_diff) is int
    assert diff.passed is False


def test_int64_min_against_zero_differs_by_exactly_2_to_the_63():
    diff = TensorDiff.from_arrays("t", np.array([np.iinfo(np.int64).min]), np.array([0], np.int64))
    assert diff.max_abs_diff == 2**63 and type(diff.max_abs_diff) is int
    mixed = TensorDiff.from_arrays("t", np.array([np.iinfo(np.int64).min]), np.array([0], np.uint8))
    assert mixed.max_abs_diff == 2**63


def test_a_small_reference_gets_a_note_that_the_default_atol_is_loose():
    reference = np.float32([0.1, -0.05, 0.02])
    diff = TensorDiff.from_arrays("t", reference, reference.copy())
    assert diff.passed and diff.reference_absmax == pytest.approx(0.1)
    note = Tolerance().looseness(diff.reference_absmax)
    assert note and "loose" in note and note in diff.notes
    assert Tolerance(atol=1e-4).looseness(0.1) is None  # an explicit atol is what was asked
    assert Tolerance().looseness(1.0) is None
    explicit = TensorDiff.from_arrays("t", reference, reference.copy(), Tolerance(atol=1e-4))
    assert not any("loose" in n for n in explicit.notes)


def test_tiny_magnitudes_keep_the_cosine_exact():
    """Values far below 1 must neither overflow a rescale factor nor underflow |r|^2 |c|^2
    (an OverflowError and a ZeroDivisionError while metrics.py was being reworked)."""
    x = np.float64([3.69485519e-92])
    assert TensorDiff.from_arrays("t", x, x.copy()).cosine == 1.0
    assert TensorDiff.from_arrays("t", x, -x).cosine == -1.0
    lone = TensorDiff.from_arrays("t", np.float64([0.0]), np.float64([1.93e-163]))
    assert lone.cosine is None and lone.max_abs_diff == 1.93e-163  # one side all zero
    tiny = np.float64([1e-300, -2e-300, 5e-324])
    assert TensorDiff.from_arrays("t", tiny, tiny * 2).cosine == pytest.approx(1.0, abs=1e-9)


# -- metrics: wrong numbers these tests found (regressions) --------------------------------------
# cosine lost precision when the norms differed greatly ((|r|^2 + |c|^2 - |c-r|^2) cancelled,
# and a tiny side's squares underflowed)
@pytest.mark.parametrize("reference, candidate, cosine", [
    (np.float64([1, 2, 3]), np.float64([1, 2, 3]) * 1e10, 1.0),  # gives ~0.9999998
    (np.float32([1e-19, 2e-19, 3e-19]), np.float32([10, 20, 30]), 1.0),  # gives 0.0
    (np.float64([1e-9, 0.0]), np.float64([1.0, 1.0]), 2**-0.5),  # gives 0.70710676
    (np.float64([1e-300]), np.float64([1.0]), 1.0),  # gives None
], ids=["x-vs-1e10x", "f32-ratio-1e20", "ratio-1e9", "underflow"])
def test_cosine_with_very_different_norms(reference, candidate, cosine):
    assert TensorDiff.from_arrays("t", reference, candidate).cosine == pytest.approx(cosine, abs=1e-9)


# mean_abs_diff summed the differences in float64, so a sum past float max made a finite mean None
def test_mean_of_huge_differences_is_finite():
    diff = TensorDiff.from_arrays("t", np.float64([1.7e308, 1.7e308]), np.float64([0.0, 0.0]))
    assert diff.max_abs_diff == 1.7e308  # measured: class-mismatched pairs with a finite difference
    assert diff.mean_abs_diff == pytest.approx(1.7e308, rel=1e-12)


# -- align ---------------------------------------------------------------------------------------
def to_nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose((0,) + tuple(range(2, x.ndim)) + (1,))


def pack_nc4hw4(x: np.ndarray) -> np.ndarray:
    """N, C/4, spatial..., 4: channels in zero-padded blocks of 4."""
    n, c = x.shape[:2]
    blocks = -(-c // 4)
    out = np.zeros((n, blocks) + x.shape[2:] + (4,), x.dtype)
    for channel in range(c):
        out[:, channel // 4, ..., channel % 4] = x[:, channel]
    return out


def read_as(kind: str, flat: np.ndarray, shape: tuple) -> np.ndarray | None:
    """The test's own reading of a flat buffer in a layout, or None when the size does not fit."""
    n, c, spatial = shape[0], shape[1], tuple(shape[2:])
    if kind in ("reshape", "nhwc") and flat.size != prod(shape):
        return None
    if kind == "reshape":
        return flat.reshape(shape)
    if kind == "nhwc":
        return np.moveaxis(flat.reshape((n,) + spatial + (c,)), -1, 1)
    blocks = -(-c // 4)
    if flat.size != n * blocks * 4 * prod(spatial):
        return None
    packed = flat.reshape((n, blocks) + spatial + (4,))
    out = np.empty(shape, flat.dtype)
    for channel in range(c):
        out[:, channel] = packed[:, channel // 4, ..., channel % 4]
    return out


def step_kind(step: str) -> str:
    for prefix, kind in (("reshape ", "reshape"), ("nhwc -> nchw", "nhwc"), ("nc4hw4 -> nchw", "nc4hw4")):
        if step.startswith(prefix):
            return kind
    raise AssertionError(f"unknown step {step!r}")


NCHW_SHAPES = st.lists(st.integers(1, 5), min_size=3, max_size=5).map(
    lambda s: (min(s[0], 2),) + tuple(s[1:])).filter(lambda s: prod(s) <= 300)


def distinct_values(shape, seed) -> np.ndarray:
    """Values 1 apart, so any misplaced element fails the default tolerance (size <= 300)."""
    size = prod(shape)
    values = np.random.default_rng(seed).permutation(size) - size // 2
    return values.astype(np.float32).reshape(shape)


@FAST
@given(shape=NCHW_SHAPES, seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["flat", "nhwc flat", "nhwc kept", "nc4hw4 flat", "nc4hw4 kept"]))
def test_a_candidate_in_another_layout_is_found_and_named(shape, seed, layout):
    reference = distinct_values(shape, seed)
    intended, candidate = {
        "flat": ("reshape", reference.reshape(-1)),
        "nhwc flat": ("nhwc", to_nhwc(reference).reshape(-1)),
        "nhwc kept": ("nhwc", to_nhwc(reference)),
        "nc4hw4 flat": ("nc4hw4", pack_nc4hw4(reference).reshape(-1)),
        "nc4hw4 kept": ("nc4hw4", pack_nc4hw4(reference)),
    }[layout]
    candidate = np.ascontiguousarray(candidate)
    judged, diff = diff_tensors("t", reference, candidate, Tolerance())
    if candidate.shape == reference.shape:  # read only as it is
        assert judged.alignment.steps == ()
        assert diff.passed is np.array_equal(candidate, reference)
        return
    flat = candidate.reshape(-1)
    fitting = {k for k in ("reshape", "nhwc", "nc4hw4")
               if (a := read_as(k, flat, shape)) is not None and np.array_equal(a, reference)}
    assert intended in fitting
    assert diff.passed, judged.alignment.steps
    (step,) = judged.alignment.steps
    assert step_kind(step) in fitting
    np.testing.assert_array_equal(judged.alignment.array, reference)


@FAST
@given(shape=NCHW_SHAPES, seed=st.integers(0, 2**32 - 1))
def test_same_shape_is_reread_only_when_asked(shape, seed):
    reference = distinct_values(shape, seed)
    candidate = reference[::-1].copy()  # same shape, other values
    only = list(layouts(reference, candidate))
    assert len(only) == 1 and only[0].steps == () and only[0].array is candidate
    again = list(layouts(reference, candidate, reread_same_shape=True))
    assert again[0].steps == ()
    expected = 1 + (channels_last_shape(shape) is not None) + (nc4hw4_size(shape) == prod(shape))
    assert len(again) == expected
    if shape[1] % 4 == 0:  # the classic misread: an NC4HW4 buffer given the NCHW shape
        misread = pack_nc4hw4(reference).reshape(shape)
        as_is = diff_tensors("t", reference, misread, Tolerance())[1]
        assert as_is.passed is np.array_equal(misread, reference)
        judged, diff = diff_tensors("t", reference, misread, Tolerance(), reread_same_shape=True)
        assert diff.passed
        if not np.array_equal(misread, reference):  # (one spatial element: the same memory)
            assert step_kind(judged.alignment.steps[0]) in ("nhwc", "nc4hw4")


@FAST
@given(shape=array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=5).filter(lambda s: prod(s) <= 300),
       size=st.integers(0, 700), dtype=st.sampled_from(["float16", "float32", "float64", "int32"]))
def test_wrong_sizes_raise_with_the_explanation(shape, size, dtype):
    reference = np.zeros(shape, np.float32)
    assume(size not in (prod(shape), nc4hw4_size(shape)))
    candidate = np.zeros(size, dtype)
    assert list(layouts(reference, candidate)) == []
    with pytest.raises(AlignmentError) as raised:
        diff_tensors("t", reference, candidate, Tolerance())
    assert str(raised.value) == explain_size(reference, candidate)
    assert f"{prod(shape)} " in str(raised.value) or f"{prod(shape)}," in str(raised.value)


def test_explain_size_names_the_usual_reasons():
    ref = np.zeros((2, 3, 4), np.float32)
    assert "float16 data read as float32" in explain_size(ref, np.zeros(12, np.float32))
    assert "float32 data read as float16" in explain_size(ref, np.zeros(48, np.float16))
    assert "same bytes" in explain_size(ref, np.zeros(12, np.float64))
    assert "larger batch" in explain_size(ref, np.zeros(72, np.float32))
    assert "truncated copy" in explain_size(ref, np.zeros(8, np.float32))
    assert "element count differs" in explain_size(ref, np.zeros(25, np.float32))


@FAST
@given(shape=NCHW_SHAPES, seed=st.integers(0, 2**32 - 1))
def test_nc4hw4_round_trip_and_sizes(shape, seed):
    x = distinct_values(shape, seed)
    packed = pack_nc4hw4(x)
    assert nc4hw4_size(shape) == packed.size
    np.testing.assert_array_equal(unpack_nc4hw4(packed.reshape(-1), shape), x)
    last = channels_last_shape(shape)
    nhwc = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    same_memory = shape[1] == 1 or prod(shape[2:]) == 1  # channels-last moves nothing
    assert last == (None if same_memory else nhwc)
    assert nc4hw4_size(shape[:2]) is None and channels_last_shape(shape[:2]) is None


@FAST
@given(shape=NCHW_SHAPES, seed=st.integers(0, 2**32 - 1),
       scores=st.lists(st.floats(0, 10), min_size=3, max_size=3))
def test_best_alignment_takes_the_first_pass_else_the_lowest_score(shape, seed, scores):
    reference = distinct_values(shape, seed)
    candidate = reference.reshape(-1).astype(np.float16)
    options = list(layouts(reference, candidate))
    seen = []

    def never(array):
        seen.append(array)
        return False, scores[len(seen) - 1], len(seen) - 1

    judged = best_alignment(reference, candidate, never)
    assert len(seen) == len(options)
    lowest = min(range(len(options)), key=lambda i: scores[i])  # first of equal scores
    assert judged.judgement == lowest and judged.passed is False
    assert judged.alignment.steps[-1] == "dtype float16 vs float32 (compared as float64)"
    first = best_alignment(reference, candidate, lambda a: (True, 99.0, "ok"))
    assert first.passed and first.alignment.steps[0] == options[0].steps[0]


NAMES = st.sampled_from(["a", "b", "c", "d", "logits", "out0", "out1"])


@FAST
@given(reference=st.lists(NAMES, unique=True, max_size=5), candidate=st.lists(NAMES, unique=True, max_size=5))
def test_pair_outputs_pairs_by_name_then_by_order(reference, candidate):
    pairing = pair_outputs(reference, candidate)
    paired_ref = [p.reference_name for p in pairing.pairs]
    paired_cand = [p.candidate_name for p in pairing.pairs]
    assert paired_ref == [n for n in reference if n in paired_ref]  # reference order
    assert sorted(paired_ref + list(pairing.missing_in_candidate)) == sorted(reference)
    assert sorted(paired_cand + list(pairing.extra_in_candidate)) == sorted(candidate)
    common = set(reference) & set(candidate)
    for p in pairing.pairs:
        assert p.name == p.reference_name
        assert (p.how == "name") is (p.reference_name in common)
        if p.how == "name":
            assert p.candidate_name == p.reference_name
    left_ref = [n for n in reference if n not in common]
    left_cand = [n for n in candidate if n not in common]
    if left_ref and len(left_ref) == len(left_cand):
        assert [(p.reference_name, p.candidate_name) for p in pairing.pairs if p.how == "order"] == list(
            zip(left_ref, left_cand))
        assert pairing.missing_in_candidate == pairing.extra_in_candidate == ()
    else:
        assert all(p.how == "name" for p in pairing.pairs)


# channels_last_shape returned None when the NHWC shape reads like the NCHW one, (2, 3, 3),
# though the data is transposed: a flat NHWC candidate was never tried as NHWC
@pytest.mark.parametrize("shape", [(2, 3, 3), (1, 2, 2, 2)])
def test_channels_last_when_shapes_read_alike(shape):
    reference = np.arange(prod(shape), dtype=np.float32).reshape(shape)
    candidate = to_nhwc(reference).reshape(-1)
    judged, diff = diff_tensors("t", reference, candidate, Tolerance())
    assert diff.passed and step_kind(judged.alignment.steps[0]) == "nhwc"


# -- judge ---------------------------------------------------------------------------------------
@FAST
@given(case=st.one_of(float_cases(), exact_cases()), tol=TOLERANCES,
       layer_rtol=st.sampled_from([0.0, 1e-3, 1e-2, 0.1, 1e9]))
def test_layer_rule(case, tol, layer_rtol):
    reference, candidate = case
    diff = TensorDiff.from_arrays("t", reference, candidate, tol)
    verdict = layer_passes(diff, tol, layer_rtol)
    if diff.kind != "float":
        assert verdict is diff.passed
    elif diff.class_mismatches:
        assert verdict is False  # whatever layer_rtol
    elif diff.max_abs_diff is None:
        assert verdict is diff.passed
    else:
        absmax = diff.reference_absmax or 0.0
        assert verdict is (diff.max_abs_diff <= tol.atol_for(absmax) + layer_rtol * absmax)
        if diff.passed and layer_rtol >= tol.rtol:
            assert verdict  # the element rule is the stricter one
    error = scaled_error(diff)
    if diff.max_abs_diff is None:
        assert error is None
    else:
        scale = max(float(diff.reference_absmax or 0), 1e-12)
        assert error == pytest.approx(float(diff.max_abs_diff) / scale)


def test_layer_rule_fails_any_class_mismatch_and_passes_empty():
    diff = TensorDiff.from_arrays("t", np.float32([1.0, 2.0]), np.float32([1.0, np.nan]))
    assert diff.class_mismatches == 1 and diff.max_abs_diff == 0.0
    assert layer_passes(diff, Tolerance(atol=1e9), 1e9) is False
    masked = TensorDiff.from_arrays("t", np.float32([1.0, -3e38]), np.float32([1.0, 0.0]))
    assert layer_passes(masked, Tolerance(atol=1e9), 1e9) is False
    empty = TensorDiff.from_arrays("t", np.zeros((0, 2)), np.zeros((0, 2)))
    assert layer_passes(empty, Tolerance(), 0.0) is True


def output(name: str, passed: bool) -> OutputComparison:
    return OutputComparison(name=name, reference_name=name, candidate_name=name, passed=passed,
                            max_abs_diff=0.0 if passed else 1.5, mismatch_fraction=0.0 if passed else 0.25,
                            mismatch_count=0 if passed else 2, size=8, reference_absmax=3.0,
                            kind="float")


def layer(name: str, passed: bool) -> LayerResult:
    return LayerResult(name=name, reference_name=name, candidate_name=name, op_type="Conv",
                       candidate_op_type=None, module=None, passed=passed,
                       max_abs_diff=0.0 if passed else 0.7, max_rel_diff=None, cosine=1.0,
                       mismatch_fraction=0.0, scaled_error=0.0 if passed else 0.2,
                       reference_absmax=3.5, reference_shape=(1, 4), candidate_shape=(1, 4))


LINKS = [("torch", "onnxruntime"), ("onnxruntime", "mnn"), ("torch", "mnn")]


@st.composite
def chains(draw):
    comparisons = []
    links = draw(st.lists(st.sampled_from(LINKS), min_size=1, max_size=3))
    for i, (ref, cand) in enumerate(links):
        outputs = tuple(output(f"out{i}_{j}", p)
                        for j, p in enumerate(draw(st.lists(st.booleans(), min_size=1, max_size=3))))
        flags = draw(st.none() | st.lists(st.booleans(), max_size=4))
        layers = None if flags is None else tuple(layer(f"layer{i}_{j}", p) for j, p in enumerate(flags))
        divergence = None
        if draw(st.booleans()):
            divergence = FirstDivergence(
                name=f"div{i}", op_type="Conv", candidate_op_type=None, nodes=(f"/conv{i}",),
                module=draw(st.sampled_from([None, "blocks.0"])), inputs=(), max_abs_diff=1.0,
                scaled_error=0.1, local_max_abs_diff=None, local_scaled_error=None,
                introduced_here=None, summary=f"diverges at div{i}")
        comparisons.append(Comparison(ref, cand, all(o.passed for o in outputs), outputs,
                                      layers=layers, first_divergence=divergence))
    return comparisons


@FAST
@given(comparisons=chains(), fail_on_layers=st.booleans())
def test_the_first_failing_link_decides_the_verdict(comparisons, fail_on_layers):
    verdict = verdict_for(comparisons, fail_on_layers=fail_on_layers)
    failing = [c for c in comparisons if any(not o.passed for o in c.outputs)]
    flagged = [c for c in comparisons if c.layers and any(not x.passed for x in c.layers)]
    findings = layer_only_findings(comparisons)
    quiet = [c for c in flagged if c.passed]  # outputs all pass, some layer does not
    assert len(findings) == len(quiet)
    for sentence, c in zip(findings, quiet):
        first_layer = next(x for x in c.layers if not x.passed)
        assert "layer-only finding" in sentence and f"{c.reference} -> {c.candidate}" in sentence
        assert first_layer.name in sentence
    if failing:
        first = failing[0]
        link = f"{first.reference} -> {first.candidate}"
        first_output = next(o for o in first.outputs if not o.passed)
        expected = "export" if (first.reference, first.candidate) == ("torch", "onnxruntime") else "mismatch"
        assert verdict.kind == expected
        assert link in verdict.where and repr(first_output.name) in verdict.summary
        if first.first_divergence is not None:
            assert first.first_divergence.name in verdict.where
        else:
            assert repr(first_output.name) in verdict.where
        assert "layer-only" not in verdict.summary
    elif flagged:
        c = flagged[0]
        first_layer = next(x for x in c.layers if not x.passed)
        assert verdict.kind == ("mismatch" if fail_on_layers else "pass")
        assert first_layer.name in verdict.summary
        if fail_on_layers:
            assert first_layer.name in verdict.where and "--fail-on-layers" in verdict.summary
        else:
            assert verdict.where is None and "layer-only finding" in verdict.summary
    else:
        assert verdict.kind == "pass" and verdict.where is None
        assert "layer-only" not in verdict.summary


def test_a_torch_to_onnxruntime_failure_is_the_export_even_when_mnn_fails_too():
    export = Comparison("torch", "onnxruntime", False, (output("y", False),))
    mnn = Comparison("onnxruntime", "mnn", False, (output("y", False),))
    assert verdict_for([export, mnn]).kind == "export"
    fine = Comparison("torch", "onnxruntime", True, (output("y", True),))
    assert verdict_for([fine, mnn]).kind == "mismatch"


def test_passing_outputs_with_a_failing_layer_is_a_layer_only_finding():
    c = Comparison("onnxruntime", "mnn", True, (output("y", True),),
                   layers=(layer("conv1", True), layer("conv2", False)))
    verdict = verdict_for([c])
    assert verdict.kind == "pass" and "layer-only finding" in verdict.summary
    assert "conv2" in verdict.summary
    strict = verdict_for([c], fail_on_layers=True)
    assert strict.kind == "mismatch" and "conv2" in strict.where
    (finding,) = layer_only_findings([c])
    assert "onnxruntime -> mnn" in finding and "1 of 2 layers" in finding


@QUICK
@given(names=st.lists(NAMES, unique=True, min_size=1, max_size=4), data=st.data(),
       reference_name=st.sampled_from(["torch", "onnxruntime"]))
def test_compare_outputs_reports_every_reference_output_once(names, data, reference_name):
    rng = np.random.default_rng(0)
    reference = {n: rng.standard_normal((1, 4, 2, 2)).astype(np.float32) for n in names}
    candidate = {}
    for n in names:
        fate = data.draw(st.sampled_from(["same", "shifted", "flat", "renamed", "dropped", "bad size"]))
        if fate == "same":
            candidate[n] = reference[n].copy()
        elif fate == "shifted":
            candidate[n] = reference[n] + np.float32(1.0)
        elif fate == "flat":
            candidate[n] = reference[n].reshape(-1).copy()
        elif fate == "renamed":
            candidate[n + "_x"] = reference[n].copy()
        elif fate == "bad size":
            candidate[n] = np.zeros(5, np.float32)
    result = compare_outputs(reference, candidate, Tolerance(), reference_name=reference_name,
                             candidate_name="mnn")
    pairing = pair_outputs(list(reference), list(candidate))
    assert sorted(o.reference_name for o in result.outputs) == sorted(names)
    assert result.passed is all(o.passed for o in result.outputs)
    assert len(result.notes) == len(pairing.extra_in_candidate)
    for o in result.outputs:
        if o.candidate_name is None or o.error:
            assert o.passed is False and o.error
            continue
        ref, cand = reference[o.reference_name], candidate[o.candidate_name]
        aligned = cand.reshape(ref.shape)
        assert o.passed is bool(np.array_equal(aligned, ref))
        assert o.name == (o.candidate_name if reference_name == "torch" else o.reference_name)
        if o.candidate_name != o.reference_name:
            assert o.alignment[0].startswith("paired by order")
