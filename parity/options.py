"""The options of a check, as small frozen dataclasses built once (by the CLI, the pytest
plugin or ``parity.check``'s keywords) and passed whole, like Black's Mode.

``CheckOptions`` says what to compute; its ``output`` (``OutputOptions``) says what to write.
``CheckOptions.from_keywords`` accepts the flat keywords ``parity.check`` has always taken
(``seed=``, ``layers=True``, ``mnn_options={...}``...), so the Python API stays as documented.

Each object checks its own fields here, by the words parity.option_groups declares; what only a
domain module can judge (a budget rule, a target spec) is refused by parity.checking.preflight
before any work, so this module imports no domain module.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from parity.core.errors import UsageError
from parity.core.metrics import Tolerance
from parity.option_groups import CHECK_STATS, ISOLATE_CHOICES, MEMORY_MODES, PRECISION_CHOICES


@dataclass(frozen=True)
class MnnOptions:
    """How MNN runs: what its runtime manager and module loader are given."""

    backend: str = "CPU"
    threads: int = 4
    precision: str = "normal"  # normal, high, low, low_bf16; several, comma-separated: one link each
    shape_mutable: bool = True  # False: plan for fixed input shapes at load (--mnn-static-shapes)
    hints: tuple = ()
    memory: int | str | None = None  # MNN's memory mode: 0 normal, 1 high, 2 low; "normal,low" runs both
    rearrange: bool = False
    target: str = "local"  # where MNN runs: local, arm64, ssh://[user@]host[:port], exec:COMMAND

    def __post_init__(self):
        self.precisions()  # refuse a bad precision or memory mode when the options are made
        self.memories()  # (the target's spec: preflight.refuse_bad_options, by the targets module)

    def precisions(self) -> tuple[str, ...]:
        """The precision modes to run, each as its own link ("high,low" -> ("high", "low"))."""
        names = tuple(p.strip() for p in str(self.precision).split(",") if p.strip())
        bad = [p for p in names if p not in PRECISION_CHOICES]
        if bad or not names:
            raise UsageError(f"unknown MNN precision {(bad or [self.precision])[0]!r}: give one or more of "
                             f"{', '.join(PRECISION_CHOICES)}, comma-separated (e.g. high,low)")
        if len(set(names)) != len(names):
            raise UsageError(f"MNN precision {self.precision!r} names a mode twice")
        return names

    def memories(self) -> tuple:
        """The memory modes to run, each its own link: None (MNN's default) or 0, 1, 2. Low (2)
        makes MNN run weight-quantized models with dynamic int8 activations."""
        if self.memory is None or isinstance(self.memory, int):
            return (self.memory,)
        modes = []
        for word in str(self.memory).split(","):
            word = word.strip().lower()
            if word not in MEMORY_MODES:
                raise UsageError(f"unknown MNN memory mode {word!r}: give normal, high or low, comma-separated")
            modes.append(MEMORY_MODES[word])
        if len(set(modes)) != len(modes) or not modes:
            raise UsageError(f"MNN memory {self.memory!r} names a mode twice, or none")
        return tuple(modes)

    def runs(self) -> list[tuple[str, int | None]]:
        """Every (precision, memory) pair to run, each its own link."""
        return [(p, m) for p in self.precisions() for m in self.memories()]

    def backend_kwargs(self, precision: str | None = None, memory=...) -> dict:
        return {"backend": self.backend, "threads": self.threads,
                "precision": precision or self.precisions()[0],
                "shape_mutable": self.shape_mutable, "hints": tuple(self.hints),
                "memory": self.memories()[0] if memory is ... else memory,
                "rearrange": self.rearrange, "target": self.target}


@dataclass(frozen=True)
class LayerOptions:
    """Per-layer comparison (--layers) and how its findings count."""

    enabled: bool = False
    layer_rtol: float | None = None  # None: 10 x the element rule's rtol
    isolate: str = "first"  # which failing layers to re-run alone: first, all, none
    max_memory: int | None = None  # bytes of captured tensors held at once; None: RAM / 4
    fail_on_layers: bool = False  # a layer-only finding fails the check (exit 1)

    def __post_init__(self):
        if self.fail_on_layers and not self.enabled:  # gating on layers needs them captured
            object.__setattr__(self, "enabled", True)
        if self.isolate not in ISOLATE_CHOICES:
            raise UsageError(f"isolate must be one of {', '.join(ISOLATE_CHOICES)}, not {self.isolate!r}")
        if self.layer_rtol is not None and self.layer_rtol < 0:
            raise UsageError("layer_rtol must be >= 0")

    def rtol(self, tolerance: Tolerance) -> float:
        """The layer rule's relative term: given, else ten times the element rule's rtol."""
        return 10 * tolerance.rtol if self.layer_rtol is None else self.layer_rtol


@dataclass(frozen=True)
class OutputOptions:
    """What a check writes besides its result: files the check itself writes (inputs, the
    reference's outputs, a reproduction, the fixed model) and the reports the CLI renders from
    it (--json, --html, --junit, --model-explorer; '-' for stdout)."""

    save_inputs: str | os.PathLike | None = None
    # the reference's outputs written to an .npz (--save-outputs), to compare later runs with
    save_outputs: str | os.PathLike | None = None
    repro: str | os.PathLike | None = None
    write_fixed: str | os.PathLike | None = None  # where the ranking's fix (worst layers in float) goes
    json: str | None = None
    html: str | None = None
    junit: str | None = None
    model_explorer: str | None = None

    def reports(self) -> dict:
        """The reports asked for, by flag: {"--json": path, ...}."""
        return {f"--{name.replace('_', '-')}": getattr(self, name) for name in REPORT_FIELDS}

    def files(self) -> dict:
        """The files the check writes, by flag: {"--save-inputs": path, ...}."""
        return {f"--{name.replace('_', '-')}": getattr(self, name) for name in ("save_inputs", "write_fixed",
                                                                               "save_outputs")}


REPORT_FIELDS = ("json", "html", "junit", "model_explorer")
# the fields that moved to OutputOptions; CheckOptions still takes and gives them by these names
_WRITTEN_BY_THE_CHECK = ("save_inputs", "save_outputs", "repro", "write_fixed")


@dataclass(frozen=True)
class CheckOptions:
    """What a check computes; ``output`` says what it writes."""

    tolerance: Tolerance = Tolerance()
    # True when the tolerance was given (--atol/--rtol, tolerance=): then it applies to every
    # link; otherwise a link that ran in float16 gets float16's default (pipeline.link_tolerance)
    tolerance_given: bool = False
    seed: int = 0
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    inputs: str | os.PathLike | Mapping | None = None  # .npz path, or name -> array
    allow_nonfinite: bool = False
    timeout: float = 300.0  # seconds per MNN step (load, run, conversion)
    mnn: MnnOptions = MnnOptions()
    torch_inputs: tuple[str, ...] | None = None
    layers: LayerOptions = LayerOptions()
    diagnose: bool = True
    # compressed models (compression.py, budget.py): the float conversion to attribute the
    # loss against (None: parity converts the ONNX itself), and the budget of the compression
    # (None: the default of the compression kind); attribute=False checks ONNX -> .mnn as is
    float_mnn: str | os.PathLike | None = None
    budget: str | None = None
    attribute: bool = True
    rank_layers: bool = False  # rank compressed layers by their cost even when the budget holds
    samples_axis: int | None = None  # --inputs holds many samples along this axis of every array
    # the outputs saved in an .npz (--load-outputs) as the reference of this check, in place of
    # running a reference model
    load_outputs: str | os.PathLike | None = None
    # input data: value ranges of generated inputs ((name or None for all, (low, high)), ...),
    # or a Python data loader "file.py:function" yielding dicts of arrays (each a sample)
    val_ranges: tuple = ()
    data_loader: str | None = None
    # per-output tolerances (name -> Tolerance, --tol) and the statistic that decides (--check-stat)
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    check_stat: str = "elementwise"
    # the calibration samples a full-int8 model was made with (convert --int8-calibration), and
    # the tool's method: the ranking of its layers quantizes it again with them
    calibration: str | os.PathLike | None = None
    calibration_method: str = "ADMM"
    output: OutputOptions = OutputOptions()

    def __post_init__(self):
        if self.check_stat not in CHECK_STATS:
            raise UsageError(f"--check-stat must be one of {', '.join(CHECK_STATS)}, not {self.check_stat!r}")

    # what the check writes, read where it was before the split (options.save_inputs...)
    save_inputs = property(lambda self: self.output.save_inputs)
    save_outputs = property(lambda self: self.output.save_outputs)
    repro = property(lambda self: self.output.repro)
    write_fixed = property(lambda self: self.output.write_fixed)

    @classmethod
    def keywords(cls) -> list[str]:
        """The keywords the constructor takes (the fields, and those of what the check writes)."""
        return sorted({f.name for f in dataclasses.fields(cls)} - {"output"} | set(_WRITTEN_BY_THE_CHECK))

    @classmethod
    def from_keywords(cls, **keywords: Any) -> "CheckOptions":
        """The flat keywords of ``parity.check`` (see the README's Python API)."""
        layer_fields = {"layer_rtol", "isolate", "max_memory", "fail_on_layers"}
        layer_kw = {k: keywords.pop(k) for k in list(keywords) if k in layer_fields}
        if "layers" in keywords and not isinstance(keywords["layers"], LayerOptions):
            layer_kw["enabled"] = bool(keywords.pop("layers"))
        if layer_kw:
            keywords["layers"] = dataclasses.replace(keywords.get("layers", LayerOptions()), **layer_kw)
        mnn = keywords.pop("mnn_options", None)
        if mnn is not None and not isinstance(mnn, MnnOptions):
            mnn = dict(mnn)
            if "static_shapes" in mnn:
                mnn["shape_mutable"] = not mnn.pop("static_shapes")
            known = {f.name for f in dataclasses.fields(MnnOptions)}
            unknown = sorted(set(mnn) - known)
            if unknown:
                raise UsageError(f"unknown MNN option {unknown[0]!r}; known: {sorted(known)}")
            mnn = MnnOptions(**mnn)
        if mnn is not None:
            keywords["mnn"] = mnn
        if keywords.get("torch_inputs") is not None:
            keywords["torch_inputs"] = tuple(keywords["torch_inputs"])
        if keywords.get("shapes") is None:
            keywords.pop("shapes", None)
        if "tolerance" in keywords and "tolerance_given" not in keywords:
            keywords["tolerance_given"] = True
        _refuse_plain_tolerances(keywords)
        known = cls.keywords()
        unknown = sorted(set(keywords) - set(known))
        if unknown:
            raise UsageError(f"unknown check option {unknown[0]!r}; known: {known}")
        return cls(**keywords)

    def to_dict(self) -> dict:
        """As given, for the report (paths as strings, arrays named but not included), under the
        names and in the order reports have always had; the reports' own paths are not in it."""
        return {name: _plain(getattr(self, name)) for name in _RECORDED}


def _refuse_plain_tolerances(keywords: dict) -> None:
    """tolerance= and tolerances= take Tolerance objects: a number there failed deep in the check
    (AttributeError 'float' object has no attribute 'atol_for')."""
    from parity.core.metrics import Tolerance

    given = keywords.get("tolerance")
    if given is not None and not isinstance(given, Tolerance):
        raise UsageError(f"tolerance= takes parity.Tolerance(atol, rtol), not {type(given).__name__} {given!r}; "
                         f"for numbers give atol= and rtol=")
    per_output = keywords.get("tolerances") or {}
    if not hasattr(per_output, "items"):
        raise UsageError(f"tolerances= takes a dict of output name -> parity.Tolerance, not {type(per_output).__name__}")
    for name, value in per_output.items():
        if not isinstance(value, Tolerance):
            raise UsageError(f"tolerances[{name!r}] takes parity.Tolerance(atol, rtol), not {type(value).__name__} "
                             f"{value!r}")


def _taking_written_keywords(init):
    """CheckOptions(save_inputs=..., repro=...) as before the split: those go into ``output``."""
    @functools.wraps(init)
    def __init__(self, *args, **keywords):
        written = {k: keywords.pop(k) for k in _WRITTEN_BY_THE_CHECK if k in keywords}
        if written:
            keywords["output"] = dataclasses.replace(keywords.get("output") or OutputOptions(), **written)
        init(self, *args, **keywords)

    return __init__


CheckOptions.__init__ = _taking_written_keywords(CheckOptions.__init__)

# the options a report records, in the order of the fields before the split
_RECORDED = ("tolerance", "tolerance_given", "seed", "shapes", "inputs", "save_inputs", "allow_nonfinite", "timeout",
             "mnn", "torch_inputs", "layers", "diagnose", "repro", "float_mnn", "budget", "attribute", "rank_layers",
             "write_fixed", "samples_axis", "save_outputs", "load_outputs", "val_ranges", "data_loader", "tolerances",
             "check_stat", "calibration", "calibration_method")


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # field by field, as dataclasses.asdict gives them, without its deep copy of each value
        # (an array given as inputs would be copied only to be named)
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        if value and all(hasattr(v, "shape") for v in value.values()):
            return f"{len(value)} arrays given"
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
