"""``parity convert``'s conversion, before the check of the pair: what would make it useless is
refused before anything is written, then MNN's converter runs (or, with calibration samples,
the float conversion is quantized to full int8 by mnn.quantize); a converter crash on a model
ONNX Runtime refuses is reported as that model's error."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from parity.core.errors import BackendCrash, ModelError


def convert_onnx(source: Path, target: Path, scratch: Path, *, converter_options: Sequence[str] = (),
                 calibration=None, method: str = "ADMM", timeout: float = 300.0, progress=None) -> Path | None:
    """Write ``target`` (.mnn) from ``source`` (.onnx). Returns the float conversion the check
    attributes a full int8 model's loss against (in ``scratch``), or None."""
    say = progress or (lambda message: None)
    if calibration:
        from parity.mnn.quantize import full_int8_from_onnx

        return full_int8_from_onnx(source, target, scratch, calibration, method=method,
                                   converter_options=converter_options, timeout=timeout, progress=progress)
    from parity.mnn.converter import convert

    refuse_before_converting(source, target)
    say(f"converting {source.name} -> {target}")
    try:
        convert(source, target, options=list(converter_options), timeout=timeout)
    except BackendCrash:  # the converter crashed: on a model that is not valid, say so
        _raise_onnxruntime_refusal(source)
        raise
    return None


def refuse_before_converting(source, target) -> None:
    """What makes a conversion useless, refused before it writes anything: an output name MNN
    cannot open, an ONNX graph without outputs (nothing to check)."""
    from parity.backends.base import check_model_file
    from parity.core import onnx_skeleton
    from parity.core.paths import is_utf8, show

    check_model_file(Path(source), "onnx")  # a FIFO would block the read below for ever
    if not is_utf8(str(target)):
        raise ModelError(f"-o {show(target)} has a name that is not valid UTF-8, which MNN cannot open; "
                         f"choose another name")
    try:
        outputs = onnx_skeleton.load(source).graph.output
    except Exception:
        return  # not readable as ONNX: the converter and ONNX Runtime say so
    if not outputs:
        raise ModelError(f"{show(source)} declares no graph outputs: there is nothing to convert and compare")


def _raise_onnxruntime_refusal(source) -> None:
    """Raise ONNX Runtime's refusal of ``source`` (exit 3: the model is not valid) if it has one."""
    from parity.backends.registry import open_backend

    try:
        with open_backend("onnxruntime", source):
            pass
    except ModelError:
        raise
    except Exception:
        pass
