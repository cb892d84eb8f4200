"""Documented options, each with an assertion that fails if the option were ignored: the
diagnosis's runtime and converter variants, --mnn-memory, --float-mnn, --no-attribution,
--check-stat max|median, --layer-rtol, and a target whose MNN reports another version.

Through the library (parity.check) where the CLI adds nothing; MNN, ONNX Runtime and MNN's
converter run for real on models built here."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import helper, numpy_helper

import parity
from helpers import MODELS, alter_initializer, report_json, run_json, run_parity, save_model, tensor, to_mnn
from parity.core.errors import ExitCode
from parity.core.metrics import Tolerance

CNN_ONNX, CNN_MNN = MODELS / "cnn.onnx", MODELS / "cnn.mnn"


def _links(report: dict) -> dict:
    return {f"{c.get('reference_run', c['reference'])} -> {c.get('candidate_run', c['candidate'])}": c
            for c in report["comparisons"]}


# -- the diagnosis's variants -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def floormod_model(tmp_path_factory):
    """ONNX Mod with fmod=1 (C's fmod), which MNN 3.6.1's converter turns into FLOORMOD: on
    negative values every conversion, under every setting, is wrong (a real converter bug), so
    the diagnosis runs every runtime and converter variant before the numpy reference decides."""
    d = tmp_path_factory.mktemp("floormod")
    onnx_path = save_model([helper.make_node("Mod", ["x", "d"], ["y"], fmod=1)],
                           [tensor("x", shape=[2, 8])], [tensor("y", shape=[2, 8])], d / "fmod.onnx",
                           initializers=[numpy_helper.from_array(np.full((1, 8), 0.75, np.float32), "d")])
    return onnx_path, to_mnn(onnx_path, d / "fmod.mnn")


def test_every_variant_of_the_diagnosis_runs_with_its_setting_and_is_measured(floormod_model, monkeypatch):
    from parity.mnn import converter
    from parity.backends.mnn import MnnBackend

    opened, converted = [], []
    real_init, real_convert = MnnBackend.__init__, converter.convert

    def recording_init(self, path, **options):  # a spy: MNN still runs, with what it was given
        opened.append((str(path), options))
        real_init(self, path, **options)

    def recording_convert(onnx_path, mnn_path, **kw):
        converted.append(list(kw.get("options", ())))
        return real_convert(onnx_path, mnn_path, **kw)

    monkeypatch.setattr(MnnBackend, "__init__", recording_init)
    monkeypatch.setattr(converter, "convert", recording_convert)
    onnx_path, mnn_path = floormod_model
    report = parity.check([onnx_path, mnn_path]).to_dict()
    verdict = report["verdict"]
    assert report["passed"] is False and verdict["kind"] == "conversion", verdict
    assert "FLOORMOD" in str(verdict["evidence"])  # the numpy reference of the op as converted
    # every runtime setting of the README's list opened the given file, and was measured
    on_given = [options for path, options in opened if path == str(mnn_path)]
    for setting, change in [("threads=1", {"threads": 1}), ("Winograd", {"hints": ((3, 0),)}),
                            ("precision=high", {"precision": "high"}), ("precision=low", {"precision": "low"}),
                            ("memory mode 2", {"memory": 2}), ("rearrange=True", {"rearrange": True})]:
        assert any(all(options.get(k) == v for k, v in change.items()) for options in on_given), (setting, on_given)
        entry = next(e for e in verdict["evidence"]
                     if e.get("experiment") == "runtime variant" and setting in e["setting"])
        assert entry["scaled_error"] is not None and entry["passed"] is False, entry
    # the converter variants: the converter was given each option, and each reconversion measured
    for option in (["--optimizeLevel", "0"], ["--useGeluApproximation", "0"]):
        assert option in [o[i:i + 2] for o in converted for i in range(len(o))], converted
        entry = next(e for e in verdict["evidence"]
                     if e.get("experiment") == "converter variant" and " ".join(option) in e["setting"])
        assert entry["scaled_error"] is not None and entry["passed"] is False, entry


def _first_output(path, feeds, **settings) -> np.ndarray:
    from parity.backends.mnn import MnnBackend

    with MnnBackend(path, **settings) as mnn:
        return next(iter(mnn.run(feeds).outputs.values()))


@pytest.fixture(scope="module")
def cnn_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "cnn_int8.mnn"
    parity.convert(CNN_ONNX, out, options=["--weightQuantBits", "8"])
    return out


@pytest.mark.parametrize("setting", [{"threads": 1}, {"rearrange": True}, {"hints": ((3, 0),)}, {"memory": 2}],
                         ids=["threads=1", "rearrange", "winograd-off", "memory-low"])
def test_each_runtime_setting_reaches_mnn(setting, cnn_int8):
    """The settings the diagnosis varies change MNN's numbers on x86 (at the last bits; memory
    low on an 8-bit model by ~1e-4): each is really given to MNN. Precision high and low give
    identical numbers on x86 (no float16 arithmetic): tests/test_target_arm64.py covers them."""
    model = cnn_int8 if "memory" in setting else CNN_MNN
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    plain = _first_output(model, feeds)
    assert np.array_equal(plain, _first_output(model, feeds))  # MNN repeats itself
    changed = _first_output(model, feeds, **setting)
    assert not np.array_equal(plain, changed)
    assert np.abs(plain - changed).max() < 1e-2 * np.abs(plain).max()  # the same model, other rounding


# -- compressed models: --mnn-memory, --float-mnn, --no-attribution ------------------------------------
def test_mnn_memory_normal_low_runs_each_as_its_own_link(cnn_int8):
    report = parity.check([CNN_ONNX, cnn_int8], mnn_options={"memory": "normal,low"}, attribute=False,
                          diagnose=False).to_dict()
    links = _links(report)
    assert list(links) == ["onnxruntime -> memory normal", "onnxruntime -> memory low"]
    assert [b["settings"]["memory"] for b in report["backends"][1:]] == [0, 2]
    normal, low = (links[k]["outputs"][0]["max_abs_diff"] for k in links)
    # memory low runs an 8-bit model with dynamic int8 activations: other numbers (README)
    assert normal != low and max(normal, low) < 0.01


def test_no_attribution_checks_the_compressed_file_directly(cnn_int8):
    attributed = parity.check([CNN_ONNX, cnn_int8], diagnose=False).to_dict()
    assert list(_links(attributed)) == ["onnxruntime -> float conversion", "float conversion -> 8-bit weights",
                                        "onnxruntime -> 8-bit weights"]
    direct = parity.check([CNN_ONNX, cnn_int8], attribute=False, diagnose=False).to_dict()
    (link,) = direct["comparisons"]
    assert (link["reference"], link["candidate"]) == ("onnxruntime", "mnn")
    assert link["outputs"][0]["budget"] is None  # the element tolerance judges it, not a budget


def test_float_mnn_is_the_float_conversion_attributed_against(cnn_int8, altered_cnn):
    """Given a float conversion of another ONNX (one weight changed), the float link fails:
    parity's own float conversion of cnn.onnx, used if --float-mnn were ignored, passes."""
    _, altered_float = altered_cnn
    report = parity.check([CNN_ONNX, cnn_int8], float_mnn=altered_float, diagnose=False).to_dict()
    links = _links(report)
    assert links["onnxruntime -> float conversion"]["passed"] is False
    assert any(b["model"] == str(altered_float) for b in report["backends"])
    assert report["verdict"]["kind"] != "compression"  # the float conversion is already wrong


