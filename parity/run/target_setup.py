"""The emulated arm64 Linux that ``--mnn-target arm64`` runs MNN in: built once by
``parity target setup arm64``, found by every later run.

It is a Debian bookworm arm64 tree holding python3, numpy and MNN's manylinux aarch64 wheel,
run by qemu's user-mode emulator: ``qemu-aarch64-static -L ROOT ROOT/usr/bin/python3``.
Running it needs neither root nor binfmt_misc; building it needs root (debootstrap makes
device nodes and sets owners).

Layout under ``targets_home()``::

    arm64/root/          the Debian tree; MNN unzipped into root/opt/parity-mnn
    arm64/target.json    the facts (Python, numpy and MNN versions, ...), the mark of a ready root
    .arm64-partial-*/    a setup under way, renamed to arm64/ only once complete and verified:
                         an interrupted setup never leaves a root that looks ready
    .arm64.lock          held by the setup that is running

How the root is built, and why so (measured on a 2-core x86-64 host, qemu 7.2):

1. ``debootstrap --foreign`` downloads minbase plus python3 and python3-numpy (115 packages)
   and unpacks the essential ones: ~25 s, mostly network.
2. Every downloaded package is unpacked with ``dpkg-deb --fsys-tarfile | tar``: ~5 s. The
   usual second stage (``chroot ROOT /debootstrap/debootstrap --second-stage``) runs the
   maintainer scripts under emulation: 167 s, and it needs binfmt_misc. What those scripts
   add (users, dpkg's database, the ld.so cache, alternatives) python does not use, except
   the libblas.so.3 and liblapack.so.3 alternatives, linked here directly. A model run in
   both roots gave bit-identical outputs. ``tar --keep-directory-symlink`` because bookworm's
   /bin, /lib and /sbin are links into /usr, and ``dpkg-deb -x`` replaces them with directories.
3. MNN's aarch64 wheel for the root's Python, by ``pip download``, unzipped into
   root/opt/parity-mnn; a .pth file also puts it on sys.path, so ``python -I`` finds it.
4. Every module is byte-compiled under emulation (~10 s): with PYTHONDONTWRITEBYTECODE set
   (tox sets it) every start would compile numpy again, 3.4 s instead of 1.0 s for a small run.
5. ``import numpy, MNN`` under emulation, with no help from the environment; what it reports
   becomes the facts in target.json.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from parity.core.errors import BackendError, UsageError

Progress = Callable[[str], None]

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_MNN = "3.6.1"  # when MNN is not installed on the host
TRIPLET = "aarch64-linux-gnu"
SITE = "opt/parity-mnn"  # inside the root: where MNN's wheel is unzipped
NEEDS_BYTES = 1 << 30  # the build peaks near 500 MB; keep room for the rest of the machine

_TARGET = "arm64"
_MARKER = "target.json"
_PARTIAL = f".{_TARGET}-partial-"
_OLD = f".{_TARGET}-old-"
_SETUP_HINT = "the arm64 target is not set up: run `parity target setup arm64`"

# host tool -> the Debian package that provides it
_TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "dpkg-deb": "dpkg",
    "tar": "tar",
}

# Run under emulation (python -I, argv[1] = a host path): what the root's Python, numpy and
# MNN say about themselves. Written to a file, not stdout, which MNN also prints to.
_VERIFY = """\
import json, platform, sys
import numpy, MNN
numpy.linalg.inv(numpy.eye(3))  # LAPACK and BLAS run, not only load
with open(sys.argv[1], "w") as f:
    json.dump({"machine": platform.machine(), "python": platform.python_version(),
               "numpy": numpy.__version__, "mnn": MNN.version()}, f)
