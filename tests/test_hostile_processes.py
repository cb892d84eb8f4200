"""Hostile processes (issue 12): signals at any moment of check, convert and sweep; a working
directory holding modules named like parity's dependencies; PYTHON* variables; a closed stdout.

Promises: SIGTERM and SIGHUP end a run like Ctrl-C (one line, exit 128 + the signal, children
stopped, temporary files removed); SIGKILL leaves no child and no temporary file either (the
kernel kills the children, a reaper removes the run's private directory); children run
isolated (``python -I``, their own process group, the parent's import path without the working
directory); a closed stdout pipe exits 141 without a word, never 1 (the mismatch code)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from onnx import helper

from helpers import JSON_STDOUT, MODELS, default_signals, save_model, tensor, to_mnn, wait_until
from hostile import CAPTURING, PAIR_RUNNING, RUNNING, STARTED, _marked_processes, run_hostile
from parity.core.errors import ExitCode

INTERRUPTED_BY = {signal.SIGTERM: "Interrupted by SIGTERM", signal.SIGHUP: "Interrupted by SIGHUP",
                  signal.SIGINT: "Interrupted"}


@pytest.fixture(scope="module")
def slow_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A pair whose check takes ~10 s (24 chained 768x768 self-MatMuls with Tanh: no
    weights, so it converts at once), so a signal lands mid-run; killed, it costs only until then."""
    d = tmp_path_factory.mktemp("slow")
    nodes, previous = [], "x"
    for i in range(24):
        nodes.append(helper.make_node("MatMul", [previous, previous], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        previous = f"t{i}"
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 768, 768])], [tensor(previous, shape=[1, 768, 768])],
                           d / "slow.onnx")
    return onnx_path, to_mnn(onnx_path)


def _work(tmp_path: Path, *files: Path, names=None) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for i, f in enumerate(files):
        shutil.copy(f, work / (names[i] if names else f.name))
    return work


def _signalled(outcome, signum) -> None:
    if signum == signal.SIGKILL:  # no word is possible; nothing may be left either
        outcome.assert_clean(-signal.SIGKILL, error_line=False, limit=60)
        assert outcome.err == ""
    else:
        outcome.assert_clean(128 + signum, INTERRUPTED_BY[signum], "child processes stopped", limit=60)


# -- signals -----------------------------------------------------------------------------------
# Each signal is sent when parity is in the phase named (a file in its private TMPDIR says so,
# see hostile.py), never after a fixed delay: on a loaded machine a delay lands elsewhere.
@pytest.mark.parametrize("signum, phase", [
    (signal.SIGTERM, STARTED),  # starting: MNN's child just started
    (signal.SIGTERM, RUNNING),  # running both frameworks
    (signal.SIGTERM, CAPTURING),  # capturing layers
    (signal.SIGHUP, RUNNING),
    (signal.SIGINT, RUNNING),  # to parity alone: its MNN child is in a process group of its own
    (signal.SIGKILL, RUNNING),
], ids=["term-start", "term-run", "term-layers", "hup", "int", "kill"])
def test_signal_during_check_layers(tmp_path, slow_pair, signum, phase):
    work = _work(tmp_path, *slow_pair)
    outcome = run_hostile("check", "slow.onnx", "slow.mnn", "--layers", "--json", "r.json", cwd=work,
                          signal_when=(phase, signum))
    _signalled(outcome, signum)
    assert not (work / "r.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_signal_during_convert(tmp_path, slow_pair, signum):
    work = _work(tmp_path, slow_pair[0])
    outcome = run_hostile("convert", "slow.onnx", "-o", "out.mnn", cwd=work, outputs=["out.mnn"],
                          signal_when=(STARTED, signum))  # the converter's child has started
    _signalled(outcome, signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL],
                         ids=["term", "hup", "int", "kill"])
def test_signal_during_sweep_with_two_jobs(tmp_path, slow_pair, signum):
    """Its pair checks run in sessions of their own with their own MNN children: none may
    outlive the sweep, and none of their temporary files either."""
    work = tmp_path / "work"
    (work / "zoo").mkdir(parents=True)
    for stem in ("a", "b", "c"):
        for model in slow_pair:
            shutil.copy(model, work / "zoo" / f"{stem}{model.suffix}")
    outcome = run_hostile("sweep", "zoo", "-j", "2", "--json", "s.json", cwd=work,
                          signal_when=(PAIR_RUNNING, signum))
    _signalled(outcome, signum)
    assert not (work / "s.json").exists()


# -- the working directory ---------------------------------------------------------------------
SHADOWS = ["click", "numpy", "rich", "onnx", "onnxruntime", "json", "tempfile", "sitecustomize", "MNN"]


def _shadow(directory: Path, module: str) -> None:
    (directory / f"{module}.py").write_text(
        "import sys\nsys.stderr.write('the working directory ran me\\n')\nraise SystemExit(66)\n")


@pytest.mark.parametrize("module", SHADOWS)
def test_check_never_imports_from_the_working_directory(tmp_path, module):
    work = _work(tmp_path, MODELS / "cnn.onnx", MODELS / "cnn.mnn")
    _shadow(work, module)
    outcome = run_hostile("check", "cnn.onnx", "cnn.mnn", cwd=work, inputs=[work / f"{module}.py"])
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)
    assert "working directory ran me" not in outcome.err


def test_sweep_of_a_directory_holding_click_and_numpy(tmp_path):
    """The issue's case: `parity sweep .` where the pairs sit next to a click.py and numpy.py."""
    work = _work(tmp_path, MODELS / "cnn.onnx", MODELS / "cnn.mnn")
    for module in ("click", "numpy", "rich"):
        _shadow(work, module)
    outcome = run_hostile("sweep", ".", "-j", "2", cwd=work)
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)
    assert "=== 1 passed" in outcome.out


