"""Friction a tester met: hints that blame the wrong cause or name a command parity refuses, a
converter failure without the converter's reason, a .pt2's shape guard as a torch error."""

import re
import shlex
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import parity
from helpers import assert_one_line_error, randn, run_json, run_parity, save_model, tensor
from parity.core.errors import ExitCode


# -- 1. compare: a half-length candidate is not float16 unless its dtype can be wrong ------------
@pytest.fixture
def half_case(tmp_path):
    reference = randn(1, 8, 4, 4, seed=1)
    np.save(tmp_path / "ref.npy", reference)
    return reference, tmp_path


def _compare_summary(reference, candidate, **options) -> str:
    """parity.compare's verdict summary; the verdict must be usage (a reading mistake)."""
    report = parity.compare(reference, candidate, **options)
    assert report.exit_code == ExitCode.MISMATCH, report.verdict.summary
    assert report.verdict.kind == "usage", report.verdict
    return report.verdict.summary


def test_half_length_npy_that_declares_float32_is_not_called_float16(half_case):
    _, d = half_case
    np.save(d / "cand.npy", randn(64, seed=9))  # the header says float32: it holds float32
    summary = _compare_summary(d / "ref.npy", d / "cand.npy")
    assert "float16" not in summary and "--dtype" not in summary, summary
    assert "1/2 of the reference's 128 elements" in summary and "not a dtype misread" in summary


def test_half_length_candidate_matching_the_reference_start_is_a_truncated_copy(half_case):
    reference, d = half_case
    np.save(d / "cand.npy", reference.reshape(-1)[:64])
    summary = _compare_summary(d / "ref.npy", d / "cand.npy")
    assert "float16" not in summary, summary
    assert summary.startswith("the candidate is the first 64 of the reference's 128 elements")
    assert "truncated copy" in summary


def test_model_input_of_the_candidate_length_explains_it(half_case):
    _, d = half_case
    np.save(d / "x.npy", randn(1, 4, 4, 4, seed=3))  # 64 values, not the candidate's
    np.save(d / "cand.npy", randn(64, seed=9))
    summary = _compare_summary(d / "ref.npy", d / "cand.npy", model_inputs=d / "x.npy")
    assert "float16" not in summary, summary
    assert "as many as the model's input 'x' [1x4x4x4]" in summary
    assert "host tensor of the input's shape" in summary


def test_float16_bytes_are_still_named_when_the_values_prove_it(half_case):
    reference, d = half_case
    reference.astype(np.float16).tofile(d / "half.bin")
    summary = _compare_summary(d / "ref.npy", d / "half.bin", dtype="float32")
    assert "float16 values read as float32" in summary and "--dtype float16" in summary
    # saved to a .npy after the misread: the values prove it though the header says float32
    np.save(d / "half.npy", reference.astype(np.float16).reshape(-1).view(np.float32))
    summary = _compare_summary(d / "ref.npy", d / "half.npy")
    assert "float16 values read as float32" in summary and "--dtype" not in summary


def test_raw_dump_with_float16_like_bytes_keeps_the_dtype_hint(half_case):
    """A raw dump's dtype is a guess: a wrong output dumped as float16 and read as float32
    still gets the dtype hint (its bytes read as float16 are numbers like the reference's)."""
    _, d = half_case
    (randn(128, seed=5) * 2).astype(np.float16).tofile(d / "wrong.bin")
    summary = _compare_summary(d / "ref.npy", d / "wrong.bin", dtype="float32")
    assert "float16 data read as float32 (use --dtype float16)" in summary


# -- 2. every "parity convert" hint is a command that runs where the user ran parity ------------
def test_onnx_named_mnn_hint_is_a_command_parity_accepts(tmp_path):
    """The paths given are relative and in a subdirectory with a space: the hint names them as
    given, quoted for the shell, and the command it prints runs from the user's directory."""
    (tmp_path / "my models").mkdir()
    onnx_path = save_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", shape=[1, 4])],
                           [tensor("y", shape=[1, 4])], tmp_path / "my models" / "m.onnx")
    (tmp_path / "my models" / "fake.mnn").write_bytes(onnx_path.read_bytes())
    line = assert_one_line_error(run_parity("check", "my models/m.onnx", "my models/fake.mnn", cwd=tmp_path),
                                 ExitCode.MODEL_OR_INPUT, "parity convert")
    assert "(mv 'my models/fake.mnn' 'my models/fake.onnx', then parity convert" in line, line
    command = shlex.split(re.search(r"parity convert ([^)]*)", line).group(1))
    assert command == ["my models/fake.onnx", "-o", "my models/fake.mnn"], line
    (tmp_path / "my models" / "fake.mnn").rename(tmp_path / "my models" / "fake.onnx")
    assert run_parity("convert", *command, cwd=tmp_path).code == ExitCode.PASS
    assert (tmp_path / "my models" / "fake.mnn").stat().st_size > 0


