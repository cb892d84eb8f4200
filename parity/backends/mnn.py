"""MNN adapter through the Module API, with every MNN call in a child process (worker.py)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from parity.backends.base import Backend, RunResult, check_model_file, check_weights_file, conform_feeds
from parity.mnn.log import backend_that_ran, cpu_features  # noqa: F401 (backend_that_ran: API)
from parity.run.worker import Worker
from parity.core.errors import BackendCrash, BackendError, BackendTimeout, FrameworkMissing, ModelError, ParityError
from parity.core.paths import argument
from parity.core.specs import TensorMap, TensorSpec

_CHILD = "parity.backends.mnn_child"
# a run's arrays, feeds and outputs each, travel in the messages to and from the local child
# up to this many bytes in all (pickled: two copies of each), the rest in .npy files (four file
# operations a tensor: 0.85 ms of a small model's 7 ms check, measured)
_INLINE_BYTES = 1 << 20


def _looks_like_onnx(path) -> bool:
    try:
        from parity.core import onnx_skeleton

        model = onnx_skeleton.load(path)
        return len(model.graph.node) > 0
    except Exception:
        return False


def _mnn_array(array: np.ndarray) -> np.ndarray:
    """MNN takes no bool, 16-bit or (in converted graphs) int64 tensors: the type its converter
    gives them, int32 or float32, when every value survives (as whole-model inputs are fed)."""
    array = np.asarray(array)
    if array.dtype in (np.bool_, np.int16, np.uint16):
        return array.astype(np.int32)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype == np.int64:
        cast = array.astype(np.int32)
        if np.array_equal(cast, array):
            return cast
    return array


_MNN_FOUND = False  # MNN was found installed here once: it stays (a sweep's pairs each ask)


def _read_npy(path: str) -> np.ndarray:
    """An array the child wrote to ``path``: mapped, read-only, not read into a fresh copy. The
    bytes are in the page cache already (the child just wrote them); reading them into a new
    array cost a copy and a page fault per 4 KiB, 0.2-0.3 s for the 475 tensors of a BERT-base
    --layers capture. The mapping outlives the file, which is removed once collected (POSIX);
    elsewhere the array is read as before, so that the file can be removed."""
    if os.name != "posix":
        return np.load(path)
    return np.asarray(np.load(path, mmap_mode="r"))  # a plain ndarray over the mapping


def _mnn_installed() -> bool:
    """Whether this Python has MNN, found without importing it (the child imports it). Looking
    through sys.path takes 0.3 ms, once per check of a sweep's runner; a found MNN is
    remembered, a missing one looked for again."""
    global _MNN_FOUND
    if not _MNN_FOUND:
        import importlib.util

        try:
            _MNN_FOUND = importlib.util.find_spec("MNN") is not None
        except (ImportError, ValueError):
            return False
    return _MNN_FOUND


@dataclass
class _PendingRun:
    """A run sent to the child and not collected yet: its files, and what was done to its feeds."""

    names: list[str]
    feed_paths: dict[str, str]
    result_paths: dict[str, str]
    step: str
    notes: tuple[str, ...] = ()
    partial: bool = False  # a capture: a tensor MNN cannot return is reported, not fatal


_MEMORY_WORDS = {0: "normal", 1: "high", 2: "low"}

# MNN op types (as the .mnn file and MNN's expressions name them) whose output depends on
# their input's shape, never on its values: a graph input reached only through them may be
# fed to a cut without MNN computing anything of the layer from it
_SHAPE_ONLY_OPS = frozenset({"Shape", "Rank", "Size", "ZerosLike"})


class MnnBackend(Backend):
    framework = "mnn"
    suffixes = (".mnn",)
    manifest_key = "mnn"
    takes_one_run = True
    checks_dims = False
    runs_in_child = True  # begin_run only submits; MNN computes while the caller works
    declares_outputs = False  # an .mnn records no output dtypes or shapes
    compressible = True
    options_group = "mnn"  # --mnn-precision, --mnn-target... (options.mnn)

    @classmethod
    def variants(cls, options, role: str = "") -> list[dict]:
        """One run per precision and memory mode asked for (--mnn-precision high,low); the
        float conversion of a compressed model runs once."""
        runs = options.mnn.runs()[:1] if role == "float conversion" else options.mnn.runs()
        return [dict(options.mnn.backend_kwargs(p, m), timeout=options.timeout, **({"role": role} if role else {}))
                for p, m in runs]

    def __init__(
        self,
        path,
        *,
        timeout: float = 300.0,
        backend: str = "CPU",
        threads: int = 4,
        precision: str = "normal",
        hints: tuple = (),
        memory: int | None = None,
        rearrange: bool = False,
        shape_mutable: bool = True,
        target: str = "local",
        role: str = "",
        one_run: list[str] | None = None,
        **options,
    ):
        super().__init__(path, **options)
        self.one_run = list(one_run or ())  # the ONNX values whose MNN tensors its run returns too
        from parity.run.targets import parse_target

        self.target = parse_target(target)
        self.role = role  # "float conversion" or what the model's compression is, when attributing
        self.timeout = timeout
        self.backend = backend
        self.threads = threads
        self.precision = precision
        self.hints = tuple(tuple(h) for h in hints)
        self.memory = memory
        self.rearrange = rearrange
        self.shape_mutable = shape_mutable
        self._worker: Worker | None = None
        self.backend_ran: str | None = None  # known once loaded: a missing backend falls back
        self._load_notes: tuple[str, ...] = ()
        self._graph: list[dict] | None = None
        self._layouts: dict | None = None  # tensor -> NCHW/NC4HW4, read from the file on the first cut
        self._pending: _PendingRun | None = None
        self._preparing: str | None = None  # the step of a prepare_capture not collected yet
        self._prepared_after: _PendingRun | None = None  # the run whose reply comes before it
        self._facts: dict = {}
        self.cpu_features: dict[str, int] = {}  # as MNN reports them when its runtime starts

    def begin_open(self) -> None:
        """Start the child and send the load request without waiting for it: MNN's start-up
        then overlaps with the parent's own work (ONNX Runtime's session). ``open`` finishes."""
        if self._worker is not None:
            return
        check_model_file(self.path, self.framework)
        check_weights_file(self.path)
        if self.target.local and not _mnn_installed():
            raise FrameworkMissing("MNN", "pip install MNN")
        from parity.run.targets import open_worker

        self._worker = open_worker(self.target, timeout=self.timeout)
        # a child kept from an earlier check has that check's lines in its log before this mark
        self._log_start = self._worker.log_size() if hasattr(self._worker, "log_size") else 0
        try:
            path = self._worker.model_path(self.path) if self._inline else os.path.abspath(self.path)
        except BaseException:
            self._close()
            raise
        self._worker.submit(
                f"{_CHILD}:load",
                step=f"loading {self.path.name}",
                path=path,
                backend=self.backend,
                threads=self.threads,
                precision=self.precision,
                hints=[list(h) for h in self.hints],
                memory=self.memory,
                rearrange=self.rearrange,
                shape_mutable=self.shape_mutable,
                **({"every_tensor": self.one_run} if self.one_run and not self._inline else {}),
            )

    def _open(self) -> None:
        self.begin_open()
        try:
            info = self._worker.result(step=f"loading {self.path.name}")
        except ModelError as exc:
            remote = getattr(self._worker, "_sent", {}).get(os.path.abspath(self.path)) if self._worker else None
            self._close()
            if remote and remote in str(exc):  # the target's copy: name the user's file instead
                raise ModelError(str(exc).replace(remote, str(self.path))) from None
            if _looks_like_onnx(self.path):
                renamed = self.path.with_suffix(".onnx")
                raise ModelError(
                    f"{str(self.path)!r} is an ONNX model with an .mnn name; convert it first "
                    f"(mv {argument(self.path)} {argument(renamed)}, then parity convert "
                    f"{argument(renamed)} -o {argument(self.path)})"
                ) from None
            raise
        except BaseException:
            self._close()
            raise
        self._version = info["version"]
        self._inputs = [
            TensorSpec(i["name"], None if i["shape"] is None else tuple(
                d if d >= 0 else "?" for d in i["shape"]), i["dtype"])
            for i in info["inputs"]
        ]
        self._outputs = [TensorSpec(name, None, "?") for name in info["outputs"]]
        # its module returns every tensor: a capture on the inputs of its last run is read
        # from that run, request by request, with no run
        self.captures_from_its_run = bool(info.get("every_tensor"))
        log = self._worker.log_text()  # the CPU features: printed once, when MNN is imported
        recent = self._worker.log_text(self._log_start) if self._log_start else log
        self.backend_ran, note = backend_that_ran(self.backend, recent)
        self.cpu_features = cpu_features(log)
        version_note = self._version_note()
        self._load_notes = tuple(n for n in (note, version_note) if n)

    def close(self) -> None:
        super().close()
        self._close()  # also a child started by begin_open whose open never finished

    def _close(self) -> None:
        self._pending = None  # its files go with the worker's directory
        self._preparing = self._prepared_after = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    @property
    def _inline(self) -> bool:
        """True on a target: the model is sent there and arrays travel in the messages."""
        return getattr(self._worker, "inline", False)

    def _version_note(self) -> str | None:
        """A target whose MNN is not the one here (which converted or checks the model): said
        in the report, since a verdict may then be about versions, not the target's CPU."""
        if self.target.local:
            return None
        try:
            import importlib.metadata

            here = importlib.metadata.version("MNN")
        except Exception:
            return None
        if self._version and self._version != here:
            return (f"target {self.target.spec} runs MNN {self._version}, this machine MNN {here}: a difference "
                    f"between them may be the versions', not the target's CPU")
        return None

    @property
    def run_label(self) -> str:
        """Where and how this run differs from a plain local one: "arm64, precision low"."""
        words = [self.role] if self.role else []
        if not self.target.local:
            words.append(self.target.spec)
        if self.precision != "normal":
            words.append(f"precision {self.precision}")
        if self.memory is not None:
            words.append(f"memory {_MEMORY_WORDS.get(self.memory, self.memory)}")
        return ", ".join(words)

    @property
    def label(self) -> str:
        run = self.run_label
        return f"{super().label} ({run})" if run else super().label

    @property
    def reduced_precision(self) -> bool:
        """True when precision low really ran in float16: MNN takes it only where the CPU has
        float16 arithmetic (ARMv8.2 and later; on x86 "low" runs float32 kernels)."""
        # low_bf16 is not float16 (and measured identical to high on emulated arm64): not reduced here
        return self.precision == "low" and self.cpu_features.get("fp16") == 1

    @property
    def precision_notes(self) -> tuple[str, ...]:
        if self.precision == "low" and self.cpu_features and not self.reduced_precision:
            return (f"precision {self.precision} ran in float32 on {self.target.spec}: MNN reports no "
                    f"float16 arithmetic on this CPU (fp16:0); check on the device, or with "
                    f"--mnn-target arm64, to see float16's numbers",)
        return ()

    @property
    def version(self) -> str:
        return self._version

    def settings(self) -> dict:
        return {
            "backend": self.backend,
            "threads": self.threads,
            "precision": self.precision,
            "hints": [list(h) for h in self.hints],
            "memory": self.memory,
            "rearrange": self.rearrange,
            "shape_mutable": self.shape_mutable,
            "backend_ran": self.backend_ran,
            "target": self.target.spec,
            "cpu_features": dict(self.cpu_features),
            "float16_arithmetic": self.reduced_precision,
            **({"platform": self.target_facts} if self.target_facts else {}),
        }

    @property
    def target_facts(self) -> dict:
        """Where MNN ran (a target's Python, machine and versions); empty for local."""
        facts = getattr(self._worker, "facts", None) if self._worker is not None else self._facts
        if facts:
            self._facts = {k: facts[k] for k in ("machine", "platform", "python", "numpy", "mnn") if k in facts}
        return self._facts

    def reopen_options(self) -> dict:
        """The constructor's keyword arguments, to open the same model (or a variant) again."""
        return {"timeout": self.timeout, "backend": self.backend, "threads": self.threads,
                "precision": self.precision, "hints": self.hints, "memory": self.memory,
                "rearrange": self.rearrange, "shape_mutable": self.shape_mutable, "target": self.target.spec}

    def dump_json(self, target) -> None:
        """The graph as JSON, by MNN's converter on this machine: a graph is the same
        wherever it runs, and a target needs no converter."""
        step = f"dumping {self.path.name} as JSON"
        if not self._inline:
            self._call(f"{_CHILD}:dump_json", step=step, path=os.path.abspath(self.path), target=str(target))
            return
        from parity.run.worker import Worker

        with Worker("mnn", timeout=self.timeout) as local:
            local.call(f"{_CHILD}:dump_json", step=step, path=os.path.abspath(self.path), target=str(target))

    def graph(self) -> list[dict]:
        """Every tensor in the MNN file: ``{"name", "op_type", "inputs"}``."""
        if self._graph is None:
            from parity.mnn import flatbuffer as mnn_flatbuffer

            try:  # read from the file here, in milliseconds, without MNN loading every weight again
                if not str(self.version).startswith(mnn_flatbuffer.SCHEMA_MNN + "."):
                    raise ValueError("op type names are those of another MNN")
                self._graph = mnn_flatbuffer.read_graph(self.path)
            except (OSError, ValueError):  # control flow, an op type the table does not know
                self._graph = self._call(f"{_CHILD}:graph", step=f"reading the graph of {self.path.name}")
        return self._graph

    def capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> RunResult:
        """Run once, returning the named intermediate tensors (converted to NCHW)."""
        kept = self.kept_values(feeds, names)
        if kept is not None:
            return kept
        return self.finish_capture(self.begin_capture(feeds, names, cache=cache))

    def begin_capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> _PendingRun:
        """Send a capture and return at once: MNN captures while the reference does."""
        prepared, _ = conform_feeds(self.input_specs, feeds, self.label, allow_casts=True, check_dims=False)
        return self._submit_run(prepared, list(names), cut=False, cache=cache, step="capturing tensors of",
                                partial=True)

    def finish_capture(self, handle: _PendingRun) -> RunResult:
        return self._collect_run(handle)

    def run_cut(self, tensors: TensorMap, outputs: list[str], *, inputs: TensorMap | None = None) -> RunResult:
        """Feed ``tensors`` (intermediate names) into the graph cut there; return ``outputs``.

        ``inputs`` are the model's inputs as fed to the whole model: those the cut still
        reaches only for their shape are fed too. The converter computes shapes from the
        graph's inputs (a Gemm or MatMul becomes Reshape -> Convolution -> Reshape, the last
        one's shape taken from Shape(x)): a cut after such a reshape depends on ``x`` beyond
        the cut tensors, and MNN refuses to load it without ``x`` (an opaque SystemError).
        A graph input the outputs reach through values, not only through its shape, is
        refused unless it is one of ``tensors``: fed, MNN would compute part of the outputs
        from the model's start, and the cut would not isolate anything."""
        shaped, numeric, unused = self._inputs_reached(set(tensors), outputs)
        where = f"a cut of {self.path.name} at {', '.join(map(repr, tensors))}"
        if unused and (shaped or numeric):
            # the outputs reach the model's inputs but not these cut tensors: fed the inputs,
            # MNN would compute the outputs from the start, not from the values fed here
            raise BackendError(f"a cut of {self.path.name} at {', '.join(map(repr, unused))} does not lead to "
                               f"{', '.join(map(repr, outputs))} in MNN's graph: the layer cannot be run alone there")
        if numeric:
            raise BackendError(
                f"{where}: {', '.join(map(repr, outputs))} also depends on the values of graph input(s) "
                f"{', '.join(map(repr, numeric))} through MNN ops outside the cut, so MNN would compute part of it "
                f"from the model's start: the layer cannot be run alone there (cut at those inputs too)")
        missing = sorted(name for name in shaped if name not in (inputs or {}))
        if missing:
            raise BackendError(f"{where}: MNN's graph takes the shape of {', '.join(map(repr, missing))} after "
                               f"the cut; pass the model's inputs (inputs=) so that they can be fed")
        tensors = {**{name: inputs[name] for name in shaped}, **tensors}
        tensors = {name: _mnn_array(array) for name, array in tensors.items()}
        if self._layouts is None:
            from parity.mnn import flatbuffer as mnn_flatbuffer

            self._layouts = mnn_flatbuffer.tensor_layouts(self.path) or {}
        # a file that declares no NHWC layout: each fed tensor is NCHW or NC4HW4 as read from
        # the file, and the child need not ask MNN (which loads every weight again to say so)
        formats = {name: self._layouts.get(name, "NCHW") for name in tensors} if self._layouts else None
        return self._call_run(tensors, list(outputs), cut=True, cache=False, step="running a cut of",
                              formats=formats)

    def _inputs_reached(self, cut: set, outputs: list[str]) -> tuple[list[str], list[str], list[str]]:
        """What ``outputs`` depend on through paths of MNN's graph that do not cross ``cut``:
        (graph inputs reached only through shape-only ops, graph inputs reached through
        values, tensors of ``cut`` that are not graph inputs and that ``outputs`` do not
        depend on). A tensor reached only below a shape-only op contributes its shape, which
        the model's own inputs give right, never its values."""
        producer = {entry["name"]: entry for entry in self.graph()}
        shaped, numeric, used = set(), set(), set()
        seen: dict[str, bool] = {}  # name -> reached through values (True) or only for its shape
        stack = [(name, True) for name in outputs]
        while stack:
            name, through_values = stack.pop()
            if name in cut:
                used.add(name)
                continue
            if name not in producer or seen.get(name) is True or (name in seen and not through_values):
                continue
            seen[name] = through_values
            entry = producer[name]
            if entry["op_type"] == "Input":
                (numeric if through_values else shaped).add(name)
            below = through_values and entry["op_type"] not in _SHAPE_ONLY_OPS
            stack.extend((source, below) for source in entry["inputs"])
        inputs = {entry["name"] for entry in producer.values() if entry["op_type"] == "Input"}
        return (sorted(shaped - numeric), sorted(numeric),
                sorted(n for n in cut if n not in used and n not in inputs))

    def _run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        return self._call_run(feeds, outputs, cut=False, cache=True, step="running")

    def _call_run(self, feeds, outputs, *, cut, cache, step, partial=False, formats=None) -> RunResult:
        return self._collect_run(self._submit_run(feeds, outputs, cut=cut, cache=cache, step=step, partial=partial,
                                                  formats=formats))

    def prepare_capture(self, names: list[str], *, cache: bool = True) -> None:
        """Have the child load the module a capture of ``names`` runs, now, without waiting:
        it loads while the parent works (compares the outputs, builds ONNX Runtime's capture),
        and the capture that follows finds it loaded. Sent while the model's run is out, it
        follows that run in the child (whose reply comes first) with no wait between them."""
        if self._preparing is not None or self._worker is None:
            return
        self._prepared_after = self._pending
        self._preparing = f"loading the capture module of {self.path.name}"
        self._worker.submit(f"{_CHILD}:prepare", step=self._preparing, outputs=list(names), cache=cache)

    def _call(self, function: str, *, step: str, **kwargs):
        """A request answered at once. The child answers in order: while a run is out (check
        plans the layer capture then) its reply comes first, so the request is refused, to be
        asked again once the run is collected."""
        if self._pending is not None:
            raise BackendError(f"{step}: {self.label} has a run outstanding; asked again after it")
        self._settle()
        return self._worker.call(function, step=step, **kwargs)

    def _settle(self) -> None:
        """Collect the reply to a prepare_capture: before the reply of a run sent after it, or
        before a call (the child answers in order). A failure MNN answers with is the
        capture's to report, when it comes; a crash, a timeout or a child gone, now."""
        if self._preparing is not None and self._prepared_after is not None:
            # the reply of the run sent before it comes first
            raise RuntimeError(f"{self.label} has a run outstanding: finish_run it first")
        step, self._preparing = self._preparing, None
        if step is None:
            return
        try:
            self._worker.result(step=step)
        except (BackendCrash, BackendTimeout):
            raise  # the child is gone: what follows would only report that less well
        except ParityError:
            process = getattr(self._worker, "_proc", None)
            if process is not None and process.poll() is not None:
                raise

    def _submit_run(self, feeds, outputs, *, cut, cache, step, notes=(), partial=False,
                    formats=None) -> _PendingRun:
        # a prepare_capture still out stays out: the child answers in order, and its reply is
        # collected before this run's (_collect_run), so ONNX Runtime captures meanwhile
        if self._pending is not None:
            # the child answers in order: a second request would take the first one's reply
            raise RuntimeError(f"{self.label} already has a run outstanding: finish_run it first")
        worker = self._worker
        names = outputs or [s.name for s in self._outputs]
        # arrays travel in the messages: all of them to a target, small ones here (the others
        # in .npy files); none here while the child loads a capture module, as a message larger
        # than the pipe holds would keep the parent waiting until the child reads it
        budget = math.inf if self._inline else _INLINE_BYTES if self._preparing is None else 0
        feed_paths, sent = {}, {}
        for name, array in feeds.items():
            array = np.asarray(array)
            if array.nbytes <= budget:
                sent[name], budget = array, budget - array.nbytes
                continue
            sent[name] = feed_paths[name] = str(worker.path("in"))
            np.save(feed_paths[name], array)
        result_paths = {} if self._inline else {name: str(worker.path("out")) for name in names}
        pending = _PendingRun(names, feed_paths, result_paths, f"{step} {self.path.name}", tuple(notes), partial)
        self._pending = pending
        try:
            worker.submit(f"{_CHILD}:run", step=pending.step, feeds=sent,
                          results=result_paths if not self._inline else None,
                          outputs=outputs, cut=cut, cache=cache, **({"formats": formats} if formats else {}),
                          inline_bytes=_INLINE_BYTES)
        except BaseException:
            self._collect_files(pending)
            raise
        return pending

    def _collect_files(self, pending: _PendingRun) -> None:
        if self._pending is pending:
            self._pending = None
        for path in list(pending.feed_paths.values()) + list(pending.result_paths.values()):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _collect_run(self, pending: _PendingRun) -> RunResult:
        if self._pending is not pending:
            raise RuntimeError(f"{self.label} has no such run outstanding (finished already, or closed)")
        try:
            if self._prepared_after is pending:  # the child answers this run first
                self._prepared_after = None
            else:
                self._settle()
            reply = self._worker.result(step=pending.step)
            arrays, steps, failed = {}, {}, {}
            for name in pending.names:
                entry = reply[name]
                if "error" in entry:
                    if not pending.partial:
                        raise BackendError(f"MNN could not return {name!r} while {pending.step}: {entry['error']}")
                    failed[name] = entry["error"]
                    continue
                arrays[name] = entry["array"] if "array" in entry else _read_npy(entry["path"])
                steps[name] = tuple(entry["steps"])
        finally:
            self._collect_files(pending)
        return RunResult(arrays, steps, pending.notes, failed)

    def begin_run(self, feeds: TensorMap) -> _PendingRun:
        """Send a run of the declared outputs and return at once, so MNN computes while the
        other frameworks do; ``finish_run`` collects it, with the feed notes."""
        prepared, notes = conform_feeds(self.input_specs, feeds, self.label, allow_casts=True,
                                        check_dims=self.checks_dims)
        return self._submit_run(prepared, None, cut=False, cache=True, step="running", notes=notes)

    def finish_run(self, handle: _PendingRun) -> RunResult:
        result = self._collect_run(handle)
        result.notes = tuple(self._load_notes) + tuple(result.notes)  # the run a report shows
        return result
