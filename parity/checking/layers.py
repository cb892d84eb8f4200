"""Per-layer capture, pairing across frameworks, first divergence and isolation.

The ONNX graph is the spine: its values, in topological order, are the layers. On the
ONNX Runtime -> MNN link a value pairs with the MNN tensor of the same name, or with one the
converter derived from it (``name___tr4...`` is the same values in another layout,
``name__matmul_converted`` and ``name_raster_N`` are rewrites); on the torch -> ONNX Runtime
link it pairs with the output of the torch module whose scope produced it (the exporter names
nodes ``/blocks.0/attn/qkv/MatMul``). Every pair is checked (element count, layout, values)
before it is trusted; values without a trustworthy partner are listed as unpaired, with the
reason, and never count as passing.

Judging a layer (README "Per-layer", judge.layer_passes): a layer passes when
``max_abs_diff <= atol + layer_rtol * max|reference|``. Scaling by the tensor's own magnitude
keeps small legitimate differences (Winograd, tanh GELU) that grow with activations from
flagging a layer. A graph output that fails the outputs' element rule fails as a layer too,
so a failing output always has a location. The first divergence is the earliest failing layer whose nearest paired
inputs all pass; isolation then feeds the reference's values of those inputs into the
candidate cut at them and measures the layer's own (local) error: large -> introduced here,
small -> carried from upstream.

Memory: layers are captured in chunks whose tensors fit ``max_memory`` (both sides held at
once), compared as they arrive and dropped; only small samples are kept for later checks.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from parity.core.align import AlignmentError, pair_outputs
from parity.core.errors import BackendCrash, BackendError
from parity.core.judge import diff_tensors, layer_passes, output_scaled_error, scaled_error
from parity.core.metrics import TensorDiff, Tolerance, fmt
from parity.core.report import FirstDivergence, LayerResult, OutputComparison, Unpaired
from parity.core.specs import TensorMap

OUTPUT_PREFIX = "::output::"  # a reference name meaning "the model's returned output <name>"
_SAMPLE = 4096
_DOWNSTREAM_HOPS = 3


def default_max_memory() -> int:
    """A quarter of physical memory, at least 256 MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(total // 4, 256 << 20)


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GB"``, ``"1000000"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a size like 512M or 2G")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * factor)


# -- the ONNX graph ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    name: str
    op_type: str
    node_name: str
    inputs: tuple[str, ...]  # produced values and graph inputs only (no constants)
    index: int

    @property
    def label(self) -> str:
        """The node's name, or what it is when the exporter left it unnamed."""
        return self.node_name or f"{self.op_type} -> {self.name}"


