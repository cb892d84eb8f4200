"""Small ONNX models, one or a few ops each, covering the op types MNN's converter emits: the
isolation property (test_isolation_property.py) runs every layer of each cut alone.

Each builder returns ``(nodes, inputs, outputs, initializers, feeds)``; ``MODELS`` maps a
model's name to its builder. Weights and inputs are seeded, so a model is the same on every
run. Shapes stay small (the whole set runs in well under a minute) except where the size is
the point: GlobalAveragePool on 64x64 and 112x112, which MNN converts to ``Pooling3D``.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


class _Net:
    """A graph under construction: ``op`` adds a node and names its output."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.feeds = [], [], [], {}
        self._count = 0

    def input(self, name, shape, dtype=np.float32, values=None):
        elem = {np.float32: F, np.int64: TensorProto.INT64}[dtype]
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        self.feeds[name] = (values if values is not None
                            else self.rng.standard_normal(shape).astype(np.float32))
        return name

    def const(self, array, name=None):
        self._count += 1
        name = name or f"c{self._count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type, inputs, outputs=1, name=None, **attrs):
        self._count += 1
        outs = [f"{(name or op_type).lower()}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self._count}", **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x, cin, cout, k=3, group=1, **attrs):
        attrs.setdefault("pads", [k // 2] * 4)
        w = self.weight(cout, cin // group, k, k)
        b = self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32))
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], group=group, **attrs)

    def done(self, *outputs):
        return self.nodes, self.inputs, list(outputs), self.inits, self.feeds


def _image(seed, c=4, h=16, w=None):
    net = _Net(seed)
    return net, net.input("x", [1, c, h, w or h])


# -- convolutions --------------------------------------------------------------------------
def conv_plain():
    net, x = _image(1)
    return net.done(net.op("Relu", [net.conv(x, 4, 8)]))


def conv_grouped():
    net, x = _image(2, c=8)
    return net.done(net.conv(x, 8, 8, group=2))


def conv_depthwise():
    net, x = _image(3, c=8)
    return net.done(net.op("Clip", [net.conv(x, 8, 8, group=8), net.const(np.float32(0)),
                                    net.const(np.float32(6))]))


def conv_dilated():
    net, x = _image(4)
    return net.done(net.conv(x, 4, 8, dilations=[2, 2], pads=[2, 2, 2, 2]))


def conv_strided_padded():
    net, x = _image(5, h=17)
    return net.done(net.conv(x, 4, 8, k=5, strides=[2, 2], pads=[1, 2, 2, 1]))


def conv_1x1_chain():
    net, x = _image(6)
    y = net.conv(x, 4, 16, k=1)
    y = net.op("Sigmoid", [y])
    return net.done(net.conv(y, 16, 4, k=1))


def conv_transpose():
    net, x = _image(7, h=8)
    w = net.weight(4, 6, 3, 3)
    y = net.op("ConvTranspose", [x, w], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               output_padding=[1, 1])
    return net.done(net.op("Relu", [y]))


def conv1d():
    net = _Net(8)
    x = net.input("x", [1, 4, 32])
    w = net.weight(6, 4, 3)
    return net.done(net.op("Conv", [x, w], kernel_shape=[3], pads=[1, 1]))


def conv_bn_relu():
    net, x = _image(9)
    y = net.conv(x, 4, 8)
    c = 8
    bn = net.op("BatchNormalization", [y, net.const(net.rng.uniform(0.5, 1.5, c).astype(np.float32)),
                                       net.const(net.rng.standard_normal(c).astype(np.float32)),
                                       net.const(net.rng.standard_normal(c).astype(np.float32) * 0.1),
                                       net.const(net.rng.uniform(0.5, 2, c).astype(np.float32))])
    return net.done(net.op("Relu", [bn]))


