"""torch is optional: without it, ONNX Runtime vs MNN works and a torch model gets the hint."""

from helpers import MODELS, assert_one_line_error, run_parity
from parity.core.errors import ExitCode


def _no_torch_env(tmp_path):
    # A package named torch that fails to import, first on the path: as if torch were absent.
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    return {"PYTHONPATH": str(tmp_path / "shadow")}


def test_onnx_vs_mnn_needs_no_torch(tmp_path):
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", env=_no_torch_env(tmp_path))
    assert result.code == ExitCode.PASS, result.err


def test_torch_model_without_torch_gets_the_install_hint(tmp_path):
    pt2 = tmp_path / "m.pt2"
    pt2.write_bytes(b"PK")  # never opened: torch is missing first
    result = run_parity("check", pt2, MODELS / "cnn.onnx", MODELS / "cnn.mnn", env=_no_torch_env(tmp_path))
    assert_one_line_error(result, ExitCode.BACKEND, "torch is not installed", "pip install 'parity[torch]'")