"""


# -- where ----------------------------------------------------------------------------------------
def targets_home() -> Path:
    """The cache the targets live in: $PARITY_TARGETS_DIR, else the XDG cache directory.

    Absolute, because qemu's ``-L`` and the paths handed to the target must not depend on
    the directory parity happens to run in."""
    explicit = os.environ.get("PARITY_TARGETS_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative is invalid
    return cache / "parity" / "targets"


def _home(home: str | os.PathLike | None) -> Path:
    return Path(home).expanduser().absolute() if home is not None else targets_home()


def _target_dir(home: Path) -> Path:
    return home / _TARGET


def _ready_facts(target_dir: Path) -> dict | None:
    """The facts of a complete root, or None. Complete means the marker reads as JSON and the
    Python it describes is there; anything else (no marker, a torn one) is not ready."""
    try:
        facts = json.loads((target_dir / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or not os.path.lexists(target_dir / "root" / "usr/bin/python3"):
        return None
    return facts


# -- using a ready root ---------------------------------------------------------------------------
def arm64_python(home: str | os.PathLike | None = None, *, cpu: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv prefix that starts the root's python3 under emulation, and the environment
    variables to add for it.

    The root also works without that environment (setup links BLAS and LAPACK and adds a
    .pth for MNN), so ``-I`` is safe; the variables make the paths explicit and keep the host
    user's site-packages (x86 wheels) off the target's sys.path. ``cpu`` sets QEMU_CPU
    (``cortex-a76``: fp16 and sdot without i8mm; ``cortex-a72``: no fp16); unset, qemu
    emulates its ``max`` CPU. The caller should not pass the host's LD_PRELOAD or
    PYTHONHOME on: they would reach the emulated Python."""
    target_dir = _target_dir(_home(home))
    if _ready_facts(target_dir) is None:
        raise UsageError(_SETUP_HINT)
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        raise UsageError("qemu-aarch64-static is not installed: apt-get install qemu-user-static")
    root = target_dir / "root"
    libs = root / "usr/lib" / TRIPLET
    env = {
        "LD_LIBRARY_PATH": f"{libs / 'blas'}:{libs / 'lapack'}",
        "PYTHONPATH": str(root / SITE),
        "PYTHONNOUSERSITE": "1",
    }
    if cpu is not None:
        env["QEMU_CPU"] = _check_cpu(qemu, cpu)
    return [qemu, "-L", str(root), str(root / "usr/bin/python3")], env


def _check_cpu(qemu: str, cpu: str) -> str:
    """A CPU model qemu knows: an unknown one (or an empty QEMU_CPU) makes qemu exit at once
    with its own message, which would then read as the target failing."""
    try:
        listed = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout
    except OSError:
        listed = ""
    known = [line.split()[0] for line in listed.splitlines()[1:] if line.strip()]
    if known and cpu not in known:
        raise UsageError(f"qemu-aarch64 has no CPU {cpu!r}: it knows {', '.join(known)}")
    return cpu


def installed_targets(home: str | os.PathLike | None = None) -> list[dict]:
    """The ready targets with their facts, plus ``name`` and ``root`` (for ``parity target list``)."""
    target_dir = _target_dir(_home(home))
    facts = _ready_facts(target_dir)
    if facts is None:
        return []
    return [{**facts, "name": _TARGET, "root": str(target_dir / "root")}]


def remove_arm64(home: str | os.PathLike | None = None) -> bool:
    """Delete the arm64 target (ready or not). False when there was none."""
    home = _home(home)
    if not _target_dir(home).exists():
        return False
    with _setup_lock(home):
        _discard(_target_dir(home), home)
    return True


