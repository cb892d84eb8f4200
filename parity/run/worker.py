"""Child-process isolation for frameworks that can kill their process (MNN, its converter).

The parent starts the worker (``serve``) with one end of a socket pair, in a private temporary
directory that is also the child's working directory (MNN's converter writes scratch files
into the current directory). The child is a ``process.python_command`` child: isolated, in a
session of its own, dying with parity. Requests and small replies travel as pickles over the
socket; arrays travel as ``.npy`` files in that directory, never through the pipe.

A request names a function ``"parity.module:function"`` that the child imports and calls with
keyword arguments. A signal that kills the child becomes ``BackendCrash`` naming the signal and
the step. A step gets ``timeout`` seconds from its submission: with no reply by then the child
is killed and the step becomes ``BackendTimeout``; a reply that did arrive is always taken,
even when the parent, busy elsewhere, collects it after the deadline. A ParityError raised in
the child reaches the parent as its base class (usage, model, input, output path or backend),
so it keeps its exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from parity.core.errors import (
    BackendCrash,
    BackendError,
    BackendTimeout,
    InputError,
    ModelError,
    OutputPathError,
    ParityError,
    UsageError,
)
from parity.run.process import (fork_child, ignore_signals, kill_group, python_command, python_env,
                                signal_description, spawn)

class ChildFailure(Exception):
    """Raised inside the child to send a classified error to the parent."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # a key of ERROR_KINDS


# How a ParityError travels from the child: as the first of these classes it is an instance
# of, so a subclass (an InputError of some module's own) keeps its exit code; the parent
# raises that class. Anything else is "backend".
ERROR_KINDS = {
    "usage": UsageError,
    "model": ModelError,
    "input": InputError,
    "output_path": OutputPathError,
    "backend": BackendError,
}


def failure_reason(error: BaseException) -> str:
    """Why a framework could not do one thing (return a tensor), in one line without memory
    addresses (a profiler makes MNN's binding name "<... object at 0x...>"): one reason for every
    tensor that fails alike, the same in every run."""
    text = str(error).strip().splitlines()
    line = re.sub(r" at 0x[0-9a-fA-F]+", "", text[0]) if text else ""
    return f"{type(error).__name__}: {line}"


def error_kind(exc: ParityError) -> str:
    for kind, cls in ERROR_KINDS.items():
        if isinstance(exc, cls):
            return kind
    return "backend"


