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
FACTOR = 4.0  # the issue's bound: local <= FACTOR * uncut + layer tolerance

PROJECT_MODELS = ("cnn", "transformer")


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict:
    """Every model as (onnx path, mnn path, feeds), converted once per session by parity's
    converter in a private directory."""
    from parity.mnn.converter import convert

    import onnx

    import op_cases

    directory = tmp_path_factory.mktemp("isolation_models")
    built = {}
    for name in isolation_models.MODELS:
        onnx_path, feeds = isolation_models.build(name, directory)
        mnn_path = directory / f"{name}.mnn"
        convert(onnx_path, mnn_path)
        built[name] = (onnx_path, mnn_path, feeds)
    # exact GELU: with --useGeluApproximation 0 MNN's converter emits GELU_STANDARD
    onnx_path, feeds = built["gelu_erf"][0], built["gelu_erf"][2]
    convert(onnx_path, directory / "gelu_exact.mnn", options=["--useGeluApproximation", "0"])
    built["gelu_exact"] = (onnx_path, directory / "gelu_exact.mnn", feeds)
    # the one-op cases of test_op_references.py side by side (trigonometry, rounding, ArgMin,
    # GridSample, comparisons...): every op type the test suite's models hold is cut somewhere
    for opset in sorted({case.opset for case in op_cases.CASES}):
        cases = [case for case in op_cases.CASES if case.opset == opset]
        onnx_path = directory / f"op_cases_{opset}.onnx"
        onnx.save(op_cases.combined(cases, opset), str(onnx_path))
        convert(onnx_path, directory / f"op_cases_{opset}.mnn")
        built[f"op_cases_{opset}"] = (onnx_path, directory / f"op_cases_{opset}.mnn", op_cases.feeds(cases))
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
    from parity.checking import layers
    from parity.checking.onnx_graph import OnnxGraph
    from parity.backends.mnn import MnnBackend
    from parity.backends.onnxruntime import OnnxRuntimeBackend
    from parity.core.metrics import Tolerance

    tol = Tolerance(**TOLERANCE)
    with OnnxRuntimeBackend(onnx_path) as ort, MnnBackend(mnn_path, threads=1, hints=((3, 0),)) as mnn:
        graph = OnnxGraph(ort.graph_proto())
        report = layers.compare_layers(graph, ort, mnn, feeds, tol, layer_rtol=LAYER_RTOL, isolate="every")
        mnn_graph = mnn.graph()
    return graph, report, tol, mnn_graph


def _cut_ops(mnn_graph, layer, fed) -> set[str]:
    """The MNN op types a cut of ``layer`` at the MNN tensors ``fed`` runs: those between the
    fed tensors (and the graph's inputs, which a cut may still need for shapes) and the
    layer's MNN tensor."""
    producer = {entry["name"]: entry for entry in mnn_graph}
    ops, seen, stack = set(), set(), [layer.candidate_name]
    while stack:
        name = stack.pop()
        if name in seen or name in fed or name not in producer:
            continue
        seen.add(name)
        ops.add(producer[name]["op_type"])
        stack.extend(producer[name]["inputs"])
    return ops - {"Input", "Const"}


