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

    [[model]]                 # a language model: its Hugging Face folder and its MNN-LLM export
    huggingface = "qwen2-0.5b"
    mnn_llm = "qwen2-0.5b-mnn"
    steps = 16                # optional: prompts (a file), budget, float_export, mnn_precision, mnn_memory

Each pair runs as its own ``parity check`` command in one of ``jobs`` runners (sweep_child:
long-lived children that import Python's, numpy's, the frameworks' and parity's code once and
keep their MNN children between pairs), so a sweep of small models costs little more than the
frameworks' own work. One crash or hang still costs one result: MNN runs in a child of the
runner (its crash is the pair's BackendCrash), and a pair still running after ``pair_timeout``
seconds, or a runner that dies, is killed with every process it started (its process group)
and recorded as a backend failure; the next pair gets a new runner. Like MNN's worker, a
runner is an isolated Python (``process.python_command``: ``python -I``, the sweep's import
path without the working directory, its own process group, killed by the kernel if the sweep
dies); each pair works in a private directory that is also its TMPDIR while it runs, removed
after it; model and input paths are made absolute for it.
``--shard K/N`` keeps pairs K, K+N, K+2N, ... of the sorted list: N jobs cover every pair once.
``SweepReport`` holds the results and decides the exit code: the worst pair's.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from parity.backends import registry
from parity.run.process import signal_description
from parity.core.errors import ExitCode, InputError, UsageError
from parity.option_groups import MANIFEST

SCHEMA = "parity.sweep/1"
# worst last when a sweep sums up its pairs
_SEVERITY = [ExitCode.PASS, ExitCode.MISMATCH, ExitCode.USAGE, ExitCode.MODEL_OR_INPUT,
             ExitCode.BACKEND, ExitCode.INTERRUPTED, ExitCode.INTERNAL]
PAIR_TIMEOUT = 3600.0  # seconds one pair's ``parity check`` may run
RUNNER = "parity.checking.sweep_child:serve_argv"  # a runner's main function


def _parity_version() -> str:
    from parity import __version__

    return __version__


@dataclass(frozen=True)
class SweepReport:
    """A sweep's results, one dict per pair (see ``_run_one``). Like ``Report``, it decides the
    exit code: the worst pair's (``worst``)."""

    target: str
    shard: str | None
    results: tuple[dict, ...]
    parity_version: str = field(default_factory=_parity_version)
    # wall-clock seconds of the whole sweep, to the hundredth (as the JSON and the summary line
    # give it: one value, so both round it alike); with -j N the pairs' own times add up to more
    elapsed: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "target", os.fspath(self.target))
        object.__setattr__(self, "results", tuple(self.results))
        if self.elapsed is not None:
            object.__setattr__(self, "elapsed", round(self.elapsed, 2))

    @property
    def exit_code(self) -> int:
        return int(worst(r["exit_code"] for r in self.results))

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.PASS

    def to_dict(self) -> dict:
        """The ``parity.sweep/1`` JSON document."""
        return {
            "schema": SCHEMA,
            "parity_version": self.parity_version,
            "target": self.target,
            "shard": self.shard,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "elapsed_seconds": self.elapsed,
            "results": list(self.results),
        }


@dataclass
class Item:
    name: str
    models: list
    options: dict = field(default_factory=dict)

    def argv(self) -> list[str]:
        args = ["check", *self.models]
        for name, option in MANIFEST.items():
            if self.options.get(name) is not None:
                args += _words(option, self.options[name])
        return args


def _words(option, value) -> list[str]:
    """One manifest field as the words of the check's command line."""
    if option.manifest == "bool":
        return [option.flag] if value else []
    if option.manifest == "shapes":
        words = []
        for name, dims in value.items():
            text = "x".join(map(str, dims)) if isinstance(dims, list) else dims
            words += [option.flag, f"{name}={text}"]
        return words
    return [option.flag, str(value)]


def with_defaults(items: list, **defaults) -> list:
    """Each item with the sweep-wide options it does not set itself (--mnn-target...)."""
    given = {k: v for k, v in defaults.items() if v is not None}
    return [replace(item, options={**given, **item.options}) for item in items]