class Worker:
    """One child process serving requests until closed. Use as a context manager."""

    # Seconds a child that stopped answering gets to exit before it is killed: a framework's
    # teardown can hang, and waiting on it without a limit would hang parity too.
    exit_grace: float = 5.0

    def __init__(self, framework: str, *, timeout: float = 300.0):
        self.framework = framework
        self.timeout = timeout
        self.dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._log = None
        self._counter = 0
        self._submitted: float | None = None
        self._busy = False  # a request sent and its reply not read yet
        self._recyclable = False  # taken from the pool (take): may go back to it when closed
        self._pool = framework  # the pool it was taken from (see kept_children)

    def __enter__(self) -> "Worker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, preload: str | None = None, *, fork: bool = False,
              entry: str = "parity.run.worker:serve_argv") -> "Worker":
        """Spawn the child; with ``preload`` (a parity module) it imports that at once, so its
        framework loads while the parent is still busy with its own imports. ``fork``: a copy of
        this process instead of a new interpreter, for the CLI's first moments only (see
        ``process.fork_child``). ``entry``: the child's main function, taking the socket's
        descriptor (then ``preload``) as arguments, ``serve_argv`` by default."""
        # a kept child outlives the check that started it: its directory is not that check's
        self.dir = Path(tempfile.mkdtemp(prefix="parity-", dir=_HOME))
        parent_end, child_end = socket.socketpair()
        self._log = open(self.dir / "worker.log", "wb")
        try:
            args = [str(child_end.fileno()), *([preload] if preload else [])]
            if fork:
                def run():
                    sys.argv[1:] = args
                    resolve(entry)()

                self._proc = fork_child(run, cwd=str(self.dir), log_fd=self._log.fileno(), keep_fd=child_end.fileno())
            else:
                self._proc = spawn(
                    python_command(entry, *args),
                    python=True, pass_fds=(child_end.fileno(),), cwd=self.dir,
                    stdout=self._log, stderr=subprocess.STDOUT, env=python_env(),
                )
        except OSError as exc:
            self.close()
            raise BackendError(f"could not start a child process for {self.framework}: {exc}") from None
        finally:
            child_end.close()
        self._conn = Connection(parent_end.detach())
        return self

    def path(self, stem: str) -> Path:
        self._counter += 1
        return self.dir / f"{stem}-{self._counter}.npy"

    def call(self, function: str, *, step: str, timeout: float | None = None, **kwargs):
        """Run ``function(**kwargs)`` in the child; return its result or raise a ParityError."""
        self.submit(function, step=step, **kwargs)
        return self.result(step=step, timeout=timeout)

    def submit(self, function: str, *, step: str, **kwargs) -> None:
        """Send a request without waiting, so the child works while the parent does too."""
        try:
            self._conn.send((function, kwargs))
        except OSError:
            self._raise_dead(step)
        self._submitted = time.monotonic()
        self._busy = True

    def result(self, *, step: str, timeout: float | None = None):
        """The reply to the request sent last. The step may take ``timeout`` seconds from its
        submission. A reply already here is taken whatever the time: the parent may have been
        busy elsewhere (another framework's run) while the child finished in time."""
        timeout = self.timeout if timeout is None else timeout
        submitted = time.monotonic() if self._submitted is None else self._submitted
        deadline = submitted + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._conn.poll(max(0.0, min(remaining, 0.5))):
                break
            if remaining <= 0:
                self.kill()
                raise BackendTimeout(self.framework, step, timeout)
            if self._proc.poll() is not None and not self._conn.poll(0):
                self._raise_dead(step)
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            self._raise_dead(step)
        self._busy = False
        if status == "ok":
            return payload
        kind, message = payload
        raise ERROR_KINDS.get(kind, BackendError)(message)

    def _raise_dead(self, step: str):
        try:
            code = self._proc.wait(timeout=self.exit_grace)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = self.log_tail()
            raise BackendError(
                f"{self.framework} child process stopped answering while {step} and did not exit "
                f"within {self.exit_grace:g} s, so parity killed it" + (f"; its last output: {tail}" if tail else "")
            ) from None
        if code < 0:
            raise BackendCrash(self.framework, step, signal_description(code))
        tail = self.log_tail()
        raise BackendError(
            f"{self.framework} child process exited with code {code} while {step}"
            + (f": {tail}" if tail else "")
        )

    def log_text(self, since: int = 0) -> str:
        """What the child printed, from byte ``since`` of its log on (see ``log_size``)."""
        if self._log is not None:
            self._log.flush()
        try:
            with open(self.dir / "worker.log", "rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_size(self) -> int:
        """Bytes the child printed so far: a child reused by another check (``keep_children``)
        has the earlier checks' lines before this mark."""
        try:
            return os.path.getsize(self.dir / "worker.log")
        except (OSError, TypeError):
            return 0

    def log_tail(self) -> str:
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def kill(self) -> None:
        """Kill the child and whatever it started in its process group (a session of its own)."""
        if self._proc is not None and self._proc.poll() is None:
            kill_group(self._proc)
            self._proc.wait()

    def close(self) -> None:
        if self._kept() and self._recycle():
            return
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            # The child is idle between requests and holds nothing worth a graceful exit;
            # MNN's teardown alone takes tens of milliseconds.
            self.kill()
            self._proc = None
        release_files(self)

    def _kept(self) -> bool:
        """Whether closing returns the child to its pool: in a process that keeps its children
        (keep_children), or inside the kept_children scope whose pool it was taken from."""
        return _KEEP or (self._pool != self.framework and self._pool == _pool_key(self.framework))

    def _recycle(self) -> bool:
        """Back to the pool instead of killed: a healthy, idle child taken from it, its files
        but the log removed. The next ``load`` replaces everything the child held."""
        if not self._recyclable or self._busy or self._conn is None or self._proc is None:
            return False
        if self._proc.poll() is not None or self._conn.poll(0):
            return False
        if len(_POOL.get(self._pool, ())) >= _KEPT_PER_POOL:
            return False
        if self.framework in _RELEASE:  # an idle child holds no model's memory
            try:
                self.call(_RELEASE[self.framework], step="releasing its model", timeout=30)
            except ParityError:
                return False
        for entry in os.scandir(self.dir):
            if entry.name == "worker.log":
                continue
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        self._counter = 0
        _POOL.setdefault(self._pool, []).append(self)
        return True


def release_files(worker) -> None:
    """Close a worker's log and remove its private directory (a local or a target's worker)."""
    if worker._log is not None:
        worker._log.close()
        worker._log = None
    if worker.dir is not None:
        shutil.rmtree(worker.dir, ignore_errors=True)
        worker.dir = None


# Children started ahead of need (see prestart) or kept between checks (keep_children), by
# framework; whatever is left is killed at exit.
_POOL: dict[str, list] = {}
_KEEP = False
_KEPT_PER_POOL = 2  # idle children kept at most per pool: a check rarely holds more at once
# what a kept child of a framework is asked to do before it waits for the next check
_RELEASE = {"mnn": "parity.backends.mnn_child:release"}
_HOME: str | None = None  # where children's directories go while kept (the process's TMPDIR then)
_DRAIN_REGISTERED = False


def prestart(framework: str, preload: str, count: int = 1, *, fork: bool = False) -> None:
    """Have ``count`` children for ``framework`` waiting, started now with ``preload``
    imported, for a later ``take`` to pick up. The CLI calls this first thing, so the
    framework's import overlaps parity's own start-up. Children already waiting count.
    ``fork``: see ``Worker.start``."""
    _drain_at_exit()
    pool = _POOL.setdefault(framework, [])
    for _ in range(count - len(pool)):
        pool.append(Worker(framework).start(preload=preload, fork=fork))


def keep_children(keep: bool = True) -> None:
    """In a process that runs many checks (a sweep's runner): a child taken from the pool goes
    back to it when its check closes it, healthy and idle, so the next check skips Python's
    and the framework's start (0.1-0.2 s of CPU each). A child that crashed, timed out or is
    busy is killed as always; every load starts from a clean state in the child."""
    global _KEEP, _HOME
    _KEEP = keep
    _HOME = tempfile.gettempdir() if keep else None
    _drain_at_exit()


_SCOPE: list[str] = []  # the innermost kept_children scope, if any


@contextlib.contextmanager
def kept_children(scope: str):
    """Within: the children of checks run here are kept between them (as ``keep_children``),
    in a pool of ``scope``'s own, which code outside never takes from: a library caller's
    checks (the pytest plugin's ``assert_parity``) share children with each other only."""
    _drain_at_exit()
    _SCOPE.append(scope)
    try:
        yield
    finally:
        _SCOPE.pop()


def _pool_key(framework: str) -> str:
    return f"{framework} ({_SCOPE[-1]})" if _SCOPE else framework


def take(framework: str, *, timeout: float = 300.0) -> Worker:
    """A started child for ``framework``: a waiting one if any is left, else a new one."""
    key = _pool_key(framework)
    pool = _POOL.get(key)
    while pool:
        worker = pool.pop()
        if worker._proc is not None and worker._proc.poll() is None:
            worker.timeout = timeout
            worker._recyclable = True
            return worker
        worker._recyclable = False
        worker.close()
    worker = Worker(framework, timeout=timeout).start()
    worker._recyclable, worker._pool = True, key
    return worker


def _drain_at_exit() -> None:
    global _DRAIN_REGISTERED
    if not _DRAIN_REGISTERED:
        _DRAIN_REGISTERED = True
        atexit.register(_drain)


def _drain() -> None:
    global _KEEP
    ignore_signals()  # exiting already: a signal now would only cut the cleanup short
    _KEEP = False
    for workers in list(_POOL.values()):
        for worker in list(workers):
            worker.close()
    _POOL.clear()


# -- child side ------------------------------------------------------------------------------
def resolve(function: str):
    module_name, _, attr = function.partition(":")
    if not module_name.startswith("parity."):
        raise ChildFailure("backend", f"refusing to run {function!r} in the worker")
    return getattr(importlib.import_module(module_name), attr)


def serve_argv() -> None:
    """``serve`` from the command line: FD [PRELOAD] (see Worker.start)."""
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)


def serve(fd: int, preload: str | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    conn = Connection(fd)
    if preload and preload.startswith("parity."):
        try:
            importlib.import_module(preload)
        except Exception:  # a failed preload surfaces, classified, on the first request
            pass
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        function, kwargs = message
        try:
            reply = ("ok", resolve(function)(**kwargs))
        except ChildFailure as exc:
            reply = ("error", (exc.kind, str(exc)))
        except ParityError as exc:
            reply = ("error", (error_kind(exc), str(exc)))
        except Exception as exc:  # any framework exception becomes one classified line
            text = str(exc).strip().splitlines()
            reply = ("error", ("backend", f"{type(exc).__name__}: {text[0] if text else ''}"))
        sys.stdout.flush()
        conn.send(reply)
