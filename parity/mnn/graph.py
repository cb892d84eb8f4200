"""Two MNN graphs compared op by op, through MNN's converter JSON dump.

Diagnosis reconverts an ONNX model when a given .mnn computes wrong numbers. When the fresh
conversion is right, ``structural_diff`` shows how the two files differ: ops only in one of
them, op type and parameter changes, and constants whose values differ. Two fresh conversions
of one ONNX with the same options diff as empty unless the converter folded a constant from
uninitialised memory: the constants named then are where it is nondeterministic.

Ops are matched by the first tensor they produce, not by position or op name. Weights that MNN
keeps inside an op (Convolution ``weight``/``bias``, LayerNorm ``gamma``/``beta``, fp16
``quanParameter`` buffers decoded back to float16) count as constants of that op's output
tensor, so they are compared as arrays, not printed as parameters.

The dump prints floats with six decimals: two values closer than about 1e-6 look equal here.
Constants kept outside the file (``--saveExternalData``) have no values in the dump: only
their ``external`` descriptors are compared.
Fields that differ between any two conversions of one model (``mnn_uuid``) are ignored;
``bizCode`` and ``extraInfo`` (the converter version) are reported apart, as metadata.

MNN is never imported here: the dump runs in a worker child (``dump_json``), because MNN's
converter segfaults on some files.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.backends.base import check_model_file
from parity.run.worker import Worker
from parity.core.errors import BackendCrash, BackendError, ModelError
from parity.core.paths import check_output, copy_atomic

# Differ between any two conversions of the same model (measured: a random UUID per file).
IGNORED_FIELDS = ("mnn_uuid",)
# Differ with who converted and with which converter; shown, never counted as a difference.
METADATA_FIELDS = ("bizCode", "extraInfo")
# Lists of at most this many values are parameters (pads, dims); longer ones are data.
_PARAM_LIST_MAX = 64
# Op fields that hold data whatever their length.
_DATA_FIELDS = frozenset({
    "weight", "bias", "alpha", "buffer", "gamma", "beta", "slope", "slopeData", "meanData",
    "varData", "biasData", "scaleData", "scale", "float32s", "int32s", "int64s", "uint8s",
    "int8s", "strings",
})
_BLOB_VALUES = ("float32s", "int32s", "int64s", "uint8s", "int8s", "strings")
_BLOB_DTYPES = {
    "DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16", "DT_BFLOAT16": "bfloat16",
    "DT_INT32": "int32", "DT_INT64": "int64", "DT_INT16": "int16", "DT_INT8": "int8",
    "DT_UINT8": "uint8", "DT_BOOL": "bool", "DT_STRING": "string",
}
_LIST_CAP = 20
_ARRAY_TAG = "@parity-array:"


# -- reading ---------------------------------------------------------------------------------
def dump_json(mnn_path: str | os.PathLike, json_path: str | os.PathLike, *,
              timeout: float = 300.0) -> Path:
    """Write MNN's JSON dump of ``mnn_path`` to ``json_path``, the converter running in a child."""
    return _dump([(Path(mnn_path), Path(json_path))], timeout)[0]


def _dump(jobs: list[tuple[Path, Path]], timeout: float) -> list[Path]:
    """Dump each (model, json) pair, one child per pair, all at once: MNN takes ~18 s to print
    a 100 MB model."""
    for source, _ in jobs:
        check_model_file(source, "MNN")
        _check_flatbuffer(source)
    sources = [source for source, _ in jobs]
    for _, target in jobs:  # before any child starts: never onto a model it reads, nor a device
        check_output(target, "the JSON dump", inputs=sources)
    with ExitStack() as stack:
        workers = [stack.enter_context(Worker("MNN converter", timeout=timeout)) for _ in jobs]
        for worker, (source, _) in zip(workers, jobs):
            worker.submit("parity.backends.mnn_child:dump_json", step=f"dumping {source.name} as JSON",
                          path=os.path.abspath(source), target=str(worker.dir / "graph.json"))
        for worker, (source, target) in zip(workers, jobs):
            scratch = worker.dir / "graph.json"
            step = f"dumping {source.name} as JSON"
            try:
                worker.result(step=step)
            except BackendCrash as exc:
                raise BackendCrash(exc.framework, exc.step, exc.signal_name,
                                   f"{str(source)!r} may be corrupt or not an MNN model") from None
            except BackendError as exc:
                tail = worker.log_tail()
                if tail and tail not in str(exc):
                    raise BackendError(f"{exc}; converter said: {tail}") from None
                raise
            if not scratch.exists() or scratch.stat().st_size == 0:
                raise ModelError(f"MNN's converter wrote no JSON dump of {str(source)!r}; "
                                 f"is it an MNN model?")
            copy_atomic(scratch, target, "the JSON dump", inputs=sources)
    return [target for _, target in jobs]