# -- building -------------------------------------------------------------------------------------
def setup_arm64(progress: Progress = print, *, home: str | os.PathLike | None = None,
                mnn_version: str | None = None, mirror: str | None = None) -> Path:
    """Build the arm64 root once and return it (the directory given to qemu's ``-L``).

    A ready root is returned at once. Otherwise the root is built in a private directory
    next to its final place and renamed there only when complete and verified; a failed or
    interrupted setup removes its directory. Nothing is written outside ``home``."""
    home = _home(home)
    wanted = _check_version(mnn_version) if mnn_version is not None else _host_mnn_version()
    mirror = _check_mirror(mirror) if mirror is not None else _host_debian_mirror()
    facts = _ready_facts(_target_dir(home))
    if facts is not None:
        return _already_ready(progress, home, facts, wanted, explicit=mnn_version is not None)
    qemu = _require_tools(home)
    _make_home(home)
    with _setup_lock(home):
        _sweep_leftovers(home)
        _require_space(home)
        partial = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=home))
        try:
            facts = _build(progress, partial, qemu, wanted, mirror)
            _publish(partial, home)
        except OSError as error:  # outside the steps, which name themselves
            raise BackendError(f"arm64 target setup failed: {error.strerror or error}"
                               + (f": {error.filename}" if error.filename else "")) from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    root = _target_dir(home) / "root"
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in facts["setup_seconds"].items())
    progress(f"arm64: ready in {sum(facts['setup_seconds'].values()):.0f} s ({steps}); "
             f"{facts['disk_bytes'] / 1e6:.0f} MB in {root}")
    return root


def _already_ready(progress: Progress, home: Path, facts: dict, wanted: str, *, explicit: bool) -> Path:
    """A ready root is kept, but not silently when it holds another MNN than the one asked for."""
    root = _target_dir(home) / "root"
    if facts.get("mnn") != wanted:
        if explicit:
            raise UsageError(f"the arm64 target has MNN {facts.get('mnn')}, not {wanted}: "
                             f"delete {_target_dir(home)} and set it up again")
        progress(f"arm64: note: the target has MNN {facts.get('mnn')} and this machine {wanted}; "
                 f"delete {_target_dir(home)} and set it up again to match")
    progress(f"arm64: already set up in {root} (Python {facts.get('python')}, numpy {facts.get('numpy')}, "
             f"MNN {facts.get('mnn')})")
    return root


def _build(progress: Progress, partial: Path, qemu: str, mnn_version: str, mirror: str) -> dict:
    """Every step, in ``partial``; returns the facts, also written to partial/target.json."""
    root, scratch = partial / "root", partial / "tmp"
    scratch.mkdir()
    seconds: dict[str, float] = {}

    with _step(seconds, "debootstrap", progress,
               f"downloading Debian {SUITE} arm64 with python3 and numpy from {mirror} (debootstrap, ~30 s)"):
        _debootstrap(root, mirror, scratch)
    debs = _downloaded_debs(root)
    with _step(seconds, "unpack", progress, f"unpacking {len(debs)} packages (dpkg-deb, ~5 s)"):
        _unpack_all(root, debs, scratch)
        _finish_unpacked(root, debs)
    python = _root_python_version(root)
    with _step(seconds, "mnn", progress, f"downloading MNN {mnn_version}'s aarch64 wheel for Python {python} (pip)"):
        wheel = _download_mnn(mnn_version, python, partial / "wheel", scratch)
        _unzip(wheel, root / SITE)
        (root / "usr/lib/python3/dist-packages/parity-mnn.pth").write_text(
            os.path.relpath(root / SITE, root / "usr/lib/python3/dist-packages") + "\n")
    with _step(seconds, "compile", progress, "compiling Python modules under emulation (~10 s)"):
        _run("compile", [*_guest(qemu, root), "-m", "compileall", "-q", "-j0",
                         str(root / "usr/lib" / f"python{python}"), str(root / "usr/lib/python3/dist-packages"),
                         str(root / SITE)], _guest_env(scratch))
    with _step(seconds, "verify", progress, "checking that numpy and MNN import under emulation"):
        found = _verify(qemu, root, partial / "verify.json", scratch)
    if found["mnn"] != mnn_version:
        raise BackendError(f"arm64 target setup failed at verify: MNN says it is {found['mnn']}, not {mnn_version}")

    facts = {
        "target": _TARGET, **found, "suite": SUITE, "mirror": mirror, "mnn_wheel": wheel.name,
        "qemu": _qemu_version(qemu), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup_seconds": {name: round(s, 1) for name, s in seconds.items()}, "disk_bytes": _disk_bytes(root),
    }
    (partial / _MARKER).write_text(json.dumps(facts, indent=2) + "\n")
    return facts