def batchnorm_alone():
    net, x = _image(10)
    c = 4
    bn = net.op("BatchNormalization", [x, net.const(net.rng.uniform(0.5, 1.5, c).astype(np.float32)),
                                       net.const(net.rng.standard_normal(c).astype(np.float32)),
                                       net.const(net.rng.standard_normal(c).astype(np.float32) * 0.1),
                                       net.const(net.rng.uniform(0.5, 2, c).astype(np.float32))])
    return net.done(net.op("Tanh", [bn]))


# -- pooling ---------------------------------------------------------------------------------
def maxpool():
    net, x = _image(11)
    y = net.op("MaxPool", [net.conv(x, 4, 8)], kernel_shape=[2, 2], strides=[2, 2])
    return net.done(net.op("MaxPool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]))


def avgpool():
    net, x = _image(12)
    y = net.op("AveragePool", [net.conv(x, 4, 8)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=0)
    return net.done(net.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2]))


def _gap(seed, size, channels=8):
    net, x = _image(seed, c=3, h=size)
    y = net.op("Relu", [net.conv(x, 3, channels)])
    return net, net.op("GlobalAveragePool", [y])


def gap_7():
    net, g = _gap(13, 7)
    return net.done(net.op("Flatten", [g]))


def gap_64():
    net, g = _gap(14, 64)
    return net.done(net.conv(g, 8, 4, k=1))


def gap_112():
    net, g = _gap(15, 112)
    return net.done(net.op("Flatten", [g]))


def gap_on_input_112():
    net, x = _image(16, c=4, h=112)
    return net.done(net.op("Sigmoid", [net.op("GlobalAveragePool", [x])]))


def global_maxpool_64():
    net, x = _image(17, c=3, h=64)
    y = net.op("Relu", [net.conv(x, 3, 8)])
    return net.done(net.op("GlobalMaxPool", [y]))


def se_block_112():
    """Squeeze-excitation: GlobalAveragePool on 112x112, two 1x1 convs, a sigmoid gate."""
    net, x = _image(18, c=3, h=112)
    y = net.op("Relu", [net.conv(x, 3, 8)])
    s = net.op("GlobalAveragePool", [y])
    s = net.op("Relu", [net.conv(s, 8, 4, k=1)])
    s = net.op("Sigmoid", [net.conv(s, 4, 8, k=1)])
    return net.done(net.op("Mul", [y, s]))


def se_block_7_residual():
    net, x = _image(19, c=8, h=7)
    s = net.op("GlobalAveragePool", [x])
    s = net.op("HardSigmoid", [net.conv(net.op("Relu", [net.conv(s, 8, 2, k=1)]), 2, 8, k=1)])
    return net.done(net.op("Add", [net.op("Mul", [x, s]), x]))


# -- activations and normalisation -----------------------------------------------------------
def activations():
    net, x = _image(20)
    y = net.conv(x, 4, 8)
    a = net.op("Tanh", [y])
    b = net.op("Sigmoid", [y])
    c = net.op("LeakyRelu", [y], alpha=0.1)
    d = net.op("Elu", [y])
    e = net.op("HardSwish", [y])
    return net.done(net.op("Sum", [a, b, c, d, e]))


def gelu_erf():
    net = _Net(21)
    x = net.input("x", [1, 6, 16])
    h = net.op("MatMul", [x, net.weight(16, 32)])
    half = net.op("Div", [h, net.const(np.float32(np.sqrt(2)))])
    erf = net.op("Add", [net.op("Erf", [half]), net.const(np.float32(1))])
    g = net.op("Mul", [net.op("Mul", [h, erf]), net.const(np.float32(0.5))])
    return net.done(net.op("MatMul", [g, net.weight(32, 8)]))


def softmax_axes():
    net = _Net(22)
    x = net.input("x", [2, 5, 12])
    a = net.op("Softmax", [x], axis=-1)
    b = net.op("Softmax", [net.op("Mul", [x, net.const(np.float32(3))])], axis=1)
    return net.done(net.op("Add", [a, b]))


def layernorm_decomposed():
    """LayerNorm as torch's opset-13 exporter writes it (ReduceMean, Sub, Pow, Sqrt, Div)."""
    net = _Net(23)
    x = net.input("x", [1, 7, 24])
    mean = net.op("ReduceMean", [x], axes=[-1])
    centred = net.op("Sub", [x, mean])
    var = net.op("ReduceMean", [net.op("Pow", [centred, net.const(np.float32(2))])], axes=[-1])
    std = net.op("Sqrt", [net.op("Add", [var, net.const(np.float32(1e-5))])])
    y = net.op("Div", [centred, std])
    y = net.op("Add", [net.op("Mul", [y, net.weight(24, scale=1.0)]), net.weight(24, scale=0.1)])
    return net.done(net.op("MatMul", [y, net.weight(24, 8)]))


def layernorm_op():
    net = _Net(24)
    x = net.input("x", [2, 5, 16])
    y = net.op("LayerNormalization", [x, net.weight(16, scale=1.0), net.weight(16, scale=0.1)], axis=-1)
    return net.done(net.op("Relu", [y]))


def instance_norm():
    net, x = _image(25)
    y = net.op("InstanceNormalization", [net.conv(x, 4, 6), net.weight(6, scale=1.0), net.weight(6, scale=0.1)])
    return net.done(net.op("Relu", [y]))


# -- matrix products -------------------------------------------------------------------------
def matmul_chain():
    net = _Net(26)
    x = net.input("x", [3, 10, 16])
    h = net.op("Add", [net.op("MatMul", [x, net.weight(16, 24)]), net.weight(24, scale=0.1)])
    h = net.op("Relu", [h])
    return net.done(net.op("MatMul", [h, net.weight(24, 8)]))


def gemm():
    net = _Net(27)
    x = net.input("x", [4, 20])
    h = net.op("Gemm", [x, net.weight(12, 20), net.weight(12, scale=0.1)], transB=1)
    h = net.op("Gemm", [net.op("Tanh", [h]), net.weight(12, 6)], alpha=0.5)
    return net.done(h)


def batched_matmul():
    net = _Net(28)
    a = net.input("a", [2, 3, 5, 8])
    b = net.input("b", [2, 3, 8, 4])
    return net.done(net.op("Softmax", [net.op("MatMul", [a, b])], axis=-1))


def attention():
    net = _Net(29)
    x = net.input("x", [1, 6, 16])
    q = net.op("MatMul", [x, net.weight(16, 16)])
    k = net.op("MatMul", [x, net.weight(16, 16)])
    v = net.op("MatMul", [x, net.weight(16, 16)])
    shape = net.const(np.array([1, 6, 2, 8], np.int64))
    heads = [net.op("Transpose", [net.op("Reshape", [t, shape])], perm=[0, 2, 1, 3]) for t in (q, k, v)]
    kt = net.op("Transpose", [heads[1]], perm=[0, 1, 3, 2])
    scores = net.op("Div", [net.op("MatMul", [heads[0], kt]), net.const(np.float32(np.sqrt(8)))])
    probs = net.op("Softmax", [scores], axis=-1)
    ctx = net.op("Transpose", [net.op("MatMul", [probs, heads[2]])], perm=[0, 2, 1, 3])
    ctx = net.op("Reshape", [ctx, net.const(np.array([1, 6, 16], np.int64))])
    return net.done(net.op("MatMul", [ctx, net.weight(16, 16)]))


# -- elementwise with broadcasting -----------------------------------------------------------
def broadcast_arith():
    net, x = _image(30)
    y = net.conv(x, 4, 8)
    a = net.op("Add", [y, net.weight(8, 1, 1)])
    b = net.op("Mul", [a, net.weight(1, 16)])
    c = net.op("Sub", [b, net.op("Abs", [y])])
    d = net.op("Div", [c, net.op("Add", [net.op("Abs", [a]), net.const(np.float32(1))])])
    return net.done(net.op("Max", [d, net.op("Min", [a, b])]))


def unary_math():
    net = _Net(31)
    x = net.input("x", [2, 3, 10])
    pos = net.op("Add", [net.op("Abs", [x]), net.const(np.float32(0.5))])
    a = net.op("Log", [pos])
    b = net.op("Exp", [net.op("Neg", [pos])])
    c = net.op("Reciprocal", [pos])
    d = net.op("Sqrt", [pos])
    e = net.op("Softplus", [x])
    return net.done(net.op("Sum", [a, b, c, d, e]))


def clip_pow():
    net, x = _image(32)
    y = net.op("Clip", [net.conv(x, 4, 4), net.const(np.float32(-0.5)), net.const(np.float32(0.8))])
    return net.done(net.op("Pow", [y, net.const(np.float32(2))]))


# -- shape and data movement -----------------------------------------------------------------
def concat_split():
    net, x = _image(33)
    y = net.conv(x, 4, 8)
    a, b = net.op("Split", [y], outputs=2, axis=1)
    c = net.op("Concat", [net.op("Relu", [a]), net.op("Sigmoid", [b]), x], axis=1)
    return net.done(net.conv(c, 12, 4, k=1))


def slice_transpose():
    net, x = _image(34)
    y = net.conv(x, 4, 8)
    s = net.op("Slice", [y, net.const(np.array([1, 2], np.int64)), net.const(np.array([7, 14], np.int64)),
                         net.const(np.array([1, 2], np.int64)), net.const(np.array([1, 2], np.int64))])
    t = net.op("Transpose", [s], perm=[0, 2, 3, 1])
    return net.done(net.op("Mul", [t, net.weight(6, scale=1.0)]))


def reshape_flatten():
    net, x = _image(35, h=8)
    y = net.op("Relu", [net.conv(x, 4, 8)])
    r = net.op("Reshape", [y, net.const(np.array([1, 8, 64], np.int64))])
    r = net.op("Transpose", [r], perm=[0, 2, 1])
    f = net.op("Flatten", [net.op("MatMul", [r, net.weight(8, 4)])], axis=1)
    return net.done(net.op("Gemm", [f, net.weight(256, 10)]))


def squeeze_unsqueeze():
    net = _Net(36)
    x = net.input("x", [1, 6, 1, 10])
    s = net.op("Squeeze", [x, net.const(np.array([2], np.int64))])
    s = net.op("MatMul", [s, net.weight(10, 10)])
    u = net.op("Unsqueeze", [s, net.const(np.array([1], np.int64))])
    return net.done(net.op("Tanh", [u]))


def resize_nearest_linear():
    net, x = _image(37, h=8)
    y = net.conv(x, 4, 4)
    scales = net.const(np.array([1, 1, 2, 2], np.float32))
    a = net.op("Resize", [y, "", scales], mode="nearest")
    b = net.op("Resize", [y, "", scales], mode="linear")
    return net.done(net.op("Add", [a, b]))


def pad_modes():
    net, x = _image(38, h=8)
    y = net.conv(x, 4, 4)
    a = net.op("Pad", [y, net.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], mode="constant")
    b = net.op("Pad", [y, net.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], mode="reflect")
    return net.done(net.op("Sub", [a, b]))


def reductions():
    net, x = _image(39)
    y = net.conv(x, 4, 6)
    a = net.op("ReduceMean", [y], axes=[2, 3], keepdims=1)
    b = net.op("ReduceSum", [net.op("ReduceMax", [y], axes=[3], keepdims=1), net.const(np.array([2], np.int64))],
               keepdims=1)
    return net.done(net.op("Add", [a, b]))


def reduce_large():
    """ReduceMean over 112x112 (the other way a global pooling is written)."""
    net, x = _image(40, c=3, h=112)
    y = net.op("Relu", [net.conv(x, 3, 8)])
    return net.done(net.op("Sigmoid", [net.op("ReduceMean", [y], axes=[2, 3], keepdims=1)]))


def gather_embedding():
    net = _Net(41)
    ids = net.input("ids", [2, 5], np.int64, values=net.rng.integers(0, 20, (2, 5)).astype(np.int64))
    e = net.op("Gather", [net.weight(20, 12, scale=1.0), ids], axis=0)
    pooled = net.op("ReduceMean", [e], axes=[1], keepdims=0)
    return net.done(net.op("Gemm", [pooled, net.weight(12, 4)]))


def gather_axis1():
    net, x = _image(42)
    y = net.conv(x, 4, 8)
    g = net.op("Gather", [y, net.const(np.array([3, 0, 5], np.int64))], axis=1)
    return net.done(net.op("Relu", [g]))


def depth_to_space():
    net, x = _image(43, h=8)
    y = net.conv(x, 4, 16)
    return net.done(net.op("Sigmoid", [net.op("DepthToSpace", [y], blocksize=2)]))


def mobile_block():
    """An inverted residual: 1x1 expand, depthwise 3x3 stride 2, 1x1 project, as MobileNetV2."""
    net, x = _image(44, c=8, h=32)
    y = net.op("Clip", [net.conv(x, 8, 24, k=1), net.const(np.float32(0)), net.const(np.float32(6))])
    y = net.op("Clip", [net.conv(y, 24, 24, group=24, strides=[2, 2]), net.const(np.float32(0)),
                        net.const(np.float32(6))])
    y = net.conv(y, 24, 8, k=1)
    return net.done(net.op("Flatten", [net.op("GlobalAveragePool", [y])]))


def residual_cnn():
    net, x = _image(45, c=8, h=16)
    y = net.op("Relu", [net.conv(x, 8, 8)])
    y = net.conv(y, 8, 8)
    y = net.op("Relu", [net.op("Add", [x, y])])
    y = net.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    return net.done(net.op("Gemm", [net.op("Flatten", [y]), net.weight(8 * 64, 10)]))


# -- what transformer and LLM exports hold (tests/transformer_models.py, without torch) ------
def rmsnorm_swiglu():
    """RMSNorm then a SwiGLU MLP, as LLaMA-like exports write them (SiLU as x * sigmoid(x))."""
    net = _Net(46)
    x = net.input("x", [1, 6, 16])
    ms = net.op("ReduceMean", [net.op("Pow", [x, net.const(np.float32(2))])], axes=[-1])
    inv = net.op("Reciprocal", [net.op("Sqrt", [net.op("Add", [ms, net.const(np.float32(1e-6))])])])
    h = net.op("Mul", [net.op("Mul", [x, inv]), net.weight(16, scale=1.0)])
    gate = net.op("MatMul", [h, net.weight(16, 32)])
    silu = net.op("Mul", [gate, net.op("Sigmoid", [gate])])
    up = net.op("MatMul", [h, net.weight(16, 32)])
    return net.done(net.op("Add", [x, net.op("MatMul", [net.op("Mul", [silu, up]), net.weight(32, 16)])]))


def rotary():
    """Rotary position embedding: halves swapped with a sign, times cos and sin tables."""
    net = _Net(47)
    x = net.input("x", [1, 2, 6, 8])
    angles = np.arange(6)[:, None] * (1.0 / 100 ** (np.arange(4) / 4))[None, :]
    cos = net.const(np.cos(np.concatenate([angles, angles], -1)).astype(np.float32))
    sin = net.const(np.sin(np.concatenate([angles, angles], -1)).astype(np.float32))
    axis = net.const(np.array([-1], np.int64))
    first = net.op("Slice", [x, net.const(np.array([0], np.int64)), net.const(np.array([4], np.int64)), axis])
    second = net.op("Slice", [x, net.const(np.array([4], np.int64)), net.const(np.array([8], np.int64)), axis])
    rotated = net.op("Concat", [net.op("Neg", [second]), first], axis=-1)
    return net.done(net.op("Add", [net.op("Mul", [x, cos]), net.op("Mul", [rotated, sin])]))


def masked_softmax():
    """An attention mask given as int64 0/1: Cast, Equal, Where, Expand, as exporters write it."""
    net = _Net(48)
    scores = net.input("scores", [2, 2, 5, 5])
    mask = net.input("mask", [2, 5], np.int64, values=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64))
    m = net.op("Unsqueeze", [net.op("Unsqueeze", [mask, net.const(np.array([1], np.int64))]),
                             net.const(np.array([1], np.int64))])
    m = net.op("Expand", [m, net.const(np.array([2, 2, 5, 5], np.int64))])
    hidden = net.op("Equal", [m, net.const(np.int64(0))])
    masked = net.op("Where", [hidden, net.const(np.float32(-1e4)), scores])
    additive = net.op("Mul", [net.op("Sub", [net.const(np.float32(1)), net.op("Cast", [m], to=F)]),
                              net.const(np.float32(-1e4))])
    return net.done(net.op("Softmax", [net.op("Add", [masked, additive])], axis=-1))


