"""The harness of the hostile-input corpus: run parity as a user would, on hostile input, and
check everything the README promises about it at once.

``run_hostile`` runs ``python -m parity ...`` in a directory of the test's own, with a private
TMPDIR and a marker in the environment (so every process parity starts can be found in /proc
afterwards), and records the bytes of every file it was given. ``Outcome.assert_clean`` then
checks: the exit code, one clear line on stderr (``Error: ...`` for errors), no traceback,
input files byte-identical, nothing written outside the outputs the test names, nothing left
in TMPDIR, no process left, and the time limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from helpers import ROOT, default_signals, wait_until


def _digest(path: Path) -> str | None:
    try:
        if path.is_fifo() or not path.is_file():
            return f"non-regular:{path.lstat().st_mode:o}"
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _tree(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*")} if directory.exists() else set()


def _marked_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class Outcome:
    args: tuple
    code: int | None
    out: str
    err: str
    seconds: float
    changed_inputs: list = field(default_factory=list)
    new_files: list = field(default_factory=list)
    temp_left: list = field(default_factory=list)
    processes_left: list = field(default_factory=list)
    timed_out: bool = False

    def assert_clean(self, code, *fragments: str, limit: float = 120.0, error_line: bool = True) -> None:
        """Everything a user may rely on, in one assertion per promise."""
        where = f"parity {' '.join(map(str, self.args))}\nstdout: {self.out[-2000:]}\nstderr: {self.err[-2000:]}"
        assert not self.timed_out, f"did not finish within {limit} s: {where}"
        assert self.code == int(code), f"exit {self.code}, expected {int(code)}: {where}"
        assert "Traceback" not in self.err, where
        if error_line:
            lines = [ln for ln in self.err.splitlines() if ln.strip()]
            assert len(lines) == 1, f"expected one line on stderr: {where}"
            assert lines[0].startswith(("Error: ", "Interrupted")), where
            for fragment in fragments:
                assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
        else:  # a run that succeeds says nothing a user would read as a problem
            assert "Warning" not in self.err and "Error" not in self.err, where
        assert not self.changed_inputs, f"input files changed: {self.changed_inputs}: {where}"
        assert not self.new_files, f"files written outside the named outputs: {self.new_files}: {where}"
        assert not self.temp_left, f"left in TMPDIR: {self.temp_left}: {where}"
        assert not self.processes_left, f"processes left: {self.processes_left}: {where}"
        assert self.seconds <= limit, f"took {self.seconds:.1f} s > {limit} s: {where}"


# Where a parity run is, read from its private temporary directory (TMPDIR/parity-run-*): what
# run_hostile's ``signal_when`` waits for. A worker's directory exists once the CLI has installed
# its signal handlers and started a child (MNN or its converter); in-1.npy is the first feed of
# the MNN run; in-3.npy the feed of the layer capture's first batch that follows it (in-1 feeds,
# out-2 output), in-N.npy (N > 3) those of its later batches. Each lives only while its request
# is served, and the first batch is small: any of them marks the capture (a tuple: any glob).
STARTED = "parity-run-*/parity-*/worker.log"
RUNNING = "parity-run-*/parity-*/in-1.npy"
CAPTURING = ("parity-run-*/parity-*/in-[3-9].npy", "parity-run-*/parity-*/in-[1-9][0-9]*.npy")
PAIR_RUNNING = "parity-run-*/parity-*/in-*.npy"  # a sweep's pair check, running MNN (in its runner's child)


def run_hostile(*args, cwd: Path, inputs=(), outputs=(), timeout: float = 120.0, env=None,
                stdin=subprocess.DEVNULL, signal_when: tuple[str | tuple[str, ...], int] | None = None,
                signal_group: bool = False, watch=()) -> Outcome:
    """Run ``python -m parity *args`` in ``cwd``, with SIGHUP, SIGINT and SIGTERM at their
    default dispositions whatever this process inherited (``helpers.default_signals``).

    ``inputs``: files whose bytes must not change (every existing path among ``args`` is
    added). ``outputs``: paths parity may create. ``watch``: more directories in which nothing
    may appear. ``signal_when``: (glob or globs, signal): send the signal once a file matching
    one appears under parity's TMPDIR (``STARTED``, ``RUNNING``, ``CAPTURING``: a readiness marker,
    never a fixed delay); the test fails if parity ends first. ``signal_group``: send it to
    parity's whole process group, as a terminal's Ctrl-C reaches every foreground process
    (parity and its children), instead of to parity alone."""
    cwd = Path(cwd)
    tmp = cwd.parent / f"{cwd.name}-tmpdir"
    tmp.mkdir(exist_ok=True)
    marker = f"PARITY_HOSTILE_{uuid.uuid4().hex}"
    full_env = {k: v for k, v in os.environ.items() if k != "PARITY_TRACEBACK"}
    full_env.update({"TMPDIR": str(tmp), marker: "1", "COLUMNS": "160"})
    full_env.update(env or {})
    given = [Path(cwd, a) for a in map(str, args) if not a.startswith("-") and Path(cwd, a).exists()]
    watched = [Path(p) for p in (*inputs, *given)]
    before = {p: _digest(p) for p in watched}
    dirs = [cwd, *map(Path, watch)]
    trees = {d: _tree(d) for d in dirs}
    allowed = {Path(cwd, o).absolute() for o in outputs}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "parity", *map(str, args)], cwd=cwd, env=full_env,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True, preexec_fn=default_signals)
    timed_out = False
    try:
        if signal_when is not None:
            pattern, signum = signal_when
            globs = (pattern,) if isinstance(pattern, str) else tuple(pattern)
            try:
                # stdout and stderr are pipes: a run that fills one before the marker would block,
                # but parity prints its report only at the end and nothing on stderr before
                wait_until(lambda: next((p for g in globs for p in tmp.glob(g)), None), proc,
                           f"{' or '.join(globs)} appeared", timeout=timeout)
            except AssertionError:
                with contextlib.suppress(ProcessLookupError):  # ended first: the assertion says so
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise
            if signal_group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    seconds = time.monotonic() - start
    time.sleep(0.3)  # children killed by the kernel at parity's exit need a moment to go
    left = _marked_processes(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    changed = [str(p) for p, digest in before.items() if _digest(p) != digest]
    new = sorted(str(p) for d in dirs for p in _tree(d) - trees[d]
                 if p.absolute() not in allowed and not any(a in p.absolute().parents for a in allowed))
    temp_left = sorted(str(p) for p in _tree(tmp))
    return Outcome(args, proc.returncode, out, err, seconds, changed, new, temp_left, left, timed_out)


PARITY = [sys.executable, "-m", "parity"]
MODELS = ROOT / "models"
