"""Through the library, in this process: what the suite once reached only by running the CLI in
a child. The compression verdict (a compressed .mnn against its float conversion, within and
over its budget), recompression (is the compressed file what MNN's compression of this ONNX
makes?), the aggregation of many input samples, and a library test for each verdict kind.

Every model is real and small (compressed_models.outlier_mlp, built with onnx.helper), converted
by MNN's own converter (parity.convert); ONNX Runtime and MNN run for real. The assertions are
about meaning (the verdict kind, the link, the evidence), known by construction of the models.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
from onnx import helper

import parity
from compressed_models import OUTLIER_LAYER, outlier_mlp
from helpers import MODELS, ROOT, alter_initializer, report_json, save_model, tensor, to_mnn
from parity.core.errors import ExitCode

# The README's default budgets ("Budgets"), written out: the code under test must not supply them
README_BUDGETS = {"fp16": "cosine>=0.9999", "int4": "cosine>=0.98", "int8": "cosine>=0.999"}


def _links(report: dict) -> dict:
    """The report's comparisons by "reference -> candidate", runs named as the report names them."""
    return {f"{c.get('reference_run') or c['reference']} -> {c.get('candidate_run') or c['candidate']}": c
            for c in report["comparisons"]}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """outlier_mlp (its second layer's weights hold one outlier per column, on an input that is
    always zero: 4-bit per-column quantization rounds that layer's ordinary weights to zero),
    its float conversion, and its 4-bit and float16 compressions, all by MNN's converter."""
    d = tmp_path_factory.mktemp("mlp")
    onnx_path = outlier_mlp(d)
    made = {"onnx": onnx_path, "float": d / "float.mnn", "int4": d / "int4.mnn", "fp16": d / "fp16.mnn"}
    parity.convert(onnx_path, made["float"])
    parity.convert(onnx_path, made["int4"], options=["--weightQuantBits", "4"])
    parity.convert(onnx_path, made["fp16"], options=["--fp16"])
    return made


# -- the compression verdict ----------------------------------------------------------------------
def test_a_compression_within_its_budget_passes_against_the_given_float_conversion(mlp):
    """float16 weights cost next to nothing: the default fp16 budget holds, and the loss is
    measured against the float conversion given (float_mnn), not one parity makes."""
    report = parity.check([mlp["onnx"], mlp["fp16"]], float_mnn=mlp["float"])
    assert report.passed and report.exit_code == ExitCode.PASS, report.verdict.summary
    assert report.verdict.kind == parity.VerdictKind.PASS
    data = report_json(report)
    assert data["compression"]["kind"] == "fp16"
    assert [b["model"] for b in data["backends"]] == [str(mlp["onnx"]), str(mlp["float"]), str(mlp["fp16"])]
    links = _links(data)
    assert set(links) == {"onnxruntime -> float conversion", "float conversion -> float16 weights",
                          "onnxruntime -> float16 weights"}
    assert links["onnxruntime -> float conversion"]["passed"]
    (judged,) = links["float conversion -> float16 weights"]["outputs"]
    assert judged["budget"]["rule"] == README_BUDGETS["fp16"] and judged["budget"]["passed"] is True
    assert "within its budget" in report.verdict.summary


def test_a_compression_over_its_budget_is_the_compression_verdict_and_recompression_confirms_it(mlp):
    """4 bits on the outlier layer miss the default int4 budget while the float conversion
    matches ONNX: verdict compression; compressing the float conversion again with the file's
    own settings costs as much, so the loss is compression's own; the ranking names the
    outlier layer."""
    report = parity.check([mlp["onnx"], mlp["int4"]], float_mnn=mlp["float"])
    assert report.exit_code == ExitCode.MISMATCH
    verdict = report.verdict
    assert verdict.kind == parity.VerdictKind.COMPRESSION, verdict.summary
    assert "the float conversion matches ONNX Runtime" in verdict.summary
    data = report_json(report)
    links = _links(data)
    assert links["onnxruntime -> float conversion"]["passed"] is True
    compressed = links["float conversion -> 4-bit weights"]
    assert compressed["passed"] is False
    assert all(o["budget"]["rule"] == README_BUDGETS["int4"] and o["budget"]["passed"] is False
               for o in compressed["outputs"])
    # the evidence: each link, the compressed one by its budget figures
    by_link = {e["link"]: e for e in data["verdict"]["evidence"] if "link" in e}
    link = next(c.link for c in report.comparisons
                if (c.reference_run, c.candidate_run) == ("float conversion", "4-bit weights"))
    assert by_link[link]["passed"] is False and by_link[link]["outputs"]["logits"]["passed"] is False
    recompressed = next(e for e in data["verdict"]["evidence"]
                        if e.get("experiment") == "recompression of the float conversion")
    assert "--weightQuantBits 4" in recompressed["setting"] and recompressed["within_budget"] is False
    assert verdict.where.startswith(OUTLIER_LAYER), verdict.where
    assert data["ranking"]["layers"][0]["name"] == OUTLIER_LAYER


