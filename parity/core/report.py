"""The report: frozen dataclasses, JSON (schema ``parity.report/1``) and the exit code.

Later versions add fields; they never remove or rename one (readers ignore unknown keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from parity.core.errors import ExitCode

SCHEMA = "parity.report/1"


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "onnxruntime", "mnn" or "torch"
    model: str
    version: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple
    dtype: str
    source: str  # "random" or "file"
    notes: tuple = ()


@dataclass(frozen=True)
class OutputComparison:
    name: str
    reference_name: str | None
    candidate_name: str | None
    passed: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine: float | None = None
    mismatch_fraction: float | None = None
    reference_shape: tuple | None = None
    candidate_shape: tuple | None = None
    alignment: tuple = ()
    reference_dtype: str | None = None
    candidate_dtype: str | None = None
    kind: str | None = None
    size: int | None = None
    mismatch_count: int | None = None
    exact_match_fraction: float | None = None
    reference_absmax: float | None = None
    nan_reference: int = 0
    nan_candidate: int = 0
    inf_reference: int = 0
    inf_candidate: int = 0
    masked_reference: int = 0  # mask values (|v| >= 1e38 or inf) on each side
    masked_candidate: int = 0
    masked_matched: int = 0  # masked on both sides, same sign: left out of the figures
    class_mismatches: int = 0  # a mask, Inf or NaN on one side only, or opposite masks
    atol: float | None = None  # the absolute tolerance applied to this output
    # on a compressed link: the budget's figures and verdict (budget.py), which decide `passed`
    budget: dict | None = None
    # over several input samples (--inputs DIR): count, failures, the worst sample, mean cosine,
    # top-1 agreement and per-sample figures; the figures above are the worst sample's
    samples: dict | None = None
    notes: tuple = ()
    error: str | None = None  # why no figures could be computed (missing, unalignable)

    @classmethod
    def from_diff(cls, diff, *, alignment=(), **fields) -> "OutputComparison":
        """From a ``metrics.TensorDiff`` plus the pairing fields (names, shapes, dtypes)."""
        # every figure of the diff this class has a field for: a new metric needs no line here
        mine = {f.name for f in dataclasses.fields(cls)}
        figures = {f.name: getattr(diff, f.name) for f in dataclasses.fields(diff) if f.name in mine}
        return cls(**{**figures, "alignment": tuple(alignment), **fields})


@dataclass(frozen=True)
class LayerResult:
    name: str
    reference_name: str
    candidate_name: str
    op_type: str
    candidate_op_type: str | None
    module: str | None
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    cosine: float | None
    mismatch_fraction: float | None
    scaled_error: float | None
    reference_absmax: float | None
    reference_shape: tuple
    candidate_shape: tuple
    alignment: tuple = ()
    local_max_abs_diff: float | None = None
    local_scaled_error: float | None = None
    status: str = "pass"  # pass, fail, introduced (local error too), carried (from upstream)
    index: int = 0
    rule: str = "layer"  # "element" for a graph output judged by the outputs' element rule
    masked: int = 0  # mask values matched on both sides, left out of the figures
    # how the reference's values fit float16 (what precision low computes in on ARM):
    fp16_range: float | None = None  # max|reference| / 65504: above 1 overflows to inf
    fp16_subnormal: float | None = None  # share of nonzero values below float16's smallest normal


@dataclass(frozen=True)
class Unpaired:
    name: str
    reason: str


@dataclass(frozen=True)
class FirstDivergence:
    name: str
    op_type: str  # the ONNX ops the diverging tensor stands for, e.g. "Conv+Relu" when fused
    candidate_op_type: str | None
    nodes: tuple  # their ONNX node names, in order
    module: str | None
    inputs: tuple
    max_abs_diff: float | None
    scaled_error: float | None
    local_max_abs_diff: float | None
    local_scaled_error: float | None
    introduced_here: bool | None
    summary: str
    # counts of log10 |candidate - reference| at this tensor, bins of width 1 from edges[0]
    histogram: dict | None = None
    rule: str = "layer"  # "element": a failing graph output reached through an unpaired stretch


@dataclass(frozen=True)
class Comparison:
    reference: str
    candidate: str
    passed: bool
    outputs: tuple = ()
    notes: tuple = ()
    layers: tuple | None = None  # None: not captured (no --layers, or no per-layer view)
    unpaired: tuple = ()
    first_divergence: FirstDivergence | None = None
    candidate_run: str = ""  # where and how the candidate ran, when not plain: "arm64, precision low"
    reference_run: str = ""  # the same of the reference (an MNN float conversion: "float conversion")
    tolerance: dict | None = None  # this link's own tolerance, when not the report's

    @property
    def link(self) -> str:
        """"onnxruntime -> mnn", or "onnxruntime -> mnn (arm64, precision low)"."""
        run = f" ({self.candidate_run})" if self.candidate_run else ""
        from_run = f" ({self.reference_run})" if self.reference_run else ""
        return f"{self.reference}{from_run} -> {self.candidate}{run}"

    @property
    def failed_outputs(self) -> list[OutputComparison]:
        return [o for o in self.outputs if not o.passed]


class VerdictKind(str, Enum):
    """What a check concluded: the one list of verdict kinds. A member is its string (equal to
    it, formatted and written to JSON as it), so reports and callers keep plain strings."""

    PASS = "pass"
    MISMATCH = "mismatch"  # a link fails and no diagnosis ran (--no-diagnose, or a link it cannot diagnose)
    EXPORT = "export"  # torch -> onnxruntime differs
    CONVERSION = "conversion"  # the .mnn is not what the ONNX means
    RUNTIME = "runtime"  # MNN's kernels, precision, settings or target
    NUMERICS = "numerics"  # amplified float32 rounding: nobody's bug
    COMPRESSION = "compression"  # the compressed weights cost more than the budget
    USAGE = "usage"  # the calling code that produced the outputs (parity compare)
    TOKENIZER = "tokenizer"  # an LLM export's tokenizer or chat template is not the model's
    UNDETERMINED = "undetermined"  # the experiments decided nothing

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def failing(self) -> bool:
        return self is not VerdictKind.PASS


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind  # given as a VerdictKind or its string; an unknown string is a ValueError
    where: str | None
    summary: str
    evidence: tuple = ()
    next_steps: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "kind", VerdictKind(self.kind))

    def to_dict(self) -> dict[str, Any]:
        """The verdict as a report's JSON holds it."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        """A report's verdict; a kind this version does not know (a newer parity's) is read as
        ``mismatch`` with the kind kept in the summary, so an old reader never fails on it."""
        data = dict(data)
        kind = data.get("kind")
        if kind not in {k.value for k in VerdictKind}:
            data["kind"] = VerdictKind.MISMATCH
            data["summary"] = f"[verdict kind {kind!r}, unknown to this parity] {data.get('summary', '')}"
        return _build(cls, data)


@dataclass(frozen=True)
class Report:
    passed: bool
    backends: tuple
    inputs: tuple
    comparisons: tuple
    verdict: Verdict
    tolerance: dict = field(default_factory=dict)
    notes: tuple = ()
    parity_version: str = ""
    schema: str = SCHEMA
    # findings that do not decide the exit code by themselves (layer-only differences)
    findings: tuple = ()
    compression: dict | None = None  # what the compressed .mnn carries (compression.py), when it is compressed
    ranking: dict | None = None  # the compressed layers by their cost, and the fix (ranking.py)
    # how to run it again: the command line, its working directory, the versions (CLI runs)
    rerun: dict | None = None
    options: dict = field(default_factory=dict)  # the check's options, as given
    # an LLM check's own figures (parity/llm): prompts, per-step figures of each link, tokenizer
    llm: dict | None = None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.PASS if self.passed else ExitCode.MISMATCH

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "parity_version": self.parity_version,
            "passed": self.passed,
            "backends": [dataclasses.asdict(b) for b in self.backends],
            "inputs": {
                i.name: {"shape": list(i.shape), "dtype": i.dtype, "source": i.source,
                         "notes": list(i.notes)}
                for i in self.inputs
            },
            "tolerance": dict(self.tolerance),
            "comparisons": [_comparison_dict(c) for c in self.comparisons],
            "verdict": self.verdict.to_dict(),
            "notes": list(self.notes),
            "findings": list(self.findings),
            **({"compression": _plain(self.compression)} if self.compression is not None else {}),
            **({"ranking": _plain(self.ranking)} if self.ranking is not None else {}),
            **({"rerun": _plain(self.rerun)} if self.rerun is not None else {}),
            "options": _plain(self.options),
            **({"llm": _plain(self.llm)} if self.llm is not None else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        if not str(data.get("schema", "")).startswith("parity.report/"):
            raise ValueError(f"not a parity report (schema {data.get('schema')!r})")
        return cls(
            passed=data["passed"],
            backends=tuple(_build(BackendInfo, b) for b in data["backends"]),
            inputs=tuple(
                _build(InputInfo, dict(v, name=k)) for k, v in data["inputs"].items()
            ),
            comparisons=tuple(_comparison_from(c) for c in data["comparisons"]),
            verdict=Verdict.from_dict(data["verdict"]),
            tolerance=data.get("tolerance", {}),
            notes=tuple(data.get("notes", ())),
            parity_version=data.get("parity_version", ""),
            schema=data["schema"],
            findings=tuple(data.get("findings", ())),
            compression=data.get("compression"),
            ranking=data.get("ranking"),
            rerun=data.get("rerun"),
            options=data.get("options", {}),
            llm=data.get("llm"),
        )


def _comparison_dict(c: Comparison) -> dict:
    out = {
        "reference": c.reference,
        "candidate": c.candidate,
        "passed": c.passed,
        "outputs": [_plain(dataclasses.asdict(o)) for o in c.outputs],
        "notes": list(c.notes),
    }
    if c.candidate_run:
        out["candidate_run"] = c.candidate_run
    if c.reference_run:
        out["reference_run"] = c.reference_run
    if c.tolerance is not None:
        out["tolerance"] = _plain(c.tolerance)
    if c.layers is not None:
        out["layers"] = [_plain(dataclasses.asdict(layer)) for layer in c.layers]
        out["unpaired"] = [_plain(dataclasses.asdict(u)) for u in c.unpaired]
        out["first_divergence"] = (
            None if c.first_divergence is None else _plain(dataclasses.asdict(c.first_divergence))
        )
    return out


def _comparison_from(data: dict) -> Comparison:
    layers = data.get("layers")
    divergence = data.get("first_divergence")
    return _build(Comparison, dict(
        data,
        outputs=tuple(_build(OutputComparison, o) for o in data["outputs"]),
        layers=None if layers is None else tuple(_build(LayerResult, x) for x in layers),
        unpaired=tuple(_build(Unpaired, u) for u in data.get("unpaired", ())),
        first_divergence=None if divergence is None else _build(FirstDivergence, divergence),
    ))


def _plain(value):
    """Tuples -> lists, recursively, so the JSON is plain; a non-finite float (a figure
    measured on NaN) becomes null, as the schema's figures do."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            continue  # a newer report: ignore what this version does not know
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
