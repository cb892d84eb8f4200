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
package: the child runs its ``llmexport.py`` as ``__main__`` with its folder on the path, found
with ``find_spec`` (which does not import it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
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
    in a sandboxed child; ``BackendError`` (crash, timeout, failure) names the step."""
    if settings.quant_bit not in QUANT_BITS:
        raise UsageError(f"llmexport takes --quant_bit 4, 8 or 16, not {settings.quant_bit} "
                         f"(16 is its float export: float16 weights)")
    tool = llmexport_dir()
    dst = Path(dst_dir).resolve()
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{show(dst)} is not empty: an export goes into a new or empty folder")
    dst.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="parity-llmexport-"))
    try:
        code, text, refused, seconds = _run(tool, hf_dir, dst, settings, work, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step = f"exporting {show(hf_dir)} at {settings.quant_bit} bits"
    if code < 0:
        raise BackendCrash("llmexport", step, signal_description(code), _tail(text))
    if code != 0 or not (dst / "config.json").is_file() or not (dst / "llm.mnn").is_file():
        raise BackendError(f"llmexport failed (exit {code}) while {step}: {_tail(text)}")
    return ExportResult(dst, seconds, refused, text)


def _run(tool: Path, hf_dir, dst: Path, settings: ExportSettings, work: Path, timeout: float):
    """Run the sandboxed child in ``work``: (exit code, its output, what it refused, seconds)."""
    record = work / "refused.txt"
    for name, text in _STUB.items():
        (work / "stub" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "stub" / name).write_text(text)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name in ("pip", "pip3"):
        shim = bin_dir / name
        shim.write_text(_REFUSING_PIP.format(record=record))
        shim.chmod(0o755)
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
    env = python_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1",
    )
    command = python_command("parity.llm.export_child:main", work / "stub", tool, record,
                             tool / "llmexport.py", *args)
    log_path = work / "llmexport.log"
    start = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            proc = spawn(command, python=True, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise BackendError(f"could not start llmexport: {exc}") from None
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
            raise BackendTimeout("llmexport", f"exporting {show(hf_dir)}", timeout) from None
        finally:
            kill_group(proc)
    seconds = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    refused = tuple(record.read_text().splitlines()) if record.exists() else ()
    return code, text, refused, seconds


def _tail(text: str) -> str:
    # the spinner rewrites its line with \r: the last piece of each line is what was shown
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1][:400] if lines else "no output"
