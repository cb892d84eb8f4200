"""``parity sweep``: check many model pairs in parallel, shardable across CI jobs.

A target is a directory (every ``*.onnx`` with a ``*.mnn`` of the same stem) or a TOML/JSON
manifest listing models with per-model options::

    [[model]]
    name = "encoder"          # optional, default: the first model's stem
    onnx = "encoder.onnx"     # paths relative to the manifest
    mnn = "encoder.mnn"
    torch = "encoder.pt2"     # optional, first in the chain
    atol = 1e-4               # optional: rtol, seed, inputs, layers, timeout, shape.NAME
    [model.shape]
    src = "1x128x32"

Each pair runs as its own ``parity check`` process (so one crash or hang costs one result).
``--shard K/N`` keeps pairs K, K+N, K+2N, ... of the sorted list: N jobs cover every pair once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import ExitCode, InputError, UsageError

SCHEMA = "parity.sweep/1"
# worst first when a sweep sums up its pairs
_SEVERITY = [ExitCode.PASS, ExitCode.MISMATCH, ExitCode.USAGE, ExitCode.MODEL_OR_INPUT,
             ExitCode.BACKEND, ExitCode.INTERRUPTED, ExitCode.INTERNAL]


@dataclass
class Item:
    name: str
    models: list
    options: dict = field(default_factory=dict)

    def argv(self) -> list[str]:
        args = ["check", *self.models]
        o = self.options
        for key in ("atol", "rtol", "seed", "timeout"):
            if key in o:
                args += [f"--{key}", str(o[key])]
        for name, dims in (o.get("shape") or {}).items():
            args += ["--shape", f"{name}={dims}"]
        if o.get("inputs"):
            args += ["--inputs", str(o["inputs"])]
        if o.get("layers"):
            args.append("--layers")
        return args


def discover(target: str | os.PathLike) -> list[Item]:
    path = Path(target)
    if not path.exists():
        raise InputError(f"sweep target {str(path)!r} does not exist")
    if path.is_dir():
        items = []
        for onnx_path in sorted(path.glob("*.onnx")):
            mnn_path = onnx_path.with_suffix(".mnn")
            if mnn_path.exists():
                items.append(Item(onnx_path.stem, [str(onnx_path), str(mnn_path)]))
        if not items:
            raise InputError(f"no model pairs in {str(path)!r}: it needs *.onnx files with *.mnn of the same name")
        return items
    return _manifest(path)


def _manifest(path: Path) -> list[Item]:
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise InputError(f"manifest {path.name} cannot be parsed: {exc}") from None
    entries = data.get("model") or data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise InputError(f"manifest {path.name} lists no models (expected [[model]] entries)")
    base = path.parent
    items = []
    for i, entry in enumerate(entries):
        models = [str(base / entry[k]) for k in ("torch", "onnx", "mnn") if entry.get(k)]
        if len(models) < 2:
            raise InputError(f"manifest {path.name}: model {i + 1} needs two of torch, onnx, mnn")
        options = {k: v for k, v in entry.items() if k not in ("torch", "onnx", "mnn", "name")}
        if options.get("inputs"):
            options["inputs"] = str(base / options["inputs"])
        items.append(Item(entry.get("name") or Path(models[0]).stem, models, options))
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise InputError(f"manifest {path.name} repeats a model name")
    return items


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} is not K/N (for example 1/4)") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N")
    return k, n


def select_shard(items: list[Item], shard: tuple[int, int] | None) -> list[Item]:
    items = sorted(items, key=lambda item: item.name)
    if shard is None:
        return items
    k, n = shard
    return items[k - 1::n]


def _run_one(item: Item) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="parity-sweep-") as tmp:
        report_path = Path(tmp) / "report.json"
        proc = subprocess.run([sys.executable, "-m", "parity", *item.argv(), "--json", str(report_path), "-q"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    error = None
    if report is None:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        error = lines[-1] if lines else f"parity exited {proc.returncode}"
    return {
        "name": item.name,
        "models": item.models,
        "exit_code": proc.returncode,
        "passed": proc.returncode == 0,
        "verdict": report["verdict"] if report else None,
        "error": error,
        "seconds": round(time.monotonic() - started, 2),
    }


def worst(codes) -> int:
    rank = {int(c): i for i, c in enumerate(_SEVERITY)}
    return max(codes, key=lambda c: rank.get(int(c), len(rank)), default=int(ExitCode.PASS))


def run(items: list[Item], *, jobs: int = 1, progress=None) -> list[dict]:
    results = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for result in pool.map(_run_one, items):
            results.append(result)
            if progress is not None:
                progress(f"{result['name']}: {'pass' if result['passed'] else 'exit ' + str(result['exit_code'])}")
                progress.advance()
    return results
