"""Hostile files in and out (issue 12): parity never writes onto what it reads or onto a
device, never reads outside a model's directory, never hangs on a FIFO, never allocates
what a header merely declares, and says each refusal in one line with exit 2 or 3.

Each case builds its files in a directory of its own and runs parity there through
``hostile.run_hostile``; ``assert_clean`` then checks the exit code, one line on stderr, no
traceback, inputs byte-identical, nothing written outside the named outputs, nothing left in
TMPDIR, no process left and the time limit. A few cases at the end call the library directly.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import JSON_STDOUT, MODELS, copy_cnn
from hostile import run_hostile
from parity.core.errors import ExitCode, OutputPathError

OK, USAGE, BAD = ExitCode.PASS, ExitCode.USAGE, ExitCode.MODEL_OR_INPUT
LIMIT = 30.0  # seconds; every case takes about one
LONG = 300  # bytes in a name: more than any Linux filesystem takes (255). Given as --flag=NAME:
# the harness stats every other argument, and stat fails on such a name.


# -- models ---------------------------------------------------------------------------------
def _save(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _relu(path: Path, shape=("n", 4), *, outputs=True) -> Path:
    return _save(path, [helper.make_node("Relu", ["x"], ["y"])], [_value("x", list(shape))],
                 [_value("y", list(shape))] if outputs else [])


def _external(path: Path, location: str, length: int = 16) -> Path:
    """x + w, with w (4 floats) stored in the external file ``location``."""
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return _save(path, [helper.make_node("Add", ["x", "w"], ["y"])], [_value("x", [1, 4])],
                 [_value("y", [1, 4])], [w])


def _raw_initializer(path: Path, dims, data: bytes) -> Path:
    w = TensorProto()
    w.name, w.data_type, w.raw_data = "w", TensorProto.FLOAT, data
    w.dims.extend(dims)
    return _save(path, [helper.make_node("Add", ["x", "w"], ["y"])], [_value("x", [1, 4])],
                 [_value("y", None)], [w])


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """Models the cases copy: a dynamic Relu and its .mnn, an external-data model and its
    .mnn, and cnn.mnn converted with --saveExternalData (cnn_ext.mnn + cnn_ext.mnn.weight)."""
    from parity.mnn.converter import convert

    d = tmp_path_factory.mktemp("hostile_models")
    convert(_relu(d / "relu.onnx"), d / "relu.mnn")
    (d / "ext").mkdir()
    _external(d / "ext" / "ext.onnx", "w.bin")
    (d / "ext" / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    convert(d / "ext" / "ext.onnx", d / "ext" / "ext.mnn")
    convert(MODELS / "cnn.onnx", d / "cnn_ext.mnn", options=["--saveExternalData", "1"])
    return d


# -- cases ----------------------------------------------------------------------------------
@dataclass
class Case:
    args: list
    code: int
    fragments: tuple = ()
    outputs: tuple = ()  # files parity may create
    inputs: tuple = ()  # more files that must not change (existing args are watched anyway)
    error_line: bool = True  # False: a run that succeeds (its report is on stdout)
    env: dict = field(default_factory=dict)
    after: Callable[[Path], None] | None = None  # more checks on the directory
    stdin: str | None = None  # a file of the case's directory to give parity as stdin


def _copy(d: Path, built: Path, *names: str) -> None:
    for name in names:
        target = d / Path(name).name
        target.write_bytes((built / name).read_bytes())


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _x(dtype=np.float32, shape=(1, 3, 32, 32)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _npy_header(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _mknod_full(path: Path) -> None:
    """A character device like /dev/full (1, 7), private to the case."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")


