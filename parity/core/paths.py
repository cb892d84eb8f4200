"""Files in and out: the one place that decides what parity may read and where it may write.

Outputs (reports, ``--save-inputs``, converted models, ``--repro``, JSON dumps):
``check_output`` resolves the path (symlinks are followed: writing through a link writes its
target, as a shell's ``>`` does) and refuses, with one line (``OutputPathError``, exit 3), a
path that is one of the run's inputs (the same file, also through a symlink or a hard link,
including an ONNX model's external data and an MNN model's ``.weight`` file), an existing
file that is not a regular file (a device such as /dev/full, a FIFO, a socket, a directory)
or a symlink to one, a symlink loop, a name too long for the filesystem, and a directory
that does not exist. ``write_atomic``, ``copy_atomic`` and ``publish`` then check again and
write through a temporary file in the target's directory and a rename: a reader sees the
old file or the new one, never half of one, and the temporary file is removed on any
failure, Ctrl-C included. ``"-"`` (stdout) is the caller's to write; ``check_output`` only
accepts it where the caller says stdout is allowed.

Inputs: ``check_input`` refuses what is not a regular file before anything opens it (opening
a FIFO blocks until a writer comes; /dev/zero never ends), and ``check_fits`` refuses a size
that cannot fit in memory before anything allocates it.

External data: ``external_data`` lists the files an ONNX model's tensors are stored in, and
refuses (``ModelError``) a location that leaves the model's directory (``..``, an absolute
path, a symlink pointing outside) or is not a regular file, before ONNX Runtime or MNN's
converter reads it.

Nothing heavy is imported here (``onnx`` only inside ``external_data``): the CLI checks its
output paths before it loads any framework.
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import shutil
import signal
import stat
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from parity.core.errors import InputError, ModelError, OutputPathError, ParityError

STDOUT = "-"
# Largest array parity allocates for one run's inputs or dumps, whatever the machine: 1 TiB.
MAX_BYTES = 1 << 40

# Files published by this process, in order: the path as the caller gave it, and where it was
# then (a caller's relative name, after a chdir, names another file)
_PUBLISHED: list[tuple[str, str]] = []


# -- naming things in messages --------------------------------------------------------------
def show(path) -> str:
    """A path as messages quote it: repr of its text, so control characters and bytes that
    are not UTF-8 (shown as \\udcXX) never reach the terminal raw. A UTF-8 name is shown as
    its text even where Python's file system encoding is ASCII (``LC_ALL=C``)."""
    text = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
    return repr(utf8_name(text) or text)


def argument(path) -> str:
    """A path for a command line parity suggests (``parity convert A.onnx -o B.mnn``): as the
    user gave it, so the command runs from where they ran parity (a bare file name would not,
    for a model in another directory), quoted for a POSIX shell where it holds spaces or
    quotes. Escaping for the terminal is the renderer's job."""
    import shlex

    return shlex.quote(os.fspath(path))


def utf8_name(path) -> str | None:
    """The path as the C++ libraries' Python bindings take it (pybind11 encodes a str as UTF-8):
    the bytes the file system holds, decoded as UTF-8; None when they are not UTF-8. It differs
    from Python's own str where the file system encoding is not UTF-8 (``LC_ALL=C`` without
    UTF-8 mode: ASCII, each byte of ``modèles`` a surrogate), so a binding gets this one and
    Python's own file calls the path as it was."""
    try:
        data = os.fsencode(path)
    except UnicodeEncodeError:  # a str the file system encoding cannot hold: take it as text
        data = os.fspath(path).encode("utf-8", "surrogatepass")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def is_utf8(path) -> bool:
    """True when the path's name can be handed to C++ libraries that take UTF-8 strings."""
    return utf8_name(path) is not None


