"""Small ONNX models (and their MNN conversions) that float16 arithmetic breaks, for the target
tests: MNN's precision low on arm64 computes them in float16, float32 everywhere else.

- :func:`attention_overflow`: self-attention without the 1/sqrt(d) scale and with large
  projections, so the attention scores reach ~1e5, beyond float16's largest value 65504: in
  float16 they become inf and the softmax rows NaN.
- :func:`exp_saturation`: Exp of values up to ~18 (e^11 > 65504): float16 saturates.
- :func:`cancellation`: the difference of two large, nearly equal products. Every value fits
  float16, yet float16's rounding of the products (about 1e-3 of them) is larger than their
  difference: no range explains that failure.

Generated inputs are standard normal (parity's default), so the magnitudes above hold for any
seed. Built deterministically with onnx.helper (no torch), a few KB each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from helpers import save_model, tensor, to_mnn

DIM, TOKENS = 32, 16


def _weight(name: str, scale: float, shape, seed: int):
    array = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    return numpy_helper.from_array(array, name)


def attention_overflow(directory) -> tuple[Path, Path]:
    directory = Path(directory)
    scale = 100 / np.sqrt(DIM)  # q and k entries ~100, dot products over 32 dims ~6e4, max > 1e5
    inits = [_weight("wq", scale, (DIM, DIM), 1), _weight("wk", scale, (DIM, DIM), 2),
             _weight("wv", 1 / np.sqrt(DIM), (DIM, DIM), 3)]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "v"], ["out"], name="mix"),
    ]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, TOKENS, DIM])], [tensor("out", shape=[1, TOKENS, DIM])],
                           directory / "attention_overflow.onnx", initializers=inits)
    return onnx_path, to_mnn(onnx_path)


def exp_saturation(directory) -> tuple[Path, Path]:
    directory = Path(directory)
    inits = [numpy_helper.from_array(np.array(6.0, dtype=np.float32), "six")]
    nodes = [helper.make_node("Mul", ["x", "six"], ["scaled"], name="scale"),
             helper.make_node("Exp", ["scaled"], ["out"], name="exp")]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 64])], [tensor("out", shape=[1, 64])],
                           directory / "exp_saturation.onnx", initializers=inits)
    return onnx_path, to_mnn(onnx_path)


def cancellation(directory) -> tuple[Path, Path]:
    directory = Path(directory)
    w = np.random.default_rng(4).standard_normal((DIM, DIM)).astype(np.float32) * 300
    w2 = w + np.random.default_rng(5).standard_normal((DIM, DIM)).astype(np.float32) * 0.05
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="big_a"),
             helper.make_node("MatMul", ["x", "w2"], ["b"], name="big_b"),
             helper.make_node("Sub", ["a", "b"], ["out"], name="difference")]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, TOKENS, DIM])], [tensor("out", shape=[1, TOKENS, DIM])],
                           directory / "cancellation.onnx", initializers=inits)
    return onnx_path, to_mnn(onnx_path)


def pooled_classifier(directory, *, seed: int = 6) -> tuple[Path, Path]:
    """The head of MobileNetV2-like classifiers: ReLU6 features (1x1280x7x7), a global average
    pool, Flatten and a Gemm 1280 -> 1000. Pooled features share a large common mean (about
    2.3, spread 0.3) and each class's weights sum to zero (a softmax is shift-invariant): the
    logits (about 1) are small differences of 1280-term sums several times larger, where
    float16 sums lose a few percent of the logits' scale while every value fits float16."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    k, n = 1280, 1000
    w = rng.standard_normal((n, k)) * 0.03  # a trained classifier's scale
    w -= w.mean(axis=1, keepdims=True)
    inits = [numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six"),
             numpy_helper.from_array(w.astype(np.float32), "fc_w"),
             numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Mul", ["x", "three"], ["scaled"], name="scale"),
             helper.make_node("Add", ["scaled", "two"], ["shifted"], name="shift"),
             helper.make_node("Clip", ["shifted", "zero", "six"], ["features"], name="relu6"),
             helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="classifier")]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, k, 7, 7])], [tensor("logits", shape=[1, n])],
                           directory / "pooled_classifier.onnx", initializers=inits)
    return onnx_path, to_mnn(onnx_path)


def squeeze_excitation(directory, *, size: int = 112, channels: int = 16) -> tuple[Path, Path]:
    """A squeeze-excitation block on a 112x112 feature map: Conv+Relu, GlobalAveragePool over
    112x112 (MNN converts it to Pooling3D), Conv+Relu, Conv, Sigmoid, Mul with the features.
    The pool adds 12544 positive values per channel (sums near 8000): a sequential float16
    sum stops growing at 4096, where float16's spacing (4) exceeds twice the values added."""
    directory = Path(directory)
    rng = np.random.default_rng(7)

    def weight(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    squeezed = channels // 4
    inits = [weight("w0", (channels, 3, 3, 3), 0.3), weight("b0", (channels,), 0.1),
             weight("w1", (squeezed, channels, 1, 1), 0.3), weight("b1", (squeezed,), 0.1),
             weight("w2", (channels, squeezed, 1, 1), 0.3), weight("b2", (channels,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["conv"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["conv"], ["features"], name="stem_relu"),
             helper.make_node("GlobalAveragePool", ["features"], ["squeezed"], name="squeeze"),
             helper.make_node("Conv", ["squeezed", "w1", "b1"], ["reduced"], name="reduce"),
             helper.make_node("Relu", ["reduced"], ["reduced_relu"], name="reduce_relu"),
             helper.make_node("Conv", ["reduced_relu", "w2", "b2"], ["expanded"], name="expand"),
             helper.make_node("Sigmoid", ["expanded"], ["gate"], name="gate"),
             helper.make_node("Mul", ["features", "gate"], ["out"], name="excite")]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 3, size, size])],
                           [tensor("out", shape=[1, channels, size, size])],
                           directory / "squeeze_excitation.onnx", initializers=inits)
    return onnx_path, to_mnn(onnx_path)