@contextmanager
def _step(seconds: dict[str, float], name: str, progress: Progress, message: str) -> Iterator[None]:
    """One timed step, announced first: the slow ones take minutes on a slow network.
    An OSError inside (disk full, permissions) ends as one line naming the step."""
    progress(f"arm64: {message}")
    start = time.monotonic()
    try:
        yield
    except OSError as error:
        raise BackendError(f"arm64 target setup failed at {name}: {error.strerror or error}"
                           + (f": {error.filename}" if error.filename else "")) from None
    seconds[name] = time.monotonic() - start


def _debootstrap(root: Path, mirror: str, scratch: Path) -> None:
    _run("debootstrap", ["debootstrap", "--variant=minbase", "--arch=arm64", "--foreign",
                         "--include=python3,python3-numpy", SUITE, str(root), mirror],
         _host_env(scratch), hint=f"mirror {mirror}; another can be given with --mirror")


def _downloaded_debs(root: Path) -> list[Path]:
    """Every package debootstrap fetched, from its own list (name and path inside the root)."""
    try:
        lines = (root / "debootstrap/debpaths").read_text().splitlines()
    except OSError:
        raise BackendError("arm64 target setup failed at debootstrap: it left no package list") from None
    return [root / line.split()[1].lstrip("/") for line in lines if len(line.split()) == 2]


def _unpack_all(root: Path, debs: list[Path], scratch: Path) -> None:
    env = _host_env(scratch)
    for deb in debs:
        _unpack(deb, root, env)


def _unpack(deb: Path, root: Path, env: dict[str, str]) -> None:
    """One package's files into the root, as dpkg would lay them (merged /usr links kept)."""
    with tempfile.TemporaryFile(dir=env["TMPDIR"]) as errors:
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=errors, env=env)
        try:
            tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root), "-f", "-"],
                                 stdin=fsys.stdout, capture_output=True, env=env)
        finally:
            fsys.stdout.close()
            fsys.wait()
        errors.seek(0)
        said = errors.read()
    if fsys.returncode:
        raise _failed(f"unpack ({deb.name})", said, fsys.returncode)
    if tar.returncode:
        raise _failed(f"unpack ({deb.name})", tar.stdout + tar.stderr, tar.returncode)


def _finish_unpacked(root: Path, debs: list[Path]) -> None:
    """What the skipped maintainer scripts would have done that python needs, and cleaning.

    BLAS and LAPACK are found through alternatives that dpkg's scripts make as absolute
    links into /etc/alternatives; relative links straight to the libraries work under -L."""
    libs = root / "usr/lib" / TRIPLET
    for name in ("blas", "lapack"):
        for library in sorted((libs / name).glob(f"lib{name}.so.*")):
            link = libs / library.name
            if not os.path.lexists(link):
                link.symlink_to(Path(name) / library.name)
    (root / "opt").mkdir(exist_ok=True)  # base-files' postinst makes it
    for deb in debs:
        deb.unlink()
    shutil.rmtree(root / "debootstrap")


def _root_python_version(root: Path) -> str:
    """X.Y of the root's python3, from its link (python3 -> python3.11)."""
    try:
        match = re.fullmatch(r"python(3\.\d+)", os.readlink(root / "usr/bin/python3"))
    except OSError:
        match = None
    if match is None:
        raise BackendError("arm64 target setup failed at unpack: the root has no python3 -> python3.X link")
    return match.group(1)


