"""Hostile sweep targets and manifests (issue 12): every one is exit 2 or 3 with one line,
never an internal error, never a hang, nothing written, nothing left running."""

from __future__ import annotations

import os
import shutil

import pytest

from hostile import MODELS, run_hostile
from parity.core.errors import ExitCode

BAD = ExitCode.MODEL_OR_INPUT


def _pair(work):
    (work / "zoo").mkdir()
    for suffix in ("onnx", "mnn"):
        shutil.copy(MODELS / f"cnn.{suffix}", work / "zoo" / f"cnn.{suffix}")


def _write(name, data):
    def make(work):
        _pair(work)
        (work / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return ["sweep", name]
    return make


def _fifo(work):
    _pair(work)
    os.mkfifo(work / "zoo.toml")
    return ["sweep", "zoo.toml"]


GOOD = 'onnx = "zoo/cnn.onnx"\nmnn = "zoo/cnn.mnn"\n'
CASES = [
    ("manifest not UTF-8", _write("zoo.toml", b"[[model]]\nname = \"\xff\xfe\"\n" + GOOD.encode()), BAD, "not UTF-8"),
    ("manifest a JSON list of strings", _write("zoo.json", '["zoo/cnn.onnx", "zoo/cnn.mnn"]'), BAD, "not a table"),
    ("manifest a JSON number", _write("zoo.json", "5"), BAD, "lists no models"),
    ("manifest TOML syntax error", _write("zoo.toml", "[[model]\nonnx = "), BAD, "cannot be parsed"),
    ("onnx given as a number", _write("zoo.toml", '[[model]]\nonnx = 5\nmnn = "zoo/cnn.mnn"\n'), BAD, "onnx must be"),
    ("atol given as text", _write("zoo.toml", "[[model]]\n" + GOOD + 'atol = "tight"\n'), BAD, "atol must be"),
    ("atol given as a boolean", _write("zoo.toml", "[[model]]\n" + GOOD + "atol = true\n"), BAD, "atol must be"),
    ("negative seed", _write("zoo.toml", "[[model]]\n" + GOOD + "seed = -1\n"), BAD, "seed must be"),
    ("timeout of 0", _write("zoo.toml", "[[model]]\n" + GOOD + "timeout = 0\n"), BAD, "timeout must be a number > 0"),
    ("steps of 0", _write("zoo.toml", "[[model]]\n" + GOOD + "steps = 0\n"), BAD, "steps must be an integer >= 1"),
    ("layers given as text", _write("zoo.toml", "[[model]]\n" + GOOD + 'layers = "yes"\n'), BAD, "layers must be"),
    ("shape not a table", _write("zoo.toml", "[[model]]\n" + GOOD + 'shape = "1x3"\n'), BAD, "shape must be"),
    ("shape with a float dim", _write("zoo.toml", "[[model]]\n" + GOOD + "shape = { x = [1, 2.5] }\n"), BAD, "shape.x"),
    ("unknown field", _write("zoo.toml", "[[model]]\n" + GOOD + "atoll = 1\n"), BAD, "unknown field 'atoll'"),
    ("one model only", _write("zoo.toml", '[[model]]\nonnx = "zoo/cnn.onnx"\n'), BAD, "needs two of"),
    ("repeated names", _write("zoo.toml", ("[[model]]\nname = \"a\"\n" + GOOD) * 2), BAD, "repeats a model name"),
    ("manifest is a FIFO", _fifo, BAD, "FIFO"),
    ("manifest is /dev/zero", lambda w: ["sweep", "/dev/zero"], BAD, "not a regular file"),
    ("target missing", lambda w: ["sweep", "nowhere"], BAD, "does not exist"),
    ("directory without pairs", lambda w: (w.joinpath("empty").mkdir(), ["sweep", "empty"])[1], BAD, "no model pairs"),
    ("shard 0/4", lambda w: (_pair(w), ["sweep", "zoo", "--shard", "0/4"])[1], ExitCode.USAGE, "--shard"),
    ("shard text", lambda w: (_pair(w), ["sweep", "zoo", "--shard", "half"])[1], ExitCode.USAGE, "--shard"),
    ("--json onto a model of the sweep", lambda w: (_pair(w), ["sweep", "zoo", "--json", "zoo/cnn.onnx"])[1], BAD, "--json"),
]


@pytest.mark.parametrize("name, make, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_sweep(tmp_path, name, make, code, fragment):
    work = tmp_path / "work"
    work.mkdir()
    args = make(work)
    inputs = [p for p in work.rglob("*") if p.is_file()]
    outcome = run_hostile(*args, cwd=work, inputs=inputs, timeout=60)
    outcome.assert_clean(code, fragment, limit=60)


def test_a_valid_manifest_with_typed_fields_still_runs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _pair(work)
    (work / "zoo.toml").write_text('[[model]]\nname = "cnn"\n' + GOOD + "atol = 0.01\nseed = 3\nlayers = false\n")
    outcome = run_hostile("sweep", "zoo.toml", "-q", cwd=work, timeout=120)
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=120)
