"""llmexport, run by parity: a Hugging Face folder -> an MNN-LLM folder, in a sandboxed child.

llmexport (PyPI ``llmexport``) imports ``MNN.tools``, whose logger runs
``os.system("pip install -U aliyun-log-python-sdk")`` when ``aliyun.log`` is missing (that
package pins protobuf < 6, after which ``import onnx`` fails) and then asks a server for
credentials. parity's export must change nothing on the machine and open no connection, so the
child gets, in this order of defence:

- a do-nothing ``aliyun.log`` package on its import path (``_STUB``), so MNN's logger
  finds what it imports and never reaches its ``pip install``;
- an audit hook (export_child.py) that refuses every socket connection or name lookup and
  every process whose command runs pip, and records what it refused;
- a ``pip`` and ``pip3`` first on its PATH that refuse and record, for a grandchild the hook
  cannot see; and the Hugging Face libraries' offline switches.

llmexport's wheel imports its own top-level ``utils`` package, so it cannot be imported as a
package: the child loads its ``llmexport.py`` with its folder on the path, found with
``find_spec`` (which does not import it), and calls its ``main`` once per export: one child
(``Exporter``) serves several exports, importing torch, onnx, transformers and MNN once.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from parity.core.errors import BackendCrash, BackendError, BackendTimeout, FrameworkMissing, UsageError
from parity.core.paths import show
from parity.run.process import kill_group, python_command, python_env, signal_description, spawn

# The do-nothing ``aliyun.log`` MNN's logger imports (written into the run's private folder).
_STUB = {
    "aliyun/__init__.py": "",
    "aliyun/log/__init__.py": ("class LogClient:\n    def __init__(self, *a, **k): pass\n"
                               "    def put_logs(self, *a, **k): return None\n"
                               "class PutLogsRequest:\n    def __init__(self, *a, **k): pass\n"),
    "aliyun/log/logitem.py": ("class LogItem:\n    def __init__(self, *a, **k): pass\n"
                              "    def set_time(self, *a): pass\n    def set_contents(self, *a): pass\n"),
}
# What the refusing pip writes, one line per run, so the parent can report it.
_REFUSING_PIP = """#!/bin/sh
echo "pip $*" >> "{record}"
echo "parity: pip is disabled while llmexport runs (it would change this Python's packages)" >&2
exit 97
"""

QUANT_BITS = (4, 8, 16)


@dataclass(frozen=True)
class ExportSettings:
    """What an export was made with; read back from an export's export_args.json."""

    quant_bit: int = 4
    quant_block: int = 64
    tokenizer_path: str | None = None
    quant_config: str | None = None

    @classmethod
    def of(cls, export) -> "ExportSettings":
        """The settings ``export`` (an ``MNNExport``) was made with, as far as its folder says."""
        args = export.export_args or {}
        return cls(
            quant_bit=int(args.get("quant_bit") or 4),
            quant_block=int(args.get("quant_block") if args.get("quant_block") is not None else 64),
            tokenizer_path=None,  # the model's own: a fresh export compares the weights, not the tokenizer
            quant_config=args.get("quant_config") or None,
        )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    seconds: float
    refused: tuple  # what the sandbox refused: ("network: connect ('1.2.3.4', 443)", "pip install ...")
    log: str  # llmexport's output (its spinner lines), for a failure's message


def llmexport_dir() -> Path:
    """The folder of the installed llmexport (not imported: its modules import each other as
    top-level ``utils``)."""
    try:
        spec = importlib.util.find_spec("llmexport")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FrameworkMissing("llmexport", "install parity's llm extra: pip install 'parity[llm]' "
                                            "(llmexport==0.0.5 without its dependencies also works: "
                                            "pip install --no-deps llmexport==0.0.5)")
    return Path(list(spec.submodule_search_locations)[0])


def export(hf_dir, dst_dir, settings: ExportSettings = ExportSettings(), *,
           timeout: float = 900.0) -> ExportResult:
    """Export the Hugging Face model at ``hf_dir`` into ``dst_dir`` (new or empty) with llmexport,
    in a sandboxed child of its own; ``BackendError`` (crash, timeout, failure) names the step."""
    _check_settings(settings)
    with Exporter(timeout=timeout) as exporter:
        return exporter.export(hf_dir, dst_dir, settings)


def _check_settings(settings: ExportSettings) -> None:
    if settings.quant_bit not in QUANT_BITS:
        raise UsageError(f"llmexport takes --quant_bit 4, 8 or 16, not {settings.quant_bit} "
                         f"(16 is its float export: float16 weights)")