def argmax_compare():
    net = _Net(49)
    x = net.input("x", [3, 10])
    h = net.op("MatMul", [x, net.weight(10, 7)])
    best = net.op("ArgMax", [h], axis=-1, keepdims=1)
    below = net.op("Cast", [net.op("Less", [h, net.const(np.float32(0))])], to=F)
    picked = net.op("GatherElements", [h, best], axis=-1)
    return net.done(net.op("Add", [net.op("Mul", [below, h]), picked]))


def expand_tile():
    net = _Net(50)
    x = net.input("x", [1, 3, 1, 4])
    e = net.op("Expand", [x, net.const(np.array([2, 3, 5, 4], np.int64))])
    t = net.op("Tile", [net.op("Tanh", [e]), net.const(np.array([1, 2, 1, 1], np.int64))])
    return net.done(net.op("ReduceSum", [t, net.const(np.array([1], np.int64))], keepdims=0))


def prelu_deconv_depthwise():
    net, x = _image(51, c=8, h=8)
    y = net.op("PRelu", [net.conv(x, 8, 8), net.const(np.full((8, 1, 1), 0.2, np.float32))])
    w = net.weight(8, 1, 4, 4)
    return net.done(net.op("ConvTranspose", [y, w], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1],
                           group=8))


MODELS = {f.__name__: f for f in (
    conv_plain, conv_grouped, conv_depthwise, conv_dilated, conv_strided_padded, conv_1x1_chain,
    conv_transpose, conv1d, conv_bn_relu, batchnorm_alone, maxpool, avgpool, gap_7, gap_64, gap_112,
    gap_on_input_112, global_maxpool_64, se_block_112, se_block_7_residual, activations, gelu_erf,
    softmax_axes, layernorm_decomposed, layernorm_op, instance_norm, matmul_chain, gemm, batched_matmul,
    attention, broadcast_arith, unary_math, clip_pow, concat_split, slice_transpose, reshape_flatten,
    squeeze_unsqueeze, resize_nearest_linear, pad_modes, reductions, reduce_large, gather_embedding,
    gather_axis1, depth_to_space, mobile_block, residual_cnn, rmsnorm_swiglu, rotary, masked_softmax,
    argmax_compare, expand_tile, prelu_deconv_depthwise,
)}


def build(name: str, directory, opset: int = 17):
    """Save model ``name`` as ``directory/name.onnx``; return (path, feeds)."""
    import onnx

    nodes, inputs, outputs, inits, feeds = MODELS[name]()
    graph = helper.make_graph(nodes, name, inputs, [], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # the outputs' types and shapes, as ONNX's shape inference gives them
    known = {v.name: v for v in onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info}
    model.graph.output.extend(known[o] for o in outputs)
    onnx.checker.check_model(model)
    path = directory / f"{name}.onnx"
    onnx.save(model, str(path))
    return path, feeds
