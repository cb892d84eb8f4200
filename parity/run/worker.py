"""Child-process isolation for frameworks that can kill their process (MNN, its converter), and
the guards of a parity process and its children.

The parent starts the worker (``serve``) with one end of a socket pair, in a private temporary
directory that is also the child's working directory (MNN's converter writes scratch files
into the current directory). Requests and small replies travel as pickles over the socket;
arrays travel as ``.npy`` files in that directory, never through the pipe.

Every Python child parity starts (this worker, sweep's checks) comes from ``python_command``
and ``python_env``: ``python -I`` (no PYTHON* variable has any effect), the parent's import path
without the working directory and with this parity's package root, a process group of its own
(the terminal's signals reach parity, which stops its children) and death with its parent
(PR_SET_PDEATHSIG), so no child outlives parity, however parity ends. ``install_process_guards``
is the CLI's first call: SIGTERM and SIGHUP unwind like Ctrl-C, and all temporary files of the
run live in one private directory, removed at exit and, should parity be killed, by a reaper.

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
import errno
import importlib
import importlib.util
import json
import os
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

_SIGNAL_WORDS = {
    "SIGSEGV": "segmentation fault",
    "SIGFPE": "floating-point exception",
    "SIGABRT": "abort",
    "SIGBUS": "bus error",
    "SIGILL": "illegal instruction",
    "SIGKILL": "killed, often by the out-of-memory killer",
}


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


def error_kind(exc: ParityError) -> str:
    for kind, cls in ERROR_KINDS.items():
        if isinstance(exc, cls):
            return kind
    return "backend"


# The directory holding this parity package (a source checkout or site-packages).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD_VARIABLE = "PARITY_CHILD_SETUP"

# ``python -I -c _BOOT PARENT ENTRY ARGS...``: -I keeps the working directory, the user's site
# directory and every PYTHON* variable (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONWARNINGS...)
# out of the child; what it needs instead comes from ``python_env``.
_BOOT = ("import json, os, sys; setup = json.loads(os.environ.pop(%r, '{}')); "
         "sys.path[:] = setup.get('path') or sys.path; "
         "from parity.run.worker import bootstrap; bootstrap(setup)" % _CHILD_VARIABLE)


def python_command(entry: str, *args) -> list[str]:
    """The command line of an isolated Python child (run it with ``env=python_env()``) that
    dies with this process and runs ``entry``, "parity.module:function", called without
    arguments, ``sys.argv[1:]`` being ``args``."""
    return [sys.executable, "-I", "-c", _BOOT, str(os.getpid()), entry, *map(str, args)]


def python_env(**variables: str) -> dict[str, str]:
    """The environment of a ``python_command`` child: this one's, plus ``variables``, plus what
    makes the child import what its parent imports: this process's sys.path without the working
    directory or relative entries (a click.py or numpy.py where the user stands is never
    imported) and with this parity's package root; and the sitecustomize and usercustomize this
    process ran at its start, if any (-I alone would skip those from PYTHONPATH or the user
    site). PYTHONPATH and user-site installs of a framework keep working in the child."""
    try:
        here = os.getcwd()
    except OSError:
        here = None
    path = [p for p in sys.path if p and os.path.isabs(p) and os.path.normpath(p) != here]
    if PACKAGE_ROOT not in path:
        path.insert(0, PACKAGE_ROOT)
    customize = {name: getattr(sys.modules.get(name), "__file__", None)
                 for name in ("sitecustomize", "usercustomize")}
    env = dict(os.environ, **variables)
    env[_CHILD_VARIABLE] = json.dumps({"path": path, "customize": {k: v for k, v in customize.items() if v}})
    return env


def bootstrap(setup: dict) -> None:
    """The child side of ``python_command``."""
    parent, entry = int(sys.argv[1]), sys.argv[2]
    sys.argv[:3] = [entry]
    _die_with_parent(parent)
    for name, file in setup.get("customize", {}).items():
        if getattr(sys.modules.get(name), "__file__", None) != file:
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is not None:
                module = sys.modules[name] = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
    module_name, _, attr = entry.partition(":")
    if module_name.split(".")[0] != "parity":
        raise SystemExit(f"refusing to run {entry!r}")
    getattr(importlib.import_module(module_name), attr)()


def signal_description(returncode: int) -> str:
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    words = _SIGNAL_WORDS.get(name)
    return f"{name} ({words})" if words else name


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

    def __enter__(self) -> "Worker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, preload: str | None = None) -> "Worker":
        """Spawn the child; with ``preload`` (a parity module) it imports that at once, so its
        framework loads while the parent is still busy with its own imports."""
        self.dir = Path(tempfile.mkdtemp(prefix="parity-"))
        parent_end, child_end = socket.socketpair()
        self._log = open(self.dir / "worker.log", "wb")
        try:
            self._proc = subprocess.Popen(
                python_command("parity.run.worker:serve_argv", child_end.fileno(),
                               *([preload] if preload else [])),
                pass_fds=(child_end.fileno(),),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=python_env(),
                start_new_session=True,  # the terminal's Ctrl-C reaches parity, which stops us
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

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return (self.dir / "worker.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self) -> str:
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            # The child is idle between requests and holds nothing worth a graceful exit;
            # MNN's teardown alone takes tens of milliseconds.
            self.kill()
            self._proc = None
        release_files(self)


def release_files(worker) -> None:
    """Close a worker's log and remove its private directory (a local or a target's worker)."""
    if worker._log is not None:
        worker._log.close()
        worker._log = None
    if worker.dir is not None:
        shutil.rmtree(worker.dir, ignore_errors=True)
        worker.dir = None


# Children started ahead of need (see prestart), by framework.
_POOL: dict[str, list] = {}


def prestart(framework: str, preload: str, count: int = 1) -> None:
    """Start ``count`` children for ``framework`` now, importing ``preload`` in them, for a
    later ``Worker.take`` to pick up. The CLI calls this first thing, so the framework's
    import overlaps parity's own start-up. Unused children are killed at exit."""
    if not _POOL:
        atexit.register(_drain)
    for _ in range(count):
        _POOL.setdefault(framework, []).append(Worker(framework).start(preload=preload))


