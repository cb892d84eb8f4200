"""The backend protocol and the one place where feeds are checked against a model's inputs.

Like Polygraphy's runners: the constructor only stores the path and options; the framework is
loaded in ``open()`` (or ``with backend:``); ``run`` maps feeds to an ordered name -> array dict.

Some backends work in a child process (MNN, see worker.py), so a caller running several
frameworks can overlap them. Every backend takes the same calls; the defaults are synchronous,
so an in-process adapter implements nothing extra:

1. ``begin_open()`` on every backend: a child starts loading its model and it returns at once
   (default: nothing).
2. ``open()`` (or ``with backend:``) on every backend: it finishes loading.
3. ``handle = begin_run(feeds)``, first on the backends whose ``runs_in_child`` is True (they
   only submit the run and return), then on the others (they run to completion here, while
   the children compute). The default returns ``self.run(feeds)`` itself as the handle.
4. ``finish_run(handle)`` on each: the ``RunResult`` (default: the handle).

A backend has at most one run outstanding: each ``begin_run`` is followed by its
``finish_run`` before the next run, capture or cut on that backend. ``close()`` drops an
outstanding run.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np

from parity.core.errors import InputError, ModelError
from parity.core.paths import check_input, is_utf8, show
from parity.core.specs import TensorMap, TensorSpec, format_shape


@dataclass
class RunResult:
    outputs: TensorMap  # ordered as the model declares them (or as requested)
    # What the backend itself did to reach a plain array, per output, e.g. "nc4hw4 -> nchw".
    steps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # What it did to the feeds, e.g. "input 'ids' fed as int32 (MNN has no int64 inputs)".
    notes: tuple[str, ...] = ()
    # A capture's tensors the framework could not return, with why (the others still came).
    failed: dict[str, str] = field(default_factory=dict)


# Casts a backend may apply to a feed when no value changes (checked per array). MNN's
# converter declares ONNX int64, int16, uint16 and bool inputs as int32, and float16 and
# float64 ones as float32 (MNN has no 16-bit or bool tensors). Every float16 is a float32.
_LOSSLESS_CASTS = {
    ("int64", "int32"),
    ("int16", "int32"),
    ("uint16", "int32"),
    ("bool", "int32"),
    ("bool", "uint8"),
    ("int32", "int64"),
    ("float16", "float32"),
    ("float64", "float32"),
}


class Backend:
    """An adapter declares its framework and suffixes (the registry finds it by them) and the
    facts below where they differ from the defaults; what a pair of frameworks means is the
    links table's (parity/core/links.py)."""

    # The name reports, the links table and the registry know it by; the adapter's module is
    # parity/backends/<framework>.py.
    framework: ClassVar[str] = ""
    # The model files it opens, by suffix (lower case, with the dot).
    suffixes: ClassVar[tuple[str, ...]] = ()
    # Its key in a sweep manifest (onnx = "model.onnx"), or "" for none.
    manifest_key: ClassVar[str] = ""
    # False where the model's declared dims are advisory (MNN records a dynamic batch as 1).
    checks_dims: ClassVar[bool] = True
    # True where begin_run only hands the run to a child process: callers begin these first.
    runs_in_child: ClassVar[bool] = False
    # False where the model does not describe its inputs (torch code, saved outputs): it takes
    # the chain's (bind_inputs).
    describes_inputs: ClassVar[bool] = True
    # False where the model declares no output dtypes or shapes (an .mnn): one run shows them.
    declares_outputs: ClassVar[bool] = True
    # True where the model file is an ONNX graph (graph_proto, model_proto): the map of the
    # per-layer view, and where integer inputs' bounds are read.
    onnx_graph: ClassVar[bool] = False
    # True where the model file can hold compressed weights (parity.mnn.compression reads them).
    compressible: ClassVar[bool] = False
    # The CheckOptions group that says how it runs (options.mnn), or "" for none.
    options_group: ClassVar[str] = ""
    # What this run is in a check that attributes compression: "float conversion", or the
    # compression of the given model; "" otherwise.
    role: str = ""
    # After a capture: how often each module was called (torch), for the per-layer notes.
    last_calls: dict

    @classmethod
    def names_code(cls, text: str) -> bool:
        """True where ``text``, not a file, names a model in code it runs (torch's file.py:factory)."""
        return False

    # takes ``one_run=True``: the model's run returns every tensor too, and serves the layer
    # capture (a --layers check whose tensors fit the memory budget: capture.one_run_fits)
    takes_one_run = False
    # a capture on the inputs of its last run is read from that run (one_run took effect)
    captures_from_its_run = False

    @classmethod
    def variants(cls, options, role: str = "") -> list[dict]:
        """The constructor keywords of each run ``options`` (a CheckOptions) asks of one model
        (an MNN model runs once per precision asked for): one run, as constructed, by default."""
        return [{}]

    def __init__(self, path: str | Path, **options):
        self.path = Path(path)
        self.spec = str(path)  # the model as given, for the report
        self.options = options
        self._opened = False
        self.last_calls = {}
        self._kept: tuple | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self) -> None:
        check_model_file(self.path, self.framework)
        self._open()
        self._opened = True

    def close(self) -> None:
        if self._opened:
            self._close()
            self._opened = False

    def begin_open(self) -> None:
        """Start loading without waiting for it; ``open`` finishes. In-process: nothing to do."""

    # -- what adapters implement ----------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        raise NotImplementedError

    @property
    def input_specs(self) -> list[TensorSpec]:
        return self._inputs  # set by _open

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def version(self) -> str:
        raise NotImplementedError

    def settings(self) -> dict:
        """Runtime settings that affect numbers, recorded in the report."""
        return {}

    # -- what some adapters have; the defaults say "not here" --------------------------------
    @property
    def run_label(self) -> str:
        """Where and how this run differs from a plain local one ("arm64, precision low")."""
        return ""

    @property
    def target_facts(self) -> dict:
        """Where it ran, when not on this machine: platform, Python and versions."""
        return {}

    @property
    def reduced_precision(self) -> bool:
        """True when it computed in a reduced precision (float16), which has its own tolerance."""
        return False

    @property
    def precision_notes(self) -> tuple[str, ...]:
        """What the report says about the precision it ran in."""
        return ()

    def bind_inputs(self, specs: list[TensorSpec]) -> None:
        """Take the chain's input specs, where the model describes none (describes_inputs)."""

    def module_names(self) -> list[str] | None:
        """Qualified names of the modules whose calls a capture can hook (torch), or None."""
        return None

    def graph(self) -> list[dict] | None:
        """Every tensor of the model's own graph ``{"name", "op_type", "inputs"}`` (MNN), or None."""
        return None

    def graph_proto(self):
        """The ONNX graph without weights, where ``onnx_graph``; else None."""
        return None

    def model_proto(self):
        """The ONNX model with its weights, where ``onnx_graph``; else None."""
        return None

    def prepare_capture(self, names: list[str], *, cache: bool = True) -> None:
        """A hint that ``names`` will be captured next, so a child can prepare while the caller
        works. Nothing to prepare in-process."""

    def capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> RunResult:
        """The intermediate tensors ``names`` of a run on ``feeds``."""
        raise NotImplementedError(f"{self.label} cannot capture intermediate tensors")

    def run_cut(self, tensors: TensorMap, outputs: list[str], **given) -> RunResult:
        """Run the model cut at ``tensors`` (fed in place of what computes them) to ``outputs``."""
        raise NotImplementedError(f"{self.label} cannot be cut")

    # -- shared behaviour ------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.framework} model {self.path.name}"

    def run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        """Run on ``feeds``; return the declared outputs, or the tensors named in ``outputs``."""
        prepared, notes = conform_feeds(
            self.input_specs, feeds, self.label, allow_casts=True, check_dims=self.checks_dims
        )
        result = self._run(prepared, outputs)
        result.notes = tuple(notes) + tuple(result.notes)
        return result

    def begin_run(self, feeds: TensorMap) -> object:
        """Start a run of the declared outputs; pass what it returns to ``finish_run``.
        In-process the run happens here and the handle is its result."""
        return self.run(feeds)

    def finish_run(self, handle: object) -> RunResult:
        """The result of the run ``begin_run`` started."""
        return handle

    def begin_capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> object:
        """Start capturing the intermediate tensors ``names`` (backends with a ``capture``);
        pass what it returns to ``finish_capture``. In-process the capture happens there."""
        return lambda: self.capture(feeds, names, cache=cache)

    def finish_capture(self, handle) -> RunResult:
        return handle()

    # -- tensors kept from an earlier capture ---------------------------------------------
    def keep_values(self, feeds: TensorMap, values: Mapping[str, np.ndarray]) -> None:
        """Keep a few tensors a capture on ``feeds`` returned (e.g. the first divergence and
        its inputs), so a later capture of them on the same feeds (the same mapping) takes
        them from here instead of running the model again. Replaces what was kept."""
        self._kept = (feeds, dict(values))

    def kept_values(self, feeds: TensorMap, names) -> RunResult | None:
        """The kept tensors ``names`` when every one was kept from a capture on ``feeds``."""
        kept = self._kept
        if kept is None or kept[0] is not feeds or any(n not in kept[1] for n in names):
            return None
        return RunResult({n: kept[1][n] for n in names})


