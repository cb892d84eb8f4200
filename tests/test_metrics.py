"""Metrics against numpy's own definitions (isclose, norms), including NaN/Inf and integers."""

from pathlib import Path

import numpy as np
import pytest

from parity.core.metrics import TensorDiff, Tolerance


@pytest.mark.parametrize("size", [10, 3_000_001])  # one chunk and several
def test_float_figures_match_numpy(size):
    rng = np.random.default_rng(1)
    r = rng.standard_normal(size).astype(np.float32)
    c = (r + rng.standard_normal(size).astype(np.float32) * 3e-3).astype(np.float32)
    tol = Tolerance(atol=1e-3, rtol=1e-3)
    d = TensorDiff.from_arrays("t", r, c, tol)
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    diff = np.abs(c64 - r64)
    assert d.max_abs_diff == pytest.approx(diff.max())
    assert d.mean_abs_diff == pytest.approx(diff.mean())
    assert d.max_rel_diff == pytest.approx((diff / np.abs(r64)).max())
    cos = r64 @ c64 / np.linalg.norm(r64) / np.linalg.norm(c64)
    assert d.cosine == pytest.approx(cos, abs=1e-9)
    expected_bad = np.count_nonzero(~np.isclose(c64, r64, atol=1e-3, rtol=1e-3))
    assert d.mismatch_count == expected_bad > 0
    assert d.passed is False
    assert TensorDiff.from_arrays("t", r, c, Tolerance(atol=0.05, rtol=0)).passed


def test_nan_and_inf_rules():
    r = np.array([1.0, np.nan, np.inf, 2.0, np.nan], np.float32)
    c = np.array([1.0, np.nan, np.inf, np.nan, 0.0], np.float32)
    d = TensorDiff.from_arrays("t", r, c)
    assert (d.nan_reference, d.nan_candidate, d.inf_reference, d.inf_candidate) == (2, 2, 1, 1)
    assert d.mismatch_count == 2  # 2.0 vs NaN, NaN vs 0.0
    assert d.max_abs_diff == 0.0  # over finite pairs only
    assert any("NaN values" in n for n in d.notes) and any("mask values" in n for n in d.notes)
    assert (d.masked_matched, d.class_mismatches) == (1, 2)


def test_integer_outputs_are_exact():
    r = np.array([1, 2, 3, 4], np.int64)
    d = TensorDiff.from_arrays("t", r, np.array([1, 2, 3, 5], np.int32))
    assert d.kind == "integer" and not d.passed
    assert d.exact_match_fraction == 0.75 and d.max_abs_diff == 1


def test_constant_and_zero_references_get_a_note():
    zero = TensorDiff.from_arrays("t", np.zeros(8, np.float32), np.zeros(8, np.float32))
    assert zero.passed and "all zero" in zero.notes[0]
    const = TensorDiff.from_arrays("t", np.full(8, 2.0), np.full(8, 2.0))
    assert "constant" in const.notes[0]


def test_empty_and_bool():
    assert TensorDiff.from_arrays("t", np.zeros((0, 3)), np.zeros((0, 3))).kind == "empty"
    b = TensorDiff.from_arrays("t", np.array([True, False]), np.array([True, True]))
    assert b.kind == "bool" and b.mismatch_count == 1


def test_equal_values_match_whatever_their_dtypes_call_them():
    """float16's -65504 is a mask value (its dtype's largest), the same value in float32 is
    not: equal values still match."""
    r = np.array([-65504, 1, 2, -65504], np.float16)
    d = TensorDiff.from_arrays("t", r, r.astype(np.float32))
    assert d.passed and d.class_mismatches == 0 and d.masked_matched == 2


def test_a_float32_mask_written_as_minus_1e38_is_a_mask():
    """float32(1e38) is 9.99999968e37: still a mask value, so it cannot become the tolerance
    scale and loosen the check of the rest to 2e35."""
    r = np.array([-1e38] + [1.0] * 7, np.float32)
    c = r.copy()
    c[1:] = [5, -40, 3, 3, 3, 3, 3]
    d = TensorDiff.from_arrays("t", r, c)
    assert d.masked_reference == 1 and d.reference_absmax == 1.0
    assert not d.passed and d.atol == 2e-3


def test_the_default_tolerances_are_the_readmes():
    """README, "Tolerances" and "Tolerance of float16 runs", written out: the element rule and
    where its edge lies (values from the README, not from the code under test)."""
    from parity.core.metrics import FP16_TOLERANCE, Tolerance

    default = Tolerance()
    assert (default.atol, default.rtol, default.atol_scale) == (None, 1e-3, 2e-3)
    assert default.describe() == "|c - r| <= 0.002 * max(1, max|r|) + 0.001 * |r|"
    assert (FP16_TOLERANCE.atol, FP16_TOLERANCE.rtol, FP16_TOLERANCE.atol_scale) == (None, 1e-2, 1e-2)
    assert FP16_TOLERANCE.describe() == "|c - r| <= 0.01 * max(1, max|r|) + 0.01 * |r|"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`|c - r| <= 0.01 * max(1, max|r|) + 0.01 * |r|`" in readme
    assert "`--rtol 1e-3`" in readme and "`atol = 2e-3 * max(1, max|r|)`" in readme
    # the edge: reference 4 (scale 4) allows 0.002 * 4 + 0.001 * 4 = 0.012 by default, 0.08 in float16
    reference = np.array([4.0, -1.0], np.float32)
    for tolerance, allowed in ((default, 0.012), (FP16_TOLERANCE, 0.08)):
        inside = reference + np.array([allowed * 0.98, 0], np.float32)
        outside = reference + np.array([allowed * 1.02, 0], np.float32)
        assert TensorDiff.from_arrays("y", reference, inside, tolerance).mismatch_count == 0
        assert TensorDiff.from_arrays("y", reference, outside, tolerance).mismatch_count == 1
