"""Is a difference amplified rounding? The numerics test of a failing ONNX Runtime -> MNN link.

Some models amplify float32 rounding: a deep chain whose layers have a gain above one (a tanh
MLP with large weights, a recurrent cell unrolled, a residual stack without normalisation)
turns the last-bit differences of two correct float32 implementations into differences of
order one at the output. Neither framework is wrong; blaming the converter or a kernel would
send the user to a bug report for nothing. The test has three parts, each measured on the same
inputs on both sides of every comparison:

1. The error grows along the path from the inputs to the target (the first divergence, or the
   worst output): small at its start, out of tolerance at its end.
2. Every layer along that path (a sample on long or large paths: the target, the largest jumps
   in error, the layers just before the target, the rest spread evenly) is right on its own
   inputs: MNN's output against the layer evaluated in float64 on MNN's own input values (the
   same inputs), and likewise for ONNX Runtime. Each local error must be within float32
   rounding: at most ``LOCAL_FACTOR`` times ONNX Runtime's on the same layer, or ``ROUNDING`` on
   the tensor's scale. A weight off by 0.5% gives a local error of 5e-3 at its layer and fails
   here; only a sample that misses the faulty layer could let one through, and then step 3
   still stands between it and the verdict.
3. A float64 evaluation of the whole ONNX graph (onnx.reference on a float64 copy) is no
   farther from MNN than ``DISTANCE_FACTOR`` times from the farthest of three correct float32
   evaluations (ONNX Runtime; onnx.reference in float32, on the inputs and on the inputs
   nudged by one ulp): MNN is no worse an approximation of the model's mathematics.

All three hold: the verdict is ``numerics``. 1 and 2 hold but no float64 figure of the whole
graph can be had (an op onnx.reference lacks there, values too large to hold in float64):
``undetermined``, since no party can be blamed. Above ``MAX_FLOAT64_WEIGHT_BYTES`` of float
weights the test does not run (diagnose.py), and the other experiments decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# float32 rounding of one layer on its tensor's scale (max|diff| / max|reference|): a few ulps
# (1.2e-7 each) accumulated over a dot product or a short fused chain
ROUNDING = 2e-5
LOCAL_FACTOR = 4.0  # MNN's local error may be this many times ONNX Runtime's on the same layer
# ops float32 computes to the last bit or nearly (one correctly rounded operation per element,
# or none): evaluated alone, a few ulps at most. A constant changed by 1e-5 in a chaotic model
# hid under ROUNDING (the change showed at its Mul only, as 1e-5), and was called numerics
EXACT_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Max", "Min", "Clip", "Where",
                       "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
                       "Split", "Slice", "Gather", "Expand", "Tile", "MaxPool"})
EXACT_ROUNDING = 1e-6  # about 8 ulps of the tensor's scale
# MNN's distance from float64 (relative L2) may be this many times the largest of three correct
# float32 evaluations' (ONNX Runtime, onnx.reference in float32, and that on inputs nudged by one
# ulp). In a chaotic model which implementation lands closer is luck (one draw against another
# differed 23x at a crossing, measured on an unrolled recurrent cell), hence three draws; a real
# error at an unsampled layer puts MNN 100x or more away
DISTANCE_FACTOR = 10.0
GROWTH = 10.0  # the error at the target is at least this many times the smallest along the path
# every layer of the path is evaluated when it has at most MAX_PATH layers whose values take at
# most MAX_PATH_BYTES per side; else SAMPLE of them (the target, the largest jumps, the layers
# just before the target, the rest spread evenly)
MAX_PATH = 400
MAX_PATH_BYTES = 128 << 20
SAMPLE = 24
# the float64 evaluation of the whole graph holds every value; above this it is not made
MAX_FLOAT64_ACTIVATION_BYTES = 2 << 30
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
    exact: bool = False  # one op of EXACT_OPS, evaluated alone (from its own inputs)

    @property
    def within_rounding(self) -> bool:
        if self.candidate is None:
            return False
        bound = max(EXACT_ROUNDING if self.exact else ROUNDING, LOCAL_FACTOR * (self.reference or 0.0))
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
    sampled: bool = False  # True when only some of the path's layers were evaluated

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
                "path_sampled": self.sampled,
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


def evaluate(model, feeds: dict, names) -> dict:
    """The values ``names`` (any of the graph's values) of ``model`` evaluated in float64 by
    onnx.reference: the mathematics, up to float64 rounding. Raises whatever the evaluator
    raises for an op it lacks."""
    from onnx.reference import ReferenceEvaluator

    names = list(names)
    values = ReferenceEvaluator(float64_model(model)).run(names, _widen(feeds))
    return {n: np.asarray(v) for n, v in zip(names, values)}


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
def _finite_pair(candidate, exact):
    """Both as flat float64 over the positions finite in both; None when the sizes differ or
    nothing is finite."""
    c = np.asarray(candidate, dtype=np.float64)
    e = np.asarray(exact, dtype=np.float64)
    if c.size != e.size:
        return None
    c, e = c.reshape(-1), e.reshape(-1)
    finite = np.isfinite(c) & np.isfinite(e)
    return (c[finite], e[finite]) if finite.any() else None


def scaled(candidate, exact) -> float | None:
    """max|c - e| / max|e| over finite values; None when the shapes cannot be compared."""
    pair = _finite_pair(candidate, exact)
    if pair is None:
        return None
    c, e = pair
    return float(np.max(np.abs(c - e))) / max(float(np.max(np.abs(e))), 1e-30)


def relative_l2(candidate, exact) -> float | None:
    """||c - e|| / ||e||: steadier than the maximum for comparing two approximations."""
    pair = _finite_pair(candidate, exact)
    if pair is None:
        return None
    c, e = pair
    return float(np.linalg.norm(c - e)) / max(float(np.linalg.norm(e)), 1e-30)


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
    path = [x for x in layers if x.name in ancestors and x.name in graph.producer and x.scaled_error is not None]
    return sorted(path, key=lambda x: graph.producer[x.name].index)


def _jumps(path, graph, paired) -> list:
    """Each layer's error over its own inputs' (absolute errors: an activation that rescales
    its values does not look like a jump): where a real bug shows, its error appearing at once.
    Largest first."""
    errors = {x.name: x.max_abs_diff or 0.0 for x in path}
    found = []
    for x in path:
        inputs = [errors.get(f, 0.0) for f in graph.frontier(x.name, paired)]  # graph inputs: exact
        # a float32 rounding of the layer's own values is no jump (the first layers' inputs are exact)
        before = max(inputs + [1e-7 * max(1.0, x.reference_absmax or 0.0)])
        found.append((errors[x.name] / before, x.index, x))
    return [x for _, _, x in sorted(found, key=lambda j: (j[0], j[1]), reverse=True)]


def sample_path(path, graph=None, paired=(), limit: int = SAMPLE) -> list:
    """The layers of ``path`` to evaluate, in the order to evaluate them (a real bug is usually
    found by the first few): the target, then the largest jumps in error, then the layers just
    before the target, then the rest spread evenly over the whole path. All of them when the
    path has at most ``limit`` layers."""
    jumps = _jumps(path, graph, set(paired)) if graph is not None else []
    order = [path[-1]] + jumps[: max(1, limit // 3)] + path[-5:-1][::-1]
    chosen: dict = {}
    for x in order:  # the first mention decides the place
        chosen.setdefault(x.name, x)
    rest = [x for x in path if x.name not in chosen]
    room = limit - len(chosen)
    if len(rest) > room > 0:
        step = len(rest) / room
        rest = [rest[int(i * step)] for i in range(room)]
    for x in rest:
        chosen.setdefault(x.name, x)
    return list(chosen.values())[:limit]


def _capture_bytes(path) -> int:
    return sum(int(np.prod(x.reference_shape or (1,), dtype=np.int64)) * 4 for x in path)


@dataclass
class Sides:
    """How to read values: ``reference(names)`` and ``candidate(layer_names)`` return arrays
    by ONNX name (the candidate's in the reference's shape)."""
    reference: object
    candidate: object


def measure(model, graph, comparison, target: str, feeds: dict, sides: Sides, tolerance_fails,
            progress=lambda _text: None) -> Finding:
    """The numerics test at ``target`` (see the module docstring), its three steps in turn;
    the first that refuses the rounding explanation ends it. ``tolerance_fails(layer)`` says
    whether a path layer is out of tolerance (the crossing)."""
    layers = [x for x in comparison.layers or () if x.scaled_error is not None]
    path = growth_path(graph, layers, target)
    crossing = next((x.name for x in path if tolerance_fails(x)), None)
    finding = Finding(None, "", path=[(x.name, x.scaled_error) for x in path], crossing=crossing)
    if _grows(finding, path, target) and _layers_right(finding, model, graph, comparison, path, feeds, sides,
                                                        progress):
        _against_float64(finding, model, graph, comparison, target, feeds, sides, progress)
    return finding


def _grows(finding: Finding, path, target: str) -> bool:
    """Step 1: small at the path's start, GROWTH times larger at the target."""
    if len(path) < 3:
        finding.reason = f"only {len(path)} compared layer(s) lead to {target}: no growth to measure"
        return False
    smallest = min(e for _, e in finding.path)
    largest = path[-1].scaled_error or 0.0
    if not largest > GROWTH * max(smallest, 1e-12) or smallest > ROUNDING * 10:
        finding.reason = (f"the error does not grow from rounding along the path to {target} "
                          f"(smallest {smallest:.3g}, at the target {largest:.3g})")
        return False
    return True


def _layers_right(finding: Finding, model, graph, comparison, path, feeds, sides: Sides, progress) -> bool:
    """Step 2: each layer of the path (or a sample) right in float64 on each side's own inputs."""
    paired = {x.name for x in comparison.layers or ()}
    # every layer of the path when its values are cheap to hold, else a sample
    limit = len(path) if len(path) <= MAX_PATH and _capture_bytes(path) <= MAX_PATH_BYTES else SAMPLE
    sample = sample_path(path, graph, paired, limit=limit)
    finding.sampled = len(sample) < len(path)
    progress(f"diagnosing: is it amplified rounding? {len(sample)} of {len(path)} layers evaluated in float64 "
             f"on each side's inputs")
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
        frontier = frontiers[x.name]
        producer = graph.producer.get(x.name)
        exact = x.op_type in EXACT_OPS and producer is not None and set(frontier) == set(producer.inputs)
        local = LocalError(x.name, x.op_type, None, None, x.scaled_error, exact)
        finding.locals.append(local)
        try:
            if i < 2:  # the target alone first (a real bug usually shows there), then the rest at once
                read(sample[:1] if i == 0 else sample[1:])
            layer_model = span_model(model, graph, x.name, frontier)
            for side, values in (("reference", ref_values), ("candidate", cand_values)):
                inputs = {f: (feeds[f] if f in graph_inputs else _as(values[f], ref_values[f])) for f in frontier}
                setattr(local, side, scaled(values[x.name], evaluate_layer(layer_model, inputs, x.name)))
        except Exception as exc:  # an op onnx.reference lacks, a value MNN cannot return
            finding.reason = f"layer {x.name} could not be evaluated in float64: {_first_line(exc)}"
            return False
        if not local.within_rounding:
            finding.reason = (f"layer {x.name} ({x.op_type}) is wrong on its own inputs in MNN: local error "
                              f"{_fmt(local.candidate)} against {_fmt(local.reference)} in ONNX Runtime")
            return False
    positions = {x.name: i for i, x in enumerate(path)}
    finding.locals.sort(key=lambda local: positions[local.name])
    return True


def _against_float64(finding: Finding, model, graph, comparison, target, feeds, sides: Sides, progress) -> None:
    """Step 3: MNN no farther from the whole graph in float64 than correct float32 evaluations
    (decides numerics, or undetermined when no float64 figure can be had)."""
    failing = [o for o in comparison.outputs if not o.passed and o.error is None]
    names = list(dict.fromkeys([target] + [o.reference_name for o in failing]))
    activations = sum(graph.value_bytes(feeds).values()) * 2  # every value, held in float64
    finding.kind = "undetermined"
    if activations > MAX_FLOAT64_ACTIVATION_BYTES:
        finding.reason = (f"no float64 evaluation of the graph: its values would take {activations >> 20} MiB "
                          f"in float64 (above {MAX_FLOAT64_ACTIVATION_BYTES >> 20} MiB)")
        return
    progress("diagnosing: the whole graph in float64 and float32 (onnx.reference)")
    try:
        exact = evaluate(model, feeds, names)
        float32 = _Float32(model)
        draws = {"onnxruntime": sides.reference(names),
                 "numpy float32": float32(feeds, names),
                 "numpy float32, inputs nudged by one ulp": float32(nudged(feeds), names)}
        cand_out = sides.candidate(names)
    except Exception as exc:
        finding.reason = f"no float64 evaluation of the graph: {_first_line(exc)}"
        return
    worse = []
    for n in names:
        row = {"tensor": n, "mnn": relative_l2(cand_out[n], exact[n])}
        row.update({label: relative_l2(values[n], exact[n]) for label, values in draws.items()})
        finding.distances.append(row)
        others = [d for label, d in row.items() if label not in ("tensor", "mnn") and d is not None]
        if row["mnn"] is None or not others or row["mnn"] > DISTANCE_FACTOR * max(others) + 1e-6:
            worse.append(n)
    if worse:
        finding.kind = None
        finding.reason = (f"MNN is farther from the float64 evaluation than every float32 evaluation at "
                          f"{', '.join(worse)} (more than {DISTANCE_FACTOR:g}x)")
        return
    finding.kind = "numerics"
    finding.reason = ("every evaluated layer is right on its own inputs, and MNN is no farther from float64 "
                      "than correct float32 evaluations")


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _as(value, like):
    """``value`` in ``like``'s dtype when they differ in kind (MNN holds ONNX's int64 as int32)."""
    value = np.asarray(value)
    like = np.asarray(like)
    return value.astype(like.dtype) if value.dtype != like.dtype else value


class _Float32:
    """One onnx.reference evaluator of the model as it is (float32), run on several feeds."""

    def __init__(self, model):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(model)

    def __call__(self, feeds: dict, names) -> dict:
        return {n: np.asarray(v) for n, v in zip(names, self.evaluator.run(list(names), feeds))}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"