def _check_flatbuffer(path: Path) -> None:
    """An MNN file is a flatbuffer: it starts with the offset of its root table. Files that
    fail this (ONNX, text, random bytes) make the converter segfault, so refuse them first."""
    with open(path, "rb") as f:
        head = f.read(8)
    size = path.stat().st_size
    root = struct.unpack("<I", head[:4])[0] if len(head) >= 4 else 0
    if len(head) < 8 or root < 8 or root % 4 or root + 4 > size:
        raise ModelError(f"{str(path)!r} is not an MNN model (no flatbuffer root table at its start)")


def parse_dump_text(text: str):
    """JSON text as MNN's dump writes it: bare ``inf`` / ``nan`` tokens, which JSON (and
    Python's parser) spells Infinity / NaN. Raises ValueError on anything else unreadable."""
    text = re.sub(r"(?<=[\s\[,:])(-?)inf(?=[\s,\]}])", r"\1Infinity", text)
    text = re.sub(r"(?<=[\s\[,:])-?nan(?=[\s,\]}])", "NaN", text)
    return json.loads(text)


def load_graph(json_path: str | os.PathLike, *, source: str | None = None) -> dict:
    """Parse MNN's JSON dump; long numeric lists come back as float64 numpy arrays.

    MNN writes each list on one line and bare ``inf``/``nan`` tokens; long lines of numbers
    are parsed by numpy (about 4x faster than ``json`` on a 100 MB model) and the rest by
    ``parse_dump_text``.
    """
    label = source or str(json_path)
    try:
        with open(json_path) as f:
            lines = f.read().split("\n")
    except OSError as exc:
        raise ModelError(f"cannot read the JSON dump {str(json_path)!r}: {exc.strerror}") from None
    arrays: list[np.ndarray] = []
    for i, line in enumerate(lines):
        if len(line) > 256 and line[:1] == "[" and '"' not in line and "{" not in line:
            body = line.strip()
            if not body.endswith("]"):
                continue
            with warnings.catch_warnings():
                # numpy warns and stops early on a token it cannot read: checked below
                warnings.simplefilter("ignore", DeprecationWarning)
                values = np.fromstring(body[1:-1], sep=",")
            if values.size != body.count(",") + 1:  # a token numpy could not read
                continue
            lines[i] = f'"{_ARRAY_TAG}{len(arrays)}"'
            arrays.append(values)
    try:
        graph = parse_dump_text("\n".join(lines))
    except ValueError as exc:
        raise ModelError(f"the JSON dump of {label} is unreadable ({exc}): the model may be truncated") from None
    if arrays:
        graph = _restore(graph, arrays)
    if not isinstance(graph, dict) or not isinstance(graph.get("oplists"), list):
        raise ModelError(f"the JSON dump of {label} has no op list: is it an MNN model?")
    for index, entry in enumerate(graph["oplists"]):
        if not entry.get("type"):
            raise ModelError(f"op {index} of {label} has no type: the file is truncated or corrupt")
    return graph


def _restore(value, arrays):
    if isinstance(value, str) and value.startswith(_ARRAY_TAG):
        return arrays[int(value[len(_ARRAY_TAG):])]
    if isinstance(value, dict):
        return {k: _restore(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, arrays) for v in value]
    return value


def read_graph(mnn_path: str | os.PathLike, *, timeout: float = 300.0) -> dict:
    """The graph of ``mnn_path`` as ``load_graph`` returns it (dumped into a temporary file)."""
    return read_graphs(mnn_path, timeout=timeout)[0]


def read_graphs(*mnn_paths: str | os.PathLike, timeout: float = 300.0) -> list[dict]:
    """``read_graph`` for several models, dumped concurrently (one child each)."""
    scratch = Path(tempfile.mkdtemp(prefix="parity-graph-"))
    try:
        jobs = [(Path(p), scratch / f"graph-{i}.json") for i, p in enumerate(mnn_paths)]
        _dump(jobs, timeout)
        return [load_graph(target, source=repr(str(source))) for source, target in jobs]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpRef:
    """An op present on one side only."""

    tensor: str  # the first tensor it produces (its key)
    op_type: str
    name: str

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "op_type": self.op_type, "name": self.name}