class _Pwn:
    """Unpickling this creates the file 'pwned' in the working directory."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


def _no(*names):
    def check(d: Path):
        for name in names:
            assert not os.path.lexists(d / name), f"{name} was left behind"
    return check


def _exists(*names):
    def check(d: Path):
        for name in names:
            assert (d / name).is_file(), f"{name} was not written"
    return check


REPORT_FLAGS = ("--json", "--html", "--junit", "--model-explorer")


def output_cases(d: Path, built: Path) -> dict[str, Case]:
    """Outputs onto inputs, devices, FIFOs, links, long names, missing directories."""
    cases = {}

    def add(name, build):
        cases[name] = build

    # -- onto the run's own inputs (reports: the CLI passes its inputs to parity.core.paths)
    def onto_input(flag, target):
        def build():
            onnx_, mnn = copy_cnn(d)
            return Case(["check", onnx_, mnn, flag, target], BAD, ("input",))
        return build

    add("json onto the onnx model", onto_input("--json", "cnn.onnx"))
    add("html onto the mnn model", onto_input("--html", "cnn.mnn"))
    add("save-inputs onto the onnx model", onto_input("--save-inputs", "cnn.onnx"))

    # -- onto files a command reads that are not model arguments
    def onto_data_loader():
        onnx_, mnn = copy_cnn(d)
        (d / "dl.py").write_text("import numpy as np\n\ndef f():\n"
                                 "    return [{'input': np.zeros((1, 3, 32, 32), np.float32)}]\n")
        return Case(["check", onnx_, mnn, "--data-loader", "dl.py:f", "--json", "dl.py"], BAD, ("input",))
    add("json onto the --data-loader script", onto_data_loader)

    def onto_torch_script():
        onnx_, mnn = copy_cnn(d)
        (d / "tm.py").write_text("def make():\n    raise SystemExit('never imported')\n")
        return Case(["check", "--torch", "tm.py:make", onnx_, mnn, "--json", "tm.py"], BAD, ("input",))
    add("json onto the --torch script", onto_torch_script)

    def onto_rerun_report():
        onnx_, mnn = copy_cnn(d)
        subprocess.run([sys.executable, "-m", "parity", "check", onnx_, mnn, "--json", "rep.json", "-q"],
                       cwd=d, check=True, stdout=subprocess.DEVNULL)
        return Case(["rerun", "rep.json", "--json", "rep.json"], BAD, ("input",))
    add("rerun: json onto the report it reruns", onto_rerun_report)

    def convert_onto_non_utf8():
        # a model MNN's converter dies on (a single-input Max): converting first would say so
        onnx_ = _save(d / "max1.onnx", [helper.make_node("Max", ["x"], ["y"])], [_value("x", [1, 4])],
                      [_value("y", [1, 4])])
        return Case(["convert", onnx_, "-o", os.fsdecode(b"out\xff.mnn")], BAD, ("not valid UTF-8",),
                    after=_no(os.fsdecode(b"out\xff.mnn")))
    add("convert: a non-UTF-8 output name is refused before converting", convert_onto_non_utf8)

    def junit_via_symlink():
        onnx_, mnn = copy_cnn(d)
        os.symlink("cnn.onnx", d / "r.xml")
        return Case(["check", onnx_, mnn, "--junit", "r.xml"], BAD, ("input",))
    add("junit through a symlink to the model", junit_via_symlink)

    def explorer_hardlink():
        onnx_, mnn = copy_cnn(d)
        os.link(d / "cnn.mnn", d / "overlay.json")
        return Case(["check", onnx_, mnn, "--model-explorer", "overlay.json"], BAD, ("input",))
    add("model-explorer onto a hard link of the model", explorer_hardlink)

    def save_inputs_onto_inputs():
        onnx_, mnn = copy_cnn(d)
        _npz(d / "in.npz", x=_x())
        return Case(["check", onnx_, mnn, "--inputs", "in.npz", "--save-inputs", "in.npz"], BAD, ("input",))
    add("save-inputs onto --inputs", save_inputs_onto_inputs)

    def compare_onto_reference():
        np.save(d / "r.npy", _x())
        np.save(d / "c.npy", _x())
        return Case(["compare", "r.npy", "c.npy", "--json", "r.npy"], BAD, ("input",))
    add("compare json onto the reference dump", compare_onto_reference)

    def onto_external_data():
        _copy(d, built, "ext/ext.onnx", "ext/w.bin", "ext/ext.mnn")
        return Case(["check", "ext.onnx", "ext.mnn", "--json", "w.bin"], BAD, ("input", "w.bin"))
    add("json onto the onnx model's external data", onto_external_data)

    def onto_mnn_weights():
        onnx_, _ = copy_cnn(d)
        _copy(d, built, "cnn_ext.mnn", "cnn_ext.mnn.weight")
        return Case(["check", onnx_, "cnn_ext.mnn", "--html", "cnn_ext.mnn.weight"], BAD, ("input",))
    add("html onto the mnn model's weights file", onto_mnn_weights)

    def two_flags_one_file():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, "--json", "r.out", "--html", "r.out"], BAD, ("both",))
    add("json and html onto one file", two_flags_one_file)

    def two_on_stdout():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, *JSON_STDOUT, "--junit", "-"], BAD, ("stdout",))
    add("json and junit both on stdout", two_on_stdout)

    def html_dash():
        onnx_, mnn = copy_cnn(d)

        def on_stdout(_d):
            assert not os.path.lexists(d / "-"), "--html - wrote a file named '-'"
        return Case(["check", onnx_, mnn, "--html", "-", "-q"], OK, error_line=False, after=on_stdout)
    add("html dash is stdout, not a file named '-'", html_dash)

    # -- onto what is not a regular file (parity.core.paths refuses it wherever it is checked)
    def onto_device():
        onnx_, mnn = copy_cnn(d)
        _mknod_full(d / "full")
        return Case(["check", onnx_, mnn, "--json", "full"], BAD, ("character device",))
    add("json onto a character device", onto_device)

    def link_to(flag, link, target, kind):
        def build():
            onnx_, mnn = copy_cnn(d)
            os.symlink(target, d / link)
            return Case(["check", onnx_, mnn, flag, link], BAD, (kind,))
        return build

    add("json through a symlink to /dev/full", link_to("--json", "out.json", "/dev/full", "character device"))
    add("html through a symlink to /dev/stdout", link_to("--html", "page.html", "/dev/stdout", "not a regular file"))
    add("save-inputs through a symlink to /dev/null",
        link_to("--save-inputs", "s.npz", "/dev/null", "character device"))

    def stdin_file():
        onnx_, mnn = copy_cnn(d)
        (d / "feed.txt").write_text("stdin is this regular file\n")
        os.symlink("/dev/stdin", d / "in.json")
        return Case(["check", onnx_, mnn, "--json", "in.json"], BAD, ("file descriptor",),
                    inputs=(d / "feed.txt", d / "in.json"), stdin="feed.txt")
    add("json through a symlink to /dev/stdin, a regular file", stdin_file)

    def onto_fifo():
        onnx_, mnn = copy_cnn(d)
        os.mkfifo(d / "r.json")
        return Case(["check", onnx_, mnn, "--json", "r.json"], BAD, ("FIFO",))
    add("json onto a FIFO", onto_fifo)

    def onto_socket():
        onnx_, mnn = copy_cnn(d)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(d / "r.xml"))
        return Case(["check", onnx_, mnn, "--junit", "r.xml"], BAD, ("socket",))
    add("junit onto a socket", onto_socket)

    def onto_dir():
        onnx_, mnn = copy_cnn(d)
        (d / "r.json").mkdir()
        return Case(["check", onnx_, mnn, "--json", "r.json"], BAD, ("directory",))
    add("json onto a directory", onto_dir)

    def symlink_loop():
        onnx_, mnn = copy_cnn(d)
        os.symlink("loop.json", d / "loop.json")
        return Case(["check", onnx_, mnn, "--json", "loop.json"], BAD, ("loop",), inputs=(d / "loop.json",))
    add("json onto a symlink loop", symlink_loop)

    def dangling():
        onnx_, mnn = copy_cnn(d)
        os.symlink("nodir/r.json", d / "r.json")
        return Case(["check", onnx_, mnn, "--json", "r.json"], BAD, ("does not exist",), inputs=(d / "r.json",))
    add("json through a symlink into a missing directory", dangling)

    def missing_dir():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, "--html", "nodir/r.html"], BAD, ("does not exist",))
    add("html into a missing directory", missing_dir)

    def through_a_file():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, "--json", "cnn.onnx/r.json"], BAD, ("cnn.onnx",))
    add("json through a file used as a directory", through_a_file)

    def too_long():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, f"--json={'r' * LONG}.json"], BAD, ("too long",))
    add("json name too long", too_long)

    def longest():
        onnx_, mnn = copy_cnn(d)
        name = "r" * 250 + ".json"  # 255 bytes: the longest name there is
        return Case(["check", onnx_, mnn, "-q", "--json", name], OK, outputs=(name,), error_line=False,
                    after=_exists(name))
    add("json with the longest name the filesystem takes", longest)

    def repro_too_long():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, f"--repro={'r' * LONG}"], BAD, ("too long",))
    add("repro name too long", repro_too_long)

    def repro_fifo():
        onnx_, mnn = copy_cnn(d)
        os.mkfifo(d / "repro")
        return Case(["check", onnx_, mnn, "--repro", "repro"], BAD, ("FIFO", "not a directory"))
    add("repro onto a FIFO", repro_fifo)

    # -- convert's -o (checked by parity.mnn.converter itself)
    def o_link(kind):
        def build():
            onnx_, _ = copy_cnn(d)
            if kind == "symlink":
                os.symlink("cnn.onnx", d / "out.mnn")
            else:
                os.link(d / "cnn.onnx", d / "out.mnn")
            return Case(["convert", onnx_, "-o", "out.mnn"], BAD, ("input",))
        return build

    add("convert -o a symlink to its model", o_link("symlink"))
    add("convert -o a hard link of its model", o_link("hardlink"))

    def o_external():
        (d / "m").mkdir()
        _external(d / "m" / "m.onnx", "weights.mnn")
        (d / "m" / "weights.mnn").write_bytes(np.arange(4, dtype=np.float32).tobytes())
        return Case(["convert", "m/m.onnx", "-o", "m/weights.mnn"], BAD, ("input", "weights.mnn"),
                    inputs=(d / "m" / "weights.mnn",))
    add("convert -o onto the model's own external data", o_external)

    def o_null():
        onnx_, _ = copy_cnn(d)
        os.symlink("/dev/null", d / "null.mnn")
        return Case(["convert", onnx_, "-o", "null.mnn"], BAD, ("character device",))
    add("convert -o a symlink to /dev/null", o_null)

    def o_too_long():
        onnx_, _ = copy_cnn(d)
        return Case(["convert", onnx_, f"--output={'m' * LONG}.mnn"], BAD, ("too long",))
    add("convert -o name too long", o_too_long)

    def o_missing_dir():
        onnx_, _ = copy_cnn(d)
        return Case(["convert", onnx_, "-o", "nodir/m.mnn"], BAD, ("does not exist",))
    add("convert -o into a missing directory", o_missing_dir)

    def save_external():
        onnx_, _ = copy_cnn(d)
        return Case(["convert", onnx_, "-o", "out.mnn", "-q", "--saveExternalData", "1"], OK,
                    outputs=("out.mnn", "out.mnn.weight"), error_line=False,
                    after=_exists("out.mnn", "out.mnn.weight"))
    add("convert --saveExternalData keeps the weights next to the model", save_external)

    def save_external_fifo():
        onnx_, _ = copy_cnn(d)
        os.mkfifo(d / "out.mnn.weight")
        return Case(["convert", onnx_, "-o", "out.mnn", "--saveExternalData", "1"], BAD, ("FIFO",),
                    after=_no("out.mnn"))
    add("convert --saveExternalData onto a FIFO weights file", save_external_fifo)
    return cases


def input_cases(d: Path, built: Path) -> dict[str, Case]:
    """Inputs that are not regular files, and sizes that cannot fit."""
    cases = {}

    def add(name, build):
        cases[name] = build

    def fifo(role):
        def build():
            os.mkfifo(d / {"inputs": "in.npz", "onnx": "f.onnx", "mnn": "f.mnn", "inspect": "f.onnx",
                           "convert": "f.onnx", "compare": "f.npy", "model-input": "mi.npy"}[role])
            if role in ("inputs", "mnn"):
                onnx_, mnn = copy_cnn(d)
            if role == "inputs":
                args = ["check", onnx_, mnn, "--inputs", "in.npz"]
            elif role == "onnx":
                args = ["check", "f.onnx", copy_cnn(d)[1]]
            elif role == "mnn":
                args = ["check", onnx_, "f.mnn"]
            elif role == "inspect":
                args = ["inspect", "f.onnx"]
            elif role == "convert":
                args = ["convert", "f.onnx", "-o", "f.mnn"]
            elif role == "compare":
                np.save(d / "c.npy", _x())
                args = ["compare", "f.npy", "c.npy"]
            else:
                np.save(d / "r.npy", _x())
                np.save(d / "c.npy", _x())
                args = ["compare", "r.npy", "c.npy", "--model-input", "mi.npy"]
            return Case(args, BAD, ("FIFO",))
        return build

    for role in ("inputs", "onnx", "mnn", "inspect", "convert", "compare", "model-input"):
        add(f"FIFO as {role}", fifo(role))

    def device(link, target, role):
        def build():
            os.symlink(target, d / link)
            onnx_, mnn = copy_cnn(d)
            if role == "onnx":
                args = ["check", link, mnn]
            elif role == "mnn":
                args = ["check", onnx_, link]
            elif role == "inputs":
                args = ["check", onnx_, mnn, "--inputs", link]
            else:
                np.save(d / "r.npy", _x())
                args = ["compare", "r.npy", link, "--dtype", "float32"]
            return Case(args, BAD, ("character device",))
        return build

    add("/dev/null as the onnx model", device("null.onnx", "/dev/null", "onnx"))
    add("/dev/zero as the mnn model", device("zero.mnn", "/dev/zero", "mnn"))
    add("/dev/zero as --inputs", device("zero.npz", "/dev/zero", "inputs"))
    add("/dev/zero as a raw dump", device("zero.bin", "/dev/zero", "raw"))

    def socket_model():
        _, mnn = copy_cnn(d)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(d / "s.onnx"))
        return Case(["check", "s.onnx", mnn], BAD, ("socket",))
    add("a socket as the model", socket_model)

    def loop_model():
        _, mnn = copy_cnn(d)
        os.symlink("l.onnx", d / "l.onnx")
        return Case(["check", "l.onnx", mnn], BAD, ("loop",), inputs=(d / "l.onnx",))
    add("a symlink loop as the model", loop_model)

    def dangling_model():
        _, mnn = copy_cnn(d)
        os.symlink("gone.onnx", d / "m.onnx")
        return Case(["check", "m.onnx", mnn], BAD, ("does not exist", "symlink"), inputs=(d / "m.onnx",))
    add("a dangling symlink as the model", dangling_model)

    def empty_model():
        _, mnn = copy_cnn(d)
        (d / "e.onnx").write_bytes(b"")
        return Case(["check", "e.onnx", mnn], BAD, ("empty",))
    add("an empty onnx model", empty_model)

    def npz_case(members: Callable[[], dict] | None = None, *, arrays=None, fragments=(), raw=None):
        def build():
            onnx_, mnn = copy_cnn(d)
            if raw is not None:
                (d / "in.npz").write_bytes(raw)
            elif arrays is not None:
                _npz(d / "in.npz", **arrays())
            else:
                _zip(d / "in.npz", members())
            return Case(["check", onnx_, mnn, "--inputs", "in.npz"], BAD, fragments)
        return build

    add("empty --inputs", npz_case(raw=b"", fragments=("not a readable",)))
    buffer = io.BytesIO()
    np.savez(buffer, x=_x())
    add("truncated --inputs", npz_case(raw=buffer.getvalue()[:300], fragments=("not a readable",)))
    add("pickled object array in --inputs (never unpickled)",
        npz_case(lambda: {"x.npy": _npy_bytes(np.array([_Pwn()], dtype=object))}, fragments=("pickle",)))
    add("int32 where the model takes float32", npz_case(arrays=lambda: {"x": _x(np.int32)}, fragments=("int32",)))
    add("NaN in --inputs", npz_case(arrays=lambda: {"x": np.full((1, 3, 32, 32), np.nan, np.float32)},
                                    fragments=("NaN",)))
    add("a single .npy as --inputs", npz_case(raw=_npy_bytes(_x()), fragments=("single .npy",)))
    add("npz member declaring 4 TiB", npz_case(
        lambda: {"x.npy": _npy_header((1 << 40,)) + bytes(16)}, fragments=("TiB",)))
    add("npz extra member declaring 4 TiB is never read", npz_case(
        lambda: {"x.npy": _npy_bytes(_x()), "junk.npy": _npy_header((1 << 40,)) + bytes(16)},
        fragments=("unknown", "junk")))
    add("npz member shorter than its header says", npz_case(
        lambda: {"x.npy": _npy_header((1, 3, 32, 32)) + bytes(100)}, fragments=("truncated",)))

    def huge_npy():
        (d / "huge.npy").write_bytes(_npy_header((1 << 45,)))
        np.save(d / "c.npy", _x())
        return Case(["compare", "huge.npy", "c.npy"], BAD, ("TiB",))
    add("npy header declaring 128 TiB", huge_npy)

    def shape(text, code, fragments):
        def build():
            _copy(d, built, "relu.onnx", "relu.mnn")
            return Case(["check", "relu.onnx", "relu.mnn", "--shape", f"x={text}"], code, fragments)
        return build

    add("--shape with a 23-digit dim", shape("9" * 23 + "x4", USAGE, ("--shape",)))
    add("--shape needing petabytes", shape("1000000000000x4", BAD, ("memory",)))
    add("--shape with 65 dims", shape("x".join(["1"] * 65), USAGE, ("65",)))

    def raw_shape():
        np.save(d / "r.npy", np.arange(12, dtype=np.float32))
        np.arange(12, dtype=np.float32).tofile(d / "c.bin")
        return Case(["compare", "r.npy", "c.bin", "--dtype", "float32", "--shape", "1x" + "9" * 23],
                    USAGE, ("--shape",))
    add("compare --shape with a 23-digit dim", raw_shape)

    def static_huge():
        _copy(d, built, "relu.mnn")
        _relu(d / "huge.onnx", (1000000000, 1000000000))
        return Case(["check", "huge.onnx", "relu.mnn"], BAD, ("memory",))
    add("model input declared 1e9 x 1e9", static_huge)

    def negative_seed():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, "--seed", "-1"], USAGE, ("seed",))
    add("--seed -1", negative_seed)

    def not_a_number(flag, *command):
        def build():
            onnx_, mnn = copy_cnn(d)
            words = list(command) or ["check", onnx_, mnn]
            return Case([*words, flag, "nan"], USAGE, (flag, "not a number"))
        return build

    for flag in ("--atol", "--rtol", "--timeout", "--layer-rtol"):  # nan passes every range test
        add(f"{flag} nan", not_a_number(flag))
    add("sweep --pair-timeout nan", not_a_number("--pair-timeout", "sweep", "."))

    def unknown_backend(name, fragments):
        def build():
            onnx_, mnn = copy_cnn(d)
            return Case(["check", onnx_, mnn, "--mnn-backend", name], USAGE, ("--mnn-backend", *fragments))
        return build

    add("--mnn-backend in lower case", unknown_backend("cpu", ("upper case",)))
    add("--mnn-backend unknown", unknown_backend("NOPE", ("OPENCL",)))
    add("--mnn-backend empty", unknown_backend("", ("CPU",)))

    def val_range_beyond_float32():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, "--val-range", "x:1e39,1e40"], BAD, ("--val-range", "float32"))
    add("--val-range beyond float32", val_range_beyond_float32)

    def unknown_converter_option():
        onnx_, _ = copy_cnn(d)
        return Case(["convert", onnx_, "-o", "out.mnn", "--weightQuantBit", "4"], USAGE,
                    ("--weightQuantBit", "nothing was written"), after=_no("out.mnn"))
    add("convert with a converter option MNN does not know", unknown_converter_option)

    def bits_out_of_range(bits):
        def build():
            onnx_, _ = copy_cnn(d)
            return Case(["convert", onnx_, "-o", "out.mnn", "--weightQuantBits", bits], USAGE,
                        ("--weightQuantBits", "2 to 8", "0 (none)"), after=_no("out.mnn"))
        return build

    for bits in ("1", "9", "abc"):  # MNN gives 2-bit, 8-bit and float weights for these, quietly
        add(f"convert --weightQuantBits {bits}", bits_out_of_range(bits))

    def no_memory():
        onnx_, mnn = copy_cnn(d)
        return Case(["check", onnx_, mnn, "--layers", "--max-memory", "0"], USAGE, ("--max-memory", "no memory"))
    add("--max-memory 0", no_memory)

    def compare_dump(kind):
        def build():
            if kind == "void":  # elements of no bytes: any count fits in no bytes
                (d / "a.npy").write_bytes(_npy_header((10 ** 12,), "|V0"))
            elif kind == "structured":
                np.save(d / "a.npy", np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))
            else:
                np.savez(d / "a.npz")
            name = "a.npz" if kind == "empty" else "a.npy"
            fragment = {"void": "zero-size", "structured": "structured", "empty": "no arrays"}[kind]
            return Case(["compare", name, name], BAD, (fragment,))
        return build

    for kind in ("void", "structured", "empty"):
        add(f"compare a {kind} dump", compare_dump(kind))

    def output_name_not_utf8(command):
        def build():
            onnx_, mnn = copy_cnn(d)
            data = Path(d / onnx_).read_bytes().replace(b"logits", b"lo\xff\xfe<a")  # same length
            (d / "bad.onnx").write_bytes(data)
            args = ["check", "bad.onnx", mnn] if command == "check" else ["inspect", "bad.onnx"]
            return Case(args, BAD, ("not UTF-8",))
        return build

    for command in ("check", "inspect"):
        add(f"{command}: an output name that is not UTF-8", output_name_not_utf8(command))

    def given_twice(*words, fragment):
        def build():
            onnx_, mnn = copy_cnn(d)
            return Case(["check", onnx_, mnn, *words], USAGE, (words[0], fragment))
        return build

    add("--shape with a dim of 0", given_twice("--shape", "x=0x3x32x32", fragment="dim of 0"))
    add("--shape twice for one input", given_twice("--shape", "x=1x3x32x32", "--shape", "x=1x3x32x32",
                                                   fragment="twice"))
    add("--val-range twice for one input", given_twice("--val-range", "x:0,1", "--val-range", "x:0,2",
                                                       fragment="twice"))
    add("--tol twice for one output", given_twice("--tol", "logits=1,1", "--tol", "logits=2,2", fragment="twice"))

    # code the user gives parity that exits: its exit is never parity's (a sys.exit(0) read as a pass)
    def loader_exits(where, code):
        def build():
            onnx_, mnn = copy_cnn(d)
            body = "    return [{'input': np.zeros((1, 3, 32, 32), np.float32)}]\n"
            exit_line = f"sys.exit({code!r})\n"
            text = ("import sys\nimport numpy as np\n" + (exit_line if where == "import" else "") + "\ndef f():\n"
                    + ("    " + exit_line if where == "call" else "") + body)
            (d / "dl.py").write_text(text)
            return Case(["check", onnx_, mnn, "--data-loader", "dl.py:f"], BAD, ("--data-loader", "sys.exit"))
        return build

    add("--data-loader calling sys.exit(0)", loader_exits("call", 0))
    add("--data-loader exiting at import", loader_exits("import", "bye"))
    return cases


def model_cases(d: Path, built: Path) -> dict[str, Case]:
    """External data that reaches outside, models ONNX Runtime refuses, hostile names."""
    cases = {}

    def add(name, build):
        cases[name] = build

    def external(location, command="check", setup=None, fragments=()):
        def build():
            _copy(d, built, "relu.mnn")
            _external(d / "m.onnx", location)
            if setup:
                setup()
            if command == "check":
                args = ["check", "m.onnx", "relu.mnn"]
            elif command == "inspect":
                args = ["inspect", "m.onnx"]
            else:
                args = ["convert", "m.onnx", "-o", "m.mnn"]
            return Case(args, BAD, fragments, after=_no("m.mnn"))
        return build

    add("check: external data ../../../../etc/passwd", external("../../../../etc/passwd", fragments=("..",)))
    add("convert: external data ../../../../etc/passwd",
        external("../../../../etc/passwd", "convert", fragments=("..",)))
    add("inspect: external data ../../../../etc/passwd",
        external("../../../../etc/passwd", "inspect", fragments=("..",)))
    add("convert: external data at an absolute path", external("/etc/passwd", "convert", fragments=("absolute",)))
    add("convert: external data through a symlink outside",
        external("w.bin", "convert", setup=lambda: os.symlink("/etc/passwd", d / "w.bin"),
                 fragments=("outside",)))
    add("check: external data through a symlink outside",
        external("w.bin", setup=lambda: os.symlink("/etc/passwd", d / "w.bin"), fragments=("outside",)))
    add("check: external data is a FIFO",
        external("w.bin", setup=lambda: os.mkfifo(d / "w.bin"), fragments=("FIFO",)))
    add("convert: external data is a FIFO",
        external("w.bin", "convert", setup=lambda: os.mkfifo(d / "w.bin"), fragments=("FIFO",)))
    add("check: external data file missing", external("w.bin", fragments=("does not exist",)))
    add("check: external data shorter than declared",
        external("w.bin", setup=lambda: (d / "w.bin").write_bytes(bytes(8)), fragments=("fewer",)))

    def valid_external():
        _copy(d, built, "ext/ext.onnx", "ext/w.bin", "ext/ext.mnn")
        return Case(["check", "ext.onnx", "ext.mnn", "-q"], OK, error_line=False)
    add("external data inside the model's directory still works", valid_external)

    def no_outputs():
        _copy(d, built, "relu.mnn")
        _relu(d / "noout.onnx", outputs=False)
        return Case(["check", "noout.onnx", "relu.mnn"], BAD, ("no graph outputs",))
    add("onnx graph without outputs", no_outputs)

    # shapes that broadcast with x [1, 4]: ONNX Runtime's size validation is what refuses them
    def bad_initializer():
        _copy(d, built, "relu.mnn")
        _raw_initializer(d / "w.onnx", [1000000, 4], bytes(16))
        return Case(["check", "w.onnx", "relu.mnn"], BAD, ("not a valid ONNX model", "raw_data size"))
    add("initializer smaller than its shape", bad_initializer)

    def over_limit():
        _copy(d, built, "relu.mnn")
        _raw_initializer(d / "w.onnx", [2**28, 4], bytes(16))
        return Case(["check", "w.onnx", "relu.mnn"], BAD, ("not a valid ONNX model", "byte limit"))
    add("initializer over the 2 GiB embedded limit", over_limit)

    # convert: the same refusals as check (exit 3), and no .mnn left
    def convert_refused(build_model, *fragments):
        def build():
            build_model(d / "w.onnx")
            return Case(["convert", "w.onnx", "-o", "w.mnn"], BAD, fragments, after=_no("w.mnn"))
        return build
    add("convert: initializer smaller than its shape",
        convert_refused(lambda p: _raw_initializer(p, [1000000, 4], bytes(16)), "raw_data size"))
    add("convert: initializer over the 2 GiB embedded limit",
        convert_refused(lambda p: _raw_initializer(p, [2**28, 4], bytes(16)), "byte limit"))
    add("convert: onnx graph without outputs",
        convert_refused(lambda p: _relu(p, outputs=False), "no graph outputs"))

    # -- names
    def non_utf8_onnx():
        _, mnn = copy_cnn(d)
        name = os.fsdecode(b"model\xff.onnx")
        (d / name).write_bytes((MODELS / "cnn.onnx").read_bytes())
        return Case(["check", name, mnn, "-q"], OK, error_line=False)
    add("non-UTF-8 onnx name is checked", non_utf8_onnx)

    def non_utf8_mnn():
        onnx_, _ = copy_cnn(d)
        name = os.fsdecode(b"model\xff.mnn")
        (d / name).write_bytes((MODELS / "cnn.mnn").read_bytes())
        return Case(["check", onnx_, name], BAD, ("UTF-8",))
    add("non-UTF-8 mnn name is refused in one line", non_utf8_mnn)

    def non_utf8_convert():
        name = os.fsdecode(b"model\xff.onnx")
        (d / name).write_bytes((MODELS / "cnn.onnx").read_bytes())
        return Case(["convert", name, "-o", "ok.mnn", "-q"], OK, outputs=("ok.mnn",), error_line=False,
                    after=_exists("ok.mnn"))
    add("non-UTF-8 onnx name converts", non_utf8_convert)

    def spaces_unicode():
        for src, dst in (("cnn.onnx", "my model é.onnx"), ("cnn.mnn", "my model é.mnn")):
            (d / dst).write_bytes((MODELS / src).read_bytes())
        return Case(["check", "my model é.onnx", "my model é.mnn", "-q", "--json", "rapport é.json"], OK,
                    outputs=("rapport é.json",), error_line=False, after=_exists("rapport é.json"))
    add("names with spaces and unicode", spaces_unicode)

    def leading_dash():
        for src, dst in (("cnn.onnx", "-m.onnx"), ("cnn.mnn", "-m.mnn")):
            (d / dst).write_bytes((MODELS / src).read_bytes())
        return Case(["check", "-q", "--json", "-r.json", "--", "-m.onnx", "-m.mnn"], OK,
                    outputs=("-r.json",), inputs=(d / "-m.onnx", d / "-m.mnn"), error_line=False,
                    after=_exists("-r.json"))
    add("names with a leading dash", leading_dash)

    def dotdot():
        copy_cnn(d)
        (d / "sub").mkdir()
        return Case(["check", "../cnn.onnx", "../cnn.mnn", "-q"], OK, error_line=False)
    add("relative paths with ..", dotdot)

    def control_chars():
        _, mnn = copy_cnn(d)
        return Case(["check", "a\nforged line\x1b[2J.onnx", mnn], BAD, ("does not exist", "\\n"))
    add("missing model named with a newline and ESC", control_chars)
    def mnn_weights_cut():
        onnx_, _ = copy_cnn(d)
        _copy(d, built, "cnn_ext.mnn", "cnn_ext.mnn.weight")
        weights = d / "cnn_ext.mnn.weight"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # MNN reads past its end
        return Case(["check", onnx_, "cnn_ext.mnn"], BAD, ("cnn_ext.mnn.weight", "truncated"))
    add("mnn weights file cut short", mnn_weights_cut)

    def mnn_weights_missing():
        onnx_, _ = copy_cnn(d)
        _copy(d, built, "cnn_ext.mnn")
        return Case(["check", onnx_, "cnn_ext.mnn"], BAD, ("cnn_ext.mnn.weight", "missing"))
    add("mnn weights file missing", mnn_weights_missing)

    return cases


BUILDERS = {**{f"out: {k}": ("out", k) for k in output_cases(Path("."), Path(".")).keys()},
            **{f"in: {k}": ("in", k) for k in input_cases(Path("."), Path(".")).keys()},
            **{f"model: {k}": ("model", k) for k in model_cases(Path("."), Path(".")).keys()}}
_GROUPS = {"out": output_cases, "in": input_cases, "model": model_cases}


def test_the_corpus_is_large_enough():
    assert len(BUILDERS) >= 45


@pytest.mark.parametrize("case_id", list(BUILDERS))
def test_hostile_file(case_id, tmp_path, built):
    group, name = BUILDERS[case_id]
    d = tmp_path / "w"
    d.mkdir()
    case = _GROUPS[group](d, built)[name]()
    cwd = d / "sub" if (d / "sub").is_dir() else d
    with open(d / case.stdin, "rb") if case.stdin else open(os.devnull, "rb") as stdin:
        outcome = run_hostile(*case.args, cwd=cwd, inputs=case.inputs, outputs=case.outputs,
                              timeout=LIMIT, env=case.env, stdin=stdin)
    outcome.assert_clean(case.code, *case.fragments, limit=LIMIT, error_line=case.error_line)
    if case.after:
        case.after(d)


@pytest.mark.slow
def test_a_zero_filled_mnn_is_refused_at_once(tmp_path):
    """A preallocated or partly downloaded file: the ONNX sniff walked its zeros as millions of
    protobuf fields (2.6 s per MB); no field is numbered 0, so it stops at the first byte."""
    import time

    from helpers import run_parity

    path = tmp_path / "zeros.mnn"
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    started = time.monotonic()
    result = run_parity("inspect", path)
    assert result.code == BAD and "not a readable MNN model" in result.err, result.err
    assert time.monotonic() - started < 20


def test_npz_bomb_is_refused_without_decompressing(tmp_path):
    """An extra 2 GiB member of zeros (9 MB compressed) is refused by its name; parity runs
    under a 1 GiB data limit, so decompressing it would end in MemoryError (exit 123)."""
    d = tmp_path / "w"
    d.mkdir()
    onnx_, mnn = copy_cnn(d)
    with zipfile.ZipFile(d / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("x.npy", _npy_bytes(_x()))
        with archive.open("junk.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((1 << 29,)))
            chunk = bytes(64 << 20)
            for _ in range(32):
                member.write(chunk)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, resource.getrlimit(resource.RLIMIT_DATA)[1]))\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    outcome = run_hostile("check", onnx_, mnn, "--inputs", "bomb.npz", cwd=d, env={"PYTHONPATH": path},
                          timeout=60)
    outcome.assert_clean(BAD, "unknown", "junk", limit=60)


# -- the library ----------------------------------------------------------------------------
def test_json_dump_onto_its_own_model_is_refused(tmp_path):
    from parity.mnn.graph import dump_json

    model = tmp_path / "cnn.mnn"
    model.write_bytes((MODELS / "cnn.mnn").read_bytes())
    before = model.read_bytes()
    with pytest.raises(OutputPathError, match="input"):
        dump_json(model, model)
    assert model.read_bytes() == before


def test_write_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    from parity.core.inputs import write_atomic

    (tmp_path / "real.json").write_text("old")
    os.symlink("real.json", tmp_path / "link.json")
    write_atomic(tmp_path / "link.json", b"new", "--json")
    assert os.path.islink(tmp_path / "link.json")
    assert (tmp_path / "real.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_replaced_file_keeps_its_mode(tmp_path):
    from parity.core.inputs import write_atomic

    target = tmp_path / "r.json"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, b"new", "--json")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() == b"new"


def test_an_interrupted_write_leaves_nothing_and_is_not_reported_written(tmp_path, monkeypatch):
    from parity.core import paths

    source, target = tmp_path / "src.bin", tmp_path / "model.mnn"
    source.write_bytes(b"x" * 10)

    def interrupt(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(paths.shutil, "copyfileobj", interrupt)
        with pytest.raises(KeyboardInterrupt):
            paths.copy_atomic(source, target, "the converted model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.bin"]
    assert str(target) not in paths.published()
    paths.copy_atomic(source, target, "the converted model")
    assert paths.published()[-1] == str(target) and target.read_bytes() == b"x" * 10
    target.unlink()  # a scratch file published, then removed with its private directory
    assert str(target) not in paths.published()  # an interruption does not name it as left behind
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    paths.copy_atomic(source, "out.bin", "the converted model")  # a relative name
    os.unlink("out.bin")
    monkeypatch.chdir(tmp_path / "b")
    Path("out.bin").write_bytes(b"the user's own")  # the same name, elsewhere: not parity's
    assert "out.bin" not in paths.published()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