def test_a_compressed_file_from_another_onnx_is_a_conversion_verdict_by_recompression(tmp_path):
    """Without outliers 8 bits cost next to nothing; the given 8-bit file was converted from an
    ONNX with one weight changed: compressing the float conversion again with the file's own
    settings meets the budget, so the loss is not compression's: the verdict is conversion."""
    onnx_path = outlier_mlp(tmp_path, outlier=0.0)
    changed = alter_initializer(onnx_path, tmp_path / "changed.onnx", "w3", index=0, delta=5.0)
    given = tmp_path / "given_int8.mnn"
    parity.convert(changed, given, options=["--weightQuantBits", "8"])
    report = parity.check([onnx_path, given])
    assert report.exit_code == ExitCode.MISMATCH
    assert report.verdict.kind == parity.VerdictKind.CONVERSION, report.verdict.summary
    assert "not what compressing this ONNX makes" in report.verdict.summary
    data = report_json(report)
    assert data["compression"]["kind"] == "int8"
    assert _links(data)["onnxruntime -> float conversion"]["passed"] is True  # parity's own float conversion
    recompressed = next(e for e in data["verdict"]["evidence"]
                        if e.get("experiment") == "recompression of the float conversion")
    assert recompressed["within_budget"] is True and "--weightQuantBits 8" in recompressed["setting"]
    assert any("parity convert" in step for step in report.verdict.next_steps)


# -- many input samples ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relu_matmul(tmp_path_factory):
    """y = relu(x) @ W, and an .mnn converted from W with row 0 changed: the two differ exactly
    when x[..., 0] > 0 (relu passes it), and agree bit for bit where x <= 0 everywhere."""
    d = tmp_path_factory.mktemp("relu_matmul")
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32), "w")
    onnx_path = save_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
                           [tensor("x", shape=[1, 4, 8])], [tensor("y", shape=[1, 4, 6])], d / "rm.onnx", initializers=[w])
    changed = alter_initializer(onnx_path, d / "changed.onnx", "w", index=0, delta=2.0)  # row 0, column 0
    return onnx_path, to_mnn(changed, d / "rm.mnn")


def test_samples_are_aggregated_each_judged_and_the_worst_shown(relu_matmul, tmp_path):
    onnx_path, mnn_path = relu_matmul
    rng = np.random.default_rng(5)
    samples = tmp_path / "samples"
    samples.mkdir()
    negative = -np.abs(rng.standard_normal((1, 4, 8))).astype(np.float32)
    np.savez(samples / "a_negative.npz", x=negative)  # relu zeroes it: both sides compute 0
    np.savez(samples / "b_positive.npz", x=np.abs(rng.standard_normal((1, 4, 8))).astype(np.float32) + 0.5)
    np.savez(samples / "c_negative.npz", x=negative * 3)
    report = parity.check([onnx_path, mnn_path], inputs=samples, diagnose=False)
    assert report.exit_code == ExitCode.MISMATCH
    assert report.verdict.kind == parity.VerdictKind.MISMATCH  # no diagnosis asked for
    data = report_json(report)
    (comparison,) = data["comparisons"]
    (output,) = comparison["outputs"]
    assert comparison["passed"] is False and output["passed"] is False  # one failing sample fails the link
    aggregated = output["samples"]
    assert aggregated["count"] == 3 and aggregated["failed"] == 1
    per_sample = {s["sample"]: s for s in aggregated["per_sample"]}
    assert {name: s["passed"] for name, s in per_sample.items()} == {
        "a_negative.npz": True, "b_positive.npz": False, "c_negative.npz": True}
    assert per_sample["a_negative.npz"]["max_abs_diff"] == 0.0  # relu(x) = 0: nothing reaches W
    # the figures shown are the worst sample's, and it is named
    assert aggregated["worst"] == "b_positive.npz"
    assert output["max_abs_diff"] == per_sample["b_positive.npz"]["max_abs_diff"]
    assert any("3 input samples" in note and "b_positive.npz" in note for note in data["notes"])