# -- PYTHON* variables -------------------------------------------------------------------------
def test_pythonstartup_is_never_run(tmp_path):
    work = _work(tmp_path, MODELS / "cnn.onnx", MODELS / "cnn.mnn")
    startup = tmp_path / "startup.py"
    startup.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    outcome = run_hostile("check", "cnn.onnx", "cnn.mnn", cwd=work, env={"PYTHONSTARTUP": str(startup)})
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("variable", ["PYTHONHOME", "PYTHONPATH", "PYTHONINSPECT", "PYTHONWARNINGS"])
def test_children_ignore_python_variables_of_the_environment(tmp_path, monkeypatch, add_pair, variable):
    """Set after parity started (as a host program may): MNN's child and sweep's checks must
    neither die of them (a PYTHONHOME without a standard library), import from them (a
    PYTHONPATH numpy.py that parity's own sys.path does not have), stay interactive after the
    check and report its code wrongly (PYTHONINSPECT), nor turn warnings into errors."""
    from parity.checking import sweep
    from parity.backends.mnn import MnnBackend

    evil = tmp_path / "evil"
    evil.mkdir()
    _shadow(evil, "numpy")
    value = {"PYTHONHOME": str(evil), "PYTHONPATH": str(evil), "PYTHONINSPECT": "1",
             "PYTHONWARNINGS": "error"}[variable]
    monkeypatch.setenv(variable, value)
    with MnnBackend(add_pair[1]) as backend:
        assert [spec.name for spec in backend.input_specs] == ["x"]
    (result,) = sweep.run([sweep.Item("add", [str(p) for p in add_pair])], pair_timeout=120)
    assert result["exit_code"] == ExitCode.PASS, result["error"]


def test_children_are_isolated_in_their_own_process_group():
    from parity.backends.mnn import MnnBackend

    with MnnBackend(MODELS / "cnn.mnn") as backend:
        pid = backend._worker._proc.pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1] == b"-I"
        assert os.getpgid(pid) == pid != os.getpgid(0)  # the terminal's signals reach parity alone


# -- what ONNX Runtime leaves -------------------------------------------------------------------
def test_nothing_written_to_tmpdir_or_home(tmp_path):
    """ONNX Runtime's telemetry wrote $TMPDIR/.ses on every run and a device id under
    ~/.cache: the run's private temporary directory and ORT_DISABLE_TELEMETRY contain both."""
    work = _work(tmp_path, MODELS / "cnn.onnx", MODELS / "cnn.mnn")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    outcome = run_hostile("check", "cnn.onnx", "cnn.mnn", "--layers", cwd=work, env=env, watch=[home])
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)


# -- stdout ------------------------------------------------------------------------------------
def _run_to(stdout_setup: str, *args, cwd: Path, tmp: Path):
    """Run parity with stdout a pipe whose reader is gone ("broken") or closed ("closed")."""
    marker = f"PARITY_HOSTILE_{os.getpid()}_{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if k != "PARITY_TRACEBACK"}
    env.update({"TMPDIR": str(tmp), marker: "1"})
    command = [sys.executable, "-m", "parity", *map(str, args)]
    if stdout_setup == "closed":
        command = ["sh", "-c", 'exec "$@" >&-', "sh", *command]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if stdout_setup == "broken" else None,
                            stderr=subprocess.PIPE, text=True)
    if stdout_setup == "broken":
        proc.stdout.close()  # like `| head -c0`: the reader is gone before parity writes
    err = proc.stderr.read()
    proc.wait(timeout=120)
    time.sleep(0.3)
    return proc.returncode, err, _marked_processes(marker), sorted(tmp.iterdir())


@pytest.mark.parametrize("setup, extra, code", [
    ("broken", (), 141),
    ("broken", JSON_STDOUT, 141),
    ("closed", (), ExitCode.PASS),  # nowhere to print: like /dev/null; the check decides
], ids=["broken-table", "broken-json", "closed"])
def test_stdout_that_cannot_be_written(tmp_path, setup, extra, code):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = _work(tmp_path, MODELS / "cnn.onnx", MODELS / "cnn.mnn")
    returncode, err, processes, left = _run_to(setup, "check", "cnn.onnx", "cnn.mnn", *extra, cwd=work, tmp=tmp)
    assert (returncode, err) == (int(code), "")  # never 1, the mismatch code; never a traceback
    assert processes == [] and left == []


def test_interrupt_after_the_conversion_names_the_model_it_wrote(tmp_path, slow_pair):
    """Ctrl-C during convert's check step: the converted model is a finished output and stays;
    the line must say it was written (it used to say "nothing was written")."""
    work = _work(tmp_path, slow_pair[0])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "parity", "convert", "slow.onnx", "-o", "out.mnn"],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp)), start_new_session=True,
                            preexec_fn=default_signals)
    # the check of the converted pair runs MNN: its first feed is written after out.mnn exists
    wait_until(lambda: next(tmp.glob(RUNNING), None), proc, "the converted pair was being checked", timeout=60)
    assert (work / "out.mnn").exists(), "the conversion did not finish"
    finished_before = proc.poll() is not None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (finished_before, err, out[-800:])
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("converting", "loading", "running"))]
    assert lines[-1].startswith("Interrupted") and "out.mnn" in lines[-1] and "nothing was written" not in lines[-1], err
    assert "Traceback" not in err