class OnnxGraph:
    def __init__(self, model):
        graph = model.graph
        constants = {i.name for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                constants.update(node.output)
        self.model = model
        self.inputs = [i.name for i in graph.input if i.name not in constants]
        self.outputs = [o.name for o in graph.output]
        self.values: list[Value] = []
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            inputs = tuple(i for i in node.input if i and i not in constants)
            for out in node.output:
                if out:
                    self.values.append(Value(out, node.op_type, node.name, inputs, len(self.values)))
        self.producer = {v.name: v for v in self.values}
        self.consumers: dict[str, list[Value]] = {}
        for v in self.values:
            for i in v.inputs:
                self.consumers.setdefault(i, []).append(v)

    def frontier(self, name: str, paired: set[str]) -> list[str]:
        """The nearest ancestors of ``name`` that are paired tensors or graph inputs."""
        found, seen = set(), set()
        stack = list(self.producer[name].inputs)
        inputs = set(self.inputs)
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in paired or v in inputs:
                found.add(v)
            elif v in self.producer:
                stack.extend(self.producer[v].inputs)
        order = {v.name: v.index for v in self.values}
        return sorted(found, key=lambda n: order.get(n, -1))

    def span(self, name: str, frontier: set[str]) -> list[str]:
        """The values computed between ``frontier`` (exclusive) and ``name`` (inclusive): the
        ops a fused candidate tensor stands for, e.g. Conv then Relu."""
        found, stack = set(), [name]
        while stack:
            v = stack.pop()
            if v in found or v in frontier or v not in self.producer:
                continue
            found.add(v)
            stack.extend(self.producer[v].inputs)
        return sorted(found, key=lambda n: self.producer[n].index)

    def downstream(self, name: str, hops: int = _DOWNSTREAM_HOPS) -> list[str]:
        """Values reached from ``name`` through single-consumer chains (where fusion happens)."""
        out, current = [], name
        for _ in range(hops):
            consumers = self.consumers.get(current, [])
            if len(consumers) != 1:
                break
            current = consumers[0].name
            out.append(current)
        return out

    def value_bytes(self, feeds: TensorMap) -> dict[str, int]:
        """Sizes from ONNX shape inference with the actual input shapes (unknown: absent)."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for graph_input in model.graph.input:
            if graph_input.name in feeds:
                dims = graph_input.type.tensor_type.shape.dim
                shape = feeds[graph_input.name].shape
                if len(dims) == len(shape):
                    for dim, size in zip(dims, shape):
                        dim.Clear()
                        dim.dim_value = int(size)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:
            return {}
        sizes = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = info.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if None in dims or not t.elem_type:
                continue
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            except Exception:
                itemsize = 4
            sizes[info.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
        return sizes


def extract_subgraph(model, inputs: Sequence[str], outputs: Sequence[str], *, shapes_from=None):
    """The ONNX subgraph from ``inputs`` to ``outputs`` (onnx.utils.Extractor needs value infos
    for the cut points; shape inference provides them, empty ones fill the gaps). With
    ``shapes_from`` (the same graph without its large weights, onnx_skeleton) the shapes are
    inferred there: shape inference on a BERT-base with its weights takes 4 s."""
    import onnx
    import onnx.utils

    try:
        if shapes_from is None:
            inferred = onnx.shape_inference.infer_shapes(model)
        else:
            known = onnx.shape_inference.infer_shapes(shapes_from).graph.value_info
            inferred = onnx.ModelProto()
            inferred.CopyFrom(model)
            have = {vi.name for vi in inferred.graph.value_info}
            inferred.graph.value_info.extend(vi for vi in known if vi.name not in have)
    except Exception:
        inferred = onnx.ModelProto()
        inferred.CopyFrom(model)
    known = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    for name in list(inputs) + list(outputs):
        if name not in known:
            inferred.graph.value_info.append(onnx.helper.make_empty_tensor_value_info(name))
    return onnx.utils.Extractor(inferred).extract_model(list(inputs), list(outputs))


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


# -- results ----------------------------------------------------------------------------------
@dataclass
class LayerReport:
    layers: list = field(default_factory=list)
    unpaired: list = field(default_factory=list)
    first_divergence: FirstDivergence | None = None
    notes: list = field(default_factory=list)
    chunks: int = 0


# -- comparing one pair ----------------------------------------------------------------------
@dataclass
class _Pair:
    candidate_name: str
    aligned: np.ndarray | None
    steps: tuple
    diff: TensorDiff | None
    passed: bool
    candidate_shape: tuple


def best_pair(reference: np.ndarray, candidates: dict[str, np.ndarray], tol: Tolerance,
              layer_rtol: float) -> _Pair | None:
    """The candidate (and layout, align.layouts) that matches best; a passing one in
    preference order wins."""
    best = None
    for name, array in candidates.items():
        try:
            judged, diff = diff_tensors(name, reference, array, tol, layer_rtol)
        except AlignmentError:
            continue
        pair = _Pair(name, judged.alignment.array, judged.alignment.steps, diff, judged.passed,
                     tuple(array.shape))
        if judged.passed:
            return pair
        score = scaled_error(diff)
        score = float("inf") if score is None else score
        if best is None or score < best[0]:
            best = (score, pair)
    return None if best is None else best[1]


def _sample(array: np.ndarray) -> tuple[int, np.ndarray]:
    flat = array.reshape(-1)
    if flat.size <= _SAMPLE:
        return flat.size, flat.astype(np.float64)
    index = np.linspace(0, flat.size - 1, _SAMPLE).astype(np.int64)
    return flat.size, flat[index].astype(np.float64)


def _sample_matches(reference: tuple, candidate: tuple, tol: Tolerance, layer_rtol: float) -> bool:
    if reference[0] != candidate[0] or reference[1].shape != candidate[1].shape:
        return False
    diff = TensorDiff.from_arrays("sample", reference[1], candidate[1], tol)
    return layer_passes(diff, tol, layer_rtol)


# -- the comparison of one link ---------------------------------------------------------------
@dataclass
class _Entry:
    value: Value
    reference_name: str
    candidate_names: list
    module: str | None = None


@dataclass
class _Plan:
    """Which reference tensor and which candidate tensors stand for each ONNX value."""
    link: tuple
    entries: list
    op_types: dict = field(default_factory=dict)  # MNN tensor -> op type
    mapping: dict = field(default_factory=dict)  # ONNX value -> torch module (torch link)
    modules_with_nodes: set = field(default_factory=set)


@dataclass
class _State:
    """What the capture found, filled chunk by chunk."""
    results: dict = field(default_factory=dict)  # ONNX value -> LayerResult
    chosen: dict = field(default_factory=dict)  # ONNX value -> _Pair (no arrays kept)
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
    plan = _plan_entries(graph, reference, candidate, report)
    if plan is None or not plan.entries:
        return None if plan is None else report
    chunks = _plan_chunks(graph, feeds, plan.entries, max_memory, report)
    state = _State()
    total, done, captured = len(plan.entries), 0, None
    for number, chunk in enumerate(chunks, 1):
        step = f"layers: capturing chunk {number}/{len(chunks)} ({len(chunk)} tensors)"
        say(step, done, total)

        def judged(count, step=step):
            say(step.replace("capturing", "comparing"), done + count, total)

        # one chunk: its tensors stay until the first divergence is known, which keeps its
        # own and its inputs' (isolation and the diagnosis need them: no second capture)
        captured = _capture_chunk(graph, reference, candidate, feeds, tol, layer_rtol, chunk, plan, state,
                                  report, cache=len(chunks) == 1, judged=judged)
        done += len(chunk)
        if len(chunks) > 1:
            captured = None
            _release_memory()
    if plan.link[1] == "mnn":
        _drop_fused(graph, state, tol, layer_rtol, report)
    _apply_output_rule(graph, plan, state, failing_outputs or {})

    ordered = sorted(state.results.values(), key=lambda r: r.index)
    first = _first_divergence(graph, ordered)
    if first and captured is not None:
        _keep_divergence_values(graph, reference, candidate, feeds, first, state.results, captured)
    captured = None
    isolated = _isolate_targets(graph, reference, candidate, feeds, tol, layer_rtol, ordered, first,
                                isolate, plan, state, report, say)
    report.layers = [_with_isolation(layer, isolated.get(layer.name)) for layer in ordered]
    if first:
        report.first_divergence = _describe_divergence(graph, reference, candidate, feeds, report, first)
        # the candidate's value served the histogram; the diagnosis captures the given file as
        # it captures the other conversions it compares with it (a few outputs requested)
        candidate.keep_values(feeds, {})
    if plan.link == ("torch", "onnxruntime"):
        report.notes.extend(_torch_notes(reference, plan))
    report.notes.extend(fp16_notes(report.layers))
    return report


def prepare_capture(graph: OnnxGraph, reference, candidate, feeds: TensorMap, max_memory: int | None) -> None:
    """Tell ``candidate`` (MNN) which tensors ``compare_layers`` will capture first, so its
    child loads that capture module while the parent still compares the outputs."""
    plan = _plan_entries(graph, reference, candidate, LayerReport())
    if plan is None or not plan.entries:
        return
    chunks = _plan_chunks(graph, feeds, plan.entries, max_memory, LayerReport())
    names = list(dict.fromkeys(n for e in chunks[0] for n in e.candidate_names))
    candidate.prepare_capture(names, cache=len(chunks) == 1)


def _plan_entries(graph, reference, candidate, report) -> _Plan | None:
    link = (reference.framework, candidate.framework)
    if link == ("onnxruntime", "mnn"):
        by_base, op_types = mnn_candidates(candidate.graph())
        entries = []
        for v in graph.values:
            names = by_base.get(v.name)
            if names:
                entries.append(_Entry(v, v.name, names))
            elif op_types.get(v.name) == "Const":
                report.unpaired.append(Unpaired(v.name, "folded into a constant by the converter"))
            else:
                report.unpaired.append(Unpaired(v.name, "no MNN tensor of this name: fused into a "
                                                        "neighbouring op or renamed by the converter"))
        return _Plan(link, entries, op_types=op_types)
    if link == ("torch", "onnxruntime"):
        modules = reference.module_names()
        if modules is None:
            report.notes.append("per-layer capture in torch needs an eager nn.Module (--torch file.py:factory); "
                                ".pt2 and TorchScript graphs have no module calls to hook")
            return _Plan(link, [])
        mapping = module_values(graph, modules)
        # graph outputs pair with what the model returns (flattened as in the outputs table),
        # named after the module whose scope computes them in ONNX
        returned = pair_outputs([s.name for s in reference.output_specs], graph.outputs).pairs
        final = {p.candidate_name: OUTPUT_PREFIX + p.reference_name for p in returned}
        entries = [
            _Entry(v, final.get(v.name) or mapping[v.name], [v.name], mapping.get(v.name))
            for v in graph.values if v.name in mapping or v.name in final
        ]
        with_nodes = {module_of_node(v.node_name, set(modules)) for v in graph.values} - {""}
        report.notes.append(f"{len(entries)} ONNX values map to torch modules through the exporter's scopes")
        return _Plan(link, entries, mapping=mapping, modules_with_nodes=with_nodes)
    return None


def _plan_chunks(graph, feeds, entries, max_memory, report) -> list[list[_Entry]]:
    """Entries in capture chunks whose tensors, both sides, fit a quarter of ``max_memory``
    (the rest is for the frameworks at work)."""
    sizes = graph.value_bytes(feeds)
    known = [s for s in sizes.values() if s]
    fallback = max(known) if known else 1 << 20
    budget = max_memory if max_memory is not None else default_max_memory()
    chunks, current, used = [], [], 0
    for entry in entries:
        cost = sizes.get(entry.value.name, fallback) * (1 + len(entry.candidate_names))
        if current and used + cost > budget // 4:
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += cost
    if current:
        chunks.append(current)
    report.chunks = len(chunks)
    if len(chunks) > 1:
        report.notes.append(f"captured in {len(chunks)} chunks to hold at most {budget / 4 / 2**20:.0f} MiB "
                            f"of tensors at once, within --max-memory {budget / 2**20:.0f} MiB")
    return chunks


def _capture_chunk(graph, reference, candidate, feeds, tol, layer_rtol, chunk, plan, state, report, *, cache,
                   judged=lambda count: None):
    """Capture one chunk on both sides, compare each entry, keep figures and small samples."""
    ref_names = list(dict.fromkeys(e.reference_name for e in chunk))
    cand_names = list(dict.fromkeys(n for e in chunk for n in e.candidate_names))
    pending = _begin_capture(candidate, feeds, cand_names, cache)  # MNN's child works meanwhile
    try:
        ref_run = reference.capture(feeds, ref_names, cache=cache)
    except Exception:
        if pending is not None and not isinstance(pending, BackendError):
            try:  # the child answers in order: collect its reply before anything else is asked
                candidate.finish_capture(pending)
            except Exception:
                pass
        raise
    cand_arrays, cand_errors = _finish_capture(candidate, pending, feeds, cand_names, cache)
    skipped = dict(n.split(": ", 1) for n in ref_run.notes if ": " in n)
    for count, entry in enumerate(chunk):
        judged(count)
        v = entry.value
        ref = ref_run.outputs.get(entry.reference_name)
        if ref is None:
            reason = skipped.get(entry.reference_name, "the reference returned no tensor")
            if "did not run" in reason:
                reason += "; the ONNX graph computes it (control flow frozen at export?)"
            report.unpaired.append(Unpaired(v.name, f"module {entry.reference_name!r}: {reason}"))
            continue
        ref = np.asarray(ref)
        state.samples[v.name] = _sample(ref)
        cands = {n: np.asarray(cand_arrays[n]) for n in entry.candidate_names if n in cand_arrays}
        if not cands:
            errors = [cand_errors[n] for n in entry.candidate_names if n in cand_errors]
            report.unpaired.append(Unpaired(v.name, errors[0] if errors else "the candidate returned no tensor"))
            continue
        _judge_entry(graph, entry, ref, cands, tol, layer_rtol, plan, state, report)
    return ref_run.outputs, cand_arrays


def _keep_divergence_values(graph, reference, candidate, feeds, first, results, captured) -> None:
    """Hand the backends the captured tensors the first divergence's isolation, histogram and
    diagnosis ask for again: its inputs' and its own reference values, its candidate value
    (for the histogram alone)."""
    layer, frontier = first
    ref_arrays, cand_arrays = captured
    inputs = set(graph.inputs)
    ref_names = [results[f].reference_name for f in frontier if f not in inputs and f in results]
    ref_names.append(layer.reference_name)
    reference.keep_values(feeds, {n: ref_arrays[n] for n in ref_names if n in ref_arrays})
    if layer.candidate_name in cand_arrays:
        candidate.keep_values(feeds, {layer.candidate_name: cand_arrays[layer.candidate_name]})


def _candidate_op(plan: _Plan, name: str, value: Value) -> str | None:
    return plan.op_types.get(name) if plan.link[1] == "mnn" else value.op_type


def _judge_entry(graph, entry, ref, cands, tol, layer_rtol, plan, state, report) -> None:
    v = entry.value
    pair = best_pair(ref, cands, tol, layer_rtol)
    if pair is None:
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in cands.items())
        if v.name in set(graph.outputs) and v.name in cands:
            # a graph output must match: a different size there is a divergence, not a
            # pairing problem (e.g. a pooling or reduction converted to another shape)
            cand = cands[v.name]
            state.results[v.name] = LayerResult(
                name=v.name, reference_name=entry.reference_name, candidate_name=v.name,
                op_type=v.op_type, candidate_op_type=_candidate_op(plan, v.name, v),
                module=entry.module or None, passed=False, max_abs_diff=None, max_rel_diff=None,
                cosine=None, mismatch_fraction=1.0, scaled_error=None, reference_absmax=None,
                reference_shape=tuple(ref.shape), candidate_shape=tuple(cand.shape),
                alignment=(f"shape differs: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}",),
                status="fail", index=v.index)
            state.chosen[v.name] = _Pair(v.name, None, (), None, False, tuple(cand.shape))
            return
        report.unpaired.append(Unpaired(v.name, f"element count differs: reference {tuple(ref.shape)}, "
                                                f"candidate {shapes}"))
        return
    steps = pair.steps
    if pair.candidate_name != v.name and plan.link[1] == "mnn":
        steps = (f"mnn tensor {pair.candidate_name!r}",) + steps
    d = pair.diff
    state.results[v.name] = LayerResult(
        name=v.name, reference_name=entry.reference_name, candidate_name=pair.candidate_name,
        op_type=v.op_type, candidate_op_type=_candidate_op(plan, pair.candidate_name, v),
        module=entry.module or None, passed=pair.passed, max_abs_diff=d.max_abs_diff,
        max_rel_diff=d.max_rel_diff, cosine=d.cosine, mismatch_fraction=d.mismatch_fraction,
        scaled_error=scaled_error(d), reference_absmax=d.reference_absmax,
        reference_shape=tuple(ref.shape), candidate_shape=pair.candidate_shape,
        alignment=steps, status="pass" if pair.passed else "fail", index=v.index,
        masked=d.masked_matched, **fp16_fit(ref),
    )
    state.chosen[v.name] = _Pair(pair.candidate_name, None, pair.steps, d, pair.passed, pair.candidate_shape)
    if not pair.passed:
        state.failing_samples[v.name] = _sample(pair.aligned)


def _drop_fused(graph, state, tol, layer_rtol, report) -> None:
    """A failing MNN tensor whose values are those of a value just downstream holds a fused
    result under an earlier name: not a divergence, not a pair."""
    for name, sample in state.failing_samples.items():
        for later in graph.downstream(name):
            if later in state.samples and _sample_matches(state.samples[later], sample, tol, layer_rtol):
                layer = state.results.pop(name)
                state.chosen.pop(name, None)
                report.unpaired.append(Unpaired(
                    name, f"MNN tensor {layer.candidate_name!r} holds the values of ONNX {later!r} "
                          f"(a later op fused into it)"))
                break


def _apply_output_rule(graph, plan, state, failing_outputs) -> None:
    """A graph output that fails the outputs' element rule fails as a layer too (rule
    "element"), paired or not, so the search for the first divergence cannot miss it."""
    for name, output in failing_outputs.items():
        value = graph.producer.get(name)
        if value is None:
            continue
        layer = state.results.get(name)
        if layer is not None:
            if layer.passed:
                state.results[name] = dataclasses.replace(
                    layer, passed=False, status="fail", rule="element",
                    alignment=layer.alignment + ("within the layer rule, but fails the outputs' element rule",))
            continue
        cand_name = output.candidate_name if plan.link[1] == "mnn" else name
        ref_name = name if plan.link[0] == "onnxruntime" else OUTPUT_PREFIX + str(output.reference_name)
        if not cand_name:
            continue
        state.results[name] = LayerResult(
            name=name, reference_name=ref_name, candidate_name=cand_name, op_type=value.op_type,
            candidate_op_type=_candidate_op(plan, cand_name, value), module=None, passed=False,
            max_abs_diff=output.max_abs_diff, max_rel_diff=output.max_rel_diff, cosine=output.cosine,
            mismatch_fraction=output.mismatch_fraction, scaled_error=output_scaled_error(output),
            reference_absmax=output.reference_absmax, reference_shape=tuple(output.reference_shape or ()),
            candidate_shape=tuple(output.candidate_shape or ()),
            alignment=("graph output without a paired layer: figures from the output comparison",)
            + tuple(output.alignment) + ((output.error,) if output.error else ()),
            status="fail", index=value.index, rule="element")
        state.chosen[name] = _Pair(cand_name, None, (), None, False, tuple(output.candidate_shape or ()))


def _first_divergence(graph, ordered) -> tuple[LayerResult, list[str]] | None:
    """The earliest failing layer whose nearest paired inputs all pass."""
    paired = {r.name for r in ordered}
    passing = {r.name for r in ordered if r.passed}
    inputs = set(graph.inputs)
    for layer in ordered:
        if layer.passed:
            continue
        frontier = graph.frontier(layer.name, paired)
        if all(f in passing or f in inputs for f in frontier):
            return layer, frontier
    return None


def _isolate_targets(graph, reference, candidate, feeds, tol, layer_rtol, ordered, first, isolate,
                     plan, state, report, say) -> dict:
    """Re-run the chosen layers alone on the reference's inputs: name -> (local max abs diff,
    local scaled error, whether it passes alone). ``first``: the first divergence; ``all``:
    every failing layer; ``every``: every paired layer, passing or not (the Python API's
    check that isolation itself is right: test_isolation_property.py)."""
    paired = {r.name for r in ordered}
    targets = [first] if first else []
    if isolate in ("all", "every"):
        targets = [(x, graph.frontier(x.name, paired)) for x in ordered if isolate == "every" or not x.passed]
    elif isolate == "none":
        targets = []
    isolated = {}
    for layer, frontier in targets:
        say(f"isolating {layer.name}")
        try:
            isolated[layer.name] = _isolate(plan.link, graph, reference, candidate, feeds, layer, frontier,
                                            state.chosen, state.results, tol, layer_rtol)
        except (BackendError, ValueError, KeyError) as exc:
            report.notes.append(f"isolation of {layer.name!r} failed: {_first_line(exc)}")
            if isinstance(exc, BackendCrash):
                break
    return isolated


def _with_isolation(layer: LayerResult, isolated: tuple | None) -> LayerResult:
    if isolated is None:
        return layer
    local, local_scaled, local_passed = isolated
    status = layer.status if layer.passed else "carried" if local_passed else "introduced"
    return dataclasses.replace(layer, local_max_abs_diff=local, local_scaled_error=local_scaled, status=status)


def ops_label(ops: Sequence[str], limit: int = 6) -> str:
    """``Conv+Relu``; a long stretch as ``MatMul+Add+Softmax+...+Add (23 ops)``."""
    if len(ops) <= limit:
        return "+".join(ops)
    return "+".join(ops[:3]) + "+...+" + "+".join(ops[-2:]) + f" ({len(ops)} ops)"


def _describe_divergence(graph, reference, candidate, feeds, report, first) -> FirstDivergence:
    layer = next(x for x in report.layers if x.name == first[0].name)
    frontier = first[1]
    span = graph.span(layer.name, set(frontier))
    ops = [graph.producer[n].op_type for n in span]
    introduced = None if layer.status == "fail" else layer.status == "introduced"
    where = f"{layer.name} ({ops_label(ops)}" + (f", module {layer.module}" if layer.module else "") + ")"
    if layer.rule == "element":
        start = ", ".join(frontier[-3:]) or "the model's inputs"
        head = (f"the numbers first go wrong between the last matching tensors ({start}) and output "
                f"{layer.name}: a stretch of {len(ops)} ONNX op{'s' * (len(ops) != 1)} with no failing paired tensor "
                f"({ops_label(ops)})")
        tail = {None: "", True: f"; fed the reference's values there it still differs (local max_abs_diff "
                                 f"{fmt(layer.local_max_abs_diff)}): the error is introduced in that stretch",
                False: f"; fed the reference's values there it matches (local max_abs_diff "
                       f"{fmt(layer.local_max_abs_diff)}): the error is carried in, below the layer rule"}
        summary = head + tail[introduced]
    elif introduced is None:
        summary = f"first divergence at {where}: its paired inputs match, its output does not"
    elif introduced:
        summary = (f"first divergence at {where}: fed the reference's inputs it still differs "
                   f"(local max_abs_diff {fmt(layer.local_max_abs_diff)}): the error is introduced here")
    else:
        summary = (f"first out-of-tolerance tensor {where} is right when fed the reference's inputs "
                   f"(local max_abs_diff {fmt(layer.local_max_abs_diff)}): the error is carried from upstream")
    histogram = None
    try:
        ref_value = reference.capture(feeds, [layer.reference_name], cache=False).outputs[layer.reference_name]
        cand_value = candidate.capture(feeds, [layer.candidate_name], cache=False).outputs[layer.candidate_name]
        histogram = diff_histogram(np.asarray(ref_value), np.asarray(cand_value))
    except (BackendError, KeyError, ValueError) as exc:
        report.notes.append(f"no histogram at the first divergence: {_first_line(exc)}")
    return FirstDivergence(
        name=layer.name, op_type=ops_label(ops), candidate_op_type=layer.candidate_op_type,
        nodes=tuple(graph.producer[n].label for n in span), module=layer.module, inputs=tuple(frontier),
        max_abs_diff=layer.max_abs_diff, scaled_error=layer.scaled_error,
        local_max_abs_diff=layer.local_max_abs_diff, local_scaled_error=layer.local_scaled_error,
        introduced_here=introduced, summary=summary, histogram=histogram, rule=layer.rule,
    )


FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -14  # float16's smallest normal: below it values lose precision, then flush
_SUBNORMAL_NOTE = 0.1  # a layer with more than this share of such values is named


def fp16_fit(reference: np.ndarray) -> dict:
    """How a float reference tensor fits float16, for running with precision low on ARM:
    ``fp16_range`` = max|r| / 65504 over its regular values (mask values, |v| >= 1e38 or inf,
    are masks in float16 too), ``fp16_subnormal`` = share of its nonzero values below
    float16's smallest normal. Empty for other dtypes."""
    if reference.dtype.kind != "f" or not reference.size:
        return {}
    with np.errstate(all="ignore"):
        a = np.abs(reference.reshape(-1)).astype(np.float32, copy=False)
        regular = a[a < 1e38]  # NaN compares False and drops out too
        if not regular.size:
            return {}
        nonzero = int(np.count_nonzero(regular))
        tiny = int(np.count_nonzero((regular > 0) & (regular < FP16_TINY)))
    return {"fp16_range": float(regular.max()) / FP16_MAX,
            "fp16_subnormal": tiny / nonzero if nonzero else 0.0}