# -- --check-stat max|median and --layer-rtol --------------------------------------------------------
@pytest.fixture(scope="module")
def one_wrong_element(tmp_path_factory):
    """y = x + c, converted after c[5] moved by 0.5, with c[0] = 1000: one error of 0.5 on a
    value near 1, while max|y| is about 1000 and the median error is 0."""
    d = tmp_path_factory.mktemp("stat")
    c = np.linspace(-1, 1, 10).astype(np.float32)
    c[0] = 1000.0
    onnx_path = save_model([helper.make_node("Add", ["x", "c"], ["y"])], [tensor("x", shape=[1, 10])],
                           [tensor("y", shape=[1, 10])], d / "add.onnx", initializers=[numpy_helper.from_array(c, "c")])
    altered = alter_initializer(onnx_path, d / "altered.onnx", "c", index=5, delta=0.5)
    feeds = {"x": np.linspace(0.1, 0.5, 10, dtype=np.float32).reshape(1, 10)}
    return onnx_path, to_mnn(altered, d / "altered.mnn"), feeds


def _passed(models, feeds, **options) -> bool:
    return parity.check(list(models), inputs=feeds, diagnose=False, **options).passed


@pytest.mark.parametrize("stat, rtol, passes", [
    ("elementwise", 1e-3, False),  # 0.5 > 1e-3 * |y5|
    ("max", 1e-3, True),  # max error 0.5 <= 1e-3 * max|y| (1000.1)
    ("max", 1e-4, False),  # 0.5 > 0.1
    ("median", 1e-4, True),  # median error 0
])
def test_check_stat_decides_by_its_statistic(one_wrong_element, stat, rtol, passes):
    onnx_path, mnn_path, feeds = one_wrong_element
    tolerance = Tolerance(atol=0.0, rtol=rtol)
    assert _passed((onnx_path, mnn_path), feeds, tolerance=tolerance, check_stat=stat) is passes


