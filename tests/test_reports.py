"""Reports people look at (HTML, JUnit, Model Explorer), the pytest plugin, and parity sweep."""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from helpers import MODELS, ROOT, alter_filter, assert_one_line_error, run_json, run_parity, to_mnn
from parity.core.errors import ExitCode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def failing_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("reports")
    altered = alter_filter(MODELS / "cnn.onnx", d / "altered.onnx", "conv3.weight", channel=1)
    return MODELS / "cnn.onnx", to_mnn(altered, d / "cnn.mnn")


@pytest.fixture(scope="module")
def failing_reports(failing_pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    onnx_path, mnn_path = failing_pair
    result = run_parity("check", onnx_path, mnn_path, "--layers", "--html", d / "r.html", "--junit", d / "r.xml",
                        "--model-explorer", d / "me.json", "--json", d / "r.json")
    assert result.code == ExitCode.MISMATCH, result.err
    return d


def test_html_is_self_contained_with_the_chart(failing_reports):
    page = (failing_reports / "r.html").read_text()
    assert 'id="layer-chart"' in page and 'class="first-divergence"' in page and 'id="diff-histogram"' in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    report = json.loads((failing_reports / "r.json").read_text())
    assert report["verdict"]["kind"].upper() in page and report["verdict"]["where"].split(" (")[0] in page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
def test_html_loads_in_a_real_browser_without_console_errors(failing_reports):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={failing_reports / 'profile'}", "--enable-logging=stderr", "--v=0"]
    url = (failing_reports / "r.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert 'id="layer-chart"' in dom.stdout, dom.stderr[-2000:]
    assert "<polyline" in dom.stdout and "first-divergence" in dom.stdout
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert console == [], console
    shot = failing_reports / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,1800", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_junit_has_a_testcase_per_output_per_link_and_failing_layer(failing_reports):
    root = ET.parse(failing_reports / "r.xml").getroot()
    report = json.loads((failing_reports / "r.json").read_text())
    outputs = sum(len(c["outputs"]) for c in report["comparisons"])
    failing_layers = sum(not layer["passed"] for c in report["comparisons"] for layer in c.get("layers") or [])
    cases = root.findall(".//testcase")
    assert len(cases) == outputs + failing_layers
    assert len([c for c in cases if c.get("name").startswith("output ")]) == outputs
    assert int(root.get("failures")) == len(root.findall(".//failure"))


def test_junit_counts_outputs_times_links_on_a_chain(tmp_path):
    pytest.importorskip("torch")
    result = run_parity("check", "--torch", f"{ROOT / 'scripts/make_models.py'}:cnn", MODELS / "cnn.onnx",
                        MODELS / "cnn.mnn", "--junit", tmp_path / "j.xml")
    assert result.code == ExitCode.PASS, result.err
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert len(root.findall("testsuite")) == 3 and len(root.findall(".//testcase")) == 1 * 3
    assert root.get("failures") == "0"


def test_model_explorer_overlay_is_keyed_by_onnx_tensor_names(failing_reports):
    import onnx

    data = json.loads((failing_reports / "me.json").read_text())
    names = {o for n in onnx.load(str(MODELS / "cnn.onnx")).graph.node for o in n.output}
    assert data["results"] and set(data["results"]) <= names
    assert all(isinstance(v["value"], float) for v in data["results"].values())
    assert any(v.get("bgColor") == "#d32f2f" for v in data["results"].values())  # the first divergence
    assert [t["value"] for t in data["thresholds"]] == sorted(t["value"] for t in data["thresholds"])


def test_unwritable_report_paths_fail_first(tmp_path):
    from helpers import crashing_model

    crashing = crashing_model(tmp_path)  # MNN dies running it: a check that ran first would exit 4
    for flag in ("--html", "--junit", "--model-explorer", "--json"):
        result = run_parity("check", *crashing, flag, tmp_path / "no" / "x")
        assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, flag)


def test_sweep_reports_every_pair_and_shards_cover_them_once():
    full = run_json("sweep", MODELS, "-j", "2")
    assert full.code == ExitCode.PASS, full.err
    names = sorted(r["name"] for r in full.json()["results"])
    expected = sorted(p.stem for p in MODELS.glob("*.onnx") if p.with_suffix(".mnn").exists())
    assert names == expected and len(names) >= 2
    shards = [run_json("sweep", MODELS, "--shard", f"{k}/2") for k in (1, 2)]
    seen = [r["name"] for s in shards for r in s.json()["results"]]
    assert sorted(seen) == expected and len(seen) == len(set(seen))


def test_sweep_manifest_options_and_worst_exit_code(tmp_path, failing_pair):
    _, bad_mnn = failing_pair
    shutil.copy(bad_mnn, tmp_path / "bad.mnn")
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(
        f'[[model]]\nname = "good"\nonnx = "{MODELS / "transformer.onnx"}"\nmnn = "{MODELS / "transformer.mnn"}"\n'
        f'atol = 0.01\n[model.shape]\n\n'
        f'[[model]]\nname = "bad"\nonnx = "{MODELS / "cnn.onnx"}"\nmnn = "bad.mnn"\n'
        f'[[model]]\nname = "missing"\nonnx = "{MODELS / "cnn.onnx"}"\nmnn = "nope.mnn"\n')
    result = run_parity("sweep", manifest, "-j", "2", "--json", tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    by_name = {r["name"]: r for r in data["results"]}
    assert by_name["good"]["exit_code"] == 0 and by_name["bad"]["exit_code"] == ExitCode.MISMATCH
    assert by_name["missing"]["exit_code"] == ExitCode.MODEL_OR_INPUT and "does not exist" in by_name["missing"]["error"]
    assert by_name["bad"]["verdict"]["kind"] == "conversion"
    assert result.code == data["exit_code"] == ExitCode.MODEL_OR_INPUT  # the worst pair


def test_sweep_bad_target_and_shard(tmp_path):
    assert_one_line_error(run_parity("sweep", tmp_path / "nope"), ExitCode.MODEL_OR_INPUT, "does not exist")
    assert_one_line_error(run_parity("sweep", tmp_path), ExitCode.MODEL_OR_INPUT, "no model pairs")
    assert_one_line_error(run_parity("sweep", MODELS, "--shard", "3/2"), ExitCode.USAGE, "--shard")


def test_plugin_import_is_light():
    code = ("import sys, parity.pytest_plugin; print(','.join(m for m in ('torch', 'onnxruntime', 'MNN', 'onnx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


pytest_plugins = ["pytester"]


def test_pytest_plugin_pass_and_fail(pytester, failing_pair):
    onnx_path, bad_mnn = failing_pair
    pytester.makepyfile(f'''
        def test_good(assert_parity):
            report = assert_parity(r"{onnx_path}", r"{MODELS / 'cnn.mnn'}", atol=1e-4)
            assert report.passed

        def test_bad(assert_parity):
            assert_parity(r"{onnx_path}", r"{bad_mnn}")
    ''')
    result = pytester.runpytest_subprocess()  # the plugin loads through its pytest11 entry point
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*parity: conversion*", "*onnxruntime -> mnn: FAIL*"])
    xdist = pytester.runpytest_subprocess("-n", "2")
    xdist.assert_outcomes(passed=1, failed=1)


def test_pytest_plugin_errors_read_as_parity_s_own_line(pytester):
    """A bad model path or argument fails the test with parity's error under the test's line, not
    parity's frames; pytest.raises still takes it; a bad --parity-mnn-target stops pytest at once."""
    pytester.makepyfile(f'''
        import parity, pytest

        def test_missing(assert_parity):
            assert_parity("nope.onnx", r"{MODELS / 'cnn.mnn'}")

        def test_atol_text(assert_parity):
            assert_parity(r"{MODELS / 'cnn.onnx'}", r"{MODELS / 'cnn.mnn'}", atol="abc")

        def test_raises(assert_parity):
            with pytest.raises(parity.ModelError):
                assert_parity("nope.onnx", r"{MODELS / 'cnn.mnn'}")

        def test_numpy_tolerance(assert_parity):  # np.finfo(np.float32).eps * k is a numpy scalar
            import numpy as np
            assert assert_parity(r"{MODELS / 'cnn.onnx'}", r"{MODELS / 'cnn.mnn'}", atol=np.float32(1e-3)).passed
    ''')
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*ModelError: model file 'nope.onnx' does not exist",
                                 "*UsageError: atol must be a number >= 0, not 'abc'"])
    assert "pipeline.py" not in result.stdout.str() and "paths.py" not in result.stdout.str()
    bad = pytester.runpytest_subprocess("--parity-mnn-target", "ftp://bogus")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--parity-mnn-target: unknown --mnn-target 'ftp://bogus'*"])
