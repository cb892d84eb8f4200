"""Where MNN runs (``--mnn-target``): this machine, an emulated arm64 Linux, a device over ssh,
or any command that starts a Python.

    local                       the host, in a child process (worker.py), the default
    arm64                       an arm64 Debian root run by qemu user-mode emulation, made once by
                                ``parity target setup arm64`` (target_setup.py)
    ssh://[user@]host[:port]    a Linux device with python3, numpy and MNN; ``?python=PATH``
                                picks its Python. The ssh client is ``$PARITY_SSH`` if set (for
                                example ``ssh -F my_config``), else ``ssh``; it never prompts.
    exec:COMMAND                COMMAND, run by ``sh -c``, must start a Python with its stdin and
                                stdout connected to parity; parity appends ``-c BOOT``
                                (``exec:docker run -i --platform linux/arm64 IMAGE python3``).

Every target but local is served by ``RemoteWorker``: the same calls as the local ``Worker``
(submit, result, call, close), over the target Python's stdin/stdout (agent.py), with the
model sent to the target once and arrays inline. Crashes, time limits and errors end as they
do locally: ``BackendCrash`` naming the signal and the step, ``BackendTimeout``, or the error's
own class and exit code.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from parity.core.errors import BackendCrash, BackendError, BackendTimeout, UsageError
from parity.run.process import spawn

# The parity modules a target runs, sent as source at start (agent.py's loader).
_SHIPPED = ("parity", "parity.core", "parity.core.errors", "parity.backends", "parity.run",
            "parity.run.process", "parity.run.worker", "parity.backends.mnn_child", "parity.run.agent",
            "parity.llm", "parity.llm.runtime_child", "parity.llm.module_child")

_BOOT = ("import sys;sys.version_info<(3,8) and sys.exit('parity needs Python 3.8 or newer on the target, "
         "found '+sys.version.split()[0]);import struct,zlib;r=sys.stdin.buffer;"
         "n=struct.unpack('>Q',r.read(8))[0];"
         "exec(compile(zlib.decompress(r.read(n)),'<parity-boot>','exec'))")

_LOADER = '''
import importlib.abc, importlib.util, sys
SOURCES = %r
PACKAGES = %r
class _ParityModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in SOURCES:
            return importlib.util.spec_from_loader(name, self, is_package=name in PACKAGES)
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        module.__file__ = "/parity-target/" + module.__name__.replace(".", "/") + ".py"
        exec(compile(SOURCES[module.__name__], "<parity>/" + module.__name__, "exec"), module.__dict__)
sys.meta_path.insert(0, _ParityModules())
from parity.run.agent import main
main()
'''

# A file goes to the target in chunks of this size, so neither side holds a big model twice.
_CHUNK = 32 << 20

# faulthandler's words for the signals it reports, as a crash on the target is named
_FAULTS = {
    "Segmentation fault": "SIGSEGV",
    "Floating point exception": "SIGFPE",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Illegal instruction": "SIGILL",
}


@dataclass(frozen=True)
class Target:
    """A parsed ``--mnn-target``. ``spec`` is what the user gave, shown in reports."""

    spec: str
    kind: str  # a KINDS name: local, arm64, ssh, exec
    host: str = ""
    user: str = ""
    port: int | None = None
    python: str = "python3"
    command: str = ""

    @property
    def local(self) -> bool:
        return self.kind == "local"

    def argv(self) -> tuple[list[str], dict[str, str]]:
        """The command that starts the target's Python running BOOT, and extra environment."""
        start = kind_named(self.kind).argv
        if start is None:
            raise UsageError(f"target {self.spec!r} runs in the local worker")
        return start(self)


@dataclass(frozen=True)
class TargetKind:
    """One kind of ``--mnn-target``: how it is written, how it is parsed and how its Python
    starts. A new kind is one entry of KINDS; the help, the error for an unknown target and the
    manifest's rule about commands follow from it."""

    name: str
    usage: str  # how a user writes it, e.g. "ssh://[user@]host[:port]"
    help: str  # one phrase for --mnn-target's help
    parse: Callable[[str], Target | None]  # None: the text is not of this kind
    argv: Callable[[Target], tuple[list[str], dict[str, str]]] | None = None  # None: the local worker
    runs_a_command: Callable[[Target], bool] = lambda target: False  # names a program to run


