"""Per-layer comparison of one link: the steps in order.

The ONNX graph is the spine (onnx_graph.py): its values, in topological order, are the layers.
Each value pairs with a tensor of the candidate (pairing.py): on the ONNX Runtime -> MNN link
the MNN tensor of its name or one the converter derived from it, on the torch -> ONNX Runtime
link the output of the torch module whose scope produced it. Every pair is checked (element
count, layout, values) before it is trusted; values without a trustworthy partner are listed as
unpaired, with the reason, and never count as passing.

Both sides are captured in chunks that fit the memory budget (capture.py) and each layer is
judged as it arrives (divergence.py): a layer passes when ``max_abs_diff <= atol + layer_rtol *
max|reference|``. Scaling by the tensor's own magnitude keeps small legitimate differences
(Winograd, tanh GELU) that grow with activations from flagging a layer. A graph output that
fails the outputs' element rule fails as a layer too, so a failing output always has a
location. The first divergence is the earliest failing layer whose nearest paired inputs all
pass; isolation (isolation.py) then feeds the reference's values of those inputs into the
candidate cut at them and measures the layer's own (local) error: large -> introduced here,
small -> carried from upstream. Last, notes on how the reference's values fit float16
(fp16_headroom.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from parity.checking.capture import capture_chunks, keep_divergence_values, plan_chunks
from parity.checking.divergence import apply_output_rule, describe_divergence, drop_fused, first_divergence
from parity.checking.fp16_headroom import fp16_notes
from parity.checking.isolation import isolate_targets, with_isolation
from parity.checking.onnx_graph import OnnxGraph
from parity.checking.pairing import Plan, plan_entries
from parity.core.links import MODULE_SCOPE
from parity.core.metrics import Tolerance
from parity.core.report import FirstDivergence, OutputComparison
from parity.core.specs import TensorMap


@dataclass
class LayerReport:
    layers: list = field(default_factory=list)
    unpaired: list = field(default_factory=list)
    first_divergence: FirstDivergence | None = None
    notes: list = field(default_factory=list)
    chunks: int = 0


@dataclass
class _State:
    """What the capture found, filled chunk by chunk."""
    results: dict = field(default_factory=dict)  # ONNX value -> LayerResult
    chosen: dict = field(default_factory=dict)  # ONNX value -> Pair (no arrays kept)
    samples: dict = field(default_factory=dict)  # ONNX value -> reference sample
    failing_samples: dict = field(default_factory=dict)  # ONNX value -> aligned candidate sample


Progress = Callable[[str], None]


def compare_layers(
    graph: OnnxGraph,
    reference,
    candidate,
    feeds: TensorMap,
    tol: Tolerance,
    *,
    layer_rtol: float,
    max_memory: int | None = None,
    isolate: str = "first",
    failing_outputs: Mapping[str, OutputComparison] | None = None,
    progress: Progress | None = None,
) -> LayerReport | None:
    """Layers of one link, or None when the link has no per-layer view.

    ``failing_outputs`` (ONNX output name -> its failing OutputComparison) are judged by the
    outputs' element rule as layers too, so a failing output always has a location: when no
    paired layer fails before it, the first divergence is the stretch of ONNX ops between
    the last matching layers and that output."""
    say = progress or (lambda message, done=None, total=None: None)
    report = LayerReport()
    plan = plan_entries(graph, reference, candidate, report)
    if plan is None or not plan.entries:
        return None if plan is None else report
    chunks = plan_chunks(graph, feeds, plan.entries, max_memory, report)
    state = _State()
    captured = capture_chunks(graph, reference, candidate, feeds, tol, layer_rtol, chunks, plan, state, report,
                              say)
    if plan.link.candidate_fuses_ops:
        drop_fused(graph, state, tol, layer_rtol, report)
    apply_output_rule(graph, plan, state, failing_outputs or {})

    ordered = sorted(state.results.values(), key=lambda r: r.index)
    first = first_divergence(graph, ordered)
    if first and captured is not None:
        keep_divergence_values(graph, reference, candidate, feeds, first, state.results, captured)
    captured = None
    isolated = isolate_targets(graph, reference, candidate, feeds, tol, layer_rtol, ordered, first,
                               isolate, plan, state, report, say)
    report.layers = [with_isolation(layer, isolated.get(layer.name)) for layer in ordered]
    if first:
        report.first_divergence = describe_divergence(graph, reference, candidate, feeds, report, first)
        # the candidate's value served the histogram; the diagnosis captures the given file as
        # it captures the other conversions it compares with it (a few outputs requested)
        candidate.keep_values(feeds, {})
    if plan.link.layer_pairing == MODULE_SCOPE:
        report.notes.extend(_torch_notes(reference, plan))
    report.notes.extend(fp16_notes(report.layers))
    return report


def prepare_capture(graph: OnnxGraph, reference, candidate, feeds: TensorMap, max_memory: int | None) -> None:
    """Tell both sides which tensors ``compare_layers`` will capture first: ``candidate``'s
    (MNN's) child loads that capture module, and ``reference`` builds its capture session,
    while MNN's child still runs the model. Nothing to prepare where both runs return every
    tensor already (one_run)."""
    if reference.captures_from_its_run and candidate.captures_from_its_run:
        return
    plan = plan_entries(graph, reference, candidate, LayerReport())
    if plan is None or not plan.entries:
        return
    chunks = plan_chunks(graph, feeds, plan.entries, max_memory, LayerReport())
    names = list(dict.fromkeys(n for e in chunks[0] for n in e.candidate_names))
    candidate.prepare_capture(names, cache=len(chunks) == 1)
    reference.prepare_capture(list(dict.fromkeys(e.reference_name for e in chunks[0])), cache=len(chunks) == 1)


def _torch_notes(reference, plan: Plan) -> list[str]:
    notes = []
    ran = getattr(reference, "last_calls", {})
    idle = sorted({m for m in plan.mapping.values() if ran.get(m) == 0})
    if idle:
        notes.append(f"the ONNX graph computes modules that did not run in torch on these inputs: {idle[:10]} "
                     f"(data-dependent control flow frozen at export?)")
    with_nodes = plan.modules_with_nodes
    missing = sorted(m for m, count in ran.items() if count and m not in with_nodes
                     and not any(m.startswith(o + ".") or o.startswith(m + ".") for o in with_nodes))
    leaves = [m for m in missing if not any(x.startswith(m + ".") for x in ran)]
    if leaves:
        notes.append(f"torch modules that ran but have no ONNX nodes of their own (folded into "
                     f"neighbours at export, or not exported): {leaves[:10]}")
    return notes