def _download_mnn(version: str, python: str, directory: Path, scratch: Path) -> Path:
    """MNN's aarch64 wheel. Both manylinux tags: MNN 3.x ships manylinux2014 wheels, a later
    release may move to 2_28; bookworm's glibc (2.36) runs either."""
    directory.mkdir()
    _run("mnn", [sys.executable, "-m", "pip", "download", f"MNN=={version}", "--no-deps",
                 "--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
                 "--python-version", python, "--no-cache-dir", "--disable-pip-version-check", "-d", str(directory)],
         _host_env(scratch))
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise BackendError(f"arm64 target setup failed at mnn: pip left {len(wheels)} wheels, not 1")
    return wheels[0]


def _unzip(wheel: Path, site: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)  # zipfile drops absolute and .. member paths
    except zipfile.BadZipFile as error:
        raise BackendError(f"arm64 target setup failed at mnn: {wheel.name} is not a wheel ({error})") from None


def _verify(qemu: str, root: Path, answer: Path, scratch: Path) -> dict:
    """Import numpy and MNN in the root with python -I and a cleaned environment: this proves
    the root needs no PYTHONPATH or LD_LIBRARY_PATH."""
    _run("verify", [*_guest(qemu, root), "-c", _VERIFY, str(answer)], _guest_env(scratch))
    try:
        found = json.loads(answer.read_text())
    except (OSError, ValueError):
        raise BackendError("arm64 target setup failed at verify: the emulated Python wrote no answer") from None
    if found.get("machine") != "aarch64":
        raise BackendError(f"arm64 target setup failed at verify: the Python ran as {found.get('machine')!r}, "
                           "not aarch64")
    return found


def _publish(partial: Path, home: Path) -> None:
    """Make the complete root visible by one rename; anything in its place (an incomplete
    root from an older setup) is moved aside first, then deleted."""
    shutil.rmtree(partial / "tmp")
    shutil.rmtree(partial / "wheel")
    (partial / "verify.json").unlink()
    partial.chmod(0o755)  # mkdtemp's 0700 would hide the root from other users
    target_dir = _target_dir(home)
    if os.path.lexists(target_dir):
        _discard(target_dir, home)
    partial.rename(target_dir)


def _discard(path: Path, home: Path) -> None:
    """Rename first, so no half-deleted root is ever at the ready path; then delete."""
    aside = Path(tempfile.mkdtemp(prefix=_OLD, dir=home))
    path.rename(aside / "x")
    shutil.rmtree(aside, ignore_errors=True)