def _word(name: str) -> Callable[[str], Target | None]:
    return lambda text: Target(name, name) if text == name else None


def _arm64_argv(target: Target) -> tuple[list[str], dict[str, str]]:
    from parity.run.target_setup import arm64_python

    prefix, env = arm64_python()
    return [*prefix, "-c", _BOOT], env


def _ssh_argv(target: Target) -> tuple[list[str], dict[str, str]]:
    try:
        client = shlex.split(os.environ.get("PARITY_SSH", "ssh"))
    except ValueError as exc:
        raise UsageError(f"$PARITY_SSH is not a command line ({exc})") from None
    if not client:
        raise UsageError("$PARITY_SSH is empty: unset it, or give the ssh command (e.g. 'ssh -F FILE')")
    where = f"{target.user}@{target.host}" if target.user else target.host
    options = ["-T", "-e", "none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if target.port is not None:
        options += ["-p", str(target.port)]
    # ssh hands the remote shell one string: quote each word for it
    remote = " ".join(shlex.quote(w) for w in (*shlex.split(target.python), "-c", _BOOT))
    return [*client, *options, "--", where, remote], {}


def _parse_exec(text: str) -> Target | None:
    if not text.startswith("exec:"):
        return None
    command = text[len("exec:"):].strip()
    if not command:
        raise UsageError("--mnn-target exec: needs a command that starts a Python, e.g. exec:python3")
    if any(c in command for c in "\n\r\0"):
        raise UsageError("--mnn-target exec: the command must be one line")
    if command.startswith("-"):
        raise UsageError(f"--mnn-target {text!r}: the command cannot start with '-'")
    return Target(text, "exec", command=command)


def _parse_ssh(text: str) -> Target | None:
    if not text.startswith("ssh://"):
        return None
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # "Invalid IPv6 URL": a bracket left open, or one too many
        raise UsageError(f"--mnn-target {text!r} is not ssh://[user@]host[:port][?python=...]: {exc}") from None
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--mnn-target {text!r}: the port must be a number from 1 to 65535") from None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--mnn-target {text!r}: the port must be a number from 1 to 65535")
    host = parts.hostname or ""
    if not host or parts.path not in ("", "/") or host.startswith("-"):
        raise UsageError(f"--mnn-target {text!r}: give ssh://[user@]host[:port], e.g. ssh://pi@192.168.1.20")
    if parts.password is not None:
        raise UsageError("--mnn-target: no password in the target: ssh never prompts; use a key or "
                         "ssh's own config ($PARITY_SSH='ssh -F FILE')")
    if parts.fragment:
        raise UsageError(f"--mnn-target {text!r}: a target has no #fragment")
    user = parts.username or ""
    if user.startswith("-") or any(c.isspace() for c in user + host):
        raise UsageError(f"--mnn-target {text!r}: not a user and host name")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"python"})
    if unknown:
        raise UsageError(f"--mnn-target {text!r}: unknown option {unknown[0]!r} (known: python)")
    python = query.get("python", ["python3"])[-1].strip()
    if not python:
        raise UsageError(f"--mnn-target {text!r}: ?python= needs the path of the target's Python")
    return Target(text, "ssh", host=host, user=user, port=port, python=python)


_MAX_SPEC = 1000
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_./+=:,@%-]+$")

KINDS = (
    TargetKind("local", "local", "local", _word("local")),
    TargetKind("arm64", "arm64", "arm64 (emulated, made by `parity target setup arm64`)",
               _word("arm64"), _arm64_argv),
    TargetKind("ssh", "ssh://[user@]host[:port]",
               "ssh://[user@]host[:port] (a Linux device with python3, numpy and MNN; ssh from $PARITY_SSH, "
               "never prompting)", _parse_ssh, _ssh_argv,
               # a ?python= that is more than one plain word is a command line
               runs_a_command=lambda target: not _SAFE_WORD.match(target.python)),
    TargetKind("exec", "exec:COMMAND",
               "exec:COMMAND (COMMAND starts such a Python with its stdin/stdout connected to parity, "
               "e.g. exec:docker run -i IMAGE python3; parity appends '-c PROGRAM' to it)", _parse_exec,
               lambda target: (["sh", "-c", f"{target.command} -c {shlex.quote(_BOOT)}"], {}),
               runs_a_command=lambda target: True),
)


