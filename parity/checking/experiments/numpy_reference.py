"""Experiment 6, an independent reference: the diverging MNN op, as the MNN file defines it,
evaluated in numpy on the same inputs (mnn.ops.check_op). Kernel != numpy(op) == ONNX Runtime ->
runtime; kernel == numpy(op) != ONNX Runtime -> conversion."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from parity.core.report import Verdict

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe


def numpy_reference(ctx: Context, probe: Probe, where: str, workdir: Path, evidence: list) -> Verdict | None:
    """Experiment c: the MNN op as the file defines it, evaluated in numpy."""
    if probe.layer is None:
        return None
    ctx.progress("diagnosing: numpy reference of the MNN op")
    from parity.mnn import ops as mnn_ops

    result = mnn_ops.check_op(ctx, probe, workdir)
    evidence.append({"experiment": "numpy reference of the MNN op", **result})
    kind = result.get("kind")
    if kind in ("runtime", "conversion"):
        return Verdict(kind, where, result["summary"], evidence=tuple(evidence),
                       next_steps=tuple(result.get("next_steps", ())))
    return None