def take(framework: str, *, timeout: float = 300.0) -> Worker:
    """A started child for ``framework``: a prestarted one if any is left, else a new one."""
    pool = _POOL.get(framework)
    while pool:
        worker = pool.pop()
        if worker._proc is not None and worker._proc.poll() is None:
            worker.timeout = timeout
            return worker
        worker.close()
    return Worker(framework, timeout=timeout).start()


def _drain() -> None:
    _ignore_signals()  # exiting already: a signal now would only cut the cleanup short
    for workers in _POOL.values():
        for worker in workers:
            worker.close()
    _POOL.clear()


# -- the guards of a parity process ----------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C raises KeyboardInterrupt, so the
    same ``finally`` blocks and context managers stop the children and remove temporary files on
    the way out. ``exit_code`` is the shell's 128 + the signal's number (143 for SIGTERM)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + self.signum
        super().__init__(self.signal_name)


# What the shell shows for a program killed by SIGPIPE (`yes | head`): 141 on Linux and macOS.
BROKEN_PIPE_EXIT = 128 + int(getattr(signal, "SIGPIPE", 13))

_GUARDED = False
_RUN_DIR: str | None = None
_REAPER: subprocess.Popen | None = None

# The reaper waits on a pipe that only parity holds open; the kernel closes it however parity
# ends, SIGKILL included. Then it removes the run's private directory (twice: a child killed
# along with parity may still have been writing). It runs in a session of its own and ignores
# the signals that end parity, so it outlives parity by those few milliseconds only.
_REAPER_CODE = """
import os, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
sys.stdin.buffer.read()
shutil.rmtree(sys.argv[1], ignore_errors=True)
time.sleep(0.05)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


def install_process_guards() -> None:
    """The CLI's first call (``python -m parity`` and the ``parity`` command); once per process.

    - SIGTERM and SIGHUP raise ``Terminated`` (a KeyboardInterrupt) in the main thread, so they
      unwind like Ctrl-C: children stopped, temporary files removed, one line, exit 128 + the
      signal (see ``interruption``). A signal ignored at start (``nohup``) stays ignored, and a
      second signal is ignored while the first one's cleanup runs.
    - Standard streams closed at start are opened on /dev/null: otherwise the next file parity
      opens would get descriptor 1 and receive what is printed.
    - All temporary files of the run go into one private directory (TMPDIR and tempfile's
      default point into it, for parity, its children and the frameworks: ONNX Runtime leaves
      ``.ses`` there), removed at exit and, should parity be killed, by a reaper process.
    - ONNX Runtime's telemetry is off unless ORT_DISABLE_TELEMETRY is set: it writes a device
      id under ~/.cache and uploads events, and parity opens no network connection.
    """
    global _GUARDED
    if _GUARDED:
        return
    _GUARDED = True
    _open_closed_streams()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    _private_tempdir()
    # SIGINT too: Python's default handler raises anew if Ctrl-C comes again during cleanup,
    # and a KeyboardInterrupt escaping there ends the process by SIGINT (exit -2)
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        signum = getattr(signal, name, None)
        try:
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, _terminate)
        except ValueError:  # not the main thread: the caller keeps its own handling
            pass


_SIGNALLED: list = []  # the interruption raised by _terminate, once one was


def _terminate(signum, _frame) -> None:
    _ignore_signals()  # let the cleanup finish
    interrupted = Terminated(signum)
    _SIGNALLED.append(interrupted)
    raise interrupted


def signalled() -> KeyboardInterrupt | None:
    """The interruption already signalled, if any. An error raised while it unwinds (a module
    half-imported when SIGTERM arrived reads as "not installed") is its consequence: the CLI
    reports the signal, not the error."""
    return _SIGNALLED[0] if _SIGNALLED else None


def _ignore_signals() -> None:
    if not _GUARDED:
        return  # a library's host process keeps its own handling
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        try:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        except (AttributeError, ValueError):
            pass


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the run, for the CLI's one line ("Interrupted" for Ctrl-C, "Interrupted by
    SIGTERM" for ``Terminated``), and the exit code: 130, or 128 + the signal's number."""
    from parity.core.errors import ExitCode

    name = getattr(exc, "signal_name", None)
    return (f"Interrupted by {name}" if name and name != "SIGINT" else "Interrupted",
            int(getattr(exc, "exit_code", ExitCode.INTERRUPTED)))


