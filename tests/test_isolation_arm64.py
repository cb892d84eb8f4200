"""Isolation on the emulated arm64 target (issue 21): a squeeze-excitation block whose
GlobalAveragePool runs on 112x112 (MNN ``Pooling3D``). With precision low MNN's float16
pooling really differs; the cut that isolates it used to be fed NCHW where Pooling3D reads
NC4HW4, which made the precision-high and local experiments fail too and left the verdict
undetermined. Skipped like test_target_arm64.py when the target is not set up.
"""

from __future__ import annotations


import numpy as np
import pytest

import isolation_models
import parity
from helpers import report_json, require_arm64

pytestmark = pytest.mark.arm64


@pytest.fixture(scope="module", autouse=True)
def arm64_ready():
    require_arm64()


@pytest.fixture(scope="module")
def se_block(tmp_path_factory):
    from parity.mnn.converter import convert

    d = tmp_path_factory.mktemp("se_arm64")
    onnx_path, feeds = isolation_models.build("se_block_112", d)
    convert(onnx_path, d / "se.mnn")
    np.savez(d / "feeds.npz", **feeds)
    return onnx_path, d / "se.mnn", d / "feeds.npz"


def _check(*models, precision=None, **options):
    """parity.check (with ``precision``: MNN on the arm64 target, in that precision mode or
    modes): (exit code, the report as its JSON reads)."""
    mnn = {"target": "arm64", "precision": precision} if precision else None
    report = parity.check(models, mnn_options=mnn, **options)
    return report.exit_code, report_json(report)


def test_float16_pooling_is_runtime_and_its_isolation_passes_in_float32(se_block):
    onnx_path, mnn_path, feeds = se_block
    code, low = _check(onnx_path, mnn_path, inputs=feeds, precision="low", layers=True)
    assert code == 1
    verdict = low["verdict"]
    assert verdict["kind"] == "runtime", verdict
    assert "float16" in verdict["summary"] and "GlobalAveragePool" in verdict["where"], verdict
    # the experiment that decides it: the same cut, precision high, on the same target, passes
    precision = [e for e in verdict["evidence"] if e.get("experiment") == "precision"]
    assert precision and precision[0]["measured"] == "isolated" and precision[0]["passed"], verdict["evidence"]
    layers = [x for c in low["comparisons"] for x in c.get("layers") or []]
    gap = next(x for x in layers if x["op_type"] == "GlobalAveragePool")
    assert gap["status"] == "introduced" and gap["candidate_op_type"] == "Pooling3D"

    code, high = _check(onnx_path, mnn_path, inputs=feeds, precision="high", layers=True, isolate="all")
    assert code == 0, high["verdict"]
