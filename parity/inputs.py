"""Inputs: seeded generation from input specs (range-aware), and .npz load/save.

Generation rules (README "Inputs"): floats are standard normal; integers are uniform in
[0, 10), or in [0, table size) when the input reaches the indices of a Gather whose data is a
constant table (embeddings): MNN reads out of range silently where ONNX Runtime raises; bools
are fair coin flips. A dynamic dim takes ``--shape`` when given, else ``DEFAULT_DYNAMIC_DIM``.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from parity.errors import InputError, OutputPathError
from parity.report import InputInfo
from parity.specs import TensorMap, TensorSpec, format_shape

DEFAULT_DYNAMIC_DIM = 1
DEFAULT_INT_HIGH = 10

# ops through which an integer input keeps its values on the way to a Gather's indices
_VALUE_PRESERVING = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity",
                     "Expand", "Transpose"}


def resolve_shape(spec: TensorSpec, shapes: Mapping[str, Sequence[int]]) -> tuple[tuple[int, ...], str | None]:
    """The concrete shape for ``spec`` and, when a default filled a dynamic dim, a note saying so."""
    if spec.name in shapes:
        given = tuple(shapes[spec.name])
        if spec.shape is not None:
            if len(given) != len(spec.shape):
                raise InputError(
                    f"--shape {spec.name}={'x'.join(map(str, given))} has rank {len(given)}, "
                    f"the model's input is {format_shape(spec.shape)}"
                )
            for g, want in zip(given, spec.shape):
                if isinstance(want, int) and want != g:
                    raise InputError(
                        f"--shape {spec.name}={'x'.join(map(str, given))} conflicts with the "
                        f"model's fixed shape {format_shape(spec.shape)}"
                    )
        return given, f"shape from --shape {spec.name}={'x'.join(map(str, given))}"
    if spec.shape is None:
        raise InputError(
            f"input {spec.name!r} has no known rank; give its shape with --shape {spec.name}=1x3x224x224"
        )
    if spec.is_static:
        return tuple(spec.shape), None
    shape = tuple(d if isinstance(d, int) else DEFAULT_DYNAMIC_DIM for d in spec.shape)
    dynamic = [str(d) for d in spec.shape if not isinstance(d, int)]
    return shape, (
        f"dynamic dims {dynamic} set to {DEFAULT_DYNAMIC_DIM} (choose with --shape {spec.name}=...)"
    )


def integer_input_bounds(onnx_path: str | os.PathLike) -> dict[str, int]:
    """Upper bounds for integer inputs that reach a constant Gather table's indices."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        return {}
    graph = model.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:  # Constant nodes can hold the table too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    bounds: dict[str, int] = {}
    for graph_input in graph.input:
        frontier, seen = [graph_input.name], set()
        while frontier:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            for node, index in consumers.get(value, ()):
                if node.op_type in ("Gather", "GatherElements") and index == 1:
                    table = shapes.get(node.input[0])
                    if table:
                        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                        size = table[axis]
                        bounds[graph_input.name] = min(bounds.get(graph_input.name, size), size)
                elif node.op_type in _VALUE_PRESERVING and index == 0:
                    frontier.extend(node.output)
    return bounds


