"""Per-layer capture, pairing across frameworks, first divergence and isolation.

The ONNX graph is the spine: its values, in topological order, are the layers. On the
ONNX Runtime -> MNN link a value pairs with the MNN tensor of the same name, or with one the
converter derived from it (``name___tr4...`` is the same values in another layout,
``name__matmul_converted`` and ``name_raster_N`` are rewrites); on the torch -> ONNX Runtime
link it pairs with the output of the torch module whose scope produced it (the exporter names
nodes ``/blocks.0/attn/qkv/MatMul``). Every pair is checked (element count, layout, values)
before it is trusted; values without a trustworthy partner are listed as unpaired, with the
reason, and never count as passing.

Judging a layer (README "Per-layer"): a layer passes when
``max_abs_diff <= atol + layer_rtol * max|reference|``. Scaling by the tensor's own magnitude
keeps small legitimate differences (Winograd, tanh GELU) that grow with activations from
flagging a layer. The first divergence is the earliest failing layer whose nearest paired
inputs all pass; isolation then feeds the reference's values of those inputs into the
candidate cut at them and measures the layer's own (local) error: large -> introduced here,
small -> carried from upstream.

Memory: layers are captured in chunks whose tensors fit ``max_memory`` (both sides held at
once), compared as they arrive and dropped; only small samples are kept for later checks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from parity.errors import BackendCrash, BackendError
from parity.metrics import TensorDiff, Tolerance, fmt
from parity.report import FirstDivergence, LayerResult, Unpaired
from parity.specs import TensorMap

OUTPUT_PREFIX = "::output::"  # a reference name meaning "the model's returned output <name>"
_SAMPLE = 4096
_DOWNSTREAM_HOPS = 3


def default_layer_rtol(tol: Tolerance, layer_rtol: float | None = None) -> float:
    """``layer_rtol`` when given, else ten times the element rule's rtol: 1e-2 with the
    defaults, tighter when outputs are."""
    return 10 * tol.rtol if layer_rtol is None else layer_rtol


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


def extract_subgraph(model, inputs: Sequence[str], outputs: Sequence[str]):
    """The ONNX subgraph from ``inputs`` to ``outputs`` (onnx.utils.Extractor needs value infos
    for the cut points; shape inference provides them, empty ones fill the gaps)."""
    import onnx
    import onnx.utils

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
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
def layer_passes(diff: TensorDiff, tol: Tolerance, layer_rtol: float) -> bool:
    if diff.kind in ("integer", "bool"):
        return diff.passed
    if diff.kind == "empty":
        return True
    if (diff.nan_reference, diff.inf_reference) != (diff.nan_candidate, diff.inf_candidate):
        return False
    if diff.max_abs_diff is None:
        return diff.passed
    absmax = diff.reference_absmax or 0.0
    return diff.max_abs_diff <= tol.atol_for(absmax) + layer_rtol * absmax


def scaled_error(diff: TensorDiff) -> float | None:
    """max|c - r| / max|r|: the error on the tensor's own scale."""
    if diff.max_abs_diff is None:
        return None
    return diff.max_abs_diff / max(diff.reference_absmax or 0.0, 1e-12)


def _layouts(reference: np.ndarray, candidate: np.ndarray):
    """Ways to read ``candidate`` as ``reference``'s shape, most plausible first."""
    if candidate.size != reference.size:
        return
    if candidate.shape == reference.shape:
        yield candidate, ()
    else:
        yield candidate.reshape(reference.shape), (f"reshape {tuple(candidate.shape)} -> {tuple(reference.shape)}",)
    if candidate.ndim == 4 and reference.ndim == 4:
        n, c, h, w = reference.shape
        if candidate.shape == (n, h, w, c) and (h, w, c) != (c, h, w):
            yield np.transpose(candidate, (0, 3, 1, 2)), ("nhwc -> nchw",)


@dataclass
class _Pair:
    candidate_name: str
    aligned: np.ndarray
    steps: tuple
    diff: TensorDiff
    passed: bool
    candidate_shape: tuple


