"""The arm64 target's setup (target_setup.py): where it lives, when it counts as ready, and the
one-line refusals, all without emulation or network; then one real run in the built root
(marked arm64, skipped when the root is not set up)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_parity
from parity.run import target_setup
from parity.core.errors import BackendError, ExitCode, UsageError
from parity.run.target_setup import arm64_python, installed_targets, remove_arm64, setup_arm64, targets_home

FACTS = {"target": "arm64", "machine": "aarch64", "python": "3.11.2", "numpy": "1.24.2", "mnn": "3.6.1"}
TOOLS = ("debootstrap", "qemu-aarch64-static", "dpkg-deb", "tar")


def _fake_root(directory: Path, facts: dict | None = FACTS) -> Path:
    """A tree shaped like a root (python3 -> python3.11), with a marker when facts are given."""
    bin_dir = directory / "root" / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to("python3.11")
    if facts is not None:
        (directory / "target.json").write_text(json.dumps(facts))
    return directory / "root"


def _tools(tmp_path: Path, scripts: dict[str, str] | None = None) -> Path:
    """A PATH directory with the host tools as shell scripts (exit 0 unless given a body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).write_text("#!/bin/sh\n" + (scripts or {}).get(tool, "exit 0\n"))
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def _one_line(error: Exception) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


# -- where ----------------------------------------------------------------------------------------
def test_targets_home_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_TARGETS_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert targets_home() == tmp_path / "mine"
    monkeypatch.delenv("PARITY_TARGETS_DIR")
    assert targets_home() == tmp_path / "xdg" / "parity" / "targets"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert targets_home() == tmp_path / "home" / ".cache" / "parity" / "targets"


def test_a_relative_targets_dir_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARITY_TARGETS_DIR", "targets")
    assert targets_home() == tmp_path / "targets"


# -- ready or not ---------------------------------------------------------------------------------
def test_an_empty_home_has_no_target(tmp_path):
    assert installed_targets(tmp_path) == []
    with pytest.raises(UsageError) as caught:
        arm64_python(tmp_path / "nothing-here")
    assert _one_line(caught.value) == "the arm64 target is not set up: run `parity target setup arm64`"


@pytest.mark.parametrize("layout", ["partial", "no marker", "torn marker", "no python"])
def test_a_half_built_root_is_not_ready(tmp_path, layout):
    if layout == "partial":  # a setup killed before its rename, marker included
        _fake_root(tmp_path / ".arm64-partial-x1y2")
    elif layout == "no marker":
        _fake_root(tmp_path / "arm64", facts=None)
    elif layout == "torn marker":
        _fake_root(tmp_path / "arm64", facts=None)
        (tmp_path / "arm64" / "target.json").write_text('{"python": "3.1')
    else:
        (tmp_path / "arm64").mkdir()
        (tmp_path / "arm64" / "target.json").write_text(json.dumps(FACTS))
    assert installed_targets(tmp_path) == []
    with pytest.raises(UsageError, match="not set up"):
        arm64_python(tmp_path)


def test_a_ready_root_is_listed_and_started_under_qemu(tmp_path, monkeypatch):
    root = _fake_root(tmp_path / "arm64")
    monkeypatch.setenv("PATH", str(_tools(tmp_path)))
    assert installed_targets(tmp_path) == [{**FACTS, "name": "arm64", "root": str(root)}]

    prefix, env = arm64_python(tmp_path)
    assert prefix == [str(tmp_path / "bin" / "qemu-aarch64-static"), "-L", str(root), str(root / "usr/bin/python3")]
    assert env["PYTHONPATH"] == str(root / "opt/parity-mnn")
    assert env["LD_LIBRARY_PATH"].split(":") == [str(root / "usr/lib/aarch64-linux-gnu/blas"),
                                                 str(root / "usr/lib/aarch64-linux-gnu/lapack")]
    assert "QEMU_CPU" not in env  # qemu's own default (max) unless asked


def test_a_cpu_is_checked_against_qemus_list(tmp_path, monkeypatch):
    _fake_root(tmp_path / "arm64")
    listing = "printf 'Available CPUs:\\n  cortex-a72\\n  cortex-a76\\n  max\\n'\n"
    monkeypatch.setenv("PATH", str(_tools(tmp_path, {"qemu-aarch64-static": listing})))
    assert arm64_python(tmp_path, cpu="cortex-a76")[1]["QEMU_CPU"] == "cortex-a76"
    for wrong in ("cortex-a99", ""):  # qemu itself would exit at once: "unable to find CPU model"
        with pytest.raises(UsageError) as caught:
            arm64_python(tmp_path, cpu=wrong)
        assert _one_line(caught.value) == f"qemu-aarch64 has no CPU {wrong!r}: it knows cortex-a72, cortex-a76, max"


