"""MNN runs in a child process: its crashes and hangs become errors, parity lives on."""

import subprocess
import sys

import pytest

from helpers import MODELS, assert_one_line_error, crashing_model, run_parity
from parity.core.errors import BackendCrash, ExitCode


@pytest.fixture(scope="module")
def crashing_pair(tmp_path_factory):
    return crashing_model(tmp_path_factory.mktemp("crash"))


def test_crash_exits_4_naming_signal_and_step(crashing_pair, tmp_path):
    onnx_path, mnn_path = crashing_pair
    result = run_parity("check", onnx_path, mnn_path, env={"TMPDIR": str(tmp_path)})
    assert_one_line_error(result, ExitCode.BACKEND, "SIGFPE", "running pool.mnn")
    # (ONNX Runtime itself drops a small '.ses' file into TMPDIR; parity's own dirs must be gone)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("parity-")] == []


def test_parity_survives_a_crash_in_process(crashing_pair):
    import parity

    onnx_path, mnn_path = crashing_pair
    with pytest.raises(BackendCrash, match="SIGFPE") as info:
        parity.check([onnx_path, mnn_path])
    assert info.value.exit_code == ExitCode.BACKEND
    assert info.value.signal_name.startswith("SIGFPE")
    # the same process goes on to a correct check
    report = parity.check([MODELS / "cnn.onnx", MODELS / "cnn.mnn"])
    assert report.passed


def test_mnn_runs_in_another_process():
    from parity.backends.mnn import MnnBackend

    with MnnBackend(MODELS / "cnn.mnn") as backend:
        child = backend._worker._proc
        assert child.pid != __import__("os").getpid() and child.poll() is None
        assert "MNN" not in sys.modules, "MNN must never be imported into parity's own process"
    assert child.poll() is not None, "the child must end when the backend closes"


def test_import_parity_is_light():
    code = ("import sys, parity, parity.cli; heavy = [m for m in ('torch', 'onnxruntime', 'MNN', 'onnx') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
