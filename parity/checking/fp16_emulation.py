"""The ways a float16 kernel can compute an ONNX op, emulated in numpy, to tell float16's own
precision from a wrong float16 kernel.

A float16 kernel rounds its inputs and weights to float16 and its output to float16; between
them, an op that adds many terms (MatMul, Gemm, Conv, pooling, reductions) also rounds its
running sums, and how much depends on the order it adds in. ``evaluate`` runs an ONNX subgraph
(the ops one diverging layer stands for) on given inputs under each scheme of ``SCHEMES``:

- ``exact``: float64 throughout, nothing rounded (what every error is measured against);
- ``rounding``: inputs, weights and every op's output rounded to float16, the arithmetic
  exact: what no float16 kernel can avoid;
- ``fp32_sum``: float16 operands, their products summed in float32 (exact products: two
  11-bit significands fit float32's 24), the result rounded to float16;
- ``pairwise``: products rounded to float16, summed as a balanced tree in float16;
- ``lanes8`` / ``lanes4``: NEON-style partial sums: term k goes to lane k mod 8 (or 4), each
  lane a sequential float16 fused multiply-add, then the lanes summed in float16;
- ``sequential``: one float16 fused multiply-add per term, in order (acc = fp16(acc + a*b));
- ``sequential_rounded``: the same with each product rounded first (FMUL then FADD).

Ops that add no terms (Relu, Add, Sigmoid, Flatten ...) are onnx's own reference
implementation (onnx.reference) on float16-rounded inputs, their output rounded: the same in
every scheme but ``exact``. The work is bounded (``MAX_TERMS`` products per op and scheme):
a bigger op is emulated on evenly spaced output positions only, the others NaN (which the ops
after it carry along), and every figure is then measured on the emulated positions; when an op
after it mixes positions and no output is left emulated, ``emulated_positions`` raises.

Pure numpy and onnx; nothing here runs a framework.
"""

from __future__ import annotations

import numpy as np

SCHEMES = {
    "exact": "float64, nothing rounded",
    "rounding": "float16 inputs, weights and outputs; exact arithmetic",
    "fp32_sum": "float32 sums of float16 terms",
    "pairwise": "pairwise float16 sums",
    "lanes8": "8 float16 partial sums (NEON lanes), then summed",
    "lanes4": "4 float16 partial sums (NEON lanes), then summed",
    "sequential": "sequential float16 sums (fused multiply-add)",
    "sequential_rounded": "sequential float16 sums of float16-rounded products",
}
ACCUMULATING = ("MatMul", "Gemm", "Conv", "GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum")
# ops whose float16 kernels round each value once or a few times, adding no long sums: float16
# rounding of their inputs and outputs is all a float16 kernel must lose there
NO_SUMS = frozenset((
    "Abs", "Add", "And", "ArgMax", "ArgMin", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Cos", "DepthToSpace", "Div", "Elu", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Floor", "Gather", "GatherElements", "Gelu", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "MaxPool",
    "Min", "Mish", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "Reciprocal", "ReduceMax", "ReduceMin",
    "Relu", "Reshape", "Resize", "Round", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Slice", "Softplus",
    "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "ThresholdedRelu", "Tile",
    "Transpose", "Unsqueeze", "Upsample", "Where",
))
MAX_TERMS = 20_000_000  # products per op and scheme: about 0.4 s of numpy per scheme
_BLOCK = 4_000_000  # terms held at once (32 MB of float64)
U16 = 2.0 ** -11  # float16's unit roundoff (11 significant bits, round to nearest)


