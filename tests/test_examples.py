"""examples/github-actions.yml runs as written: every `parity ...` command in it, in a
repository laid out as the example expects (models/encoder.onnx and .mnn, zoo.toml), with the
matrix values filled in."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest

from helpers import MODELS, ROOT

WORKFLOW = ROOT / "examples" / "github-actions.yml"


def _parity_commands() -> list[str]:
    commands = []
    for line in WORKFLOW.read_text().splitlines():
        match = re.match(r"^\s*- run: (parity .*)$", line)
        if match:
            commands.append(match.group(1))
    return commands


def test_the_workflow_has_parity_commands():
    commands = _parity_commands()
    assert any(c.startswith("parity check") for c in commands)
    assert any(c.startswith("parity sweep") and "--junit" in c and "--html" in c for c in commands)


@pytest.mark.parametrize("command", _parity_commands())
def test_each_parity_command_of_the_workflow_runs_as_written(tmp_path, command):
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    for suffix in (".onnx", ".mnn"):
        shutil.copy(MODELS / f"transformer{suffix}", repo / "models" / f"encoder{suffix}")
        shutil.copy(MODELS / f"cnn{suffix}", repo / "models" / f"cnn{suffix}")
    (repo / "zoo.toml").write_text('[[model]]\nname = "encoder"\nonnx = "models/encoder.onnx"\nmnn = "models/encoder.mnn"\n\n'
                                   '[[model]]\nname = "cnn"\nonnx = "models/cnn.onnx"\nmnn = "models/cnn.mnn"\natol = 1e-3\n')
    filled = command.replace("${{ matrix.shard }}", "1")
    assert "${{" not in filled, filled
    argv = shlex.split(filled)
    argv[0:1] = [sys.executable, "-m", "parity"]
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    written = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("--junit", "--html", "--json")]
    assert written and all((repo / path).stat().st_size > 0 for path in written)
