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
