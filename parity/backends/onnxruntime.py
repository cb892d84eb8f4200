"""ONNX Runtime adapter (CPU execution provider), run in-process.

Before ONNX Runtime reads a model, ``parity.core.paths.external_data`` checks where its external
data lives: a location outside the model's directory is refused, never read. A model whose
name is not valid UTF-8 (which ONNX Runtime's Python binding cannot take) is given to it as
bytes, with its directory named for the external data.
"""

from __future__ import annotations

import os
import sys

from parity.backends.base import Backend, RunResult
from parity.core.errors import BackendError, FrameworkMissing, ModelError
from parity.core.paths import external_data, is_utf8, show, utf8_name
from parity.core.specs import TensorMap, TensorSpec

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


# ORT's exception types (onnxruntime.capi.onnxruntime_pybind11_state) that mean the file is
# not a valid model, by name: matched along the class's bases, so a subclass counts too.
# While a session is built, ``Fail`` is the model too (measured, ORT 1.32: an initializer
# whose data does not match its shape, one over the 2 GiB embedded limit, external data
# escaping the model's directory).
def _no_spinning(so) -> None:
    """ONNX Runtime's idle threads wait for work by spinning: while MNN's child computes beside
    them (runs overlap), they take its cores."""
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")


# intra-op threads of a session whose backend names no count of its own (0: ONNX Runtime's
# default, a thread per core); a runner of ``parity sweep -j N`` takes its share of the cores
# (sweep_child.check), as N processes checking at once should
_default_threads = 0


def share_threads(count: int) -> int:
    """Build later sessions with ``count`` intra-op threads where none is named (0: ONNX
    Runtime's default); returns the count before."""
    global _default_threads
    before, _default_threads = _default_threads, int(count)
    return before


_SMALL_CONSTANT = 1 << 16
_LARGE_MODEL = int(os.environ.get("PARITY_LARGE_MODEL_BYTES", 1 << 30))  # bytes of weights from which
# one session at a time is kept (tests lower it)  # bytes: constants up to this size keep their values in graph_proto

_MODEL_FAILURES = {"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "InvalidArgument", "Fail"}


def _model_failure(exc: BaseException) -> str | None:
    """The name of the ORT model-failure type ``exc`` is an instance of, if any."""
    return next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _MODEL_FAILURES), None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _import_ort():
    """onnxruntime, imported with TMPDIR pointing at a private directory removed right after:
    its telemetry writes a session file ($TMPDIR/.ses) on import that nothing removes."""
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="parity-ort-")  # also fixes tempfile's own choice first
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = scratch
    try:
        import onnxruntime
    except ImportError:
        raise FrameworkMissing("onnxruntime", "pip install onnxruntime") from None
    finally:
        if saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved
        shutil.rmtree(scratch, ignore_errors=True)
    return onnxruntime


def _spec(node_arg) -> TensorSpec:
    shape = node_arg.shape
    dims = None if shape is None else tuple(d if isinstance(d, int) else (d or "?") for d in shape)
    return TensorSpec(node_arg.name, dims, _ORT_TYPES.get(node_arg.type, node_arg.type))


