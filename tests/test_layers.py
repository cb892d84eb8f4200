"""--layers: per-layer capture, pairing, first divergence, isolation and the memory cap."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import parity
from helpers import JSON_STDOUT, MODELS, ROOT, alter_filter, report_json, run_json, run_parity, save_model, tensor, to_mnn
from parity.core.errors import ExitCode


def mnn_tensor_names(path) -> set:
    """Names in an .mnn file, read by MNN itself in a separate process (not by parity)."""
    code = "import sys, json, MNN; print(json.dumps(list(MNN.expr.load_as_dict(sys.argv[1]))))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    # MNN prints a banner from C, whose buffer may flush before or after Python's
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("["))
    return set(json.loads(line))


def onnx_values(path) -> list:
    model = onnx.load(str(path))
    return [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]


@pytest.fixture(scope="module")
def altered_filter_cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("filter")
    altered = alter_filter(MODELS / "cnn.onnx", d / "altered.onnx", "conv3.weight", channel=5)
    return to_mnn(altered, d / "cnn_filter.mnn")


def test_altered_conv_filter_is_the_first_divergence(altered_filter_cnn):
    checked = parity.check([MODELS / "cnn.onnx", altered_filter_cnn], layers=True)
    assert checked.exit_code == ExitCode.MISMATCH
    report = report_json(checked)
    comparison = report["comparisons"][0]
    divergence = comparison["first_divergence"]
    conv3 = next(n for n in onnx.load(str(MODELS / "cnn.onnx")).graph.node
                 if n.op_type == "Conv" and n.input[1] == "conv3.weight")
    # the diverging tensor is conv3's output (MNN fuses its Relu into it)
    assert conv3.name in divergence["nodes"] and divergence["nodes"][0] == conv3.name
    assert divergence["introduced_here"] is True
    layers = comparison["layers"]
    at = next(i for i, layer in enumerate(layers) if layer["name"] == divergence["name"])
    assert at > 0 and all(layer["passed"] for layer in layers[:at])
    assert layers[at]["status"] == "introduced"
    # local error: fed ONNX Runtime's own input values, the conv alone is far off
    assert layers[at]["local_max_abs_diff"] > 1.0
    assert layers[at]["local_max_abs_diff"] == pytest.approx(layers[at]["max_abs_diff"], rel=0.05)
    verdict = report["verdict"]
    assert divergence["name"] in verdict["where"]
    for key in ("name", "reference_name", "candidate_name", "op_type", "passed", "max_abs_diff",
                "max_rel_diff", "cosine", "mismatch_fraction", "local_max_abs_diff", "status"):
        assert key in layers[at]


def test_the_terminal_shows_the_layers_around_the_first_divergence(altered_filter_cnn):
    result = run_parity("check", MODELS / "cnn.onnx", altered_filter_cnn, "--layers")
    assert result.code == ExitCode.MISMATCH, result.err
    assert "layers around the first divergence" in result.out


def test_a_large_model_keeps_one_copy_of_its_weights_with_the_same_findings(altered_filter_cnn):
    """Above PARITY_LARGE_MODEL_BYTES (1 GiB; lowered here) the capture session and module
    replace the model's own, which are loaded again for the diagnosis' runs: same figures."""
    args = ("check", MODELS / "cnn.onnx", altered_filter_cnn, "--layers")
    normal = run_json(*args)
    large = run_json(*args, env={"PARITY_LARGE_MODEL_BYTES": "1"})
    assert normal.code == large.code == ExitCode.MISMATCH, large.err
    a, b = normal.json(), large.json()
    assert a["verdict"]["kind"] == b["verdict"]["kind"] and a["verdict"]["where"] == b["verdict"]["where"]
    figures = ("name", "max_abs_diff", "cosine", "passed")
    assert ([[layer[k] for k in figures] for layer in a["comparisons"][0]["layers"]]
            == [[layer[k] for k in figures] for layer in b["comparisons"][0]["layers"]])
    assert a["verdict"]["evidence"] == b["verdict"]["evidence"]  # the runs after the capture agree


def test_transformer_layers_pair_and_pass():
    checked = parity.check([MODELS / "transformer.onnx", MODELS / "transformer.mnn"], layers=True)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    comparison = report_json(checked)["comparisons"][0]
    survivors = set(onnx_values(MODELS / "transformer.onnx")) & mnn_tensor_names(MODELS / "transformer.mnn")
    paired = {layer["name"] for layer in comparison["layers"]}
    assert len(paired & survivors) >= 0.8 * len(survivors), (len(paired & survivors), len(survivors))
    assert all(layer["passed"] for layer in comparison["layers"])
    assert comparison["first_divergence"] is None
    # every ONNX value is accounted for: paired or unpaired with a reason, never both
    unpaired = {u["name"]: u["reason"] for u in comparison["unpaired"]}
    assert paired.isdisjoint(unpaired) and all(unpaired.values())
    assert paired | set(unpaired) == set(onnx_values(MODELS / "transformer.onnx"))
    # a name that survives but holds post-GELU values is paired through MNN's rewrite instead
    fc1 = next(layer for layer in comparison["layers"] if layer["name"] == "/blocks.0/fc1/Add_output_0")
    assert fc1["candidate_name"].endswith("__matmul_converted")


def test_isolate_all_and_none(altered_filter_cnn):
    every = report_json(parity.check([MODELS / "cnn.onnx", altered_filter_cnn], layers=True, isolate="all"))
    statuses = [layer["status"] for layer in every["comparisons"][0]["layers"] if not layer["passed"]]
    assert statuses[0] == "introduced" and len(statuses) >= 2
    # downstream of the altered conv, the ops themselves are right: their error is carried
    assert "carried" in statuses[1:]
    none = report_json(parity.check([MODELS / "cnn.onnx", altered_filter_cnn], layers=True, isolate="none"))
    divergence = none["comparisons"][0]["first_divergence"]
    assert divergence["local_max_abs_diff"] is None and divergence["introduced_here"] is None


def _big_activation_model(path, size=(1, 32, 256, 256), depth=24):
    """A chain of elementwise ops on 8 MB tensors: ~200 MB of intermediates per framework."""
    nodes, previous = [], "x"
    inits = [numpy_helper.from_array(np.float32(0.5).reshape(1), "half"),
             numpy_helper.from_array(np.float32(0.1).reshape(1), "tenth")]
    for i in range(depth):
        op, other = [("Mul", "half"), ("Add", "tenth"), ("Relu", None)][i % 3]
        inputs = [previous] + ([other] if other else [])
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"n{i}"))
        previous = f"t{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    return save_model(nodes, [tensor("x", shape=list(size))], [tensor("y", shape=list(size))], path,
                      initializers=inits)


def _run_measured(*args):
    """Run parity; return (exit code, stdout, peak RSS in MiB of it and its children)."""
    code = (
        "import resource, subprocess, sys;"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stdout.write(p.stdout);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024);"
        "sys.exit(p.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "parity", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    *body, peak = proc.stdout.rstrip().splitlines()
    return proc.returncode, "\n".join(body), float(peak), proc.stderr


@pytest.mark.slow
def test_max_memory_caps_peak_rss(tmp_path):
    onnx_path = _big_activation_model(tmp_path / "big.onnx")
    mnn_path = to_mnn(onnx_path)
    code, _, plain_peak, err = _run_measured("check", onnx_path, mnn_path)
    assert code == ExitCode.PASS, err
    cap_mb = 64
    code, out, capped_peak, err = _run_measured("check", onnx_path, mnn_path, "--layers",
                                                "--max-memory", f"{cap_mb}M", *JSON_STDOUT)
    assert code == ExitCode.PASS, err
    report = json.loads(out)
    layers = report["comparisons"][0]["layers"]
    assert len(layers) >= 12 and all(layer["passed"] for layer in layers)
    # 24 tensors of 8 MiB per framework: 384 MiB if all were held; the cap keeps the held part
    # within 64 MiB, so peak RSS stays within the plain run's peak plus the cap
    print(f"peak RSS: plain {plain_peak:.0f} MiB, --layers with a {cap_mb} MiB cap {capped_peak:.0f} MiB")
    assert capped_peak <= plain_peak + cap_mb, (plain_peak, capped_peak)
    assert any("chunks" in note for note in report["comparisons"][0]["notes"])
    # and the scenario is real: without the cap, the same run holds far more
    code, _, uncapped_peak, err = _run_measured("check", onnx_path, mnn_path, "--layers", *JSON_STDOUT)
    assert code == ExitCode.PASS, err
    assert uncapped_peak > plain_peak + cap_mb, (plain_peak, uncapped_peak)


def _first_difference(a, b, path="") -> str:
    """Where two JSON values first differ, for the assertion message."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


