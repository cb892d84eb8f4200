"""MNN adapter through the Module API, with every MNN call in a child process (worker.py)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from parity.backends.base import Backend, RunResult, check_model_file, conform_feeds
from parity.backends.worker import Worker
from parity.errors import FrameworkMissing, ModelError
from parity.specs import TensorMap, TensorSpec

_CHILD = "parity.backends.mnn_child"


def _looks_like_onnx(path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
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


@dataclass
class _PendingRun:
    """A run sent to the child and not collected yet: its files, and what was done to its feeds."""

    names: list[str]
    feed_paths: dict[str, str]
    result_paths: dict[str, str]
    step: str
    notes: tuple[str, ...] = ()


# MNNForwardType, as MNN numbers the backends in its fallback message
_FORWARD_TYPES = {0: "CPU", 1: "METAL", 2: "CUDA", 3: "OPENCL", 4: "AUTO", 5: "NN", 6: "OPENGL",
                  7: "VULKAN", 9: "TRT"}
_FALLBACK = re.compile(r"Can't Find type=(\d+) backend, use (\d+) instead")


def backend_that_ran(requested: str, log: str) -> tuple[str, str | None]:
    """The backend MNN really uses, and a note when it is not the one requested: a backend not
    compiled into this MNN falls back (to CPU) with nothing but a line on its stdout."""
    match = _FALLBACK.search(log)
    if match is None:
        return requested.upper(), None
    wanted, used = (_FORWARD_TYPES.get(int(g), f"type {g}") for g in match.groups())
    return used, (f"MNN has no {requested.upper()} backend here: it ran on {used} (MNN said "
                  f"\"{match.group(0)}\"); the figures are {used}'s, not {wanted}'s")


class MnnBackend(Backend):
    framework = "mnn"
    checks_dims = False
    runs_in_child = True  # begin_run only submits; MNN computes while the caller works

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
        **options,
    ):
        super().__init__(path, **options)
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
        self._pending: _PendingRun | None = None

    def begin_open(self) -> None:
        """Start the child and send the load request without waiting for it: MNN's start-up
        then overlaps with the parent's own work (ONNX Runtime's session). ``open`` finishes."""
        if self._worker is not None:
            return
        check_model_file(self.path, self.framework)
        try:
            import importlib.util

            if importlib.util.find_spec("MNN") is None:
                raise ImportError
        except ImportError:
            raise FrameworkMissing("MNN", "pip install MNN") from None
        from parity.backends import worker as worker_mod

        self._worker = worker_mod.take("mnn", timeout=self.timeout)
        self._worker.submit(
                f"{_CHILD}:load",
                step=f"loading {self.path.name}",
                path=os.path.abspath(self.path),
                backend=self.backend,
                threads=self.threads,
                precision=self.precision,
                hints=[list(h) for h in self.hints],
                memory=self.memory,
                rearrange=self.rearrange,
                shape_mutable=self.shape_mutable,
            )

    def _open(self) -> None:
        self.begin_open()
        try:
            info = self._worker.result(step=f"loading {self.path.name}")
        except ModelError:
            self._close()
            if _looks_like_onnx(self.path):
                raise ModelError(
                    f"{str(self.path)!r} is an ONNX model with an .mnn name; convert it first "
                    f"(parity convert {self.path.name})"
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
        self.backend_ran, note = backend_that_ran(self.backend, self._worker.log_text())
        self._load_notes = (note,) if note else ()

    def close(self) -> None:
        super().close()
        self._close()  # also a child started by begin_open whose open never finished

    def _close(self) -> None:
        self._pending = None  # its files go with the worker's directory
        if self._worker is not None:
            self._worker.close()
            self._worker = None

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
        }

    def reopen_options(self) -> dict:
        """The constructor's keyword arguments, to open the same model (or a variant) again."""
        return {"timeout": self.timeout, "backend": self.backend, "threads": self.threads,
                "precision": self.precision, "hints": self.hints, "memory": self.memory,
                "rearrange": self.rearrange, "shape_mutable": self.shape_mutable}

    def dump_json(self, target) -> None:
        self._worker.call(f"{_CHILD}:dump_json", step=f"dumping {self.path.name} as JSON",
                          path=os.path.abspath(self.path), target=str(target))

    def graph(self) -> list[dict]:
        """Every tensor in the MNN file: ``{"name", "op_type", "inputs"}``."""
        if self._graph is None:
            self._graph = self._worker.call(f"{_CHILD}:graph", step=f"reading the graph of {self.path.name}")
        return self._graph

    def capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> RunResult:
        """Run once, returning the named intermediate tensors (converted to NCHW)."""
        prepared, _ = conform_feeds(self.input_specs, feeds, self.label, allow_casts=True, check_dims=False)
        return self._call_run(prepared, list(names), cut=False, cache=cache, step="capturing tensors of")

    def run_cut(self, tensors: TensorMap, outputs: list[str]) -> RunResult:
        """Feed ``tensors`` (intermediate names) into the graph cut there; return ``outputs``."""
        tensors = {name: _mnn_array(array) for name, array in tensors.items()}
        return self._call_run(tensors, list(outputs), cut=True, cache=False, step="running a cut of")

    def _run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        return self._call_run(feeds, outputs, cut=False, cache=True, step="running")

    def _call_run(self, feeds, outputs, *, cut, cache, step) -> RunResult:
        return self._collect_run(self._submit_run(feeds, outputs, cut=cut, cache=cache, step=step))

    def _submit_run(self, feeds, outputs, *, cut, cache, step, notes=()) -> _PendingRun:
        if self._pending is not None:
            # the child answers in order: a second request would take the first one's reply
            raise RuntimeError(f"{self.label} already has a run outstanding: finish_run it first")
        worker = self._worker
        feed_paths = {}
        for name, array in feeds.items():
            feed_paths[name] = str(worker.path("in"))
            np.save(feed_paths[name], array)
        names = outputs or [s.name for s in self._outputs]
        result_paths = {name: str(worker.path("out")) for name in names}
        pending = _PendingRun(names, feed_paths, result_paths, f"{step} {self.path.name}", tuple(notes))
        self._pending = pending
        try:
            worker.submit(f"{_CHILD}:run", step=pending.step, feeds=feed_paths, results=result_paths,
                          outputs=outputs, cut=cut, cache=cache)
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
            reply = self._worker.result(step=pending.step)
            arrays, steps = {}, {}
            for name in pending.names:
                entry = reply[name]
                arrays[name] = np.load(entry["path"])
                steps[name] = tuple(entry["steps"])
        finally:
            self._collect_files(pending)
        return RunResult(arrays, steps, pending.notes)

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
