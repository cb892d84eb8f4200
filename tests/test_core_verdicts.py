"""The diagnosis's conversion verdicts built directly from structural diffs (no framework
runs): a converter that is not deterministic is named as such, at the constants that differ,
and never called a stale file; a file that differs from deterministic conversions is."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from parity.checking.experiments import conversion
from parity.checking.experiments.measure import Measurement
from parity.mnn.graph import structural_diff


def _graph(weights):
    names = ["x", "w", "y"]
    return {"oplists": [
        {"type": "Input", "main_type": "Input", "outputIndexes": [0], "main": {"dims": [1, 4]}},
        {"type": "Const", "main_type": "Blob", "outputIndexes": [1],
         "main": {"dims": [4], "dataFormat": "NCHW", "dataType": "DT_FLOAT", "float32s": weights}},
        {"type": "BinaryOp", "main_type": "BinaryOp", "inputIndexes": [0, 1], "outputIndexes": [2],
         "main": {"opType": "ADD"}},
    ], "tensorName": names, "bizCode": "parity", "mnn_uuid": "u"}


CTX = SimpleNamespace(onnx_path=Path("model.onnx"), mnn_path=Path("model.mnn"))
PROBE = SimpleNamespace(where="y (Add)")


def test_two_differing_fresh_conversions_make_a_nondeterministic_converter_verdict():
    first, second = _graph([1.0, 2.0, 3.0, 4.0]), _graph([1.0, 2.0, 3.0, 9.5])
    again = (structural_diff(first, second, labels=("first conversion", "second conversion")),
             Measurement(0.8, 5.5, False, "isolated"), False)
    given = structural_diff(_graph([1.0, 2.0, 3.0, 9.5]), first, labels=("given", "fresh"))
    verdict = conversion._nondeterministic_verdict(CTX, PROBE, "y (Add) on onnxruntime -> mnn",
                                                   "error 0 vs 0.8 in the given file", given, again, [])
    assert verdict.kind == "conversion"
    assert "not deterministic" in verdict.summary and "'w'" in verdict.summary
    assert "1 of 4 values" in verdict.summary and "only by luck" in verdict.summary
    assert "stale" not in verdict.summary
    assert any("every conversion" in step for step in verdict.next_steps)


def test_a_file_unlike_deterministic_conversions_names_the_constant():
    given = structural_diff(_graph([1.0, 2.0, 3.0, 9.5]), _graph([1.0, 2.0, 3.0, 4.0]), labels=("given", "fresh"))
    verdict = conversion._different_file_verdict(CTX, PROBE, "y (Add) on onnxruntime -> mnn",
                                                 "error 0 vs 0.8 in the given file", given,
                                                 deterministic=True, evidence=[])
    assert verdict.kind == "conversion"
    assert "'w'" in verdict.summary and "max abs diff 5.5" in verdict.summary
    assert "deterministic here" in verdict.summary and "stale" not in verdict.summary


def test_identical_graphs_with_other_numbers_are_said_to_be_identical():
    same = structural_diff(_graph([1.0, 2.0]), _graph([1.0, 2.0]), labels=("given", "fresh"))
    assert same.empty
    verdict = conversion._different_file_verdict(CTX, PROBE, "where", "figures", same,
                                                 deterministic=False, evidence=[])
    assert "structurally identical" in verdict.summary and "could not be checked" in verdict.summary
