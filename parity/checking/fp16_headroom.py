"""How the reference's values fit float16, noted before a model ships with precision low on ARM.
Part of the layer comparison (layers.py); the diagnosis measures the same at one tensor."""

from __future__ import annotations

import numpy as np

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -14  # float16's smallest normal: below it values lose precision, then flush
_SUBNORMAL_NOTE = 0.1  # a layer with more than this share of such values is named


def fp16_fit(reference: np.ndarray) -> dict:
    """How a float reference tensor fits float16, for running with precision low on ARM:
    ``fp16_range`` = max|r| / 65504 over its regular values (mask values, |v| >= 1e38 or inf,
    are masks in float16 too), ``fp16_subnormal`` = share of its nonzero values below
    float16's smallest normal. Empty for other dtypes."""
    if reference.dtype.kind != "f" or not reference.size:
        return {}
    with np.errstate(all="ignore"):
        a = np.abs(reference.reshape(-1)).astype(np.float32, copy=False)
        top = float(a.max())
        regular = a if top < 1e38 else a[a < 1e38]  # NaN compares False and drops out too
        if not regular.size:
            return {}
        if regular is not a:
            top = float(regular.max())
        # zeros counted as a boolean array: numpy counts a float array's nonzeros 6x slower
        # (regular holds no NaN: the max above or the filter left them out)
        nonzero = regular.size - int(np.count_nonzero(regular == 0))
        tiny = int(np.count_nonzero(regular < FP16_TINY)) - (regular.size - nonzero)  # zeros are below too
    return {"fp16_range": top / FP16_MAX, "fp16_subnormal": tiny / nonzero if nonzero else 0.0}


def fp16_notes(layers) -> list[str]:
    """Which layers' reference values do not fit float16: seen on the workstation before the
    model ships with precision low."""
    notes = []
    over = [x for x in layers if (x.fp16_range or 0) > 1]
    if over:
        worst = max(over, key=lambda x: x.fp16_range)
        notes.append(
            f"float16 headroom: {len(over)} layer{'s hold' if len(over) != 1 else ' holds'} reference values beyond "
            f"float16's 65504 and will overflow to inf with --mnn-precision low on ARM (largest: "
            f"{worst.name} ({worst.op_type}), max|r| {worst.fp16_range * FP16_MAX:.3g} = "
            f"{worst.fp16_range:.3g}x float16's range)")
    tiny = [x for x in layers if (x.fp16_subnormal or 0) > _SUBNORMAL_NOTE]
    if tiny:
        worst = max(tiny, key=lambda x: x.fp16_subnormal)
        notes.append(
            f"float16 headroom: {len(tiny)} layer{'s hold' if len(tiny) != 1 else ' holds'} more than "
            f"{_SUBNORMAL_NOTE:.0%} of their nonzero values below float16's smallest normal (6.1e-05), "
            f"which lose precision or flush to zero in float16 (most: {worst.name} ({worst.op_type}), "
            f"{worst.fp16_subnormal:.0%})")
    return notes
