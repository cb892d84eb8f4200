"""The backend protocol, the MNN worker's edges (late replies, dead children, error classes),
MNN input layouts and dtypes, and the sweep's report and per-pair time limit.

Real ONNX Runtime and MNN on tiny models built here. MNN itself is only ever imported in child
processes (test_isolation asserts parity's own process never imports it). Errors raised inside
the worker child come from real parity code touching probe objects (tests' own Path subclasses
whose methods sleep, hang or raise), unpickled in the child from a module on its PYTHONPATH.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import assert_one_line_error, ort_run, run_json, run_parity, save_model, tensor, to_mnn
from parity.checking import sweep
from parity.backends.base import Backend, RunResult
from parity.backends.mnn import MnnBackend
from parity.backends.onnxruntime import OnnxRuntimeBackend
from parity.run.worker import Worker, error_kind
from parity.core.errors import (
    BackendError,
    BackendTimeout,
    ExitCode,
    InputError,
    ModelError,
    OutputPathError,
    UsageError,
)


# -- tiny models ------------------------------------------------------------------------------
def _pair(onnx_path):
    return onnx_path, to_mnn(onnx_path)


@pytest.fixture(scope="module")
def int_add(tmp_path_factory):
    """y = x + float(k), k int64: MNN takes k as int32 and says so in a note."""
    d = tmp_path_factory.mktemp("int_add")
    return _pair(save_model(
        [helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "kf"], ["y"])],
        [tensor("x", shape=[2, 3]), tensor("k", TensorProto.INT64, [2, 3])], [tensor("y", shape=[2, 3])],
        d / "int_add.onnx"))


def _cast_pair(d, name, elem):
    """y = float32(x) for an input of type ``elem``."""
    return _pair(save_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                            [tensor("x", elem, [2, 3])], [tensor("y", shape=[2, 3])], d / f"{name}.onnx"))


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """Pairs whose input is float16, bool, int16, int8 or float64 (what MNN's converter declares
    for each was measured: float32, int32, int32, int8, float32)."""
    d = tmp_path_factory.mktemp("typed")
    pairs = {name: _cast_pair(d, name, elem) for name, elem in (
        ("half", TensorProto.FLOAT16), ("int16", TensorProto.INT16), ("int8", TensorProto.INT8),
        ("double", TensorProto.DOUBLE))}
    pairs["half_add"] = _pair(save_model([helper.make_node("Add", ["x", "x"], ["y"])],
                                         [tensor("x", TensorProto.FLOAT16, [2, 3])],
                                         [tensor("y", TensorProto.FLOAT16, [2, 3])], d / "half_add.onnx"))
    pairs["not"] = _pair(save_model([helper.make_node("Not", ["x"], ["y"])],
                                    [tensor("x", TensorProto.BOOL, [2, 3])], [tensor("y", TensorProto.BOOL, [2, 3])],
                                    d / "not.onnx"))
    pairs["where"] = _pair(save_model(
        [helper.make_node("Where", ["c", "a", "b"], ["y"])],
        [tensor("c", TensorProto.BOOL, [2, 3]), tensor("a", shape=[2, 3]), tensor("b", shape=[2, 3])],
        [tensor("y", shape=[2, 3])], d / "where.onnx"))
    return pairs


# -- 1. the backend protocol ------------------------------------------------------------------
def test_protocol_defaults_are_synchronous(int_add):
    onnx_path, _ = int_add
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "k": np.full((2, 3), 7, np.int64)}
    backend = OnnxRuntimeBackend(onnx_path)
    assert isinstance(backend, Backend) and OnnxRuntimeBackend.runs_in_child is False
    backend.begin_open()  # nothing happens before open
    assert backend._session is None
    with backend:
        handle = backend.begin_run(feeds)
        assert isinstance(handle, RunResult)  # the run is done: the handle is its result
        result = backend.finish_run(handle)
    np.testing.assert_array_equal(result.outputs["y"], feeds["x"] + 7)


def test_protocol_mnn_runs_while_the_caller_works(int_add):
    """The pipeline's order: begin_open all, open all, begin_run child backends first, then
    the others, then finish_run each."""
    onnx_path, mnn_path = int_add
    feeds = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
             "k": np.arange(6, dtype=np.int64).reshape(2, 3)}
    backends = [OnnxRuntimeBackend(onnx_path), MnnBackend(mnn_path)]
    assert [b.runs_in_child for b in backends] == [False, True]
    try:
        for backend in backends:
            backend.begin_open()
        for backend in backends:
            backend.open()
        order = sorted(range(len(backends)), key=lambda i: not backends[i].runs_in_child)
        assert order == [1, 0]
        handles = {i: backends[i].begin_run(feeds) for i in order}
        assert not isinstance(handles[1], RunResult)  # MNN's run was only submitted
        with pytest.raises(RuntimeError, match="already has a run outstanding"):
            backends[1].begin_run(feeds)  # its reply would answer the first request
        results = [backends[i].finish_run(handles[i]) for i in range(len(backends))]
        with pytest.raises(RuntimeError, match="no such run outstanding"):
            backends[1].finish_run(handles[1])
        # the backend is free again: a plain run after an overlapped one
        again = backends[1].run(feeds)
    finally:
        for backend in backends:
            backend.close()
    expected = feeds["x"] + feeds["k"].astype(np.float32)
    np.testing.assert_array_equal(results[0].outputs["y"], expected)
    np.testing.assert_allclose(results[1].outputs["y"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(again.outputs["y"], results[1].outputs["y"])
    note = "input 'k' fed to mnn model int_add.mnn as int32 (given int64)"
    assert results[1].notes == again.notes == (note,)


def test_small_and_large_arrays_cross_to_the_mnn_child_alike(tmp_path):
    """A run's arrays travel in the messages up to a budget (mnn._INLINE_BYTES) and in .npy
    files beyond it, both ways: a small and a large input and output come back exact, whichever
    way each went, and no file is left behind."""
    from parity.backends import mnn as mnn_backend

    big = mnn_backend._INLINE_BYTES // 4 + 1024  # float32 elements: over the budget alone
    onnx_path = save_model([helper.make_node("Add", ["a", "a"], ["small"]), helper.make_node("Neg", ["b"], ["large"])],
                           [tensor("a", shape=[2, 3]), tensor("b", shape=[1, big])],
                           [tensor("small", shape=[2, 3]), tensor("large", shape=[1, big])], tmp_path / "mixed.onnx")
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal((1, big)).astype(np.float32)}
    with MnnBackend(to_mnn(onnx_path)) as backend:
        pending = backend.begin_run(feeds)
        assert list(pending.feed_paths) == ["b"]  # "a" went in the message
        result = backend.finish_run(pending)
        again = backend.run(feeds)
        left = [p for p in backend._worker.dir.rglob("*.npy")]
    np.testing.assert_array_equal(result.outputs["small"], feeds["a"] * 2)
    np.testing.assert_array_equal(result.outputs["large"], -feeds["b"])
    np.testing.assert_array_equal(again.outputs["large"], -feeds["b"])
    assert left == []


# -- 2. the worker ----------------------------------------------------------------------------
PROBE = '''
"""Loaded by tests/test_worker.py in its own process and, through pickled kwargs, in the
worker child: Path subclasses whose __fspath__ parity's check_model_file calls (first
call only: a path is turned into a string more than once)."""
import os
import pathlib
import sys
import time

from parity.core.errors import InputError, ModelError, UsageError


class Vanished(ModelError):
    """A ModelError of some module's own: still exit 3."""