def test_check_stat_on_the_command_line_reaches_the_judge(one_wrong_element, tmp_path):
    onnx_path, mnn_path, feeds = one_wrong_element
    np.savez(tmp_path / "in.npz", **feeds)
    common = ("check", onnx_path, mnn_path, "--inputs", tmp_path / "in.npz", "--atol", "0", "--rtol", "1e-4",
              "--no-diagnose", "-q")
    assert run_parity(*common, "--check-stat", "max").code == ExitCode.MISMATCH
    result = run_json(*common, "--check-stat", "median")
    assert result.code == ExitCode.PASS, result.err
    assert any("--check-stat median" in n for n in result.json()["comparisons"][0]["outputs"][0]["notes"])


@pytest.fixture(scope="module")
def scaled_weight(tmp_path_factory):
    """y = relu(x * w) + 1 with w[3] moved by 0.05 (values near 1): the layer x * w is off by
    about 0.05, i.e. 2.5% of its largest value (about 2)."""
    d = tmp_path_factory.mktemp("layer_rtol")
    w = np.linspace(1.0, 2.0, 8).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Add", ["r", "one"], ["y"])]
    onnx_path = save_model(nodes, [tensor("x", shape=[1, 8])], [tensor("y", shape=[1, 8])], d / "mul.onnx",
                           initializers=[numpy_helper.from_array(w, "w"),
                                         numpy_helper.from_array(np.array(1, np.float32), "one")])
    altered = alter_initializer(onnx_path, d / "altered.onnx", "w", index=3, delta=0.05)
    return onnx_path, to_mnn(altered, d / "altered.mnn"), {"x": np.ones((1, 8), np.float32)}


def test_layer_rtol_sets_the_layer_rule(scaled_weight):
    onnx_path, mnn_path, feeds = scaled_weight

    def layers(**options):
        report = parity.check([onnx_path, mnn_path], inputs=feeds, layers=True, diagnose=False,
                              tolerance=Tolerance(atol=0.0, rtol=1e-3), **options).to_dict()
        comparison = report["comparisons"][0]
        assert comparison["layers"], "no layer was paired"
        return comparison

    def inner(comparison):  # the layer x * w (and its Relu); the output y is held to the element rule too
        return next(layer for layer in comparison["layers"] if layer["candidate_name"] == "r")

    default = layers()  # 10 x rtol = 1e-2: 0.05 > 1e-2 * 2
    loose = layers(layer_rtol=0.1)  # 0.05 <= 0.1 * 2
    strict = layers(layer_rtol=0.0)
    assert inner(default)["passed"] is False and inner(strict)["passed"] is False
    assert inner(loose)["passed"] is True
    assert inner(loose)["max_abs_diff"] == inner(default)["max_abs_diff"] == pytest.approx(0.05, rel=1e-3)


# -- a target whose MNN is another version -----------------------------------------------------------
def test_a_target_running_another_mnn_version_is_noted_and_its_graph_read_by_mnn(tmp_path):
    """exec: a Python whose MNN reports version 3.5.0 (a sitecustomize patches MNN.version; the
    library is this machine's). The report notes the versions, and --layers reads the graph
    through MNN on the target: the flatbuffer reader's op tables are 3.6's."""
    wrapper = tmp_path / "other-mnn"
    wrapper.mkdir()
    # patched when parity's agent imports MNN (importing it here would print MNN's banner on the
    # stdout that parity's protocol owns)
    (wrapper / "sitecustomize.py").write_text(
        "import importlib.abc, importlib.util, sys\n"
        "class OtherVersion(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name != 'MNN':\n"
        "            return None\n"
        "        sys.meta_path.remove(self)\n"
        "        spec = importlib.util.find_spec('MNN')\n"
        "        load = spec.loader.exec_module\n"
        "        def exec_module(module):\n"
        "            load(module)\n"
        "            module.version = lambda: '3.5.0'\n"
        "        spec.loader.exec_module = exec_module\n"
        "        return spec\n"
        "sys.meta_path.insert(0, OtherVersion())\n")
    target = f"exec:env PYTHONPATH={wrapper} {sys.executable}"
    checked = parity.check([CNN_ONNX, CNN_MNN], mnn_options={"target": target}, layers=True)
    assert checked.exit_code == ExitCode.PASS, checked.verdict.summary
    report = report_json(checked)
    mnn = report["backends"][-1]
    assert mnn["version"] == "3.5.0" and mnn["settings"]["platform"]["mnn"] == "3.5.0"
    import importlib.metadata

    here = importlib.metadata.version("MNN")
    notes = " ".join(report["comparisons"][0]["notes"] + report.get("notes", []))
    assert f"runs MNN 3.5.0, this machine MNN {here}" in notes, notes
    layers = report["comparisons"][0]["layers"]
    assert len(layers) > 5 and all(layer["passed"] for layer in layers)