def test_report_round_trips_through_json(altered_filter_cnn):
    from parity.core.report import Report

    result = run_json("check", MODELS / "cnn.onnx", altered_filter_cnn, "--layers")
    data = result.json()
    again = Report.from_dict(json.loads(json.dumps(data))).to_dict()
    assert again == data, _first_difference(again, data)
    report = Report.from_dict(data)
    assert report.comparisons[0].first_divergence.name == data["comparisons"][0]["first_divergence"]["name"]
    assert report.exit_code == ExitCode.MISMATCH and not report.passed


def test_float16_headroom_names_layers_that_overflow_or_underflow(tmp_path):
    """Without a device: per layer, how the reference values fit float16, so layers that would
    overflow (max|r| > 65504) or flush (values below 6.1e-5) with precision low are named."""
    scalar = lambda name, value: numpy_helper.from_array(np.array(value, np.float32), name)  # noqa: E731
    onnx_path = save_model(
        [helper.make_node("Mul", ["x", "big"], ["scaled"], name="scale_up"),
         helper.make_node("Mul", ["scaled", "inv"], ["back"], name="scale_down"),
         helper.make_node("Mul", ["back", "small"], ["tiny"], name="shrink"),
         helper.make_node("Relu", ["tiny"], ["out"], name="relu")],
        [tensor("x", shape=[1, 4, 8, 8])], [tensor("out", shape=[1, 4, 8, 8])], tmp_path / "fp16.onnx",
        initializers=[scalar("big", 3e4), scalar("inv", 1e-4), scalar("small", 1e-6)])
    checked = parity.check([onnx_path, to_mnn(onnx_path)], layers=True)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary  # on this CPU: float32 throughout
    comparison = report_json(checked)["comparisons"][0]
    layers = {layer["name"]: layer for layer in comparison["layers"]}
    x = np.random.default_rng([0, 0]).standard_normal((1, 4, 8, 8)).astype(np.float32)  # parity's seed-0 input
    assert layers["scaled"]["fp16_range"] == pytest.approx(float(np.abs(x).max()) * 3e4 / 65504, rel=1e-5)
    assert layers["scaled"]["fp16_range"] > 1 and layers["back"]["fp16_range"] < 1
    assert layers["out"]["fp16_subnormal"] > 0.9 and layers["back"]["fp16_subnormal"] == 0
    notes = " ".join(comparison["notes"])
    assert "beyond float16's 65504" in notes and "scaled (Mul)" in notes
    assert "below float16's smallest normal" in notes