class Misused(UsageError):
    pass


class Unfit(InputError):
    pass


_CALLED = set()


def _first(path) -> bool:
    key = (type(path).__name__, str(path))  # str() does not call __fspath__
    first = key not in _CALLED
    _CALLED.add(key)
    return first


class SlowPath(type(pathlib.Path())):
    delay = 1.0

    def __fspath__(self):
        if _first(self):
            time.sleep(self.delay)
        return super().__fspath__()


class SlowerPath(SlowPath):
    delay = 30.0


class RaisingPath(type(pathlib.Path())):
    errors = {"vanished": Vanished, "misused": Misused, "unfit": Unfit}

    def __fspath__(self):
        raise self.errors[self.name](f"probe raised {self.name}")


class HangingPath(type(pathlib.Path())):
    """The child stops answering without exiting: it closes its end of the connection (the fd
    the worker was started with) and sleeps."""

    def __fspath__(self):
        os.close(int(sys.argv[1]))
        time.sleep(60)
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """The probe module, importable here and in worker children started from now on."""
    (tmp_path / "parity_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    import importlib

    sys.modules.pop("parity_probe", None)
    module = importlib.import_module("parity_probe")
    yield module
    sys.modules.pop("parity_probe", None)


@pytest.fixture
def worker(probe):
    with Worker("probe", timeout=0.5) as w:  # started after probe: its PYTHONPATH has the probe
        yield w


def _check_file(worker, path, **kwargs):
    worker.submit("parity.backends.base:check_model_file", step="probing", path=path, framework="probe")
    return worker.result(step="probing", **kwargs)


def test_a_reply_that_arrived_is_taken_after_the_deadline(worker, probe, tmp_path):
    """The child took 1 s against a 0.5 s limit while the parent was busy elsewhere for 3 s:
    the reply was there when the parent looked, so it counts (it used to be discarded)."""
    target = probe.SlowPath(tmp_path / "parity_probe.py")
    worker.submit("parity.backends.base:check_model_file", step="probing", path=target, framework="probe")
    time.sleep(3.0)
    assert worker.result(step="probing") is None
    # the same worker serves on, and a slow step the parent waits for still times out
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match="did not finish probing within 0.5 s") as info:
        _check_file(worker, probe.SlowerPath(tmp_path / "parity_probe.py"))
    assert time.monotonic() - started < 5 and info.value.exit_code == ExitCode.BACKEND
    assert worker._proc is not None and worker._proc.poll() is not None  # killed


