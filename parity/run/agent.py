"""The far end of a target (``--mnn-target arm64``, ``ssh://...``, ``exec:...``): a Python that
parity started somewhere else, talking to parity over its own stdin and stdout.

Nothing of parity is installed there. parity starts ``python3 -c BOOT`` (``boot_command``); BOOT
reads one frame from stdin: a loader holding the source of the few parity modules the target
runs (this one, ``worker`` for its error classes, ``mnn_child`` for the MNN calls), served by
an in-memory importer, and calls ``main``. From then on both sides exchange frames
(``write_message`` / ``read_message``): a JSON header, then raw buffers for the arrays in it, so
tensors cross inline without pickles (a device never makes parity run its code) and without
files on a shared disk (there may be none).

The target needs python3 (3.8 or newer), numpy and MNN, nothing else; ``hello`` says which of
them is missing. Its side of the rules of the local worker (worker.py): one request at a time,
a ParityError crosses as its kind, anything else as one "backend" line. What MNN prints on C's
stdout (its fallback line, the CPU features) would corrupt the frames: the protocol keeps the
original stdout, and descriptor 1 is pointed at a file whose new text each reply carries as
``log``. A crash is named by faulthandler's line on stderr. When parity goes away (its end of
stdin closes), a reader thread removes the target's scratch directory and exits at once, even
while MNN computes, so nothing outlives parity on the target either.

This module runs on the target's Python: standard library and numpy only, imported lazily.
"""

from __future__ import annotations

import json
import os
import struct
import sys

_MAGIC = b"PRTY"  # every frame starts with it: anything else on the channel is not parity's
_HEADER = struct.Struct(">4sQI")  # magic, JSON length, number of buffers
_LENGTH = struct.Struct(">Q")
_MAX_HEADER = 64 << 20  # a frame's JSON part; arrays travel as buffers
_MAX_BUFFERS = 1 << 16
_CHUNK = 64 << 20  # buffers are read in pieces: a length is never allocated before its bytes arrive


class ProtocolError(Exception):
    """The other end sent something that is not a parity frame."""


# -- frames (both sides) ---------------------------------------------------------------------
def _encode(obj, buffers: list):
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        array = numpy.ascontiguousarray(obj)
        buffers.append(array.reshape(-1).view(numpy.uint8))
        return {"__nd__": len(buffers) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
    if numpy is not None and isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, (bytes, bytearray)):
        buffers.append(obj)
        return {"__bytes__": len(buffers) - 1}
    if isinstance(obj, dict):
        return {str(k): _encode(v, buffers) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, buffers) for v in obj]
    return obj


def _decode(obj, buffers: list):
    if isinstance(obj, dict):
        if "__nd__" in obj:
            import numpy

            return numpy.frombuffer(buffers[obj["__nd__"]], dtype=numpy.dtype(obj["dtype"])).reshape(obj["shape"])
        if "__bytes__" in obj:
            return bytes(buffers[obj["__bytes__"]])
        return {k: _decode(v, buffers) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, buffers) for v in obj]
    return obj


def write_message(stream, obj) -> None:
    """One frame: header, JSON, then each buffer with its length. Arrays are written from
    their own memory, never copied into one big message."""
    buffers: list = []
    header = json.dumps(_encode(obj, buffers)).encode()
    stream.write(_HEADER.pack(_MAGIC, len(header), len(buffers)))
    stream.write(header)
    for buffer in buffers:
        view = memoryview(buffer)
        stream.write(_LENGTH.pack(view.nbytes))
        stream.write(view)
    stream.flush()


def _read_exactly(stream, size: int) -> bytearray:
    data = bytearray()
    while len(data) < size:
        piece = stream.read(min(_CHUNK, size - len(data)))
        if not piece:
            raise EOFError("the other end closed the channel")
        data += piece
    return data


def read_message(stream):
    """The next frame's object (EOFError when the other end is gone, ProtocolError when what
    arrives is not a parity frame: a login banner, a .bashrc's echo, a corrupt stream)."""
    head = bytes(_read_exactly(stream, _HEADER.size))
    magic, length, count = _HEADER.unpack(head)
    if magic != _MAGIC:
        raise ProtocolError(f"not a parity frame: it starts {head[:24]!r}")
    if length > _MAX_HEADER or count > _MAX_BUFFERS:
        raise ProtocolError(f"a frame announces {length} bytes of header and {count} buffers")
    try:
        header = json.loads(bytes(_read_exactly(stream, length)))
    except ValueError as exc:
        raise ProtocolError(f"a frame's header is not JSON ({exc})") from None
    buffers = [_read_exactly(stream, _LENGTH.unpack(bytes(_read_exactly(stream, _LENGTH.size)))[0])
               for _ in range(count)]
    try:
        return _decode(header, buffers)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"a frame's arrays do not fit its header ({type(exc).__name__})") from None


# -- the target side -------------------------------------------------------------------------
_WORKDIR = None
_LOG = None  # the file descriptor 1 points at; each reply carries its new text


