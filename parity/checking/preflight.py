"""What the domain modules refuse in a check's options, asked before any work: a budget rule
(budget.py's grammar) and where MNN runs (the targets module's specs). The options objects
check their fields by themselves (parity.options), without importing these modules."""

from __future__ import annotations

from parity.options import CheckOptions, MnnOptions


def refuse_bad_mnn(mnn: MnnOptions) -> None:
    """A target spec the targets module cannot use raises UsageError (exit 2)."""
    from parity.run.targets import parse_target

    parse_target(mnn.target)


def refuse_bad_options(options: CheckOptions) -> None:
    """A budget or target that would fail later in the check raises UsageError now."""
    refuse_bad_mnn(options.mnn)
    if options.budget is not None:
        from parity.checking.budget import Budget

        Budget.parse(options.budget)