@dataclass(frozen=True)
class TypeChange:
    tensor: str
    op_type_a: str
    op_type_b: str

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "op_type_a": self.op_type_a, "op_type_b": self.op_type_b}


@dataclass(frozen=True)
class ParamDiff:
    """One parameter of one op (or of the graph, with ``tensor`` None), both values abbreviated."""

    tensor: str | None
    op_type: str
    path: str  # e.g. "main.common.padX", "inputs", "main.opType"
    value_a: str
    value_b: str

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "op_type": self.op_type, "path": self.path,
                "value_a": self.value_a, "value_b": self.value_b}


@dataclass(frozen=True)
class ConstantDiff:
    """A constant whose values differ: a Const op (``field`` None) or data inside an op."""

    tensor: str
    op_type: str
    field: str | None  # "main.weight", "main.gamma", ...; None for a Const op's blob
    shape_a: tuple[int, ...] | None  # None: absent on that side
    shape_b: tuple[int, ...] | None
    dtype_a: str | None
    dtype_b: str | None
    size: int  # values compared (0 when the sizes differ)
    differing: int | None  # None when the sizes differ
    max_abs_diff: float | None  # inf when NaN meets a number or inf a finite value

    @property
    def label(self) -> str:
        return repr(self.tensor) + (f" {self.field}" if self.field else "")

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "op_type": self.op_type, "field": self.field,
                "shape_a": list(self.shape_a) if self.shape_a is not None else None,
                "shape_b": list(self.shape_b) if self.shape_b is not None else None,
                "dtype_a": self.dtype_a, "dtype_b": self.dtype_b, "size": self.size,
                "differing": self.differing,
                "max_abs_diff": _json_float(self.max_abs_diff)}

    def describe(self) -> str:
        if self.shape_a is None or self.shape_b is None:
            side = "b" if self.shape_a is None else "a"
            dtype = self.dtype_b if self.shape_a is None else self.dtype_a
            return f"{self.label} (only in {side}, {dtype})"
        parts = []
        if self.differing is None:
            parts.append(f"shape {list(self.shape_a)} vs {list(self.shape_b)}")
        else:
            if self.shape_a != self.shape_b:
                parts.append(f"shape {list(self.shape_a)} vs {list(self.shape_b)}")
            if self.differing == 0:
                parts.append("same values")
            else:
                parts.append(f"{self.differing} of {self.size} values")
                if self.max_abs_diff is not None:
                    parts.append(f"max abs diff {self.max_abs_diff:.3g}")
        if self.dtype_a != self.dtype_b:
            parts.append(f"{self.dtype_a} vs {self.dtype_b}")
        return f"{self.label} ({', '.join(parts)})"