def check_model_file(path: Path, framework: str) -> None:
    """Fail with one line before any framework sees a path that cannot be a model: missing,
    not a regular file (a FIFO would block the open forever, /dev/zero never ends), unreadable,
    empty, or, for MNN, a name its C++ API cannot take (not valid UTF-8)."""
    st = check_input(path, "model file", error=ModelError, not_a=f"a model file for {framework}")
    if framework.lower() == "mnn" and not is_utf8(path):
        raise ModelError(f"model file {show(path)} has a name that is not valid UTF-8, which MNN "
                         f"cannot open; rename it")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ModelError(f"model file {show(path)} cannot be read: {exc.strerror}") from None
    if st.st_size == 0:
        raise ModelError(f"model file {show(path)} is empty")


def check_weights_file(path: Path, weights: Path | None = None, *, strict: bool = False) -> None:
    """Refuse an .mnn whose weights file (``--saveExternalData``: ``MODEL.weight`` beside it,
    or ``weights``) is missing or shorter than the spans its ops read there: MNN then reads past
    the end without a word and computes with whatever it finds (a wrong verdict), or crashes.
    A model the flatbuffer reader cannot parse is left to MNN's own load, unless ``strict``
    (MNN.llm crashes on one): then it is refused here."""
    from parity.mnn import flatbuffer

    weights = Path(f"{path}.weight") if weights is None else weights
    try:
        need = flatbuffer.external_extent(path)
    except (OSError, ValueError, IndexError, struct.error) as exc:  # any byte of a damaged file
        if strict:
            raise ModelError(f"{show(path)} is not a readable MNN model ({exc}): it is damaged or "
                             f"truncated; export or convert it again") from None
        return
    if not need:
        return
    try:
        size = os.stat(weights).st_size
    except OSError:
        raise ModelError(f"{show(path)} keeps its weights in {show(weights.name)} (converted with "
                         f"--saveExternalData), which is missing beside it; keep the two files together") from None
    if size < need:
        raise ModelError(f"{show(weights)} holds {size:,} bytes, but {show(path)} reads {need:,} from it: "
                         f"the weights file is truncated or comes from another conversion; copy both "
                         f"files again, or convert again")


