"""The user's side (issue 15): the first screen, reruns from the JSON, saved outputs, input
data control, per-output tolerances and the gating statistic. Each option's test fails if the
option were ignored."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import parity
from helpers import MODELS, assert_one_line_error, report_json, run_json, run_parity
from parity.core.errors import ExitCode

CNN = (MODELS / "cnn.onnx", MODELS / "cnn.mnn")
TRANSFORMER = (MODELS / "transformer.onnx", MODELS / "transformer.mnn")


def _json(*models, **options):
    """parity.check: (exit code, the report as its JSON reads)."""
    report = parity.check(models, **options)
    return report.exit_code, report_json(report)


def test_first_screen_of_a_failure_says_what_to_do(tmp_path):
    from helpers import alter_filter

    altered = alter_filter(MODELS / "cnn.onnx", tmp_path / "altered.onnx", "conv3.weight", 0)
    from helpers import to_mnn

    bad = to_mnn(altered, tmp_path / "altered.mnn")
    report = tmp_path / "r.json"
    result = run_parity("check", MODELS / "cnn.onnx", bad, "--json", report, env={"PARITY_WIDTH": "100"})
    assert result.code == ExitCode.MISMATCH
    head = result.out.splitlines()[:25]
    assert head[0].startswith("parity: FAIL, conversion")
    assert any(line.startswith("verdict: conversion") for line in head)
    assert any(line.startswith("where: ") for line in head)
    assert "evidence:" in head and "next:" in head
    assert any(line.startswith("full report: ") and str(report) in line for line in head)
    assert all(line == line.rstrip() for line in result.out.splitlines())  # no trailing spaces
    assert all(len(line) <= 100 for line in head if not line.startswith("full report"))


def test_a_junit_file_alone_is_not_announced_as_the_full_report(tmp_path):
    junit, json_path = tmp_path / "j.xml", tmp_path / "r.json"
    lines = run_parity("check", *CNN, "--junit", junit).out.splitlines()
    assert f"written: {junit}" in lines and not any(line.startswith("full report") for line in lines)
    lines = run_parity("check", *CNN, "--junit", junit, "--json", json_path).out.splitlines()
    assert f"full report: {json_path}" in lines and f"also written: {junit}" in lines


def test_rerun_from_the_json_alone_gives_the_same_figures(tmp_path):
    first = tmp_path / "first.json"
    again = tmp_path / "again.json"
    result = run_parity("check", *CNN, "--seed", "7", "--json", first, "-q")
    assert result.code == 0
    recorded = json.loads(first.read_text())["rerun"]
    assert recorded["command"][:2] == ["parity", "check"] and "--seed" in recorded["command"]
    assert recorded["versions"]["onnxruntime"] and recorded["versions"]["mnn"]
    result = run_parity("rerun", first, "--json", again, "-q", cwd=tmp_path)
    assert result.code == 0, result.err
    a, b = (json.loads(p.read_text()) for p in (first, again))
    assert a["comparisons"] == b["comparisons"] and b["options"]["seed"] == 7
    assert json.loads(first.read_text()) == a  # the rerun never wrote over the report it read


def test_saved_outputs_are_a_reference_for_a_later_mnn_only_check(tmp_path):
    ref, inputs = tmp_path / "ref.npz", tmp_path / "in.npz"
    code, both = _json(*TRANSFORMER, save_outputs=ref, save_inputs=inputs)
    assert code == 0 and ref.exists()
    code, later = _json(TRANSFORMER[1], load_outputs=ref, inputs=inputs)
    assert code == 0 and later["comparisons"][0]["reference"] == "saved"
    a, b = both["comparisons"][0]["outputs"][0], later["comparisons"][0]["outputs"][0]
    for key in ("max_abs_diff", "max_rel_diff", "mean_abs_diff", "cosine", "mismatch_count"):
        assert a[key] == b[key], key


def test_load_outputs_needs_its_model(tmp_path):
    result = run_parity("check", "--load-outputs", tmp_path / "none.npz")
    assert result.code == ExitCode.USAGE


def test_val_range_shapes_the_generated_inputs(tmp_path):
    saved = tmp_path / "in.npz"
    code, report = _json(*CNN, val_ranges=(("x", (5.0, 6.0)),), save_inputs=saved)
    x = np.load(saved)["x"]
    assert 5 <= x.min() and x.max() <= 6
    assert any("--val-range" in n for n in report["inputs"]["x"]["notes"])


def _gather_model(directory):
    """An embedding lookup: int64 ``ids`` index a 10-row table."""
    from onnx import TensorProto, helper, numpy_helper

    from helpers import save_model, tensor, to_mnn

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    onnx_path = save_model([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                           [tensor("ids", TensorProto.INT64, [1, 16])], [tensor("y", shape=[1, 16, 4])],
                           directory / "gather.onnx", initializers=[table])
    return onnx_path, to_mnn(onnx_path, directory / "gather.mnn")


def test_val_range_integers_and_bad_values(tmp_path):
    model = _gather_model(tmp_path)
    saved = tmp_path / "ids.npz"
    result = run_json("check", *model, "--val-range", "ids:2,5", "--save-inputs", saved, "-q")
    code, report = result.code, result.json()
    ids = np.load(saved)["ids"]
    assert code == 0 and ids.dtype == np.int64
    assert set(np.unique(ids)) <= {2, 3, 4, 5} and len(np.unique(ids)) > 1, ids  # every integer of [2, 5] may come
    assert any("--val-range" in n for n in report["inputs"]["ids"]["notes"])
    # a range holding no integer, for an integer input
    result = run_parity("check", *model, "--val-range", "ids:2.2,2.8")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "ids:2.2,2.8", "int64")
    result = run_parity("check", *CNN, "--val-range", "x:6,5")
    assert_one_line_error(result, ExitCode.USAGE, "LOW <= HIGH")
    result = run_parity("check", *CNN, "--val-range", "nope:0,1")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "unknown input 'nope'")


def test_data_loader_samples_are_all_checked(tmp_path):
    loader = tmp_path / "loader.py"
    loader.write_text("import numpy as np\n"
                      "def samples():\n"
                      "    for i in range(3):\n"
                      "        yield {'x': np.full((1, 3, 32, 32), 0.1 * i, np.float32)}\n")
    code, report = _json(*CNN, data_loader=f"{loader}:samples")
    samples = report["comparisons"][0]["outputs"][0]["samples"]
    assert code == 0 and samples["count"] == 3


def test_data_loader_errors_are_one_line(tmp_path):
    loader = tmp_path / "bad.py"
    loader.write_text("def samples():\n    yield [1, 2]\n")
    result = run_parity("check", *CNN, "--data-loader", f"{loader}:samples")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "not a dict")


def test_per_output_tolerance_is_applied():
    assert parity.check(CNN).exit_code == 0
    code, report = _json(*CNN, tolerances={"logits": parity.Tolerance(0, 0)}, diagnose=False)
    assert code == 1
    assert any("--tol" in n for n in report["comparisons"][0]["outputs"][0]["notes"])


def test_bad_per_output_tolerance_is_a_usage_error():
    result = run_parity("check", *CNN, "--tol", "logits=abc")
    assert_one_line_error(result, ExitCode.USAGE, "--tol")


def test_a_per_output_tolerance_for_no_output_is_refused_before_the_run():
    result = run_parity("check", *CNN, "--tol", "logit=1,1")  # a typo would leave logits at the default
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "--tol", "'logit'", "['logits']")


def test_check_stat_mean_passes_where_elementwise_fails():
    options = {"tolerance": parity.Tolerance(atol=1e-4, rtol=0), "diagnose": False}
    code, _ = _json(*TRANSFORMER, **options)
    assert code == 1  # the largest difference (3.6e-4) is beyond 1e-4
    code, report = _json(*TRANSFORMER, **options, check_stat="mean")
    assert code == 0
    assert any("--check-stat mean" in n for n in report["comparisons"][0]["outputs"][0]["notes"])


def test_check_stat_cosine_gates_on_cosine():
    code, _ = _json(*CNN, check_stat="cosine", tolerance=parity.Tolerance(atol=None, rtol=0), diagnose=False)
    assert code == 1  # cosine is not exactly 1 on float noise


def test_inspect_shows_the_mnn_outputs_dtype_and_shape():
    result = run_parity("inspect", MODELS / "transformer.mnn")
    assert result.code == 0
    row = next(line for line in result.out.splitlines() if "output" in line and "out" in line)
    assert "float32" in row and "1x64x512" in row and "?" not in row


def test_a_passing_output_explains_a_large_max_rel(tmp_path):
    reference, candidate = tmp_path / "r.npy", tmp_path / "c.npy"
    np.save(reference, np.array([1.0, 2.0, 1e-4], np.float32))
    np.save(candidate, np.array([1.0, 2.0, 2.4e-4], np.float32))
    report = parity.compare(reference, candidate)
    assert report.exit_code == 0
    notes = report.comparisons[0].outputs[0].notes
    assert any("near zero" in n and "max_rel" in n for n in notes)


def test_sweep_writes_junit_and_html(tmp_path):
    junit, html = tmp_path / "s.xml", tmp_path / "s.html"
    result = run_parity("sweep", MODELS, "--junit", junit, "--html", html, "-q")
    assert result.code == 0, result.err
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "2" and {c.get("name") for c in suite.iter("testcase")} == {"cnn", "transformer"}
    assert "parity sweep" in html.read_text() and "transformer" in html.read_text()
    assert "=== 2 passed" in result.out


@pytest.mark.torch
def test_sweep_takes_a_pt2_of_the_same_name(tmp_path):
    pytest.importorskip("torch")
    import shutil

    import torch

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    directory = tmp_path / "zoo"
    directory.mkdir()
    x = torch.randn(1, 8)
    torch.export.save(torch.export.export(Net(), (x,)), directory / "net.pt2")
    torch.onnx.export(Net(), (x,), directory / "net.onnx", input_names=["x"], output_names=["y"], dynamo=False)
    from helpers import to_mnn

    to_mnn(directory / "net.onnx", directory / "net.mnn")
    shutil.copy(MODELS / "cnn.onnx", directory / "cnn.onnx")
    shutil.copy(MODELS / "cnn.mnn", directory / "cnn.mnn")
    result = run_json("sweep", directory, "-q")
    assert result.code == 0, result.err
    net = next(r for r in result.json()["results"] if r["name"] == "net")
    assert [m.rsplit(".", 1)[1] for m in net["models"]] == ["pt2", "onnx", "mnn"]


def test_html_settings_are_readable_and_the_legend_is_under_the_chart(tmp_path):
    import re

    page = tmp_path / "r.html"
    assert run_parity("check", *CNN, "--layers", "--html", page, "-q").code == 0
    text = page.read_text()
    assert "{'backend'" not in text and "threads: 4" in text
    chart = text[text.index('<svg id="layer-chart"'):]
    plot_bottom = 20 + float(re.search(r'<rect x="60" y="20" width="\d+" height="([\d.]+)"', chart).group(1))
    legend_y = float(re.search(r'<rect x="70" y="([\d.]+)" width="12" height="3"', chart).group(1))
    assert legend_y > plot_bottom


def test_shape_of_the_wrong_rank_is_the_documented_input_error():
    """The README's table: a well-formed --shape that does not fit the model is 3; a malformed one 2."""
    result = run_parity("check", *CNN, "--shape", "x=1x3x32")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "has rank 3")
    readme = (MODELS.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| 3 |"))
    assert "`--shape` that do not fit the model (unknown input, rank, fixed dims)" in row


def test_check_never_calls_a_framework_output_float16_read_as_float32(tmp_path):
    """Arrays a framework returned have real dtypes: a half-length output is a truncation or one
    item of a batch, not a dtype misread (that hint is for dumps read from bytes)."""
    from onnx import helper, numpy_helper

    from helpers import save_model, tensor

    full = save_model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", shape=[1, 12])],
                      [tensor("y", shape=[1, 12])], tmp_path / "full.onnx")
    starts = numpy_helper.from_array(np.array([0], np.int64), "s")
    ends = numpy_helper.from_array(np.array([6], np.int64), "e")
    axes = numpy_helper.from_array(np.array([1], np.int64), "a")
    half = save_model([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])], [tensor("x", shape=[1, 12])],
                      [tensor("y", shape=[1, 6])], tmp_path / "half.onnx", initializers=[starts, ends, axes])
    code, report = _json(full, half)
    error = report["comparisons"][0]["outputs"][0]["error"]
    assert code == 1 and "float16" not in error and "truncated copy" in error


