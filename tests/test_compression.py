"""Compressed .mnn models: the compression read from the file, the loss split between
conversion (ONNX -> float MNN) and compression (float MNN -> compressed MNN), judged by a
budget, the layers ranked by their own cost, and the fix measured. MNN's converter makes every
model here for real. The verdicts are reached through the library (parity.convert, then
parity.check); ``parity convert``'s own options (--write-fixed, --html, --int8-calibration)
and its errors through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from compressed_models import OUTLIER_LAYER, outlier_mlp
from helpers import MODELS, alter_initializer, assert_one_line_error, report_json, run_json, run_parity
from parity.mnn import flatbuffer as mnn_flatbuffer
from parity.checking.budget import Budget, measure
from parity.core.errors import ExitCode, UsageError

TRANSFORMER = MODELS / "transformer.onnx"


def _convert(tmp_path, onnx_path, *options, name="model.mnn", extra=()):
    """``parity convert ONNX -o OUT --json - -q EXTRA OPTIONS``: (exit code, report, OUT)."""
    out = tmp_path / name
    result = run_json("convert", onnx_path, "-o", out, "-q", *extra, *options)
    assert result.code in (0, 1), result.err
    return result.code, result.json(), out


def _compress(tmp_path, onnx_path, *options, name="model.mnn", **check):
    """What ``parity convert`` does, through the library: MNN's converter with ``options``
    (parity.convert), then the pair checked (parity.check, with the keywords ``check``).
    Returns (exit code, the report as its JSON reads, the .mnn)."""
    out = tmp_path / name
    parity.convert(onnx_path, out, options=list(options))
    report = parity.check([onnx_path, out], **check)
    return report.exit_code, report_json(report), out


def _links(report):
    return {c.get("reference_run", c["reference"]) + " -> " + c.get("candidate_run", c["candidate"]): c
            for c in report["comparisons"]}


@pytest.mark.parametrize("options, kind, words", [
    (["--weightQuantBits", "4"], "int4", "4-bit weights (asymmetric, per channel) on 10 of 10"),
    (["--weightQuantBits", "8"], "int8", "8-bit weights (asymmetric, per channel) on 10 of 10"),
    (["--fp16"], "fp16", "float16 weights on 10 of 10"),
    (["--weightQuantBits", "4", "--weightQuantBlock", "16"], "int4", "4-bit weights (asymmetric, block 16)"),
    (["--weightQuantBits", "8", "--weightQuantAsymmetric"], "int8", "8-bit weights (symmetric, per channel)"),
])
def test_convert_compressed_is_judged_by_its_budget_not_as_a_conversion(tmp_path, options, kind, words):
    code, report, _ = _compress(tmp_path, TRANSFORMER, *options)
    assert report["compression"]["kind"] == kind and words in report["compression"]["summary"]
    links = _links(report)
    assert set(links) == {"onnxruntime -> float conversion", f"float conversion -> {kind_label(kind)}",
                          f"onnxruntime -> {kind_label(kind)}"}
    assert links["onnxruntime -> float conversion"]["passed"]
    budget = links[f"float conversion -> {kind_label(kind)}"]["outputs"][0]["budget"]
    assert budget["rule"] == README_BUDGETS[kind] and budget["cosine"] > 0.98
    # exit code by the budget: the defaults hold for these compressions of the shipped model
    assert code == 0 and report["verdict"]["kind"] == "pass", report["verdict"]
    assert "within its budget" in report["verdict"]["summary"]


# The README's default budgets ("Budgets"), written out: the code under test must not supply them
README_BUDGETS = {"fp16": "cosine>=0.9999", "int8": "cosine>=0.999", "int4": "cosine>=0.98", "int8-full": "cosine>=0.99"}


def test_the_default_budgets_are_the_readmes():
    assert {kind: Budget.default_for(kind).text for kind in README_BUDGETS} == README_BUDGETS
    # a compression the table does not name, and a mix (the loosest of its kinds)
    assert Budget.default_for(None).text == Budget.default_for("unknown").text == "cosine>=0.98"
    assert Budget.default_for("int8+fp16").text == "cosine>=0.999"
    assert Budget.default_for("int4+int8").text == "cosine>=0.98"
    row = next(line for line in (MODELS.parent / "README.md").read_text().splitlines() if "**default budget**" in line)
    assert [cell.strip(" *`") for cell in row.strip("|").split("|")[1:]] == [
        "cosine>=0.9999", "cosine>=0.999", "cosine>=0.98", "cosine>=0.98"]


def test_the_default_budget_judges_by_its_value():
    """cosine 0.995 (an int4 compression's typical figure) passes int4's default and fails int8's."""
    import numpy as np

    reference = np.sin(np.arange(64, dtype=np.float64))
    candidate = reference + 0.1 * np.cos(3 * np.arange(64))
    from parity.checking.budget import measure

    cosine = measure(reference, candidate)["cosine"]
    assert 0.98 < cosine < 0.999
    assert Budget.default_for("int4").judge(reference, candidate)[0] is True
    assert Budget.default_for("int8").judge(reference, candidate)[0] is False
    assert Budget.default_for("fp16").judge(reference, candidate)[0] is False


def kind_label(kind: str) -> str:
    return {"int4": "4-bit weights", "int8": "8-bit weights", "fp16": "float16 weights"}[kind]


def test_a_budget_the_compression_misses_is_the_compression_verdict_with_a_ranking(tmp_path):
    code, report, _ = _compress(tmp_path, TRANSFORMER, "--weightQuantBits", "4", budget="cosine>=0.999")
    assert code == ExitCode.MISMATCH
    verdict = report["verdict"]
    assert verdict["kind"] == "compression", verdict
    assert "the float conversion matches ONNX Runtime" in verdict["summary"]
    ranking = report["ranking"]
    assert len(ranking["layers"]) == 10 and [x["rank"] for x in ranking["layers"]] == list(range(1, 11))
    costs = [x["cost"] for x in ranking["layers"]]
    assert costs == sorted(costs, reverse=True)
    recompressed = next(e for e in verdict["evidence"] if e.get("experiment") == "recompression of the float conversion")
    assert recompressed["within_budget"] is False  # the loss is compression's own


def test_outlier_layer_ranks_first_and_keeping_it_in_float_restores_the_budget(tmp_path):
    onnx_path = outlier_mlp(tmp_path)
    fixed = tmp_path / "fixed.mnn"
    html = tmp_path / "report.html"
    code, report, _ = _convert(tmp_path, onnx_path, "--weightQuantBits", "4",
                               extra=("--write-fixed", fixed, "--html", html))
    page = html.read_text()
    assert "Compressed layers by cost" in page and f"1. {OUTLIER_LAYER}" in page
    assert code == ExitCode.MISMATCH and report["verdict"]["kind"] == "compression"
    ranking = report["ranking"]
    first = ranking["layers"][0]
    assert first["name"] == OUTLIER_LAYER and first["cost"] > 10 * ranking["layers"][1]["cost"]
    assert report["verdict"]["where"].startswith(OUTLIER_LAYER)
    fix = ranking["fix"]
    assert fix["kept"] == [OUTLIER_LAYER] and fix["within_budget"] is True
    assert fix["after"]["cosine"] >= 0.98 > fix["before"]["cosine"]
    # the written model keeps that layer in float and passes the default budget on its own
    result = run_json("check", onnx_path, fixed, "-q")
    assert result.code == 0, result.err
    summary = result.json()["compression"]["summary"]
    assert "on 2 of 3" in summary


def test_wrong_and_compressed_is_a_conversion_verdict(tmp_path):
    bad_onnx = alter_initializer(TRANSFORMER, tmp_path / "bad.onnx", "blocks.0.fc1.bias", index=3, delta=1.5)
    bad = tmp_path / "bad8.mnn"
    parity.convert(bad_onnx, bad, options=["--weightQuantBits", "8"])
    checked = parity.check([TRANSFORMER, bad])
    assert checked.exit_code == ExitCode.MISMATCH
    verdict = report_json(checked)["verdict"]
    assert verdict["kind"] == "conversion", verdict
    assert "not what compressing this ONNX makes" in verdict["summary"]


def test_a_compressed_float_mnn_is_refused_not_taken_as_the_float_reference(tmp_path):
    """The compressed model as its own --float-mnn gave 'conversion' and the advice to reconvert
    over it; another bit width was labelled 'float conversion'."""
    eight, four = tmp_path / "m8.mnn", tmp_path / "m4.mnn"
    parity.convert(TRANSFORMER, eight, options=["--weightQuantBits", "8"])
    parity.convert(TRANSFORMER, four, options=["--weightQuantBits", "4"])
    for given in (four, eight):
        result = run_parity("check", TRANSFORMER, four, "--float-mnn", given)
        assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "is itself compressed", given.name)


