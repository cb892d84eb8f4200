"""Isolation is right for every op: fed the reference's inputs, a layer cut out of the MNN
graph is no worse than the same layer in the uncut graph.

Property (issue 21): wherever a layer's paired inputs pass, its isolated local error is at
most 4 x its uncut error plus the layer tolerance. A cut that feeds a tensor in a layout or
shape the op does not expect breaks it (a GlobalAveragePool on 112x112, converted to
``Pooling3D``, gave a local error of 0.48 where the uncut layer's was 3e-6).

Runs ONNX Runtime and MNN for real on ~45 small models (tests/isolation_models.py), plus the
project's own models, each layer isolated (``isolate="every"``). MNN runs with Winograd off
so that layer errors stay at float32 rounding and nearly every layer's inputs pass.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

import isolation_models
from helpers import MODELS

# Tight enough that a layout slip (errors of the order of the values) cannot hide, loose
# enough that float32 rounding of every op here passes: most layers' inputs then pass
TOLERANCE = dict(atol=1e-5, rtol=1e-4)
LAYER_RTOL = 1e-4
FACTOR = 4.0  # the bound: local <= FACTOR * uncut + layer tolerance

PROJECT_MODELS = ("cnn", "transformer")


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict:
    """Every model as (onnx path, mnn path, feeds), converted once per session by parity's
    converter in a private directory."""
    from parity.converter import convert

    directory = tmp_path_factory.mktemp("isolation_models")
    built = {}
    for name in isolation_models.MODELS:
        onnx_path, feeds = isolation_models.build(name, directory)
        mnn_path = directory / f"{name}.mnn"
        convert(onnx_path, mnn_path)
        built[name] = (onnx_path, mnn_path, feeds)
    return built


def _project_feeds(onnx_path: Path) -> dict:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _isolate_every_layer(onnx_path, mnn_path, feeds):
    """The layer report with every paired layer isolated, and the MNN graph's op types."""
    from parity import layers
    from parity.backends.mnn import MnnBackend
    from parity.backends.onnxruntime import OnnxRuntimeBackend
    from parity.metrics import Tolerance

    tol = Tolerance(**TOLERANCE)
    with OnnxRuntimeBackend(onnx_path) as ort, MnnBackend(mnn_path, threads=1, hints=((3, 0),)) as mnn:
        graph = layers.OnnxGraph(ort.graph_proto())
        report = layers.compare_layers(graph, ort, mnn, feeds, tol, layer_rtol=LAYER_RTOL, isolate="every")
        mnn_ops = {entry["op_type"] for entry in mnn.graph()}
    return graph, report, tol, mnn_ops


def _violations(model, graph, report, tol):
    """(checked layers, layers that break the property, layers whose isolation did not run)."""
    results = {x.name: x for x in report.layers}
    inputs = set(graph.inputs)
    checked, broken, missing = [], [], []
    paired = set(results)
    for layer in report.layers:
        frontier = graph.frontier(layer.name, paired)
        if not all(f in inputs or results[f].passed for f in frontier):
            continue  # its inputs already differ: the property says nothing
        if layer.max_abs_diff is None:
            continue  # no uncut figure (a shape that differs): not isolation's question
        if layer.local_max_abs_diff is None:
            missing.append(f"{model}: {layer.name} ({layer.op_type} / {layer.candidate_op_type})")
            continue
        absmax = layer.reference_absmax or 0.0
        bound = FACTOR * layer.max_abs_diff + tol.atol_for(absmax) + LAYER_RTOL * absmax
        checked.append(layer)
        if not layer.local_max_abs_diff <= bound:
            broken.append(f"{model}: {layer.name} ({layer.op_type} / MNN {layer.candidate_op_type}): "
                          f"uncut {layer.max_abs_diff:.3g}, isolated {layer.local_max_abs_diff:.3g}, "
                          f"bound {bound:.3g}")
    return checked, broken, missing


def test_isolated_error_is_bounded_by_the_uncut_error_for_every_op(converted):
    cases = {name: entry for name, entry in converted.items()}
    for name in PROJECT_MODELS:
        onnx_path = MODELS / f"{name}.onnx"
        cases[name] = (onnx_path, MODELS / f"{name}.mnn", _project_feeds(onnx_path))
    assert len(cases) >= 30

    covered = collections.defaultdict(set)  # MNN op type -> models whose isolated layers hold it
    in_graphs: set[str] = set()
    all_broken, all_missing, notes = [], [], []
    for model, (onnx_path, mnn_path, feeds) in cases.items():
        graph, report, tol, mnn_ops = _isolate_every_layer(onnx_path, mnn_path, feeds)
        in_graphs |= mnn_ops
        notes += [f"{model}: {n}" for n in report.notes if "isolation" in n]
        checked, broken, missing = _violations(model, graph, report, tol)
        assert checked, f"{model}: no layer was checked (every layer's inputs fail?)"
        for layer in checked:
            covered[layer.candidate_op_type].add(model)
        all_broken += broken
        all_missing += missing

    print("\nMNN op types whose layers were isolated and checked (models):")
    for op in sorted(covered):
        print(f"  {op:<22} {len(covered[op]):>3}  {', '.join(sorted(covered[op])[:4])}")
    print(f"MNN op types in the graphs: {', '.join(sorted(in_graphs))}")
    assert not (all_missing or all_broken), (
        "isolated error exceeds the bound:\n" + "\n".join(all_broken)
        + "\nisolation did not run for:\n" + "\n".join(all_missing + notes))
    # the ops the property is about are really reached, as the paired op of a checked layer
    for op in ("Pooling3D", "Convolution", "ConvolutionDepthwise", "Deconvolution", "Pooling", "MatMul",
               "Reduction", "Softmax", "LayerNorm", "Interp", "Padding", "GatherV2", "Concat", "Permute"):
        assert op in covered, f"no checked layer is an MNN {op}"