def test_a_rerun_writes_over_none_of_the_files_the_recorded_check_wrote(tmp_path):
    report, inputs, outputs = tmp_path / "first.json", tmp_path / "in.npz", tmp_path / "out.npz"
    result = run_parity("check", *CNN, "--json", report, "--save-inputs", inputs, "--save-outputs", outputs, "-q")
    assert result.code == 0, result.err
    for path in (inputs, outputs):
        path.write_bytes(b"the user's own file since")
    result = run_parity("rerun", report, "-q", cwd=tmp_path)
    assert result.code == 0, result.err
    assert inputs.read_bytes() == outputs.read_bytes() == b"the user's own file since"


def test_every_flag_that_writes_a_file_is_dropped_from_a_rerun():
    from parity.checking.rerun import WRITING_FLAGS
    from parity.option_groups import OPTIONS

    writing = {flag for option in OPTIONS.values() if option.name.startswith(("save_", "write_"))
               or option.name in ("json", "html", "junit", "model_explorer", "repro", "output")
               for flag in (option.flags or (option.flag,))}
    assert writing and writing <= WRITING_FLAGS, writing - WRITING_FLAGS


def test_a_rerun_runs_a_recorded_command_only_when_the_user_gives_it(tmp_path):
    report = tmp_path / "first.json"
    result = run_parity("check", *CNN, "--json", report, "-q")
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    marker = tmp_path / "ran"
    target = f"exec:touch {marker}; exec {sys.executable}"
    data["rerun"]["command"] += ["--mnn-target", target]  # a report received from anyone
    received = tmp_path / "received.json"
    received.write_text(json.dumps(data))
    refused = run_parity("rerun", received, cwd=tmp_path)
    assert_one_line_error(refused, ExitCode.MODEL_OR_INPUT, "runs a command", "--mnn-target")
    assert not marker.exists()
    given = run_parity("rerun", received, "--mnn-target", target, "-q", cwd=tmp_path)
    assert given.code == 0, given.err
    assert marker.exists()  # named by the user: run as recorded