@dataclass(frozen=True)
class GraphDiff:
    """How graph ``b`` differs from graph ``a`` (``labels`` name the two in sentences)."""

    labels: tuple[str, str] = ("a", "b")
    only_in_a: tuple[OpRef, ...] = ()
    only_in_b: tuple[OpRef, ...] = ()
    type_changes: tuple[TypeChange, ...] = ()
    params: tuple[ParamDiff, ...] = ()
    constants: tuple[ConstantDiff, ...] = ()
    # bizCode / converter version: informative, not a structural difference
    metadata: tuple[ParamDiff, ...] = ()
    ignored: tuple[str, ...] = IGNORED_FIELDS

    @property
    def empty(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.type_changes or self.params
                    or self.constants)

    def to_dict(self, limit: int = _LIST_CAP) -> dict:
        out: dict[str, Any] = {"labels": list(self.labels), "empty": self.empty,
                               "ignored": list(self.ignored), "counts": {}, "more": {}}
        for key in ("constants", "type_changes", "params", "only_in_a", "only_in_b", "metadata"):
            items = getattr(self, key)
            out["counts"][key] = len(items)
            out[key] = [item.to_dict() for item in items[:limit]]
            if len(items) > limit:
                out["more"][key] = len(items) - limit
        return out

    def summary(self, limit: int = 5) -> str:
        """One sentence; at most ``limit`` items named per kind of difference."""
        a, b = self.labels
        clauses = self.clauses(limit)
        if clauses:
            text = f"{b} differs from {a}: " + "; ".join(clauses)
        else:
            text = f"{a} and {b} have the same ops, parameters and constants"
        if self.metadata:
            text += " (metadata: " + ", ".join(
                f"{m.path} {m.value_a} vs {m.value_b}" for m in self.metadata[:limit]) + ")"
        return text + "."

    def clauses(self, limit: int = 5) -> list[str]:
        """The differences as phrases ('1 constant differs: ...'), for a sentence of one's own."""
        a, b = self.labels
        clauses = []

        def clause(items, singular, plural, describe):
            if not items:
                return
            named = ", ".join(describe(item) for item in items[:limit])
            rest = f", and {len(items) - limit} more" if len(items) > limit else ""
            noun = singular if len(items) == 1 else plural
            clauses.append(f"{len(items)} {noun}: {named}{rest}")

        clause(self.constants, "constant differs", "constants differ", ConstantDiff.describe)
        clause(self.type_changes, "op changed type", "ops changed type",
               lambda t: f"{t.tensor!r} {t.op_type_a} -> {t.op_type_b}")
        clause(self.params, "op parameter differs", "op parameters differ",
               lambda p: f"{p.tensor!r} {p.op_type} {p.path} {p.value_a} -> {p.value_b}"
               if p.tensor is not None else f"graph {p.path} {p.value_a} -> {p.value_b}")
        clause(self.only_in_a, f"op only in {a}", f"ops only in {a}",
               lambda o: f"{o.tensor!r} ({o.op_type})")
        clause(self.only_in_b, f"op only in {b}", f"ops only in {b}",
               lambda o: f"{o.tensor!r} ({o.op_type})")
        return clauses


# -- diffing ---------------------------------------------------------------------------------
def structural_diff(a: dict, b: dict, *, labels: tuple[str, str] = ("a", "b")) -> GraphDiff:
    """Compare two graphs as ``load_graph`` (or ``parity.mnn.ops.load_dump``) returns them."""
    acc = _Acc()
    _diff_nets(a.get("oplists") or [], a.get("tensorName") or [],
               b.get("oplists") or [], b.get("tensorName") or [], "", acc)
    subs_a = {s.get("name", str(i)): s for i, s in enumerate(a.get("subgraphs") or [])}
    subs_b = {s.get("name", str(i)): s for i, s in enumerate(b.get("subgraphs") or [])}
    for name in list(subs_a) + [n for n in subs_b if n not in subs_a]:
        if name not in subs_b or name not in subs_a:
            acc.params.append(ParamDiff(None, "graph", f"subgraphs[{name!r}]",
                                        "present" if name in subs_a else "<absent>",
                                        "present" if name in subs_b else "<absent>"))
            continue
        sa, sb = subs_a[name], subs_b[name]
        _diff_nets(sa.get("nodes") or [], sa.get("tensors") or [],
                   sb.get("nodes") or [], sb.get("tensors") or [], f"{name}/", acc)
    skip = {"oplists", "tensorName", "subgraphs", *IGNORED_FIELDS, *METADATA_FIELDS}
    for key in sorted((a.keys() | b.keys()) - skip):
        _diff_value(a.get(key, _ABSENT), b.get(key, _ABSENT), key, None, "graph", acc)
    metadata = _Acc()
    for key in METADATA_FIELDS:
        _diff_value(a.get(key, _ABSENT), b.get(key, _ABSENT), key, None, "graph", metadata)
    return GraphDiff(labels=tuple(labels), only_in_a=tuple(acc.only_a), only_in_b=tuple(acc.only_b),
                     type_changes=tuple(acc.types), params=tuple(acc.params),
                     constants=tuple(acc.constants), metadata=tuple(metadata.params))


class _Absent:
    def __repr__(self):
        return "<absent>"


_ABSENT = _Absent()


@dataclass
class _Acc:
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    types: list = field(default_factory=list)
    params: list = field(default_factory=list)
    constants: list = field(default_factory=list)


def _keyed(ops: list, names: list, prefix: str) -> dict:
    """Ops by the first tensor they produce (names of unnamed outputs fall back to indexes)."""
    out: dict[str, dict] = {}
    for position, entry in enumerate(ops):
        outs = entry.get("outputIndexes")
        outs = list(outs) if outs is not None else []
        key = prefix + (_tensor(names, outs[0]) if outs else f"<op {entry.get('name', position)}>")
        while key in out:
            key += "'"
        out[key] = entry
    return out