def best_pair(reference: np.ndarray, candidates: dict[str, np.ndarray], tol: Tolerance,
              layer_rtol: float) -> _Pair | None:
    """The candidate (and layout) that matches best; a passing one in preference order wins."""
    best = None
    for name, array in candidates.items():
        for aligned, steps in _layouts(reference, array):
            if aligned.dtype.kind != reference.dtype.kind and {aligned.dtype.kind, reference.dtype.kind} <= {"i", "u"}:
                aligned = aligned.astype(reference.dtype)
            diff = TensorDiff.from_arrays(name, reference, aligned, tol)
            passed = layer_passes(diff, tol, layer_rtol)
            pair = _Pair(name, aligned, steps, diff, passed, tuple(array.shape))
            if passed:
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
    r, c = reference[1], candidate[1]
    if not (np.isfinite(r).all() and np.isfinite(c).all()):
        return False
    absmax = float(np.abs(r).max())
    return float(np.abs(r - c).max()) <= tol.atol_for(absmax) + layer_rtol * absmax


# -- the comparison of one link ---------------------------------------------------------------
@dataclass
class _Entry:
    value: Value
    reference_name: str
    candidate_names: list
    module: str | None = None


Progress = Callable[[str], None]


def compare_layers(
    graph: OnnxGraph,
    reference,
    candidate,
    feeds: TensorMap,
    tol: Tolerance,
    *,
    layer_rtol: float | None = None,
    max_memory: int | None = None,
    isolate: str = "first",
    progress: Progress | None = None,
) -> LayerReport | None:
    """Layers of one link, or None when the link has no per-layer view."""
    say = progress or (lambda message: None)
    layer_rtol = default_layer_rtol(tol, layer_rtol)
    link = (reference.framework, candidate.framework)
    report = LayerReport()
    op_types: dict[str, str] = {}
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
                report.unpaired.append(Unpaired(v.name, "no MNN tensor of this name: fused into a neighbouring op or renamed by the converter"))
    elif link == ("torch", "onnxruntime"):
        modules = reference.module_names()
        if modules is None:
            report.notes.append("per-layer capture in torch needs an eager nn.Module (--torch file.py:factory); "
                                ".pt2 and TorchScript graphs have no module calls to hook")
            return report
        mapping = module_values(graph, modules)
        # graph outputs pair with what the model returns (flattened as in the outputs table),
        # named after the module whose scope computes them in ONNX
        from parity.align import pair_outputs

        returned = pair_outputs([s.name for s in reference.output_specs], graph.outputs).pairs
        final = {p.candidate_name: OUTPUT_PREFIX + p.reference_name for p in returned}
        entries = [
            _Entry(v, final.get(v.name) or mapping[v.name], [v.name], mapping.get(v.name))
            for v in graph.values if v.name in mapping or v.name in final
        ]
        unmapped_with_nodes = {module_of_node(v.node_name, set(modules)) for v in graph.values} - {""}
        report.notes.append(f"{len(entries)} ONNX values map to torch modules through the exporter's scopes")
    else:
        return None

    sizes = graph.value_bytes(feeds)
    known = [s for s in sizes.values() if s]
    fallback = max(known) if known else 1 << 20
    budget = max_memory if max_memory is not None else default_max_memory()
    chunks, current, used = [], [], 0
    for entry in entries:
        cost = sizes.get(entry.value.name, fallback) * (1 + len(entry.candidate_names))
        if current and used + cost > budget // 4:  # a quarter for held tensors, the rest for the frameworks at work
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

    graph_outputs = set(graph.outputs)
    samples: dict[str, tuple] = {}
    failing_samples: dict[str, tuple] = {}
    results: dict[str, LayerResult] = {}
    chosen: dict[str, _Pair] = {}
    single = len(chunks) == 1
    for number, chunk in enumerate(chunks, 1):
        say(f"capturing layers: chunk {number}/{len(chunks)} ({len(chunk)} tensors)")
        ref_names = list(dict.fromkeys(e.reference_name for e in chunk))
        ref_run = reference.capture(feeds, ref_names, cache=single)
        skipped = dict(n.split(": ", 1) for n in ref_run.notes if ": " in n)
        cand_names = list(dict.fromkeys(n for e in chunk for n in e.candidate_names))
        cand_arrays, cand_errors = _capture_robust(candidate, feeds, cand_names, single)
        for entry in chunk:
            v = entry.value
            ref = ref_run.outputs.get(entry.reference_name)
            if ref is None:
                reason = skipped.get(entry.reference_name, "the reference returned no tensor")
                if "did not run" in reason:
                    reason += "; the ONNX graph computes it (control flow frozen at export?)"
                report.unpaired.append(Unpaired(v.name, f"module {entry.reference_name!r}: {reason}"))
                continue
            ref = np.asarray(ref)
            samples[v.name] = _sample(ref)
            cands = {n: np.asarray(cand_arrays[n]) for n in entry.candidate_names if n in cand_arrays}
            if not cands:
                errors = [cand_errors[n] for n in entry.candidate_names if n in cand_errors]
                report.unpaired.append(Unpaired(v.name, errors[0] if errors else "the candidate returned no tensor"))
                continue
            pair = best_pair(ref, cands, tol, layer_rtol)
            if pair is None:
                shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in cands.items())
                if v.name in graph_outputs and v.name in cands:
                    # a graph output must match: a different size there is a divergence, not a
                    # pairing problem (e.g. a pooling or reduction converted to another shape)
                    cand = cands[v.name]
                    results[v.name] = LayerResult(
                        name=v.name, reference_name=entry.reference_name, candidate_name=v.name,
                        op_type=v.op_type, candidate_op_type=op_types.get(v.name) if link[1] == "mnn" else v.op_type,
                        module=entry.module or None, passed=False, max_abs_diff=None, max_rel_diff=None,
                        cosine=None, mismatch_fraction=1.0, scaled_error=None, reference_absmax=None,
                        reference_shape=tuple(ref.shape), candidate_shape=tuple(cand.shape),
                        alignment=(f"shape differs: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}",),
                        status="fail", index=v.index)
                    chosen[v.name] = _Pair(v.name, None, (), None, False, tuple(cand.shape))
                    continue
                report.unpaired.append(Unpaired(v.name, f"element count differs: reference {tuple(ref.shape)}, candidate {shapes}"))
                continue
            steps = pair.steps
            if pair.candidate_name != v.name and link[1] == "mnn":
                steps = (f"mnn tensor {pair.candidate_name!r}",) + steps
            d = pair.diff
            results[v.name] = LayerResult(
                name=v.name, reference_name=entry.reference_name, candidate_name=pair.candidate_name,
                op_type=v.op_type, candidate_op_type=op_types.get(pair.candidate_name) if link[1] == "mnn" else v.op_type,
                module=entry.module or None, passed=pair.passed, max_abs_diff=d.max_abs_diff,
                max_rel_diff=d.max_rel_diff, cosine=d.cosine, mismatch_fraction=d.mismatch_fraction,
                scaled_error=scaled_error(d), reference_absmax=d.reference_absmax,
                reference_shape=tuple(ref.shape), candidate_shape=pair.candidate_shape,
                alignment=steps, status="pass" if pair.passed else "fail", index=v.index,
            )
            chosen[v.name] = _Pair(pair.candidate_name, None, pair.steps, d, pair.passed, pair.candidate_shape)
            if not pair.passed:
                failing_samples[v.name] = _sample(pair.aligned)
        # drop every reference to this chunk's arrays before the next capture runs
        del ref_run, cand_arrays
        ref = cands = pair = None  # noqa: F841
        if not single:
            _release_memory()

    # A failing MNN tensor whose values are those of a value just downstream holds a fused
    # result under an earlier name: not a divergence, not a pair.
    if link[1] == "mnn":
        for name, sample in failing_samples.items():
            for later in graph.downstream(name):
                if later in samples and _sample_matches(samples[later], sample, tol, layer_rtol):
                    layer = results.pop(name)
                    report.unpaired.append(Unpaired(
                        name, f"MNN tensor {layer.candidate_name!r} holds the values of ONNX {later!r} "
                              f"(a later op fused into it)"))
                    break

    ordered = sorted(results.values(), key=lambda r: r.index)
    paired = {r.name for r in ordered}
    passing = {r.name for r in ordered if r.passed}
    inputs = set(graph.inputs)
    first = None
    for layer in ordered:
        if layer.passed:
            continue
        frontier = graph.frontier(layer.name, paired)
        if all(f in passing or f in inputs for f in frontier):
            first = (layer, frontier)
            break

    isolated: dict[str, tuple] = {}
    targets = [first] if first else []
    if isolate == "all":
        targets = [(l, graph.frontier(l.name, paired)) for l in ordered if not l.passed]
    elif isolate == "none":
        targets = []
    for layer, frontier in targets:
        say(f"isolating {layer.name}")
        try:
            isolated[layer.name] = _isolate(link, graph, reference, candidate, feeds, layer, frontier,
                                            chosen, results, tol, layer_rtol)
        except (BackendError, ValueError, KeyError) as exc:
            report.notes.append(f"isolation of {layer.name!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            if isinstance(exc, BackendCrash):
                break

    final = []
    for layer in ordered:
        if layer.name in isolated:
            local, local_scaled, local_passed = isolated[layer.name]
            status = "carried" if local_passed else "introduced"
            layer = _replace(layer, local_max_abs_diff=local, local_scaled_error=local_scaled, status=status)
        final.append(layer)
    report.layers = final

    if first:
        layer = next(l for l in final if l.name == first[0].name)
        introduced = None if layer.status == "fail" else layer.status == "introduced"
        span_ops = "+".join(graph.producer[n].op_type for n in graph.span(layer.name, set(first[1])))
        where = f"{layer.name} ({span_ops}" + (f", module {layer.module}" if layer.module else "") + ")"
        if introduced is None:
            summary = f"first divergence at {where}: its paired inputs match, its output does not"
        elif introduced:
            summary = (f"first divergence at {where}: fed the reference's inputs it still differs "
                       f"(local max_abs_diff {fmt(layer.local_max_abs_diff)}): the error is introduced here")
        else:
            summary = (f"first out-of-tolerance tensor {where} is right when fed the reference's inputs "
                       f"(local max_abs_diff {fmt(layer.local_max_abs_diff)}): the error is carried from upstream")
        span = graph.span(layer.name, set(first[1]))
        histogram = None
        try:
            ref_value = reference.capture(feeds, [layer.reference_name], cache=False).outputs[layer.reference_name]
            cand_value = candidate.capture(feeds, [layer.candidate_name], cache=False).outputs[layer.candidate_name]
            histogram = diff_histogram(np.asarray(ref_value), np.asarray(cand_value))
        except (BackendError, KeyError, ValueError) as exc:
            report.notes.append(f"no histogram at the first divergence: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        report.first_divergence = FirstDivergence(
            name=layer.name, op_type="+".join(graph.producer[n].op_type for n in span),
            candidate_op_type=layer.candidate_op_type,
            nodes=tuple(graph.producer[n].node_name for n in span),
            module=layer.module, inputs=tuple(first[1]), max_abs_diff=layer.max_abs_diff,
            scaled_error=layer.scaled_error, local_max_abs_diff=layer.local_max_abs_diff,
            local_scaled_error=layer.local_scaled_error, introduced_here=introduced, summary=summary,
            histogram=histogram,
        )
    if link == ("torch", "onnxruntime"):
        ran = getattr(reference, "last_calls", {})
        idle = sorted({m for m in mapping.values() if ran.get(m) == 0})
        if idle:
            report.notes.append(
                f"the ONNX graph computes modules that did not run in torch on these inputs: {idle[:10]} "
                f"(data-dependent control flow frozen at export?)")
        missing = sorted(m for m, count in ran.items() if count and m not in unmapped_with_nodes
                         and not any(m.startswith(o + ".") or o.startswith(m + ".") for o in unmapped_with_nodes))
        leaves = [m for m in missing if not any(x.startswith(m + ".") for x in ran)]
        if leaves:
            report.notes.append(f"torch modules that ran but have no ONNX nodes of their own (folded into "
                                f"neighbours at export, or not exported): {leaves[:10]}")
    return report


def diff_histogram(reference: np.ndarray, candidate: np.ndarray, low: int = -12, high: int = 4) -> dict | None:
    """Counts of log10 |c - r| in decades [low, high); exact zeros and non-finite counted apart."""
    if reference.size != candidate.size:
        return None
    d = np.abs(candidate.reshape(-1).astype(np.float64) - reference.reshape(-1).astype(np.float64))
    finite = np.isfinite(d)
    zeros = int(np.count_nonzero(d[finite] == 0))
    positive = d[finite & (d > 0)]
    logs = np.clip(np.floor(np.log10(positive)), low, high - 1) if positive.size else np.array([])
    counts = np.bincount((logs - low).astype(np.int64), minlength=high - low) if positive.size else np.zeros(high - low, np.int64)
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


def _replace(layer: LayerResult, **changes) -> LayerResult:
    import dataclasses

    return dataclasses.replace(layer, **changes)


def _capture_robust(candidate, feeds, names, cache) -> tuple[dict, dict]:
    """Capture ``names``; when the framework refuses the request, split it to find the names
    it cannot return (each then gets its own reason) instead of losing the whole chunk."""
    if not names:
        return {}, {}
    try:
        return dict(candidate.capture(feeds, names, cache=cache).outputs), {}
    except BackendCrash:
        raise
    except BackendError as exc:
        if len(names) == 1:
            return {}, {names[0]: f"{candidate.framework} could not return this tensor: {str(exc).splitlines()[0]}"}
    half = len(names) // 2
    a, ea = _capture_robust(candidate, feeds, names[:half], False)
    b, eb = _capture_robust(candidate, feeds, names[half:], False)
    return {**a, **b}, {**ea, **eb}


def _isolate(link, graph, reference, candidate, feeds, layer, frontier, chosen, layers, tol, layer_rtol):
    """Feed the reference's values of ``frontier`` into the candidate cut there."""
    inputs = set(graph.inputs)
    needed = [f for f in frontier if f not in inputs]
    if link == ("onnxruntime", "mnn"):
        ref_values = reference.capture(feeds, needed + [layer.reference_name], cache=False).outputs
        tensors = {}
        for f in frontier:
            if f in inputs:
                array = feeds[f]
                if array.dtype == np.int64:
                    array = array.astype(np.int32)
                tensors[f] = array
            else:
                pick = chosen[f]
                tensors[pick.candidate_name] = np.ascontiguousarray(ref_values[f].reshape(pick.candidate_shape))
        out = candidate.run_cut(tensors, [layer.candidate_name]).outputs[layer.candidate_name]
        expected = ref_values[layer.reference_name]
    else:  # torch -> onnxruntime: torch's module outputs feed the ONNX subgraph
        modules = {f: layers[f].reference_name for f in needed}
        wanted = list(dict.fromkeys([m for m in modules.values()] + [layer.reference_name]))
        ref_run = reference.capture(feeds, wanted, cache=False).outputs
        tensors = {f: (feeds[f] if f in inputs else ref_run[modules[f]]) for f in frontier}
        out = candidate.run_cut(tensors, [layer.name]).outputs[layer.name]
        expected = ref_run[layer.reference_name]
    expected = np.asarray(expected)
    out = np.asarray(out)
    if out.size != expected.size:
        raise ValueError(f"the cut returned {out.shape}, expected {expected.shape}")
    diff = TensorDiff.from_arrays(layer.name, expected, out.reshape(expected.shape), tol)
    return diff.max_abs_diff, scaled_error(diff), layer_passes(diff, tol, layer_rtol)