def _received(report, tmp_path, command):
    """The report, as received from someone else whose command line was ``command``."""
    data = json.loads(report.read_text())
    data["rerun"]["command"] = command
    received = tmp_path / "received.json"
    received.write_text(json.dumps(data))
    return received


@pytest.mark.parametrize("code", ["module", "torch", "data-loader"])
def test_a_rerun_runs_recorded_python_code_only_when_the_user_names_it(tmp_path, code):
    report = tmp_path / "first.json"
    assert run_parity("check", *CNN, "--json", report, "-q").code == 0
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f():\n    return {{}}\n")
    command = {"module": ["parity", "check", f"{tmp_path / 'evil.py'}:f", *map(str, CNN)],
               "torch": ["parity", "check", "--torch", f"{tmp_path / 'evil.py'}:f", *map(str, CNN)],
               "data-loader": ["parity", "check", *map(str, CNN), "--data-loader", f"{tmp_path / 'evil.py'}:f"]}[code]
    refused = run_parity("rerun", _received(report, tmp_path, command), cwd=tmp_path)
    assert_one_line_error(refused, ExitCode.MODEL_OR_INPUT, "runs Python code", "evil.py")
    assert not marker.exists()


def test_a_rerun_refuses_a_recorded_trust_remote_code_and_a_damaged_command(tmp_path):
    """--trust-remote-code runs a model folder's own Python: like code, only when the user names
    it. A command with a NUL byte, or a command line that is a string, is a damaged report."""
    report = tmp_path / "first.json"
    assert run_parity("check", *CNN, "--json", report, "-q").code == 0
    trusted = _received(report, tmp_path, ["parity", "check", "hf", "export", "--prompt", "hi", "--trust-remote-code"])
    assert_one_line_error(run_parity("rerun", trusted, cwd=tmp_path), ExitCode.MODEL_OR_INPUT, "--trust-remote-code")
    for command in (["parity", "check", "m.onnx\0x", "m.mnn"], "parity check m.onnx m.mnn"):
        damaged = _received(report, tmp_path, command)
        assert_one_line_error(run_parity("rerun", damaged, cwd=tmp_path), ExitCode.MODEL_OR_INPUT, "received.json")