def kind_of(mode: int) -> str:
    """What a non-regular file is, for messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink loop (or has too many levels of symlinks)"
    if exc.errno == errno.ENAMETOOLONG:
        return "has a name too long for the filesystem"
    if exc.errno == errno.ENOTDIR:
        return "goes through a file as if it were a directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be reached (permission denied)"
    return f"cannot be used ({exc.strerror or exc})"


# -- inputs ---------------------------------------------------------------------------------
def check_input(path, what: str, *, error: type[ParityError] = InputError,
                not_a: str = "") -> os.stat_result:
    """Refuse ``path`` unless it is an existing, readable regular file (symlinks followed);
    return its stat. Nothing is opened: opening a FIFO would block, a device never ends.

    Messages read ``{what} 'path' does not exist``, ``... is a directory[, not_a]``, ``... is
    a FIFO (named pipe), not a regular file``, ``... is a symlink loop``."""
    text = os.fspath(path)
    if text == "":
        raise error(f"{what} path is empty")
    if "\0" in str(text):  # no path holds one: os.stat's ValueError would be an internal error
        raise error(f"{what} {show(text)} holds a NUL byte, which no file name can")
    try:
        st = os.stat(text)
    except FileNotFoundError:
        dangling = os.path.islink(text)
        raise error(f"{what} {show(text)} does not exist"
                    + (" (it is a symlink to a missing file)" if dangling else "")) from None
    except OSError as exc:
        raise error(f"{what} {show(text)} {_os_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {show(text)} is a directory" + (f", not {not_a}" if not_a else ""))
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {show(text)} is {kind_of(st.st_mode)}, not a regular file; "
                    f"parity reads only regular files")
    if not os.access(text, os.R_OK):
        raise error(f"{what} {show(text)} cannot be read (permission denied)")
    return st


def memory_cap() -> int:
    """Bytes parity allows one run's inputs (or dumps) to take: the machine's memory, at most
    1 TiB. A larger array could only end in MemoryError or the OOM killer."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = MAX_BYTES
    return min(ram if ram > 0 else MAX_BYTES, MAX_BYTES)