def test_verdict_next_step_names_the_paths_as_given(tmp_path):
    """A "given file differs from a fresh conversion" verdict, checked from another directory
    with relative paths: the next step's command names them as given, runs from there, and
    passes (before, it printed bare file names that exist nowhere in the user's directory)."""
    from helpers import MODELS, alter_initializer, to_mnn

    here = tmp_path / "work"
    (here / "a dir").mkdir(parents=True)
    (here / "a dir" / "cnn.onnx").write_bytes((MODELS / "cnn.onnx").read_bytes())
    altered = alter_initializer(MODELS / "cnn.onnx", tmp_path / "altered.onnx", "conv3.weight", index=4, delta=3.0)
    to_mnn(altered, here / "a dir" / "cnn_changed.mnn")
    result = run_json("check", "a dir/cnn.onnx", "a dir/cnn_changed.mnn", cwd=here)
    assert result.code == ExitCode.MISMATCH, result.err
    verdict = result.json()["verdict"]
    assert verdict["kind"] == "conversion", verdict
    step = next(s for s in verdict["next_steps"] if "parity convert" in s)
    command = shlex.split(step.split(": ", 1)[1])
    assert command == ["parity", "convert", "a dir/cnn.onnx", "-o", "a dir/cnn_changed.mnn"], step
    assert run_parity(*command[1:], cwd=here).code == ExitCode.PASS


# -- 3. the converter's own line naming the operators it cannot convert --------------------------
def _custom_op(path):
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [tensor("x", shape=[1, 4])], [tensor("y", shape=[1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, "ONNX::Mystery"


def _opset23(node, inputs, outputs, initializers=()):
    def build(path):
        graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        model.ir_version = 10
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return path, f"ONNX::{node.op_type}"
    return build


UNSUPPORTED = {
    "custom-domain": _custom_op,
    "RMSNormalization": _opset23(
        helper.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=-1),
        [tensor("x", shape=[1, 4, 8])], [tensor("y", shape=[1, 4, 8])],
        [numpy_helper.from_array(np.ones(8, np.float32), "scale")]),
    "Attention": _opset23(
        helper.make_node("Attention", ["q", "q", "q"], ["y"]),
        [tensor("q", shape=[1, 2, 4, 8])], [tensor("y", shape=[1, 2, 4, 8])]),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_convert_names_the_operators_mnn_does_not_support(tmp_path, case):
    source, op = UNSUPPORTED[case](tmp_path / "m.onnx")
    result = run_parity("convert", source, "-o", tmp_path / "m.mnn")
    line = assert_one_line_error(result, ExitCode.BACKEND, "MNN's converter failed on m.onnx",
                                 f"These Op Not Support: {op}")
    assert "Converted Failed!" not in line
    assert not (tmp_path / "m.mnn").exists()


# -- 4. a static .pt2 at another shape: the --shape to pass, not torch's guard -------------------
def _linear_pair(directory, export_shape):
    """A .pt2 exported by torch.export at ``export_shape`` (static) and an ONNX of the same
    module with a dynamic batch."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    example = torch.randn(*export_shape)
    torch.export.save(torch.export.export(model, (example,)), str(directory / "m.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(directory / "m.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    onnx_model = onnx.load(str(directory / "m.onnx"))
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    return directory / "m.pt2", directory / "m.onnx"


@pytest.mark.torch
def test_static_pt2_with_another_shape_names_the_shape_to_pass(tmp_path):
    pt2, onnx_path = _linear_pair(tmp_path, (1, 4))
    result = run_parity("check", pt2, onnx_path, "--shape", "x=2x4")
    line = assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "m.pt2", "x=1x4", "--shape x=1x4")
    assert "cannot run on x=2x4" in line and "torch failed" not in line
    assert run_parity("check", pt2, onnx_path, "--shape", "x=1x4").code == ExitCode.PASS


@pytest.mark.torch
def test_static_pt2_against_the_default_of_a_dynamic_batch(tmp_path):
    """The ONNX's dynamic batch defaults to 1; the .pt2 was exported at batch 2."""
    pt2, onnx_path = _linear_pair(tmp_path, (2, 4))
    line = assert_one_line_error(run_parity("check", pt2, onnx_path), ExitCode.MODEL_OR_INPUT,
                                 "--shape x=2x4")
    assert "cannot run on x=1x4" in line
    passed = run_json("check", pt2, onnx_path, "--shape", "x=2x4")
    assert passed.code == ExitCode.PASS, passed.err
    assert passed.json()["comparisons"][0]["outputs"][0]["reference_shape"] == [2, 3]


@pytest.mark.torch
def test_dynamic_pt2_outside_its_range_names_the_range(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")

    class Pair(torch.nn.Module):
        def forward(self, x, y):
            return x[:, :4] + y

    x, y = torch.randn(2, 6), torch.randn(2, 4)
    batch = torch.export.Dim("batch", min=2, max=8)
    torch.export.save(torch.export.export(Pair(), (x, y), dynamic_shapes={"x": {0: batch}, "y": {0: batch}}),
                      str(tmp_path / "pair.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pair(), (x, y), str(tmp_path / "pair.onnx"), input_names=["x", "y"], output_names=["z"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}, "z": {0: "b"}}, opset_version=17,
                          dynamo=False)
    result = run_parity("check", tmp_path / "pair.pt2", tmp_path / "pair.onnx", "--shape", "x=9x6", "--shape", "y=9x4")
    assert_one_line_error(result, ExitCode.MODEL_OR_INPUT, "x=[2..8]x6 y=[2..8]x4",
                          "--shape x=2x6 --shape y=2x4", "wider dynamic_shapes")
    fine = run_parity("check", tmp_path / "pair.pt2", tmp_path / "pair.onnx", "--shape", "x=3x6", "--shape", "y=3x4")
    assert fine.code == ExitCode.PASS, fine.err
