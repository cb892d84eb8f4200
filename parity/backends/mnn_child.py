"""MNN work done inside the worker child (see worker.py). Imported only in the child.

State lives in module globals because the child serves one model for its whole life.
"""

from __future__ import annotations

import os

import numpy as np

from parity.run.worker import ChildFailure, failure_reason

_DTYPES = {
    "dtype.float": "float32",
    "dtype.double": "float64",
    "dtype.int": "int32",
    "dtype.int64": "int64",
    "dtype.uint8": "uint8",
    "dtype.int8": "int8",
}
_PRECISIONS = {"normal": 0, "high": "high", "low": "low", "low_bf16": "Low_BF16"}

_state: dict = {}
# bytes: a model this large keeps one module (and one copy of its weights) loaded at a time; a
# per-layer capture module replaces the model's own until it is needed again
_LARGE_MODEL = int(os.environ.get("PARITY_LARGE_MODEL_BYTES", 1 << 30))  # tests lower it

try:  # imported ahead of the first request when the worker is prestarted (worker.prestart)
    import MNN  # noqa: F401
except ImportError:  # reported by load() as a framework error
    pass


def _mnn():
    import MNN

    return MNN


def _numpy_dtype(mnn_dtype) -> str:
    return _DTYPES.get(str(mnn_dtype), str(mnn_dtype))


# numpy dtypes a placeholder can be written from, as MNN.expr.dtype members. MNN has no
# float16, 16-bit integer or bool tensors (the parent casts those losslessly: base.py); int8
# placeholders exist but Var.write refuses numpy int8 ("does not support this dtype").
_WRITABLE = {"float32": "float", "float64": "double", "int32": "int", "int64": "int64", "uint8": "uint8"}


def _placeholder(name: str, array: np.ndarray, data_format: str):
    """An input var holding ``array``, tagged with the layout the graph declares for ``name``.

    ``array`` is always in the ONNX order (NCHW); for an NC4HW4 tensor of the graph (a cut
    fed in the middle of a CNN) it is written as NCHW and then packed, so the op after the
    cut reads its input as it does in the uncut graph: ``Pooling3D`` (GlobalAveragePool)
    reads its input as NC4HW4 whatever layout the var is tagged with."""
    F = _mnn().expr
    if data_format == "NC4HW4":
        return F.convert(_placeholder(name, array, "NCHW"), F.NC4HW4)
    layout = F.NHWC if data_format == "NHWC" else F.NCHW
    dtype = array.dtype.name
    if dtype == "int8":  # written as int32, narrowed inside MNN: the values are the same
        var = F.placeholder(list(array.shape), layout, F.int)
        var.write(array.astype(np.int32))
        return F.cast(var, F.int8)
    if dtype not in _WRITABLE:
        raise ChildFailure(
            "input",
            f"input {name!r} is {dtype}, which MNN cannot take; it takes "
            f"{', '.join(sorted(_WRITABLE) + ['int8'])}: cast the input to the type the model declares",
        )
    var = F.placeholder(list(array.shape), layout, getattr(F, _WRITABLE[dtype]))
    var.write(array)
    return var


def _native(path: str) -> str:
    """A path as MNN's binding takes it (pybind11 encodes a str as UTF-8): the bytes the file
    system holds, as UTF-8 text; under LC_ALL=C Python's own str holds them as surrogates.
    parity.core.paths.utf8_name does the same; this module runs on targets too, where parity.core.paths
    is not shipped."""
    try:
        return os.fsencode(path).decode("utf-8")
    except UnicodeError:  # not UTF-8 (the parent refuses such a model before it gets here)
        return path


def _graph() -> dict:
    """The model as MNN expressions by tensor name, read on first need (--layers, cuts)."""
    if _state.get("graph") is None:
        _state["graph"] = _mnn().expr.load_as_dict(_state["native"])
    return _state["graph"]


def _declared_format(name: str, packed: bool = False) -> str:
    """The layout the graph holds ``name`` in: NHWC, NCHW, or (with ``packed``, for a cut)
    NC4HW4, which _placeholder packs a fed NCHW array into. A tag MNN cannot tell is taken as
    NCHW, the order ONNX-converted graphs use. Whole-model inputs keep their NCHW/NHWC tag."""
    formats = _state["formats"]
    if name not in formats:
        var = _graph().get(name)
        try:  # an intermediate var's tag needs MNN's shape inference, which can fail
            formats[name] = str(var.data_format).split(".")[-1] if var is not None else "NCHW"
        except Exception:
            formats[name] = "NCHW"
    if formats[name] == "NC4HW4" and packed:
        return "NC4HW4"
    return "NHWC" if formats[name] == "NHWC" else "NCHW"


