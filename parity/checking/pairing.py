"""Which reference tensor pairs with which candidate tensor, for each ONNX value.

On the ONNX Runtime -> MNN link a value pairs with the MNN tensor of the same name, or with one
the converter derived from it (``name___tr4...`` is the same values in another layout,
``name__matmul_converted`` and ``name_raster_N`` are rewrites); on the torch -> ONNX Runtime
link it pairs with the output of the torch module whose scope produced it (the exporter names
nodes ``/blocks.0/attn/qkv/MatMul``). Among a value's candidate tensors, ``best_pair`` picks the
one (and the layout) that matches. Part of the layer comparison (layers.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from parity.checking.onnx_graph import OnnxGraph, Value
from parity.core.align import AlignmentError, pair_outputs
from parity.core.judge import diff_tensors, scaled_error
from parity.core.links import MODULE_SCOPE, ONNX_VALUE, Link, link_for
from parity.core.metrics import TensorDiff, Tolerance
from parity.core.report import Unpaired

OUTPUT_PREFIX = "::output::"  # a reference name meaning "the model's returned output <name>"


# -- module scopes (torch -> ONNX) -------------------------------------------------------------
def module_of_node(node_name: str, modules: set[str]) -> str:
    """``/blocks.0/attn/qkv/MatMul`` -> ``blocks.0.attn.qkv`` given the model's module names.

    The TorchScript-based exporter writes one scope per module call: the attribute name
    (``attn``), or for some containers the qualified name (``blocks.3.0``).
    """
    parts = node_name.strip("/").split("/")[:-1]
    current = ""
    for part in parts:
        relative = f"{current}.{part}" if current else part
        if relative in modules:
            current = relative
        elif part in modules:
            current = part
        else:
            break
    return current


def module_values(graph: OnnxGraph, module_names: Sequence[str]) -> dict[str, str]:
    """ONNX value -> the innermost module whose single output it is."""
    modules = set(module_names)
    owner = {v.name: module_of_node(v.node_name, modules) for v in graph.values}
    graph_outputs = set(graph.outputs)
    candidates: dict[str, list[str]] = {}
    for module in modules:
        prefix = module + "."
        inside = {n for n, m in owner.items() if m == module or m.startswith(prefix)}
        if not inside:
            continue
        leaving = [
            n for n in inside
            if n in graph_outputs or any(c.name not in inside for c in graph.consumers.get(n, []))
        ]
        if len(leaving) == 1:
            candidates.setdefault(leaving[0], []).append(module)
    return {value: max(mods, key=lambda m: (m.count("."), len(m))) for value, mods in candidates.items()}


# -- MNN names ------------------------------------------------------------------------------
_MNN_SKIP_OPS = {"Input", "Const"}


def mnn_base_name(name: str) -> str:
    """The ONNX value an MNN tensor name was derived from (see the module docstring)."""
    base = name.split("___tr4")[0]
    base = re.sub(r"__matmul_converted$", "", base)
    return re.sub(r"_raster_\d+$", "", base)


def mnn_candidates(mnn_graph: list[dict]) -> tuple[dict[str, list[str]], dict[str, str]]:
    by_base: dict[str, list[str]] = {}
    op_types = {}
    for entry in mnn_graph:
        op_types[entry["name"]] = entry["op_type"]
        if entry["op_type"] in _MNN_SKIP_OPS:
            continue
        by_base.setdefault(mnn_base_name(entry["name"]), []).append(entry["name"])
    for base, names in by_base.items():
        names.sort(key=lambda n: (n != base, len(n)))  # the exact name first
    return by_base, op_types


# -- comparing one pair ----------------------------------------------------------------------
@dataclass
class Pair:
    candidate_name: str
    aligned: np.ndarray | None
    steps: tuple
    diff: TensorDiff | None
    passed: bool
    candidate_shape: tuple


def best_pair(reference: np.ndarray, candidates: dict[str, np.ndarray], tol: Tolerance,
              layer_rtol: float) -> Pair | None:
    """The candidate (and layout, align.layouts) that matches best; a passing one in
    preference order wins."""
    best = None
    for name, array in candidates.items():
        try:
            judged, diff = diff_tensors(name, reference, array, tol, layer_rtol)
        except AlignmentError:
            continue
        pair = Pair(name, judged.alignment.array, judged.alignment.steps, diff, judged.passed,
                    tuple(array.shape))
        if judged.passed:
            return pair
        score = scaled_error(diff)
        score = float("inf") if score is None else score
        if best is None or score < best[0]:
            best = (score, pair)
    return None if best is None else best[1]


# -- the plan of one link --------------------------------------------------------------------
@dataclass
class Entry:
    value: Value
    reference_name: str
    candidate_names: list
    module: str | None = None


@dataclass
class Plan:
    """Which reference tensor and which candidate tensors stand for each ONNX value."""
    link: Link  # what the link means (core/links.py)
    entries: list
    op_types: dict = field(default_factory=dict)  # MNN tensor -> op type
    mapping: dict = field(default_factory=dict)  # ONNX value -> torch module (torch link)
    modules_with_nodes: set = field(default_factory=set)


def plan_entries(graph, reference, candidate, report) -> Plan | None:
    """What the capture of one link will compare, or None when the link has no per-layer view;
    the values it cannot pair go to ``report.unpaired`` with the reason."""
    link = link_for(reference.framework, candidate.framework)
    if link.layer_pairing == ONNX_VALUE:
        by_base, op_types = mnn_candidates(candidate.graph())
        entries = []
        for v in graph.values:
            names = by_base.get(v.name)
            if names:
                entries.append(Entry(v, v.name, names))
            elif op_types.get(v.name) == "Const":
                report.unpaired.append(Unpaired(v.name, "folded into a constant by the converter"))
            else:
                report.unpaired.append(Unpaired(v.name, "no MNN tensor of this name: fused into a "
                                                        "neighbouring op or renamed by the converter"))
        return Plan(link, entries, op_types=op_types)
    if link.layer_pairing == MODULE_SCOPE:
        modules = reference.module_names()
        if modules is None:
            report.notes.append("per-layer capture in torch needs an eager nn.Module (--torch file.py:factory); "
                                ".pt2 and TorchScript graphs have no module calls to hook")
            return Plan(link, [])
        mapping = module_values(graph, modules)
        # graph outputs pair with what the model returns (flattened as in the outputs table),
        # named after the module whose scope computes them in ONNX
        returned = pair_outputs([s.name for s in reference.output_specs], graph.outputs).pairs
        final = {p.candidate_name: OUTPUT_PREFIX + p.reference_name for p in returned}
        entries = [
            Entry(v, final.get(v.name) or mapping[v.name], [v.name], mapping.get(v.name))
            for v in graph.values if v.name in mapping or v.name in final
        ]
        with_nodes = {module_of_node(v.node_name, set(modules)) for v in graph.values} - {""}
        report.notes.append(f"{len(entries)} ONNX values map to torch modules through the exporter's scopes")
        return Plan(link, entries, mapping=mapping, modules_with_nodes=with_nodes)
    return None
