"""Which adapter serves which framework and file suffix, and the factory that makes one.

Kept out of the package's __init__: an __init__ that imports its adapters would make every
module the adapters import depend, through the package, on the adapters again (parity.run.targets
imports parity.run.agent; parity.backends.mnn imports parity.run.targets).
"""

from __future__ import annotations

from pathlib import Path

# suffix -> framework; the first model given is the reference.
SUFFIXES = {
    ".onnx": "onnxruntime",
    ".mnn": "mnn",
    ".pt2": "torch",
    ".pt": "torch",
    ".ts": "torch",
    ".torchscript": "torch",
}


def framework_for(path: str | Path) -> str | None:
    text = str(path)
    if ":" in text and Path(text).suffix.lower() not in SUFFIXES and not Path(text).exists():
        return "torch"  # path/to/file.py:factory or package.module:factory
    return SUFFIXES.get(Path(text).suffix.lower())


def open_backend(framework: str, path: str | Path, **options):
    """Return an unopened backend for ``framework``; use it as a context manager."""
    if framework == "onnxruntime":
        from parity.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **options)
    if framework == "mnn":
        from parity.backends.mnn import MnnBackend

        return MnnBackend(path, **options)
    if framework == "torch":
        from parity.backends.torch import TorchBackend

        return TorchBackend(path, **options)
    if framework == "saved":
        from parity.backends.saved import SavedOutputs

        return SavedOutputs(path, **options)
    raise ValueError(f"unknown framework {framework!r}")
