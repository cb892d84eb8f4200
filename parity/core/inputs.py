"""Inputs: seeded generation from input specs (range-aware), and .npz load/save.

Generation rules (README "Inputs"): floats are standard normal; integers are uniform in
[0, 10), or in [0, table size) when the input reaches the indices of a Gather whose data is a
constant table (embeddings): MNN reads out of range silently where ONNX Runtime raises; bools
are fair coin flips. A dynamic dim takes ``--shape`` when given, else ``DEFAULT_DYNAMIC_DIM``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from parity.core.errors import InputError, UsageError, user_code
from parity.core.paths import (check_fits, check_input, check_output, copy_atomic, format_bytes, nbytes, show,
                          write_atomic)
from parity.core.report import InputInfo
from parity.core.specs import MAX_RANK, TensorMap, TensorSpec, format_shape

__all__ = ["generate", "load_npz", "save_npz", "read_npz", "read_npy", "read_raw", "check_writable",
           "write_atomic", "copy_atomic", "resolve_shape", "integer_input_bounds"]

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
    from parity.core import onnx_skeleton

    try:
        model = onnx_skeleton.load(onnx_path)
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
    ranges: Mapping[str | None, tuple[float, float]] | None = None,
) -> tuple[TensorMap, list[InputInfo]]:
    """Random inputs for ``specs``: floats standard normal, integers in [0, 64) (or a Gather
    table's rows), masks as padding masks. ``ranges`` (--val-range) maps an input name, or
    None for every input, to [low, high]: floats uniform there, integers from low to high."""
    shapes = dict(shapes or {})
    ranges = dict(ranges or {})
    unknown_ranges = [n for n in ranges if n is not None and n not in {s.name for s in specs}]
    if unknown_ranges:
        raise InputError(f"--val-range names unknown input {unknown_ranges[0]!r}; the model has "
                         f"{[s.name for s in specs]}")
    unknown = [n for n in shapes if n not in {s.name for s in specs}]
    if unknown:
        raise InputError(
            f"--shape names unknown input {unknown[0]!r}; the model has {[s.name for s in specs]}"
        )
    if seed < 0:
        raise UsageError(f"--seed must be 0 or more, not {seed}")
    int_bounds = dict(int_bounds or {})
    resolved = [resolve_shape(spec, shapes) for spec in specs]
    _check_sizes(specs, [shape for shape, _ in resolved])  # before anything is allocated
    feeds: TensorMap = {}
    infos: list[InputInfo] = []
    for index, (spec, (shape, note)) in enumerate(zip(specs, resolved)):
        rng = np.random.default_rng([seed, index])  # one stream per input: stable under edits
        notes = [note] if note else []
        dtype = spec.dtype
        bounds = ranges.get(spec.name, ranges.get(None))
        if bounds is not None and (dtype in ("float32", "float64", "float16") or dtype == "bool" or
                                   _is_numpy_dtype(dtype) and np.dtype(dtype).kind in "iu"):
            array = _in_range(rng, shape, dtype, bounds, spec.name)
            notes.append(f"values in [{bounds[0]:g}, {bounds[1]:g}] (--val-range)")
        elif dtype in ("float32", "float64", "float16"):
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


def _in_range(rng, shape, dtype: str, bounds: tuple[float, float], name: str) -> np.ndarray:
    low, high = bounds
    if dtype in ("float32", "float64", "float16"):
        largest = float(np.finfo(np.dtype(dtype)).max)
        if max(abs(low), abs(high)) > largest or not np.isfinite(high - low):
            raise InputError(f"--val-range [{low:g}, {high:g}] for input {name!r} leaves the range of {dtype} "
                             f"(|value| <= {largest:g}): its values would be infinite")
        return rng.uniform(low, high, size=shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(int(low), int(high) + 1, size=shape).astype(bool)
    info = np.iinfo(np.dtype(dtype))
    lo, hi = int(np.ceil(low)), int(np.floor(high))
    if lo > hi or lo < info.min or hi > info.max:
        raise InputError(f"--val-range {name}:{low:g},{high:g} holds no {dtype} value, or leaves its range")
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64).astype(dtype)


def parse_val_range(text: str) -> tuple[str | None, tuple[float, float]]:
    """``NAME:LOW,HIGH`` or ``LOW,HIGH`` (every input) -> (name or None, (low, high))."""
    name, sep, numbers = text.rpartition(":")
    parts = numbers.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--val-range {text!r} is not NAME:LOW,HIGH (e.g. input_ids:0,30521 or x:-1,1)") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise UsageError(f"--val-range {text!r}: LOW and HIGH must be finite, LOW <= HIGH")
    return (name if sep else None), (low, high)


def _check_sizes(specs: Sequence[TensorSpec], shapes: Sequence[Sequence[int]]) -> None:
    """Refuse, with the input and its shape named, inputs that cannot fit in memory."""
    total = 0
    for spec, shape in zip(specs, shapes):
        if len(shape) > MAX_RANK:
            raise InputError(f"input {spec.name!r} has rank {len(shape)}; numpy holds at most {MAX_RANK} dims")
        itemsize = np.dtype(spec.dtype).itemsize if _is_numpy_dtype(spec.dtype) else 1
        size = nbytes(shape, itemsize)
        total += size
        check_fits(size, f"input {spec.name!r} of shape {format_shape(tuple(shape))} ({spec.dtype})")
    check_fits(total, f"the {len(specs)} inputs together")


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
    """Load feeds saved with ``np.savez``; names must be exactly the model's input names.
    Names are checked, and each array's declared size, before any array is read."""
    path = Path(path)
    expected = [s.name for s in specs]

    def select(names: list[str]) -> list[str]:
        missing = [n for n in expected if n not in names]
        extra = [n for n in names if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unknown {extra}")
            raise InputError(
                f"--inputs {path.name} does not fit the model's inputs {expected}: {', '.join(parts)}"
            )
        return expected

    feeds = read_npz(path, "--inputs file", select=select, not_a="an .npz file")
    infos = []
    for spec in specs:
        array = feeds[spec.name]
        if not allow_nonfinite:
            refuse_nonfinite(spec.name, array, path.name)
        infos.append(InputInfo(spec.name, tuple(array.shape), array.dtype.name, "file", byte_order_notes(array)))
    return {s.name: feeds[s.name] for s in specs}, infos


def refuse_nonfinite(name: str, array, source: str, *, allowable: bool = True) -> None:
    """InputError when the float input ``name`` (from ``source``) holds a NaN or an infinity:
    the frameworks' outputs would then be compared on values no model is made for.
    ``allowable``: the command takes --allow-nonfinite, and the error says so."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputError(f"input {name!r} in {source} has {bad} NaN/Inf values"
                         + (" (--allow-nonfinite, or allow_nonfinite=True in the library, compares them anyway)"
                            if allowable else ""))


def byte_order_notes(array) -> tuple:
    """The note of an input given in the other byte order: the frameworks get it in this
    machine's (the same values; ONNX Runtime would read the bytes as they lie)."""
    if array.dtype.isnative:
        return ()
    order = "big" if array.dtype.byteorder == ">" else "little"
    return (f"given {order}-endian, fed in this machine's byte order (the same values)",)


MAX_LOADER_SAMPLES = 10_000


def load_data_loader(spec: str) -> list[TensorMap]:
    """``--data-loader file.py:function``: import the file (this runs its code, as --torch does),
    call the function, and take what it yields or returns, each a dict of input name -> array,
    as the samples (at most MAX_LOADER_SAMPLES)."""
    import importlib.util

    target, sep, attr = spec.rpartition(":")
    if not sep or not target.endswith(".py") or not attr.isidentifier():
        raise UsageError(f"--data-loader {spec!r} is not FILE.py:FUNCTION")
    path = Path(target)
    if not path.is_file():
        raise InputError(f"--data-loader file {target!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"parity_data_loader_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(module_spec)
    with user_code(f"importing --data-loader file {target}", InputError):  # sys.exit is no Exception
        try:
            module_spec.loader.exec_module(module)
            function = getattr(module, attr)
        except AttributeError:
            raise InputError(f"--data-loader {target} has no function {attr!r}") from None
        except Exception as exc:
            raise InputError(f"--data-loader {target} failed to import: {type(exc).__name__}: {exc}") from None
    with user_code(f"--data-loader {spec}", InputError):
        try:
            samples = _loader_samples(function(), spec)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"--data-loader {spec} failed: {type(exc).__name__}: {exc}") from None
    if not samples:
        raise InputError(f"--data-loader {spec} yielded no samples")
    return samples


def _loader_samples(produced, spec: str) -> list[TensorMap]:
    """The samples a data loader's function gave: each a dict of input name -> array."""
    samples: list[TensorMap] = []
    for item in produced if not isinstance(produced, dict) else [produced]:
        if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
            raise InputError(f"--data-loader {spec} yielded a {type(item).__name__}, not a dict of input "
                             f"name -> array")
        samples.append({name: np.asarray(value) for name, value in item.items()})
        if len(samples) > MAX_LOADER_SAMPLES:
            raise InputError(f"--data-loader {spec} yields more than {MAX_LOADER_SAMPLES} samples")
    return samples


def sample_files(given: str | os.PathLike, flag: str = "--inputs") -> list[Path]:
    """The .npz files ``--inputs`` (or ``flag``) names: the file itself, every *.npz of a
    directory, or the files a glob pattern matches (sorted, so samples keep their order from
    run to run)."""
    import glob

    text = os.fspath(given)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".npz" and p.is_file())
        if not files:
            raise InputError(f"{flag} {text!r} is a directory without .npz files")
        return files
    if any(c in text for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise InputError(f"{flag} {text!r} matches no file")
        return files
    return [path]


def split_samples(feeds: TensorMap, axis: int, source: str) -> list[TensorMap]:
    """One .npz holding many samples along ``axis`` (--samples-axis): one feed dict per sample,
    each keeping that axis with length 1 (a batch of one, as the model takes it)."""
    counts = {name: np.shape(a)[axis] if -np.ndim(a) <= axis < np.ndim(a) else None for name, a in feeds.items()}
    if any(c is None for c in counts.values()):
        bad = next(n for n, c in counts.items() if c is None)
        raise InputError(f"--samples-axis {axis}: input {bad!r} in {source} has only {np.ndim(feeds[bad])} dims")
    if len(set(counts.values())) != 1:
        raise InputError(f"--samples-axis {axis}: the inputs in {source} hold different numbers of samples {counts}")
    count = next(iter(counts.values()))
    if count == 0:
        raise InputError(f"--samples-axis {axis}: {source} holds no samples")
    return [{name: np.take(a, [i], axis=axis) for name, a in feeds.items()} for i in range(count)]


# -- reading arrays: headers first, sizes checked, then the data -------------------------------
_NPY_MAGIC = b"\x93NUMPY"


def read_npz(path: str | os.PathLike, what: str, *, select: Callable[[list[str]], list[str]] | None = None,
             not_a: str = "") -> dict[str, np.ndarray]:
    """name -> array of an ``np.savez`` file. Nothing is decompressed before the member names
    are known (``select`` gets them and returns the ones to load, raising to refuse the file)
    and every member's .npy header declares a size that fits, in memory and in the member:
    a small file cannot make parity allocate gigabytes. Pickled (object) arrays are refused,
    never unpickled."""
    check_input(path, what, not_a=not_a)
    label = f"{what} {show(path)}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if _starts_with(path, _NPY_MAGIC):
            raise InputError(f"{label} is a single .npy array; save inputs with np.savez(path, name=array), "
                             f"one array per input name") from None
        raise InputError(f"{label} is not a readable .npz file ({exc})") from None
    with archive:
        members = {}
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            members.setdefault(name, info)
        if not members:
            raise InputError(f"{label} holds no arrays")
        wanted = list(members) if select is None else select(list(members))
        try:
            total = 0
            for name in wanted:
                info = members[name]
                with archive.open(info) as f:
                    total += _npy_header(f, info.file_size, f"{label}, array {name!r}")[2]
            check_fits(total, f"{label} ({len(wanted)} arrays)")
            arrays = {}
            for name in wanted:
                with archive.open(members[name]) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError,
                NotImplementedError) as exc:
            raise InputError(f"{label} is not a readable .npz file ({exc})") from None
    return arrays


def read_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """The array of a .npy file, its header checked (size, no pickles) before the data is read."""
    st = check_input(path, what)
    label = f"{what} {show(path)}"
    try:
        with open(path, "rb") as f:
            _npy_header(f, st.st_size, label)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{label} is not a readable .npy file ({exc})") from None


def read_raw(path: str | os.PathLike, what: str, dtype: str) -> np.ndarray:
    """A raw binary file read as ``dtype``; its size is checked before it is read."""
    st = check_input(path, what)
    check_fits(st.st_size, f"{what} {show(path)}")
    return np.fromfile(path, dtype=np.dtype(dtype))


def _npy_header(f, size: int, label: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of data) from the .npy header at ``f``'s position. Refuses object
    arrays, sizes that cannot fit in memory, and sizes beyond the ``size`` bytes there are."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            shape, _, dtype = np.lib.format._read_array_header(f, version)
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise InputError(f"{label} is not a .npy array ({exc})") from None
    if dtype.hasobject:
        raise InputError(f"{label} holds Python objects (a pickle); parity loads only plain arrays "
                         f"and never unpickles")
    if dtype.names is not None or dtype.itemsize == 0:  # records, or elements of no bytes (|V0: any count)
        raise InputError(f"{label} is a {'structured' if dtype.names else 'zero-size'} array ({dtype}); "
                         f"parity compares plain arrays of numbers")
    need = nbytes(shape, dtype.itemsize)
    check_fits(need, f"{label} of shape {format_shape(tuple(shape))} ({dtype})")
    have = size - (f.tell() - start)
    if need > have:
        raise InputError(f"{label} declares shape {format_shape(tuple(shape))} ({dtype}, "
                         f"{format_bytes(need)}) but holds only {format_bytes(max(have, 0))}: truncated")
    return tuple(shape), dtype, need


def _starts_with(path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def check_writable(path: str | os.PathLike, what: str, *, inputs=()) -> Path:
    """Fail before any work when ``path`` cannot be written, so no result is lost at the end
    (``parity.core.paths.check_output``: also refuses inputs, devices, FIFOs, names too long)."""
    return check_output(path, what, inputs=inputs)


def save_npz(path: str | os.PathLike, feeds: TensorMap, *, inputs=()) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **feeds)
    write_atomic(path, buffer.getvalue(), "--save-inputs", inputs=inputs)
