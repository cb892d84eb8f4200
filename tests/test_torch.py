"""PyTorch in the chain: torch -> ONNX Runtime -> MNN, link by link, through each loading route
(through ``parity.check``; the --torch and --torch-inputs options and their errors through the CLI)."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

import parity  # noqa: E402
from helpers import ROOT, report_json, run_parity, to_mnn  # noqa: E402
from parity.core.errors import ExitCode  # noqa: E402

pytestmark = pytest.mark.torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import torch_models  # noqa: E402

FACTORY = f"{HERE / 'torch_models.py'}"


def export(model, args, path, input_names, output_names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def small_chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    model = torch_models.small_net()
    x = torch.randn(1, 3, 12, 12)
    onnx_path = export(model, (x,), d / "small.onnx", ["x"], ["logits"])
    mnn_path = to_mnn(onnx_path)
    pt2 = d / "small.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(pt2))
    ts = d / "small.pt"
    torch.jit.save(torch.jit.trace(model, (x,)), str(ts))
    return {"onnx": onnx_path, "mnn": mnn_path, "pt2": pt2, "ts": ts}


@pytest.mark.parametrize("route", ["pt2", "ts", "factory"])
def test_correct_model_passes_every_link(small_chain, route):
    torch_model = f"{FACTORY}:small_net" if route == "factory" else small_chain[route]
    checked = parity.check([torch_model, small_chain["onnx"], small_chain["mnn"]])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    report = report_json(checked)
    links = [(c["reference"], c["candidate"], c["passed"]) for c in report["comparisons"]]
    assert links == [("torch", "onnxruntime", True), ("onnxruntime", "mnn", True), ("torch", "mnn", True)]
    assert report["backends"][0]["name"] == "torch"
    assert report["verdict"]["kind"] == "pass"
    out = report["comparisons"][0]["outputs"][0]
    assert out["name"] == "logits" and out["reference_shape"] == [1, 5] and out["max_abs_diff"] < 1e-4


def test_torch_option_for_python_code(small_chain):
    result = run_parity("check", "--torch", f"{FACTORY}:SmallNet", small_chain["onnx"])
    # SmallNet() has fresh random weights: a class taking no arguments loads, and differs
    assert result.code == ExitCode.MISMATCH, result.err
    assert "torch -> onnxruntime" in result.out


def test_export_bug_is_the_export_link(tmp_path):
    model = torch_models.branchy()
    onnx_path = export(model, (torch.ones(1, 8),), tmp_path / "branchy.onnx", ["x"], ["y"])
    mnn_path = to_mnn(onnx_path)
    np.savez(tmp_path / "neg.npz", x=-np.ones((1, 8), np.float32))
    checked = parity.check([f"{FACTORY}:branchy", onnx_path, mnn_path], inputs=tmp_path / "neg.npz")
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    by_link = {(c["reference"], c["candidate"]): c["passed"] for c in report["comparisons"]}
    assert by_link == {("torch", "onnxruntime"): False, ("onnxruntime", "mnn"): True, ("torch", "mnn"): False}
    assert report["verdict"]["kind"] == "export"
    assert "torch -> onnxruntime" in report["verdict"]["where"]
    # the same model on the input it was exported with passes
    np.savez(tmp_path / "pos.npz", x=np.ones((1, 8), np.float32))
    ok = parity.check([f"{FACTORY}:branchy", onnx_path, mnn_path], inputs=tmp_path / "pos.npz")
    assert ok.exit_code == ExitCode.PASS, ok.verdict.summary


def test_dict_outputs_with_other_onnx_names_pair_by_order(tmp_path):
    model = torch_models.dict_out()
    onnx_path = export(model, (torch.randn(2, 6),), tmp_path / "d.onnx", ["x"], ["scores", "feats"])
    checked = parity.check([f"{FACTORY}:dict_out", onnx_path, to_mnn(onnx_path)])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    first = report_json(checked)["comparisons"][0]["outputs"]
    pairs = {(o["reference_name"], o["candidate_name"]): (o["reference_shape"], o["candidate_shape"]) for o in first}
    assert pairs == {("logits", "scores"): ([2, 5], [2, 5]), ("features", "feats"): ([2, 3, 4], [2, 3, 4])}
    assert all(o["passed"] and "paired by order" in o["alignment"][0] for o in first)


def test_dict_outputs_pair_by_name_where_names_match(tmp_path):
    model = torch_models.dict_out()
    # ONNX names swapped relative to the torch dict's order: pairing by name must win over order
    onnx_path = export(model, (torch.randn(2, 6),), tmp_path / "d.onnx", ["x"], ["logits", "features"])
    checked = parity.check([f"{FACTORY}:dict_out", onnx_path])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    outputs = report_json(checked)["comparisons"][0]["outputs"]
    assert {(o["reference_name"], o["candidate_name"]) for o in outputs} == {("logits", "logits"), ("features", "features")}
    assert all(o["alignment"] == [] for o in outputs)


def test_nested_tuple_outputs(tmp_path):
    model = torch_models.nested_tuple_out()
    onnx_path = export(model, (torch.randn(2, 6),), tmp_path / "t.onnx", ["x"], ["first", "second", "third"])
    checked = parity.check([f"{FACTORY}:nested_tuple_out", onnx_path, to_mnn(onnx_path)])
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    outputs = report_json(checked)["comparisons"][0]["outputs"]
    assert [(o["reference_name"], o["candidate_name"], o["reference_shape"]) for o in outputs] == [
        ("0", "first", [2, 3]), ("1.0", "second", [2]), ("1.1", "third", [2, 2, 2])]


def test_torch_inputs_order(tmp_path):
    onnx_path = export(torch_models.TwoInputs(), (torch.randn(3), torch.randn(3)), tmp_path / "two.onnx",
                       ["a", "b"], ["y"])
    good = run_parity("check", "--torch", f"{FACTORY}:TwoInputs", "--torch-inputs", "a,b", onnx_path)
    assert good.code == ExitCode.PASS, good.err
    swapped = run_parity("check", "--torch", f"{FACTORY}:TwoInputs", "--torch-inputs", "b,a", onnx_path)
    assert swapped.code == ExitCode.MISMATCH, swapped.err
    unknown = run_parity("check", "--torch", f"{FACTORY}:TwoInputs", "--torch-inputs", "a,c", onnx_path)
    assert unknown.code == ExitCode.USAGE and "Traceback" not in unknown.err


def test_bad_torch_sources(tmp_path):
    missing = run_parity("check", "--torch", f"{tmp_path}/nope.py:f", ROOT / "models/cnn.onnx")
    assert missing.code == ExitCode.MODEL_OR_INPUT and "does not exist" in missing.err
    no_attr = run_parity("check", "--torch", f"{FACTORY}:nope", ROOT / "models/cnn.onnx")
    assert no_attr.code == ExitCode.MODEL_OR_INPUT and "has no 'nope'" in no_attr.err
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    bad = run_parity("check", junk, ROOT / "models/cnn.onnx")
    assert bad.code == ExitCode.MODEL_OR_INPUT and "Traceback" not in bad.err


@pytest.mark.parametrize("where, code", [("import", 0), ("factory", 0), ("forward", 0), ("forward", "bye")])
def test_torch_code_that_exits_is_an_error_never_parity_s_exit(small_chain, tmp_path, where, code):
    exit_line = f"sys.exit({code!r})"
    (tmp_path / "exits.py").write_text(
        "import sys\nimport torch\n" + (exit_line + "\n" if where == "import" else "")
        + "class Net(torch.nn.Module):\n    def forward(self, x):\n"
        + (f"        {exit_line}\n" if where == "forward" else "") + "        return x.mean(dim=(2, 3))\n"
        + "def make():\n" + (f"    {exit_line}\n" if where == "factory" else "") + "    return Net()\n")
    report = tmp_path / "r.json"
    result = run_parity("check", "--torch", f"{tmp_path / 'exits.py'}:make", small_chain["onnx"], "--json", report)
    expected = ExitCode.BACKEND if where == "forward" else ExitCode.MODEL_OR_INPUT
    assert result.code == expected, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "sys.exit" in lines[0], result.err
    assert not report.exists()


def test_export_bug_first_divergence_names_the_module(tmp_path):
    model = torch_models.branchy()
    onnx_path = export(model, (torch.ones(1, 8),), tmp_path / "branchy.onnx", ["x"], ["y"])
    mnn_path = to_mnn(onnx_path)
    np.savez(tmp_path / "neg.npz", x=-np.ones((1, 8), np.float32))
    checked = parity.check([f"{FACTORY}:branchy", onnx_path, mnn_path], inputs=tmp_path / "neg.npz", layers=True)
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    export_link = report["comparisons"][0]
    assert (export_link["reference"], export_link["candidate"]) == ("torch", "onnxruntime")
    divergence = export_link["first_divergence"]
    # the ONNX graph froze the branch torch took at export: module 'pos'; torch now ran 'neg'
    assert divergence["module"] == "pos" and divergence["introduced_here"] is True
    assert any("did not run in torch" in note and "pos" in note for note in export_link["notes"])
    assert report["comparisons"][1]["first_divergence"] is None  # ONNX Runtime -> MNN is fine
    assert report["verdict"]["kind"] == "export" and "module pos" in report["verdict"]["where"]


def test_torch_layers_map_modules_on_a_correct_model():
    checked = parity.check([f"{ROOT / 'scripts/make_models.py'}:transformer", ROOT / "models/transformer.onnx"],
                           layers=True)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    layers = report_json(checked)["comparisons"][0]["layers"]
    modules = {layer["module"] for layer in layers}
    assert {"embed", "blocks.0.attn.qkv", "blocks.0.fc1", "blocks.1.norm2", "out"} <= modules
    assert all(layer["passed"] for layer in layers)