def _violations(model, graph, report, tol):
    """(checked layers with their cut points, layers that break the property, layers whose
    isolation did not run)."""
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
        checked.append((layer, {f if f in inputs else results[f].candidate_name for f in frontier}))
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

    covered = collections.defaultdict(set)  # MNN op type -> models where a checked cut runs it
    in_graphs: set[str] = set()
    all_broken, all_missing, notes = [], [], []
    for model, (onnx_path, mnn_path, feeds) in cases.items():
        graph, report, tol, mnn_graph = _isolate_every_layer(onnx_path, mnn_path, feeds)
        in_graphs |= {entry["op_type"] for entry in mnn_graph} - {"Input", "Const"}
        notes += [f"{model}: {n}" for n in report.notes if "isolation" in n]
        checked, broken, missing = _violations(model, graph, report, tol)
        assert checked, f"{model}: no layer was checked (every layer's inputs fail?)"
        for layer, fed in checked:
            for op in _cut_ops(mnn_graph, layer, fed):
                covered[op].add(model)
        all_broken += broken
        all_missing += missing

    print(f"\nMNN op types run by the checked cuts ({len(covered)} of the {len(in_graphs)} in the graphs; "
          f"models):")
    for op in sorted(covered):
        print(f"  {op:<22} {len(covered[op]):>3}  {', '.join(sorted(covered[op])[:4])}")
    print(f"in the graphs, run by no checked cut: {', '.join(sorted(in_graphs - set(covered))) or 'none'}")
    assert not (all_missing or all_broken), (
        "isolated error exceeds the bound:\n" + "\n".join(all_broken)
        + "\nisolation did not run for:\n" + "\n".join(all_missing + notes))
    # every op type the converter emitted on these models runs inside some checked cut
    assert in_graphs <= set(covered), f"no checked cut runs MNN {sorted(in_graphs - set(covered))}"


READ_LAYOUTS = r"""
import json, sys
import MNN
found = {}
for path in sys.argv[1:]:
    layouts = found[path] = {}
    for name, var in MNN.expr.load_as_dict(path).items():
        try:
            layout, rank = str(var.data_format).split(".")[-1], len(var.shape)
        except Exception:  # a var MNN cannot resolve without inputs
            continue
        layouts[name] = [layout, rank]
print("LAYOUTS " + json.dumps(found))
"""