def test_samples_along_an_axis_are_judged_one_by_one(relu_matmul, tmp_path):
    """--samples-axis through the library: one .npz holding three samples along axis 0."""
    onnx_path, mnn_path = relu_matmul
    rng = np.random.default_rng(6)
    stacked = np.concatenate([-np.abs(rng.standard_normal((1, 4, 8))), -np.abs(rng.standard_normal((1, 4, 8))),
                              np.abs(rng.standard_normal((1, 4, 8))) + 0.5]).astype(np.float32)
    np.savez(tmp_path / "stacked.npz", x=stacked)
    report = parity.check([onnx_path, mnn_path], inputs=tmp_path / "stacked.npz", samples_axis=0, diagnose=False)
    samples = report_json(report)["comparisons"][0]["outputs"][0]["samples"]
    assert [s["passed"] for s in samples["per_sample"]] == [True, True, False]
    assert samples["worst"] == "stacked.npz[2]" and not report.passed


# -- each verdict kind, reached through the library -------------------------------------------------
# kind -> the test that reaches it through parity.check or parity.compare (the export kind needs
# the torch extra and its test is marked torch; undetermined needs a model over the float64 size
# limit, which its test lowers). A new kind must add its row: the test below fails without it.
KIND_TESTS = {
    "pass": ("test_library_checks.py", "test_a_compression_within_its_budget_passes_against_the_given_float_conversion"),
    "mismatch": ("test_library_checks.py", "test_samples_are_aggregated_each_judged_and_the_worst_shown"),
    "compression": ("test_library_checks.py",
                    "test_a_compression_over_its_budget_is_the_compression_verdict_and_recompression_confirms_it"),
    "conversion": ("test_verdict.py", "test_mnn_from_an_altered_onnx_is_conversion_at_the_altered_op"),
    "runtime": ("test_verdict.py", "test_real_mnn_kernel_bug_is_runtime_at_that_op"),
    "numerics": ("test_numerics.py", "test_amplified_rounding_is_numerics_with_the_growth_figures"),
    "undetermined": ("test_numerics.py", "test_without_a_float64_figure_the_verdict_is_undetermined"),
    "export": ("test_torch.py", "test_export_bug_is_the_export_link"),
    "usage": ("test_compare.py", "test_all_zero_dump_is_usage"),
    "tokenizer": ("test_llm_check.py", "test_an_export_with_another_tokenizer_is_the_tokenizer_verdict"),
}


def test_every_verdict_kind_is_reached_through_the_library_by_a_test():
    assert set(KIND_TESTS) == {kind.value for kind in parity.VerdictKind}
    for kind, (file, name) in KIND_TESTS.items():
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        function = next((node for node in ast.walk(ast.parse(source))
                         if isinstance(node, ast.FunctionDef) and node.name == name), None)
        assert function is not None, f"{file} has no {name} (the test of verdict kind {kind!r})"
        calls = {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(function) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)}
        assert calls & {"parity.check", "parity.compare", "parity.check_llm"}, \
            f"{name} calls none of parity.check, parity.compare, parity.check_llm"
        named = {n.value for n in ast.walk(function) if isinstance(n, ast.Constant)} | {
            n.attr.lower() for n in ast.walk(function) if isinstance(n, ast.Attribute)}
        assert kind in named, f"{name} does not assert verdict kind {kind!r}"


def test_library_arguments_of_the_wrong_kind_are_usage_errors_that_say_so(tmp_path):
    import numpy as np

    from parity.core.errors import UsageError

    models = [str(MODELS / "cnn.onnx"), str(MODELS / "cnn.mnn")]
    dump = tmp_path / "r.npy"
    np.save(dump, np.zeros(4, np.float32))
    cases = [
        (lambda: parity.check(models[0]), "list of paths"),  # one path: not its characters
        (lambda: parity.check(models, tolerance=1e-3), "parity.Tolerance"),
        (lambda: parity.check(models, tolerances={"logits": 1e-3}), "tolerances['logits']"),
        (lambda: parity.compare(dump, dump, tolerance=1e-3), "parity.Tolerance"),
        (lambda: parity.convert(models[0], tmp_path / "o.mnn", options="--fp16"), "list of words"),
        (lambda: parity.convert(models[0], tmp_path / "o.mnn", options=["--weightQuantBits", 8]), "strings"),
    ]
    for call, fragment in cases:
        with pytest.raises(UsageError, match=re.escape(fragment)):
            call()
    assert not (tmp_path / "o.mnn").exists()
