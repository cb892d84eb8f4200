"""Output on a stdout that is not UTF-8: parity degrades (escapes what the stream cannot hold,
draws tables in ASCII) instead of failing with exit 123, whatever the command.

Each command runs in a real child process under three environments set explicitly (nothing
inherited from the machine's locale): ``PYTHONIOENCODING=ascii`` (some CI runners),
``PYTHONIOENCODING=latin-1``, and the C locale without UTF-8 mode or locale coercion, where
stdout really is ASCII and file names come into Python as surrogates. The models live in a
directory whose name is not ASCII, so every path parity prints has characters those streams
cannot hold.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from parity.core.errors import ExitCode

# The locale variables and Python's own encoding switches: removed, then set by each case.
_LOCALE_VARIABLES = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING", "PYTHONUTF8",
                     "PYTHONCOERCECLOCALE", "PYTHONLEGACYWINDOWSSTDIO")

ENVIRONMENTS = {
    "ascii": {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "ascii"},
    "latin-1": {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "latin-1"},
    "c-locale": {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
}
# what stdout's codec is in each environment (checked, not assumed: see test_the_environments)
CODECS = {"ascii": "ascii", "latin-1": "latin-1", "c-locale": "ascii"}

DIRECTORY = "modèles-测试"


def _env(name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LOCALE_VARIABLES}
    env.pop("PARITY_TRACEBACK", None)
    env["PARITY_WIDTH"] = "120"
    env.update(ENVIRONMENTS[name])
    return env


def _run(name: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m parity ARGS`` with bytes out, as the stream's codec wrote them."""
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], cwd=cwd, env=_env(name),
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A directory named ``modèles-测试`` holding models/cnn.onnx, its .mnn, and a pair whose .mnn
    was converted from a copy with one weight changed (a real mismatch)."""
    root = tmp_path_factory.mktemp("encoding") / DIRECTORY
    (root / "pairs").mkdir(parents=True)
    for suffix in (".onnx", ".mnn"):
        shutil.copy(helpers.MODELS / f"cnn{suffix}", root / f"cnn{suffix}")
        shutil.copy(helpers.MODELS / f"cnn{suffix}", root / "pairs" / f"cnn{suffix}")
    altered = helpers.alter_initializer(helpers.MODELS / "cnn.onnx", root / "altered.onnx",
                                        "conv3.weight", index=4, delta=3.0)
    helpers.to_mnn(altered, root / "cnn_altered.mnn")
    altered.unlink()
    return root


def _decoded(data: bytes, codec: str) -> str:
    """The text: it must decode strictly with the stream's codec (never bytes of another)."""
    return data.decode(codec)


def _clean(result: subprocess.CompletedProcess) -> str:
    err = result.stderr.decode("utf-8", "replace")  # click writes UTF-8 to an ASCII stderr itself
    assert "Traceback" not in err and "Internal error" not in err, err
    assert result.returncode != ExitCode.INTERNAL, err
    return err


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_the_environments(name, tmp_path):
    """The cases really are what they claim: stdout's codec, and (C locale) a file system
    encoding that cannot hold the directory's name."""
    probe = "import sys; print(sys.stdout.encoding, sys.getfilesystemencoding())"
    out = subprocess.run([sys.executable, "-c", probe], env=_env(name), capture_output=True, text=True,
                         cwd=tmp_path).stdout.split()
    assert codecs.lookup(out[0]).name == codecs.lookup(CODECS[name]).name, out
    if name == "c-locale":
        assert out[1] == "ascii", out


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_check_pass_and_fail(name, place):
    codec = CODECS[name]
    ok = _run(name, "check", place / "cnn.onnx", place / "cnn.mnn", cwd=place.parent)
    _clean(ok)
    assert ok.returncode == ExitCode.PASS
    out = _decoded(ok.stdout, codec)
    assert "PASS: all 1 compared outputs match" in out
    assert "| logits |" in out  # the table is drawn in ASCII, not as escaped box characters
    assert "\\u2502" not in out and "\\u2501" not in out

    bad = _run(name, "check", "--layers", place / "cnn.onnx", place / "cnn_altered.mnn", cwd=place.parent)
    _clean(bad)
    assert bad.returncode == ExitCode.MISMATCH
    out = _decoded(bad.stdout, codec)
    assert "parity: FAIL" in out and "layers paired" in out
    # the directory's name is shown readably (escaped for this stream), never as raw surrogates
    # or as the bytes of its UTF-8 encoding escaped one by one
    assert "\\udc" not in out and "\\xc3\\xa8" not in out
    if codec == "latin-1":
        assert "modèles-\\u6d4b\\u8bd5" in out
    else:
        assert "mod\\xe8les-\\u6d4b\\u8bd5" in out


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_json_to_stdout_stays_json(name, place):
    result = _run(name, "check", place / "cnn.onnx", place / "cnn.mnn", *helpers.JSON_STDOUT, cwd=place.parent)
    _clean(result)
    assert result.returncode == ExitCode.PASS
    report = json.loads(_decoded(result.stdout, CODECS[name]))
    assert report["passed"] is True
    # the paths recorded name the files (under the C locale as surrogates, which name the same bytes)
    assert [b["name"] for b in report["backends"]] == ["onnxruntime", "mnn"]
    assert all(os.path.exists(b["model"]) for b in report["backends"]), report["backends"]


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_convert_inspect_sweep(name, place, tmp_path):
    codec = CODECS[name]
    target = place / f"converted-{name}-é.mnn"
    result = _run(name, "convert", place / "cnn.onnx", "-o", target, cwd=place.parent)
    _clean(result)
    assert result.returncode == ExitCode.PASS, result.stderr
    assert target.stat().st_size > 0
    assert "PASS" in _decoded(result.stdout, codec)

    result = _run(name, "inspect", place / "cnn.mnn", cwd=place.parent)
    _clean(result)
    assert result.returncode == ExitCode.PASS
    out = _decoded(result.stdout, codec)
    assert "logits" in out and "float32" in out

    result = _run(name, "sweep", place / "pairs", cwd=place.parent)
    _clean(result)
    assert result.returncode == ExitCode.PASS
    out = _decoded(result.stdout, codec)
    assert "1 passed" in out and "| cnn " in out
    assert "\\udc" not in out

    result = _run(name, "sweep", place / "pairs", *helpers.JSON_STDOUT, cwd=place.parent)
    _clean(result)
    assert json.loads(_decoded(result.stdout, codec))["results"][0]["passed"] is True


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_help_and_an_error(name, place):
    codec = CODECS[name]
    for args in (["--help"], ["check", "--help"], ["sweep", "--help"]):
        result = _run(name, *args, cwd=place.parent)
        _clean(result)
        assert result.returncode == 0
        assert "Usage: parity" in _decoded(result.stdout, codec)

    result = _run(name, "check", place / "missing.onnx", place / "cnn.mnn", cwd=place.parent)
    err = _clean(result)
    assert result.returncode == ExitCode.MODEL_OR_INPUT
    line = err.strip()
    assert line.startswith("Error: model file") and "missing.onnx" in line and "does not exist" in line
    assert "\\udc" not in line  # the directory is named readably, not as surrogates