def _tensor(names: list, index) -> str:
    index = int(index)
    return names[index] if 0 <= index < len(names) else f"#{index}"


def _diff_nets(ops_a, names_a, ops_b, names_b, prefix: str, acc: _Acc) -> None:
    keyed_a, keyed_b = _keyed(ops_a, names_a, prefix), _keyed(ops_b, names_b, prefix)
    for key, op_a in keyed_a.items():
        op_b = keyed_b.get(key)
        if op_b is None:
            acc.only_a.append(OpRef(key, op_a.get("type", "?"), op_a.get("name", "")))
            continue
        type_a, type_b = op_a.get("type", "?"), op_b.get("type", "?")
        if type_a != type_b:
            acc.types.append(TypeChange(key, type_a, type_b))
            continue
        wiring_a = [_tensor(names_a, i) for i in op_a.get("inputIndexes", [])]
        wiring_b = [_tensor(names_b, i) for i in op_b.get("inputIndexes", [])]
        if wiring_a != wiring_b:
            acc.params.append(ParamDiff(key, type_a, "inputs", _abbrev(wiring_a), _abbrev(wiring_b)))
        outs_a = [_tensor(names_a, i) for i in op_a.get("outputIndexes", [])]
        outs_b = [_tensor(names_b, i) for i in op_b.get("outputIndexes", [])]
        if outs_a != outs_b:
            acc.params.append(ParamDiff(key, type_a, "outputs", _abbrev(outs_a), _abbrev(outs_b)))
        for name in ("main_type", "defaultDimentionFormat"):
            _diff_value(op_a.get(name, _ABSENT), op_b.get(name, _ABSENT), name, key, type_a, acc)
        main_a, main_b = op_a.get("main", _ABSENT), op_b.get("main", _ABSENT)
        if op_a.get("main_type") == "Blob" and op_b.get("main_type") == "Blob":
            _diff_blob(main_a, main_b, key, type_a, acc)
        else:
            _diff_value(_with_weights(main_a), _with_weights(main_b), "main", key, type_a, acc)
    for key, op_b in keyed_b.items():
        if key not in keyed_a:
            acc.only_b.append(OpRef(key, op_b.get("type", "?"), op_b.get("name", "")))


def _with_weights(main):
    """fp16 weights (``--fp16``: quanParameter type 3, the half floats' bytes as int8) shown as
    the float16 ``weight`` they are, so fp32 and fp16 files compare value for value."""
    if not isinstance(main, dict):
        return main
    quan = main.get("quanParameter")
    if isinstance(quan, dict) and quan.get("type") == 3 and "weight" not in main and len(quan.get("buffer", ())):
        raw = np.asarray(quan["buffer"], dtype=np.float64).astype(np.int8)
        if raw.size % 2 == 0:
            main = dict(main)
            rest = {k: v for k, v in quan.items() if k != "buffer"}
            main["quanParameter"] = rest
            main["weight"] = _Data(raw.view(np.float16), "float16")
    return main


@dataclass(frozen=True)
class _Data:
    """An array with the dtype it has in the file (JSON gives every number as float or int)."""

    values: np.ndarray
    dtype: str
    shape: tuple[int, ...] | None = None


def _is_data(key: str, value) -> bool:
    if isinstance(value, (_Data, np.ndarray)):
        return True
    if isinstance(value, list) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return key in _DATA_FIELDS or len(value) > _PARAM_LIST_MAX
    return False


def _diff_value(va, vb, path: str, tensor, op_type: str, acc: _Acc) -> None:
    key = path.rsplit(".", 1)[-1]
    if _is_data(key, va) or _is_data(key, vb):
        if not (va is _ABSENT or _is_data(key, va)) or not (vb is _ABSENT or _is_data(key, vb)):
            acc.params.append(ParamDiff(tensor, op_type, path, _abbrev(va), _abbrev(vb)))
            return
        data_a = None if va is _ABSENT else _as_data(va, key)
        data_b = None if vb is _ABSENT else _as_data(vb, key)
        found = _compare_arrays(tensor or "<graph>", op_type, path, data_a, data_b)
        if found is not None:
            acc.constants.append(found)
        return
    if isinstance(va, dict) and isinstance(vb, dict):
        for k in list(va) + [k for k in vb if k not in va]:
            _diff_value(va.get(k, _ABSENT), vb.get(k, _ABSENT), f"{path}.{k}", tensor, op_type, acc)
        return
    if (isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb)
            and any(isinstance(v, (dict, list)) for v in va + vb)):
        for i, (x, y) in enumerate(zip(va, vb)):
            _diff_value(x, y, f"{path}[{i}]", tensor, op_type, acc)
        return
    if not _same(va, vb):
        acc.params.append(ParamDiff(tensor, op_type, path, _abbrev(va), _abbrev(vb)))