def generate(
    specs: Sequence[TensorSpec],
    *,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    int_bounds: Mapping[str, int] | None = None,
) -> tuple[TensorMap, list[InputInfo]]:
    shapes = dict(shapes or {})
    unknown = [n for n in shapes if n not in {s.name for s in specs}]
    if unknown:
        raise InputError(
            f"--shape names unknown input {unknown[0]!r}; the model has {[s.name for s in specs]}"
        )
    int_bounds = dict(int_bounds or {})
    feeds: TensorMap = {}
    infos: list[InputInfo] = []
    for index, spec in enumerate(specs):
        shape, note = resolve_shape(spec, shapes)
        rng = np.random.default_rng([seed, index])  # one stream per input: stable under edits
        notes = [note] if note else []
        dtype = spec.dtype
        if dtype in ("float32", "float64", "float16"):
            array = rng.standard_normal(shape).astype(dtype)
        elif _looks_like_mask(spec.name) and (dtype == "bool" or _is_numpy_dtype(dtype)
                                              and np.dtype(dtype).kind in "iu"):
            array, note = _padding_mask(shape, dtype)
            notes.append(note)
        elif dtype == "bfloat16":
            raise InputError(f"input {spec.name!r} is bfloat16, which parity cannot generate yet; pass --inputs")
        elif dtype == "bool":
            array = rng.random(shape) < 0.5
        elif _is_numpy_dtype(dtype) and np.dtype(dtype).kind in "iu":
            high = int(int_bounds.get(spec.name, DEFAULT_INT_HIGH))
            if spec.name in int_bounds:
                notes.append(f"integers in [0, {high}): indices of a Gather table of {high} rows")
            array = rng.integers(0, max(high, 1), size=shape).astype(dtype)
        else:
            raise InputError(
                f"input {spec.name!r} has dtype {dtype}, which parity cannot generate; pass --inputs"
            )
        feeds[spec.name] = array
        infos.append(InputInfo(spec.name, tuple(shape), dtype, "random", tuple(notes)))
    return feeds, infos


def _looks_like_mask(name: str) -> bool:
    """An attention or padding mask by the name every exporter gives it (attention_mask,
    src_mask, padding_mask): random integers there would be outside {0, 1}, and a model
    computing (1 - mask) * float32.min would overflow to inf on them."""
    return "mask" in name.lower()


def _padding_mask(shape, dtype: str) -> tuple[np.ndarray, str]:
    """1s with the last quarter of the last axis 0: a padded batch, as real inputs have."""
    array = np.ones(shape, dtype=dtype)
    padded = len(shape) and shape[-1] // 4
    if padded:
        array[..., -padded:] = 0
    return array, (f"mask-like input: 1s, with the last {padded} of {shape[-1] if len(shape) else 1} "
                   f"positions 0 (padding)")


def _is_numpy_dtype(name: str) -> bool:
    try:
        np.dtype(name)
        return True
    except TypeError:
        return False


def load_npz(path: str | os.PathLike, specs: Sequence[TensorSpec], *, allow_nonfinite: bool = False
             ) -> tuple[TensorMap, list[InputInfo]]:
    """Load feeds saved with ``np.savez``; names must be exactly the model's input names."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--inputs file {str(path)!r} does not exist")
    if path.is_dir():
        raise InputError(f"--inputs path {str(path)!r} is a directory, not an .npz file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"--inputs file {str(path)!r} is a single .npy array; save inputs with "
                             f"np.savez(path, name=array), one array per input name")
        with data:
            feeds = {name: data[name] for name in data.files}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"--inputs file {str(path)!r} is not a readable .npz file ({exc})") from None
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unknown {extra}")
        raise InputError(
            f"--inputs {path.name} does not fit the model's inputs {expected}: {', '.join(parts)}"
        )
    infos = []
    for spec in specs:
        array = feeds[spec.name]
        if array.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise InputError(
                f"input {spec.name!r} in {path.name} has {bad} NaN/Inf values "
                f"(pass --allow-nonfinite to compare them anyway)"
            )
        infos.append(InputInfo(spec.name, tuple(array.shape), array.dtype.name, "file", ()))
    return {s.name: feeds[s.name] for s in specs}, infos


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Fail before any work when ``path`` cannot be written, so no result is lost at the end."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} path {str(path)!r} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{what} path {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputPathError(f"{what} path {str(path)!r} is not writable")
    return path


def write_atomic(path: str | os.PathLike, data: bytes, what: str, *, error=OutputPathError) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _publish(Path(path), write, what, error)


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike, what: str, *, error=OutputPathError) -> None:
    """Copy ``source`` (a file made in a private directory) into place the same way."""
    _publish(Path(path), lambda tmp: shutil.copyfile(source, tmp), what, error)


def _publish(path: Path, write, what: str, error) -> None:
    tmp = path.with_name(f".{path.name}.parity-tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise error(f"cannot write {what} to {str(path)!r}: {exc.strerror}") from None


def save_npz(path: str | os.PathLike, feeds: TensorMap) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **feeds)
    write_atomic(path, buffer.getvalue(), "--save-inputs")
