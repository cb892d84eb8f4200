"""Which adapter serves which framework and file suffix, and the factory that makes one.

Each adapter declares its framework and suffixes on its class; the frameworks are those of
the links table (core/links.py FRAMEWORKS), each served by parity/backends/<framework>.py. The
modules are imported on the first lookup, not before: ``import parity`` and ``parity --help``
stay light, and a helper module here (mnn_child, which imports MNN) is never imported in
parity's own process.

Kept out of the package's __init__: an __init__ that imports its adapters would make every
module the adapters import depend, through the package, on the adapters again (parity.run.targets
imports parity.run.agent; parity.backends.mnn imports parity.run.targets).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from parity.core.links import FRAMEWORKS


@functools.lru_cache(maxsize=None)
def backend_classes() -> dict:
    """framework -> its Backend subclass, in FRAMEWORKS (chain) order."""
    from parity.backends.base import Backend

    found = {}
    for framework in FRAMEWORKS:
        module = importlib.import_module(f"parity.backends.{framework}")
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Backend)
                   and c.__module__ == module.__name__ and c.framework == framework]
        if len(classes) != 1:  # a parity bug, not the user's: said plainly for whoever adds one
            raise RuntimeError(f"parity.backends.{framework} must define one Backend subclass with "
                               f"framework = {framework!r}; it defines {len(classes)}")
        found[framework] = classes[0]
    return found


def backend_class(framework: str):
    try:
        return backend_classes()[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}") from None


def suffixes() -> dict[str, str]:
    """suffix -> framework, over every adapter; the first model given is the reference."""
    return {suffix: cls.framework for cls in backend_classes().values() for suffix in cls.suffixes}


def framework_for(path: str | Path) -> str | None:
    text = str(path)
    known = suffixes()
    suffix = Path(text).suffix.lower()
    if suffix not in known and not Path(text).exists():  # not a file: code (torch's file.py:factory)
        return next((cls.framework for cls in backend_classes().values() if cls.names_code(text)), None)
    return known.get(suffix)


def open_backend(framework: str, path: str | Path, **options):
    """Return an unopened backend for ``framework``; use it as a context manager."""
    return backend_class(framework)(path, **options)