def round16(x) -> np.ndarray:
    """Round to float16 (overflow to inf, as float16 does), held in float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


# -- sums of terms -----------------------------------------------------------------------------
def accumulate(terms: np.ndarray, scheme: str) -> np.ndarray:
    """Sum ``terms`` (float64, ..., K) along the last axis as ``scheme`` does. The terms are
    the exact products of float16 operands (or float16 values); ``exact`` and ``rounding`` sum
    them exactly (the caller rounds the result), the others round as their kernels would."""
    terms = np.asarray(terms, dtype=np.float64)
    k = terms.shape[-1]
    with np.errstate(over="ignore", invalid="ignore"):
        if scheme in ("exact", "rounding") or k == 0:
            return terms.sum(axis=-1)
        if scheme == "fp32_sum":
            acc = np.zeros(terms.shape[:-1], np.float32)
            for j in range(k):
                acc = acc + terms[..., j].astype(np.float32)
            return acc.astype(np.float64)
        if scheme == "pairwise":
            return _pairwise16(round16(terms))
        if scheme in ("sequential", "sequential_rounded"):
            source = round16(terms) if scheme == "sequential_rounded" else terms
            acc = np.zeros(terms.shape[:-1])
            for j in range(k):
                acc = round16(acc + source[..., j])
            return acc
        if scheme.startswith("lanes"):
            lanes = int(scheme[5:])
            pad = (-k) % lanes
            if pad:
                terms = np.concatenate([terms, np.zeros(terms.shape[:-1] + (pad,))], axis=-1)
            grouped = terms.reshape(terms.shape[:-1] + (-1, lanes))
            acc = np.zeros(grouped.shape[:-2] + (lanes,))
            for j in range(grouped.shape[-2]):
                acc = round16(acc + grouped[..., j, :])
            return _pairwise16(acc)
    raise ValueError(f"unknown float16 scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def _pairwise16(values: np.ndarray) -> np.ndarray:
    """A balanced tree of float16 additions along the last axis (values already float16)."""
    with np.errstate(over="ignore", invalid="ignore"):
        while values.shape[-1] > 1:
            if values.shape[-1] % 2:
                values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,))], axis=-1)
            values = round16(values[..., 0::2] + values[..., 1::2])
    return values[..., 0] if values.shape[-1] else np.zeros(values.shape[:-1])


def dot(a: np.ndarray, b: np.ndarray, scheme: str, share: float = 1.0) -> np.ndarray:
    """(P, K) @ (K, Q) with the sums of ``scheme``, in blocks of columns so that at most
    ``_BLOCK`` products are held at once. The operands are already rounded as the scheme
    needs (float16 or not): their products are exact in float64. With ``share`` < 1 only
    that share of the columns (evenly spaced) is computed, the others are NaN."""
    p, k = a.shape
    q = b.shape[1]
    if k == 0:
        return np.zeros((p, q))
    columns = _sample(q, share)
    out = np.full((p, q), np.nan)
    step = max(1, _BLOCK // max(1, p * k))
    for start in range(0, len(columns), step):
        chosen = columns[start:start + step]
        out[:, chosen] = accumulate(a[:, None, :] * b[:, chosen].T[None, :, :], scheme)
    return out


def _sample(count: int, share: float) -> np.ndarray:
    """Evenly spaced indices: ``share`` of ``count`` (at least one), or all of them."""
    if share >= 1:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max(1, int(count * share))).round().astype(np.int64))


def _rows(terms: np.ndarray, scheme: str, share: float) -> np.ndarray:
    """``accumulate`` over (..., K) on ``share`` of the sums (evenly spaced), the others NaN."""
    flat = terms.reshape(-1, terms.shape[-1])
    out = np.full(flat.shape[0], np.nan)
    rows = _sample(flat.shape[0], share)
    for start in range(0, len(rows), max(1, _BLOCK // max(1, flat.shape[1]))):
        chosen = rows[start:start + max(1, _BLOCK // max(1, flat.shape[1]))]
        out[chosen] = accumulate(flat[chosen], scheme)
    return out.reshape(terms.shape[:-1])


# -- the accumulating ops, lowered to dot products and sums -------------------------------------
def _share(count: int) -> float:
    """The share of an op's outputs emulated: all of them up to ``MAX_TERMS`` products."""
    return 1.0 if count <= MAX_TERMS else MAX_TERMS / count


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _matmul(a, b, scheme):
    if a.ndim == 1:
        return _matmul(a[None, :], b, scheme)[..., 0, :] if b.ndim > 1 else _matmul(a[None, :], b[:, None], scheme)[0, 0]
    if b.ndim == 1:
        return _matmul(a, b[:, None], scheme)[..., 0]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    share = _share(int(np.prod(batch, dtype=np.int64)) * a.shape[-2] * a.shape[-1] * b.shape[-1])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]))
    for index in np.ndindex(*batch):
        out[index] = dot(a[index], b[index], scheme, share)
    return out