def test_a_rerun_of_a_report_from_another_machine_says_it_runs_here(tmp_path):
    report = tmp_path / "first.json"
    assert run_parity("check", *map(str, CNN), "--json", report, "-q").code == 0
    data = json.loads(report.read_text())
    data["rerun"]["cwd"] = "/builds/job/12345"  # a CI job's directory, not on this machine
    received = tmp_path / "received.json"
    received.write_text(json.dumps(data))
    result = run_parity("rerun", received, "-q", cwd=tmp_path)
    assert result.code == 0, result.err
    assert f"(in {tmp_path}, as /builds/job/12345 does not exist here)" in result.err


def test_a_rerun_s_own_tolerance_replaces_the_recorded_one_for_that_output(tmp_path):
    report = tmp_path / "first.json"
    assert run_parity("check", *CNN, "--tol", "logits=0,0", "--no-diagnose", "--json", report, "-q").code == 1
    again = tmp_path / "again.json"
    result = run_parity("rerun", report, "--tol", "logits=1,1", "--json", again, "-q", cwd=tmp_path)
    assert result.code == 0, result.err  # the recorded 0,0 replaced, not refused as given twice
    assert json.loads(again.read_text())["passed"]


def test_what_user_code_prints_goes_to_stderr_not_into_the_json_on_stdout(tmp_path):
    """A --data-loader (or --torch code) that prints, at import or while yielding, corrupted
    `--json -`: stdout is parity's."""
    (tmp_path / "loader.py").write_text(
        "import numpy as np\nprint('HELLO AT IMPORT')\n\n"
        "def samples():\n    print('HELLO FROM THE GENERATOR')\n"
        "    yield {'x': np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}\n")
    result = run_parity("check", *CNN, "--data-loader", f"{tmp_path / 'loader.py'}:samples", "--json", "-")
    assert result.code == ExitCode.PASS, result.err
    assert json.loads(result.out)["verdict"]["kind"] == "pass"
    assert "HELLO AT IMPORT" in result.err and "HELLO FROM THE GENERATOR" in result.err


def test_a_report_onto_the_repro_directory_is_refused_before_the_run(tmp_path):
    """It failed after the diagnosis had written the reproduction."""
    result = run_parity("check", *CNN, "--repro", "dup", "--json", "dup", cwd=tmp_path)
    assert_one_line_error(result, ExitCode.USAGE, "--repro directory")
    assert not (tmp_path / "dup").exists()
