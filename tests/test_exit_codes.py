"""The README's exit-code table is the contract: it lists exactly parity's ExitCode members."""

from __future__ import annotations

import re

import pytest

from helpers import ROOT
from parity.core.errors import ExitCode


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_the_readme_table_lists_every_exit_code_and_no_other():
    assert sorted(readme_exit_codes()) == sorted(int(code) for code in ExitCode)


def test_signal_codes_follow_the_shell_convention():
    assert ExitCode.HANGUP == 128 + 1 and ExitCode.INTERRUPTED == 128 + 2
    assert ExitCode.BROKEN_PIPE == 128 + 13 and ExitCode.TERMINATED == 128 + 15


def test_an_unexpected_exception_is_exit_123_in_one_line(monkeypatch):
    """The catch-all for parity's own bugs: one line naming the exception, exit 123, and the
    traceback only with --traceback. (The failure is injected into parity's pipeline; the
    frameworks are not involved.)"""
    from click.testing import CliRunner

    from helpers import MODELS
    from parity.checking import pipeline
    from parity.cli import cli

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(pipeline, "check", broken)
    runner = CliRunner()
    result = runner.invoke(cli, ["check", str(MODELS / "cnn.onnx"), str(MODELS / "cnn.mnn"), "-q"])
    assert result.exit_code == ExitCode.INTERNAL == 123
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == ["Internal error: ValueError: an internal bug (rerun with --traceback for details)"]
    result = runner.invoke(cli, ["check", str(MODELS / "cnn.onnx"), str(MODELS / "cnn.mnn"), "-q", "--traceback"])
    assert result.exit_code == 123 and "Traceback" in result.output


_LAUNCHER = """
import atexit, runpy, sys, threading, time
marker, mode = sys.argv.pop(1), sys.argv.pop(1)
atexit.register(lambda: open(marker, "a").write("atexit ran\\n"))  # a third party's handler
if mode == "thread":  # a thread still running when the command ends: Python's own exit joins it
    threading.Thread(target=lambda: (time.sleep(0.3), open(marker, "a").write("thread ended\\n"))).start()
sys.argv[0] = "parity"
if mode == "embedded":  # a program that runs the CLI in its own process, then goes on
    try:
        runpy.run_module("parity", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        open(marker, "a").write(f"went on after exit {exc.code}\\n")
else:
    from parity.__main__ import run  # the console script's entry
    run()
"""


@pytest.mark.parametrize("mode", ["alone", "thread", "embedded"])
@pytest.mark.parametrize("case", ["pass", "missing"])
def test_the_cli_exit_runs_every_handler_and_delivers_all_output(tmp_path, mode, case):
    """The program leaves without the interpreter's teardown (parity.__main__._exit_now): its
    exit code, every byte of its output and every atexit handler (once) are as a normal exit's;
    with another thread alive it exits normally, after that thread; run in-process by a program
    that catches its SystemExit, it lets that program go on."""
    import json
    import subprocess
    import sys

    from helpers import MODELS

    marker = tmp_path / "marker"
    onnx_path = MODELS / "cnn.onnx" if case == "pass" else tmp_path / "absent.onnx"
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(marker), mode, "check", str(onnx_path),
                           str(MODELS / "cnn.mnn"), "--json", "-"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    lines = marker.read_text().splitlines()
    code = 0 if case == "pass" else ExitCode.MODEL_OR_INPUT
    if mode == "embedded":
        assert proc.returncode == 0 and f"went on after exit {code}" in lines, (proc.stderr, lines)
    else:
        assert proc.returncode == code, proc.stderr
    if case == "pass":
        assert json.loads(proc.stdout)["passed"] is True
    else:
        assert "absent.onnx" in proc.stderr
    assert lines.count("atexit ran") == 1
    assert ("thread ended" in lines) == (mode == "thread")
    assert list(tmp_path.iterdir()) == [marker]