def _gemm(node, inputs, scheme, rnd):
    a, b = inputs[0], inputs[1]
    if _attr(node, "transA", 0):
        a = a.T
    if _attr(node, "transB", 0):
        b = b.T
    y = dot(a, b, scheme, _share(a.shape[0] * a.shape[1] * b.shape[1]))
    alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
    if alpha != 1.0:
        y = rnd(rnd(y) * alpha)
    if len(inputs) > 2 and inputs[2] is not None:
        c = inputs[2] if beta == 1.0 else rnd(inputs[2] * beta)
        y = rnd(y) + c
    return y


def _windows(x, kernel, strides, dilations, pads):
    """im2col for (N, C, H, W): (N, C, kh*kw, OH*OW) and the output's spatial shape."""
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    cols = np.empty((n, c, kh * kw, oh * ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            cols[:, :, i * kw + j, :] = patch.reshape(n, c, -1)
    return cols, (oh, ow)


def _conv(node, inputs, scheme, rnd):
    x, w = inputs[0], inputs[1]
    if x.ndim != 4 or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("only 2-D Conv with explicit pads is emulated")
    group = _attr(node, "group", 1)
    oc, icg, kh, kw = w.shape
    strides = tuple(_attr(node, "strides", (1, 1)))
    dilations = tuple(_attr(node, "dilations", (1, 1)))
    p = tuple(_attr(node, "pads", (0, 0, 0, 0)))
    cols, (oh, ow) = _windows(x, (kh, kw), strides, dilations, (p[0], p[1], p[2], p[3]))
    n = x.shape[0]
    share = _share(n * oc * icg * kh * kw * oh * ow)
    ocg = oc // group
    out = np.empty((n, oc, oh * ow))
    for b in range(n):
        for g in range(group):
            patches = cols[b, g * icg:(g + 1) * icg].reshape(icg * kh * kw, oh * ow)
            out[b, g * ocg:(g + 1) * ocg] = dot(w[g * ocg:(g + 1) * ocg].reshape(ocg, -1), patches, scheme, share)
    out = out.reshape(n, oc, oh, ow)
    if len(inputs) > 2 and inputs[2] is not None:
        out = rnd(out) + inputs[2].reshape(1, oc, 1, 1)
    return out


def _mean(sums, count, scheme, rnd):
    return sums / count if scheme == "exact" else rnd(sums) / count


def _reduce(node, inputs, scheme, rnd, opset):
    x = inputs[0]
    axes = _attr(node, "axes")
    if axes is None and len(inputs) > 1 and inputs[1] is not None:
        axes = [int(v) for v in np.asarray(inputs[1]).reshape(-1)]
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return x
        axes = list(range(x.ndim))
    axes = sorted(a % x.ndim for a in axes)
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + axes)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    sums = _rows(moved.reshape(moved.shape[:len(keep)] + (count,)), scheme, _share(x.size))
    out = _mean(sums, count, scheme, rnd) if node.op_type == "ReduceMean" else sums
    if _attr(node, "keepdims", 1):
        out = out.reshape([1 if a in axes else x.shape[a] for a in range(x.ndim)])
    return out


def _global_average(node, inputs, scheme, rnd):
    x = inputs[0]
    count = int(np.prod(x.shape[2:], dtype=np.int64))
    sums = _rows(x.reshape(x.shape[0], x.shape[1], count), scheme, _share(x.size))
    return _mean(sums, count, scheme, rnd).reshape(x.shape[:2] + (1,) * (x.ndim - 2))


def _average_pool(node, inputs, scheme, rnd):
    x = inputs[0]
    pads = tuple(_attr(node, "pads", (0, 0, 0, 0)))
    if (x.ndim != 4 or any(pads) or _attr(node, "ceil_mode", 0)
            or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        raise NotImplementedError("only 2-D AveragePool without padding is emulated")
    kernel = tuple(_attr(node, "kernel_shape"))
    strides = tuple(_attr(node, "strides", (1, 1)))
    dilations = tuple(_attr(node, "dilations", (1, 1)))
    cols, (oh, ow) = _windows(x, kernel, strides, dilations, (0, 0, 0, 0))
    sums = _rows(np.moveaxis(cols, 2, -1), scheme, _share(cols.size))
    return _mean(sums, kernel[0] * kernel[1], scheme, rnd).reshape(x.shape[0], x.shape[1], oh, ow)


def _accumulating(node, inputs, scheme, rnd, opset):
    if node.op_type == "MatMul":
        return _matmul(inputs[0], inputs[1], scheme)
    if node.op_type == "Gemm":
        return _gemm(node, inputs, scheme, rnd)
    if node.op_type == "Conv":
        return _conv(node, inputs, scheme, rnd)
    if node.op_type in ("ReduceMean", "ReduceSum"):
        return _reduce(node, inputs, scheme, rnd, opset)
    if node.op_type == "GlobalAveragePool":
        return _global_average(node, inputs, scheme, rnd)
    return _average_pool(node, inputs, scheme, rnd)


# -- a subgraph under every scheme ---------------------------------------------------------------
def _onnx_node(node, inputs: list, opset: int):
    """One node through onnx.reference, in the inputs' own dtype (float64 here)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if x is not None else "" for k, x in enumerate(inputs)]
    single = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))],
                              domain=node.domain or None)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single], "op",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype), None)
         for n, x in zip(names, inputs) if n],
        [helper.make_tensor_value_info(f"o{k}", 0, None) for k in range(len(node.output))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return ReferenceEvaluator(model).run(None, {n: x for n, x in zip(names, inputs) if n})


def evaluate(model, feeds: dict, schemes=tuple(SCHEMES)) -> dict:
    """Run ``model`` (a small ONNX subgraph: the ops one layer stands for) on ``feeds`` under
    each scheme. Returns {"outputs": {scheme: {output name: array}}, "accumulating": [op types
    emulated], "complete": every op is emulated or known to add no long sums (``NO_SUMS``),
    "notes": [...]}. A scheme that an op cannot follow (a form not emulated) is left out, with a
    note; without an accumulating op only ``exact`` and ``rounding`` run. An op beyond
    ``MAX_TERMS`` products is emulated on part of its outputs (NaN elsewhere), with a note."""
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    notes: list[str] = []
    emulated: list[str] = []
    results: dict = {}
    ops = [node.op_type for node in model.graph.node]
    unknown = sorted({op for op in ops if op not in ACCUMULATING and op not in NO_SUMS})
    if unknown:
        notes.append(f"{', '.join(unknown)} may add many terms inside its kernel and is not emulated: only "
                     f"float16 rounding of its inputs and output is")
    if not any(op in ACCUMULATING for op in ops):  # every sum scheme would equal ``rounding``
        schemes = [s for s in schemes if s in ("exact", "rounding")]
    for scheme in schemes:
        rnd = _identity if scheme == "exact" else round16
        values = {n: _prepare(v, rnd) for n, v in {**weights, **feeds}.items()}
        followed = True
        for node in model.graph.node:
            inputs = [values[i] if i else None for i in node.input]
            outputs = None
            if node.op_type in ACCUMULATING and scheme not in ("exact", "rounding"):
                try:
                    outputs = [_accumulating(node, inputs, scheme, rnd, opset)]
                except NotImplementedError as exc:
                    note = (f"{node.op_type} {node.name or node.output[0]}: {exc}; only float16 rounding "
                            f"of its inputs and output is emulated")
                    if note not in notes:
                        notes.append(note)
                    followed = False
                    break
                if node.op_type not in emulated:
                    emulated.append(node.op_type)
                sampled = float(np.mean(~np.isnan(outputs[0]))) if outputs[0].size else 1.0
                if sampled < 1 and not any(np.isnan(x).any() for x in inputs if _is_float(x)):
                    note = (f"{node.op_type} {node.name or node.output[0]}: more than {MAX_TERMS:,} products, "
                            f"emulated on {sampled:.1%} of its outputs (evenly spaced); figures are measured there")
                    if note not in notes:
                        notes.append(note)
            else:  # float64 arithmetic on the (rounded) inputs: onnx.reference keeps the dtype
                outputs = _onnx_node(node, [None if x is None else _as_float64(x) for x in inputs], opset)
            for name, out in zip(node.output, outputs):
                if name:
                    values[name] = _prepare(out, rnd)
        if followed:
            results[scheme] = {o.name: values[o.name] for o in model.graph.output}
    return {"outputs": results, "accumulating": emulated, "notes": notes,
            "complete": not unknown and all(s in results for s in schemes)}


def _identity(x):
    return x


def _is_float(x) -> bool:
    return x is not None and np.asarray(x).dtype.kind == "f"


def _prepare(x, rnd):
    x = np.asarray(x)
    return rnd(x) if x.dtype.kind == "f" else x


def _as_float64(x):
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype.kind == "f" else x


def emulated_positions(outputs: dict) -> np.ndarray | None:
    """Where every sum scheme computed a value: positions left out by sampling are NaN in all
    of them (a NaN from float16 overflow in one scheme is kept, and counts as an error there).
    None when all positions were emulated. Raises ValueError when none was: an op after a
    sampled one that mixes positions (Softmax over a sampled Gemm's outputs) leaves every value
    NaN, and figures over no position would be 0 for every scheme and for MNN alike."""
    sums = [np.isnan(np.asarray(v, np.float64)) for k, v in outputs.items() if k not in ("exact", "rounding")]
    if not sums:
        return None
    left_out = np.logical_and.reduce(sums)
    if left_out.size and left_out.all():
        raise ValueError("no output position could be emulated: an op after one sampled for its size "
                         f"(more than {MAX_TERMS:,} products) mixes the sampled positions with the left-out ones")
    return None if not left_out.any() else ~left_out


def scaled_errors(exact: np.ndarray, others: dict, where: np.ndarray | None = None) -> dict:
    """max|other - exact| / max|exact| for each array of ``others`` (inf where one is not
    finite where exact is), over the positions ``where`` (all by default); the scale is the
    whole exact output's: the same figure parity's verdicts quote."""
    exact = np.asarray(exact, np.float64)
    if where is not None and exact.size and not np.any(where):
        raise ValueError("no position to compare: the error over none would be 0 for every output")
    scale = float(np.max(np.abs(exact))) if exact.size else 0.0
    scale = scale if scale > 0 else 1.0
    errors = {}
    for name, value in others.items():
        value = np.asarray(value, np.float64).reshape(exact.shape)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(value - exact)
        if where is not None:
            diff = diff[where]
        errors[name] = float("inf") if not np.all(np.isfinite(diff)) else float(diff.max(initial=0.0)) / scale
    return errors


# -- the verdict's figures -------------------------------------------------------------------------
AS_DESIGNED = 2.0  # MNN within 2x the worst way a float16 kernel can compute the op
DEFECT = 10.0  # beyond 10x every way: no float16 arithmetic explains it


def judge_kernel(mnn_error: float, emulated: dict, *, complete: bool = True, overflows_with_mnn=None) -> dict:
    """Where MNN's error (scaled, against the exact op on the same inputs) lies among the
    emulated schemes' errors (``exact`` left out). ``complete``: every accumulating op was
    emulated (when not, only float16 rounding was, and no defect can be claimed).

    A scheme whose error is inf overflowed (a sequential float16 sum of 12544 values near 8
    passes 65504). It explains MNN's error only when MNN's output is not finite either, at a
    position where that scheme's is not: ``overflows_with_mnn`` names those schemes (from
    ``shared_overflow``; None: any overflowing scheme counts). A finite MNN error is judged
    against the worst finite scheme error: an overflow elsewhere explains no finite error.

    Returns {"finding": "as designed" | "defect" | "between", "ratio": MNN / worst emulated,
    "worst": scheme, "worst_error": its error}."""
    errors = {k: v for k, v in emulated.items() if k != "exact"}
    if not errors:
        raise ValueError("no emulated scheme to compare MNN with")
    finite = {k: v for k, v in errors.items() if np.isfinite(v)}
    overflowed = [k for k in errors if k not in finite]
    if overflows_with_mnn is not None:
        overflowed = [k for k in overflowed if k in overflows_with_mnn]
    if not np.isfinite(mnn_error) and overflowed:  # MNN overflows where a float16 sum does
        return {"finding": "as designed", "ratio": 1.0, "worst": overflowed[0], "worst_error": errors[overflowed[0]]}
    if not finite:  # every scheme overflows, MNN not (or elsewhere): nothing finite to measure it by
        worst = next(iter(errors))
        return {"finding": "between", "ratio": float("nan"), "worst": worst, "worst_error": errors[worst]}
    worst = max(finite, key=lambda k: finite[k])
    worst_error = finite[worst]
    if worst_error > 0:
        ratio = mnn_error / worst_error
    else:
        ratio = 1.0 if mnn_error == 0 else float("inf")
    if ratio <= AS_DESIGNED:
        finding = "as designed"
    elif ratio > DEFECT and complete:
        finding = "defect"
    else:
        finding = "between"
    return {"finding": finding, "ratio": ratio, "worst": worst, "worst_error": worst_error}


def shared_overflow(exact: np.ndarray, candidate: np.ndarray, outputs: dict, where: np.ndarray | None = None) -> set:
    """The schemes that are not finite at some compared position where ``candidate`` (MNN's
    output) is not finite either, and ``exact`` is: the overflows that explain MNN's."""
    exact = np.asarray(exact, np.float64)
    candidate = np.asarray(candidate, np.float64).reshape(exact.shape)
    mask = np.isfinite(exact) & ~np.isfinite(candidate)
    if where is not None:
        mask &= where
    return {scheme for scheme, value in outputs.items() if scheme != "exact"
            and np.any(mask & ~np.isfinite(np.asarray(value, np.float64).reshape(exact.shape)))}


def nearest_scheme(candidate: np.ndarray, outputs: dict, where: np.ndarray | None = None) -> tuple[str, float]:
    """The scheme whose output is nearest ``candidate`` (max abs distance over ``where``), and
    that distance: 0 means MNN's kernel adds exactly as that scheme does."""
    candidate = np.asarray(candidate, np.float64)
    best = None
    for scheme, value in outputs.items():
        if scheme == "exact":
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            distance = np.abs(np.asarray(value, np.float64).reshape(candidate.shape) - candidate)
        if where is not None:
            distance = distance[where]
        d = float(distance.max(initial=0.0)) if np.all(np.isfinite(distance)) else float("inf")
        if best is None or d < best[1]:
            best = (scheme, d)
    return best
