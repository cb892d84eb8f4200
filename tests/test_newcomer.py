"""What a new user met following the README on a fresh clone (issue 21): the unpaired values
promised in a JSON report nobody wrote, a reproduction that did not reproduce because it was
converted afresh, dict reprs in README.txt and the HTML, the HTML missing the terminal's notes
and numbering layers otherwise, sweep's time, and exit 2 read as the verdict kind `usage`.

(Next steps naming paths as given: test_friction.py; output on an ASCII stdout:
test_output_encoding.py.)"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from onnx import helper

from helpers import MODELS, alter_initializer, run_parity, save_model, tensor, to_mnn
from parity.core.errors import ExitCode

UNPAIRED = ["/conv1/Conv_output_0", "/conv2/Conv_output_0", "/conv3/Conv_output_0"]  # fused into Relu


@pytest.fixture(scope="module")
def changed_pair(tmp_path_factory):
    """models/cnn.onnx and an .mnn converted from a copy with one weight changed: a given file
    a fresh conversion beats (verdict conversion)."""
    d = tmp_path_factory.mktemp("changed")
    altered = alter_initializer(MODELS / "cnn.onnx", d / "altered.onnx", "conv3.weight", index=4, delta=3.0)
    return MODELS / "cnn.onnx", to_mnn(altered, d / "cnn_changed.mnn")


# -- unpaired values: listed where a person can read them -----------------------------------------
def test_unpaired_values_are_listed_in_the_terminal_without_a_report():
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--layers", env={"PARITY_WIDTH": "200"})
    assert result.code == ExitCode.PASS, result.err
    assert "JSON report" not in result.out
    assert "onnxruntime -> mnn: 6 layers paired, 6 pass, 0 fail; 3 unpaired\n" in result.out
    line = next(ln for ln in result.out.splitlines() if ln.startswith("  unpaired (3), "))
    assert "fused into a neighbouring op or renamed by the converter" in line
    assert all(name in line for name in UNPAIRED), line


def test_unpaired_values_point_to_the_report_that_lists_them(tmp_path):
    report = tmp_path / "r.json"
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--layers", "--json", report,
                        env={"PARITY_WIDTH": "400"})
    assert result.code == ExitCode.PASS, result.err
    assert f"3 unpaired (listed with their reasons in {report})" in result.out
    assert f"(listed with their reasons in {report})" in result.out.splitlines()[2]  # the first screen
    assert not any(name in result.out for name in UNPAIRED)  # the file has them, the terminal does not
    assert [u["name"] for u in json.loads(report.read_text())["comparisons"][0]["unpaired"]] == UNPAIRED


def test_many_unpaired_values_are_bounded_and_say_where_the_rest_are():
    result = run_parity("check", MODELS / "transformer.onnx", MODELS / "transformer.mnn", "--layers",
                        env={"PARITY_WIDTH": "400"})
    assert result.code == ExitCode.PASS, result.err
    lines = [ln for ln in result.out.splitlines() if ln.startswith("  unpaired (")]
    counts = [int(re.match(r"  unpaired \((\d+)\)", ln).group(1)) for ln in lines]
    assert sum(counts) == 20 and max(counts) > 5, lines
    biggest = lines[counts.index(max(counts))]
    assert biggest.endswith(f"and {max(counts) - 5} more") and biggest.count(", /") == 4, biggest
    assert "--json FILE or --html FILE lists every unpaired value" in result.out


def test_nothing_is_said_about_zero_unpaired_values(tmp_path):
    onnx_path = save_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["s"]),
                            helper.make_node("Mul", ["s", "x"], ["y"])],
                           [tensor("x", shape=[1, 8])], [tensor("y", shape=[1, 8])], tmp_path / "tiny.onnx")
    result = run_parity("check", onnx_path, to_mnn(onnx_path), "--layers")
    assert result.code == ExitCode.PASS, result.err
    assert "3 layers paired, 3 pass, 0 fail\n" in result.out
    assert "unpaired" not in result.out


def test_the_pytest_fixture_lists_unpaired_values(changed_pair):
    from parity.pytest_plugin import check_parity

    with pytest.raises(pytest.fail.Exception) as failed:
        check_parity(*changed_pair, layers=True)
    message = str(failed.value)
    assert "JSON report" not in message
    assert all(name in message for name in UNPAIRED), message


# -- --repro for a given file that a fresh conversion beats ------------------------------------
def test_repro_of_a_wrong_given_file_carries_that_file(changed_pair, tmp_path):
    onnx_path, mnn_path = changed_pair
    out = tmp_path / "repro"
    result = run_parity("check", onnx_path, mnn_path, "--repro", out, "--json", tmp_path / "r.json")
    assert result.code == ExitCode.MISMATCH, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"]["kind"] == "conversion"
    assert any(e.get("experiment") == "fresh conversion" and e.get("passed") for e in report["verdict"]["evidence"])
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "given.mnn", "inputs.npz", "model.onnx"]
    assert (out / "given.mnn").read_bytes() == mnn_path.read_bytes()  # the wrong file itself
    assert (out / "model.onnx").read_bytes() == onnx_path.read_bytes()
    readme = (out / "README.txt").read_text()
    assert "The given file is what is wrong" in readme and "Result here: it reproduces" in readme
    assert "NOT reproduce" not in readme
    note = next(n for n in report["notes"] if "written to" in n)
    assert "(reproduces)" in note and "the given .mnn and the ONNX" in note
    # README.txt reads as key: value lines, not Python reprs
    assert "{'" not in readme and "True" not in readme and "False" not in readme
    assert "    passed: no" in readme and "  - experiment: fresh conversion" in readme
    assert "  threads: 4" in readme
    # its command, run where it is, shows the bug
    command = shlex.split(next(ln for ln in readme.splitlines() if ln.startswith("  parity check")))
    assert command[:4] == ["parity", "check", "model.onnx", "given.mnn"]
    assert run_parity(*command[1:], cwd=out).code == ExitCode.MISMATCH



def test_repro_carries_the_given_file_when_a_fresh_conversion_is_decisively_better_but_fails(tmp_path):
    """The verdict "not what MNN's converter makes" also stands when the fresh conversion fails
    at the layer yet is tenfold better (here a tolerance of 1e-12 that float32 rounding fails):
    --repro follows the verdict's flag, not its own reading of the figures, and carries the
    given file (a conversion made here would not show the error)."""
    onnx_path = MODELS / "cnn.onnx"
    # the first convolution (BatchNorm folded into it) changed: the first layer diverges in the given file
    altered = alter_initializer(onnx_path, tmp_path / "altered.onnx", "onnx::Conv_31", index=4, delta=3.0)
    mnn_path = to_mnn(altered, tmp_path / "cnn_changed.mnn")
    out = tmp_path / "repro"
    result = run_parity("check", onnx_path, mnn_path, "--atol", "1e-12", "--rtol", "0", "--layer-rtol", "0",
                        "--repro", out, "--json", tmp_path / "r.json")
    assert result.code == ExitCode.MISMATCH, result.err
    verdict = json.loads((tmp_path / "r.json").read_text())["verdict"]
    assert verdict["kind"] == "conversion" and "is not what MNN's converter makes" in verdict["summary"]
    fresh = next(e for e in verdict["evidence"] if e.get("experiment") == "fresh conversion")
    assert fresh["passed"] is False and fresh["given_file"]["passed"] is False  # decisive, not passing
    assert fresh["given_file"]["scaled_error"] >= 10 * fresh["scaled_error"]
    assert fresh["given_file_is_wrong"] is True
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "given.mnn", "inputs.npz", "model.onnx"]
    assert (out / "given.mnn").read_bytes() == mnn_path.read_bytes()
    readme = (out / "README.txt").read_text()
    assert "The given file is what is wrong" in readme and "Result here: it reproduces" in readme


def test_a_passing_fresh_conversion_that_no_verdict_stood_on_is_no_reason_to_carry_the_given_file(
        changed_pair, tmp_path):
    """Only the verdict's flag sends --repro to the given file: the same fresh-conversion figures
    without it (an experiment the diagnosis went past, e.g. two structurally identical graphs,
    and decided on another) leave the reproduction to the first divergence."""
    from types import SimpleNamespace

    from parity.checking.repro import given_file_is_wrong

    result = run_parity("check", *changed_pair, "--json", tmp_path / "r.json")
    assert result.code == ExitCode.MISMATCH, result.err
    evidence = json.loads((tmp_path / "r.json").read_text())["verdict"]["evidence"]
    assert given_file_is_wrong(SimpleNamespace(evidence=evidence))
    unflagged = [{k: v for k, v in e.items() if k != "given_file_is_wrong"} for e in evidence]
    fresh = next(e for e in unflagged if e.get("experiment") == "fresh conversion")
    assert fresh["passed"] is True and fresh["given_file"]["passed"] is False  # what the old rule read
    assert not given_file_is_wrong(SimpleNamespace(evidence=unflagged))

# -- the HTML report: readable evidence, the terminal's notes and numbering --------------------
@pytest.fixture(scope="module")
def html_case(changed_pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    result = run_parity("check", *changed_pair, "--layers", "--html", d / "r.html", "--json", d / "r.json")
    assert result.code == ExitCode.MISMATCH, result.err
    plain = run_parity("check", *changed_pair, "--layers", env={"PARITY_WIDTH": "200"})
    return (d / "r.html").read_text(), json.loads((d / "r.json").read_text()), plain.out


def test_html_evidence_is_key_value_text_in_bounded_cells(html_case):
    page, report, _ = html_case
    evidence = page[page.index("<h3>Evidence</h3>"):page.index("</table>", page.index("<h3>Evidence</h3>"))]
    assert "{&#x27;" not in evidence and "{'" not in evidence  # no dict reprs
    assert ">True<" not in evidence and "True" not in evidence and "False" not in evidence
    assert evidence.count("<tr>") == len(report["verdict"]["evidence"]) + 1  # one row per experiment
    assert "passed: no" in evidence and "passed: yes" in evidence
    assert "given_file:\n  scaled_error: " in evidence  # nested: indented
    assert ".kv{" in page and "max-height:14em" in page and "overflow:auto" in page


def test_html_has_the_output_notes_and_the_unpaired_list(html_case):
    page, report, _ = html_case
    notes = [n for o in report["comparisons"][0]["outputs"] for n in o["notes"]]
    assert notes and all(n.split(":")[0] in page for n in notes)
    unpaired = page[page.index("<h2>Unpaired values</h2>"):]
    for u in report["comparisons"][0]["unpaired"]:
        assert f"<td>{u['name']}</td>" in unpaired and u["reason"] in unpaired


def test_html_chart_numbers_layers_as_the_terminal_does(html_case):
    page, report, terminal = html_case
    chart = page[page.index('id="layer-chart"'):page.index("</svg>", page.index('id="layer-chart"'))]
    ticks = [int(t) for t in re.findall(r'class="tick"[^>]*>(\d+)<', chart)]
    terminal_numbers = [int(m) for m in re.findall(r"^│ (\d+) +│", terminal, re.M)]
    indices = [layer["index"] for layer in report["comparisons"][0]["layers"]]
    assert ticks == indices == terminal_numbers, (ticks, indices, terminal_numbers)
    assert ticks != list(range(len(ticks)))  # the numbering that used to differ
    where = report["comparisons"][0]["first_divergence"]["name"]
    index = next(x["index"] for x in report["comparisons"][0]["layers"] if x["name"] == where)
    assert f"first divergence: #{index} {where}" in chart


# -- sweep: the elapsed time, no trailing spaces --------------------------------------------------
def test_sweep_summary_gives_the_elapsed_time(tmp_path):
    report_path = tmp_path / "sweep.json"
    result = run_parity("sweep", MODELS, "-j", "2", "--json", report_path)
    assert result.code == ExitCode.PASS, result.err
    data = json.loads(report_path.read_text())
    assert all(line == line.rstrip() for line in result.out.splitlines()), result.out
    assert result.out.splitlines()[0] == f"parity sweep {MODELS}"
    summary = result.out.splitlines()[-1]
    pairs = sum(r["seconds"] for r in data["results"])
    assert summary.startswith(f"=== 2 passed in {data['elapsed_seconds']:.1f}s; the pairs' own times add up to "
                              f"{pairs:.1f}s"), summary


def test_sweep_summary_is_not_the_sum_of_the_pairs():
    """With -j 2 two pairs of 5 s each take about 5 s, not 10: the summary says the sweep's own time."""
    from parity.render.text import render_sweep
    from parity.checking.sweep import SweepReport

    results = [{"name": n, "models": [], "exit_code": 0, "passed": True, "verdict": {"kind": "pass"},
                "mnn_target": "local", "mnn_precision": "normal", "error": None, "seconds": 5.0} for n in "ab"]
    buffer = io.StringIO()
    render_sweep(SweepReport("zoo", None, results, elapsed=5.4), buffer)
    assert buffer.getvalue().splitlines()[-1] == ("=== 2 passed in 5.4s; the pairs' own times add up to 10.0s "
                                                  "(exit 0) ===")
    assert SweepReport("zoo", None, results, elapsed=5.4).to_dict()["elapsed_seconds"] == 5.4


# -- exit 2 is a command-line error, not the verdict kind `usage` --------------------------------
def test_exit_two_is_called_a_command_line_error():
    result = subprocess.run([sys.executable, "-m", "parity", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert "2 command-line error" in result.stdout and "usage error" not in result.stdout
