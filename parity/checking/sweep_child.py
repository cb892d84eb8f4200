"""The runner of ``parity sweep``: one long-lived child per job that checks pair after pair.

A sweep of small models used to start a ``parity check`` process per pair: Python, numpy, ONNX
Runtime, parity and an MNN child each time, 0.3 s and more of start-up for a check whose
frameworks need a few milliseconds. A runner (a child started by ``sweep.Runners``, speaking
``worker.Worker``'s protocol) imports all that once and runs each pair's check command
in-process, exactly as ``parity check`` parses and runs it, with its MNN children kept between
pairs (``worker.keep_children``); the check's Report comes back as an object
(``checks.reports_to``), not as JSON to render and parse again.

Isolation stays per pair: MNN still runs in a child of the runner, so an MNN crash is that
pair's ``BackendCrash``; a crash of the runner itself, or a pair over its time limit, kills the
runner and everything in its process group (the sweep records that pair and starts a new
runner for the next). Each pair works in its own private directory (its working directory,
TMPDIR and tempfile's default while it runs), which the sweep removes after it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile

from parity.run import worker

# imported with the runner, before the first pair comes (and by a sweep that forks its runners,
# before it forks them: see sweep.Runners)
from parity.cli import cli
from parity.commands import checks
from parity.checking import pipeline  # noqa: F401
from parity.backends import onnxruntime as _ort_backend


def serve(fd: int) -> None:
    """A runner's life: its MNN child started first (forked while the runner has no thread, as
    the CLI's is, see parity.__main__), then the sweep's requests until it closes the socket."""
    worker.keep_children()
    try:
        worker.prestart("mnn", "parity.backends.mnn_child", fork=hasattr(os, "fork"))
    except Exception:  # no MNN here: the pair's check says so in its own words
        pass
    worker.serve(fd)


def serve_argv() -> None:
    """``serve`` from the command line of a spawned runner: FD."""
    serve(int(sys.argv[1]))


def check(argv: list[str], cwd: str, ort_threads: int = 0) -> dict:
    """``parity check ARGV`` in the private directory ``cwd``: its exit code, its report's
    verdict as the report's JSON holds it (None when no report came: an error's exit), and
    what it wrote to stdout (bytes) and stderr. The report itself is taken as it is made
    (checks.reports_to), not rendered and parsed again. ``ort_threads``: ONNX Runtime's
    intra-op threads, this runner's share of the cores (0: ONNX Runtime's default)."""
    here, tmpdir, tempdir, args = os.getcwd(), os.environ.get("TMPDIR"), tempfile.tempdir, sys.argv
    threads = _ort_backend.share_threads(ort_threads)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    err = io.StringIO()
    reports: list = []
    os.chdir(cwd)
    os.environ["TMPDIR"] = tempfile.tempdir = cwd
    sys.argv = ["parity", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), checks.reports_to(reports.append):
            cli.main(list(argv), prog_name="parity")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
        if tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir, sys.argv = tempdir, args
        _ort_backend.share_threads(threads)
    # plain JSON values, as the report's JSON gives them to a reader
    verdict = json.loads(json.dumps(reports[-1].verdict.to_dict())) if reports else None
    return {"code": code, "verdict": verdict, "stdout": out.buffer.getvalue(), "stderr": err.getvalue()}