def release() -> bool:
    """Forget the model (a child going back to the pool between checks: worker.keep_children)."""
    _state.clear()
    return True


def _runtime(MNN, backend: str, threads: int, precision: str, memory: int | None, hints: list):
    config = {"backend": backend, "numThread": int(threads)}
    precision_value = _PRECISIONS.get(precision, precision)
    if precision_value != 0:
        config["precision"] = precision_value
    if memory is not None:
        config["memory"] = int(memory)
    runtime = MNN.nn.create_runtime_manager((config,))
    for mode, value in hints:
        runtime.set_hint(int(mode), int(value))
    return runtime


def _model_size(path: str) -> int:
    """Bytes of the model and its weights (--saveExternalData keeps them beside it)."""
    try:
        weights = path + ".weight"
        return os.path.getsize(path) + (os.path.getsize(weights) if os.path.isfile(weights) else 0)
    except OSError:  # gone: the load says so
        return 0


def _with_every_tensor(MNN, native: str, runtime, rearrange: bool, shape_mutable: bool, values: list):
    """(module, the model's own outputs, every output) of the model loaded as a module that
    returns, besides its own outputs (which come first), every tensor that stands for one of
    the ONNX ``values`` (what a layer capture asks for: pairing.mnn_candidates), or None where
    that module cannot be built (control flow, a file the flatbuffer reader does not take).
    Its own outputs are what MNN picks (flatbuffer.module_io) and come out the same bit for
    bit: one load and one run serve the model's run and its layer capture (check --layers)."""
    try:
        from parity.checking.pairing import mnn_candidates
        from parity.mnn import flatbuffer

        inputs, outputs = flatbuffer.module_io(native)
        by_base, _ = mnn_candidates(flatbuffer.read_graph(native))
        every = list(dict.fromkeys(outputs + [name for value in values for name in by_base.get(value, ())]))
        module = MNN.nn.load_module_from_file(native, inputs, every, runtime_manager=runtime, rearrange=rearrange,
                                              shape_mutable=shape_mutable)
    except Exception:  # MNN refused it, or the file is one flatbuffer does not read: the model alone
        return None
    return (module, outputs, every) if module is not None else None


def load(path: str, backend: str, threads: int, precision: str, hints: list, memory: int | None = None,
         rearrange: bool = False, shape_mutable: bool = True, every_tensor: list | None = None) -> dict:
    """Load the model; with ``every_tensor`` (the ONNX values of a --layers check) as a module
    that returns their tensors too (_with_every_tensor), unless the model is large."""
    MNN = _mnn()
    _state.clear()  # a child kept between checks (worker.keep_children) holds the last model until now
    runtime = _runtime(MNN, backend, threads, precision, memory, hints)
    native = _native(path)  # MNN's binding takes UTF-8; Python's calls below take ``path``
    size = _model_size(path)
    every = None
    if every_tensor and size <= _LARGE_MODEL:
        every = _with_every_tensor(MNN, native, runtime, rearrange, shape_mutable, list(every_tensor))
    try:  # MNN verifies the flatbuffer: a file that is not a model raises (SystemError) here
        module = every[0] if every else MNN.nn.load_module_from_file(
            native, [], [], runtime_manager=runtime, rearrange=rearrange, shape_mutable=shape_mutable)
    except Exception:
        module = None
    if module is None:
        raise ChildFailure("model", f"{path!r} is not a readable MNN model (MNN could not parse it)")
    _state.update(path=path, native=native, graph=None)
    info = module.get_info()
    described = info.get("inputs") or []
    # the module describes its inputs; reading the whole graph as expressions (load_as_dict,
    # a second copy of every weight: 1.4 s on a BERT-base) is left to what needs the graph
    declared = (dict(zip(info["inputNames"], described)) if len(described) == len(info["inputNames"])
                else _graph())
    inputs = []
    for name in info["inputNames"]:
        var = declared.get(name)
        if var is None:
            inputs.append({"name": name, "shape": None, "dtype": "float32", "format": "NCHW"})
            continue
        # Only Input vars are touched: reading .shape of an unresolved var leaves a pending
        # error inside MNN's Python binding that surfaces on a later, unrelated call.
        shape = [int(d) for d in var.shape]
        inputs.append({
            "name": name,
            "shape": shape,
            "dtype": _numpy_dtype(var.dtype),
            "format": str(var.data_format).split(".")[-1],
        })
    _flush_c_stdio()  # MNN says which backend it fell back to on C's stdout: the parent reads it
    outputs = list(every[1]) if every else list(info["outputNames"])
    _state.update(large=size > _LARGE_MODEL, shape_mutable=shape_mutable, runtime=runtime,
                  modules={(): module}, rearrange=rearrange, every=every[2] if every else None, kept=None,
                  inputs=inputs, outputs=outputs,
                  formats={i["name"]: i["format"] for i in inputs})
    return {
        "version": MNN.version(),
        "inputs": inputs,
        "outputs": outputs,
        "biz_code": info.get("bizCode", ""),
        "every_tensor": every is not None,
    }


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def dump_json(path: str, target: str) -> bool:
    """The MNN graph as JSON (op types, parameters, tensor names), written by MNN's converter."""
    import _tools  # MNN's converter binding

    ok = _tools.mnnconvert(["MNNConvert", "-f", "MNN", "--modelFile", _native(path),
                            "--JsonFile", _native(target)])
    if not ok:
        raise ChildFailure("backend", f"MNN's converter could not dump {path} as JSON")
    return True