def conform_feeds(
    specs: Sequence[TensorSpec],
    feeds: TensorMap,
    label: str,
    *,
    allow_casts: bool = False,
    check_dims: bool = True,
) -> tuple[TensorMap, list[str]]:
    """Check names, ranks, fixed dims and dtypes; return feeds in the model's input order.

    With ``allow_casts`` a backend may take a feed in another width or type when no value
    changes (MNN takes ONNX int64 inputs as int32, float16 as float32; see _LOSSLESS_CASTS);
    each such cast is returned as a note.
    """
    expected = [s.name for s in specs]
    unknown = [n for n in feeds if n not in expected]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r} for {label}; it has inputs {expected}")
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise InputError(f"input {missing[0]!r} is missing; {label} expects {expected}")
    out: TensorMap = {}
    notes: list[str] = []
    for spec in specs:
        array = np.asarray(feeds[spec.name])
        if not array.dtype.isnative:  # '>f4' from another machine: the same values in this one's order
            array = array.astype(array.dtype.newbyteorder("="))
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise InputError(
                    f"input {spec.name!r} has shape {tuple(array.shape)} but {label} expects "
                    f"rank {len(spec.shape)} {format_shape(spec.shape)}"
                )
            for got, want in zip(array.shape, spec.shape):
                if check_dims and isinstance(want, int) and got != want:
                    raise InputError(
                        f"input {spec.name!r} has shape {tuple(array.shape)} but {label} expects "
                        f"{format_shape(spec.shape)}"
                    )
        have = array.dtype.name
        if have != spec.dtype:
            if not (allow_casts and (have, spec.dtype) in _LOSSLESS_CASTS):
                raise InputError(
                    f"input {spec.name!r} is {have} but {label} expects {spec.dtype}"
                )
            cast = array.astype(spec.dtype)
            if not np.array_equal(cast.astype(have), array, equal_nan=array.dtype.kind == "f"):
                raise InputError(
                    f"input {spec.name!r} ({have}) has values that do not fit {spec.dtype}, "
                    f"which {label} takes; give values {spec.dtype} holds exactly (--inputs)"
                )
            notes.append(f"input {spec.name!r} fed to {label} as {spec.dtype} (given {have})")
            array = cast
        out[spec.name] = np.ascontiguousarray(array)
    return out, notes
