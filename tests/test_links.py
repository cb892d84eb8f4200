"""The links table (parity/core/links.py) and the adapters the registry finds from it: every
framework has one adapter declaring it, each suffix resolves to its adapter, and a pair's row is
looked up exact first, then by either side, then the default."""

from __future__ import annotations

import pytest

from parity.backends import registry
from parity.backends.base import Backend
from parity.core.links import ANY, DEFAULT, FRAMEWORKS, LINKS, MODULE_SCOPE, ONNX_VALUE, link_for
from parity.core.report import VerdictKind


def test_every_framework_has_one_adapter_that_declares_it():
    classes = registry.backend_classes()
    assert list(classes) == list(FRAMEWORKS)
    for framework, cls in classes.items():
        assert issubclass(cls, Backend) and cls.framework == framework
        assert cls.__module__ == f"parity.backends.{framework}"


def test_each_suffix_opens_its_adapter(tmp_path):
    suffixes = registry.suffixes()
    assert {".onnx", ".mnn", ".pt2"} <= set(suffixes)
    for suffix, framework in suffixes.items():
        path = tmp_path / f"model{suffix.upper()}"  # suffixes are matched case-blind
        assert registry.framework_for(path) == framework
        assert type(registry.open_backend(framework, path)) is registry.backend_class(framework)
    assert registry.framework_for(tmp_path / "model.txt") is None
    assert registry.framework_for("package.module:factory") == "torch"  # code, not a file
    with pytest.raises(ValueError, match="unknown framework 'tflite'"):
        registry.open_backend("tflite", tmp_path / "m.tflite")


def test_a_pair_is_looked_up_exact_then_by_either_side_then_the_default():
    assert link_for("torch", "onnxruntime").failure is VerdictKind.EXPORT
    assert link_for("torch", "onnxruntime").layer_pairing == MODULE_SCOPE
    onnx_mnn = link_for("onnxruntime", "mnn")
    assert onnx_mnn.diagnosable and onnx_mnn.compression_budget and onnx_mnn.layer_pairing == ONNX_VALUE
    assert link_for("torch", "torch") == link_for("torch", ANY)  # torch's outputs: named by the candidate
    assert link_for("torch", "torch").rows_named_by == "candidate"
    assert link_for("saved", "mnn").failure is VerdictKind.MISMATCH and not link_for("saved", "mnn").diagnosable
    assert link_for("mnn", "onnxruntime") is DEFAULT


def test_rows_use_known_frameworks_and_values():
    keys = [(row.reference, row.candidate) for row in LINKS]
    assert len(keys) == len(set(keys)), "a pair has two rows"
    for row in LINKS:
        assert {row.reference, row.candidate} <= {*FRAMEWORKS, ANY}
        assert row.layer_pairing in (None, ONNX_VALUE, MODULE_SCOPE)
        assert row.rows_named_by in ("pair", "candidate")
        assert row.failure.failing
        # the experiments and the reproduction work on the per-layer view of an ONNX graph
        if row.diagnosable or row.reproducible:
            assert row.layer_pairing == ONNX_VALUE
