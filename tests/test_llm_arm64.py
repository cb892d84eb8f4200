"""The LLM check with MNN.llm on the emulated arm64 target (``--mnn-target arm64``): the export
folder is sent there and every link of the diagnosis runs there. Precision low is float16
arithmetic on that CPU, so a model whose residual stream leaves float16's range breaks there and
not on this machine; the verdict says runtime, names float16 and the decoder layer.

Needs torch, transformers and llmexport on the host (tox's arm64 env installs them) and the
target (``parity target setup arm64``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the torch extra is not installed")

import llm_models  # noqa: E402
from helpers import require_arm64, run_parity  # noqa: E402
from parity import VerdictKind  # noqa: E402
from parity.llm.check import check_llm  # noqa: E402

pytestmark = [pytest.mark.arm64, pytest.mark.torch, pytest.mark.slow]

pytestmark += llm_models.needs_llmexport()

PROMPTS = ("The capital of France is", "def add(a, b):")
STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def arm64_ready():
    require_arm64()


@pytest.fixture(scope="module")
def large(llm_cache):
    model = llm_cache.model("llama", variant="residual", edit=llm_models.large_residual)
    return model, llm_cache.export(model, 16)


def test_the_residual_stream_of_the_model_leaves_float16s_range(large):
    # the premise, measured in plain transformers: some hidden state beyond 65504 after layer 0
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(large[0])
    ids = AutoTokenizer.from_pretrained(large[0])(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    assert float(hidden[0].abs().max()) < 100 and float(hidden[1].abs().max()) > 65504


def test_it_passes_on_this_machine_and_fails_as_runtime_float16_on_arm64(large, tmp_path):
    model, export = large
    prompts = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", str(STEPS)]
    here = run_parity("check", model, export, *prompts, "--json", tmp_path / "here.json")
    assert here.code == 0, here.out + here.err

    there = run_parity("check", model, export, *prompts, "--mnn-target", "arm64", "--mnn-precision", "low",
                       "--json", tmp_path / "arm64.json", timeout=1800)
    assert there.code == 1, there.out + there.err
    report = json.loads((tmp_path / "arm64.json").read_text(encoding="utf-8"))
    verdict = report["verdict"]
    assert verdict["kind"] == "runtime", verdict
    assert "float16" in verdict["summary"] and "precision low" in verdict["summary"], verdict
    # the layer: the residual stream leaves float16's range at decoder layer 0's output
    assert "decoder layer 0" in verdict["summary"] and verdict["where"].startswith("decoder layer 0"), verdict
    assert "float16" in there.out and "decoder layer 0" in there.out
    # every link ran on the target; precision high there passes
    links = {link["run"]: link for link in report["llm"]["links"]}
    assert all(run.endswith("on arm64") for run in links), list(links)
    exact = links["precision high, memory normal, on arm64"]
    assert exact["passed"] and exact["summary"]["top1"] == 1.0
    mnn = next(b for b in report["backends"] if b["name"] == "mnn")
    assert mnn["settings"]["target"] == "arm64" and mnn["settings"]["float16_arithmetic"] is True
    assert mnn["settings"]["platform"]["machine"] == "aarch64"


def test_a_clean_export_passes_on_arm64_and_matches_this_machine(llm_cache):
    # the same export, no overflow: MNN.llm on the target agrees with transformers (precision
    # high: float32 arithmetic there too) as closely as it does here
    model = llm_cache.model("llama")
    export = llm_cache.export(model, 16)
    settings = {"precision": "high", "memory": "normal"}
    there = check_llm(model, export, prompts=PROMPTS[:1], steps=STEPS, target="arm64", settings=settings,
                      compare_weights=False)
    here = check_llm(model, export, prompts=PROMPTS[:1], steps=STEPS, settings=settings, compare_weights=False)
    assert there.exit_code == 0 and here.exit_code == 0, (there.verdict, here.verdict)
    errors = [r.llm["links"][0]["summary"]["error"] for r in (there, here)]
    assert np.isclose(errors[0], errors[1], rtol=0.05, atol=1e-4), errors
