"""Small ONNX models of one op each, for checking parity.mnn.ops' numpy references against
ONNX Runtime (tests/test_op_references.py).

Every case is a few ONNX nodes whose tensors are named locally ("x", "w", "y"); ``combined``
puts all of them, names prefixed with the case id, side by side in one ONNX model so that
MNN's converter runs once for all (independent subgraphs: the converter cannot fold or fuse
across them, since every case starts from graph inputs). Weights are multiples of 1/8, which
MNN's JSON dump prints exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
SEP = "__"


def _rng(seed):
    return np.random.default_rng(seed)


def randn(*shape, seed=0, scale=1.0):
    return (_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def uniform(lo, hi, *shape, seed=0):
    return _rng(seed).uniform(lo, hi, shape).astype(np.float32)


def eighths(*shape, seed=1):
    """Weights exactly representable in the dump's six significant digits."""
    return (_rng(seed).integers(-8, 9, shape) / 8).astype(np.float32)


@dataclass
class Case:
    id: str
    nodes: list  # (op_type, [inputs], [outputs], {attributes}) with local names
    inputs: dict  # local name -> array fed to the model
    consts: dict = field(default_factory=dict)  # local name -> initializer array
    mnn: str = ""  # the MNN op type whose reference this case reaches
    opset: int = OPSET
    # the shape of MNN's op where it is not ONNX's (same values): a 1-D Conv stays 4-D
    shape: tuple | None = None

    def name(self, local: str) -> str:
        return f"{self.id}{SEP}{local}" if local else ""

    @property
    def output(self) -> str:
        return self.name("y")


def _node(case: Case, op_type, inputs, outputs, attrs):
    return helper.make_node(op_type, [case.name(i) for i in inputs], [case.name(o) for o in outputs],
                            name=case.name(outputs[0]), **attrs)


_ELEM = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int64"): TensorProto.INT64,
         np.dtype("int32"): TensorProto.INT32, np.dtype("bool"): TensorProto.BOOL}


