"""Isolation: the reference's values fed into the candidate cut at a layer's paired inputs, to
measure the layer's own (local) error: large -> introduced here, small -> carried from
upstream. Part of the layer comparison (layers.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from parity.core.errors import BackendCrash, BackendError, first_line
from parity.core.judge import layer_passes, scaled_error
from parity.core.links import ONNX_VALUE
from parity.core.metrics import TensorDiff
from parity.core.report import LayerResult


def isolate_targets(graph, reference, candidate, feeds, tol, layer_rtol, ordered, first, isolate,
                    plan, state, report, say) -> dict:
    """Re-run the chosen layers alone on the reference's inputs: name -> (local max abs diff,
    local scaled error, whether it passes alone). ``first``: the first divergence; ``all``:
    every failing layer; ``every``: every paired layer, passing or not (the Python API's
    check that isolation itself is right: test_isolation_property.py)."""
    paired = {r.name for r in ordered}
    targets = [first] if first else []
    if isolate in ("all", "every"):
        targets = [(x, graph.frontier(x.name, paired)) for x in ordered if isolate == "every" or not x.passed]
    elif isolate == "none":
        targets = []
    isolated = {}
    for layer, frontier in targets:
        say(f"isolating {layer.name}")
        try:
            isolated[layer.name] = _isolate(plan.link, graph, reference, candidate, feeds, layer, frontier,
                                            state.chosen, state.results, tol, layer_rtol)
        except (BackendError, ValueError, KeyError) as exc:
            report.notes.append(f"isolation of {layer.name!r} failed: {first_line(exc)}")
            if isinstance(exc, BackendCrash):
                break
    return isolated


def with_isolation(layer: LayerResult, isolated: tuple | None) -> LayerResult:
    if isolated is None:
        return layer
    local, local_scaled, local_passed = isolated
    status = layer.status if layer.passed else "carried" if local_passed else "introduced"
    return dataclasses.replace(layer, local_max_abs_diff=local, local_scaled_error=local_scaled, status=status)


def cut_feeds(graph, feeds, frontier, chosen, values) -> dict:
    """The tensors to feed an MNN module cut at ``frontier``: graph inputs as fed (ONNX
    int64 as int32), paired tensors under their MNN names in the shape MNN holds them."""
    inputs = set(graph.inputs)
    tensors = {}
    for f in frontier:
        if f in inputs:
            array = feeds[f]
            tensors[f] = array.astype(np.int32) if array.dtype == np.int64 else array
        else:
            pick = chosen[f]
            tensors[pick.candidate_name] = np.ascontiguousarray(values[f].reshape(pick.candidate_shape))
    return tensors


def _isolate(link, graph, reference, candidate, feeds, layer, frontier, chosen, layers, tol, layer_rtol):
    """Feed the reference's values of ``frontier`` into the candidate cut there; judge the
    layer's own error by its rule (the element rule for a graph output that failed it)."""
    inputs = set(graph.inputs)
    needed = [f for f in frontier if f not in inputs]
    if link.layer_pairing == ONNX_VALUE:
        ref_values = reference.capture(feeds, needed + [layer.reference_name], cache=False).outputs
        tensors = cut_feeds(graph, feeds, frontier, chosen, ref_values)
        out = candidate.run_cut(tensors, [layer.candidate_name], inputs=feeds).outputs[layer.candidate_name]
        expected = ref_values[layer.reference_name]
    else:  # MODULE_SCOPE (torch -> onnxruntime): torch's module outputs feed the ONNX subgraph
        modules = {f: layers[f].reference_name for f in needed}
        wanted = list(dict.fromkeys(list(modules.values()) + [layer.reference_name]))
        ref_run = reference.capture(feeds, wanted, cache=False).outputs
        tensors = {f: (feeds[f] if f in inputs else ref_run[modules[f]]) for f in frontier}
        out = candidate.run_cut(tensors, [layer.name]).outputs[layer.name]
        expected = ref_run[layer.reference_name]
    expected = np.asarray(expected)
    out = np.asarray(out)
    if out.size != expected.size:
        raise ValueError(f"the cut returned {out.shape}, expected {expected.shape}")
    diff = TensorDiff.from_arrays(layer.name, expected, out.reshape(expected.shape), tol)
    passed = diff.passed if layer.rule == "element" else layer_passes(diff, tol, layer_rtol)
    return diff.max_abs_diff, scaled_error(diff), passed