def test_without_attribution_a_compressed_file_is_not_advised_to_be_reconverted_over(tmp_path):
    """--no-attribution judges the 4-bit file as is: its loss is a difference from a fresh float
    conversion, but 'parity convert ONNX -o FILE' would replace it with a float model."""
    four = tmp_path / "m4.mnn"
    parity.convert(MODELS / "cnn.onnx", four, options=["--weightQuantBits", "4", "--weightQuantBlock", "32"])
    result = run_json("check", MODELS / "cnn.onnx", four, "--no-attribution", "--json", "-")
    verdict = result.json()["verdict"]
    assert verdict["kind"] == "conversion", verdict  # 4-bit weights are far outside the float tolerance
    assert "4-bit weights" in verdict["summary"] and "--no-attribution" in verdict["summary"], verdict
    assert not any("parity convert" in step for step in verdict["next_steps"]), verdict["next_steps"]


def test_a_compressed_file_of_another_model_within_a_cosine_budget_is_conversion_not_a_pass(tmp_path):
    """The head's weights scaled by 1.5 before compressing: the outputs are 1.5 times the float
    model's, which a cosine budget cannot see (cosine 0.99999); MNN's own compression of this
    ONNX errs 80 times less. The file compressed from this ONNX still passes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(MODELS / "cnn.onnx")
    for init in model.graph.initializer:
        if init.name in ("head.weight", "head.bias"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
    onnx.save(model, tmp_path / "scaled.onnx")
    other, own = tmp_path / "other8.mnn", tmp_path / "own8.mnn"
    parity.convert(tmp_path / "scaled.onnx", other, options=["--weightQuantBits", "8"])
    parity.convert(MODELS / "cnn.onnx", own, options=["--weightQuantBits", "8"])
    checked = parity.check([MODELS / "cnn.onnx", other])
    verdict = report_json(checked)["verdict"]
    assert checked.exit_code == ExitCode.MISMATCH and verdict["kind"] == "conversion", verdict
    assert "not what compressing this ONNX makes" in verdict["summary"] and "within its budget" in verdict["summary"]
    assert parity.check([MODELS / "cnn.onnx", own]).exit_code == ExitCode.PASS


def test_inspect_shows_the_compression_per_layer(tmp_path):
    model = tmp_path / "model.mnn"
    parity.convert(TRANSFORMER, model, options=["--weightQuantBits", "4", "--weightQuantBlock", "16"])
    result = run_parity("inspect", model)
    assert result.code == 0, result.err
    assert "compression: 4-bit weights (asymmetric, block 16) on 10 of 10 Convolution layers" in result.out
    assert "/blocks.0/fc1/Add_output_0 (Convolution): 4-bit, asymmetric, block 16" in result.out


def test_float_model_has_no_attribution():
    checked = parity.check([TRANSFORMER, MODELS / "transformer.mnn"])
    assert checked.exit_code == 0
    report = report_json(checked)
    assert "compression" not in report and len(report["comparisons"]) == 1


@pytest.mark.parametrize("text, fragment", [
    ("cosine>0.9", "is not METRIC>=VALUE"),
    ("cosine<=0.9", "bounded with >="),
    ("error>=0.1", "bounded with <="),
    ("loss>=1", "is not METRIC"),
    ("cosine>=1e999", "finite"),
    ("cosine>=nan", "is not METRIC"),
    ("", "empty"),
])
def test_bad_budgets_are_refused(text, fragment):
    with pytest.raises(UsageError) as info:
        Budget.parse(text)
    assert fragment in str(info.value)


def test_bad_budget_on_the_command_line_is_exit_2_before_converting(tmp_path):
    from onnx import helper

    from helpers import save_model, tensor

    # MNN's converter dies on a single-input Max (MNN_NOTES): converting it first would say so
    crashing = save_model([helper.make_node("Max", ["x"], ["y"])], [tensor("x", shape=[1, 4])],
                          [tensor("y", shape=[1, 4])], tmp_path / "max1.onnx")
    out = tmp_path / "never.mnn"
    result = run_parity("convert", crashing, "-o", out, "--budget", "cosine>0.9", "--weightQuantBits", "4")
    assert_one_line_error(result, ExitCode.USAGE, "--budget")
    assert not out.exists()
    converted = run_parity("convert", crashing, "-o", out, "--weightQuantBits", "4")
    assert converted.code == ExitCode.BACKEND and not out.exists(), converted.err


def test_budget_measure_figures_are_right_on_known_vectors():
    import numpy as np

    r = np.array([[1.0, 0.0], [0.0, 1.0]])
    same = measure(r, r)
    assert abs(same["cosine"] - 1.0) < 1e-12 and same["error"] == 0.0 and same["top1"] == 1.0
    flipped = measure(r, r[:, ::-1].copy())
    assert flipped["cosine"] == 0.0 and flipped["top1"] == 0.0 and flipped["error"] == 1.0
    noisy = measure(np.ones(100), np.ones(100) * 1.1)
    assert abs(noisy["snr_db"] - 20.0) < 1e-9  # signal 100, noise 100 * 0.01: 10 log10(100)
    assert measure(np.array([1.0, 2.0]), np.array([1.0, np.inf]))["cosine"] == 0.0


@pytest.fixture()
def calibration(tmp_path):
    import numpy as np

    directory = tmp_path / "calibration"
    directory.mkdir()
    rng = np.random.default_rng(11)
    for i in range(10):
        np.savez(directory / f"c{i:02d}.npz", x=rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    return directory


def test_full_int8_made_from_calibration_samples_is_checked_listed_and_ranked(tmp_path, calibration):
    code, report, model = _convert(tmp_path, MODELS / "cnn.onnx", extra=("--int8-calibration", calibration,
                                                                        "--rank-layers"))
    assert code == 0, report["verdict"]
    compression = report["compression"]
    assert compression["kind"] == "int8-full"
    assert [x["kind"] for x in compression["layers"]] == ["int8-op"] * 4
    assert "full int8 (int8 weights and activations) on 4 of 4" in compression["summary"]
    links = _links(report)
    outputs = links["float conversion -> full int8"]["outputs"][0]
    assert outputs["budget"]["cosine"] >= 0.99 and outputs["samples"]["count"] == 10  # checked on the same samples
    assert len(report["ranking"]["layers"]) == 4
    terminal = run_parity("check", MODELS / "cnn.onnx", model, "--inputs", calibration)
    assert "compression: full int8" in terminal.out


def test_int8_calibration_samples_that_do_not_fit_are_one_line(tmp_path):
    import numpy as np

    directory = tmp_path / "bad"
    directory.mkdir()
    np.savez(directory / "c.npz", wrong_name=np.zeros((1, 3, 32, 32), np.float32))
    out = tmp_path / "never.mnn"
    result = run_parity("convert", MODELS / "cnn.onnx", "-o", out, "--int8-calibration", directory)
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "--int8-calibration c.npz does not fit", "['x']")
    assert not out.exists()


@pytest.mark.parametrize("case", ["nan", "shape", "empty"])
def test_int8_calibration_samples_that_cannot_calibrate_write_nothing(tmp_path, case):
    import numpy as np

    directory = tmp_path / "bad"
    directory.mkdir()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(directory / "a.npz", x=x)
    if case == "nan":
        x = x.copy()
        x[0, 0, 0, 0] = np.nan
        np.savez(directory / "c.npz", x=x)
    elif case == "shape":
        np.savez(directory / "c.npz", x=np.zeros((1, 3, 16, 16), np.float32))
    else:
        for file in directory.iterdir():
            file.unlink()
    out = tmp_path / "never.mnn"
    result = run_parity("convert", MODELS / "cnn.onnx", "-o", out, "--int8-calibration", directory)
    fragments = {"nan": ("c.npz", "NaN/Inf"), "shape": ("c.npz", "(1, 3, 16, 16)", "1x3x32x32"),
                 "empty": ("--int8-calibration", "without .npz")}[case]
    line = assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, *fragments)
    assert "--allow-nonfinite" not in line and "--inputs" not in line  # flags convert does not take
    assert not out.exists()


@pytest.mark.parametrize("options", [["--weightQuantBits", "4", "--weightQuantBlock", "16"], ["--fp16"],
                                     ["--weightQuantBits", "8", "--weightQuantAsymmetric"], []])
def test_the_flatbuffer_read_matches_the_json_dump(tmp_path, options):
    """compression.of_model reads a few flatbuffer fields (fast); the JSON dump is the slow,
    complete reading: both must say the same."""
    from parity.mnn import compression
    from parity.mnn import flatbuffer as mnn_flatbuffer
    from parity.mnn import graph as mnn_graph

    model = tmp_path / "model.mnn"
    parity.convert(TRANSFORMER, model, options=options)
    fast = compression.read({"oplists": mnn_flatbuffer.read_ops(model), "tensorName": []})
    slow = compression.read(mnn_graph.read_graph(model))
    assert fast.to_dict() == slow.to_dict() and len(fast.layers) == 10


def test_a_truncated_model_is_refused_by_the_flatbuffer_reader(tmp_path):
    from parity.mnn import flatbuffer as mnn_flatbuffer

    cut = tmp_path / "cut.mnn"
    cut.write_bytes((MODELS / "transformer.mnn").read_bytes()[:4000])
    with pytest.raises(ValueError):
        mnn_flatbuffer.read_ops(cut)
    result = run_parity("check", TRANSFORMER, cut)
    assert result.code == ExitCode.MODEL_OR_INPUT and "Traceback" not in result.err


# -- the graph read from the flatbuffer (--layers pairs MNN tensors with it) -------------------
def _graph_by_mnn(model):
    """MNN's own reading of the graph (load_as_dict in the worker child), as --layers had it."""
    from parity.run.worker import Worker

    with Worker("mnn", timeout=120) as worker:
        worker.call("parity.backends.mnn_child:load", step="loading", path=str(model), backend="CPU",
                    threads=1, precision="normal", hints=[])
        return worker.call("parity.backends.mnn_child:graph", step="reading the graph")


