"""--mnn-target: MNN run through a target's Python over stdin/stdout (exec:, ssh://), checked
against MNN run locally on the same files. The "remote" is this machine's own Python, started
by a command (exec:) or through a real sshd on 127.0.0.1 (tests/sshd.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parity
from helpers import (MODELS, ROOT, assert_one_line_error, crashing_model, default_signals, report_json, run_json,
                     run_parity, slow_matmul_model, wait_until)
from parity.core.errors import ExitCode, UsageError
from parity.run.targets import crash_signal, parse_target

PY = sys.executable
EXEC = f"exec:{PY}"


def _figures(report: dict) -> list:
    return [(c["candidate"], o["name"], o["max_abs_diff"], o["cosine"], o["passed"])
            for c in report["comparisons"] for o in c["outputs"]]


def _check_json(*models, **mnn_options) -> tuple[int, dict]:
    """parity.check with these MNN options (target=, precision=): (exit code, the report as
    its JSON reads)."""
    report = parity.check(models, mnn_options=mnn_options)
    return report.exit_code, report_json(report)


# -- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, fields", [
    ("local", "local", {}),
    (None, "local", {}),
    ("arm64", "arm64", {}),
    ("ssh://pi@10.0.0.2:2222", "ssh", {"user": "pi", "host": "10.0.0.2", "port": 2222}),
    ("ssh://board", "ssh", {"user": "", "host": "board", "port": None, "python": "python3"}),
    ("ssh://board?python=/opt/venv/bin/python", "ssh", {"python": "/opt/venv/bin/python"}),
    ("exec:docker run -i img python3", "exec", {"command": "docker run -i img python3"}),
])
def test_targets_parse(text, kind, fields):
    target = parse_target(text)
    assert target.kind == kind
    for key, value in fields.items():
        assert getattr(target, key) == value


@pytest.mark.parametrize("text, fragment", [
    ("android", "unknown --mnn-target"),
    ("exec:", "needs a command"),
    ("exec:python3\nrm -rf /", "one line"),
    ("ssh://", "ssh://[user@]host"),
    ("ssh://host:99999", "port"),
    ("ssh://-oProxyCommand=x", "ssh://[user@]host"),
    ("ssh://host/path", "ssh://[user@]host"),
    ("ssh://host?identity=x", "unknown option"),
])
def test_bad_targets_are_refused(text, fragment):
    with pytest.raises(UsageError) as info:
        parse_target(text)
    assert fragment in str(info.value)


def test_bad_target_on_the_command_line_is_a_usage_error():
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target", "android")
    assert_one_line_error(result, ExitCode.USAGE, "unknown --mnn-target 'android'")


def test_crash_signal_reads_status_and_faulthandler():
    assert crash_signal(-11, "").startswith("SIGSEGV")
    assert crash_signal(255, "Fatal Python error: Floating point exception\n").startswith("SIGFPE")
    assert crash_signal(134, "").startswith("SIGABRT")
    assert crash_signal(1, "some error") is None


# -- exec: -------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_exec_target_gives_the_local_figures(model):
    onnx_path, mnn_path = MODELS / f"{model}.onnx", MODELS / f"{model}.mnn"
    local_code, local = _check_json(onnx_path, mnn_path)
    code, remote = _check_json(onnx_path, mnn_path, target=EXEC)
    assert code == local_code == 0
    assert _figures(remote) == _figures(local)
    settings = remote["backends"][-1]["settings"]
    assert settings["target"] == EXEC and settings["platform"]["mnn"] == remote["backends"][-1]["version"]
    assert settings["platform"]["machine"] and "fp16" in settings["cpu_features"]
    assert remote["comparisons"][0]["candidate_run"] == EXEC


def test_exec_target_runs_each_precision_as_its_own_link():
    code, report = _check_json(MODELS / "cnn.onnx", MODELS / "cnn.mnn", target=EXEC, precision="high,low")
    assert code == 0
    runs = [c["candidate_run"] for c in report["comparisons"]]
    assert runs == [f"{EXEC}, precision high", f"{EXEC}, precision low"]
    assert [b["settings"]["precision"] for b in report["backends"][1:]] == ["high", "low"]
    if not report["backends"][-1]["settings"]["float16_arithmetic"]:  # an x86 host: said so
        assert any("ran in float32" in n for n in report["comparisons"][1]["notes"])


def test_terminal_prints_the_target_facts():
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target", EXEC)
    assert result.code == 0, result.err
    line = next(ln for ln in result.out.splitlines() if ln.startswith("target: "))
    assert f"on {EXEC}" in line and "Python" in line and "backend CPU" in line


def test_target_without_mnn_is_one_line_and_exit_4(tmp_path):
    """A Python with numpy but no MNN: site-packages off (-S), numpy alone on its path."""
    import numpy

    only_numpy = tmp_path / "only-numpy"
    only_numpy.mkdir()
    package = Path(numpy.__file__).parent
    for entry in package.parent.iterdir():
        if entry.name == "numpy" or entry.name.startswith("numpy.libs"):
            (only_numpy / entry.name).symlink_to(entry)
    target = f"exec:env PYTHONPATH={only_numpy} {PY} -S"
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target", target)
    assert_one_line_error(result, ExitCode.BACKEND, "has no MNN", "install it there")


def test_target_without_python_is_one_line_and_exit_4():
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target", "exec:no-such-python3")
    assert_one_line_error(result, ExitCode.BACKEND, "could not start its Python", "no-such-python3")


@pytest.fixture(scope="module")
def crash_models(tmp_path_factory):
    return crashing_model(tmp_path_factory.mktemp("crash"))


def test_exec_target_crash_is_backend_crash(crash_models):
    onnx_path, mnn_path = crash_models
    result = run_parity("check", onnx_path, mnn_path, "--mnn-target", EXEC)
    assert_one_line_error(result, ExitCode.BACKEND, "SIGFPE", "running pool.mnn", EXEC)


def _agents(mark: str) -> list[int]:
    """Target Pythons started by the parity run whose environment holds ``mark`` (their
    command line holds the boot code; other tests' targets, running alongside, do not count)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (b"parity-boot" in (entry / "cmdline").read_bytes()
                        and f"PARITY_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_exec_target_timeout_ends_the_target(tmp_path):
    _, mnn_path = slow_matmul_model(tmp_path)
    mark = tmp_path.name
    result = run_parity("check", mnn_path, mnn_path, "--mnn-target", EXEC, "--mnn-threads", "1",
                        "--timeout", "0.05", "--no-diagnose", env={"PARITY_TEST_MARK": mark})
    assert_one_line_error(result, ExitCode.BACKEND, "within", EXEC)
    deadline = time.monotonic() + 5
    while _agents(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _agents(mark) == []


def test_sigterm_ends_the_target_python_too(tmp_path):
    onnx_path, mnn_path = slow_matmul_model(tmp_path, count=200)  # ~20 s of MNN on one thread
    mark = tmp_path.name
    proc = subprocess.Popen([PY, "-m", "parity", "check", onnx_path, mnn_path, "--mnn-target", EXEC,
                             "--mnn-threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PARITY_TEST_MARK=mark), preexec_fn=default_signals)
    wait_until(lambda: _agents(mark), proc, "the target's agent ran", timeout=60)
    proc.send_signal(signal.SIGTERM)  # the agent loads and runs ~20 s of MNN: the signal lands in it
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED, err
    deadline = time.monotonic() + 10
    while _agents(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _agents(mark) == []


def test_target_check_exec_prints_the_facts():
    result = run_parity("target", "check", EXEC)
    assert result.code == 0, result.err
    assert "CPU features" in result.out and "backends     CPU" in result.out
    data = run_json("target", "check", EXEC).json()
    assert data["target"] == EXEC and data["machine"] and "fp16" in data["cpu_features"]
    assert "CPU" in data["backends"] and "OPENCL" not in data["backends"]


def test_pytest_fixture_takes_a_target():
    from parity.pytest_plugin import check_parity

    report = check_parity(MODELS / "cnn.onnx", MODELS / "cnn.mnn", mnn_target=EXEC, mnn_precision="high,low")
    assert [c.candidate_run for c in report.comparisons] == [f"{EXEC}, precision high", f"{EXEC}, precision low"]


def test_sweep_takes_a_target(tmp_path):
    result = run_json("sweep", MODELS, "--mnn-target", EXEC, "-q")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["passed"] and len(data["results"]) >= 2


def test_manifest_may_not_name_an_exec_target(tmp_path):
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(f'[[model]]\nonnx = "{MODELS / "cnn.onnx"}"\nmnn = "{MODELS / "cnn.mnn"}"\n'
                        f'mnn_target = "exec:touch {tmp_path / "pwned"}"\n')
    result = run_parity("sweep", manifest)
    assert result.code == ExitCode.MODEL_OR_INPUT, result.err
    assert "command line" in result.err and not (tmp_path / "pwned").exists()


# -- ssh:// ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    import sshd

    missing = sshd.missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the ssh target test: {missing}")
        pytest.skip(missing)
    server, proc = sshd.start(tmp_path_factory.mktemp("sshd"))
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def test_ssh_target_gives_the_local_figures(ssh_server, monkeypatch):
    monkeypatch.setenv("PARITY_SSH", ssh_server.client)
    for model in ("cnn", "transformer"):
        onnx_path, mnn_path = MODELS / f"{model}.onnx", MODELS / f"{model}.mnn"
        _, local = _check_json(onnx_path, mnn_path)
        code, remote = _check_json(onnx_path, mnn_path, target=ssh_server.url(PY))
        assert code == 0
        assert _figures(remote) == _figures(local)
        assert remote["backends"][-1]["settings"]["target"] == ssh_server.url(PY)


def test_ssh_target_without_mnn_is_one_line_and_exit_4(ssh_server):
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target",
                        ssh_server.url(f"{PY}%20-S"), env={"PARITY_SSH": ssh_server.client})
    assert_one_line_error(result, ExitCode.BACKEND, "has no numpy and MNN")


def test_ssh_target_unreachable_is_one_line_and_exit_4(ssh_server):
    port = ssh_server.port + 1 if ssh_server.port < 65535 else ssh_server.port - 1
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target",
                        f"ssh://{ssh_server.user}@127.0.0.1:{port}", env={"PARITY_SSH": ssh_server.client})
    assert result.code == ExitCode.BACKEND, result.err
    assert "Traceback" not in result.err and "127.0.0.1" in result.err
    # ssh's own reason leads, not a guess about a remote Python that never started
    assert "ssh could not reach target" in result.err and "Connection refused" in result.err, result.err


# -- what a review found: hostile targets and manifests ----------------------------------------
@pytest.mark.parametrize("value", [" exec:touch {pwned}; python3", "\texec:touch {pwned}",
                                   "ssh://device?python=sh%20-c%20'touch%20{pwned}'"])
def test_manifest_cannot_run_a_command_through_its_target(tmp_path, value):
    pwned = tmp_path / "pwned"
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(f'[[model]]\nonnx = "{MODELS / "cnn.onnx"}"\nmnn = "{MODELS / "cnn.mnn"}"\n'
                        f'mnn_target = "{value.format(pwned=pwned)}"\n')
    result = run_parity("sweep", manifest)
    assert result.code == ExitCode.MODEL_OR_INPUT, result.err
    assert "command line" in result.err and not pwned.exists()


@pytest.mark.parametrize("text, fragment", [
    ("ssh://host:0", "port"),
    ("ssh://root:hunter2@host", "no password"),
    ("ssh://host?python=", "?python= needs"),
    ("ssh://host#x", "fragment"),
    ("exec:-python3", "cannot start with '-'"),
    ("exec:" + "x" * 5000, "characters long"),
])
def test_more_bad_targets_are_refused(text, fragment):
    with pytest.raises(UsageError) as info:
        parse_target(text)
    assert fragment in str(info.value)


def test_a_banner_before_the_python_is_named(tmp_path):
    target = f"exec:sh -c 'echo Welcome to my board; exec {PY} \"$@\"' --"
    result = run_parity("check", *(MODELS / "cnn.onnx", MODELS / "cnn.mnn"), "--mnn-target", target)
    assert_one_line_error(result, ExitCode.BACKEND, "not parity's protocol", "Welcome")


@pytest.mark.parametrize("frame", ["{}", "[1, 2]", '{"status": "error", "payload": ["usage", "you lose"]}'])
def test_a_malformed_reply_is_a_backend_error(tmp_path, frame):
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import json, struct, sys\n"
        f"header = {frame!r}.encode()\n"
        "sys.stdout.buffer.write(struct.pack('>4sQI', b'PRTY', len(header), 0) + header)\n"
        "sys.stdout.buffer.flush()\n"
        "sys.stdin.buffer.read()\n")
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target", f"exec:{PY} {fake}")
    assert result.code == ExitCode.BACKEND, (result.code, result.err)
    assert "Traceback" not in result.err and "Internal error" not in result.err


def test_a_huge_announced_frame_is_refused_without_allocating_it(tmp_path):
    fake = tmp_path / "huge.py"
    fake.write_text("import struct, sys\n"
                    "sys.stdout.buffer.write(struct.pack('>4sQI', b'PRTY', 3 << 30, 0))\n"
                    "sys.stdout.buffer.flush()\nsys.stdin.buffer.read()\n")
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--mnn-target", f"exec:{PY} {fake}")
    assert_one_line_error(result, ExitCode.BACKEND, "not parity's protocol")


def test_sigterm_while_the_target_starts_leaves_nothing(tmp_path):
    # a command line no other test, and no other run of the suite on this machine, runs
    marker = f"sleep 97.{os.getpid()}{time.monotonic_ns() % 100000}"
    proc = subprocess.Popen([PY, "-m", "parity", "check", MODELS / "cnn.onnx", MODELS / "cnn.mnn",
                             "--mnn-target", f"exec:sh -c '{marker}' --"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_signals)

    def starting():  # the target's command runs (it never answers): parity waits for it
        return [e for e in Path("/proc").iterdir() if e.name.isdigit() and _cmdline(e).startswith(marker)]

    wait_until(starting, proc, "the target's command started", timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.TERMINATED, err
    deadline = time.monotonic() + 5  # the kernel may take a moment to reap what was killed
    while starting() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert starting() == []


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_target_options_without_an_mnn_model_are_refused():
    result = run_parity("check", MODELS / "cnn.onnx", MODELS / "cnn.onnx", "--mnn-target", "arm64")
    assert_one_line_error(result, ExitCode.USAGE, "none is given")


def test_a_crash_on_a_target_leaves_no_file_there(tmp_path, crash_models):
    onnx_path, mnn_path = crash_models
    there = tmp_path / "target-tmp"
    there.mkdir()
    result = run_parity("check", onnx_path, mnn_path, "--mnn-target", f"exec:env TMPDIR={there} {PY}")
    assert_one_line_error(result, ExitCode.BACKEND, "SIGFPE")
    assert list(there.iterdir()) == []


def test_a_folder_goes_to_the_target_with_its_files_and_no_name_escapes(tmp_path):
    """What an MNN-LLM export needs on a target: a folder whose files keep their names (its
    config.json names the others); the target's scratch folder keeps everything it is sent."""
    from parity.core.errors import BackendError
    from parity.run.targets import RemoteWorker

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text('{"llm_model": "llm.mnn"}')
    (folder / "llm.mnn").write_bytes(os.urandom(70_000))
    with RemoteWorker(parse_target(EXEC)) as worker:
        remote = Path(worker.folder_path(folder, ["config.json", "llm.mnn"]))
        assert sorted(p.name for p in remote.iterdir()) == ["config.json", "llm.mnn"]
        assert (remote / "llm.mnn").read_bytes() == (folder / "llm.mnn").read_bytes()
        assert worker.folder_path(folder, ["config.json"]) == str(remote)  # sent once
        scratch = remote.parent
        for name in ("../escaped", "a/b/c", "x/..", "/abs/file", ""):
            with pytest.raises(BackendError, match="not a file name parity sends"):
                worker._send(["put", name, b"x", False], "test")
                worker._reply_of_put("test")
        assert not (scratch.parent / "escaped").exists()
    assert not scratch.exists()  # the target's scratch folder went with it


def test_a_target_whose_command_exits_leaves_nothing_it_started_running(tmp_path):
    marker = "37.5123"  # a sleep no other process runs
    result = run_parity("target", "check", f"exec:sh -c 'sleep {marker} & exit 1' sh", cwd=tmp_path)
    assert result.code == ExitCode.BACKEND, result.err
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
    for pid in left:  # never leave it behind for the next test, even when the assertion fails
        os.kill(int(pid), signal.SIGKILL)
    assert not left, "the target's background process outlived parity"
