"""Concurrency in one directory, and no network or installs at run time."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

from helpers import MODELS, run_parity
from parity.core.errors import ExitCode


def _popen(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "parity", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_converts_and_two_checks_in_one_directory_at_once(tmp_path):
    for name in ("cnn", "transformer"):
        shutil.copy(MODELS / f"{name}.onnx", tmp_path / f"{name}.onnx")
    runs = [
        _popen(["convert", "cnn.onnx", "-o", "a.mnn", "--json", "a.json"], tmp_path),
        _popen(["convert", "transformer.onnx", "-o", "b.mnn", "--json", "b.json"], tmp_path),
        _popen(["convert", "cnn.onnx", "-o", "c.mnn", "--json", "c.json"], tmp_path),
        _popen(["check", MODELS / "transformer.onnx", MODELS / "transformer.mnn", "--json", "d.json"], tmp_path),
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == ExitCode.PASS, err
    for report in ("a.json", "b.json", "c.json", "d.json"):
        data = json.loads((tmp_path / report).read_text())
        assert data["passed"] and data["comparisons"][0]["outputs"][0]["max_abs_diff"] < 1e-3
    # the converted files are right on their own too, checked afresh
    for onnx_name, mnn_name in (("cnn.onnx", "a.mnn"), ("transformer.onnx", "b.mnn"), ("cnn.onnx", "c.mnn")):
        assert run_parity("check", onnx_name, mnn_name, cwd=tmp_path).code == ExitCode.PASS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cnn.onnx", "transformer.onnx", "a.mnn", "b.mnn", "c.mnn", "a.json", "b.json", "c.json", "d.json"])


def test_no_network_and_no_install_at_run_time(tmp_path):
    """Sockets to the outside raise, and every attempt (or a pip run) is logged: none may happen.
    MNN's own mnnconvert wrapper would pip-install a logger and upload statistics."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    log = tmp_path / "attempts.log"
    (shadow / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import socket, subprocess
        LOG = {str(log)!r}

        def _note(what):
            with open(LOG, "a") as f:
                f.write(what + "\\n")

        _connect = socket.socket.connect

        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                _note(f"connect {{address}}")
                raise OSError("network blocked by parity's test")
            return _connect(self, address)

        socket.socket.connect = connect
        socket.socket.connect_ex = lambda self, address: (_note(f"connect_ex {{address}}"), 1)[1]
        socket.create_connection = lambda *a, **k: (_note(f"create_connection {{a}}"), (_ for _ in ()).throw(OSError("blocked")))[1]
        _getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, *a, **k):
            if host not in (None, "localhost", "127.0.0.1", "::1"):
                _note(f"getaddrinfo {{host}}")
                raise socket.gaierror("name resolution blocked by parity's test")
            return _getaddrinfo(host, *a, **k)

        socket.getaddrinfo = getaddrinfo
        _popen_init = subprocess.Popen.__init__

        def popen_init(self, args, *a, **k):
            text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
            if "pip" in text.split()[0:3] or " pip " in f" {{text}} " or "-m pip" in text:
                _note(f"pip {{text}}")
            return _popen_init(self, args, *a, **k)

        subprocess.Popen.__init__ = popen_init
    """))
    env = {"PYTHONPATH": str(shadow)}
    shutil.copy(MODELS / "transformer.onnx", tmp_path / "t.onnx")
    converted = run_parity("convert", "t.onnx", "-o", "t.mnn", cwd=tmp_path, env=env)
    assert converted.code == ExitCode.PASS, converted.err
    checked = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--layers", cwd=tmp_path, env=env)
    assert checked.code == ExitCode.PASS, checked.err
    assert not log.exists(), log.read_text()
    # the guard is live: the same Python, asked to reach out, is stopped and logged
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('example.org', 80))"],
                           env=dict(os.environ, **env), capture_output=True, text=True)
    assert probe.returncode != 0 and log.exists()