def fp16_notes(layers) -> list[str]:
    """Which layers' reference values do not fit float16: seen on the workstation before the
    model ships with precision low."""
    notes = []
    over = [x for x in layers if (x.fp16_range or 0) > 1]
    if over:
        worst = max(over, key=lambda x: x.fp16_range)
        notes.append(
            f"float16 headroom: {len(over)} layer{'s hold' if len(over) != 1 else ' holds'} reference values beyond "
            f"float16's 65504 and will overflow to inf with --mnn-precision low on ARM (largest: "
            f"{worst.name} ({worst.op_type}), max|r| {worst.fp16_range * FP16_MAX:.3g} = "
            f"{worst.fp16_range:.3g}x float16's range)")
    tiny = [x for x in layers if (x.fp16_subnormal or 0) > _SUBNORMAL_NOTE]
    if tiny:
        worst = max(tiny, key=lambda x: x.fp16_subnormal)
        notes.append(
            f"float16 headroom: {len(tiny)} layer{'s hold' if len(tiny) != 1 else ' holds'} more than "
            f"{_SUBNORMAL_NOTE:.0%} of their nonzero values below float16's smallest normal (6.1e-05), "
            f"which lose precision or flush to zero in float16 (most: {worst.name} ({worst.op_type}), "
            f"{worst.fp16_subnormal:.0%})")
    return notes


