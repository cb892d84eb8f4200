"""Tensor specifications shared by every backend.

A dimension is an ``int`` when fixed, or a ``str`` (the symbolic name, or ``"?"``) when the
model leaves it open. Dtypes are numpy dtype names (``"float32"``, ``"int64"``, ``"bool"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Tuple, Union

if TYPE_CHECKING:  # numpy stays out of `import parity`
    import numpy as np

Dim = Union[int, str]
TensorMap = Dict[str, "np.ndarray"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[Dim, ...] | None  # None: rank unknown
    dtype: str

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{format_shape(self.shape)}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
        }


def format_shape(shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + "x".join(str(d) for d in shape) + "]"


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"1x64x32"`` or ``"1,64,32"`` -> ``(1, 64, 32)``; ``""`` or ``"scalar"`` -> ``()``."""
    text = text.strip().lower()
    if text in ("", "scalar", "()"):
        return ()
    parts = text.replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"shape {text!r} is not of the form 1x64x32") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {text!r} has a negative dimension")
    if len(dims) > MAX_RANK:
        raise ValueError(f"shape {text!r} has {len(dims)} dimensions; at most {MAX_RANK}")
    if any(d > MAX_DIM for d in dims):
        raise ValueError(f"shape {text!r} has a dimension larger than {MAX_DIM} (2**63 - 1)")
    return dims


MAX_RANK = 64  # numpy's NPY_MAXDIMS
MAX_DIM = 2**63 - 1  # the largest dim numpy (and ONNX, int64) can hold