@pytest.mark.parametrize("name, base, code", [
    ("vanished", ModelError, ExitCode.MODEL_OR_INPUT),
    ("unfit", InputError, ExitCode.MODEL_OR_INPUT),
    ("misused", UsageError, ExitCode.USAGE),
])
def test_child_errors_keep_their_exit_code_when_subclassed(worker, probe, tmp_path, name, base, code):
    with pytest.raises(base, match=f"probe raised {name}") as info:
        _check_file(worker, probe.RaisingPath(tmp_path / name), timeout=30)
    assert info.value.exit_code == code  # a subclass used to come back as a backend error (4)
    assert _check_file(worker, tmp_path / "parity_probe.py", timeout=30) is None  # still serving


def test_error_kind_follows_the_class_tree():
    class Unwritable(OutputPathError):
        pass

    class Odd(ModelError, InputError):
        pass

    assert error_kind(Unwritable("x")) == "output_path"
    assert error_kind(Odd("x")) in ("model", "input")
    assert error_kind(BackendTimeout("mnn", "running", 1)) == "backend"


def test_waiting_for_a_child_that_stopped_answering_is_bounded(worker, probe, tmp_path):
    worker.exit_grace = 0.5
    started = time.monotonic()
    with pytest.raises(BackendError, match="stopped answering while probing and did not exit within 0.5 s") as info:
        _check_file(worker, probe.HangingPath(tmp_path / "x"), timeout=30)
    assert time.monotonic() - started < 10  # the child sleeps 60 s; the wait used to have no limit
    assert info.value.exit_code == ExitCode.BACKEND
    assert worker._proc.poll() == -signal.SIGKILL