# -- checks that come before anything is written --------------------------------------------------
def _require_tools(home: Path) -> str:
    """The host tools, root and pip, each refused in one line that says what to do."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(dict.fromkeys(_TOOLS[tool] for tool in missing))
        raise UsageError(f"the arm64 target needs {', '.join(missing)}: apt-get install {packages}")
    if os.geteuid() != 0:
        raise UsageError(f"run as root: debootstrap needs it (sudo PARITY_TARGETS_DIR={home} "
                         "parity target setup arm64 builds it where you will use it)")
    if importlib.util.find_spec("pip") is None:
        raise UsageError(f"pip is needed to download MNN's aarch64 wheel: {sys.executable} -m ensurepip")
    return shutil.which("qemu-aarch64-static")


def _make_home(home: Path) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the targets directory {home}: {error.strerror} "
                         "(set PARITY_TARGETS_DIR to another place)") from None


@contextmanager
def _setup_lock(home: Path) -> Iterator[None]:
    """One setup at a time per home. flock ends with its process, so a killed setup never
    leaves the lock behind."""
    try:
        lock = open(home / f".{_TARGET}.lock", "a")
    except OSError as error:
        raise UsageError(f"cannot write in the targets directory {home}: {error.strerror} "
                         "(set PARITY_TARGETS_DIR to another place)") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another arm64 target setup is running in {home}: wait for it to finish") from None
        yield


def _sweep_leftovers(home: Path) -> None:
    """Directories of setups that were killed (SIGKILL, power loss). Safe: we hold the lock."""
    for leftover in home.iterdir():
        if leftover.name.startswith((_PARTIAL, _OLD)) and leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _require_space(home: Path) -> None:
    free = shutil.disk_usage(home).free
    if free < NEEDS_BYTES:
        raise UsageError(f"the arm64 target needs about {NEEDS_BYTES >> 20} MB free in {home}, "
                         f"{free >> 20} MB are (set PARITY_TARGETS_DIR to another place)")


def _check_version(version: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)*([a-z]+\d*)?(\.post\d+)?", version):
        raise UsageError(f"--mnn-version takes a release such as 3.6.1, not {version!r}")
    return version


def _check_mirror(mirror: str) -> str:
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.scheme == "file") \
            or any(c.isspace() for c in mirror):
        raise UsageError(f"--mirror takes a Debian mirror URL such as {DEFAULT_MIRROR}, not {mirror!r}")
    return mirror.rstrip("/")


def _host_mnn_version() -> str:
    """The MNN installed here, so both sides of a comparison run the same release."""
    try:
        return importlib.metadata.version("MNN")
    except importlib.metadata.PackageNotFoundError:
        return DEFAULT_MNN


def _host_debian_mirror(etc: Path = Path("/etc")) -> str:
    """The host's own Debian mirror (often a nearer or the only allowed one), else deb.debian.org.

    Only on a Debian host, only a plain release suite (not -security, -updates or -backports),
    from one-line (.list) or deb822 (.sources) apt sources."""
    try:
        release = (etc / "os-release").read_text()
    except OSError:
        return DEFAULT_MIRROR
    if not re.search(r"^ID=\"?debian\"?$", release, re.MULTILINE):
        return DEFAULT_MIRROR
    for uri, suites in _apt_sources(etc / "apt"):
        if urlsplit(uri).scheme in ("http", "https") and any("-" not in s and "/" not in s for s in suites):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _apt_sources(apt: Path) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of each enabled ``deb`` source, sources.list first."""
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if path.suffix == ".sources":
            yield from _deb822_sources(text)
            continue
        for line in text.splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match:
                yield match.group(1), [match.group(2)]


def _deb822_sources(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


# -- running things -------------------------------------------------------------------------------
def _guest(qemu: str, root: Path) -> list[str]:
    """The root's python3, isolated (-I): during setup nothing from the host may help it."""
    return [qemu, "-L", str(root), str(root / "usr/bin/python3"), "-I"]


def _host_env(scratch: Path) -> dict[str, str]:
    """The caller's environment (proxies reach debootstrap and pip), temporary files in ours."""
    return {**os.environ, "TMPDIR": str(scratch)}


def _guest_env(scratch: Path) -> dict[str, str]:
    """The caller's environment without what would change the emulated Python: library
    paths and preloads (x86 ones), a QEMU_CPU choice, PYTHON* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "QEMU_", "PYTHON"))}
    return {**env, "TMPDIR": str(scratch)}


def _run(step: str, argv: list[str], env: dict[str, str], *, hint: str = "") -> None:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    except OSError as error:
        raise BackendError(f"arm64 target setup failed at {step}: cannot start {argv[0]}: {error.strerror}") from None
    if done.returncode:
        raise _failed(step, done.stdout, done.returncode, hint)


def _failed(step: str, output: bytes, code: int, hint: str = "") -> BackendError:
    """One line: the step, the last line the tool printed (where tools say what went wrong)."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "no output"
    status = f"exit {code}" if code > 0 else f"signal {-code}"
    return BackendError(f"arm64 target setup failed at {step}: {last} ({status}{'; ' + hint if hint else ''})")


def _qemu_version(qemu: str) -> str:
    try:
        said = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    match = re.search(r"version (\S+)", said)
    return match.group(1) if match else ""


def _disk_bytes(root: Path) -> int:
    """Disk use as du counts it: allocated blocks, hard links once."""
    seen, total = set(), 0
    for directory, names, files in os.walk(root):
        for name in names + files:
            info = os.lstat(os.path.join(directory, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total
