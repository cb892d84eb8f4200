"""The per-layer view of an LLM export (parity/llm/layers.py): llm.mnn prefilled through MNN's
Module API gives MNN.llm's logits, and a fault planted in one decoder layer of the float export is
named by the conversion verdict. Tiny models built here, exported by the real llmexport, run by
the real MNN (Module API and MNN.llm) and transformers."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the torch extra is not installed")
pytest.importorskip("tokenizers", reason="the torch extra is not installed")

from parity import BackendError, VerdictKind  # noqa: E402
from parity.llm import layers  # noqa: E402
from parity.llm.check import check_llm  # noqa: E402
from parity.llm.diagnose import EXACT  # noqa: E402
from parity.llm.folders import open_pair  # noqa: E402
from parity.llm.reference import Reference  # noqa: E402
from parity.llm.runtime import MNNLLM  # noqa: E402

import llm_models  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

pytestmark += llm_models.needs_llmexport()

PROMPTS = ("The capital of France is", "def add(a, b):")


def _negate(folder, op_name, share=1.0):
    """Negate the first ``share`` of one op's 16-bit weights in llm.mnn.weight, in place (its
    byte range from llm.mnn.json), as a converter that wrote one projection wrong would."""
    ops = json.loads((folder / "llm.mnn.json").read_text())["oplists"]
    op = next(o for o in ops if o["name"] == op_name)
    offset, size = op["main"]["external"][:2]
    weights = np.fromfile(folder / "llm.mnn.weight", dtype=np.uint8)
    halves = weights[offset:offset + size].view(np.float16).copy()
    count = int(halves.size * share)
    halves[:count] = -halves[:count]
    weights[offset:offset + size] = halves.view(np.uint8)
    weights.tofile(folder / "llm.mnn.weight")


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False), ("gemma2", False)],
                         ids=["qwen2-tied-float16-embeddings", "llama-bfloat16-embeddings", "gemma2-scaled-embeddings"])
def test_the_module_path_gives_mnn_llms_logits(llm_cache, arch, tied):
    """Embeddings rebuilt by parity (float16 tied rows, bfloat16 rows, Gemma's scale left to the
    graph) and the Module API's prefill: every position's logits are MNN.llm's, whose rows come
    from a prefill and then its KV-cache decode steps."""
    model = llm_cache.model(arch, tied=tied)
    _, export = open_pair(model, llm_cache.export(model, 16))
    prompt, feed = [5, 17, 42, 99, 7, 250, 31, 64], [12, 200, 77, 3]
    with MNNLLM(export, EXACT) as mnn:
        expected = mnn.logits(prompt, feed)
    with layers.ModulePrefill(export, EXACT) as module:
        got = module.prefill(prompt + feed, ["logits"])["logits"][len(prompt) - 1:]
    assert got.shape == expected.shape
    scaled = np.max(np.abs(got - expected)) / max(1.0, np.max(np.abs(expected)))
    assert scaled < layers.MODULE_TOLERANCE, scaled
    assert (got.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.parametrize("arch,tied,given_bits,op,part", [
    ("qwen2", True, 16, "/layers.1/self_attn/v_proj/Linear", "attention"),
    ("qwen2", True, 4, "/layers.1/self_attn/o_proj/Linear", "attention"),
    ("llama", False, 16, "/layers.1/mlp/down_proj/Linear", "mlp"),
], ids=["v_proj-given-16bit", "o_proj-given-4bit", "down_proj-llama"])
def test_a_fault_in_one_layer_of_the_float_export_is_named(llm_cache, tmp_path, arch, tied, given_bits, op, part):
    """One projection of decoder layer 1 negated after export, in the float export the check uses
    as its floor: the conversion verdict names decoder layer 1 (and the block it is in), not
    layer 0, whose isolated error stays at float16's."""
    model = llm_cache.model(arch, tied=tied)
    floor = shutil.copytree(llm_cache.export(model, 16), tmp_path / "float", ignore=shutil.ignore_patterns(".done"))
    _negate(floor, op)
    given = floor if given_bits == 16 else llm_cache.export(model, given_bits)
    report = check_llm(model, given, prompts=PROMPTS, steps=4, float_export=floor, compare_weights=False)
    assert report.verdict.kind is VerdictKind.CONVERSION and report.exit_code == 1, report.verdict
    where = report.verdict.where
    assert where.startswith(f"decoder layer 1, its {part} (/blocks.1/"), where
    assert "decoder layer 0" not in where
    view = report.to_dict()["llm"]["layers"]
    assert view["consistent"] and view["module_vs_mnn_llm"] < layers.MODULE_TOLERANCE
    first, second = view["layers"]
    assert first["part"] is None and first["isolated_scaled"] < layers.LAYER_FLOOR / 5, first
    assert second["part"] == part and second["isolated_scaled"] > 10 * layers.LAYER_FLOOR, second
    assert any(line.startswith("decoder layer 1:") for line in report.verdict.evidence)


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("gemma2", False), ("qwen2", True)])
def test_a_clean_16_bit_export_has_no_layer_beyond_the_floor(llm_cache, arch, tied):
    model = llm_cache.model(arch, tied=tied)
    hf, export = open_pair(model, llm_cache.export(model, 16))
    reference = Reference(hf)
    ids = reference.tokenize(["The capital of France is Paris. def add(a, b):"])[0]
    with MNNLLM(export, EXACT) as mnn:
        row = mnn.logits(ids, [])[0]
    view = layers.view(reference, export, EXACT, ids, row, prompt=1, run="precision high")
    assert view.consistent, view.module_vs_mnn_llm
    assert len(view.figures) == 2 and view.faulty() == [] and view.where() is None
    for figure in view.figures:
        assert 0 < figure.isolated_scaled < layers.LAYER_FLOOR / 5, figure
        assert figure.attention is not None and figure.mlp is not None