class Exporter:
    """One sandboxed llmexport child serving several exports (torch, onnx, transformers and MNN
    are imported once), each given ``timeout`` seconds. Use as a context manager."""

    def __init__(self, *, timeout: float = 900.0):
        self.timeout = timeout
        self._work: Path | None = None
        self._proc = None
        self._conn = None
        self._log = None
        self._refused_seen = 0

    def __enter__(self) -> "Exporter":
        tool = llmexport_dir()
        self._work = Path(tempfile.mkdtemp(prefix="parity-llmexport-"))
        try:
            self._start(tool)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            kill_group(self._proc)
            self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def _start(self, tool: Path) -> None:
        """Spawn the child in the private folder: the do-nothing aliyun.log on its path, the
        refusing pip first on its PATH, the Hugging Face libraries offline."""
        work, record = self._work, self._work / "refused.txt"
        for name, text in _STUB.items():
            (work / "stub" / name).parent.mkdir(parents=True, exist_ok=True)
            (work / "stub" / name).write_text(text)
        bin_dir = work / "bin"
        bin_dir.mkdir()
        for name in ("pip", "pip3"):
            shim = bin_dir / name
            shim.write_text(_REFUSING_PIP.format(record=record))
            shim.chmod(0o755)
        env = python_env(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1",
        )
        parent_end, child_end = socket.socketpair()
        self._log = open(work / "llmexport.log", "wb")
        try:
            self._proc = spawn(python_command("parity.llm.export_child:serve", work / "stub", tool, record,
                                              tool / "llmexport.py", child_end.fileno()),
                               python=True, pass_fds=(child_end.fileno(),), cwd=work, stdout=self._log,
                               stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise BackendError(f"could not start llmexport: {exc}") from None
        finally:
            child_end.close()
        self._conn = Connection(parent_end.detach())

    def export(self, hf_dir, dst_dir, settings: ExportSettings = ExportSettings()) -> ExportResult:
        """One export into ``dst_dir`` (new or empty), as ``export`` makes it."""
        _check_settings(settings)
        dst = Path(dst_dir).resolve()
        if dst.exists() and any(dst.iterdir()):
            raise UsageError(f"{show(dst)} is not empty: an export goes into a new or empty folder")
        dst.mkdir(parents=True, exist_ok=True)
        step = f"exporting {show(hf_dir)} at {settings.quant_bit} bits" + (
            f" with {show(settings.quant_config)}" if settings.quant_config else "")
        start, offset = time.monotonic(), self._log.tell()
        status, message = self._request(_arguments(hf_dir, dst, settings, self._work), step)
        seconds = time.monotonic() - start
        self._log.flush()
        with open(self._work / "llmexport.log", "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if status != "ok" or not (dst / "config.json").is_file() or not (dst / "llm.mnn").is_file():
            raise BackendError(f"llmexport failed while {step}: {message or _tail(text)}")
        return ExportResult(dst, seconds, self._refused(), text)

    def _request(self, args: list, step: str) -> tuple:
        """Send one export and wait for its reply; a child that dies or overruns is an error."""
        try:
            self._conn.send(args)
        except OSError:
            self._dead(step)
        deadline = time.monotonic() + self.timeout
        while not self._conn.poll(0.5):
            if self._proc.poll() is not None and not self._conn.poll(0):
                self._dead(step)
            if time.monotonic() > deadline:
                kill_group(self._proc)
                raise BackendTimeout("llmexport", step, self.timeout)
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._dead(step)

    def _dead(self, step: str):
        code = self._proc.wait()
        text = (self._work / "llmexport.log").read_text(errors="replace")
        if code < 0:
            raise BackendCrash("llmexport", step, signal_description(code), _tail(text))
        raise BackendError(f"llmexport exited (code {code}) while {step}: {_tail(text)}")

    def _refused(self) -> tuple:
        """What the sandbox refused since the last export."""
        record = self._work / "refused.txt"
        lines = record.read_text().splitlines() if record.exists() else []
        new, self._refused_seen = lines[self._refused_seen:], len(lines)
        return tuple(new)


def _arguments(hf_dir, dst: Path, settings: ExportSettings, work: Path) -> list:
    """llmexport's command line for one export."""
    args = ["--path", str(Path(hf_dir).resolve()), "--export", "mnn",
            "--quant_bit", str(settings.quant_bit), "--quant_block", str(settings.quant_block),
            "--dst_path", str(dst),
            # llmexport runs a MNNConvert binary at this path when one exists (its default is
            # relative to the working directory); a path that cannot exist keeps it on MNN's
            # Python converter
            "--mnnconvert", str(work / "no-MNNConvert")]
    if settings.tokenizer_path:
        args += ["--tokenizer_path", str(Path(settings.tokenizer_path).resolve())]
    if settings.quant_config:
        args += ["--quant_config", str(Path(settings.quant_config).resolve())]
    return args


def _tail(text: str) -> str:
    # the spinner rewrites its line with \r: the last piece of each line is what was shown
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1][:400] if lines else "no output"