def _same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y))
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    return x == y


def _as_data(value, key: str) -> _Data:
    if isinstance(value, _Data):
        return value
    arr = np.asarray(value, dtype=np.float64)
    # JSON does not say; the schema does: quantized weights are bytes, the rest floats here
    return _Data(arr, "int8" if key == "buffer" else "float32")


def _diff_blob(main_a, main_b, tensor: str, op_type: str, acc: _Acc) -> None:
    blob_a = _decode_blob(main_a) if isinstance(main_a, dict) else None
    blob_b = _decode_blob(main_b) if isinstance(main_b, dict) else None
    # Everything but the values, dims and dataType (those go into the ConstantDiff)
    rest_a = {k: v for k, v in (main_a or {}).items() if k not in _BLOB_VALUES + ("dims", "dataType")}
    rest_b = {k: v for k, v in (main_b or {}).items() if k not in _BLOB_VALUES + ("dims", "dataType")}
    _diff_value(rest_a, rest_b, "main", tensor, op_type, acc)
    found = _compare_arrays(tensor, op_type, None, blob_a, blob_b)
    if found is not None:
        acc.constants.append(found)


def _decode_blob(main: dict) -> _Data:
    dims = tuple(int(d) for d in np.asarray(main.get("dims", []), dtype=np.float64).ravel())
    dtype = _BLOB_DTYPES.get(main.get("dataType", ""), str(main.get("dataType", "?")).lower())
    present = [k for k in _BLOB_VALUES if k in main]
    if not present:
        return _Data(np.zeros(0), dtype, dims)
    raw = main[present[0]]
    if present[0] == "strings":
        return _Data(np.asarray(list(raw), dtype=object), "string", dims)
    values = np.asarray(raw, dtype=np.float64)
    if present[0] == "uint8s" and dtype in ("float16", "bfloat16"):
        raw_bytes = values.astype(np.uint8)
        if raw_bytes.size % 2 == 0:
            halves = raw_bytes.view(np.uint16)
            if dtype == "float16":
                values = halves.view(np.float16).astype(np.float64)
            else:
                values = (halves.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return _Data(values, dtype, dims)


def _compare_arrays(tensor: str, op_type: str, path: str | None, a: _Data | None,
                    b: _Data | None) -> ConstantDiff | None:
    def shape_of(d):
        if d is None:
            return None
        return d.shape if d.shape is not None else tuple(d.values.shape)

    shape_a, shape_b = shape_of(a), shape_of(b)
    if a is None or b is None:
        if a is None and b is None:
            return None
        return ConstantDiff(tensor, op_type, path, shape_a, shape_b,
                            a.dtype if a is not None else None, b.dtype if b is not None else None,
                            0, None, None)
    va, vb = a.values.ravel(), b.values.ravel()
    if va.size != vb.size:
        return ConstantDiff(tensor, op_type, path, shape_a, shape_b, a.dtype, b.dtype, 0, None, None)
    if va.dtype == object or vb.dtype == object:
        differ = np.fromiter((x != y for x, y in zip(va, vb)), dtype=bool, count=va.size)
        count, worst = int(differ.sum()), None
    else:
        xa, xb = va.astype(np.float64, copy=False), vb.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore", over="ignore"):
            differ = ~((xa == xb) | (np.isnan(xa) & np.isnan(xb)))
            count = int(np.count_nonzero(differ))
            if count:
                gap = np.abs(xa[differ] - xb[differ])
                worst = float(np.nanmax(gap)) if not np.isnan(gap).all() else float("inf")
                if np.isnan(gap).any():  # NaN against a number, or inf against inf of other sign
                    worst = float("inf")
            else:
                worst = 0.0
    if count == 0 and shape_a == shape_b and a.dtype == b.dtype:
        return None
    return ConstantDiff(tensor, op_type, path, shape_a, shape_b, a.dtype, b.dtype, int(va.size),
                        count, worst)


def _abbrev(value, width: int = 60) -> str:
    if value is _ABSENT:
        return "<absent>"
    if isinstance(value, _Data):
        value = value.values
    if isinstance(value, np.ndarray):
        value = value.ravel()[:8].tolist() + (["..."] if value.size > 8 else [])
    if isinstance(value, dict):  # data inside shown by its size only
        value = {k: f"<{_size(v)} values>" if _is_data(k, v) else v for k, v in value.items()}
    if isinstance(value, list) and len(value) > 8:
        text = json.dumps(value[:6], default=str)[:-1] + f", ... ({len(value)} values)]"
    else:
        text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _size(value) -> int:
    if isinstance(value, _Data):
        return int(value.values.size)
    return int(np.size(value))


def _json_float(x: float | None):
    if x is None:
        return None
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return x


# -- the fast path: two files of one layout whose bytes differ only in values --------------------
_DIFF_CHUNK = 1 << 26


def fast_structural_diff(a, b, *, labels: tuple[str, str] = ("a", "b")) -> GraphDiff | None:
    """``structural_diff`` of two .mnn files without MNN's JSON dump (which prints every weight:
    a minute per 400 MB), when it can be read from the bytes: both files have one layout (same
    size, the same value vectors at the same places) and every differing byte lies in the uuid
    or in a known value vector (a Const op's blob, a convolution's weight or bias). Then the
    differing vectors are the differing constants. None when that does not hold (ops,
    parameters or the layout differ, weights in a side file): the dump is needed."""
    from parity.mnn import flatbuffer as mnn_flatbuffer

    paths = [Path(a), Path(b)]
    if any(Path(f"{p}.weight").exists() for p in paths) or paths[0].stat().st_size != paths[1].stat().st_size:
        return None
    with open(paths[0], "rb") as fa, open(paths[1], "rb") as fb:
        if paths[0].stat().st_size < 8:
            return None
        with mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ) as ma, \
                mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ) as mb:
            try:
                vectors, uuid = mnn_flatbuffer.data_vectors(ma)
                vectors_b, uuid_b = mnn_flatbuffer.data_vectors(mb)
            except (ValueError, IndexError, struct.error):
                return None
            if uuid != uuid_b or [(v["start"], v["end"]) for v in vectors] != [(v["start"], v["end"]) for v in vectors_b]:
                return None
            va, vb = np.frombuffer(ma, np.uint8), np.frombuffer(mb, np.uint8)
            try:
                found = _diff_by_bytes(va, vb, vectors, uuid, labels)
            except (MemoryError, ValueError):  # views into the maps must be gone before they close
                found = None
            del va, vb
            return found