def _torch_notes(reference, plan: _Plan) -> list[str]:
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


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def diff_histogram(reference: np.ndarray, candidate: np.ndarray, low: int = -12, high: int = 4) -> dict | None:
    """Counts of log10 |c - r| in decades [low, high); exact zeros and non-finite counted apart."""
    if reference.size != candidate.size:
        return None
    with np.errstate(all="ignore"):
        d = np.abs(candidate.reshape(-1).astype(np.float64) - reference.reshape(-1).astype(np.float64))
        finite = np.isfinite(d)
        zeros = int(np.count_nonzero(d[finite] == 0))
        positive = d[finite & (d > 0)]
        logs = np.clip(np.floor(np.log10(positive)), low, high - 1) if positive.size else np.array([])
    counts = (np.bincount((logs - low).astype(np.int64), minlength=high - low) if positive.size
              else np.zeros(high - low, np.int64))
    return {"edges": list(range(low, high + 1)), "counts": [int(c) for c in counts], "zeros": zeros,
            "non_finite": int(np.count_nonzero(~finite))}


def _release_memory() -> None:
    """Give freed heap pages back to the OS between chunks (glibc keeps them otherwise), so the
    process's resident size follows what is held, not what was ever held."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _begin_capture(candidate, feeds, names, cache):
    """The candidate's capture, started; a refusal to start is kept for ``_finish_capture``."""
    if not names:
        return None
    try:
        return candidate.begin_capture(feeds, names, cache=cache)
    except BackendCrash:
        raise
    except BackendError as exc:
        return exc