def test_a_ready_root_without_qemu_says_what_to_install(tmp_path, monkeypatch):
    _fake_root(tmp_path / "arm64")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UsageError) as caught:
        arm64_python(tmp_path)
    assert "apt-get install qemu-user-static" in _one_line(caught.value)


def test_setup_keeps_a_ready_root_and_needs_no_tools_for_it(tmp_path, monkeypatch):
    root = _fake_root(tmp_path / "arm64")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    said: list[str] = []
    assert setup_arm64(said.append, home=tmp_path, mnn_version="3.6.1") == root
    assert said == [f"arm64: already set up in {root} (Python 3.11.2, numpy 1.24.2, MNN 3.6.1)"]
    with pytest.raises(UsageError) as caught:  # asked for another MNN: not returned silently
        setup_arm64(said.append, home=tmp_path, mnn_version="3.5.0")
    assert "has MNN 3.6.1, not 3.5.0" in _one_line(caught.value)


def test_remove_deletes_the_target(tmp_path):
    _fake_root(tmp_path / "arm64")
    assert remove_arm64(tmp_path) is True
    assert installed_targets(tmp_path) == [] and not (tmp_path / "arm64").exists()
    assert remove_arm64(tmp_path) is False
    assert [p.name for p in tmp_path.iterdir()] == [".arm64.lock"]


# -- refusals, before anything is written ---------------------------------------------------------
def test_missing_tools_are_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UsageError) as caught:
        setup_arm64(lambda message: None, home=tmp_path / "home")
    assert _one_line(caught.value) == (
        "the arm64 target needs debootstrap, qemu-aarch64-static, dpkg-deb, tar: "
        "apt-get install debootstrap qemu-user-static dpkg tar")
    assert not (tmp_path / "home").exists()


def test_one_missing_tool_is_named_alone(tmp_path, monkeypatch):
    bin_dir = _tools(tmp_path)
    (bin_dir / "qemu-aarch64-static").unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UsageError) as caught:
        setup_arm64(lambda message: None, home=tmp_path / "home")
    assert _one_line(caught.value) == "the arm64 target needs qemu-aarch64-static: apt-get install qemu-user-static"


def test_not_root_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_tools(tmp_path)))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError) as caught:
        setup_arm64(lambda message: None, home=tmp_path / "home")
    assert _one_line(caught.value).startswith("run as root: debootstrap needs it")
    assert f"PARITY_TARGETS_DIR={tmp_path / 'home'}" in str(caught.value)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("keyword, value, fragment", [
    ("mnn_version", "3.6.1; rm -rf /", "--mnn-version takes a release such as 3.6.1"),
    ("mnn_version", "--index-url=http://evil", "--mnn-version takes a release"),
    ("mirror", "ftp://example.org/debian", "--mirror takes a Debian mirror URL"),
    ("mirror", "deb.debian.org/debian", "--mirror takes a Debian mirror URL"),
])
def test_bad_options_are_refused(tmp_path, keyword, value, fragment):
    with pytest.raises(UsageError) as caught:
        setup_arm64(lambda message: None, home=tmp_path, **{keyword: value})
    assert fragment in _one_line(caught.value)


def test_the_cli_refuses_missing_tools_with_exit_2(tmp_path):
    result = run_parity("target", "setup", "arm64",
                        env={"PATH": str(tmp_path / "empty"), "PARITY_TARGETS_DIR": str(tmp_path / "t")})
    assert_one_line_error(result, ExitCode.USAGE, "apt-get install", "qemu-user-static")
    assert not (tmp_path / "t").exists()


