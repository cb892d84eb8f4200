"""Pair outputs across frameworks and bring candidate arrays to the reference's shape and dtype.

Every step taken is returned as a short phrase (``reshape (32768,) -> (1, 64, 512)``) that the
report shows per output: nothing is aligned silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


def unpack_nc4hw4(flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A flat NC4HW4 buffer (channels in zero-padded blocks of 4) -> an NCHW array of ``shape``."""
    n, c = shape[0], shape[1]
    spatial = tuple(shape[2:])
    blocks = -(-c // 4)
    packed = flat.reshape((n, blocks) + spatial + (4,))
    moved = np.moveaxis(packed, -1, 2)  # n, blocks, 4, spatial...
    return np.ascontiguousarray(moved.reshape((n, blocks * 4) + spatial)[:, :c])


def nc4hw4_size(shape: Sequence[int]) -> int | None:
    if len(shape) < 3:
        return None
    n, c = shape[0], shape[1]
    return int(n * (-(-c // 4) * 4) * int(np.prod(shape[2:])))


def align_array(
    reference: np.ndarray, candidate: np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Return the candidate in the reference's shape (and comparable dtype), with the steps."""
    steps: list[str] = []
    ref_shape = tuple(reference.shape)
    cand_shape = tuple(candidate.shape)
    if cand_shape != ref_shape:
        if candidate.size == reference.size:
            candidate = candidate.reshape(ref_shape)
            steps.append(f"reshape {cand_shape} -> {ref_shape}")
        elif candidate.ndim <= 1 and candidate.size == nc4hw4_size(ref_shape) != reference.size:
            candidate = unpack_nc4hw4(candidate, ref_shape)
            steps.append(f"nc4hw4 -> nchw: flat {cand_shape} unpacked to {ref_shape}")
        else:
            raise AlignmentError(
                f"element count differs: reference {ref_shape} has {reference.size}, "
                f"candidate {cand_shape} has {candidate.size}"
            )
    rk, ck = reference.dtype.kind, candidate.dtype.kind
    if reference.dtype != candidate.dtype:
        if rk in "iub" and ck in "iub":
            steps.append(f"dtype {candidate.dtype.name} -> {reference.dtype.name} (compared by value)")
        elif rk == "f" and ck == "f":
            steps.append(f"dtype {candidate.dtype.name} vs {reference.dtype.name} (compared as float64)")
        elif rk in "iub" and ck == "f" or rk == "f" and ck in "iub":
            steps.append(f"dtype {candidate.dtype.name} vs {reference.dtype.name} (compared as float64)")
            candidate = candidate.astype(np.float64)
            reference_is_float = rk == "f"
            if not reference_is_float:
                steps[-1] += "; the candidate should be an integer tensor"
        else:
            raise AlignmentError(
                f"dtypes cannot be compared: reference {reference.dtype.name}, "
                f"candidate {candidate.dtype.name}"
            )
    return candidate, tuple(steps)