def _finish_capture(candidate, pending, feeds, names, cache) -> tuple[dict, dict]:
    """(arrays, reasons for the names the candidate could not return) of a started capture;
    a refused request is split at once to find the names it cannot return (asking for all of
    it again would repeat the refusal)."""
    if pending is None:
        return {}, {}
    try:
        if isinstance(pending, BackendError):
            raise pending
        result = candidate.finish_capture(pending)
    except BackendCrash:
        raise
    except BackendError as exc:
        if len(names) == 1:
            return {}, {names[0]: f"{candidate.framework} could not return this tensor: {_first_line(exc)}"}
        half = len(names) // 2
        a, ea = _capture_robust(candidate, feeds, names[:half], False)
        b, eb = _capture_robust(candidate, feeds, names[half:], False)
        return {**a, **b}, {**ea, **eb}
    # tensors the framework could not return come back named, the others with them
    return dict(result.outputs), {name: f"{candidate.framework} could not return this tensor: {why}"
                                  for name, why in result.failed.items()}


def _capture_robust(candidate, feeds, names, cache) -> tuple[dict, dict]:
    """Capture ``names``; when the framework refuses the request, split it to find the names
    it cannot return (each then gets its own reason) instead of losing the whole chunk."""
    return _finish_capture(candidate, _begin_capture(candidate, feeds, names, cache), feeds, names, cache)