def _by_name(graph):
    return {entry["name"]: (entry["op_type"], entry["inputs"]) for entry in graph}


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_the_flatbuffer_graph_is_mnns_own(name):
    model = MODELS / f"{name}.mnn"
    fast = mnn_flatbuffer.read_graph(model)
    assert _by_name(fast) == _by_name(_graph_by_mnn(model))
    types = {entry["op_type"] for entry in fast}
    assert {"Input", "Const"} <= types and types & set(mnn_flatbuffer.BINARY_OPERATIONS.values())


def test_an_unknown_operation_is_left_to_mnn(tmp_path):
    model = tmp_path / "cnn.mnn"
    data = bytearray((MODELS / "cnn.mnn").read_bytes())
    graph = mnn_flatbuffer.read_graph(MODELS / "cnn.mnn")
    assert graph
    # an op type past the table (a newer MNN): patch the first op's type field
    import struct

    net = struct.unpack_from("<I", data, 0)[0]
    vtable = net - struct.unpack_from("<i", data, net)[0]
    ops_at = net + struct.unpack_from("<H", data, vtable + 4 + 2 * 3)[0]
    first = ops_at + struct.unpack_from("<I", data, ops_at)[0] + 4
    op = first + struct.unpack_from("<I", data, first)[0]
    op_vtable = op - struct.unpack_from("<i", data, op)[0]
    type_offset = struct.unpack_from("<H", data, op_vtable + 4 + 2 * 5)[0]
    if not type_offset:
        pytest.skip("the first op stores the default type")
    struct.pack_into("<i", data, op + type_offset, 9999)
    model.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not in this table"):
        mnn_flatbuffer.read_graph(model)