def _missing() -> list:
    missing = []
    for name in ("numpy", "MNN"):
        try:
            __import__(name)
        except Exception as exc:  # an ImportError, or a broken install raising anything
            missing.append(f"{name} ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
    return missing


def hello() -> dict:
    """What this Python is and whether it has what parity needs (asked first, on every start)."""
    import platform

    facts = {"python": platform.python_version(), "machine": platform.machine(),
             "platform": platform.platform(), "missing": _missing()}
    if not facts["missing"]:
        import numpy
        import MNN

        facts["numpy"] = numpy.__version__
        facts["mnn"] = MNN.version()
    return facts


def _take_log() -> str:
    if _LOG is None:
        return ""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # MNN prints through C's buffered stdout
    except (OSError, AttributeError):
        pass
    sys.stdout.flush()
    text = _LOG.read()
    if text:
        sys.stderr.write(text)  # also on stderr, which parity keeps as the worker's log
        sys.stderr.flush()
    return text


def _call(function: str, kwargs: dict):
    try:
        from parity.run.worker import ChildFailure, error_kind, resolve
        from parity.core.errors import ParityError
    except Exception as exc:
        return ("error", ("backend", f"parity's target code did not load: {type(exc).__name__}: {exc}"))
    try:
        return ("ok", resolve(function)(**kwargs))
    except ChildFailure as exc:
        return ("error", (exc.kind, str(exc)))
    except ParityError as exc:
        return ("error", (error_kind(exc), str(exc)))
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return ("error", ("backend", f"{type(exc).__name__}: {text[0] if text else ''}"))


def _handle(message):
    kind = message[0]
    if kind == "call":
        _, function, kwargs = message
        return _call(function, kwargs)
    if kind == "put":  # a file, in chunks: ("put", name, bytes, append); name may be "FOLDER/FILE"
        _, name, data, append = message
        parts = [os.path.basename(part) for part in str(name).split("/")]
        if len(parts) > 2 or any(part in ("", ".", "..") for part in parts):
            return ("error", ("backend", f"not a file name parity sends: {name!r}"))
        path = os.path.join(_WORKDIR, *parts)
        if len(parts) == 2:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "ab" if append else "wb") as handle:
            handle.write(data)
        return ("ok", path)
    return ("error", ("backend", f"unknown request {kind!r}"))


def _quit(code: int = 0) -> None:
    import shutil

    if _WORKDIR is not None:
        shutil.rmtree(_WORKDIR, ignore_errors=True)
    os._exit(code)


def _watch(workdir: str) -> None:
    """Fork: the child returns and serves; this process stays behind as its watcher. When the
    child ends (a crash included) the watcher removes the scratch directory (the model sent
    here, MNN's files) and ends the same way (the same signal, so a crash is still named);
    when parity goes away (its end of our stdin closes, even while MNN computes in the child
    without letting go of Python's lock) it kills the child first. Without fork (or where it
    fails) the child cleans up itself on a clean exit only."""
    import select
    import shutil
    import signal

    try:
        pid = os.fork()
    except (OSError, AttributeError):
        return
    if pid == 0:
        return
    poller = select.poll()
    poller.register(0, 0)  # no events asked: poll reports only a hang-up or an error on stdin
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if poller.poll(200):
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
    shutil.rmtree(workdir, ignore_errors=True)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL:
        signum = os.WTERMSIG(status)
        faulthandler_off()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def faulthandler_off() -> None:
    import faulthandler

    faulthandler.disable()


def main() -> None:
    """Serve requests until parity closes the channel."""
    global _WORKDIR, _LOG
    import faulthandler
    import queue
    import signal
    import tempfile
    import threading

    faulthandler.enable(file=sys.stderr)  # a crash names its signal on stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # parity handles Ctrl-C and closes us
    _WORKDIR = tempfile.mkdtemp(prefix="parity-target-")
    _watch(_WORKDIR)  # from here on, in the serving child; the watcher cleans up after it
    channel_out = os.fdopen(os.dup(1), "wb")
    channel_in = sys.stdin.buffer
    os.chdir(_WORKDIR)  # MNN's converter and runtime write scratch files into the cwd
    log_path = os.path.join(_WORKDIR, "stdout.log")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    _LOG = open(log_path, "r", errors="replace")
    sys.stdin = open(os.devnull)

    requests: queue.Queue = queue.Queue()

    def reader():
        while True:
            try:
                message = read_message(channel_in)
            except Exception:  # EOF or a torn frame: parity is gone
                _quit(0)
            if message is None:
                _quit(0)
            requests.put(message)

    threading.Thread(target=reader, daemon=True).start()
    try:
        while True:
            message = requests.get()
            try:
                status, payload = _handle(message)
            except Exception as exc:
                status, payload = "error", ("backend", f"{type(exc).__name__}: {exc}")
            write_message(channel_out, {"status": status, "payload": payload, "log": _take_log()})
    except BaseException:
        import traceback

        traceback.print_exc()
        _quit(1)  # never the interpreter's shutdown, which the reader thread would hang