class OnnxRuntimeBackend(Backend):
    framework = "onnxruntime"
    suffixes = (".onnx",)
    manifest_key = "onnx"
    onnx_graph = True
    takes_one_run = True

    def __init__(self, path, *, threads: int = 0, optimization: str = "all", one_run=None, **options):
        super().__init__(path, **options)
        self.threads = threads or _default_threads
        self.optimization = optimization
        self.one_run = bool(one_run)  # its session returns every value too (the list, or True)
        self._session = None
        self._every: list[str] | None = None  # the values the session returns after the outputs

    def _open(self) -> None:
        ort = _import_ort()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        # no arena: memory a run frees goes back, so per-layer capture and diagnosis runs that
        # follow do not sit on top of the first run's high-water mark
        so.enable_cpu_mem_arena = False
        _no_spinning(so)
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        externals = external_data(self.path)  # refused here when it points outside
        size = self.path.stat().st_size + sum(path.stat().st_size for _, path in externals)
        self._large = size > _LARGE_MODEL
        self._externals = bool(externals)
        model = utf8_name(self.path) or str(self.path)  # the binding takes UTF-8 text
        if not is_utf8(model):  # a name that is not UTF-8: the binding takes the model's bytes
            if externals:
                folder = utf8_name(os.path.dirname(os.path.abspath(model)))
                if folder is None:
                    raise ModelError(f"{show(model)} keeps its weights in external data in a directory "
                                     f"whose name is not valid UTF-8, which onnxruntime cannot open; "
                                     f"rename it")
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            with open(model, "rb") as f:
                model = f.read()
        try:
            self._session = self._every_value_session(ort) if self.one_run and not self._large else None
            if self._session is None:
                self._session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own pybind exception types
            kind = _model_failure(exc)
            detail = _first_line(exc)
            if kind is not None:
                raise ModelError(
                    f"{show(self.path)} is not a valid ONNX model ({kind}: {detail})"
                ) from None
            raise BackendError(f"onnxruntime could not load {show(self.path)}: {detail}") from None
        try:
            self._inputs = [_spec(a) for a in self._session.get_inputs()]
            self._outputs = [_spec(a) for a in self._session.get_outputs()]
        except UnicodeDecodeError:  # ONNX Runtime takes the bytes; its Python binding cannot decode them
            self._session = None
            raise ModelError(f"{show(self.path)} names an input or output in bytes that are not UTF-8 text, "
                             f"which ONNX Runtime's Python binding cannot read; rename it") from None
        if self._every is not None:  # the model's own outputs come first
            self._outputs = self._outputs[:len(self._outputs) - len(self._every)]
        if not self._outputs:
            self._session = None
            raise ModelError(f"{show(self.path)} declares no graph outputs: there is nothing to compare")

    def _every_value_session(self, ort):
        """A session returning every value of the graph after its outputs, for a --layers check:
        its run serves the layer capture (no second session, no second run). Built as the capture
        sessions are (weights in memory, level extended); the outputs may differ from those of
        the model's own session in the last bits (fusions that would hide a value are not
        made). None where it cannot be built: the model's own session is, and says why."""
        if self._externals:  # (read through the file's own session, which finds them)
            return None
        try:
            graph = self.graph_proto().graph
            declared = {o.name for o in graph.output}
            every = list(dict.fromkeys(v for node in graph.node for v in node.output if v and v not in declared))
            session = self._capture_session(every, ("every",), added=True)
        except Exception:  # anything: the model's own session is built and reports it
            self._sessions, self._backing = {}, None
            return None
        # kept as the model's session, with the arrays it uses in place, not as a capture's
        self._sessions, self._main_backing, self._backing = {}, self._backing, None
        self._every = every
        return session

    @property
    def captures_from_its_run(self) -> bool:
        return self._every is not None

    def _returns(self, names) -> bool:
        """Whether the model's session returns every one of ``names`` (one_run)."""
        return self._every is not None and set(names) <= set(self._every) | {s.name for s in self._outputs}

    def _close(self) -> None:
        self._session = None
        self._proto = None
        self._graph_proto = None
        self._sessions = {}
        self._backing = self._main_backing = None  # after the sessions that used the arrays in place
        self._every = None

    def model_proto(self):
        """The ONNX model, loaded once (graph walks and in-memory copies start from it)."""
        if getattr(self, "_proto", None) is None:
            import onnx

            self._proto = onnx.load(str(self.path))
        return self._proto

    def graph_proto(self):
        """The model's graph with only its small constants' values (onnx_skeleton): what graph
        walks and shape inference need, without parsing the weights."""
        if getattr(self, "_graph_proto", None) is None:
            from parity.core import onnx_skeleton

            self._graph_proto = onnx_skeleton.load(self.path, keep_below=_SMALL_CONSTANT)
        return self._graph_proto

    def _session_for(self, model_bytes: bytes, key, folder: str | None = None, initializers=None):
        """The session of ``key``, built from ``model_bytes`` (and ``initializers``, name ->
        array, that it declares in memory) when it is not the one kept."""
        cache = getattr(self, "_sessions", None)
        if cache is None:
            cache = self._sessions = {}
        if key not in cache:
            ort = _import_ort()
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.enable_cpu_mem_arena = False  # freed capture memory goes back to the OS
            _no_spinning(so)
            if folder is not None:  # a model given as bytes finds its external data there
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            if self.threads:
                so.intra_op_num_threads = self.threads
            # ONNX Runtime's layout optimizations (level "all": convolutions in NCHWc, with a
            # reorder around each) buy speed the model's own session has; with every tensor an
            # output they cost more than they save (ResNet-50's capture session: 0.15-0.23 s to
            # build against 0.03-0.07 s, its run no faster). The fusions of level "extended"
            # stay (BERT-base's tensors come out the same bit for bit).
            so.graph_optimization_level = {
                "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            }.get(self.optimization, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
            cache.clear()  # one capture session at a time bounds memory
            self._backing = None  # (after its session) the arrays the last one used in place
            backing = None
            if initializers:
                backing = [ort.OrtValue.ortvalue_from_numpy(array) for array in initializers.values()]
                so.add_external_initializers(list(initializers), backing)
            try:
                cache[key] = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise BackendError(f"onnxruntime could not load a capture of {self.path.name}: "
                                   f"{_first_line(exc)}") from None
            self._backing = (backing, initializers)
        return cache[key]

    def _capture_session(self, names: list[str], key, *, added: bool = False):
        """A session of the model whose outputs are ``names``. Weights inside the .onnx are handed
        to it as arrays (onnx_skeleton.with_outputs_in_memory): it parses a few hundred KB, not
        the whole file. Should ONNX Runtime refuse that form, the spliced file's bytes."""
        if not getattr(self, "_externals", False):
            from parity.core import onnx_skeleton

            try:
                model_bytes, arrays = onnx_skeleton.with_outputs_in_memory(self.path, names, added=added)
                return self._session_for(model_bytes, key, None, arrays)
            except (BackendError, ValueError):
                if added:
                    raise
        model_bytes, folder = self._capture_bytes(names)
        return self._session_for(model_bytes, key, folder)

    def _capture_bytes(self, names: list[str]) -> tuple[bytes, str | None]:
        """The model with ``names`` as its outputs, and the directory its external data is in:
        spliced from the file's bytes; through the parsed model (weights loaded) when that
        directory's name is one ONNX Runtime cannot take (not UTF-8)."""
        from parity.core import onnx_skeleton

        if not getattr(self, "_externals", False):
            return onnx_skeleton.with_outputs(self.path, names), None
        folder = utf8_name(os.path.dirname(os.path.abspath(self.path)))  # where _open looks
        if folder is not None:
            return onnx_skeleton.with_outputs(self.path, names), folder
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model_proto())
        del model.graph.output[:]
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
        return model.SerializeToString(), None

    def prepare_capture(self, names: list[str], *, cache: bool = True) -> None:
        """Build the session a capture of ``names`` runs, now: check does it while MNN's child
        runs the model. Not for a large model (its capture session replaces the model's own
        only when it captures: one copy of the weights)."""
        key = ("capture", tuple(names))
        if self._returns(names):
            return  # the model's session returns them
        if not getattr(self, "_large", False) and key not in getattr(self, "_sessions", {}):
            self._capture_session(list(names), key)

    def capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> RunResult:
        """Run an in-memory copy of the model whose outputs are ``names`` (intermediate values)."""
        kept = self.kept_values(feeds, names)
        if kept is not None:
            return kept
        key = ("capture", tuple(names))
        if self._session is not None and self._returns(names):
            session = self._session  # the model's session returns them
        elif key not in getattr(self, "_sessions", {}):
            if getattr(self, "_large", False):
                self._session = None  # one copy of a large model's weights: the capture's
            session = self._capture_session(names, key)
        else:
            session = self._sessions[key]
        try:
            arrays = session.run(list(names), feeds)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed capturing tensors of {self.path.name}: {_first_line(exc)}") from None
        return RunResult(dict(zip(names, arrays)))

    def run_cut(self, tensors: TensorMap, outputs: list[str]) -> RunResult:
        """Run the subgraph from the values ``tensors`` names to ``outputs``, fed with them."""
        key = ("cut", tuple(tensors), tuple(outputs))
        if key not in getattr(self, "_sessions", {}):
            from parity.checking.onnx_graph import extract_subgraph

            extracted = extract_subgraph(self.model_proto(), list(tensors), list(outputs),
                                         shapes_from=self.graph_proto())
            session = self._session_for(extracted.SerializeToString(), key)
        else:
            session = self._sessions[key]
        wanted = {i.name for i in session.get_inputs()}
        try:
            arrays = session.run(list(outputs), {k: v for k, v in tensors.items() if k in wanted})
        except Exception as exc:
            raise BackendError(f"onnxruntime failed running a cut of {self.path.name}: {_first_line(exc)}") from None
        return RunResult(dict(zip(outputs, arrays)))

    @property
    def version(self) -> str:
        return _import_ort().__version__

    def settings(self) -> dict:
        settings = {"provider": "CPUExecutionProvider", "optimization": self.optimization}
        if self.threads:  # a count named (a sweep's share of the cores); else ONNX Runtime's default
            settings["threads"] = self.threads
        return settings

    def run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        result = super().run(feeds, outputs)
        values, self._values = getattr(self, "_values", None), None
        if values is not None:  # a session returning every value: the layer capture's, kept
            self.keep_values(feeds, values)
        return result

    def _run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        names = list(outputs) if outputs else [s.name for s in self._outputs]
        every = self._every if not outputs and self._every is not None and self._session is not None else []
        try:
            if self._session is None:  # a large model's capture session replaced it
                self._sessions = {}
                self._open()
            arrays = self._session.run(names + every, feeds)
        except Exception as exc:
            if every:  # the session returning every value failed: the model's own session runs it
                self.one_run, self._every, self._session, self._sessions, self._main_backing = False, None, None, {}, None
                return self._run(feeds, outputs)
            raise BackendError(f"onnxruntime failed running {self.path.name}: {_first_line(exc)}") from None
        if every:
            self._values = dict(zip(names + every, arrays))
        return RunResult(dict(zip(names, arrays[:len(names)])))