# -- failures during the build --------------------------------------------------------------------
@pytest.fixture
def buildable(tmp_path, monkeypatch):
    """Tools on PATH (fakes), root, room enough: setup gets as far as its first step."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(target_setup, "NEEDS_BYTES", 0)
    return tmp_path


def test_a_failing_step_is_one_line_naming_it_and_nothing_is_left(buildable, monkeypatch):
    tmp_path = buildable
    monkeypatch.setenv("PATH", str(_tools(tmp_path, {"debootstrap": (
        "echo I: Retrieving InRelease\n"
        "echo 'E: Failed getting release file http://mirror.invalid/debian/dists/bookworm/Release' >&2\n"
        "exit 1\n")})))
    home = tmp_path / "home"
    said: list[str] = []
    with pytest.raises(BackendError) as caught:
        setup_arm64(said.append, home=home, mirror="http://mirror.invalid/debian")
    assert _one_line(caught.value) == (
        "arm64 target setup failed at debootstrap: E: Failed getting release file "
        "http://mirror.invalid/debian/dists/bookworm/Release "
        "(exit 1; mirror http://mirror.invalid/debian; another can be given with --mirror)")
    assert said == ["arm64: downloading Debian bookworm arm64 with python3 and numpy from "
                    "http://mirror.invalid/debian (debootstrap, ~30 s)"]
    assert [p.name for p in home.iterdir()] == [".arm64.lock"]
    assert installed_targets(home) == []


def test_an_interrupted_setup_leaves_nothing_that_looks_ready(buildable, monkeypatch):
    tmp_path = buildable
    monkeypatch.setenv("PATH", str(_tools(tmp_path)))

    def interrupted(root, mirror, scratch):  # half a root, then Ctrl-C
        _fake_root(root.parent)
        raise KeyboardInterrupt

    monkeypatch.setattr(target_setup, "_debootstrap", interrupted)
    home = tmp_path / "home"
    with pytest.raises(KeyboardInterrupt):
        setup_arm64(lambda message: None, home=home)
    assert [p.name for p in home.iterdir()] == [".arm64.lock"]
    assert installed_targets(home) == []


def test_leftovers_of_a_killed_setup_are_swept(buildable, monkeypatch):
    tmp_path = buildable
    monkeypatch.setenv("PATH", str(_tools(tmp_path, {"debootstrap": "echo 'E: no network' >&2; exit 1\n"})))
    home = tmp_path / "home"
    _fake_root(home / ".arm64-partial-killed")  # what SIGKILL leaves: never looks ready
    (home / "arm64").mkdir()  # and an incomplete root at the final place
    with pytest.raises(BackendError, match="failed at debootstrap: E: no network"):
        setup_arm64(lambda message: None, home=home)
    assert sorted(p.name for p in home.iterdir()) == [".arm64.lock", "arm64"]
    assert installed_targets(home) == []


def test_a_second_setup_at_once_is_refused(buildable, monkeypatch):
    import fcntl

    tmp_path = buildable
    monkeypatch.setenv("PATH", str(_tools(tmp_path)))
    home = tmp_path / "home"
    home.mkdir()
    with open(home / ".arm64.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UsageError) as caught:
            setup_arm64(lambda message: None, home=home)
    assert _one_line(caught.value) == f"another arm64 target setup is running in {home}: wait for it to finish"


# -- the host's mirror ----------------------------------------------------------------------------
def _etc(tmp_path: Path, os_id: str, files: dict[str, str]) -> Path:
    etc = tmp_path / "etc"
    (etc / "apt" / "sources.list.d").mkdir(parents=True)
    (etc / "os-release").write_text(f'NAME="x"\nID={os_id}\n')
    for name, text in files.items():
        (etc / "apt" / name).write_text(text)
    return etc


def test_the_hosts_debian_mirror_is_used(tmp_path):
    etc = _etc(tmp_path, "debian", {"sources.list.d/debian.sources": (
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")})
    assert target_setup._host_debian_mirror(etc) == "http://mirror.example/debian"


def test_a_one_line_source_is_read(tmp_path):
    etc = _etc(tmp_path, "debian", {"sources.list": (
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://mirror.example/debian bookworm main\n")})
    assert target_setup._host_debian_mirror(etc) == "https://mirror.example/debian"


def test_a_non_debian_host_uses_deb_debian_org(tmp_path):
    etc = _etc(tmp_path, "ubuntu", {"sources.list": "deb http://archive.ubuntu.com/ubuntu noble main\n"})
    assert target_setup._host_debian_mirror(etc) == "http://deb.debian.org/debian"


# -- the real root --------------------------------------------------------------------------------
@pytest.mark.arm64
def test_the_built_root_runs_numpy_and_mnn_as_aarch64():
    if not installed_targets():
        pytest.skip("the arm64 target is not set up: run `parity target setup arm64`")
    prefix, env = arm64_python()
    done = subprocess.run([*prefix, "-c", "import platform, numpy, MNN; print(platform.machine())"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # (MNN prints its CPU features through C's stdout, flushed at exit, after Python's line)
    assert "aarch64" in done.stdout.splitlines()
