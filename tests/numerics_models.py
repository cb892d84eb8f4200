"""Models that amplify float32 rounding, built from code (deterministic, seeded).

Each is correct in ONNX Runtime and in MNN: every layer computes its op to float32 rounding,
but the layers' gains turn last-bit differences into visible ones at the output. They differ in
shape so the numerics verdict is not tuned to one of them:

- ``tanh_chain``: MatMul + Tanh repeated, weights N(0, gain^2 / width) (gain > 1 is chaotic);
- ``residual_mlp``: x + W2 relu(W1 x) repeated, without normalisation (a real network's block,
  minus the LayerNorm that would keep it stable), then a tanh readout;
- ``recurrent``: an Elman cell h = tanh(W h + U x_t + b) unrolled over time steps, with the
  recurrent weights' spectral radius above one (chaotic), as a sequence model exports.

``with_weight_change`` rebuilds any of them with one weight tensor scaled by (1 + change): a
real bug planted in one layer, to be told apart from amplified rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inputs, outputs, inits, path) -> Path:
    graph = helper.make_graph(nodes, Path(path).stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def _matrix(rng, rows, cols, gain):
    return (rng.standard_normal((rows, cols)) * gain / np.sqrt(rows)).astype(np.float32)


def tanh_chain(path, *, depth=40, width=64, gain=3.0, seed=0, change=None) -> Path:
    """``change=(layer, factor)`` scales that layer's weights by ``1 + factor``."""
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "x"
    for i in range(depth):
        w = _matrix(rng, width, width, gain)
        if change is not None and change[0] == i:
            w = (w * (1 + change[1])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"], name=f"layer{i}/MatMul"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"layer{i}/Tanh"))
        previous = f"t{i}"
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                 [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, width])], inits, path)


def residual_mlp(path, *, depth=24, width=48, hidden=96, gain=1.6, seed=1, act="Relu", change=None) -> Path:
    """Residual blocks x + W2 act(W1 x + b1), no normalisation; a tanh readout at the end
    keeps the output bounded while the residual stream grows and mixes."""
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "x"
    for i in range(depth):
        w1 = _matrix(rng, width, hidden, gain)
        w2 = _matrix(rng, hidden, width, gain)
        if change is not None and change[0] == i:
            w1 = (w1 * (1 + change[1])).astype(np.float32)
        b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w1, f"block{i}.w1"), numpy_helper.from_array(w2, f"block{i}.w2"),
                  numpy_helper.from_array(b1, f"block{i}.b1")]
        p = f"/block{i}"
        nodes += [
            helper.make_node("MatMul", [previous, f"block{i}.w1"], [f"{p}/fc1"], name=f"{p}/fc1/MatMul"),
            helper.make_node("Add", [f"{p}/fc1", f"block{i}.b1"], [f"{p}/fc1b"], name=f"{p}/fc1/Add"),
            helper.make_node(act, [f"{p}/fc1b"], [f"{p}/act"], name=f"{p}/{act}"),
            helper.make_node("MatMul", [f"{p}/act", f"block{i}.w2"], [f"{p}/fc2"], name=f"{p}/fc2/MatMul"),
            helper.make_node("Add", [previous, f"{p}/fc2"], [f"{p}/out"], name=f"{p}/Add"),
        ]
        previous = f"{p}/out"
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "readout.scale")
    inits.append(scale)
    nodes += [helper.make_node("Mul", [previous, "readout.scale"], ["scaled"], name="/readout/Mul"),
              helper.make_node("Tanh", ["scaled"], ["y"], name="/readout/Tanh")]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, width])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, width])], inits, path)


def recurrent(path, *, steps=32, width=48, features=8, radius=2.5, seed=2, change=None) -> Path:
    """An Elman cell unrolled over ``steps``: h_t = tanh(h_{t-1} W + x_t U + b), the input a
    (steps, 1, features) sequence; the output is every step's state (steps, 1, width)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((width, width))
    w = (w * radius / np.max(np.abs(np.linalg.eigvals(w)))).astype(np.float32)
    if change is not None:
        w = (w * (1 + change[1])).astype(np.float32)  # the recurrent weight is shared by every step
    u = _matrix(rng, features, width, 1.0)
    b = (rng.standard_normal(width) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w, "cell.W"), numpy_helper.from_array(u, "cell.U"),
             numpy_helper.from_array(b, "cell.b"),
             numpy_helper.from_array(np.zeros((1, width), np.float32), "h0"),
             numpy_helper.from_array(np.array([1] * steps, np.int64), "split")]
    nodes = [helper.make_node("Split", ["x", "split"], [f"x{t}" for t in range(steps)], axis=0, name="/Split")]
    previous, states = "h0", []
    for t in range(steps):
        p = f"/step{t}"
        nodes += [
            helper.make_node("Squeeze", [f"x{t}", "axes0"], [f"{p}/xt"], name=f"{p}/Squeeze"),
            helper.make_node("MatMul", [previous, "cell.W"], [f"{p}/hw"], name=f"{p}/MatMul_h"),
            helper.make_node("MatMul", [f"{p}/xt", "cell.U"], [f"{p}/xu"], name=f"{p}/MatMul_x"),
            helper.make_node("Add", [f"{p}/hw", f"{p}/xu"], [f"{p}/sum"], name=f"{p}/Add"),
            helper.make_node("Add", [f"{p}/sum", "cell.b"], [f"{p}/pre"], name=f"{p}/Add_b"),
            helper.make_node("Tanh", [f"{p}/pre"], [f"{p}/h"], name=f"{p}/Tanh"),
        ]
        previous = f"{p}/h"
        states.append(previous)
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    nodes.append(helper.make_node("Concat", states, ["h"], axis=0, name="/Concat"))
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, features])],
                 [helper.make_tensor_value_info("h", TensorProto.FLOAT, [steps, width])], inits, path)


def conv_chain(path, *, depth=24, channels=16, size=8, gain=3.0, seed=3, change=None) -> Path:
    """3x3 convolutions (padded, with bias) and Tanh repeated: the chaotic chain as a CNN runs
    it, where MNN may compute the convolutions by Winograd."""
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "x"
    fan_in = channels * 9
    for i in range(depth):
        w = (rng.standard_normal((channels, channels, 3, 3)) * gain / np.sqrt(fan_in)).astype(np.float32)
        if change is not None and change[0] == i:
            w = (w * (1 + change[1])).astype(np.float32)
        b = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [previous, f"conv{i}.weight", f"conv{i}.bias"], [f"/conv{i}/out"],
                                   pads=[1, 1, 1, 1], name=f"/conv{i}/Conv"),
                  helper.make_node("Tanh", [f"/conv{i}/out"], [f"/conv{i}/act"], name=f"/conv{i}/Tanh")]
        previous = f"/conv{i}/act"
    shape = [1, channels, size, size]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                 [helper.make_tensor_value_info(previous, TensorProto.FLOAT, shape)], inits, path)


BUILDERS = {"tanh_chain": tanh_chain, "residual_mlp": residual_mlp, "recurrent": recurrent, "conv_chain": conv_chain}
