"""numpy references for MNN op types, as an MNN file defines them (converter JSON dump).

``check_op`` evaluates the MNN op that produces the diverging tensor, with its type and
parameters from the file and the exact input values MNN computed, and compares three ways:
MNN's kernel, numpy(op) and ONNX Runtime. The JSON dump prints weights with about six
significant digits, so numpy(op) is compared at a relative 1e-4.

Ops without a reference here are reported as such, never guessed.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

_OPS: dict = {}


def op(*names):
    def register(fn):
        for name in names:
            _OPS[name] = fn
        return fn
    return register


def supported() -> list[str]:
    return sorted(_OPS)


# -- helpers ---------------------------------------------------------------------------------
def _erf(x):
    try:
        from scipy.special import erf  # noqa: PLC0415

        return erf(x)
    except ImportError:
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def _act(y, relu=False, relu6=False):
    if relu6:
        return np.clip(y, 0, 6)
    if relu:
        return np.maximum(y, 0)
    return y


def _pads(common, spatial_in, kernel, stride, dilate):
    """(top, left, bottom, right) for MNN's padMode."""
    mode = common.get("padMode", "CAFFE")
    if mode == "SAME":
        pads = []
        for size, k, s, d in zip(spatial_in, kernel, stride, dilate):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads[0][0], pads[1][0], pads[0][1], pads[1][1]
    if mode == "VALID":
        return 0, 0, 0, 0
    p = common.get("pads")
    if p and len(p) == 4:
        return p[0], p[1], p[2], p[3]
    return common.get("padY", 0), common.get("padX", 0), common.get("padY", 0), common.get("padX", 0)