def test_layouts_read_from_the_file_are_mnns_own(converted, tmp_path):
    """The layout a cut feeds each tensor in is read from the file (mnn_flatbuffer.tensor_layouts,
    milliseconds); MNN's own reading of every tensor of rank 2 and up (in a child: MNN is
    never imported here) agrees on every model, and holds NC4HW4 tensors to get right."""
    import json
    import subprocess
    import sys

    from parity.mnn import flatbuffer as mnn_flatbuffer

    paths = [str(mnn) for _, mnn, _ in converted.values()] + [str(MODELS / f"{m}.mnn") for m in PROJECT_MODELS]
    script = tmp_path / "layouts.py"
    script.write_text(READ_LAYOUTS)
    out = subprocess.run([sys.executable, str(script), *paths], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    theirs = json.loads(next(line for line in out.splitlines() if line.startswith("LAYOUTS "))[8:])
    wrong, packed = [], 0
    for path in paths:
        ours = mnn_flatbuffer.tensor_layouts(path)
        assert ours is not None, f"{path}: not read as a file of plain layout"
        for name, (layout, rank) in theirs[path].items():
            if rank >= 2:
                packed += layout == "NC4HW4"
                if ours.get(name) != layout:
                    wrong.append(f"{path}: {name} MNN {layout}, read {ours.get(name)}")
    assert not wrong, "\n".join(wrong[:20])
    assert packed > 50


def _reference(onnx_path, feeds, names):
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


def _node_output(onnx_path, op_type, index=0):
    import onnx

    return [n.output[0] for n in onnx.load(str(onnx_path)).graph.node if n.op_type == op_type][index]


@pytest.mark.parametrize("ask_mnn", [False, True], ids=["layout-from-file", "layout-from-mnn"])
def test_a_cut_before_pooling3d_is_fed_packed(converted, ask_mnn):
    """The squeeze-excitation block of issue 21: GlobalAveragePool on 112x112 (MNN Pooling3D)
    cut at its input and fed the reference's values gives the reference's pooled values, with
    the layout read from the file and (a file whose layouts are not read) asked of MNN."""
    from parity.backends.mnn import MnnBackend

    onnx_path, mnn_path, feeds = converted["se_block_112"]
    relu, gap = _node_output(onnx_path, "Relu"), _node_output(onnx_path, "GlobalAveragePool")
    ref = _reference(onnx_path, feeds, [relu, gap])
    with MnnBackend(mnn_path, threads=1) as mnn:
        if ask_mnn:
            mnn._layouts = {}  # as for a file tensor_layouts cannot read: the child asks MNN
        out = mnn.run_cut({relu: ref[relu]}, [gap]).outputs[gap]
    # the mean of 12544 values: float32 rounding, where the NCHW-fed cut was off by 0.1-0.5
    np.testing.assert_allclose(out.reshape(ref[gap].shape), ref[gap], rtol=0, atol=1e-5)


def test_a_cut_after_a_converted_reshape_is_fed_the_graph_inputs_it_needs(converted):
    """MNN converts Gemm to Reshape -> Convolution -> Reshape, the last shape computed from
    Shape(x): a cut there needs ``x`` too, which MNN refuses to load without."""
    from parity.backends.mnn import MnnBackend
    from parity.core.errors import BackendError

    onnx_path, mnn_path, feeds = converted["gemm"]
    tanh = _node_output(onnx_path, "Tanh")
    ref = _reference(onnx_path, feeds, [tanh])
    with MnnBackend(mnn_path, threads=1) as mnn:
        producer = {e["name"]: e for e in mnn.graph()}
        # the MNN tensor before the Tanh: the Convolution the first Gemm became
        cut = next(e["name"] for e in mnn.graph() if e["op_type"] == "Convolution")
        before = mnn.capture(feeds, [cut]).outputs[cut]
        with pytest.raises(BackendError):
            mnn.run_cut({cut: before}, [tanh])
        out = mnn.run_cut({cut: before}, [tanh], inputs=feeds).outputs[tanh]
    assert producer[tanh]["op_type"] == "Reshape"
    np.testing.assert_allclose(out.reshape(ref[tanh].shape), ref[tanh], rtol=0, atol=1e-6)


def test_the_issue_command_isolates_the_pooling_within_rounding(converted, tmp_path):
    """``parity check m.onnx m.mnn --layers --isolate all --atol 1e-12 --rtol 0`` on the
    squeeze-excitation block: the GlobalAveragePool's local error (it used to be 0.48) is
    bounded by its uncut error, as the property says."""
    import json

    from helpers import run_parity

    onnx_path, mnn_path, feeds = converted["se_block_112"]
    np.savez(tmp_path / "feeds.npz", **feeds)
    report = tmp_path / "report.json"
    result = run_parity("check", onnx_path, mnn_path, "--layers", "--isolate", "all", "--atol", "1e-12",
                        "--rtol", "0", "--inputs", tmp_path / "feeds.npz", "--json", report,
                        env={"PYTHONIOENCODING": "utf-8", "COLUMNS": "200"})
    assert result.code == 1, result.err
    data = json.loads(report.read_text())
    layers = [x for link in data["comparisons"] for x in link.get("layers") or []]
    gap = next(x for x in layers if x["op_type"] == "GlobalAveragePool")
    assert gap["candidate_op_type"] == "Pooling3D"
    assert gap["local_max_abs_diff"] is not None and gap["max_abs_diff"] is not None, gap
    # the property's bound with this command's own layer tolerance, atol + layer_rtol x
    # max|reference| (layer_rtol defaults to 10 x rtol): no slack of the test's own
    atol, rtol = 1e-12, 0.0
    layer_tolerance = atol + 10 * rtol * gap["reference_absmax"]
    print(f"\nGlobalAveragePool: uncut {gap['max_abs_diff']:.3g}, isolated {gap['local_max_abs_diff']:.3g}")
    assert gap["local_max_abs_diff"] <= FACTOR * gap["max_abs_diff"] + layer_tolerance, gap


def test_a_cut_that_does_not_lead_to_the_output_is_refused(converted):
    """Fed the model's inputs too, a cut whose tensors the output does not depend on would be
    computed from the start instead of from the values fed: refused, saying where."""
    from parity.backends.mnn import MnnBackend
    from parity.core.errors import BackendError

    onnx_path, mnn_path, feeds = converted["gemm"]
    tanh = _node_output(onnx_path, "Tanh")
    with MnnBackend(mnn_path, threads=1) as mnn:
        first = next(e["name"] for e in mnn.graph() if e["op_type"] == "Convolution")
        later = mnn.capture(feeds, [tanh]).outputs[tanh]
        with pytest.raises(BackendError, match=f"at '{tanh}' does not lead to '{first}'"):
            mnn.run_cut({tanh: later}, [first], inputs=feeds)


def _residual_conv(directory):
    """``z = Conv(x) + x``: the Add's inputs are the Conv's output and the graph input itself."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from parity.mnn.converter import convert

    rng = np.random.default_rng(41)
    weight = numpy_helper.from_array((0.2 * rng.standard_normal((4, 4, 3, 3))).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["y", "x"], ["z"])]
    x, z = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4, 8, 8]) for name in ("x", "z"))
    graph = helper.make_graph(nodes, "residual_conv", [x], [z], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "residual_conv.onnx"))
    convert(directory / "residual_conv.onnx", directory / "residual_conv.mnn")
    feeds = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    return directory / "residual_conv.onnx", directory / "residual_conv.mnn", feeds


def test_a_cut_whose_output_reads_a_graph_input_outside_the_cut_is_refused(tmp_path):
    """``z = Conv(x) + x`` cut at ``y = Conv(x)`` alone: ``z`` reads ``x``'s values by a path
    that does not cross the cut, so fed ``x`` too MNN would compute part of ``z`` from the
    model's start. Refused; with ``x`` among the cut tensors (the Add's whole frontier) the
    cut runs, and ``z`` follows the values fed at ``y``."""
    from parity.backends.mnn import MnnBackend
    from parity.core.errors import BackendError

    onnx_path, mnn_path, feeds = _residual_conv(tmp_path)
    ref = _reference(onnx_path, feeds, ["y", "z"])
    with MnnBackend(mnn_path, threads=1) as mnn:
        assert next(e for e in mnn.graph() if e["name"] == "z")["inputs"][1] == "x"  # the Add reads x itself
        with pytest.raises(BackendError, match=r"depends on the values of graph input\(s\) 'x'"):
            mnn.run_cut({"y": ref["y"]}, ["z"], inputs=feeds)
        out = mnn.run_cut({"y": ref["y"], "x": feeds["x"]}, ["z"], inputs=feeds).outputs["z"]
        shifted = mnn.run_cut({"y": ref["y"] + 1.0, "x": feeds["x"]}, ["z"], inputs=feeds).outputs["z"]
    np.testing.assert_allclose(out.reshape(ref["z"].shape), ref["z"], rtol=0, atol=1e-5)
    # the values fed at the cut are the ones used: z moves with them, one for one
    np.testing.assert_allclose(shifted - out, 1.0, rtol=0, atol=1e-5)


def test_layers_isolate_the_residual_add_at_its_whole_frontier(tmp_path):
    """Through compare_layers, the Add's frontier is {y, x}: its cut feeds both and runs, so
    the refusal above does not take isolation away from a layer that reads a graph input."""
    onnx_path, mnn_path, feeds = _residual_conv(tmp_path)
    graph, report, tol, _ = _isolate_every_layer(onnx_path, mnn_path, feeds)
    add = next(x for x in report.layers if x.op_type == "Add")
    assert set(graph.frontier(add.name, {x.name for x in report.layers})) == {"y", "x"}
    assert add.local_max_abs_diff is not None, report.notes
    assert add.local_max_abs_diff <= FACTOR * add.max_abs_diff + tol.atol_for(add.reference_absmax) \
        + LAYER_RTOL * add.reference_absmax
