"""Is a difference amplified rounding? The numerics test of a failing ONNX Runtime -> MNN link.

Some models amplify float32 rounding: a deep chain whose layers have a gain above one (a tanh
MLP with large weights, a recurrent cell unrolled, a residual stack without normalisation)
turns the last-bit differences of two correct float32 implementations into differences of
order one at the output. Neither framework is wrong; blaming the converter or a kernel would
send the user to a bug report for nothing. The test has three parts, each measured on the same
inputs on both sides of every comparison:

1. The error grows along the path from the inputs to the target (the first divergence, or the
   worst output): small at its start, out of tolerance at its end.
2. Every sampled layer along that path is right on its own inputs: MNN's output against the
   layer evaluated in float64 on MNN's own input values (the same inputs), and likewise for ONNX
   Runtime. Each local error must be within float32 rounding: at most ``LOCAL_FACTOR`` times
   ONNX Runtime's on the same layer, or ``ROUNDING`` on the tensor's scale. A weight off by
   0.5% gives a local error of 5e-3 at its layer and fails here, so the test never swallows
   a real conversion bug.
3. A float64 evaluation of the whole ONNX graph (onnx.reference on a float64 copy) is no
   farther from MNN than ``DISTANCE_FACTOR`` times from the farthest of three correct float32
   evaluations (ONNX Runtime; onnx.reference in float32, on the inputs and on the inputs
   nudged by one ulp): MNN is no worse an approximation of the model's mathematics.

All three hold: the verdict is ``numerics``. 1 and 2 hold but no float64 figure can be had (an
op onnx.reference lacks, a model too large): ``undetermined``, since no party can be blamed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# float32 rounding of one layer on its tensor's scale (max|diff| / max|reference|): a few ulps
# (1.2e-7 each) accumulated over a dot product or a short fused chain
ROUNDING = 2e-5
LOCAL_FACTOR = 4.0  # MNN's local error may be this many times ONNX Runtime's on the same layer
# MNN's distance from float64 (relative L2) may be this many times the largest of three correct
# float32 evaluations' (ONNX Runtime, onnx.reference in float32, and that on inputs nudged by one
# ulp). In a chaotic model which implementation lands closer is luck (one draw against another
# differed 23x at a crossing, measured on an unrolled recurrent cell), hence three draws; a real
# error at an unsampled layer puts MNN 100x or more away
DISTANCE_FACTOR = 10.0
GROWTH = 10.0  # the error at the target is at least this many times the smallest along the path
SAMPLE = 12  # layers evaluated along the path (spread evenly, plus the largest jumps)
# the float64 copy doubles the weights; above this many bytes of float weights it is not made
MAX_FLOAT64_WEIGHT_BYTES = 512 << 20

_FLOATS = (1, 10, 16)  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
_DOUBLE = 11


@dataclass
class LocalError:
    name: str
    op_type: str
    candidate: float | None  # MNN's output vs the layer in float64 on MNN's inputs
    reference: float | None  # ONNX Runtime's, likewise on its own inputs
    propagated: float | None  # the layer's error in the whole run (from the layer capture)

    @property
    def within_rounding(self) -> bool:
        if self.candidate is None:
            return False
        bound = max(ROUNDING, LOCAL_FACTOR * (self.reference or 0.0))
        return self.candidate <= bound

    def to_dict(self) -> dict:
        return {"layer": self.name, "op": self.op_type, "local_error_mnn": self.candidate,
                "local_error_onnxruntime": self.reference, "error_in_model": self.propagated,
                "within_float32_rounding": self.within_rounding}


@dataclass
class Finding:
    """What the numerics test measured; ``kind`` is "numerics", "undetermined" or None (not
    amplified rounding: the other experiments decide)."""
    kind: str | None
    reason: str
    path: list = field(default_factory=list)  # (name, error in the model) along the growth path
    locals: list = field(default_factory=list)  # LocalError for the sampled layers
    distances: list = field(default_factory=list)  # per tensor: name, onnxruntime, mnn (from float64)
    crossing: str | None = None  # the first layer on the path out of tolerance

    def growth_per_layer(self) -> float | None:
        errors = [(n, e) for n, e in self.path if e]
        if len(errors) < 2:
            return None
        (_, first), (_, last) = errors[0], errors[-1]
        return (last / first) ** (1.0 / (len(errors) - 1)) if first > 0 else None

    def detail(self) -> str:
        """One line for the terminal's evidence list."""
        text = f"{self.kind or 'not amplified rounding'}: {self.reason}"
        growth = self.growth_per_layer()
        if self.kind is not None and growth:
            text += (f"; the error grows {growth:.2g}x per compared layer; {len(self.locals)} layers right "
                     f"in float64 on each side's inputs")
        return text

    def to_dict(self) -> dict:
        return {"result": self.kind or "not amplified rounding", "reason": self.reason, "detail": self.detail(),
                "growth_per_layer": self.growth_per_layer(), "crosses_tolerance_at": self.crossing,
                "path": [{"layer": n, "error_in_model": e} for n, e in self.path],
                "sampled_layers": [x.to_dict() for x in self.locals],
                "distance_from_float64": self.distances}