def kind_named(name: str) -> TargetKind:
    return next(k for k in KINDS if k.name == name)


def targets_help() -> str:
    """--mnn-target's help: every kind, from KINDS."""
    return ("Where MNN runs: " + "; ".join(k.help for k in KINDS) + ". The report records the target's "
            "platform, MNN version and CPU features.")


def parse_target(text: str | None) -> Target:
    """``--mnn-target``'s value; one clear line for anything else."""
    text = (text or "local").strip()
    if len(text) > _MAX_SPEC:
        raise UsageError(f"--mnn-target is {len(text)} characters long; at most {_MAX_SPEC}")
    for kind in KINDS:
        target = kind.parse(text)
        if target is not None:
            return target
    usages = [k.usage for k in KINDS]
    raise UsageError(f"unknown --mnn-target {text!r}: give {', '.join(usages[:-1])} or {usages[-1]}")


def runs_a_command(text: str | None) -> bool:
    """True when the target would run a command named in it: exec:, or an ssh ?python= that is
    more than one plain word (a manifest may name neither; only the command line may)."""
    target = parse_target(text)
    return kind_named(target.kind).runs_a_command(target)


class RemoteWorker:
    """A target's Python serving MNN calls over its stdin/stdout (see agent.py). Same calls as
    ``worker.Worker``; arrays and the model travel inline (``inline`` is True)."""

    inline = True
    exit_grace: float = 5.0

    def __init__(self, target: Target, framework: str = "mnn", *, timeout: float = 300.0):
        self.target = target
        self.framework = f"{framework} on {target.spec}"
        self.timeout = timeout
        self.facts: dict = {}
        self.dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._log = None
        self._log_text: list[str] = []
        self._submitted: float | None = None
        self._lock = threading.Lock()
        self._sent: dict[str, str] = {}  # local model path -> its path on the target
        self._protocol_error: str | None = None

    def __enter__(self) -> "RemoteWorker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- start -----------------------------------------------------------------------------
    def start(self) -> "RemoteWorker":
        """Start the target's Python and check it has what parity needs; on any failure or
        interruption, nothing is left running and no scratch directory stays."""
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> "RemoteWorker":
        argv, extra = self.target.argv()
        self.dir = Path(tempfile.mkdtemp(prefix="parity-target-"))
        self._log = open(self.dir / "stderr.log", "wb")
        env = dict(os.environ, **extra)
        try:
            self._proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                               cwd=self.dir, env=env)
        except OSError as exc:
            self.close()
            raise BackendError(f"could not start target {self.target.spec}: {exc}") from None
        threading.Thread(target=self._read_replies, args=(self._proc.stdout,), daemon=True).start()
        step = f"starting Python on target {self.target.spec}"
        try:
            self._proc.stdin.write(self._boot_frame())
            self._proc.stdin.flush()
        except OSError:
            self._raise_dead(step)
        self.facts = self.call("parity.run.agent:hello", step=step)
        missing = self.facts.get("missing") or []
        if missing:
            names = " and ".join(m.split(" ")[0] for m in missing)
            self.close()
            raise BackendError(
                f"target {self.target.spec} has no {names} for its Python "
                f"{self.facts.get('python', '?')} ({self.facts.get('machine', '?')}): install it there "
                f"(python3 -m pip install {' '.join(m.split(' ')[0] for m in missing)}); "
                f"{'; '.join(missing)}")
        return self

    @staticmethod
    def _boot_frame() -> bytes:
        import importlib.util

        sources, packages = {}, []
        for name in _SHIPPED:
            spec = importlib.util.find_spec(name)
            sources[name] = Path(spec.origin).read_text()
            if spec.submodule_search_locations is not None:
                packages.append(name)
        program = zlib.compress((_LOADER % (sources, packages)).encode())
        return len(program).to_bytes(8, "big") + program

    def _read_replies(self, stream) -> None:
        from parity.run.agent import ProtocolError, read_message

        while True:
            try:
                self._replies.put(read_message(stream))
            except ProtocolError as exc:
                self._protocol_error = str(exc)
                self._replies.put(None)
                return
            except Exception:  # EOF or a torn frame: the target is gone
                self._replies.put(None)
                return

    # -- requests --------------------------------------------------------------------------
    def _send(self, message, step: str) -> None:
        from parity.run.agent import write_message

        try:
            with self._lock:
                write_message(self._proc.stdin, message)
        except (OSError, ValueError):
            self._raise_dead(step)

    def call(self, function: str, *, step: str, timeout: float | None = None, **kwargs):
        self.submit(function, step=step, **kwargs)
        return self.result(step=step, timeout=timeout)

    def submit(self, function: str, *, step: str, **kwargs) -> None:
        self._send(["call", function, kwargs], step)
        self._submitted = time.monotonic()

    def result(self, *, step: str, timeout: float | None = None):
        timeout = self.timeout if timeout is None else timeout
        submitted = time.monotonic() if self._submitted is None else self._submitted
        deadline = submitted + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                reply = self._replies.get(timeout=max(0.0, min(remaining, 0.5)))
                break
            except queue.Empty:
                if remaining <= 0:
                    self.kill()
                    raise BackendTimeout(self.framework, step, timeout) from None
        if reply is None:
            self._raise_dead(step)
        if not (isinstance(reply, dict) and reply.get("status") in ("ok", "error") and "payload" in reply):
            self.kill()
            raise BackendError(f"target {self.target.spec} sent a reply parity cannot read while {step}")
        if isinstance(reply.get("log"), str) and reply["log"]:
            self._log_text.append(reply["log"])
        status, payload = reply["status"], reply["payload"]
        if status == "ok":
            return payload
        from parity.run.worker import ERROR_KINDS

        kind, message = (payload if isinstance(payload, list) and len(payload) == 2 else ("backend", str(payload)))
        # a target decides nothing about parity's usage or output paths: those kinds count as its own failure
        cls = ERROR_KINDS.get(kind, BackendError) if kind in ("model", "input", "backend") else BackendError
        raise cls(str(message))

    def model_path(self, path) -> str:
        """The model's path on the target: sent there once, in chunks."""
        path = os.path.abspath(path)
        if path not in self._sent:
            step = f"sending {Path(path).name} to target {self.target.spec}"
            name = f"{len(self._sent)}-{Path(path).name}"
            with open(path, "rb") as handle:
                chunk, append = handle.read(_CHUNK), False
                while True:
                    self._send(["put", name, chunk, append], step)
                    remote = self._reply_of_put(step)
                    chunk, append = handle.read(_CHUNK), True
                    if not chunk:
                        break
            self._sent[path] = remote
        return self._sent[path]

    def folder_path(self, folder, names) -> str:
        """A folder's path on the target, with the files ``names`` of it (an MNN-LLM export: its
        config.json names the others relative to itself); sent once, under a name of parity's."""
        folder = os.path.abspath(folder)
        if folder not in self._sent:
            remote = None
            label = f"{len(self._sent)}-folder"
            for name in names:
                step = f"sending {Path(folder).name}/{name} to target {self.target.spec}"
                with open(os.path.join(folder, name), "rb") as handle:
                    chunk, append = handle.read(_CHUNK), False
                    while True:
                        self._send(["put", f"{label}/{name}", chunk, append], step)
                        remote = self._reply_of_put(step)
                        chunk, append = handle.read(_CHUNK), True
                        if not chunk:
                            break
            if remote is None:
                raise BackendError(f"nothing to send from {folder}")
            self._sent[folder] = os.path.dirname(remote)
        return self._sent[folder]

    def _reply_of_put(self, step: str) -> str:
        self._submitted = time.monotonic()
        return self.result(step=step)

    # -- ends ------------------------------------------------------------------------------
    def _raise_dead(self, step: str):
        if self._protocol_error is not None:
            self.kill()
            raise BackendError(
                f"target {self.target.spec} wrote something that is not parity's protocol on its stdout "
                f"while {step} ({self._protocol_error}): a login banner or a shell profile that prints? "
                f"parity needs the target Python's stdout to itself")
        try:
            code = self._proc.wait(timeout=self.exit_grace)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BackendError(f"{self.framework} stopped answering while {step}; parity stopped it") from None
        log = self.log_text()
        crash = crash_signal(code, log)
        if crash:
            raise BackendCrash(self.framework, step, crash)
        tail = _last_line(log)
        if self.target.kind == "ssh" and code == 255 and _ssh_refused(tail):
            raise BackendError(f"ssh could not reach target {self.target.spec} while {step}: {tail}")
        if self.target.kind == "ssh" and code == 255:
            raise BackendError(
                f"the connection to target {self.target.spec} ended while {step} (ssh exit 255): the remote "
                f"Python was killed (the out-of-memory killer?) or the network or ssh failed"
                + (f"; last output: {tail}" if tail else ""))
        if code == 127 or "not found" in tail or "No such file" in tail:
            raise BackendError(f"target {self.target.spec} could not start its Python while {step}: "
                               f"{tail or f'exit code {code}'}")
        raise BackendError(f"{self.framework} exited with code {code} while {step}" + (f": {tail}" if tail else ""))

    def log_text(self) -> str:
        text = "".join(self._log_text)
        if self._log is not None:
            self._log.flush()
        try:
            return text + (self.dir / "stderr.log").read_text(errors="replace")
        except (OSError, TypeError):
            return text

    def log_tail(self) -> str:
        return _last_line(self.log_text())

    def kill(self) -> None:
        """End the target: its stdin closed first, so its watcher (agent.py) kills the serving
        Python and removes the scratch directory there; a second later, the whole process
        group here (sh -c, ssh, qemu and what they started)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        try:  # also when its first process has exited: what it left running in the background
            os.killpg(self._proc.pid, signal.SIGKILL)
        except OSError:  # the group is gone
            pass
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def close(self) -> None:
        if self._proc is not None:
            self.kill()  # stdin closed first: the agent removes its scratch directory and exits
            self._proc = None
        from parity.run.worker import release_files

        release_files(self)


def crash_signal(code: int | None, log: str) -> str | None:
    """The crash a target's end shows: a signal in the exit status (qemu and a local shell pass
    the Python's on), else faulthandler's line in its stderr (ssh reports only 255)."""
    from parity.run.process import signal_description

    if code is not None and code < 0:
        return signal_description(code)
    for words, name in _FAULTS.items():
        if f"Fatal Python error: {words}" in log:
            return signal_description(-int(getattr(signal, name)))
    if code is not None and 128 < code < 160:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            return None
        if name in ("SIGSEGV", "SIGFPE", "SIGABRT", "SIGBUS", "SIGILL", "SIGKILL"):
            return signal_description(-(code - 128))
    return None


def _last_line(text: str) -> str:
    """The last line that says something: not MNN's own chatter (its CPU features line)."""
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("The device supports:")]
    return lines[-1][:500] if lines else ""


