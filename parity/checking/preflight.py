"""What the domain modules refuse in a check's options, asked before any work: a budget rule
(budget.py's grammar) and where MNN runs (the targets module's specs). The options objects
check their fields by themselves (parity.options), without importing these modules."""

from __future__ import annotations

from parity.core.errors import UsageError
from parity.options import CheckOptions, MnnOptions


# the backend names MNN's runtime manager takes (MNN 3.6: any other, or one in lower case, is a
# SystemError from inside its binding); one not compiled in falls back to CPU, and the report says so
MNN_BACKENDS = ("CPU", "AUTO", "OPENCL", "OPENGL", "VULKAN", "METAL", "CUDA", "TRT", "NN", "HIAI")


def refuse_bad_mnn(mnn: MnnOptions) -> None:
    """A target spec the targets module cannot use, or a backend name MNN does not know,
    raises UsageError (exit 2)."""
    from parity.run.targets import parse_target

    parse_target(mnn.target)
    if mnn.backend not in MNN_BACKENDS:
        hint = f" (MNN's names are upper case: {mnn.backend.upper()})" if mnn.backend.upper() in MNN_BACKENDS else ""
        raise UsageError(f"--mnn-backend {mnn.backend!r} is not a backend MNN knows{hint}; "
                         f"it takes {', '.join(MNN_BACKENDS)}")


def refuse_bad_options(options: CheckOptions) -> None:
    """A budget or target that would fail later in the check raises UsageError now."""
    refuse_bad_mnn(options.mnn)
    if options.budget is not None:
        from parity.checking.budget import Budget

        Budget.parse(options.budget)