def _diff_by_bytes(va, vb, vectors, uuid, labels) -> GraphDiff | None:
    starts = np.array([v["start"] for v in vectors], np.int64)
    ends = np.array([v["end"] for v in vectors], np.int64)
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    touched: set[int] = set()
    for at in range(0, va.size, _DIFF_CHUNK):
        where = np.flatnonzero(va[at:at + _DIFF_CHUNK] != vb[at:at + _DIFF_CHUNK]) + at
        if uuid is not None:
            where = where[(where < uuid[0]) | (where >= uuid[1])]
        if not where.size:
            continue
        index = np.searchsorted(starts, where, side="right") - 1
        if (index < 0).any() or (where >= ends[np.maximum(index, 0)]).any():
            return None  # a byte outside every value vector: an op or a parameter differs
        touched.update(int(order[i]) for i in np.unique(index))
    constants = []
    for i in sorted(touched, key=lambda k: vectors[k]["start"]):
        v = vectors[i]
        dtype = np.dtype(v["dtype"])
        a = _Data(va[v["start"]:v["end"]].view(dtype).astype(np.float64), v["dtype"], v["dims"] or None)
        b = _Data(vb[v["start"]:v["end"]].view(dtype).astype(np.float64), v["dtype"], v["dims"] or None)
        found = _compare_arrays(v["tensor"], v["op_type"], v["field"], a, b)
        if found is None:  # bytes differ, values compare equal (-0.0, NaN payloads, int64 past 2**53)
            return None
        constants.append(found)
    return GraphDiff(labels=tuple(labels), constants=tuple(constants))