def open_worker(target: Target | str | None, *, timeout: float = 300.0):
    """A started worker for MNN on ``target``: the local pool's, or a RemoteWorker."""
    target = target if isinstance(target, Target) else parse_target(target)
    if target.local:
        from parity.run import worker as worker_mod

        return worker_mod.take("mnn", timeout=timeout)
    return RemoteWorker(target, timeout=timeout).start()


def describe_target(spec: str, *, timeout: float = 300.0) -> dict:
    """``parity target check``: the target's platform and versions, the CPU features MNN
    reports and the backends it has (one that falls back is not among them)."""
    from parity.mnn.log import backend_that_ran, cpu_features

    target = parse_target(spec)
    if target.local:
        from parity.run.worker import Worker

        worker = Worker("mnn", timeout=timeout).start()
    else:
        worker = RemoteWorker(target, timeout=timeout).start()
    try:
        facts = worker.call("parity.backends.mnn_child:facts", step=f"reading the facts of target {target.spec}")
        log = worker.log_text()  # MNN prints the CPU features when it is imported
    finally:
        worker.close()
    printed = facts.pop("printed", {})
    backends = [name for name, text in printed.items()
                if not text.startswith("error:") and backend_that_ran(name, text)[1] is None]
    features = cpu_features(log) or cpu_features("".join(printed.values()))
    return {"target": target.spec, **facts, "cpu_features": features,
            "float16": features.get("fp16") == 1, "backends": backends}


# what ssh itself says when it never got a session (its messages, OpenSSH 9)
_SSH_REFUSALS = ("ssh:", "Permission denied", "Host key verification failed", "kex_exchange_identification",
                 "Connection closed by", "Connection timed out", "Connection refused", "No route to host")


def _ssh_refused(line: str) -> bool:
    """Whether ssh's last line says it could not connect or log in (rather than a session that died)."""
    return line.startswith(_SSH_REFUSALS) or any(r in line for r in _SSH_REFUSALS[1:])

