"""The MNN converter, run in a child process inside a private temporary directory.

Never through the ``mnnconvert`` console script or ``MNN.tools.mnnconvert``: that wrapper
imports a logger that pip-installs a package and uploads statistics. The converter writes a
scratch file into the current directory, so it runs in the worker's private directory and the
result is moved into place only when conversion succeeded.

(The module is named ``converter`` so that the package attribute ``parity.convert`` stays the
function.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from parity.backends.base import check_model_file
from parity.backends.worker import ChildFailure, Worker
from parity.errors import BackendCrash, BackendError, UsageError
from parity.inputs import copy_atomic

# Converter options that are parity's business, not the user's.
_RESERVED = {"-f", "--framework", "--modelFile", "--MNNModel", "--bizCode"}


@dataclass(frozen=True)
class ConvertResult:
    source: str
    output: str
    options: tuple[str, ...]
    log: str


def convert(
    onnx_path: str | os.PathLike,
    mnn_path: str | os.PathLike,
    *,
    options: Sequence[str] = (),
    timeout: float = 300.0,
) -> ConvertResult:
    """Convert ``onnx_path`` to ``mnn_path`` with MNN's converter; raise on any failure."""
    source = Path(onnx_path)
    check_model_file(source, "onnx")
    target = Path(mnn_path)
    for option in options:
        if option.split("=")[0] in _RESERVED:
            raise UsageError(f"converter option {option} is set by parity; leave it out")
    with Worker("MNN converter", timeout=timeout) as worker:
        scratch = worker.dir / "converted.mnn"
        try:
            worker.call(
                "parity.converter:_convert_in_child",
                step=f"converting {source.name}",
                source=os.path.abspath(source),
                target=str(scratch),
                options=list(options),
            )
        except BackendCrash:
            raise
        except BackendError as exc:
            tail = worker.log_tail()
            if tail and tail not in str(exc):
                raise BackendError(f"{exc}; converter said: {tail}") from None
            raise
        log = worker.log_text()
        copy_atomic(scratch, target, "the converted model", error=BackendError)
    return ConvertResult(str(source), str(target), tuple(options), log)


def _convert_in_child(source: str, target: str, options: list) -> bool:
    import _tools  # MNN's converter binding, shipped in the MNN wheel

    argv = ["MNNConvert", "-f", "ONNX", "--modelFile", source, "--MNNModel", target,
            "--bizCode", "parity", *options]
    ok = _tools.mnnconvert(argv)
    if not ok or not os.path.exists(target) or os.path.getsize(target) == 0:
        raise ChildFailure("backend", f"MNN's converter failed on {os.path.basename(source)}")
    return True