def test_a_missing_weight_file_is_refused_not_run(llm_cache, tmp_path):
    """MNN given a weight file it cannot open prints a line per op and computes garbage: the
    Module API path refuses it first."""
    model = llm_cache.model("qwen2", tied=True)
    folder = shutil.copytree(llm_cache.export(model, 16), tmp_path / "out", ignore=shutil.ignore_patterns(".done"))
    (folder / "llm.mnn.weight").unlink()
    _, export = open_pair(model, llm_cache.export(model, 16))
    export = dataclasses.replace(export, path=folder)  # the same export, its weight file gone
    with layers.ModulePrefill(export, EXACT) as module, pytest.raises(BackendError, match="llm.mnn.weight"):
        module.prefill([1, 2, 3], ["logits"])


@pytest.mark.arm64
def test_float16_overflow_on_arm64_is_seen_in_the_layer_that_overflows(llm_cache):
    """A residual stream beyond float16's range after decoder layer 0 (its MLP's down projection
    made large, llm_models.large_residual), precision low on the emulated arm64 target: the
    per-layer view, run there, agrees with MNN.llm (both not finite in the same places) and puts
    the overflow in layer 0's MLP, in isolation."""
    import llm_models
    from helpers import require_arm64

    require_arm64()
    model = llm_cache.model("llama", variant="residual", edit=llm_models.large_residual)
    report = check_llm(model, llm_cache.export(model, 16), prompts=PROMPTS[:1], steps=4, target="arm64",
                       settings={"precision": "low"}, compare_weights=False)
    assert report.verdict.kind is VerdictKind.RUNTIME, report.verdict
    assert report.verdict.where.startswith("decoder layer 0"), report.verdict
    view = report.to_dict()["llm"]["layers"]
    assert view["consistent"] and view["run"].endswith("on arm64"), view
    first = view["layers"][0]
    assert first["part"] == "mlp" and first["isolated"] is None, first  # inf: null in the JSON