def discover(target: str | os.PathLike) -> list[Item]:
    path = Path(target)
    if not path.exists():
        raise InputError(f"sweep target {str(path)!r} does not exist")
    if path.is_dir():
        items = []
        for onnx_path in sorted(path.glob("*.onnx")):
            mnn_path = onnx_path.with_suffix(".mnn")
            if mnn_path.exists():
                # a torch.export program of the same name leads the chain: torch -> ONNX -> MNN
                exported = onnx_path.with_suffix(".pt2")
                chain = ([str(exported)] if exported.is_file() else []) + [str(onnx_path), str(mnn_path)]
                items.append(Item(onnx_path.stem, chain))
        if not items:
            raise InputError(f"no model pairs in {str(path)!r}: it needs *.onnx files with *.mnn of the same name "
                             f"(and, optionally, a .pt2 of the same name to check the export too)")
        return items
    return _manifest(path)


# The manifest's fields: the models, and the check options declared with a manifest kind
# (option_groups.MANIFEST), each kind with the test its values pass (a number is an int or a
# float, never a bool) and what it asks for.
_KINDS = {
    "text": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


# declared types whose values must be above 0, as the check's command line takes them
_POSITIVE = {"float>0": "a number > 0", "int>=1": "an integer >= 1"}


# A language model's pair: the Hugging Face folder and the MNN-LLM export folder (parity/llm)
LLM_FIELDS = ("huggingface", "mnn_llm")
# options that name a file or folder: relative to the manifest, absolute for the pair's child
_PATH_OPTIONS = ("inputs", "prompts", "float_export")


def _model_fields() -> tuple[str, ...]:
    """The models' fields: the adapters' manifest keys (torch, onnx, mnn), in chain order."""
    return tuple(cls.manifest_key for cls in registry.backend_classes().values() if cls.manifest_key)


def _manifest(path: Path) -> list[Item]:
    from parity.core.paths import check_input, show

    check_input(path, "sweep manifest")  # a regular file: a FIFO would block the read forever
    label = f"manifest {show(path.name)}"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
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
        raise InputError(f"{label} cannot be parsed: {exc}") from None
    entries = data.get("model") or data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{label} lists no models (expected [[model]] entries)")
    base = path.parent
    items = []
    for i, entry in enumerate(entries):
        _check_entry(entry, f"{label}: model {i + 1}")
        models = _models(entry, base, f"{label}: model {i + 1}")
        options = {k: v for k, v in entry.items() if k not in (*_model_fields(), *LLM_FIELDS, "name")}
        for key in _PATH_OPTIONS:
            if options.get(key):
                options[key] = str(base / options[key])
        items.append(Item(entry.get("name") or Path(models[0]).stem, models, options))
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise InputError(f"{label} repeats a model name")
    return items


def _models(entry: dict, base: Path, where: str) -> list[str]:
    """An entry's models, in chain order: two or three of torch, onnx, mnn; or a language model's
    Hugging Face folder and MNN-LLM export, never mixed with those."""
    keys = _model_fields()
    if any(entry.get(k) for k in LLM_FIELDS):
        if not all(entry.get(k) for k in LLM_FIELDS) or any(entry.get(k) for k in keys):
            raise InputError(f"{where}: a language model takes both {' and '.join(LLM_FIELDS)} (its Hugging Face "
                             f"folder and its MNN-LLM export) and none of {', '.join(keys)}")
        return [str(base / entry[k]) for k in LLM_FIELDS]
    models = [str(base / entry[k]) for k in keys if entry.get(k)]
    if len(models) < 2:
        raise InputError(f"{where} needs two of {', '.join(keys)} (or {' and '.join(LLM_FIELDS)})")
    return models


def _check_entry(entry, where: str) -> None:
    """Every field of one manifest entry has the type it needs, or one line says which not."""
    if not isinstance(entry, dict):
        raise InputError(f"{where} is a {type(entry).__name__}, not a table of fields (onnx = ..., mnn = ...)")
    known = {"name", *_model_fields(), *LLM_FIELDS} | set(MANIFEST)
    unknown = sorted(set(entry) - known)
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")

    def wrong(key, wanted):
        return InputError(f"{where}: {key} must be {wanted}, not {type(entry[key]).__name__} {entry[key]!r}")

    for key in ("name", *_model_fields(), *LLM_FIELDS):
        if key in entry and not _KINDS["text"][0](entry[key]):
            raise wrong(key, _KINDS["text"][1])
    for key, option in MANIFEST.items():
        if key in entry and option.manifest in _KINDS and not _KINDS[option.manifest][0](entry[key]):
            raise wrong(key, _KINDS[option.manifest][1])
        if key in entry and option.type in _POSITIVE and not entry[key] > 0:  # timeout = 0, steps = 0
            raise wrong(key, _POSITIVE[option.type])
    if "mnn_target" in entry or "mnn_precision" in entry:
        _check_mnn(entry, where)
    if entry.get("shape") is not None:
        _check_shape(entry["shape"], where, wrong)


def _check_mnn(entry, where: str) -> None:
    from parity.checking.preflight import refuse_bad_mnn
    from parity.options import MnnOptions
    from parity.run.targets import runs_a_command

    try:
        refuse_bad_mnn(MnnOptions(precision=entry.get("mnn_precision", "normal"),
                                  target=entry.get("mnn_target", "local")))
        commands = runs_a_command(entry.get("mnn_target"))
    except UsageError as exc:
        raise InputError(f"{where}: {exc}") from None
    if commands:
        raise InputError(f"{where}: mnn_target exec:... or ssh://...?python= with a command is taken only "
                         f"from the command line (--mnn-target), never from a manifest, which would run it")


def _check_shape(shape, where: str, wrong) -> None:
    if not isinstance(shape, dict):
        raise wrong("shape", "a table of input name = \"1x64x32\"")
    for name, dims in shape.items():
        if not isinstance(dims, str) and not (isinstance(dims, list) and all(
                isinstance(d, int) and not isinstance(d, bool) for d in dims)):
            raise InputError(f"{where}: shape.{name} must be \"1x64x32\" or a list of integers, "
                             f"not {dims!r}")


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


def _absolute(spec: str) -> str:
    """``spec`` for a child whose working directory is elsewhere: its file part made absolute.
    A ``package.module:factory`` torch spec names no file and stays as given."""
    if ":" in spec and not Path(spec).exists():
        target, _, attr = spec.rpartition(":")
        if target.endswith(".py") or "/" in target or os.sep in target:
            return f"{os.path.abspath(target)}:{attr}"
        if Path(spec).suffix.lower() not in registry.suffixes():
            return spec
    return os.path.abspath(spec)


def _absolute_item(item: Item) -> Item:
    options = dict(item.options)
    for key in _PATH_OPTIONS:
        if options.get(key):
            options[key] = os.path.abspath(options[key])
    return replace(item, models=[_absolute(m) for m in item.models], options=options)


class Runners:
    """The sweep's runners (sweep_child): at most ``jobs`` long-lived children, each checking one
    pair at a time. Each is a ``worker.Worker`` in a session of its own, so that a timeout kills
    it together with what it started; the terminal's Ctrl-C then no longer reaches them, so an
    interrupted sweep ends them itself (``stop``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list = []
        self._all: set = set()
        self._stopped = False

    def take(self):
        """An idle runner, or a new one; None once the sweep is stopping."""
        with self._lock:  # so stop() cannot miss a runner started while it runs
            if self._stopped:
                return None
            if self._idle:
                return self._idle.pop()
            return self._start()

    def fork(self, count: int) -> None:
        """Start ``count`` runners now as forks of this process, which imports what a runner
        needs first: their interpreter's and the frameworks' start is paid once, here, as a
        pool of forked processes pays it. Only from the main thread of the CLI, before any
        thread of its own (the progress display's, the sweep's pool) starts; a runner that
        dies later is replaced by a spawned one."""
        importlib.import_module(RUNNER.partition(":")[0])  # by name, as a worker's preload

        with self._lock:
            for _ in range(count):
                self._idle.append(self._start(fork=True))

    def _start(self, fork: bool = False):
        from parity.run.worker import Worker

        runner = Worker("parity check").start(fork=fork, entry=RUNNER)
        self._all.add(runner)
        return runner

    def give_back(self, runner) -> None:
        with self._lock:
            if not self._stopped:
                self._idle.append(runner)
                return
        self.discard(runner)

    def discard(self, runner) -> None:
        """Close a runner, unless ``stop`` has claimed it already: one thread closes each (two
        closing one connection at once would close its descriptor twice)."""
        with self._lock:
            mine = runner in self._all
            self._all.discard(runner)
        if mine:
            runner.close()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = list(self._all)
            self._all.clear()
            self._idle.clear()
        for runner in running:
            runner.kill()  # its process group: the pair's check and all it started
            runner.close()


def _result(item: Item, code: int, verdict: dict | None, error: str | None, started: float) -> dict:
    return {
        "name": item.name,
        "models": item.models,
        "exit_code": int(code),
        "passed": code == ExitCode.PASS,
        "verdict": verdict,
        "mnn_target": item.options.get("mnn_target", "local"),
        "mnn_precision": item.options.get("mnn_precision", "normal"),
        "error": error,
        "seconds": round(time.monotonic() - started, 2),
    }


def _run_one(item: Item, *, pair_timeout: float, runners: Runners, ort_threads: int = 0) -> dict:
    """Check one pair in a runner (sweep_child); past ``pair_timeout`` s the runner is killed.
    ``ort_threads``: ONNX Runtime's intra-op threads in the pair's check (0: its default)."""
    from parity.core.errors import BackendCrash, BackendTimeout, ParityError

    started = time.monotonic()
    # ignore_cleanup_errors: a killed check's files may vanish while they are removed
    with tempfile.TemporaryDirectory(prefix="parity-sweep-", ignore_cleanup_errors=True) as tmp:
        runner = runners.take()
        if runner is None:
            return _result(item, ExitCode.INTERRUPTED, None, "not run: the sweep was interrupted", started)
        # --quiet, not -q: click tries a word of one dash as a long option first, and its
        # "no such option" error looks for close matches among every option (0.1-0.3 ms)
        argv = [*_absolute_item(item).argv(), "--quiet"]
        try:
            reply = runner.call("parity.checking.sweep_child:check", step=f"checking {item.name}",
                                timeout=pair_timeout, argv=argv, cwd=tmp,
                                ort_threads=ort_threads)
        except BackendTimeout:
            runners.discard(runner)
            return _result(item, ExitCode.BACKEND, None, f"timed out after {pair_timeout:g} s", started)
        except BackendCrash:  # the check's process itself died: a framework it runs in-process
            code = runner._proc.returncode if runner._proc is not None else None
            runners.discard(runner)
            what = signal_description(code) if code is not None and code < 0 else "a signal"
            return _result(item, ExitCode.BACKEND, None, f"parity check ended by {what}", started)
        except ParityError as exc:
            runners.discard(runner)
            return _result(item, ExitCode.BACKEND, None, str(exc), started)
        runners.give_back(runner)
    return _reply_result(item, reply, started)


def _reply_result(item: Item, reply: dict, started: float) -> dict:
    code = int(reply["code"])
    verdict = reply["verdict"]
    error = None
    if verdict is None:
        lines = [ln for ln in reply["stderr"].splitlines() if ln.strip()]
        error = lines[-1] if lines else f"parity exited {code}"
    return _result(item, code, verdict, error, started)


def worst(codes) -> int:
    """The most severe exit code in ``codes`` (one unknown to ``ExitCode`` counts as worst)."""
    rank = {int(c): i for i, c in enumerate(_SEVERITY)}
    return max(codes, key=lambda c: rank.get(int(c), len(rank)), default=int(ExitCode.PASS))


def threads_per_job(jobs: int) -> int:
    """ONNX Runtime's intra-op threads for each of ``jobs`` checks running at once: their share
    of the cores this process may use (at least 1); 0, its default of a thread per core, for
    one job. With its default, N checks at once would each start a thread per core: on 2
    cores, -j 2 ran a small pair's session 20-40% slower in CPU time."""
    if jobs <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def run(items: list[Item], *, jobs: int = 1, progress=None, pair_timeout: float = PAIR_TIMEOUT,
        runners: Runners | None = None) -> list[dict]:
    """Check every pair, ``jobs`` at a time; one result dict per pair, in ``items`` order.
    ``runners``: started already (``Runners.fork``); stopped here all the same."""
    results = []
    runners = runners or Runners()
    one = functools.partial(_run_one, pair_timeout=pair_timeout, runners=runners, ort_threads=threads_per_job(jobs))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        try:
            for result in pool.map(one, items):
                results.append(result)
                if progress is not None:
                    progress(f"{result['name']}: {'pass' if result['passed'] else 'exit ' + str(result['exit_code'])}")
                    progress.advance()
        except BaseException:  # Ctrl-C: the runners, in sessions of their own, did not get it
            pool.shutdown(wait=False, cancel_futures=True)
            runners.stop()
            raise
    runners.stop()
    return results