def graph() -> list:
    """Every tensor of the MNN graph: name, op type and input names (no shapes: see load)."""
    out = []
    for name, var in _graph().items():
        try:
            inputs = [i.name for i in (var.inputs or [])]
        except Exception:
            inputs = []
        out.append({"name": name, "op_type": var.op_type, "inputs": inputs})
    return out


def _module_for(inputs: tuple, outputs: tuple, cache: bool):
    key = (inputs, outputs)
    modules = _state["modules"]
    if key in modules:
        return modules[key]
    if _state.get("large"):  # one copy of the weights at a time
        modules.clear()
    elif not cache:  # capture in chunks: keep one extra module (and its tensors) at a time
        for old in [k for k in modules if k != ()]:
            del modules[old]
    modules[key] = _mnn().nn.load_module_from_file(
        _state["native"], list(inputs), list(outputs), runtime_manager=_state["runtime"],
        rearrange=_state["rearrange"],
    )
    return modules[key]


def prepare(outputs: list, cache: bool = True) -> bool:
    """Load the module a capture of ``outputs`` will run, so the capture finds it ready: the
    parent sends this while it compares the outputs. Not for a large model (one copy of the
    weights at a time: its capture module replaces the model's own only when it captures)."""
    if _state.get("large"):
        return False
    if _state.get("every") and set(outputs) <= set(_state["every"]):
        return True  # the model's module returns them already
    _module_for(tuple(i["name"] for i in _state["inputs"]), tuple(outputs), cache)
    return True


def _main_module():
    """The model as loaded; loaded again where a large model's capture module replaced it."""
    modules = _state["modules"]
    if () not in modules:
        modules.clear()
        modules[()] = _mnn().nn.load_module_from_file(
            _state["native"], [], [], runtime_manager=_state["runtime"], rearrange=_state["rearrange"],
            shape_mutable=_state["shape_mutable"])
    return modules[()]


def _array(feed, mmap_mode=None) -> np.ndarray:
    """A feed: an array sent inline (a target's agent) or the path of a .npy (the local worker)."""
    return feed if isinstance(feed, np.ndarray) else np.load(feed, mmap_mode=mmap_mode)


def run(feeds: dict, results: dict | None, outputs: list | None = None, cut: bool = False,
        cache: bool = True, formats: dict | None = None, inline_bytes: int = 0) -> dict:
    """Run on the feeds (.npy paths or arrays); write each output to the path ``results`` maps
    it to, or with ``results`` None return it inline. Outputs return inline too while they add
    up to at most ``inline_bytes`` (small arrays: a message is cheaper than a file).

    With ``cut`` the feeds name intermediate tensors: the module is cut there, so reference
    values can be fed into the middle of the graph, each in the layout the graph holds it in.
    ``formats`` (name -> NCHW, NC4HW4 or NHWC) gives the layout of fed tensors the parent
    knows from the file, where MNN's own answer needs the whole graph read as expressions;
    the graph's inputs keep the layout they declare.
    """
    for name, layout in (formats or {}).items():
        _state["formats"].setdefault(name, layout)
    F = _mnn().expr
    requested = tuple(outputs) if outputs else ()
    if cut:
        input_names = tuple(feeds)
    else:
        input_names = tuple(i["name"] for i in _state["inputs"])
    names = list(requested or _state["outputs"])
    produced = _produced(feeds, input_names, requested, cut, cache)
    if not produced:
        shapes = ", ".join(f"{n} {list(_array(feeds[n], mmap_mode='r').shape)}" for n in input_names)
        raise ChildFailure(
            "input",
            f"MNN returned no outputs for inputs {shapes}: MNN does this on an input shape, rank "
            f"or dtype its graph cannot take",
        )
    if len(produced) != len(names):
        raise ChildFailure("backend", f"MNN returned {len(produced)} outputs for {len(names)} requested")
    reply, budget = {}, [inline_bytes]
    for name, var in zip(names, produced):
        layout, steps, error = "", [], None
        try:
            layout = str(var.data_format).split(".")[-1]
            # NC4HW4 is a packed memory layout; the NCHW/NHWC tags MNN gives tensors of ONNX
            # graphs describe the ONNX order already, so only NC4HW4 needs converting
            if layout == "NC4HW4":
                var = F.convert(var, F.NCHW)
                steps.append("nc4hw4 -> nchw (MNN's declared data format)")
            # a view of MNN's memory, valid while ``var`` lives: _stored writes it to its file
            # at once or copies it (one copy of every tensor fewer: 270 MB on a BERT-base --layers)
            array = np.asarray(var.read())
        except Exception as exc:  # one tensor MNN cannot return fails alone, not the whole run
            array, error = _empty(var), exc
        if array is None:
            reply[name] = {"error": failure_reason(error)}
            continue
        reply[name] = {"steps": steps, "layout": layout, "op_type": var.op_type if hasattr(var, "op_type") else ""}
        reply[name].update(_stored(array, results[name] if results is not None else None, budget))
        del array
    return reply