def test_a_graph_the_flatbuffer_reader_leaves_to_mnn_is_read_by_mnn(tmp_path):
    """An ONNX If converts to MNN control flow (subgraphs), which the flatbuffer reader refuses:
    --layers then pairs the layers from MNN's own reading of the graph."""
    import numpy as np
    from onnx import helper, numpy_helper

    import parity
    from helpers import save_model, tensor, to_mnn

    branch = lambda op, out: helper.make_graph([helper.make_node(op, ["x", "two"], [out])], out, [],  # noqa: E731
                                               [tensor(out, shape=[1, 4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["i"], then_branch=branch("Add", "t"), else_branch=branch("Mul", "e")),
             helper.make_node("Relu", ["i"], ["y"])]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 4])], [tensor("y", shape=[1, 4])], tmp_path / "if.onnx",
                           initializers=[numpy_helper.from_array(np.array(2, np.float32), "two"),
                                         numpy_helper.from_array(np.array(0, np.float32), "zero")])
    model = to_mnn(onnx_path, tmp_path / "if.mnn")
    with pytest.raises(ValueError, match="control flow"):
        mnn_flatbuffer.read_graph(model)
    report = parity.check([onnx_path, model], layers=True, diagnose=False).to_dict()
    layers = report["comparisons"][0]["layers"]
    assert report["passed"] and [layer["name"] for layer in layers] == ["s", "c", "i", "y"]
    assert all(layer["passed"] for layer in layers)


def test_budget_figures_match_their_definitions_on_known_cases():
    """snr_db and top-1 computed by hand: a candidate 10% too large has noise power 1% of
    the signal's, 20 dB; a two-class output is a classifier too."""
    from parity.checking import budget

    reference = np.tile(np.array([1.0, -1.0], np.float32), 500).reshape(10, 100)
    figures = budget.measure(reference, reference * 1.1)
    assert figures["snr_db"] == pytest.approx(20.0, abs=1e-5)  # 1.1 in float32: 20 dB to 2e-6
    assert figures["cosine"] == pytest.approx(1.0)
    assert figures["error"] == pytest.approx(0.1, rel=1e-6)
    two_class = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    assert budget.top1_rows(two_class, np.array([[2.0, 0.0], [2.0, 0.0]], np.float32)) == (1, 2)


def test_weight_quant_bits_0_is_mnn_s_default_of_float_weights(tmp_path):
    code, report, out = _convert(tmp_path, MODELS / "cnn.onnx", "--weightQuantBits", "0")
    assert code == 0 and out.exists()
    assert report.get("compression") is None  # float weights, as without the option