def _conv2d(x, w, b, stride, dilate, pads, group):
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - (kh - 1) * dilate[0] - 1) // stride[0] + 1
    ow = (wd + left + right - (kw - 1) * dilate[1] - 1) // stride[1] + 1
    out = np.zeros((n, oc, oh, ow), np.float64)
    ocg = oc // group
    for g in range(group):
        xs = xp[:, g * icg:(g + 1) * icg]
        ws = w[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilate[0]: i * dilate[0] + stride[0] * (oh - 1) + 1: stride[0],
                           j * dilate[1]: j * dilate[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out


# -- op references ---------------------------------------------------------------------------
@op("Convolution", "ConvolutionDepthwise")
def _convolution(main, inputs, op_type):
    common = main["common"]
    x = inputs[0].astype(np.float64)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, :, None, :]
    group = common.get("group", 1)
    oc = common.get("outputCount")
    kh, kw = common.get("kernelY", 1), common.get("kernelX", 1)
    if main.get("weight"):
        w = np.asarray(main["weight"], np.float64)
        if op_type == "ConvolutionDepthwise":
            group = oc
        w = w.reshape(oc, -1, kh, kw)
    elif len(inputs) > 1:
        w = inputs[1].astype(np.float64)
    else:
        raise NotImplementedError("convolution weights are neither in the op nor an input")
    b = main.get("bias") or (inputs[2] if len(inputs) > 2 else None)
    stride = (common.get("strideY", 1), common.get("strideX", 1))
    dilate = (common.get("dilateY", 1), common.get("dilateX", 1))
    pads = _pads(common, x.shape[2:], (kh, kw), stride, dilate)
    y = _conv2d(x, w, b, stride, dilate, pads, group)
    y = _act(y, common.get("relu", False), common.get("relu6", False))
    return y[:, :, 0, :] if squeeze else y


@op("Pooling")
def _pooling(main, inputs, _):
    x = inputs[0].astype(np.float64)
    if main.get("isGlobal"):
        reduce = np.max if main.get("type") == "MAXPOOL" else np.mean
        return reduce(x, axis=(2, 3), keepdims=True)
    kh, kw = main.get("kernelY", 1), main.get("kernelX", 1)
    sh, sw = main.get("strideY", 1), main.get("strideX", 1)
    common = {"padMode": main.get("padType", "CAFFE"), "pads": main.get("pads"),
              "padX": main.get("padX", 0), "padY": main.get("padY", 0)}
    top, left, bottom, right = _pads(common, x.shape[2:], (kh, kw), (sh, sw), (1, 1))
    n, c, h, w = x.shape

    def out_size(size, k, s, p0, p1):
        span = size + p0 + p1 - k
        return (-(-span // s) if main.get("ceilModel") else span // s) + 1

    oh, ow = out_size(h, kh, sh, top, bottom), out_size(w, kw, sw, left, right)
    is_max = main.get("type") == "MAXPOOL"
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * sh - top, j * sw - left
            y1, x1 = y0 + kh, x0 + kw
            window = x[:, :, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
            if window.size == 0:  # a window wholly in the padding (ceil mode): no value
                out[:, :, i, j] = np.nan
                continue
            if is_max:
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                # MNN's DEFAULT counts only the input, as ONNX's count_include_pad=0 (which
                # converts to DEFAULT; measured against MNN 3.6.1's kernel and ONNX Runtime)
                if main.get("countType", "DEFAULT") != "INCLUDE_PADDING":
                    count = window.shape[2] * window.shape[3]
                else:  # padded area inside the input plus explicit pads counts
                    count = (min(y1, h + bottom) - y0) * (min(x1, w + right) - x0)
                out[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return out


@op("Pooling3D")
def _pooling3d(main, inputs, _):
    """What MNN 3.6's converter makes of ONNX GlobalAveragePool and GlobalMaxPool (any size)."""
    if not main.get("isGlobal"):
        raise NotImplementedError("Pooling3D with a window")
    x = inputs[0].astype(np.float64)
    reduce = np.max if main.get("type") == "MAXPOOL" else np.mean
    return reduce(x, axis=tuple(range(2, x.ndim)), keepdims=True)


_BINARY = {
    "ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide, "REALDIV": np.divide,
    "MAX_TEMP": np.maximum, "MIN_TEMP": np.minimum, "MAXIMUM": np.maximum, "MINIMUM": np.minimum,
    "POW": np.power, "GREATER": np.greater, "GREATER_EQUAL": np.greater_equal, "LESS": np.less,
    "LESS_EQUAL": np.less_equal, "EQUAL": np.equal, "NOTEQUAL": np.not_equal,
    "FLOORDIV": lambda a, b: np.floor(a / b), "FLOORMOD": lambda a, b: a - np.floor(a / b) * b,
    "SquaredDifference": lambda a, b: (a - b) ** 2, "ATAN2": np.arctan2,
    "MOD": np.fmod, "LOGICALOR": np.logical_or, "LOGICALXOR": np.logical_xor,
    "BITWISE_AND": np.bitwise_and, "BITWISE_OR": np.bitwise_or, "BITWISE_XOR": np.bitwise_xor,
}


@op("BinaryOp")
def _binary(main, inputs, _):
    name = main.get("opType", "ADD")
    if name not in _BINARY:
        raise NotImplementedError(f"BinaryOp {name}")
    a, b = inputs[0], inputs[1]
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        a, b = a.astype(np.float64), b.astype(np.float64)
    y = _BINARY[name](a, b)
    return np.maximum(y, 0) if main.get("activationType") == 1 else y


_UNARY = {
    "ABS": np.abs, "NEG": np.negative, "FLOOR": np.floor, "CEIL": np.ceil, "SQUARE": np.square,
    "SQRT": np.sqrt, "RSQRT": lambda x: 1 / np.sqrt(x), "EXP": np.exp, "LOG": np.log,
    "SIN": np.sin, "COS": np.cos, "TAN": np.tan, "ASIN": np.arcsin, "ACOS": np.arccos,
    "ATAN": np.arctan, "RECIPROCAL": lambda x: 1 / x, "LOG1P": np.log1p, "ACOSH": np.arccosh,
    "SINH": np.sinh, "ASINH": np.arcsinh, "ATANH": np.arctanh, "SIGN": np.sign,
    "ROUND": np.round, "COSH": np.cosh, "EXPM1": np.expm1, "SIGMOID": lambda x: 1 / (1 + np.exp(-x)),
    "TANH": np.tanh, "ERF": _erf, "ERFC": lambda x: 1 - _erf(x),
    "HARDSWISH": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "GELU": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "GELU_STANDARD": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "SILU": lambda x: x / (1 + np.exp(-x)),
    "BNLL": lambda x: np.log1p(np.exp(x)),
}


@op("UnaryOp")
def _unary(main, inputs, _):
    name = main.get("opType", "ABS")
    if name not in _UNARY:
        raise NotImplementedError(f"UnaryOp {name}")
    return _UNARY[name](inputs[0].astype(np.float64))


@op("Eltwise")
def _eltwise(main, inputs, _):
    kind = main.get("type", "SUM")
    xs = [i.astype(np.float64) for i in inputs]
    coeff = main.get("coeff") or []
    if kind == "SUM":
        if coeff:
            return sum(c * x for c, x in zip(coeff, xs))
        return sum(xs)
    if kind == "PROD":
        return np.prod(np.stack(np.broadcast_arrays(*xs)), axis=0)
    if kind == "MAXIMUM":
        return np.max(np.stack(np.broadcast_arrays(*xs)), axis=0)
    if kind == "SUB":
        return xs[0] - xs[1]
    raise NotImplementedError(f"Eltwise {kind}")


@op("ReLU")
def _relu(main, inputs, _):
    x = inputs[0].astype(np.float64)
    slope = (main or {}).get("slope", 0.0)
    return np.where(x > 0, x, x * slope)


@op("ReLU6")
def _relu6(main, inputs, _):
    main = main or {}
    return np.clip(inputs[0].astype(np.float64), main.get("minValue", 0.0), main.get("maxValue", 6.0))


@op("Sigmoid")
def _sigmoid(main, inputs, _):
    return 1 / (1 + np.exp(-inputs[0].astype(np.float64)))


@op("TanH")
def _tanh(main, inputs, _):
    return np.tanh(inputs[0].astype(np.float64))


@op("ELU")
def _elu(main, inputs, _):
    x = inputs[0].astype(np.float64)
    return np.where(x > 0, x, (main or {}).get("alpha", 1.0) * np.expm1(x))


@op("PReLU")
def _prelu(main, inputs, _):
    x = inputs[0].astype(np.float64)
    slope = np.asarray(main.get("slope", [0.0]), np.float64)
    shape = [1] * x.ndim
    if slope.size > 1:
        shape[1] = slope.size
    return np.where(x > 0, x, x * slope.reshape(shape))


@op("Softmax")
def _softmax(main, inputs, _):
    x = inputs[0].astype(np.float64)
    axis = (main or {}).get("axis", -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_REDUCE = {
    "SUM": np.sum, "MEAN": np.mean, "MAXIMUM": np.max, "MINIMUM": np.min, "PROD": np.prod,
    "ASUM": lambda x, axis, keepdims: np.abs(x).sum(axis=axis, keepdims=keepdims),
    "SUMSQ": lambda x, axis, keepdims: (x * x).sum(axis=axis, keepdims=keepdims),
    "ANY": np.any, "ALL": np.all,
}


@op("Reduction")
def _reduction(main, inputs, _):
    x = inputs[0]
    x = x.astype(np.float64) if x.dtype.kind == "f" else x
    dims = main.get("dim")
    if dims is None and len(inputs) > 1:
        dims = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    axis = tuple(dims) if dims else None
    name = main.get("operation", "SUM")
    if name not in _REDUCE:
        raise NotImplementedError(f"Reduction {name}")
    return _REDUCE[name](x, axis=axis, keepdims=bool(main.get("keepDims", False)))


@op("ArgMax", "ArgMin")
def _argmax(main, inputs, op_type):
    x = inputs[0]
    axis = (main or {}).get("axis", 0)
    fn = np.argmax if op_type == "ArgMax" else np.argmin
    return fn(x, axis=axis)


_DT = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_UINT8": np.uint8,
       "DT_INT8": np.int8, "DT_DOUBLE": np.float64, "DT_BOOL": np.int32}


@op("Cast")
def _cast(main, inputs, _):
    dst = (main or {}).get("dstT", "DT_FLOAT")
    x = inputs[0]
    if dst in ("DT_INT32", "DT_INT64", "DT_INT8", "DT_UINT8") and x.dtype.kind == "f":
        x = np.trunc(x)
    return x.astype(_DT.get(dst, np.float32))


@op("Permute")
def _permute(main, inputs, _):
    return np.transpose(inputs[0], main["dims"])


@op("Transpose")
def _transpose(main, inputs, _):
    return np.transpose(inputs[0], [int(d) for d in np.asarray(inputs[1]).reshape(-1)])


@op("Reshape")
def _reshape(main, inputs, _):
    shape = main.get("dims") if main else None
    if len(inputs) > 1:
        shape = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    shape = [inputs[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return inputs[0].reshape(shape)


@op("Concat")
def _concat(main, inputs, _):
    return np.concatenate(inputs, axis=(main or {}).get("axis", 0))


@op("GatherV2", "Gather")
def _gather(main, inputs, _):
    axis = 0
    if len(inputs) > 2:
        axis = int(np.asarray(inputs[2]).reshape(-1)[0])
    elif main and "axis" in main:
        axis = main["axis"]
    return np.take(inputs[0], inputs[1].astype(np.int64), axis=axis)


@op("MatMul")
def _matmul(main, inputs, _):
    a, b = inputs[0].astype(np.float64), inputs[1].astype(np.float64)
    if main.get("transposeA"):
        a = np.swapaxes(a, -1, -2)
    if main.get("transposeB"):
        b = np.swapaxes(b, -1, -2)
    y = a @ b
    if len(inputs) > 2:
        y = y + inputs[2]
    return y


@op("InnerProduct")
def _inner_product(main, inputs, _):
    x = inputs[0].astype(np.float64).reshape(inputs[0].shape[0], -1)
    w = np.asarray(main["weight"], np.float64).reshape(main["outputCount"], -1)
    y = x @ w.T
    if main.get("biasTerm") and main.get("bias"):
        y = y + np.asarray(main["bias"])
    return y


@op("LayerNorm")
def _layer_norm(main, inputs, _):
    x = inputs[0].astype(np.float64)
    axes = tuple(main.get("axis", [-1]))
    eps = main.get("epsilon", 1e-5)
    if main.get("useRMSNorm"):
        y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    else:
        mean = x.mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    if main.get("gamma"):
        tail = x.shape[-len(axes):]
        y = y * np.asarray(main["gamma"]).reshape(tail)
        if main.get("beta"):
            y = y + np.asarray(main["beta"]).reshape(tail)
    return y


def _onnx_reference(op_type: str, inputs: list, attributes: dict, opset: int, n_outputs: int = 1):
    """Evaluate one ONNX op with onnx's own numpy reference implementation."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if x is not None else "" for k, x in enumerate(inputs)]
    node = helper.make_node(op_type, names, [f"o{k}" for k in range(n_outputs)], **attributes)
    graph = helper.make_graph(
        [node], "ref",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), None)
         for n, x in zip(names, inputs) if n],
        [helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None) for k in range(n_outputs)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: x for n, x in zip(names, inputs) if n}
    return ReferenceEvaluator(model).run(None, feeds)[0]


_INTERP_MODES = {1: ("nearest", "floor"), 2: ("linear", None), 3: ("cubic", None),
                 4: ("nearest", "round_prefer_floor")}
_CTM = {"HalfPixels": "half_pixel", "AlignCorners": "align_corners", "Asymmetric": "asymmetric",
        "PytorchHalfPixels": "pytorch_half_pixel", "TensorflowHalfPixels": "tf_half_pixel_for_nn",
        "TensorflowCropAndResize": "tf_crop_and_resize", "NotSet": None}


@op("Interp")
def _interp(main, inputs, _):
    """MNN's Interp, through ONNX Resize semantics for the same mode, coordinate transform
    and cubic coefficient (what MNN's parameters say, nothing more)."""
    x = inputs[0].astype(np.float32)
    mode, nearest = _INTERP_MODES.get(main.get("resizeType", 1), ("nearest", "floor"))
    ctm = _CTM.get(main.get("ctm", "NotSet"))
    if ctm is None:
        ctm = "align_corners" if main.get("alignCorners") else "half_pixel" if main.get("halfPixelCenters") else "asymmetric"
    attributes = {"mode": mode, "coordinate_transformation_mode": ctm,
                  "cubic_coeff_a": float(main.get("cubicCoeffA", -0.75))}
    if nearest:
        attributes["nearest_mode"] = nearest
    shape = None
    if main.get("outputHeight") and main.get("outputWidth"):
        shape = [x.shape[0], x.shape[1], main["outputHeight"], main["outputWidth"]]
    elif len(inputs) > 1 and inputs[1] is not None:
        extra = np.asarray(inputs[1]).reshape(-1)
        if extra.dtype.kind == "f" and extra.size == x.ndim:
            scales = extra.astype(np.float32)
            return _onnx_reference("Resize", [x, None, scales], attributes, 19)
        if extra.dtype.kind in "iu":
            shape = [int(v) for v in extra][-x.ndim:] if extra.size >= x.ndim else \
                list(x.shape[: x.ndim - extra.size]) + [int(v) for v in extra]
        elif extra.size == 2:  # MNN's (height, width) scales
            scales = np.array([1, 1, *extra], np.float32)
            return _onnx_reference("Resize", [x, None, scales], attributes, 19)
    if shape is None:
        scales = np.array([1, 1, main.get("heightScale") or 1, main.get("widthScale") or 1], np.float32)
        return _onnx_reference("Resize", [x, None, scales], attributes, 19)
    return _onnx_reference("Resize", [x, None, None, np.array(shape, np.int64)], attributes, 19)


@op("GridSample")
def _grid_sample(main, inputs, _):
    mode = {"BILINEAR": "linear", "NEAREST": "nearest", "BICUBIC": "cubic"}.get(main.get("mode", "BILINEAR"), "linear")
    # MNN's BorderMode calls ONNX's "border" CLAMP (its dump of padding_mode="border")
    padding = {"ZEROS": "zeros", "CLAMP": "border", "BORDER": "border", "REFLECTION": "reflection"}.get(
        main.get("paddingMode", "ZEROS"))
    if padding is None:
        raise NotImplementedError(f"GridSample paddingMode {main.get('paddingMode')}")
    return _onnx_reference("GridSample", [inputs[0].astype(np.float32), inputs[1].astype(np.float32)],
                           {"mode": mode, "padding_mode": padding, "align_corners": int(bool(main.get("alignCorners")))}, 20)


def _axes(main, inputs) -> list[int] | None:
    """Squeeze/Unsqueeze axes: the op's squeezeDims, or its second input (ONNX opset 13+)."""
    if main.get("squeezeDims"):
        return [int(d) for d in main["squeezeDims"]]
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    return None


@op("Squeeze")
def _squeeze(main, inputs, _):
    x = inputs[0]
    axes = _axes(main, inputs)
    if not axes:
        return x.reshape([d for d in x.shape if d != 1])
    return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


@op("Unsqueeze")
def _unsqueeze(main, inputs, _):
    x = inputs[0]
    axes = _axes(main, inputs) or []
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


@op("Flatten")
def _flatten(main, inputs, _):
    """ONNX's Flatten converts to axis=A, endAxis=0: (prod(dims[:A]), prod(dims[A:])); any other
    endAxis collapses dims axis..endAxis (Caffe's Flatten)."""
    x = inputs[0]
    axis, end = main.get("axis", 1), main.get("endAxis", 0)
    axis += x.ndim if axis < 0 else 0
    if end == 0:
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    end %= x.ndim
    return x.reshape(*x.shape[:axis], -1, *x.shape[end + 1:])


@op("ConvertTensor")
def _same_values(main, inputs, _):
    return inputs[0]  # a layout change only: parity reads every tensor as NCHW


_VALUE_PRESERVING = {"ConvertTensor", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Copy"}

# -- the experiment --------------------------------------------------------------------------
def _const_value(op_json):
    main = op_json.get("main") or {}
    for key, dtype in (("float32s", np.float32), ("int32s", np.int32), ("int64s", np.int64),
                       ("uint8s", np.uint8)):
        if key in main:
            array = np.asarray(main[key], dtype)
            dims = main.get("dims")
            return array.reshape(dims) if dims else array.reshape(())
    return None


def evaluate(op_json: dict, inputs: list) -> np.ndarray:
    fn = _OPS.get(op_json["type"])
    if fn is None:
        raise NotImplementedError(op_json["type"])
    return np.asarray(fn(op_json.get("main") or {}, inputs, op_json["type"]))


def _scaled(a, b) -> float:
    if a.size != b.size:
        return math.inf
    a = a.astype(np.float64).reshape(-1)
    b = b.astype(np.float64).reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):  # inf on both sides: nan, never a warning on stderr
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if a.size else 0.0


# ONNX attribute -> words of the MNN parameters that carry it (beyond the same name)
_ALIASES = {
    "mode": ("resizetype", "type", "mode", "operation"), "countincludepad": ("counttype",),
    "ceilmode": ("ceilmodel",), "autopad": ("padmode", "padtype"), "kernelshape": ("kernel",),
    "strides": ("stride",), "dilations": ("dilate",), "pads": ("pad",),
    "coordinatetransformationmode": ("ctm", "halfpixel", "aligncorners"), "axes": ("dim", "axis"),
    "axis": ("axis", "dim"), "alpha": ("alpha", "slope"), "perm": ("dims",), "to": ("dstt",),
    "fmod": ("optype",), "transa": ("transposea",), "transb": ("transposeb",),
    "keepdims": ("keepdims",), "direction": ("isbidirectional", "direction"),
}


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _flat_params(value, prefix="") -> dict:
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flat_params(v, k))
    elif prefix:
        out[prefix] = value
    return out


def _same_axis(given, default, rank: int | None) -> bool:
    """Whether two axis values name one axis of a tensor of ``rank`` (axis=1 of a rank-2 input
    is TopK's default -1)."""
    if rank is None or not all(isinstance(v, int) and -rank <= v < rank for v in (given, default)):
        return False
    return given % rank == default % rank


def dropped_attributes(graph, value_name: str, op_json: dict, rank_of=None) -> dict | None:
    """When no numpy reference exists: ONNX attributes set to a non-default value that the
    converted MNN op has no parameter for. A setting with nowhere to go in the converted op is
    evidence the conversion lost it (e.g. Resize antialias, ArgMax select_last_index).
    ``rank_of(name)``: the rank of a value (None: unknown), for an axis given another way than
    its default but naming the same axis, which needs no parameter."""
    import onnx
    from onnx import helper

    value = graph.producer.get(value_name)
    if value is None:
        return None
    node = next((n for n in graph.model.graph.node if n.name == value.node_name and value_name in n.output), None)
    if node is None:
        return None
    opset = next((o.version for o in graph.model.opset_import if o.domain in ("", "ai.onnx")), None)
    try:
        schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), node.domain)
    except Exception:
        return None
    params = {_norm(k): v for k, v in _flat_params(op_json.get("main") or {}).items()}
    lost = []
    for attr in node.attribute:
        given = helper.get_attribute_value(attr)
        spec = schema.attributes.get(attr.name)
        if spec is None:
            continue
        default = helper.get_attribute_value(spec.default_value) if spec.default_value.name else None
        if isinstance(given, bytes):
            given = given.decode(errors="replace")
        if isinstance(default, bytes):
            default = default.decode(errors="replace")
        if default is not None and given == default:
            continue
        if attr.name == "axis" and node.input and rank_of is not None and _same_axis(given, default,
                                                                                   rank_of(node.input[0])):
            continue
        key = _norm(attr.name)
        words = (key,) + _ALIASES.get(key, ())
        if any(w in p or (p in w and len(p) >= 3) for w in words for p in params):
            continue
        lost.append(f"{attr.name}={given!r}")
    if not lost:
        return None
    return {"kind": "conversion", "op": op_json["type"], "onnx_op": node.op_type, "dropped": lost,
            "parameters": {k: v for k, v in _flat_params(op_json.get("main") or {}).items()
                           if not isinstance(v, list) or len(v) <= 8},
            "summary": (f"the ONNX {node.op_type} node {node.name!r} sets {', '.join(lost)}, and the converted MNN "
                        f"{op_json['type']} op has no parameter that carries it: the conversion drops it "
                        f"(no numpy reference of MNN {op_json['type']} to confirm by evaluation)"),
            "next_steps": ["avoid the attribute in the export, or report the converter gap with --repro DIR"]}


def load_dump(path) -> dict:
    """MNN's JSON dump as plain lists (mnn_graph.parse_dump_text reads its inf / nan)."""
    from parity.mnn.graph import parse_dump_text

    return parse_dump_text(Path(path).read_text(encoding="utf-8", errors="surrogateescape"))


def _reference_inputs(ctx, probe, op_json, names, producers, inputs) -> tuple[list, list]:
    """The op's inputs as ONNX Runtime computed them: each non-constant MNN input read from
    the ONNX value its name comes from (pairing.mnn_base_name), in MNN's shape, and only when
    it is the same tensor (close to MNN's own value in that shape). Returns (inputs, names of
    the inputs ONNX Runtime has no value for)."""
    from parity.checking.pairing import mnn_base_name

    graph_inputs = set(ctx.graph.inputs)
    result, missing = [], []
    for index, mnn_value in zip(op_json.get("inputIndexes", []), inputs):
        name = names[index]
        producer = producers.get(name)
        if producer is not None and producer["type"] == "Const":
            result.append(mnn_value)
            continue
        if name in graph_inputs:
            result.append(np.asarray(ctx.feeds[name]))
            continue
        base = mnn_base_name(name)
        if base not in ctx.graph.producer:
            missing.append(f"{name} (no ONNX value of that name)")
            continue
        ref = np.asarray(probe.reference_values([base])[base])
        if ref.size != mnn_value.size:
            missing.append(f"{name} (ONNX's {base} has {ref.size} values, MNN's {mnn_value.size})")
            continue
        if _scaled(mnn_value, ref.reshape(mnn_value.shape)) > 0.2:
            # another layout of the same values, or a tensor that only shares the name: feeding it
            # would evaluate the op on the wrong inputs
            missing.append(f"{name} (ONNX's {base} in MNN's shape is not close to it: another layout, or "
                           f"another tensor)")
            continue
        result.append(ref.reshape(mnn_value.shape).astype(mnn_value.dtype, copy=False))
    return result, missing


def _rank_of(ctx, probe, name: str) -> int | None:
    """The rank of an ONNX value as this check's inputs give it (None: not known)."""
    if name in ctx.feeds:
        return int(np.ndim(ctx.feeds[name]))
    try:
        return int(np.ndim(probe.reference_values([name])[name]))
    except Exception:  # a constant, or a value ONNX Runtime cannot return
        return None


def check_op(ctx, probe, workdir: Path) -> dict:
    """Experiment (c) of diagnose: MNN's kernel vs numpy(MNN op) vs ONNX Runtime."""
    layer = probe.layer
    target = layer.candidate_name
    json_path = Path(workdir) / "graph.json"
    ctx.candidate.dump_json(json_path)
    graph = load_dump(json_path)
    names = graph["tensorName"]
    producers = {}
    for entry in graph["oplists"]:
        for index in entry.get("outputIndexes", []):
            producers[names[index]] = entry
    op_json = producers.get(target)
    if op_json is None:
        return {"kind": None, "summary": f"no op produces {target!r} in the MNN graph dump"}
    # Ops that only move values (layout, shape) cannot explain wrong values: the op that made
    # them can. Walk up to it.
    walked = []
    while op_json["type"] in _VALUE_PRESERVING and len(op_json.get("inputIndexes", [])) >= 1:
        source = names[op_json["inputIndexes"][0]]
        upstream = producers.get(source)
        if upstream is None or upstream["type"] in ("Input", "Const"):
            break
        walked.append(op_json["type"])
        target, op_json = source, upstream
    op_type = op_json["type"]
    if op_type not in _OPS:
        dropped = dropped_attributes(ctx.graph, layer.name, op_json, functools.partial(_rank_of, ctx, probe))
        if dropped:
            return dropped
        return {"kind": None, "op": op_type,
                "summary": f"no numpy reference for MNN op type {op_type} (have: {', '.join(supported())})"}
    inputs, captured = [], []
    for index in op_json.get("inputIndexes", []):
        name = names[index]
        producer = producers.get(name)
        if producer is not None and producer["type"] == "Const":
            inputs.append(_const_value(producer))
        else:
            inputs.append(None)
            captured.append(name)
    graph_inputs = set(ctx.graph.inputs)
    wanted = [n for n in captured if n not in graph_inputs] + [target]
    values = dict(ctx.candidate.capture(ctx.feeds, wanted, cache=False).outputs)
    for n in captured:
        if n in graph_inputs:
            values[n] = ctx.feeds[n]
    it = iter(captured)
    inputs = [x if x is not None else np.asarray(values[next(it)]) for x in inputs]
    kernel = np.asarray(values[target])
    onnx_value = np.asarray(probe.reference_values([layer.name])[layer.name])
    if walked and kernel.size == onnx_value.size:
        onnx_value = onnx_value.reshape(kernel.shape)
    # Every comparison is on the same inputs: the kernel against the op evaluated on MNN's own
    # inputs, and the op evaluated on ONNX Runtime's inputs against ONNX Runtime's output.
    # (The op on MNN's inputs against ONNX Runtime's output would blame the op for any error
    # carried in, such as amplified rounding.)
    try:
        expected_by_op = evaluate(op_json, inputs)
        reference_inputs, missing = _reference_inputs(ctx, probe, op_json, names, producers, inputs)
        expected_on_reference = None if missing else evaluate(op_json, reference_inputs)
    except NotImplementedError as exc:
        return {"kind": None, "op": op_type, "summary": f"no numpy reference for MNN {exc}"}
    except Exception as exc:  # parameters this reference does not understand
        return {"kind": None, "op": op_type,
                "summary": f"numpy reference of MNN {op_type} failed: {type(exc).__name__}: {exc}"}
    shapes = {"kernel": list(kernel.shape), "numpy_op": list(expected_by_op.shape),
              "onnxruntime": list(onnx_value.shape)}
    if expected_by_op.size == kernel.size != onnx_value.size:
        return {"kind": "conversion", "op": op_type, "shapes": shapes, "summary": (
            f"the converted MNN op {op_type} {op_json.get('name')!r} produces {tuple(kernel.shape)} where the "
            f"ONNX graph produces {tuple(onnx_value.shape)} at {probe.where}; evaluating the op as the .mnn "
            f"defines it gives MNN's shape, so its parameters mean something else"),
            "next_steps": ["report the converter bug with --repro DIR; the op's parameters are in the evidence"]}
    if expected_by_op.size == onnx_value.size != kernel.size:
        return {"kind": "runtime", "op": op_type, "shapes": shapes, "summary": (
            f"MNN's {op_type} kernel produces {tuple(kernel.shape)} where its own op definition (and ONNX "
            f"Runtime) give {tuple(onnx_value.shape)} at {probe.where}"),
            "next_steps": ["report the kernel bug with --repro DIR"]}
    kernel_vs_op = _scaled(kernel, expected_by_op)
    op_vs_onnx = None if expected_on_reference is None else _scaled(expected_on_reference, onnx_value)
    kernel_vs_onnx = _scaled(kernel, onnx_value)
    params = {k: v for k, v in (op_json.get("main") or {}).items() if not isinstance(v, (list, dict))
              or (isinstance(v, list) and len(v) <= 8)}
    if isinstance((op_json.get("main") or {}).get("common"), dict):
        params = {k: v for k, v in op_json["main"]["common"].items()}
    record = {
        "op": op_type, "mnn_op_name": op_json.get("name"), "parameters": params, "shapes": shapes,
        **({"walked_past": walked} if walked else {}),
        "kernel_vs_numpy_op": kernel_vs_op, "kernel_vs_numpy_op_inputs": "MNN's",
        "numpy_op_vs_onnxruntime": op_vs_onnx, "numpy_op_vs_onnxruntime_inputs": "ONNX Runtime's",
        "kernel_vs_onnxruntime": kernel_vs_onnx,
    }
    if op_vs_onnx is None:
        record.update(kind=None, summary=(
            f"numpy reference of MNN {op_type} is not decisive: ONNX Runtime's values of the op's inputs "
            f"cannot be had for {'; '.join(missing)}, so the op cannot be compared with ONNX Runtime on the "
            f"same inputs (kernel vs op on MNN's inputs {kernel_vs_op:.3g})"))
        return record
    close, far = 1e-4, max(10 * 1e-4, 0.1 * kernel_vs_onnx)
    if kernel_vs_op <= close and op_vs_onnx > far:
        record.update(kind="conversion", summary=(
            f"the converted MNN op {op_type} {op_json.get('name')!r} means something else "
            f"than the ONNX graph at {probe.where}: numpy evaluation of the op as the .mnn defines it "
            f"reproduces MNN's output on MNN's inputs (scaled error {kernel_vs_op:.2g}), and on ONNX "
            f"Runtime's inputs differs from ONNX Runtime's output by {op_vs_onnx:.3g}"),
            next_steps=("report the converter bug with --repro DIR; the op's parameters are in the evidence",))
    elif op_vs_onnx <= max(close, 0.1 * kernel_vs_onnx) and kernel_vs_op > far:
        record.update(kind="runtime", summary=(
            f"MNN's {op_type} kernel computes other numbers than its own op definition at "
            f"{probe.where}: numpy evaluation of the op as the .mnn defines it matches ONNX Runtime on "
            f"ONNX Runtime's inputs (scaled error {op_vs_onnx:.2g}), while on MNN's inputs the kernel is "
            f"off from it by {kernel_vs_op:.3g}"),
            next_steps=("report the kernel bug with --repro DIR",))
    else:
        record.update(kind=None, summary=(
            f"numpy reference of MNN {op_type} is not decisive: kernel vs op {kernel_vs_op:.3g}, "
            f"op vs ONNX Runtime {op_vs_onnx:.3g}"))
    return record
