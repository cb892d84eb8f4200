"""parity: cross-framework numerical parity checker (PyTorch -> ONNX -> MNN).

The public API. Nothing heavy is imported here: numpy, ONNX Runtime, MNN and torch load only
when a function that needs them is called, so the CLI and the pytest plugin start fast.
"""

from __future__ import annotations

from parity.core.errors import (
    BackendCrash,
    BackendError,
    BackendTimeout,
    ExitCode,
    FrameworkMissing,
    InputError,
    ModelError,
    ParityError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "check",
    "check_llm",
    "compare",
    "convert",
    "Report",
    "Tolerance",
    "VerdictKind",
    "ExitCode",
    "ParityError",
    "UsageError",
    "ModelError",
    "InputError",
    "BackendError",
    "BackendCrash",
    "BackendTimeout",
    "FrameworkMissing",
]

_LAZY = {
    "check": ("parity.checking.pipeline", "check"),
    "check_llm": ("parity.llm.check", "check_llm"),
    "compare": ("parity.core.dumps", "compare"),
    "convert": ("parity.mnn.converter", "convert"),
    "Report": ("parity.core.report", "Report"),
    "VerdictKind": ("parity.core.report", "VerdictKind"),
    "Tolerance": ("parity.core.metrics", "Tolerance"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