def cut_feeds(graph, feeds, frontier, chosen, values) -> dict:
    """The tensors to feed an MNN module cut at ``frontier``: graph inputs as fed (ONNX
    int64 as int32), paired tensors under their MNN names in the shape MNN holds them."""
    inputs = set(graph.inputs)
    tensors = {}
    for f in frontier:
        if f in inputs:
            array = feeds[f]
            tensors[f] = array.astype(np.int32) if array.dtype == np.int64 else array
        else:
            pick = chosen[f]
            tensors[pick.candidate_name] = np.ascontiguousarray(values[f].reshape(pick.candidate_shape))
    return tensors


def _isolate(link, graph, reference, candidate, feeds, layer, frontier, chosen, layers, tol, layer_rtol):
    """Feed the reference's values of ``frontier`` into the candidate cut there; judge the
    layer's own error by its rule (the element rule for a graph output that failed it)."""
    inputs = set(graph.inputs)
    needed = [f for f in frontier if f not in inputs]
    if link == ("onnxruntime", "mnn"):
        ref_values = reference.capture(feeds, needed + [layer.reference_name], cache=False).outputs
        tensors = cut_feeds(graph, feeds, frontier, chosen, ref_values)
        out = candidate.run_cut(tensors, [layer.candidate_name], inputs=feeds).outputs[layer.candidate_name]
        expected = ref_values[layer.reference_name]
    else:  # torch -> onnxruntime: torch's module outputs feed the ONNX subgraph
        modules = {f: layers[f].reference_name for f in needed}
        wanted = list(dict.fromkeys(list(modules.values()) + [layer.reference_name]))
        ref_run = reference.capture(feeds, wanted, cache=False).outputs
        tensors = {f: (feeds[f] if f in inputs else ref_run[modules[f]]) for f in frontier}
        out = candidate.run_cut(tensors, [layer.name]).outputs[layer.name]
        expected = ref_run[layer.reference_name]
    expected = np.asarray(expected)
    out = np.asarray(out)
    if out.size != expected.size:
        raise ValueError(f"the cut returned {out.shape}, expected {expected.shape}")
    diff = TensorDiff.from_arrays(layer.name, expected, out.reshape(expected.shape), tol)
    passed = diff.passed if layer.rule == "element" else layer_passes(diff, tol, layer_rtol)
    return diff.max_abs_diff, scaled_error(diff), passed