def silence_stdout() -> int:
    """stdout's reader went away (``parity check ... | head``): point descriptor 1 at /dev/null,
    so flushing stdout at exit cannot fail a second time, and return the exit code of a process
    killed by SIGPIPE (141), as the shell shows it for any other program in that pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass
    return BROKEN_PIPE_EXIT


def _open_closed_streams() -> None:
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def _private_tempdir() -> None:
    global _RUN_DIR, _REAPER
    given = os.environ.get("PARITY_PRIVATE_TMPDIR")
    if given and given == os.environ.get("TMPDIR") and os.path.isdir(given):
        tempfile.tempdir = given  # made for this process by a parity parent, which removes it
        return
    try:
        run = tempfile.mkdtemp(prefix="parity-run-")
    except OSError:
        return  # an unusable TMPDIR: the first step that needs one says so
    _RUN_DIR = tempfile.tempdir = os.environ["TMPDIR"] = run
    atexit.register(_remove_run_dir)
    try:
        _REAPER = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER_CODE, run],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd="/", start_new_session=True)
    except OSError:
        pass


def _remove_run_dir() -> None:
    global _REAPER
    _ignore_signals()  # exiting already: a signal now would only cut the cleanup short
    if _RUN_DIR is not None:
        shutil.rmtree(_RUN_DIR, ignore_errors=True)
    if _REAPER is not None:
        _REAPER.kill()
        _REAPER.wait()
        _REAPER.stdin.close()
        _REAPER = None


# -- child side ------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this child when the parent dies, so no orphan survives. A parent
    that died before the request leaves us with another parent already: exit then."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


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