def test_a_progress_callback_of_one_argument_still_works_with_layers():
    """parity.check(progress=...) takes a callable of the message; --layers also passes counts
    to callbacks that take them."""
    import parity

    seen, counted = [], []
    report = parity.check([MODELS / "transformer.onnx", MODELS / "transformer.mnn"], layers=True,
                          progress=seen.append)
    assert report.passed and any("layers" in message for message in seen)
    parity.check([MODELS / "transformer.onnx", MODELS / "transformer.mnn"], layers=True,
                  progress=lambda message, done=None, total=None: counted.append((done, total)))
    assert any(total for _, total in counted)


def test_layers_of_a_model_with_external_data_run_from_elsewhere(tmp_path, monkeypatch):
    """The capture model is spliced from the .onnx's bytes; ONNX Runtime finds the external
    weights in the model's directory whatever the working directory."""
    model = onnx.load(str(MODELS / "transformer.onnx"))
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "t.onnx"), save_as_external_data=True, location="t.weights",
              size_threshold=0)
    mnn = to_mnn(tmp_path / "m" / "t.onnx", tmp_path / "m" / "t.mnn")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    checked = parity.check([tmp_path / "m" / "t.onnx", mnn], layers=True)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    assert len(report_json(checked)["comparisons"][0]["layers"]) > 20
