"""Small ONNX models for the compressed-model tests (built with onnx.helper, no torch).

- :func:`outlier_mlp`: three MatMul layers; the second one's weights hold one large value per
  output column, on an input feature that is always zero (the first layer's column 0 is zero),
  so the float model ignores them. Quantized per column, each column's scale comes from that
  value and every ordinary weight rounds to zero at 4 bits: that layer costs almost all of the
  accuracy, the others little (MNN_NOTES, "Compressed models").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from helpers import save_model, tensor

WIDTH, TOKENS = 64, 16
OUTLIER_LAYER = "hidden2"  # the second MatMul's output


def outlier_mlp(directory, *, outlier: float = 100.0) -> Path:
    directory = Path(directory)
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w1[:, 0] = 0.0  # feature 0 of the first layer's output is always zero
    w2 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w2[0, :] = outlier  # ...and that feature carries the second layer's outliers
    w3 = (rng.standard_normal((WIDTH, 10)) / np.sqrt(WIDTH)).astype(np.float32)
    inits = [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["hidden1"], name="layer1"),
        helper.make_node("Relu", ["hidden1"], ["act1"], name="relu1"),
        helper.make_node("MatMul", ["act1", "w2"], [OUTLIER_LAYER], name="layer2"),
        helper.make_node("Relu", [OUTLIER_LAYER], ["act2"], name="relu2"),
        helper.make_node("MatMul", ["act2", "w3"], ["logits"], name="layer3"),
    ]
    return save_model(nodes, [tensor("x", shape=[1, TOKENS, WIDTH])], [tensor("logits", shape=[1, TOKENS, 10])],
                      directory / "outlier_mlp.onnx", initializers=inits)