def _produced(feeds: dict, input_names: tuple, requested: tuple, cut: bool, cache: bool) -> list:
    """The vars of a run: ``requested`` (the model's outputs when empty), computed by the
    module that returns them. A model loaded to return every tensor (load's ``every_tensor``)
    keeps the vars of its last run: a capture on the same inputs takes them from there."""
    arrays = [_array(feeds[name]) for name in input_names]
    model_inputs = {i["name"] for i in _state["inputs"]}

    def forward(module):
        return module.onForward([_placeholder(name, array, _declared_format(name, cut and name not in model_inputs))
                                 for name, array in zip(input_names, arrays)])

    every = None if cut else _state.get("every")
    if not every or not set(requested) <= set(every):
        return forward(_module_for(input_names, requested, cache) if requested or cut else _main_module())
    key = tuple((a.dtype.str, a.shape, _digest(a)) for a in arrays)
    kept = _state.get("kept")
    if kept is None or kept[0] != key:
        _state["kept"] = None  # the last run's vars go before this run's are made
        try:
            produced = forward(_main_module())
        except Exception:
            produced = None
        if len(produced or ()) != len(every):  # the model's own module runs it (and says why not)
            _state.update(every=None, modules={})
            return _produced(feeds, input_names, requested, cut, cache)
        kept = _state["kept"] = (key, dict(zip(every, produced)))
    return [kept[1][name] for name in (requested or _state["outputs"])]


def _empty(var) -> np.ndarray | None:
    """The values of a var MNN's read refuses because it holds none (a dim of 0: an empty
    slice, or a shape MNN got wrong): an empty array of its shape, which the comparison then
    judges; None for any other failure."""
    try:
        shape = [int(d) for d in var.shape]
        return np.zeros(shape, _numpy_dtype(var.dtype)) if 0 in shape else None
    except Exception:
        return None


def _digest(array: np.ndarray) -> bytes:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()


def _stored(array: np.ndarray, path: str | None, budget: list) -> dict:
    """How an output travels back: inline (a target's agent, ``path`` None; or while the
    budget of inline bytes lasts), else written to ``path``."""
    if path is None or array.nbytes <= budget[0]:
        budget[0] -= array.nbytes
        return {"array": np.array(array)}  # its own copy: a view of MNN's memory dies with its var
    np.save(path, array)
    return {"path": path}


# MNN's forward types by name, as a runtime manager is asked for them
_BACKENDS = ("CPU", "OPENCL", "VULKAN", "OPENGL", "METAL", "CUDA", "NN")


def facts() -> dict:
    """What this MNN can do here: the CPU features it detects (its "The device supports" line)
    and which backends it has (a missing one falls back to CPU, saying so on C's stdout: the
    parent reads both from the text each request prints)."""
    import os
    import platform
    import tempfile

    MNN = _mnn()
    found = {}
    for name in _BACKENDS:
        fd, path = tempfile.mkstemp(prefix="mnn-facts-")
        saved = os.dup(1)
        try:
            _flush_c_stdio()
            os.dup2(fd, 1)
            try:
                MNN.nn.create_runtime_manager(({"backend": name, "numThread": 1},))
            except Exception as exc:
                found[name] = f"error: {exc}"
            _flush_c_stdio()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(fd)
        with open(path, errors="replace") as handle:
            found.setdefault(name, handle.read())
        os.unlink(path)
    import numpy

    return {"mnn": MNN.version(), "numpy": numpy.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "platform": platform.platform(), "printed": found}
