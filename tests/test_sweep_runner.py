"""A sweep's runner takes each check's Report in-process (commands.checks.reports_to): the
verdict it hands the sweep is the one ``parity check --json -`` writes for the same pair, it
shows nothing, and a check that ends in an error hands no verdict and leaves its line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import MODELS
from parity.checking import sweep_child
from parity.core.errors import ExitCode

CNN = [str(MODELS / "cnn.onnx"), str(MODELS / "cnn.mnn")]
TRANSFORMER = [str(MODELS / "transformer.onnx"), str(MODELS / "transformer.mnn")]


def _json_verdict(args, tmp_path):
    done = subprocess.run([sys.executable, "-m", "parity", "check", *args, "--json", "-"], capture_output=True,
                          cwd=tmp_path, timeout=300)
    return done.returncode, json.loads(done.stdout)["verdict"]


@pytest.mark.parametrize("args", [CNN, [*TRANSFORMER, "--atol", "1e-9", "--rtol", "0", "--no-diagnose"]],
                         ids=["passing", "mismatch"])
def test_the_runner_hands_over_the_verdict_the_json_report_holds(args, tmp_path):
    work = tmp_path / "pair"
    work.mkdir()
    reply = sweep_child.check(["check", *args, "--quiet"], str(work))
    code, verdict = _json_verdict(args, tmp_path)
    assert (reply["code"], reply["verdict"]) == (code, verdict)
    assert type(reply["verdict"]["kind"]) is str  # plain JSON values, as a reader of the JSON gets them
    assert reply["stdout"] == b""  # nothing rendered


def test_a_check_that_fails_to_run_hands_no_verdict_and_says_why(tmp_path):
    reply = sweep_child.check(["check", str(tmp_path / "missing.onnx"), CNN[1], "--quiet"], str(tmp_path))
    assert reply["code"] == ExitCode.MODEL_OR_INPUT and reply["verdict"] is None
    lines = [line for line in reply["stderr"].splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "missing.onnx" in lines[-1]


def _ort_settings(report_path):
    backends = json.loads(report_path.read_text())["backends"]
    return next(b["settings"] for b in backends if b["name"] == "onnxruntime")


def test_a_runner_builds_onnx_runtime_sessions_with_its_share_of_the_cores_and_says_so(tmp_path):
    work = tmp_path / "pair"
    work.mkdir()
    shared = sweep_child.check(["check", *CNN, "--quiet", "--json", str(tmp_path / "shared.json")], str(work),
                               ort_threads=1)
    alone = sweep_child.check(["check", *CNN, "--quiet", "--json", str(tmp_path / "alone.json")], str(work))
    assert shared["code"] == alone["code"] == ExitCode.PASS
    assert _ort_settings(tmp_path / "shared.json")["threads"] == 1
    assert "threads" not in _ort_settings(tmp_path / "alone.json")  # ONNX Runtime's default, as a plain check


def test_each_of_n_jobs_takes_its_share_of_the_cores():
    from parity.checking.sweep import threads_per_job

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads_per_job(1) == 0  # one check at a time: ONNX Runtime's own default
    assert threads_per_job(2) == max(1, cores // 2)
    assert threads_per_job(cores + 1) == 1