# -- the float64 copy --------------------------------------------------------------------------
def _double_tensor(tensor) -> None:
    from onnx import numpy_helper

    if tensor.data_type in _FLOATS:
        array = numpy_helper.to_array(tensor).astype(np.float64)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _double_graph(graph) -> None:
    from onnx import AttributeProto

    for tensor in graph.initializer:
        _double_tensor(tensor)
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.tensor_type.elem_type in _FLOATS:
            info.type.tensor_type.elem_type = _DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                _double_tensor(attr.t)
            elif attr.type == AttributeProto.GRAPH:
                _double_graph(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _double_graph(g)
            elif attr.name in ("to", "dtype") and attr.type == AttributeProto.INT and attr.i in _FLOATS:
                attr.i = _DOUBLE


def float64_model(model):
    """A copy of ``model`` that computes in float64: float weights, constants, casts and value
    types widened (integers and booleans untouched)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _double_graph(copy.graph)
    return copy


def float_weight_bytes(model) -> int:
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in _FLOATS:
            total += int(np.prod(tensor.dims, dtype=np.int64)) * 4
    return total


def _widen(feeds: dict) -> dict:
    return {k: (np.asarray(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
            for k, v in feeds.items()}


def evaluate(model, feeds: dict, names, *, float64: bool = True) -> dict:
    """The values ``names`` of ``model`` evaluated by onnx.reference, in float64 (the
    mathematics, up to float64 rounding) or as the model's own types (one more float32
    implementation). Raises whatever the evaluator raises for an op it lacks."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(float64_model(model) if float64 else model)
    wanted = set(names)
    values = evaluator.run(None, _widen(feeds) if float64 else feeds, intermediate=True)
    return {k: np.asarray(v) for k, v in values.items() if k in wanted}


def nudged(feeds: dict) -> dict:
    """The feeds with every float moved by one ulp (toward +inf): the input's own float32
    rounding, so an evaluation on them is another draw of what float32 gives."""
    return {k: (np.nextafter(v, np.asarray(np.inf, dtype=v.dtype)) if np.asarray(v).dtype.kind == "f" else v)
            for k, v in feeds.items()}


def layer_model(model, graph, name: str, frontier) -> object:
    """The ONNX ops between ``frontier`` and ``name`` as a model of their own, in the model's
    own types, with only the constants and weights they read (no copy of the whole model: a
    1B-parameter model's copy is 4 GB more): the layer alone, to be fed any inputs."""
    from onnx import helper

    span = set(graph.span(name, set(frontier)))
    nodes = [n for n in model.graph.node if any(o in span for o in n.output)]
    needed = {i for n in nodes for i in n.input if i}
    constants = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in needed
                 and n.output[0] not in span]
    inits = [t for t in model.graph.initializer if t.name in needed]
    sub = helper.make_graph(constants + nodes, "layer",
                            [helper.make_empty_tensor_value_info(f) for f in frontier],
                            [helper.make_empty_tensor_value_info(name)], inits)
    layer = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    layer.functions.extend(model.functions)
    return layer


def span_model(model, graph, name: str, frontier) -> object:
    """``layer_model`` in float64."""
    return float64_model(layer_model(model, graph, name, frontier))


