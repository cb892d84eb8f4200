"""What each link of a chain means: one row per (reference framework, candidate framework).

A check compares every model with the one before it; what a failing comparison says, which
experiments can explain it, how its layers pair and how its outputs are named depend on the
two frameworks, and are read here instead of compared by name across the code. What depends on
one framework only (its inputs are not described, it runs in a child) is its backend class's
(parity/backends/base.py).

Adding a framework: its adapter, parity/backends/<name>.py (a Backend subclass declaring its
``framework`` and ``suffixes``), and here its name in FRAMEWORKS and the rows of its links.

The table lives in core because the verdict (core/judge.py) reads it: it is plain data, and
core imports nothing outside core.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.core.report import VerdictKind

# The frameworks, each served by the adapter module parity/backends/<name>.py, in chain order
# (each converts into the next: a sweep manifest names them in this order); "saved" is outputs
# saved by an earlier run, a reference only.
FRAMEWORKS = ("torch", "onnxruntime", "mnn", "saved")

ANY = "*"  # a row's side that matches every framework

# How the layers of a link pair (parity/checking/layers.py):
ONNX_VALUE = "onnx-value"  # reference is the ONNX graph; candidate tensors are named after its values
MODULE_SCOPE = "module-scope"  # reference is torch's modules; candidate is the ONNX graph, by node scope


@dataclass(frozen=True)
class Link:
    reference: str
    candidate: str
    # the verdict a failing comparison gives before any diagnosis, what it blames and what to do
    failure: VerdictKind = VerdictKind.MISMATCH
    failure_cause: str = ""  # leads the verdict's summary: "the export (torch -> ONNX) changed the numbers"
    failure_next_steps: tuple[str, ...] = ()
    # the diagnosis's experiments (checking/diagnose.py) can say why a failing link fails
    diagnosable: bool = False
    # --repro can write a standalone reproduction of a failing link (checking/repro.py)
    reproducible: bool = False
    # a compressed candidate is judged by its budget against a float conversion of the reference,
    # which joins the chain between them (checking/pipeline.py, attribution)
    compression_budget: bool = False
    # how layers pair (ONNX_VALUE, MODULE_SCOPE), or None: no per-layer view on this link
    layer_pairing: str | None = None
    # the candidate is a converter's rewrite of the reference graph: its tensors keep the ONNX
    # names (with suffixes), ops are fused or folded, and its own graph gives their op types
    candidate_fuses_ops: bool = False
    # an output row is named after the candidate's output ("candidate") where the reference
    # names its outputs by position (torch's flattened "output", "0"), else after the pair
    rows_named_by: str = "pair"

    @property
    def onnx_side(self) -> str | None:
        """Which side's model is the ONNX graph the per-layer view maps onto."""
        return {ONNX_VALUE: "reference", MODULE_SCOPE: "candidate"}.get(self.layer_pairing)


_EXPORT_STEPS = (
    "check the export with the inputs that fail: data-dependent control flow, "
    "shapes baked in by tracing and training-mode layers are the usual causes",
)

# Looked up in this order: the exact pair, (reference, ANY), (ANY, candidate), then DEFAULT.
LINKS = (
    # torch -> ONNX: the export; torch's modules pair with the ONNX nodes of their scope
    Link("torch", "onnxruntime", failure=VerdictKind.EXPORT,
         failure_cause="the export (torch -> ONNX) changed the numbers", failure_next_steps=_EXPORT_STEPS,
         layer_pairing=MODULE_SCOPE, rows_named_by="candidate"),
    # ONNX -> MNN: the conversion and MNN's runtime, which the diagnosis tells apart
    Link("onnxruntime", "mnn", diagnosable=True, reproducible=True, compression_budget=True,
         layer_pairing=ONNX_VALUE, candidate_fuses_ops=True),
    # torch -> MNN: end to end, with three models; the ONNX links in between hold the detail
    Link("torch", "mnn", rows_named_by="candidate"),
    # MNN -> MNN: a compressed model against its float conversion (judged by the budget), or
    # two .mnn files
    Link("mnn", "mnn"),
    # torch -> anything: outputs named after the candidate's
    Link("torch", ANY, rows_named_by="candidate"),
    # outputs saved by an earlier run (--load-outputs): no graph, no layers, no diagnosis
    Link("saved", ANY),
)
DEFAULT = Link(ANY, ANY)

_BY_PAIR = {(row.reference, row.candidate): row for row in LINKS}


def link_for(reference: str, candidate: str) -> Link:
    """The row of the link ``reference -> candidate`` (framework names)."""
    for key in ((reference, candidate), (reference, ANY), (ANY, candidate)):
        if key in _BY_PAIR:
            return _BY_PAIR[key]
    return DEFAULT


def with_layers() -> list[str]:
    """The links that have a per-layer view, as "torch -> onnxruntime"."""
    return [f"{row.reference} -> {row.candidate}" for row in LINKS if row.layer_pairing]
