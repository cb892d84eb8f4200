"""The report: frozen dataclasses, JSON (schema ``parity.report/1``) and the exit code.

Later versions add fields; they never remove or rename one (readers ignore unknown keys).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from parity.errors import ExitCode

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
    notes: tuple = ()
    error: str | None = None  # why no figures could be computed (missing, unalignable)


@dataclass(frozen=True)
class Comparison:
    reference: str
    candidate: str
    passed: bool
    outputs: tuple = ()
    notes: tuple = ()

    @property
    def failed_outputs(self) -> list[OutputComparison]:
        return [o for o in self.outputs if not o.passed]


@dataclass(frozen=True)
class Verdict:
    kind: str  # "pass", "mismatch", later "export", "conversion", "runtime", "usage", ...
    where: str | None
    summary: str
    evidence: tuple = ()
    next_steps: tuple = ()


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
            "verdict": _plain(dataclasses.asdict(self.verdict)),
            "notes": list(self.notes),
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
            comparisons=tuple(
                _build(Comparison, dict(c, outputs=tuple(_build(OutputComparison, o) for o in c["outputs"])))
                for c in data["comparisons"]
            ),
            verdict=_build(Verdict, data["verdict"]),
            tolerance=data.get("tolerance", {}),
            notes=tuple(data.get("notes", ())),
            parity_version=data.get("parity_version", ""),
            schema=data["schema"],
        )


def _comparison_dict(c: Comparison) -> dict:
    return {
        "reference": c.reference,
        "candidate": c.candidate,
        "passed": c.passed,
        "outputs": [_plain(dataclasses.asdict(o)) for o in c.outputs],
        "notes": list(c.notes),
    }


def _plain(value):
    """Tuples -> lists, recursively, so the JSON is plain."""
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