def evaluate_layer(layer_model, inputs: dict, name: str) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return np.asarray(ReferenceEvaluator(layer_model).run([name], _widen(inputs))[0])


# -- distances -----------------------------------------------------------------------------------
def scaled(candidate, exact) -> float | None:
    """max|c - e| / max|e| over finite values; None when the shapes cannot be compared."""
    c = np.asarray(candidate, dtype=np.float64)
    e = np.asarray(exact, dtype=np.float64)
    if c.size != e.size:
        return None
    c = c.reshape(e.shape)
    finite = np.isfinite(c) & np.isfinite(e)
    if not finite.any():
        return None
    scale = float(np.max(np.abs(e[finite])))
    return float(np.max(np.abs(c[finite] - e[finite]))) / max(scale, 1e-30)


def relative_l2(candidate, exact) -> float | None:
    """||c - e|| / ||e||: steadier than the maximum for comparing two approximations."""
    c = np.asarray(candidate, dtype=np.float64)
    e = np.asarray(exact, dtype=np.float64)
    if c.size != e.size:
        return None
    c = c.reshape(e.shape)
    finite = np.isfinite(c) & np.isfinite(e)
    if not finite.any():
        return None
    norm = float(np.linalg.norm(e[finite]))
    return float(np.linalg.norm(c[finite] - e[finite])) / max(norm, 1e-30)


# -- the path -----------------------------------------------------------------------------------
def growth_path(graph, layers, target: str) -> list:
    """The paired layers that ``target`` depends on (and itself), in graph order."""
    ancestors, stack = set(), [target]
    while stack:
        v = stack.pop()
        if v in ancestors:
            continue
        ancestors.add(v)
        producer = graph.producer.get(v)
        if producer is not None:
            stack.extend(producer.inputs)
    path = [x for x in layers if x.name in ancestors and x.scaled_error is not None]
    return sorted(path, key=lambda x: graph.producer[x.name].index if x.name in graph.producer else -1)


