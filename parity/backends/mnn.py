"""MNN adapter through the Module API, with every MNN call in a child process (worker.py)."""

from __future__ import annotations

import os

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
    """MNN takes no int64 or bool tensors: int32 when every value fits, as ONNX ints are fed."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.int32)
    if array.dtype == np.int64:
        cast = array.astype(np.int32)
        if np.array_equal(cast, array):
            return cast
    return array


class MnnBackend(Backend):
    framework = "mnn"
    checks_dims = False

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
        self._graph: list[dict] | None = None
        self._pending = None

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

    def close(self) -> None:
        super().close()
        self._close()  # also a child started by begin_open whose open never finished

    def _close(self) -> None:
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
        self._submit_run(feeds, outputs, cut=cut, cache=cache, step=step)
        return self._collect_run()

    def _submit_run(self, feeds, outputs, *, cut, cache, step) -> None:
        worker = self._worker
        feed_paths = {}
        for name, array in feeds.items():
            feed_paths[name] = str(worker.path("in"))
            np.save(feed_paths[name], array)
        names = outputs or [s.name for s in self._outputs]
        result_paths = {name: str(worker.path("out")) for name in names}
        step = f"{step} {self.path.name}"
        self._pending = (names, feed_paths, result_paths, step)
        try:
            worker.submit(f"{_CHILD}:run", step=step, feeds=feed_paths, results=result_paths,
                          outputs=outputs, cut=cut, cache=cache)
        except BaseException:
            self._collect_files()
            raise

    def _collect_files(self) -> None:
        _, feed_paths, result_paths, _ = self._pending
        self._pending = None
        for path in list(feed_paths.values()) + list(result_paths.values()):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _collect_run(self) -> RunResult:
        names, _, _, step = self._pending
        try:
            reply = self._worker.result(step=step)
            arrays, steps = {}, {}
            for name in names:
                entry = reply[name]
                arrays[name] = np.load(entry["path"])
                steps[name] = tuple(entry["steps"])
        finally:
            self._collect_files()
        return RunResult(arrays, steps)

    def begin_run(self, feeds: TensorMap) -> list[str]:
        """Send a run of the declared outputs and return at once (``finish_run`` collects it),
        so MNN computes while the other frameworks do. Returns the feed notes."""
        prepared, notes = conform_feeds(self.input_specs, feeds, self.label, allow_casts=True,
                                        check_dims=self.checks_dims)
        self._submit_run(prepared, None, cut=False, cache=True, step="running")
        return notes

    def finish_run(self, notes=()) -> RunResult:
        result = self._collect_run()
        result.notes = tuple(notes) + tuple(result.notes)
        return result