def nbytes(shape: Sequence[int], itemsize: int) -> int:
    """Exact size of an array (Python integers: no overflow, whatever the dims)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def check_fits(size: int, what: str, *, error: type[ParityError] = InputError) -> None:
    """Refuse, before allocating, ``size`` bytes that cannot fit (see ``memory_cap``)."""
    cap = memory_cap()
    if size > cap:
        raise error(f"{what} needs {format_bytes(size)}, more than parity can hold in memory "
                    f"({format_bytes(cap)}: the machine's memory, at most 1 TiB)")


# -- outputs --------------------------------------------------------------------------------
def check_output(path, flag: str, *, inputs: Iterable = (), stdout: bool = False) -> Path | None:
    """Where an output named ``path`` (given with ``flag``, e.g. ``--json``) will be written,
    or refuse it with one line (``OutputPathError``). Returns the resolved path (symlinks
    followed), or None for ``"-"`` when ``stdout`` is allowed.

    Refused: ``"-"`` unless ``stdout``; an empty path; one of ``inputs`` (same file by device
    and inode, or the same resolved path; an ONNX input's external data files and an MNN
    input's ``.weight`` file count as inputs); an existing directory, device, FIFO or socket,
    or a symlink to one; a symlink loop; a name too long for the filesystem; a missing or
    unwritable directory; an existing file without write permission."""
    text = os.fspath(path)
    if text == STDOUT:
        if stdout:
            return None
        raise OutputPathError(f"{flag} cannot be written to stdout ('-'); give a file name "
                              f"(./- for a file named '-')")
    if text == "":
        raise OutputPathError(f"{flag} path is empty")
    st = _stat_output(text, flag)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{flag} path {show(text)} is a directory")
        if not stat.S_ISREG(st.st_mode):
            hint = "; use '-' for stdout" if stdout else ""
            raise OutputPathError(f"{flag} path {show(text)} is {kind_of(st.st_mode)}, not a regular "
                                  f"file; parity writes only regular files{hint}")
    if _through_proc(text):
        hint = "use '-' for stdout" if stdout else "give a file name"
        raise OutputPathError(f"{flag} path {show(text)} is a process's file descriptor (/proc, /dev/fd), "
                              f"not a file parity can replace; {hint}")
    target = Path(os.path.realpath(text))
    parent = target.parent
    try:
        parent_st = os.stat(parent)
    except FileNotFoundError:
        raise OutputPathError(f"{flag} path {show(text)}: directory {show(parent)} does not exist") from None
    except OSError as exc:
        raise OutputPathError(f"{flag} path {show(text)}: directory {show(parent)} {_os_reason(exc)}") from None
    if not stat.S_ISDIR(parent_st.st_mode):
        raise OutputPathError(f"{flag} path {show(text)}: {show(parent)} is not a directory")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(target.name)) > name_max:
        raise OutputPathError(f"{flag} path {show(text)} has a name too long for the filesystem "
                              f"({len(os.fsencode(target.name))} bytes, at most {name_max})")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{flag} path {show(text)}: directory {show(parent)} is not writable")
    if st is not None and not os.access(text, os.W_OK):
        raise OutputPathError(f"{flag} path {show(text)} is not writable")
    for given, path in _input_files(inputs, target if st is not None else None):
        if _same(target, st, path):
            resolved = os.path.realpath(path)
            also = "" if os.path.realpath(os.fspath(given)) == resolved else f" ({show(resolved)})"
            raise OutputPathError(f"{flag} path {show(text)} is the input {show(given)}{also}; "
                                  f"parity never writes onto a file it reads")
    return target


def _through_proc(text: str) -> bool:
    """True when ``text`` names a file descriptor (/dev/stdout, /dev/fd/N, /proc/self/fd/N):
    replacing what it points to would swap a file out from under an open descriptor (the
    shell's redirection of stdout, say)."""
    path = os.path.abspath(text)
    for _ in range(40):  # the kernel's own limit on symlinks followed
        if os.path.realpath(os.path.dirname(path)).startswith("/proc/") or path.startswith("/proc/"):
            return True
        if not os.path.islink(path):
            return False
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    return False


def check_outputs(outputs: Mapping[str, object], *, inputs: Iterable = (),
                  stdout: Sequence[str] = ()) -> dict[str, Path | None]:
    """``check_output`` for each flag -> path given (None and "" are skipped: not asked
    for), and refuse two flags that name the same file, or that both go to stdout. Flags in
    ``stdout`` may be ``"-"``. Returns flag -> resolved path (None for stdout)."""
    inputs = list(inputs)
    resolved: dict[str, Path | None] = {}
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        if path is None or path == "":
            continue
        target = check_output(path, flag, inputs=inputs, stdout=flag in stdout)
        key = STDOUT if target is None else str(target)
        if key in seen:
            where = "stdout" if target is None else show(path)
            raise OutputPathError(f"{seen[key]} and {flag} both write to {where}; give each its own file")
        seen[key] = flag
        resolved[flag] = target
    return resolved


def _stat_output(text: str, flag: str) -> os.stat_result | None:
    """What is at an output path now (None: nothing yet); any other failure is one line."""
    if "\0" in str(text):
        raise OutputPathError(f"{flag} path {show(text)} holds a NUL byte, which no file name can")
    try:
        return os.stat(text)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputPathError(f"{flag} path {show(text)} {_os_reason(exc)}") from None


def check_output_dir(path, flag: str, *, inputs: Iterable = ()) -> Path:
    """A directory parity will create (or fill, when it exists and is empty), e.g. --repro."""
    text = os.fspath(path)
    if text in ("", STDOUT):
        raise OutputPathError(f"{flag} needs a directory name, not {show(text)}")
    st = _stat_output(text, flag)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            kind = "a file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)
            raise OutputPathError(f"{flag} path {show(text)} is {kind}, not a directory")
        if any(os.scandir(text)):
            raise OutputPathError(f"{flag} directory {show(text)} is not empty; parity does not overwrite")
        if not os.access(text, os.W_OK):
            raise OutputPathError(f"{flag} directory {show(text)} is not writable")
        return Path(os.path.realpath(text))
    # a directory to create: the same rules as a file there (parent exists, name fits)
    return check_output(text, flag, inputs=inputs)


def _input_files(inputs: Iterable, output: Path | None) -> list[tuple[object, str | Path]]:
    """(as given, its path) for each input, with the files that come with it: an MNN model's
    ``.weight`` file and, when the output is an existing file inside an ONNX model's
    directory (the only place its external data may be), the model's external data. Paths
    are resolved only where needed (``_same``): a sweep names hundreds of models."""
    found = []
    folders: dict[str, Path] = {}
    for given in inputs:
        if given is None or isinstance(given, Mapping):
            continue  # arrays given in memory, or an input not given
        try:
            text = os.fspath(given)
        except TypeError:
            continue
        if not text:
            continue
        found.append((given, text))
        lower = text.lower()
        if lower.endswith(".mnn"):
            found.append((text + ".weight", text + ".weight"))
        elif lower.endswith(".onnx") and output is not None:
            folder = os.path.dirname(os.path.abspath(text))
            if folder not in folders:
                folders[folder] = Path(os.path.realpath(folder))
            root = folders[folder]
            if root == output.parent or root in output.parents:
                try:
                    found += [(location, file) for location, file in external_data(text)]
                except (ParityError, OSError):
                    pass  # a model that cannot be read fails with its own message
    return found


def _same(target: Path, target_st, other) -> bool:
    """Whether the input at path ``other`` is the output ``target`` (resolved; ``target_st``
    its stat, None when it does not exist yet): the same file by device and inode when the
    input exists (a link of any kind to it included), else the same resolved path. An input
    that exists cannot be an output that does not."""
    try:
        other_st = os.stat(other)
    except OSError:
        return str(target) == os.path.realpath(other)
    if target_st is None:
        return False
    return (other_st.st_dev, other_st.st_ino) == (target_st.st_dev, target_st.st_ino)


def write_atomic(path, data: bytes, what: str, *, error: type[ParityError] = OutputPathError,
                 inputs: Iterable = ()) -> Path:
    """Write ``data`` to ``path`` (checked with ``check_output``) through a temporary file in
    the same directory and a rename. ``error`` is raised when the write itself fails."""
    def write(fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    return _publish([(write, path)], what, error, inputs)[0]


def copy_atomic(source, path, what: str, *, error: type[ParityError] = OutputPathError,
                inputs: Iterable = ()) -> Path:
    """Copy ``source`` (a file made in a private directory) to ``path`` the same way."""
    return publish([(source, path)], what, error=error, inputs=inputs)[0]


def publish(files: Sequence[tuple[object, object]], what: str, *,
            error: type[ParityError] = OutputPathError, inputs: Iterable = ()) -> list[Path]:
    """Copy several (source, target) files into place together, e.g. a model and its weights
    file: every copy is made next to its target first, then all are renamed in the order
    given (put the file that refers to the others last). On failure no temporary file is left
    and no target is touched, unless the failure comes between two renames."""
    def copier(source):
        def write(fd: int) -> None:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        return write

    return _publish([(copier(s), t) for s, t in files], what, error, inputs)


def published() -> tuple[str, ...]:
    """The files this process has written (as their callers named them), in order, that are
    still there: what an interrupted or failed run tells the user it left behind (a scratch
    file published in a private directory that has been removed since is not)."""
    return tuple(dict.fromkeys(name for name, where in _PUBLISHED if os.path.lexists(where)))


def _publish(jobs: list[tuple[Callable[[int], None], object]], what: str, error, inputs) -> list[Path]:
    inputs = list(inputs)
    targets = [check_output(path, what, inputs=inputs) for _, path in jobs]
    temps: list[Path] = []
    try:
        for (write, path), target in zip(jobs, targets):
            tmp = target.with_name(f".parity-{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except OSError as exc:
                raise error(f"cannot write {what} to {show(path)}: {exc.strerror}") from None
            temps.append(tmp)
            try:
                write(fd)
                if target.exists():  # keep the mode of the file replaced
                    os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            except OSError as exc:
                raise error(f"cannot write {what} to {show(path)}: {exc.strerror or exc}") from None
        with _signals_held():  # renamed and recorded as one step: what published() says is true
            for (_, path), target, tmp in zip(jobs, targets, list(temps)):
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    raise error(f"cannot write {what} to {show(path)}: {exc.strerror}") from None
                temps.remove(tmp)
                _PUBLISHED.append((os.fspath(path), os.path.abspath(path)))
    finally:
        for tmp in temps:
            try:
                tmp.unlink()
            except OSError:
                pass
    return targets


class _signals_held:
    """Hold SIGINT and SIGTERM for a few system calls; they are delivered right after."""

    _SIGNALS = {getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n)}

    def __enter__(self):
        self._old = None
        if hasattr(signal, "pthread_sigmask"):
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGNALS)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


# -- ONNX external data ---------------------------------------------------------------------
def external_data(model) -> list[tuple[str, Path]]:
    """(location, resolved file) for every file the ONNX model ``model`` keeps tensors in,
    each once. Raises ``ModelError`` when a location is absolute, leaves the model's
    directory (by ``..`` or through a symlink), is missing or is not a regular file: nothing
    outside the model's directory is read on a model's behalf.

    Cheap for any model: the file's wire format is walked, never its weights parsed, and
    ``onnx`` is not imported (onnx_skeleton.external_tensors)."""
    text = os.fspath(model)
    from parity.core import onnx_skeleton

    try:
        tensors = onnx_skeleton.external_tensors(text)
    except Exception:
        return []  # not a model: the framework that opens it says so
    base = os.path.dirname(os.path.abspath(text))  # where ONNX Runtime and MNN look
    root = os.path.realpath(base)
    found: dict[str, Path] = {}
    for name, info in tensors:
        location = info.get("location", "")
        where = f"{show(text)}: tensor {name!r} is stored in external file {location!r}"
        if not location:
            raise ModelError(f"{show(text)}: tensor {name!r} is stored externally but names no file")
        if location in found:
            continue
        if os.path.isabs(location) or location.startswith(("/", "\\")) or (
                len(location) > 1 and location[1] == ":"):
            raise ModelError(f"{where}, an absolute path; external data must be inside the model's "
                             f"directory {show(root)}")
        if os.path.normpath(location).split(os.sep)[0] == os.pardir:
            raise ModelError(f"{where}, which leaves the model's directory {show(root)} ('..'); "
                             f"parity does not read it")
        resolved = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([root, resolved]) != root:
            raise ModelError(f"{where}, which resolves to {show(resolved)}, outside the model's "
                             f"directory {show(root)}; parity does not read it")
        st = check_input(resolved, f"{show(text)}: the external data file of tensor {name!r},",
                         error=ModelError)
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > st.st_size:
            raise ModelError(f"{where}, which holds {st.st_size} bytes, fewer than the {end} it declares")
        found[location] = Path(resolved)
    return list(found.items())


def external_data_files(model) -> list[Path]:
    """The resolved files of ``external_data``."""
    return [path for _, path in external_data(model)]


def stage_model(model, directory, externals: Sequence[tuple[str, Path]] = ()) -> Path:
    """Symlinks in ``directory`` (private, e.g. a worker's) under plain UTF-8 names to an
    ONNX model and its external data files, for C++ code that cannot take the model's own
    name (one that is not valid UTF-8). Returns the model's alias."""
    directory = Path(directory)
    alias = directory / "source.onnx"
    os.symlink(os.path.realpath(os.fspath(model)), alias)
    for location, file in externals:
        link = directory / location
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(file, link)
    return alias