def sample_path(path, limit: int = SAMPLE) -> list:
    """At most ``limit`` layers of ``path``, in the order to evaluate them: the last (the
    target), then the largest jumps in error (where a real bug shows: its error appears at
    once), then the rest spread evenly. A real bug is usually found by the first few."""
    jumps = []
    for before, after in zip(path, path[1:]):
        a, b = before.scaled_error or 0.0, after.scaled_error or 0.0
        jumps.append((b / a if a > 0 else math.inf if b > 0 else 0.0, after.index, after))
    order = [path[-1]] + [x for _, _, x in sorted(jumps, key=lambda j: (j[0], j[1]), reverse=True)[: limit // 3]]
    if len(path) > limit:
        step = len(path) / limit
        order += [path[int(i * step)] for i in range(limit)]
    order += list(path)  # fills what the spread left when it met the jumps
    chosen: dict = {}
    for x in order:  # the first mention decides the place
        chosen.setdefault(x.name, x)
    return list(chosen.values())[:limit]


@dataclass
class Sides:
    """How to read values: ``reference(names)`` and ``candidate(layer_names)`` return arrays
    by ONNX name (the candidate's in the reference's shape)."""
    reference: object
    candidate: object


def measure(model, graph, comparison, target: str, feeds: dict, sides: Sides, tolerance_fails,
            progress=lambda _text: None) -> Finding:
    """The numerics test at ``target`` (see the module docstring). ``tolerance_fails(layer)``
    says whether a path layer is out of tolerance (the crossing)."""
    layers = [x for x in comparison.layers or () if x.scaled_error is not None]
    path = growth_path(graph, layers, target)
    figures = [(x.name, x.scaled_error) for x in path]
    crossing = next((x.name for x in path if tolerance_fails(x)), None)
    finding = Finding(None, "", path=figures, crossing=crossing)
    if len(path) < 3:
        finding.reason = f"only {len(path)} compared layer(s) lead to {target}: no growth to measure"
        return finding
    smallest = min(e for _, e in figures)
    largest = path[-1].scaled_error or 0.0
    if not largest > GROWTH * max(smallest, 1e-12) or smallest > ROUNDING * 10:
        finding.reason = (f"the error does not grow from rounding along the path to {target} "
                          f"(smallest {smallest:.3g}, at the target {largest:.3g})")
        return finding
    paired = {x.name for x in comparison.layers or ()}
    sample = sample_path(path)
    progress(f"diagnosing: is it amplified rounding? {len(sample)} layers evaluated in float64 on each side's inputs")
    positions = {x.name: i for i, x in enumerate(path)}
    frontiers = {x.name: graph.frontier(x.name, paired) for x in sample}
    graph_inputs = set(graph.inputs)
    ref_values: dict = {}
    cand_values: dict = {}

    def read(layers_) -> None:
        needed = sorted({f for x in layers_ for f in frontiers[x.name] if f not in graph_inputs}
                        | {x.name for x in layers_})
        ref_values.update(sides.reference(needed))
        cand_values.update(sides.candidate(needed))

    for i, x in enumerate(sample):
        if i == 0:
            read(sample[:1])  # the target alone first: a real bug usually shows there
        elif i == 1:
            read(sample[1:])
        frontier = frontiers[x.name]
        local = LocalError(x.name, x.op_type, None, None, x.scaled_error)
        finding.locals.append(local)
        try:
            layer_model = span_model(model, graph, x.name, frontier)
            for side, values in (("reference", ref_values), ("candidate", cand_values)):
                inputs = {f: (feeds[f] if f in graph_inputs else values[f]) for f in frontier}
                exact = evaluate_layer(layer_model, inputs, x.name)
                setattr(local, side, scaled(values[x.name], exact))
        except Exception as exc:  # an op onnx.reference lacks, a value not captured
            finding.reason = f"layer {x.name} could not be evaluated in float64: {type(exc).__name__}: {exc}"
            return finding
        if not local.within_rounding:
            finding.reason = (f"layer {x.name} ({x.op_type}) is wrong on its own inputs in MNN: local error "
                              f"{_fmt(local.candidate)} against {_fmt(local.reference)} in ONNX Runtime")
            return finding
    finding.locals.sort(key=lambda local: positions[local.name])
    # every sampled layer is right: is MNN as close to the mathematics as ONNX Runtime is?
    failing = [o for o in comparison.outputs if not o.passed and o.error is None]
    names = list(dict.fromkeys([target] + [o.reference_name for o in failing]))
    weights = float_weight_bytes(model)
    if weights > MAX_FLOAT64_WEIGHT_BYTES:
        finding.kind = "undetermined"
        finding.reason = (f"no float64 evaluation: the model has {weights / (1 << 20):.0f} MiB of float weights "
                          f"(above {MAX_FLOAT64_WEIGHT_BYTES >> 20} MiB)")
        return finding
    progress("diagnosing: the whole graph in float64 and float32 (onnx.reference)")
    try:
        exact = evaluate(model, feeds, names)
        draws = {"onnxruntime": sides.reference(names),
                 "numpy float32": evaluate(model, feeds, names, float64=False),
                 "numpy float32, inputs nudged by one ulp": evaluate(model, nudged(feeds), names, float64=False)}
        cand_out = sides.candidate(names)
    except Exception as exc:
        finding.kind = "undetermined"
        finding.reason = f"no float64 evaluation of the graph: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return finding
    worse = []
    for n in names:
        if n not in exact:
            continue
        row = {"tensor": n, "mnn": relative_l2(cand_out[n], exact[n])}
        row.update({label: relative_l2(values[n], exact[n]) for label, values in draws.items() if n in values})
        finding.distances.append(row)
        others = [d for label, d in row.items() if label not in ("tensor", "mnn") and d is not None]
        if row["mnn"] is None or not others or row["mnn"] > DISTANCE_FACTOR * max(others) + 1e-6:
            worse.append(n)
    if not finding.distances:
        finding.kind = "undetermined"
        finding.reason = "no float64 value of the target or the failing outputs"
        return finding
    if worse:
        finding.reason = (f"MNN is farther from the float64 evaluation than every float32 evaluation at "
                          f"{', '.join(worse)} (more than {DISTANCE_FACTOR:g}x)")
        return finding
    finding.kind = "numerics"
    finding.reason = "every sampled layer is right on its own inputs, and both are as far from float64"
    return finding


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"