# -- 3. MNN inputs declared NHWC --------------------------------------------------------------
BUILD_NHWC = '''
import sys
import numpy as np
import MNN

F = MNN.expr
path, data = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
scale = np.array([1.0, -2.0, 0.5], np.float32)
weight = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
bias = np.array([0.25, -0.75], np.float32)
x = F.placeholder([1, 2, 5, 3], F.NHWC, F.float)
x.name = "x"
scaled = F.multiply(x, F.const(scale, [3], F.NHWC, F.float))
scaled.name = "scaled"
conv = F.conv2d(F.convert(scaled, F.NC4HW4), F.const(weight, [2, 3, 1, 1], F.NCHW, F.float),
                F.const(bias, [2], F.NCHW, F.float))
y = F.convert(conv, F.NHWC)
y.name = "y"
F.save([y], path)
graph = F.load_as_dict(path)
assert str(graph["x"].data_format).endswith("NHWC") and str(graph["scaled"].data_format).endswith("NHWC")
feed = rng.standard_normal((1, 2, 5, 3)).astype(np.float32)
module = MNN.nn.load_module_from_file(path, ["x"], ["y"])
var = F.placeholder([1, 2, 5, 3], F.NHWC, F.float)
var.write(feed)
plain = np.array(module.onForward([var])[0].read())
np.savez(data, x=feed, y=plain, scale=scale, weight=weight, bias=bias)
'''


@pytest.fixture(scope="module")
def nhwc_model(tmp_path_factory):
    """An .mnn built with MNN's expr API whose input and an intermediate are NHWC: a
    per-channel scale, then a 1x1 convolution. Built (and run by plain MNN) in a child."""
    d = tmp_path_factory.mktemp("nhwc")
    script = d / "build.py"
    script.write_text(BUILD_NHWC)
    subprocess.run([sys.executable, str(script), str(d / "nhwc.mnn"), str(d / "nhwc.npz")], check=True,
                   capture_output=True, timeout=120)
    with np.load(d / "nhwc.npz") as data:
        return d / "nhwc.mnn", dict(data)


