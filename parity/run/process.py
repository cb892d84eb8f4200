"""How parity starts its children, and the guards of a parity process.

Every child parity starts comes from ``spawn``: a session of its own (the terminal's signals reach
parity, which stops its children; ``kill_group`` ends a child with all it started) and death with
its parent (PR_SET_PDEATHSIG), so no child outlives parity, however parity ends. Python children
(the worker, sweep's checks) run ``python_command`` with ``python_env``: ``python -I`` (no PYTHON*
variable has any effect), the parent's import path without the working directory and with this
parity's package root. ``install_process_guards`` is the CLI's first call: SIGTERM and SIGHUP
unwind like Ctrl-C, a closed stdout's reader (``| head``) ends parity as the shell expects, and
all temporary files of the run live in one private directory, removed at exit and, should parity
be killed, by a reaper.

Shipped to targets with the worker (``targets._SHIPPED``): standard library only.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SIGNAL_WORDS = {
    "SIGSEGV": "segmentation fault",
    "SIGFPE": "floating-point exception",
    "SIGABRT": "abort",
    "SIGBUS": "bus error",
    "SIGILL": "illegal instruction",
    "SIGKILL": "killed, often by the out-of-memory killer",
}

# The directory holding this parity package (a source checkout or site-packages).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD_VARIABLE = "PARITY_CHILD_SETUP"

# ``python -I -c _BOOT PARENT ENTRY ARGS...``: -I keeps the working directory, the user's site
# directory and every PYTHON* variable (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONWARNINGS...)
# out of the child; what it needs instead comes from ``python_env``.
_BOOT = ("import json, os, sys; setup = json.loads(os.environ.pop(%r, '{}')); "
         "sys.path[:] = setup.get('path') or sys.path; "
         "from parity.run.process import bootstrap; bootstrap(setup)" % _CHILD_VARIABLE)


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
    die_with_parent(parent)
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


def die_with_parent(parent: int | None = None) -> None:
    """Linux: the kernel kills this process when its parent dies, so no orphan survives. Called
    first thing in a child (``bootstrap``) or between fork and exec (``spawn``). A ``parent``
    that died before this call leaves us with another parent already: exit then."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)

def spawn(argv: list, *, python: bool = False, stdin=subprocess.DEVNULL, **popen) -> subprocess.Popen:
    """Start ``argv`` in a session of its own, dying with this process (see the module's
    docstring); ``popen`` goes to ``subprocess.Popen``, which raises OSError as usual.
    ``python``: argv is a ``python_command``, whose child arranges its own death with its
    parent first thing; a fork-time hook would cost Popen its fast path (vfork)."""
    hook = None if python else die_with_parent
    return subprocess.Popen(argv, stdin=stdin, start_new_session=True, preexec_fn=hook, **popen)


class Forked:
    """A ``fork_child`` child, with the part of ``subprocess.Popen``'s interface parity uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self.args = ["<forked>"]

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                try:
                    self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
                except ChildProcessError:  # reaped elsewhere
                    self.returncode = -signal.SIGKILL
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.002)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fork_child(run, *, cwd: str, log_fd: int, keep_fd: int) -> Forked:
    """``run()`` in a forked copy of this process, in a session of its own, dying with it, in
    ``cwd``, with stdout and stderr on ``log_fd`` and no other descriptor than ``keep_fd``:
    what ``spawn(python_command(...))`` gives without a new interpreter's start (Python's, its
    site's: 0.05-0.15 s). Only for a process that is still small and has no Python thread, as
    the CLI's is before it imports more than numpy (``__main__``; numpy's OpenBLAS stops its
    own thread at a fork); the child never returns to the caller's code, and leaves by
    ``os._exit`` (no atexit handler of the parent runs twice)."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:
        os.setsid()
        die_with_parent(parent)
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):
            signum = getattr(signal, name, None)
            if signum is not None:
                signal.signal(signum, signal.SIG_DFL)
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in range(3, _max_fd()):
            if fd != keep_fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        run()
        code = 0
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _max_fd() -> int:
    try:
        return max(int(entry) for entry in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 256


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a ``spawn``ed child and everything it started (its session's process group)."""
    # Not poll(): reaping a child that just exited would skip the processes it left running.
    if proc.returncode is not None:
        return  # reaped already: its pid may belong to another process now
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
# The same in the shell where there is one: a Python reaper costs every parity start 0.04-0.08 s
# of CPU (its interpreter's start), taken from the MNN child and parity starting beside it.
# ``read`` is the shell's own: whatever PATH holds, the wait cannot fail and remove early.
_REAPER_SHELL = ('trap "" INT TERM HUP; while read -r _; do :; done; PATH=/usr/bin:/bin:$PATH; rm -rf -- "$1"; '
                 'sleep 0.05 2>/dev/null || sleep 1; rm -rf -- "$1"')
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
    ignore_signals()  # let the cleanup finish
    interrupted = Terminated(signum)
    _SIGNALLED.append(interrupted)
    raise interrupted


def signalled() -> KeyboardInterrupt | None:
    """The interruption already signalled, if any. An error raised while it unwinds (a module
    half-imported when SIGTERM arrived reads as "not installed") is its consequence: the CLI
    reports the signal, not the error."""
    return _SIGNALLED[0] if _SIGNALLED else None


def ignore_signals() -> None:
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
        argv = (["/bin/sh", "-c", _REAPER_SHELL, "parity-reaper", run] if os.path.exists("/bin/sh")
                else [sys.executable, "-I", "-S", "-c", _REAPER_CODE, run])
        _REAPER = subprocess.Popen(argv,
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd="/", start_new_session=True)
    except OSError:
        pass


def _remove_run_dir() -> None:
    global _REAPER
    ignore_signals()  # exiting already: a signal now would only cut the cleanup short
    if _RUN_DIR is not None:
        shutil.rmtree(_RUN_DIR, ignore_errors=True)
    if _REAPER is not None:
        _REAPER.kill()
        _REAPER.wait()
        _REAPER.stdin.close()
        _REAPER = None
