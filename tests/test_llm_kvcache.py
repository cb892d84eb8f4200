"""The KV-cache check: MNN.llm decoding step by step against one prefill of the same tokens, on
tiny exports built here (real llmexport, MNN.llm, transformers).

The planted decode-path difference is MNN 3.6.1's own: ``attention_mode`` 10 (int8 keys and values
with flash attention) computes the values' scale once, from the first prefill, and clips what
later tokens bring, so after a short prompt decoding drifts while a prefill of the whole sequence
stays right (measured: scaled error 0.4 and more after an 8-token prompt; 3e-6 without it)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="the torch extra is not installed")

from parity import VerdictKind  # noqa: E402
from parity.llm.check import check_llm  # noqa: E402

import llm_models  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

pytestmark += llm_models.needs_llmexport()

SHORT = ("The capital of France is", "def add(a, b):")  # fed without the chat template: short prompts
PLANT = {"attention_mode": 10}


def _check(model, export, **kw):
    return check_llm(model, export, prompts=SHORT, steps=6, chat=False, compare_weights=False, **kw)


@pytest.mark.parametrize("arch, bits", [("qwen2", 16), ("llama", 16), ("qwen2", 4)])
def test_decode_and_prefill_agree_on_clean_exports(llm_cache, arch, bits):
    model = llm_cache.model(arch, tied=arch == "qwen2")
    report = _check(model, llm_cache.export(model, bits), settings={"precision": "high", "memory": "normal"})
    kv = report.llm["kv_cache"]
    assert kv["passed"] and kv["summary"]["error"] < 1e-4, kv
    # the prompts and one long sequence, within the model's positions
    labels = [s["label"] for s in kv["sequences"]]
    assert labels[:2] == ["prompt 1", "prompt 2"] and labels[2] == "a 256-token sequence"
    assert kv["sequences"][2]["prefill_ids"] == 248 and kv["sequences"][2]["steps"] == 8
    assert not any(f.startswith("runtime, KV cache") for f in report.findings)


def test_a_decode_path_that_differs_from_prefill_is_the_runtime_verdict_naming_the_step(llm_cache):
    model = llm_cache.model("llama")
    export = llm_cache.export(model, 16)
    report = _check(model, export, settings=PLANT)
    verdict = report.verdict
    assert report.exit_code == 1 and verdict.kind is VerdictKind.RUNTIME, verdict
    assert "KV cache" in verdict.summary and "attention_mode 10" in verdict.summary, verdict.summary
    assert verdict.where.startswith("prompt ") and "decode step" in verdict.where
    data = json.loads(report.to_json())
    kv = data["llm"]["kv_cache"]
    assert not kv["passed"] and kv["where"] == verdict.where
    # the prefill of the same tokens matches transformers: it is the cache, not the model
    prefill = next(link for link in data["llm"]["links"] if link["link"] == "transformers -> mnn-llm prefill")
    assert prefill["passed"]
    # the same export without the plant: no such verdict
    clean = _check(model, export)
    assert clean.exit_code == 0 and clean.llm["kv_cache"]["passed"], clean.verdict


def test_a_cache_difference_within_the_budget_is_a_finding(llm_cache):
    # on the tied qwen2 after an 8-token prompt the plant stays within the budget over 20 steps,
    # but decode and prefill part beyond their tolerance: the check passes and says so
    model = llm_cache.model("qwen2", tied=True)
    report = check_llm(model, llm_cache.export(model, 16), prompts=SHORT[:1], steps=20, chat=False,
                       compare_weights=False, settings=PLANT)
    assert report.verdict.kind is VerdictKind.PASS and report.exit_code == 0, report.verdict
    assert not report.llm["kv_cache"]["passed"]
    assert any(f.startswith("runtime, KV cache") and "differ from" in f for f in report.findings), report.findings