def test_nhwc_input_is_fed_in_its_declared_layout(nhwc_model):
    path, data = nhwc_model
    scaled = data["x"] * data["scale"]
    expected = np.einsum("nhwc,oc->nhwo", scaled, data["weight"][:, :, 0, 0]) + data["bias"]
    np.testing.assert_allclose(data["y"], expected, rtol=1e-5, atol=1e-5)  # plain MNN agrees
    with MnnBackend(path) as backend:
        assert [(s.name, s.shape) for s in backend.input_specs] == [("x", (1, 2, 5, 3))]
        result = backend.run({"x": data["x"]})
        captured = backend.capture({"x": data["x"]}, ["scaled", "y"]).outputs
        cut_at_input = backend.run_cut({"x": data["x"]}, ["y"]).outputs["y"]
        cut_inside = backend.run_cut({"scaled": captured["scaled"]}, ["y"]).outputs["y"]
    # read as NCHW, the input used to come out (1, 2, 3, 2) with scrambled values
    assert result.outputs["y"].shape == (1, 2, 5, 2)
    np.testing.assert_allclose(result.outputs["y"], data["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(captured["scaled"], scaled, rtol=1e-6, atol=1e-6)
    # a cut is fed in the tag the graph gives the tensor there, the order capture read it in
    np.testing.assert_allclose(cut_at_input, data["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cut_inside, data["y"], rtol=1e-6, atol=1e-6)


def test_a_capture_prepared_ahead_returns_what_a_plain_capture_does():
    """--layers has MNN load the capture module while the outputs are compared: the child then
    answers in order (the prepare, the run, the capture), and what it returns does not change."""
    from helpers import MODELS

    with MnnBackend(MODELS / "cnn.mnn") as ahead, MnnBackend(MODELS / "cnn.mnn") as plain:
        spec = ahead.input_specs[0]
        feeds = {spec.name: np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)}
        names = list(dict.fromkeys(e["name"] for e in ahead.graph() if e["op_type"] not in ("Input", "Const")))
        ahead.prepare_capture(names)
        ahead.prepare_capture(names[:1])  # one out already: nothing more is sent
        run = ahead.run(feeds).outputs
        got = ahead.capture(feeds, names).outputs
        want = plain.capture(feeds, names).outputs
        for name, array in plain.run(feeds).outputs.items():
            np.testing.assert_array_equal(run[name], array)
        assert sorted(got) == sorted(want) and len(want) > len(names) // 2  # (MNN cannot read every one)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        ahead.prepare_capture(["no such tensor"])  # MNN cannot build it: not this call's to report
        again = ahead.capture(feeds, names[:2]).outputs
        np.testing.assert_array_equal(again[names[0]], want[names[0]])
        # sent while the model's run is out (what check does), the prepare follows that run:
        # the run's reply is the run's, and the capture after it finds its module
        handle = ahead.begin_run(feeds)
        ahead.prepare_capture(names[1:])
        ahead.prepare_capture(names[:1])  # one out already: nothing more is sent
        for name, array in ahead.finish_run(handle).outputs.items():
            np.testing.assert_array_equal(array, run[name])
        later = ahead.capture(feeds, names[1:]).outputs
        assert sorted(later) == sorted(n for n in want if n != names[0])
        for name in later:
            np.testing.assert_array_equal(later[name], want[name])
    left = MnnBackend(MODELS / "cnn.mnn")
    left.open()
    left.prepare_capture(names)
    pid = left._worker._proc.pid
    left.close()  # with the prepare still out: no wait, no process left
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_prepared_capture_that_hangs_is_a_timeout_naming_it():
    from helpers import MODELS

    backend = MnnBackend(MODELS / "transformer.mnn", timeout=60)
    backend.open()
    try:
        feeds = {s.name: np.zeros(s.shape, dtype=np.float32) for s in backend.input_specs}
        names = [e["name"] for e in backend.graph()][5:40]
        os.kill(backend._worker._proc.pid, signal.SIGSTOP)  # hung while loading the capture module
        backend.prepare_capture(names)
        backend._worker.timeout = 0.5
        with pytest.raises(BackendTimeout, match="capture module"):
            backend.run(feeds)
    finally:
        backend.close()


CHECK_LAYOUTS = r"""
import sys
import MNN
for path in sys.argv[1:]:
    for name, var in MNN.expr.load_as_dict(path).items():
        try:
            layout, rank = str(var.data_format).split(".")[-1], len(var.shape)
        except Exception:
            continue
        if rank >= 2 and layout not in ("NCHW", "NC4HW4"):
            print("FOUND", path, name, layout, rank)
"""


def test_files_declaring_no_nhwc_hold_every_tensor_as_nchw(nhwc_model, tmp_path):
    """A cut of a file plain_layout accepts is fed as NCHW without asking MNN: check, with MNN's
    own reading of every tensor, that such files hold no tensor of rank >= 2 in another layout,
    and that the file declaring NHWC, which does, is refused."""
    from helpers import MODELS
    from parity.mnn import flatbuffer as mnn_flatbuffer

    path, _ = nhwc_model
    plain = [MODELS / "cnn.mnn", MODELS / "transformer.mnn"]
    assert all(mnn_flatbuffer.plain_layout(p) for p in plain)
    assert mnn_flatbuffer.plain_layout(path) is False
    junk = tmp_path / "junk.mnn"
    junk.write_bytes(bytes(range(256)) * 4)
    assert mnn_flatbuffer.plain_layout(junk) is False
    script = tmp_path / "layouts.py"
    script.write_text(CHECK_LAYOUTS)
    found = subprocess.run([sys.executable, str(script), *map(str, plain + [path])], capture_output=True,
                           text=True, timeout=120, check=True).stdout.splitlines()
    found = [line for line in found if line.startswith("FOUND ")]  # MNN prints its CPU features too
    assert found and all(line.startswith(f"FOUND {path} ") for line in found), found


# -- 4. dtypes MNN has no tensors for ---------------------------------------------------------
def _x(dtype):
    return (np.arange(6).reshape(2, 3) - 2).astype(dtype)


@pytest.mark.parametrize("name, dtype, note", [
    ("half", np.float16, "as float32 (given float16)"),
    ("double", np.float64, "as float32 (given float64)"),  # values float32 holds exactly
    ("int16", np.int16, "as int32 (given int16)"),
    ("int8", np.int8, None),  # declared int8: written as int32 and narrowed in MNN
])
def test_mnn_takes_inputs_it_has_no_writable_type_for(typed, name, dtype, note):
    onnx_path, mnn_path = typed[name]
    x = _x(dtype) / 4 if dtype in (np.float16, np.float64) else _x(dtype)
    with MnnBackend(mnn_path) as backend:
        result = backend.run({"x": x})
    np.testing.assert_array_equal(result.outputs["y"], ort_run(onnx_path, {"x": x})["y"])
    if note:
        assert result.notes == (f"input 'x' fed to mnn model {name}.mnn {note}",)
    else:
        assert result.notes == ()


def test_mnn_bool_input_is_fed_as_int32(typed):
    onnx_path, mnn_path = typed["not"]
    x = np.array([[True, False, True], [False, False, True]])
    with MnnBackend(mnn_path) as backend:
        result = backend.run({"x": x})
    np.testing.assert_array_equal(result.outputs["y"].astype(bool), ~x)
    assert result.notes == ("input 'x' fed to mnn model not.mnn as int32 (given bool)",)


def test_mnn_cut_takes_float16_and_refuses_types_mnn_lacks(typed):
    _, mnn_path = typed["half"]
    with MnnBackend(mnn_path) as backend:
        out = backend.run_cut({"x": _x(np.float16)}, ["y"]).outputs["y"]  # used to be a KeyError (exit 4)
        np.testing.assert_array_equal(out, _x(np.float32))
        with pytest.raises(InputError) as info:
            backend.run_cut({"x": _x(np.uint32)}, ["y"])
    assert info.value.exit_code == ExitCode.MODEL_OR_INPUT
    message = str(info.value)
    assert "'x' is uint32, which MNN cannot take" in message and "float32" in message and "\n" not in message


def test_lossy_feed_is_one_clear_input_error(typed):
    _, mnn_path = typed["double"]
    with MnnBackend(mnn_path) as backend:
        with pytest.raises(InputError, match=r"input 'x' \(float64\) has values that do not fit float32, which "
                                             r"mnn model double.mnn takes; give values float32 holds exactly"):
            backend.run({"x": _x(np.float64) + 0.1})
        with pytest.raises(InputError, match="input 'x' is complex64 but mnn model double.mnn expects float32"):
            backend.run({"x": _x(np.complex64)})


@pytest.mark.parametrize("name", ["half", "half_add", "not", "where"])
def test_cli_checks_float16_and_bool_models(typed, name):
    onnx_path, mnn_path = typed[name]
    result = run_json("check", onnx_path, mnn_path)
    assert result.code == ExitCode.PASS, result.err
    assert "Traceback" not in result.err
    report = result.json()
    assert report["passed"] is True


def test_cli_float64_model_is_an_input_error(typed):
    """Random float64 inputs do not survive MNN's float32: one line, exit 3."""
    onnx_path, mnn_path = typed["double"]
    assert_one_line_error(run_parity("check", onnx_path, mnn_path), ExitCode.MODEL_OR_INPUT,
                          "(float64) has values that do not fit float32")


# -- 5. sweep: report and time limit ----------------------------------------------------------
def test_sweep_report_decides_the_exit_code_and_keeps_the_json():
    results = [{"name": "a", "exit_code": 0, "passed": True}, {"name": "b", "exit_code": 1, "passed": False},
               {"name": "c", "exit_code": 4, "passed": False}]
    report = sweep.SweepReport("zoo.toml", "1/2", results, parity_version="9.9")
    assert report.exit_code == ExitCode.BACKEND and report.passed is False
    data = report.to_dict()
    assert list(data) == ["schema", "parity_version", "target", "shard", "passed", "exit_code", "elapsed_seconds",
                          "results"]
    assert data == {"schema": "parity.sweep/1", "parity_version": "9.9", "target": "zoo.toml", "shard": "1/2",
                    "passed": False, "exit_code": 4, "elapsed_seconds": None, "results": results}
    assert json.loads(json.dumps(data)) == data
    empty = sweep.SweepReport(Path("models"), None, [])
    assert (empty.exit_code, empty.passed, empty.to_dict()["target"]) == (ExitCode.PASS, True, "models")
    from parity import __version__

    assert empty.parity_version == __version__
    with pytest.raises(AttributeError):
        report.target = "other"


def test_sweep_child_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text("")
    assert sweep._absolute("a.onnx") == str(tmp_path / "a.onnx")
    assert sweep._absolute("net.py:build") == f"{tmp_path / 'net.py'}:build"
    assert sweep._absolute("pkg.models:build") == "pkg.models:build"  # imported, not opened


def test_sweep_child_does_not_import_from_the_working_directory(tmp_path, monkeypatch, add_pair):
    """`python -m` puts its working directory first on sys.path: a user's stray numpy.py
    there must not replace numpy in the pair's check."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for path in add_pair:
        (pairs / path.name).write_bytes(path.read_bytes())
    (tmp_path / "numpy.py").write_text("raise ImportError('the numpy.py of the working directory')\n")
    monkeypatch.chdir(tmp_path)
    items = sweep.discover("pairs")  # relative, as a user types it
    (result,) = sweep.run(items, pair_timeout=300)
    assert result["exit_code"] == ExitCode.PASS, result["error"]
    assert result["models"] == ["pairs/add.onnx", "pairs/add.mnn"]  # recorded as given
    assert sweep.SweepReport("pairs", None, [result]).exit_code == ExitCode.PASS


def _live_processes_under(root: Path) -> dict[int, str]:
    """Processes whose working directory is inside ``root`` (a zombie has none)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd").startswith(str(root)):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def _gone(root: Path, seconds: float = 5.0) -> bool:
    """True once no process works inside ``root`` (SIGKILL takes a moment to land)."""
    deadline = time.monotonic() + seconds
    while _live_processes_under(root):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


HANG = '''
import os
import subprocess
import time


def build():
    """A torch model that never comes: it starts a grandchild that, unlike MNN's worker, does
    not die with its parent (only a kill of the process group ends it), then hangs."""
    pid_file = os.environ.pop("PARITY_TEST_SLEEPER", None)
    if pid_file:
        sleeper = subprocess.Popen(["sleep", "300"])
        with open(pid_file, "w") as f:
            f.write(str(sleeper.pid))
    time.sleep(300)
'''


@pytest.fixture
def hanging_sweep(tmp_path, monkeypatch, add_pair):
    """Pairs whose check hangs for real: its torch model's factory sleeps (user code is the one
    thing a pair's check runs that parity does not control). Every process of the sweep works
    inside ``root``."""
    pytest.importorskip("torch")
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr("tempfile.tempdir", str(root))
    (tmp_path / "hang.py").write_text(HANG)
    onnx_path, mnn_path = add_pair
    hanging = sweep.Item("hangs", [f"{tmp_path / 'hang.py'}:build", str(onnx_path), str(mnn_path)])
    yield root, hanging
    for pid in _live_processes_under(root):  # never leave a sleeper behind, whatever failed
        os.kill(pid, signal.SIGKILL)


def test_sweep_pair_timeout_kills_the_check_and_all_it_started(hanging_sweep, monkeypatch):
    root, hanging = hanging_sweep
    monkeypatch.setenv("PARITY_TEST_SLEEPER", str(root / "sleeper.pid"))
    seen = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            for pid, cmd in _live_processes_under(root).items():
                if cmd or pid not in seen:  # an exiting process reads an empty cmdline: keep what was seen
                    seen[pid] = cmd
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        (result,) = sweep.run([hanging], pair_timeout=20)  # torch's import can take 10 s on a busy machine
    finally:
        done.set()
        watcher.join()
    assert time.monotonic() - started < 45
    assert result["exit_code"] == ExitCode.BACKEND and result["passed"] is False
    assert result["error"] == "timed out after 20 s" and result["verdict"] is None
    assert sweep.SweepReport("x", None, [result]).exit_code == ExitCode.BACKEND
    sleeper = int((root / "sleeper.pid").read_text())
    assert sleeper in seen and any("parity.checking.sweep_child" in cmd for cmd in seen.values()), seen
    deadline = time.monotonic() + 5
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(sleeper), "the check's own child must die with it (its process group)"
    assert _gone(root)


def test_interrupted_sweep_ends_its_children(hanging_sweep, add_pair):
    """Children run in sessions of their own, out of reach of the terminal's Ctrl-C: the sweep
    ends them itself."""
    root, hanging = hanging_sweep
    onnx_path, mnn_path = add_pair
    quick = sweep.Item("quick", [str(onnx_path), str(mnn_path)])
    items = [quick, hanging, sweep.Item("queued", hanging.models, hanging.options)]

    class Interrupt:
        def __call__(self, message):
            time.sleep(1.0)  # let the hanging pair get going
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sweep.run(items, jobs=2, progress=Interrupt(), pair_timeout=600)
    assert time.monotonic() - started < 60
    assert _gone(root)


CRASH = '''
import os
import signal


def build():
    """A torch model whose factory kills the process that checks it: the sweep's runner."""
    os.kill(os.getpid(), signal.SIGSEGV)
'''


def test_a_pair_that_kills_its_runner_costs_that_pair_only(tmp_path, add_pair):
    """Runners are long-lived: one killed by a pair's check (here by user code in it) is that
    pair's backend error, and the pairs after it get a new runner and pass."""
    pytest.importorskip("torch")
    (tmp_path / "crash.py").write_text(CRASH)
    onnx_path, mnn_path = map(str, add_pair)
    items = [sweep.Item("before", [onnx_path, mnn_path]),
             sweep.Item("crashes", [f"{tmp_path / 'crash.py'}:build", onnx_path, mnn_path]),
             sweep.Item("after", [onnx_path, mnn_path]), sweep.Item("later", [onnx_path, mnn_path])]
    runners = sweep.Runners()
    results = sweep.run(items, jobs=1, pair_timeout=300, runners=runners)
    assert [r["exit_code"] for r in results] == [ExitCode.PASS, ExitCode.BACKEND, ExitCode.PASS, ExitCode.PASS], results
    assert results[1]["error"].startswith("parity check ended by SIGSEGV"), results[1]
    assert not runners._all  # stopped: nothing left running


def test_the_command_line_sweep_forks_its_runners_and_replaces_a_killed_one(tmp_path, add_pair):
    """``parity sweep`` forks its runners (Runners.fork); one killed by a pair is replaced."""
    pytest.importorskip("torch")
    (tmp_path / "crash.py").write_text(CRASH)
    onnx_path, mnn_path = add_pair
    entries = "".join(f'[[model]]\nname = "{name}"\n' + (f'torch = "crash.py:build"\n' if name == "b" else "")
                      + f'onnx = "{onnx_path}"\nmnn = "{mnn_path}"\n' for name in "abcd")
    (tmp_path / "zoo.toml").write_text(entries)
    done = subprocess.run([sys.executable, "-m", "parity", "sweep", "zoo.toml", "-j", "2", "-q", "--json", "s.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    results = {r["name"]: r for r in json.loads((tmp_path / "s.json").read_text())["results"]}
    assert done.returncode == ExitCode.BACKEND, done.stderr
    assert {n: r["exit_code"] for n, r in results.items()} == {"a": 0, "b": ExitCode.BACKEND, "c": 0, "d": 0}
    assert results["b"]["error"].startswith("parity check ended by SIGSEGV"), results["b"]


def test_the_pytest_plugin_keeps_one_mnn_child_for_its_checks(add_pair):
    """assert_parity's checks share their MNN child (worker.kept_children); code outside the
    plugin never takes it."""
    from parity.backends.mnn import MnnBackend
    from parity.pytest_plugin import check_parity
    from parity.run import worker

    key = "mnn (pytest plugin)"
    for earlier in worker._POOL.pop(key, []):  # kept by other tests of this process
        earlier.close()
    check_parity(*add_pair)
    (kept,) = worker._POOL[key]
    pid = kept._proc.pid
    check_parity(*add_pair)
    assert [w._proc.pid for w in worker._POOL[key]] == [pid]  # the same child served the second check
    with MnnBackend(add_pair[1]) as backend:
        assert backend._worker._proc.pid != pid  # not the plugin's
    assert [w._proc.pid for w in worker._POOL[key]] == [pid]
    assert _alive(pid)
