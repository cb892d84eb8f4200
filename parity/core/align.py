"""Every way a candidate buffer can map onto a reference, in one place.

Output pairing (``check``), layer pairing (``--layers``) and hand-made dumps (``compare``)
all use ``layouts`` and ``best_alignment``: a candidate is read as the reference's shape by
reshaping it, by reading it as channels-last (NHWC) or as MNN's NC4HW4 (channels in
zero-padded blocks of 4), and its dtype is compared by value (integer widths, float16
against float32; the metrics are exact for every pairing). Every step taken is returned as a
short phrase (``reshape (32768,) -> (1, 64, 512)``) that the report shows: nothing is aligned
silently. ``explain_size`` names the usual reason when no layout fits (float16 bytes read as
float32, a batch, a truncated copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np


@dataclass(frozen=True)
class OutputPair:
    name: str  # the reference's name, used as the output's name in the report
    reference_name: str
    candidate_name: str
    how: str  # "name" or "order"


@dataclass(frozen=True)
class Pairing:
    pairs: tuple[OutputPair, ...]
    missing_in_candidate: tuple[str, ...]
    extra_in_candidate: tuple[str, ...]


def pair_outputs(reference: Sequence[str], candidate: Sequence[str]) -> Pairing:
    """Pair by name; pair what is left by position when both sides have the same number left."""
    cand_set = set(candidate)
    by_name = {n: n for n in reference if n in cand_set}
    ref_left = [n for n in reference if n not in by_name]
    cand_left = [n for n in candidate if n not in by_name]
    by_order: dict[str, str] = {}
    if ref_left and len(ref_left) == len(cand_left):
        by_order = dict(zip(ref_left, cand_left))
        ref_left, cand_left = [], []
    pairs = []
    for n in reference:
        if n in by_name:
            pairs.append(OutputPair(n, n, n, "name"))
        elif n in by_order:
            pairs.append(OutputPair(n, n, by_order[n], "order"))
    return Pairing(tuple(pairs), tuple(ref_left), tuple(cand_left))


class AlignmentError(ValueError):
    """The candidate cannot be brought to the reference's shape."""


@dataclass(frozen=True)
class Alignment:
    array: np.ndarray  # the candidate in the reference's shape
    steps: tuple[str, ...]  # what was done to it, for the report


