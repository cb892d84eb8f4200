"""What MNN says on its stdout, read back: the backend it fell back to, the CPU features it
detected. Shared by the MNN adapter and ``parity target check``."""

from __future__ import annotations

import re

# MNNForwardType, as MNN numbers the backends in its fallback message
_FORWARD_TYPES = {0: "CPU", 1: "METAL", 2: "CUDA", 3: "OPENCL", 4: "AUTO", 5: "NN", 6: "OPENGL",
                  7: "VULKAN", 9: "TRT"}
_FALLBACK = re.compile(r"Can't Find type=(\d+) backend, use (\d+) instead")


def backend_that_ran(requested: str, log: str) -> tuple[str, str | None]:
    """The backend MNN really uses, and a note when it is not the one requested: a backend not
    compiled into this MNN falls back (to CPU) with nothing but a line on its stdout."""
    match = _FALLBACK.search(log)
    if match is None:
        return requested.upper(), None
    wanted, used = (_FORWARD_TYPES.get(int(g), f"type {g}") for g in match.groups())
    return used, (f"MNN has no {requested.upper()} backend here: it ran on {used} (MNN said "
                  f"\"{match.group(0)}\"); the figures are {used}'s, not {wanted}'s")


_FEATURES = re.compile(r"The device supports:([^\n]*)")


def cpu_features(log: str) -> dict[str, int]:
    """The CPU features MNN reports when its runtime starts ("The device supports: i8sdot:1,
    fp16:1, i8mm: 1, sve2: 1"), as {"fp16": 1, ...}; empty when it printed none."""
    match = _FEATURES.search(log)
    if match is None:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)\s*:\s*(\d+)", match.group(1))}