def combined(cases, opset: int):
    """One ONNX model holding every case (all of one opset); its outputs are the cases' ``y``."""
    nodes, inputs, outputs, inits = [], [], [], []
    for case in cases:
        nodes += [_node(case, *n) for n in case.nodes]
        inputs += [helper.make_tensor_value_info(case.name(k), _ELEM[v.dtype], list(v.shape))
                   for k, v in case.inputs.items()]
        inits += [numpy_helper.from_array(v, case.name(k)) for k, v in case.consts.items()]
        outputs.append(helper.make_tensor_value_info(case.output, TensorProto.UNDEFINED, None))
    graph = helper.make_graph(nodes, "op_cases", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    # the outputs' types, as ONNX's shape inference gives them (ONNX Runtime needs them)
    done = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    inferred = {v.name: v.type for v in [*done.value_info, *done.output]}
    for output in model.graph.output:
        output.type.CopyFrom(inferred[output.name])
    return model


def feeds(cases) -> dict:
    return {case.name(k): v for case in cases for k, v in case.inputs.items()}


def one(op_type, attrs=None, n_inputs=1, consts=()):
    """The node list of a single op on inputs x0..x(n-1) then the named consts."""
    names = [f"x{k}" for k in range(n_inputs)] + list(consts)
    return [(op_type, names, ["y"], attrs or {})]


def _unary(op_type, x, mnn="UnaryOp", **attrs):
    return dict(nodes=one(op_type, attrs), inputs={"x0": x}, mnn=mnn)


X = randn(2, 3, 5, seed=3)


# -- the cases ---------------------------------------------------------------------------------
def _cases() -> list[Case]:
    c = []

    def add(id_, **kw):
        c.append(Case(id_, **kw))

    img = randn(1, 4, 7, 7, seed=5)
    # Convolution: pads, strides, dilation, groups, depthwise, SAME, 1-D, fused activations
    for id_, attrs, w_shape in [
        ("conv_pad1", {"pads": [1, 1, 1, 1]}, (3, 4, 3, 3)),
        ("conv_stride2_asym_pads", {"strides": [2, 2], "pads": [0, 1, 2, 1]}, (3, 4, 3, 3)),
        ("conv_dilate2", {"dilations": [2, 2]}, (2, 4, 3, 3)),
        ("conv_rect_kernel_stride", {"strides": [1, 2], "pads": [1, 0, 1, 0]}, (2, 4, 3, 2)),
        ("conv_group2", {"group": 2}, (6, 2, 3, 3)),
        ("conv_same_upper", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (3, 4, 3, 3)),
    ]:
        add(id_, nodes=one("Conv", attrs, consts=["w", "b"]), inputs={"x0": img},
            consts={"w": eighths(*w_shape, seed=len(c)), "b": eighths(w_shape[0], seed=50 + len(c))},
            mnn="Convolution")
    add("conv_depthwise", nodes=one("Conv", {"group": 4, "pads": [1, 1, 1, 1]}, consts=["w"]),
        inputs={"x0": img}, consts={"w": eighths(4, 1, 3, 3, seed=11)}, mnn="ConvolutionDepthwise")
    add("conv_1d", nodes=one("Conv", {"pads": [1, 2]}, consts=["w"]), inputs={"x0": randn(1, 4, 9, seed=6)},
        consts={"w": eighths(3, 4, 3, seed=12)}, mnn="Convolution", shape=(1, 3, 10, 1))
    add("conv_relu", nodes=[("Conv", ["x0", "w"], ["c"], {}), ("Relu", ["c"], ["y"], {})],
        inputs={"x0": img}, consts={"w": eighths(3, 4, 3, 3, seed=13)}, mnn="Convolution")
    add("conv_relu6", nodes=[("Conv", ["x0", "w"], ["c"], {}), ("Clip", ["c", "lo", "hi"], ["y"], {})],
        inputs={"x0": img * 4}, consts={"w": eighths(3, 4, 3, 3, seed=14), "lo": np.array(0, np.float32),
                                        "hi": np.array(6, np.float32)}, mnn="Convolution")

    # Pooling
    for id_, op_type, attrs in [
        ("maxpool_2x2_s2", "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("maxpool_3x3_s2_pad1", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("maxpool_ceil", "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ("avgpool_exclude_pad", "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("avgpool_include_pad", "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                                "count_include_pad": 1}),
        ("avgpool_rect", "AveragePool", {"kernel_shape": [2, 3], "strides": [1, 2]}),
        ("avgpool_same_upper", "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ]:
        add(id_, nodes=one(op_type, attrs), inputs={"x0": img}, mnn="Pooling")
    # global pooling converts to Pooling3D, at every size
    add("global_avgpool_7x7", nodes=one("GlobalAveragePool"), inputs={"x0": img}, mnn="Pooling3D")
    add("global_avgpool_64x64", nodes=one("GlobalAveragePool"), inputs={"x0": randn(1, 3, 64, 64, seed=8) + 0.5},
        mnn="Pooling3D")
    add("global_maxpool", nodes=one("GlobalMaxPool"), inputs={"x0": img}, mnn="Pooling3D")

    # BinaryOp, broadcasting both ways
    a, b = randn(2, 3, 4, seed=20), randn(3, 1, seed=21)
    for id_, op_type, x0, x1 in [
        ("add_broadcast", "Add", a, b), ("sub_broadcast", "Sub", b, a), ("mul_broadcast", "Mul", a, b),
        ("div", "Div", a, uniform(0.5, 2, 2, 3, 4, seed=22)), ("pow", "Pow", uniform(0.5, 2, 2, 3, seed=23),
                                                              uniform(-2, 2, 2, 3, seed=24)),
        ("max2", "Max", a, b), ("min2", "Min", a, b),
        ("greater", "Greater", a, b), ("less_equal", "LessOrEqual", a, b),
        ("equal_int", "Equal", np.array([[1, 2, 3]], np.int64), np.array([[1], [3]], np.int64)),
    ]:
        add(id_, nodes=one(op_type, n_inputs=2), inputs={"x0": x0, "x1": x1}, mnn="BinaryOp")
    # non-negative: MNN 3.6.1 converts Mod fmod=1 to FLOORMOD, which differs on negative values
    add("floormod", nodes=one("Mod", {"fmod": 1}, n_inputs=2),
        inputs={"x0": np.abs(a) * 3, "x1": uniform(0.5, 2, 3, 1, seed=25)}, mnn="BinaryOp")

    # UnaryOp
    pos = uniform(0.2, 3, 2, 3, 5, seed=30)
    unit = uniform(-0.9, 0.9, 2, 3, 5, seed=31)
    for id_, op_type, x in [
        ("abs", "Abs", X), ("neg", "Neg", X), ("floor", "Floor", X * 3), ("ceil", "Ceil", X * 3),
        ("sqrt", "Sqrt", pos), ("exp", "Exp", X), ("log", "Log", pos), ("sin", "Sin", X), ("cos", "Cos", X),
        ("tan", "Tan", unit), ("asin", "Asin", unit), ("acos", "Acos", unit), ("atan", "Atan", X),
        ("reciprocal", "Reciprocal", pos), ("sinh", "Sinh", X), ("cosh", "Cosh", X), ("asinh", "Asinh", X),
        ("acosh", "Acosh", pos + 1), ("atanh", "Atanh", unit), ("sign", "Sign", X), ("round", "Round", X * 3),
        ("erf", "Erf", X), ("tanh", "Tanh", X), ("sigmoid", "Sigmoid", X), ("hardswish", "HardSwish", X * 4),
        ("softplus", "Softplus", X),
    ]:
        add(id_, **_unary(op_type, x))
    add("gelu_tanh", **_unary("Gelu", X * 2, approximate="tanh"))

    # activations with their own MNN ops
    add("relu", **_unary("Relu", X, mnn="ReLU"))
    add("leaky_relu", **_unary("LeakyRelu", X, mnn="ReLU", alpha=0.1))
    add("clip_0_6", nodes=one("Clip", consts=["lo", "hi"]), inputs={"x0": X * 5},
        consts={"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, mnn="ReLU6")
    add("clip_other_bounds", nodes=one("Clip", consts=["lo", "hi"]), inputs={"x0": X * 2},
        consts={"lo": np.array(-0.5, np.float32), "hi": np.array(1.25, np.float32)}, mnn="ReLU6")
    add("elu", **_unary("Elu", X, mnn="ELU", alpha=0.5))
    add("softmax_axis1", **_unary("Softmax", X, mnn="Softmax", axis=1))
    add("softmax_last", **_unary("Softmax", X * 3, mnn="Softmax", axis=-1))

    # Reduction
    r = randn(2, 3, 4, seed=40)
    for id_, op_type, attrs, axes in [
        ("reduce_sum_axis1", "ReduceSum", {"keepdims": 0}, [1]),
        ("reduce_mean_keep", "ReduceMean", {"keepdims": 1}, [2]),
        ("reduce_max_two_axes", "ReduceMax", {"keepdims": 0}, [0, 2]),
        ("reduce_min_negative_axis", "ReduceMin", {"keepdims": 1}, [-1]),
        ("reduce_prod", "ReduceProd", {"keepdims": 0}, [1]),
        ("reduce_sum_all", "ReduceSum", {"keepdims": 0}, None),
    ]:
        consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
        add(id_, nodes=one(op_type, attrs, consts=list(consts)), inputs={"x0": r}, consts=consts, mnn="Reduction")
    # axes as attributes (opset 13): MNN 3.6.1 reduces ReduceL1/ReduceSumSquare over every axis
    # when their axes come as an input (the converter bug MNN_NOTES records for ReduceL2)
    add("reduce_l1", nodes=one("ReduceL1", {"keepdims": 1, "axes": [1]}), inputs={"x0": r}, mnn="Reduction", opset=13)
    add("reduce_sum_square", nodes=one("ReduceSumSquare", {"keepdims": 0, "axes": [2]}), inputs={"x0": r},
        mnn="Reduction", opset=13)
    add("sum3", nodes=one("Sum", n_inputs=3), inputs={f"x{k}": randn(2, 3, seed=41 + k) for k in range(3)},
        mnn="Reduction")

    # indices
    add("argmax_axis1", nodes=one("ArgMax", {"axis": 1, "keepdims": 0}), inputs={"x0": r}, mnn="ArgMax")
    add("argmax_last_keep", nodes=one("ArgMax", {"axis": -1, "keepdims": 1}), inputs={"x0": r}, mnn="ArgMax")
    add("argmin_axis2", nodes=one("ArgMin", {"axis": 2, "keepdims": 0}), inputs={"x0": r}, mnn="ArgMin")

    # types, layout and shape
    add("cast_to_int32", nodes=one("Cast", {"to": TensorProto.INT32}), inputs={"x0": X * 10}, mnn="Cast")
    add("cast_to_float", nodes=one("Cast", {"to": TensorProto.FLOAT}),
        inputs={"x0": np.arange(-6, 6, dtype=np.int32).reshape(3, 4)}, mnn="Cast")
    add("transpose", nodes=one("Transpose", {"perm": [2, 0, 1]}), inputs={"x0": r}, mnn="Permute")
    add("transpose_4d", nodes=one("Transpose", {"perm": [0, 2, 3, 1]}), inputs={"x0": img}, mnn="Permute")
    add("reshape_zero_minus1", nodes=one("Reshape", consts=["shape"]), inputs={"x0": r},
        consts={"shape": np.array([0, -1], np.int64)}, mnn="Reshape")
    add("flatten_axis2", nodes=one("Flatten", {"axis": 2}), inputs={"x0": img}, mnn="Flatten")
    add("squeeze", nodes=one("Squeeze", consts=["axes"]), inputs={"x0": randn(2, 1, 4, seed=42)},
        consts={"axes": np.array([1], np.int64)}, mnn="Squeeze")
    add("unsqueeze", nodes=one("Unsqueeze", consts=["axes"]), inputs={"x0": randn(2, 4, seed=43)},
        consts={"axes": np.array([0, 2], np.int64)}, mnn="Unsqueeze")
    add("concat_axis1", nodes=one("Concat", {"axis": 1}, n_inputs=2),
        inputs={"x0": randn(2, 3, 4, seed=44), "x1": randn(2, 2, 4, seed=45)}, mnn="Concat")
    add("concat_negative_axis", nodes=one("Concat", {"axis": -1}, n_inputs=3),
        inputs={f"x{k}": randn(2, 3, k + 1, seed=46 + k) for k in range(3)}, mnn="Concat")
    add("gather_axis0", nodes=one("Gather", {"axis": 0}, n_inputs=2),
        inputs={"x0": randn(5, 3, seed=47), "x1": np.array([[4, 0], [2, 2]], np.int64)}, mnn="GatherV2")
    add("gather_axis1_negative_index", nodes=one("Gather", {"axis": 1}, consts=["i"]),
        inputs={"x0": randn(2, 5, 3, seed=48)}, consts={"i": np.array([-1, 1], np.int64)}, mnn="GatherV2")

    # matrix products and normalisation
    add("matmul_batched", nodes=one("MatMul", n_inputs=2),
        inputs={"x0": randn(2, 3, 4, seed=50), "x1": randn(2, 4, 5, seed=51)}, mnn="MatMul")
    add("matmul_broadcast", nodes=one("MatMul", n_inputs=2),
        inputs={"x0": randn(2, 3, 4, seed=52), "x1": randn(4, 6, seed=53)}, mnn="MatMul")
    add("gemm_transposes", nodes=one("Gemm", {"transA": 1, "transB": 1}, n_inputs=2),
        inputs={"x0": randn(4, 3, seed=54), "x1": randn(5, 4, seed=55)}, mnn="MatMul")
    add("layernorm_last", nodes=one("LayerNormalization", {"axis": -1}, consts=["g", "b"]),
        inputs={"x0": randn(2, 3, 8, seed=56) * 2 + 1}, consts={"g": eighths(8, seed=57), "b": eighths(8, seed=58)},
        mnn="LayerNorm")
    add("layernorm_two_axes", nodes=one("LayerNormalization", {"axis": -2, "epsilon": 1e-3}, consts=["g"]),
        inputs={"x0": randn(2, 3, 4, seed=59)}, consts={"g": eighths(3, 4, seed=60)}, mnn="LayerNorm")

    # resampling
    small = randn(1, 2, 4, 5, seed=61)
    for id_, attrs, scales, sizes in [
        ("resize_linear_half_pixel", {"mode": "linear"}, [1, 1, 2, 2], None),
        ("resize_linear_align_corners", {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
         None, [1, 2, 7, 9]),
        ("resize_nearest_asymmetric", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                       "nearest_mode": "floor"}, [1, 1, 2, 3], None),
        ("resize_nearest_half_pixel", {"mode": "nearest", "nearest_mode": "round_prefer_floor"}, [1, 1, 1.5, 2], None),
        ("resize_cubic", {"mode": "cubic", "cubic_coeff_a": -0.75}, [1, 1, 2, 2], None),
    ]:
        consts = {"roi": np.array([], np.float32)}
        if scales is not None:
            consts["scales"] = np.array(scales, np.float32)
            names = ["roi", "scales"]
        else:
            consts["sizes"] = np.array(sizes, np.int64)
            names = ["roi", "", "sizes"]
        add(id_, nodes=[("Resize", ["x0", *names], ["y"], attrs)], inputs={"x0": small}, consts=consts, mnn="Interp")
    grid = uniform(-1.1, 1.1, 1, 3, 4, 2, seed=62)
    for id_, attrs in [("gridsample_linear_zeros", {"mode": "linear"}),
                       ("gridsample_nearest_border", {"mode": "nearest", "padding_mode": "border"}),
                       ("gridsample_linear_align_corners", {"mode": "linear", "align_corners": 1})]:
        add(id_, nodes=one("GridSample", attrs, n_inputs=2), inputs={"x0": small, "x1": grid}, mnn="GridSample")
    return c


CASES = _cases()


# -- MNN ops the converter does not emit for ONNX models ----------------------------------------
# Each is an op as MNN's JSON dump writes it ({"type", "main"}) evaluated on the inputs of an ONNX
# model that computes the same thing (checked by ONNX Runtime only): MNN files from other
# converters (Caffe, TensorFlow) hold these op types and parameter values.
@dataclass
class HandCase:
    case: Case  # the ONNX side
    op: dict  # the MNN op as dumped
    extra: tuple = ()  # inputs of the MNN op after the ONNX model's (MNN's Transpose takes perm)

    @property
    def id(self):
        return self.case.id


def _hand_cases() -> list[HandCase]:
    h = []

    def add(id_, op_type, main, nodes, inputs, consts=None, extra=()):
        h.append(HandCase(Case(id_, nodes=nodes, inputs=inputs, consts=consts or {}, mnn=op_type),
                          {"type": op_type, "main": main}, extra))

    a, b, c = randn(2, 3, 4, seed=70), randn(2, 3, 4, seed=71), randn(2, 3, 4, seed=72)
    three = {"x0": a, "x1": b, "x2": c}
    add("eltwise_sum", "Eltwise", {"type": "SUM"}, one("Sum", n_inputs=3), three)
    add("eltwise_sum_coeff", "Eltwise", {"type": "SUM", "coeff": [2.0, -0.5]},
        [("Mul", ["x0", "two"], ["p"], {}), ("Mul", ["x1", "half"], ["q"], {}), ("Sub", ["p", "q"], ["y"], {})],
        {"x0": a, "x1": b}, {"two": np.array(2, np.float32), "half": np.array(0.5, np.float32)})
    add("eltwise_prod", "Eltwise", {"type": "PROD"},
        [("Mul", ["x0", "x1"], ["p"], {}), ("Mul", ["p", "x2"], ["y"], {})], three)
    add("eltwise_max", "Eltwise", {"type": "MAXIMUM"}, one("Max", n_inputs=3), three)
    add("eltwise_sub", "Eltwise", {"type": "SUB"}, one("Sub", n_inputs=2), {"x0": a, "x1": b})
    add("tanh_op", "TanH", {}, one("Tanh"), {"x0": a * 2})
    add("sigmoid_op", "Sigmoid", {}, one("Sigmoid"), {"x0": a * 3})
    add("prelu_per_channel", "PReLU", {"slope": [0.25, -0.5, 0.125], "slopeCount": 3},
        one("PRelu", consts=["s"]), {"x0": randn(1, 3, 4, 4, seed=73)},
        {"s": np.array([0.25, -0.5, 0.125], np.float32).reshape(3, 1, 1)})
    add("prelu_shared", "PReLU", {"slope": [0.2], "slopeCount": 1}, one("PRelu", consts=["s"]),
        {"x0": randn(1, 3, 4, 4, seed=74)}, {"s": np.array([0.2], np.float32)})
    w, bias = eighths(5, 12, seed=75), eighths(5, seed=76)
    add("inner_product", "InnerProduct", {"outputCount": 5, "biasTerm": 1, "weightSize": 60,
                                          "weight": w.reshape(-1).tolist(), "bias": bias.tolist()},
        [("Flatten", ["x0"], ["f"], {"axis": 1}), ("Gemm", ["f", "w", "b"], ["y"], {"transB": 1})],
        {"x0": randn(2, 3, 4, seed=77)}, {"w": w, "b": bias})
    add("transpose_op", "Transpose", {}, one("Transpose", {"perm": [1, 2, 0]}), {"x0": a},
        extra=(np.array([1, 2, 0], np.int32),))
    add("gather_op", "Gather", {"axis": 1}, one("Gather", {"axis": 1}, n_inputs=2),
        {"x0": a, "x1": np.array([2, 0, 2], np.int64)})
    img = randn(1, 3, 5, 6, seed=78)
    add("pooling_global_avg", "Pooling", {"isGlobal": True, "type": "AVEPOOL"}, one("GlobalAveragePool"), {"x0": img})
    add("pooling_global_max", "Pooling", {"isGlobal": True, "type": "MAXPOOL"}, one("GlobalMaxPool"), {"x0": img})
    # UnaryOp / BinaryOp / Reduction operations ONNX models do not convert to
    pos = uniform(0.2, 3, 2, 3, 4, seed=79)
    for id_, name, nodes, x in [
        ("unary_bnll", "BNLL", one("Softplus"), a),
        ("unary_erfc", "ERFC", [("Erf", ["x0"], ["e"], {}), ("Sub", ["one", "e"], ["y"], {})], a),
        ("unary_expm1", "EXPM1", [("Exp", ["x0"], ["e"], {}), ("Sub", ["e", "one"], ["y"], {})], a),
        ("unary_log1p", "LOG1P", [("Add", ["x0", "one"], ["e"], {}), ("Log", ["e"], ["y"], {})], pos),
        ("unary_rsqrt", "RSQRT", [("Sqrt", ["x0"], ["e"], {}), ("Reciprocal", ["e"], ["y"], {})], pos),
        ("unary_silu", "SILU", [("Sigmoid", ["x0"], ["e"], {}), ("Mul", ["x0", "e"], ["y"], {})], a),
        ("unary_gelu_standard", "GELU_STANDARD", one("Gelu"), a * 2),
        ("unary_square", "SQUARE", [("Mul", ["x0", "x0"], ["y"], {})], a),
    ]:
        add(id_, "UnaryOp", {"opType": name}, nodes, {"x0": x}, {"one": np.array(1, np.float32)})
    ints = np.array([[5, 6, 12], [-3, 0, 7]], np.int32), np.array([[3, 3, 10], [1, 2, 7]], np.int32)
    bools = np.array([[True, False, True]]), np.array([[True], [False]])
    for id_, name, nodes, x in [
        ("binary_div", "DIV", one("Div", n_inputs=2), (a, uniform(0.5, 2, 2, 3, 4, seed=80))),
        ("binary_floordiv", "FLOORDIV", [("Div", ["x0", "x1"], ["d"], {}), ("Floor", ["d"], ["y"], {})],
         (a * 4, uniform(0.5, 2, 2, 3, 4, seed=81))),
        ("binary_greater_equal", "GREATER_EQUAL", one("GreaterOrEqual", n_inputs=2), (a, np.round(b))),
        ("binary_less", "LESS", one("Less", n_inputs=2), (a, b)),
        ("binary_notequal", "NOTEQUAL", [("Equal", ["x0", "x1"], ["e"], {}), ("Not", ["e"], ["y"], {})], ints),
        ("binary_squared_difference", "SquaredDifference",
         [("Sub", ["x0", "x1"], ["d"], {}), ("Mul", ["d", "d"], ["y"], {})], (a, b)),
        ("binary_max_temp", "MAX_TEMP", one("Max", n_inputs=2), (a, b)),
        ("binary_min_temp", "MIN_TEMP", one("Min", n_inputs=2), (a, b)),
        ("binary_bitwise_and", "BITWISE_AND", one("BitwiseAnd", n_inputs=2), ints),
        ("binary_bitwise_or", "BITWISE_OR", one("BitwiseOr", n_inputs=2), ints),
        ("binary_bitwise_xor", "BITWISE_XOR", one("BitwiseXor", n_inputs=2), ints),
        ("binary_logical_or", "LOGICALOR", one("Or", n_inputs=2), bools),
        ("binary_logical_xor", "LOGICALXOR", one("Xor", n_inputs=2), bools),
    ]:
        add(id_, "BinaryOp", {"opType": name}, nodes, {"x0": x[0], "x1": x[1]})
    flags = np.array([[[1, 0, 1], [1, 1, 1]], [[0, 0, 0], [1, 0, 0]]], np.int32)
    for id_, name, nodes, x in [
        ("reduce_asum", "ASUM", one("ReduceL1", {"keepdims": 0}, consts=["axes"]), a),
        ("reduce_sumsq", "SUMSQ", one("ReduceSumSquare", {"keepdims": 0}, consts=["axes"]), a),
        ("reduce_any", "ANY", one("ReduceMax", {"keepdims": 0}, consts=["axes"]), flags),
        ("reduce_all", "ALL", one("ReduceMin", {"keepdims": 0}, consts=["axes"]), flags),
    ]:
        add(id_, "Reduction", {"operation": name, "dim": [2], "keepDims": False}, nodes, {"x0": x},
            {"axes": np.array([2], np.int64)})
    return h


HAND_CASES = _hand_cases()
