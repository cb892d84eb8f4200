"""``python -m parity``, and the entry of the parity children that sweep starts."""

import os
import sys


def _forget_working_directory() -> None:
    """``python -m`` puts the working directory first on sys.path, so a click.py, numpy.py or
    rich.py where the user stands would replace the real module. parity itself is imported
    already (by absolute path); nothing else may come from there."""
    if sys.flags.safe_path or not sys.path:
        return
    try:
        here = os.getcwd()
    except OSError:
        return
    if os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]


def _degrade_unencodable_output() -> None:
    """A stdout or stderr whose encoding cannot hold every character parity prints (ASCII under
    ``PYTHONIOENCODING=ascii``, which some CI runners set, or under ``LC_ALL=C``; latin-1) shows
    such a character as an escape (``\\xe8``, ``\\u2192``) instead of raising UnicodeEncodeError
    in the middle of a report (under ``LC_ALL=C`` Python's stdout has ``surrogateescape``, which
    fails on any character that is not a file name's byte too). Streams that escape or replace
    already, and streams that are not text files, are left alone."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) not in ("strict", "surrogateescape"):
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # replaced by a non-TextIOWrapper, or closed
            pass


def _start_mnn_early(args: list[str]) -> None:
    """``parity check ... model.mnn`` (MNN on this machine): its MNN child starts now, so that
    MNN's import and the model's load there overlap parity's own imports here instead of
    following them. Only a guess from the words: the check takes the child if it needs one
    (worker.take), and one not taken is killed at exit. The child is a fork of this process:
    no second interpreter's start (0.05-0.15 s) on the way to MNN.

    numpy is imported first, here, so that the child has it already: both need it, and two
    processes importing it at once on two cores took 0.05-0.07 s more than this one importing
    it alone and the child then importing only MNN (a small model's check went from 0.21 s to
    0.15 s after the interpreter's start). numpy's OpenBLAS thread is stopped before the fork
    by OpenBLAS's own fork handler and started again when the parent next needs it; no Python
    thread runs yet."""
    if not args or args[0] != "check" or any(a in ("-h", "--help") or a.startswith("--mnn-target") for a in args):
        return
    if any(a.lower().endswith(".mnn") for a in args[1:]):
        from parity.run.worker import prestart

        try:
            import numpy  # noqa: F401  (see above)

            prestart("mnn", "parity.backends.mnn_child", fork=hasattr(os, "fork"))
        except Exception:  # the check starts its own, and says what fails
            pass


def main() -> None:
    from parity.run.process import install_process_guards, interruption

    _degrade_unencodable_output()
    install_process_guards()
    try:
        _start_mnn_early(sys.argv[1:])
        from parity.cli import cli
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while parity is still starting
        cause, code = interruption(exc)
        sys.stderr.write(f"{cause}; child processes stopped, nothing was written.\n")
        raise SystemExit(code) from None
    cli(prog_name="parity")


def run() -> None:
    """The ``parity`` program (its console script, ``python -m parity``): ``main``, then the exit
    without the interpreter's teardown (``_exit_now``). Code that runs the CLI in its own
    process and goes on after it (``main()`` or ``runpy.run_module("parity")`` in a ``try``)
    gets a normal ``SystemExit``."""
    try:
        main()
    except SystemExit as exc:
        _exit_now(exc.code)
        raise


def _run_as_program() -> bool:
    """True for ``python -m parity``: runpy's start of a ``-m`` module, and nothing else, above
    this module's code; no caller's frame that could catch the exit and go on."""
    import runpy

    caller = sys._getframe(1).f_back  # whoever runs this module's code
    starter = caller.f_back if caller is not None else None
    codes = [getattr(getattr(runpy, name, None), "__code__", None) for name in ("_run_code", "_run_module_as_main")]
    return (caller is not None and starter is not None and starter.f_back is None and None not in codes
            and [caller.f_code, starter.f_code] == codes)


def _exit_now(code) -> None:
    """Leave at once, once the command is done: the atexit handlers run (children stopped,
    private directories removed, third parties' own), stdout and stderr are flushed, and the
    process ends without the interpreter's teardown, which frees every module numpy, ONNX
    Runtime and parity loaded one by one (35-45 ms measured, a tenth of a small model's
    check). Only when nothing else could need that teardown: no thread besides this one (a
    normal exit joins them), a plain exit code, and output that flushed (a closed pipe keeps
    Python's own handling), and no profiler, tracer or debugger watching (``python -m
    cProfile -m parity`` writes its figures after ``main`` returns); otherwise this returns and
    the exit goes on as usual."""
    import threading

    if threading.active_count() > 1 or not (code is None or isinstance(code, int)):
        return
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    import atexit

    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_functions is None or not _flushed():
        return
    run_exit_functions()
    if threading.active_count() == 1 and _flushed():  # a handler may have started or printed something
        os._exit(code or 0)


def _flushed() -> bool:
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    _forget_working_directory()
    run() if _run_as_program() else main()