# -- layouts ------------------------------------------------------------------------------------
def nc4hw4_size(shape: Sequence[int]) -> int | None:
    """Elements of an NC4HW4 buffer holding an NCHW tensor of ``shape`` (rank >= 3)."""
    if len(shape) < 3:
        return None
    n, c = shape[0], shape[1]
    return int(n * (-(-c // 4) * 4) * int(np.prod(shape[2:])))


def unpack_nc4hw4(flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A flat NC4HW4 buffer (channels in zero-padded blocks of 4) -> an NCHW array of ``shape``."""
    n, c = shape[0], shape[1]
    spatial = tuple(shape[2:])
    blocks = -(-c // 4)
    packed = flat.reshape((n, blocks) + spatial + (4,))
    moved = np.moveaxis(packed, -1, 2)  # n, blocks, 4, spatial...
    return np.ascontiguousarray(moved.reshape((n, blocks * 4) + spatial)[:, :c])


def channels_last_shape(shape: Sequence[int]) -> tuple[int, ...] | None:
    """NCHW -> NHWC (any rank >= 3); None when both orders put the values in the same memory
    order (one channel, or one spatial position). The two shapes can read alike, (2, 3, 3),
    while the memory orders differ."""
    if len(shape) < 3 or shape[1] == 1 or int(np.prod(shape[2:])) == 1:
        return None
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)


def layouts(reference: np.ndarray, candidate: np.ndarray, *,
            reread_same_shape: bool = False) -> Iterator[Alignment]:
    """Every way to read ``candidate`` as ``reference``'s shape, most plausible first.

    A candidate of the reference's exact shape is read only as it is, unless
    ``reread_same_shape``: from a framework, a same-shape tensor in another layout would be a
    bug to report, not to align away; in a dump made by hand it is the classic misread (an
    NC4HW4 buffer read with the NCHW shape)."""
    ref_shape = tuple(reference.shape)
    cand_shape = tuple(candidate.shape)
    same = cand_shape == ref_shape
    if same:
        yield Alignment(candidate, ())
        if not reread_same_shape:
            return
    flat = candidate.reshape(-1)
    if candidate.size == reference.size:
        if not same:
            yield Alignment(flat.reshape(ref_shape), (f"reshape {cand_shape} -> {ref_shape}",))
        last = channels_last_shape(ref_shape)
        if last is not None:
            moved = np.moveaxis(flat.reshape(last), -1, 1)
            yield Alignment(np.ascontiguousarray(moved),
                            (f"nhwc -> nchw: {cand_shape} read as {last} and transposed",))
    packed = nc4hw4_size(ref_shape)
    if packed is not None and flat.size == packed:
        yield Alignment(unpack_nc4hw4(flat, ref_shape),
                        (f"nc4hw4 -> nchw: {flat.size} values unpacked to {ref_shape}",))


def dtype_steps(reference: np.ndarray, candidate: np.ndarray) -> tuple[str, ...]:
    """How the two dtypes are compared (always by value), as report phrases."""
    rd, cd = reference.dtype, candidate.dtype
    rk, ck = rd.kind, cd.kind
    if not (rk in "biuf" and ck in "biuf"):
        raise AlignmentError(f"dtypes cannot be compared: reference {rd.name}, candidate {cd.name} "
                             f"(parity compares numbers and booleans)")
    if rd == cd:
        return ()
    if rk in "iub" and ck in "iub":
        return (f"dtype {cd.name} vs {rd.name} (compared by value, exactly)",)
    step = f"dtype {cd.name} vs {rd.name} (compared as float64)"
    if rk in "iub":
        step += "; the candidate should be an integer tensor"
    return (step,)


# -- choosing -----------------------------------------------------------------------------------
J = TypeVar("J")


@dataclass(frozen=True)
class Judged:
    alignment: Alignment
    judgement: object  # what the judge returned (a TensorDiff, usually)
    passed: bool


def best_alignment(reference: np.ndarray, candidate: np.ndarray,
                   judge: Callable[[np.ndarray], tuple[bool, float, J]], *,
                   reread_same_shape: bool = False, dtype_known: bool = False) -> Judged:
    """The first layout the judge passes, else the one it scores lowest (``judge`` returns
    (passed, score, judgement)). Raises AlignmentError when no layout fits."""
    dsteps = dtype_steps(reference, candidate)
    best: tuple[float, Judged] | None = None
    for alignment in layouts(reference, candidate, reread_same_shape=reread_same_shape):
        alignment = Alignment(alignment.array, alignment.steps + dsteps)
        passed, score, judgement = judge(alignment.array)
        judged = Judged(alignment, judgement, passed)
        if passed:
            return judged
        if best is None or score < best[0]:
            best = (score, judged)
    if best is None:
        raise AlignmentError(explain_size(reference, candidate, dtype_known=dtype_known))
    return best[1]


def explain_size(reference: np.ndarray, candidate: np.ndarray, *, dtype_known: bool = False,
                 aside: str = "") -> str:
    """Why a candidate's element count does not fit the reference, in one phrase. With
    ``dtype_known`` (arrays a framework returned, or a dump whose declared dtype is trusted) a
    dtype misread is never the reason; it is one only for dumps read from bytes. ``aside``
    follows the element count (" (it declares float32, ...)")."""
    ref, n = reference.size, candidate.size
    ref_bytes = ref * reference.dtype.itemsize
    cand_bytes = n * candidate.dtype.itemsize
    if dtype_known:
        pass
    elif n * 2 == ref and candidate.dtype == np.float32 and reference.dtype.kind == "f":
        return (f"the candidate has half the reference's {ref} elements: float16 data read as "
                f"float32 (use --dtype float16)")
    if n == ref * 2 and candidate.dtype == np.float16:
        return (f"the candidate has twice the reference's {ref} elements: float32 data read as "
                f"float16 (use --dtype float32)")
    if not dtype_known and cand_bytes == ref_bytes and candidate.dtype != reference.dtype:
        return (f"the candidate has {n} {candidate.dtype.name} values, the same bytes as the "
                f"reference's {ref} {reference.dtype.name}: read it as {reference.dtype.name} "
                f"(--dtype {reference.dtype.name})")
    if reference.ndim >= 2 and ref and n % ref == 0 and n > ref:
        return (f"the candidate has {n // ref}x the reference's {ref} elements{aside}: a larger batch, or "
                f"several outputs in one buffer")
    if reference.ndim >= 2 and n and ref % n == 0 and n < ref:
        return (f"the candidate has 1/{ref // n} of the reference's {ref} elements{aside}: one item of a "
                f"batch, or a truncated copy (copyFrom from a smaller host tensor)")
    return (f"element count differs: reference {tuple(reference.shape)} has {ref}, "
            f"candidate {tuple(candidate.shape)} has {n}{aside}")


def fits(reference: np.ndarray, candidate: np.ndarray) -> bool:
    """Whether any layout reads ``candidate`` as ``reference``."""
    return next(layouts(reference, candidate), None) is not None
