"""Exit codes and the ParityError tree.

A mismatch is a result (see ``Report.exit_code``), never an exception. Exceptions are for
runs that could not produce a trustworthy result; each one carries the exit code it maps to.
"""

from __future__ import annotations

import contextlib
from enum import IntEnum


class ExitCode(IntEnum):
    PASS = 0
    MISMATCH = 1
    USAGE = 2
    MODEL_OR_INPUT = 3
    BACKEND = 4
    INTERNAL = 123
    HANGUP = 129  # SIGHUP: 128 + 1, as shells report a signal
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    BROKEN_PIPE = 141  # stdout's reader went away (`parity check ... | head`)
    TERMINATED = 143  # SIGTERM


class ParityError(Exception):
    """Base of every error parity reports to the user as one line."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(ParityError):
    """The command line or API call does not make sense (unknown model suffix, bad option)."""

    exit_code = ExitCode.USAGE


class ModelError(ParityError):
    """A model file is missing, unreadable, corrupt, or does not fit the other models."""

    exit_code = ExitCode.MODEL_OR_INPUT


class InputError(ParityError):
    """Inputs (given or generated) do not fit the model: names, shapes, dtypes, values."""

    exit_code = ExitCode.MODEL_OR_INPUT


class OutputPathError(ParityError):
    """A report or input file cannot be written where asked."""

    exit_code = ExitCode.MODEL_OR_INPUT


class BackendError(ParityError):
    """A framework failed: it raised, returned nothing, crashed, timed out or is missing."""

    exit_code = ExitCode.BACKEND


class BackendCrash(BackendError):
    """The child process running a framework died from a signal."""

    def __init__(self, framework: str, step: str, signal_name: str, detail: str = ""):
        self.framework, self.step, self.signal_name = framework, step, signal_name
        message = f"{framework} crashed with {signal_name} while {step}"
        if detail:
            message += f" ({detail})"
        message += "; parity survived because the framework runs in a child process"
        super().__init__(message)


class BackendTimeout(BackendError):
    def __init__(self, framework: str, step: str, seconds: float):
        self.framework, self.step, self.seconds = framework, step, seconds
        super().__init__(
            f"{framework} did not finish {step} within {seconds:g} s (raise it with --timeout)"
        )


class FrameworkMissing(BackendError):
    def __init__(self, framework: str, hint: str):
        super().__init__(f"{framework} is not installed: {hint}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: how a
    failure is quoted inside a note or a reason."""
    text = str(exc).splitlines()
    return text[0] if text and text[0] else type(exc).__name__


@contextlib.contextmanager
def user_code(what: str, error: type[ParityError]):
    """Within: code the user gave parity runs (a --torch factory or module, a --data-loader).
    Its ``sys.exit`` (an argparse error at import too) becomes ``error`` naming ``what``,
    never parity's own exit: a ``sys.exit(0)`` there would read as a pass. What it prints goes
    to stderr: stdout is parity's (``--json -`` puts the report there, for a program to parse)."""
    import sys

    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as exc:
        raise error(f"{what} called sys.exit({exc.code!r}); parity runs it for its result and "
                    f"does not take its exit as its own") from None
