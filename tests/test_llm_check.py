"""The LLM check on tiny models built here, exported by the real llmexport, run by the real MNN.llm
and transformers. Exports are made once per session (the ``llm_cache`` fixture)."""

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the torch extra is not installed")
pytest.importorskip("tokenizers", reason="the torch extra is not installed")

import llm_models  # noqa: E402
import parity  # noqa: E402
from parity import ModelError, VerdictKind  # noqa: E402
from parity.core.report import Report  # noqa: E402
from parity.llm.check import check_llm  # noqa: E402
from parity.llm.export import ExportSettings, export  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

pytestmark += llm_models.needs_llmexport()

PROMPTS = ("The capital of France is", "def add(a, b):")
STEPS = 6


def check(hf, out, **kw):
    return check_llm(hf, out, prompts=PROMPTS, steps=STEPS, **kw)


def test_the_export_runs_no_pip_and_changes_no_package(tmp_path, monkeypatch, llm_cache):
    # a pip first on the caller's PATH that records any run: llmexport's MNN.tools would call it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "pip-ran.txt"
    for name in ("pip", "pip3"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {record}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    before = sorted((d.metadata["Name"], d.version) for d in metadata.distributions())
    model = llm_cache.model("qwen2", tied=True)
    result = export(model, tmp_path / "out", ExportSettings(quant_bit=16))
    after = sorted((d.metadata["Name"], d.version) for d in metadata.distributions())
    assert not record.exists(), record.read_text()
    assert before == after
    # whatever llmexport or MNN tried (MNN's logger asks a server for credentials), the sandbox
    # refused it: a network access or pip, nothing else
    assert all(line.startswith(("network:", "pip")) for line in result.refused), result.refused
    assert (result.path / "llm.mnn").is_file() and (result.path / "config.json").is_file()


def test_a_16_bit_export_passes_with_per_step_figures(llm_cache):
    model = llm_cache.model("qwen2", tied=True)
    report = check(model, llm_cache.export(model, 16))
    assert report.verdict.kind is VerdictKind.PASS, report.verdict
    data = json.loads(report.to_json())
    assert Report.from_dict(data).llm == data["llm"]
    (link,) = data["llm"]["links"]
    assert len(link["prompts"]) == len(PROMPTS) and all(len(p) == STEPS for p in link["prompts"])
    step = link["prompts"][0][0]
    assert {"kl", "top1", "scaled_error", "cosine", "top5", "p_lost"} <= set(step)
    # float16 weights against float32 transformers: tiny, not zero
    assert 0 < link["summary"]["error"] < 0.01 and link["summary"]["top1"] == 1.0
    # MNN.llm's own greedy continuation is the reference's
    for p in data["llm"]["prompts"]:
        assert p["candidate_ids"] == p["reference_ids"] and len(p["reference_ids"]) == STEPS


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi3"])
def test_other_architectures_at_16_bits_pass(llm_cache, arch):
    model = llm_cache.model(arch)
    report = check(model, llm_cache.export(model, 16), compare_weights=False)
    assert report.verdict.kind is VerdictKind.PASS, report.verdict


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi3"])
def test_other_architectures_at_8_and_4_bits_pass_or_name_compression_or_runtime(llm_cache, arch):
    model = llm_cache.model(arch)
    floor = llm_cache.export(model, 16)
    for bits in (8, 4):
        report = check(model, llm_cache.export(model, bits), float_export=floor, compare_weights=False)
        kind = report.verdict.kind
        assert kind in (VerdictKind.PASS, VerdictKind.COMPRESSION, VerdictKind.RUNTIME), (bits, report.verdict)
        assert report.exit_code == (0 if kind is VerdictKind.PASS else 1)
        data = json.loads(report.to_json())
        given = data["llm"]["links"][0]
        assert given["run"].startswith("precision low, memory low"), given["run"]
        steps = [s for per in given["prompts"] for s in per]
        assert len(steps) == len(PROMPTS) * STEPS
        assert all(s["kl"] is not None and s["kl"] >= 0 and s["scaled_error"] > 0 and isinstance(s["top1"], bool)
                   for s in steps), steps[:2]
        if kind is not VerdictKind.PASS:  # the diagnosis ran the float floor, which passes
            floor_link = next(link for link in data["llm"]["links"] if link["link"].endswith("float export"))
            assert floor_link["passed"], floor_link["summary"]


def test_an_exec_target_gives_the_local_figures(llm_cache):
    """--mnn-target for an LLM pair: the export folder is sent to the target's Python (here this
    machine's own, started as a command) and MNN.llm runs there: the same logits as locally."""
    model = llm_cache.model("llama")
    export = llm_cache.export(model, 16)
    target = f"exec:{sys.executable}"
    local = check(model, export, compare_weights=False)
    remote = check(model, export, compare_weights=False, target=target)
    assert local.exit_code == remote.exit_code == 0, (local.verdict, remote.verdict)
    figures = [[(s["kl"], s["scaled_error"], s["top1"]) for per in r.llm["links"][0]["prompts"] for s in per]
               for r in (local, remote)]
    assert figures[0] == figures[1]
    assert remote.llm["links"][0]["run"].endswith(f"on {target}")
    mnn = next(b for b in remote.backends if b.name == "mnn")
    assert mnn.settings["target"] == target and mnn.settings["platform"]["machine"]


def test_a_4_bit_export_costs_more_than_the_16_bit_one_and_says_why(llm_cache):
    model = llm_cache.model("qwen2", tied=True)
    float_export = llm_cache.export(model, 16)
    strict = "kl_mean<=0.001"  # tiny random models' logits are flat: a strict budget to see the cause
    report4 = check(model, llm_cache.export(model, 4), budget=strict, float_export=float_export,
                    compare_weights=False)
    report16 = check(model, float_export, budget=strict)
    kl = {bits: r.llm["links"][0]["summary"]["kl_mean"] for bits, r in ((4, report4), (16, report16))}
    assert kl[4] > 100 * kl[16], kl
    assert report4.verdict.kind in (VerdictKind.COMPRESSION, VerdictKind.RUNTIME), report4.verdict
    assert report4.exit_code == 1
    # the diagnosis ran the float export and the exact runtime settings
    names = [link["link"] for link in report4.llm["links"]]
    assert "transformers -> mnn-llm float export" in names


def test_quantized_exports_at_the_default_budget_pass_or_name_compression_or_runtime(llm_cache):
    model = llm_cache.model("qwen2", tied=True)
    report = check(model, llm_cache.export(model, 8), float_export=llm_cache.export(model, 16),
                   compare_weights=False)
    assert report.verdict.kind in (VerdictKind.PASS, VerdictKind.COMPRESSION, VerdictKind.RUNTIME)


def test_outlier_columns_at_4_bits_are_compression(llm_cache):
    model = llm_cache.model("qwen2", tied=True, variant="outliers", edit=llm_models.outlier_columns)
    report = check(model, llm_cache.export(model, 4), compare_weights=False)
    assert report.verdict.kind is VerdictKind.COMPRESSION and report.exit_code == 1, report.verdict
    floor = next(link for link in report.llm["links"] if link["link"].endswith("float export"))
    assert floor["passed"] and floor["summary"]["kl_mean"] < 1e-3


def test_an_export_with_another_tokenizer_is_the_tokenizer_verdict(llm_cache, tmp_path_factory):
    model = llm_cache.model("qwen2", tied=True)
    other = llm_models.other_tokenizer_folder(tmp_path_factory.mktemp("tok"))
    out = llm_cache.export(model, 16, tokenizer_path=other, variant="othertok")
    report = parity.check_llm(model, out, prompts=PROMPTS, steps=STEPS)  # the public API's LLM check
    assert report.verdict.kind is VerdictKind.TOKENIZER and report.exit_code == 1
    differing = report.llm["tokenizer"]["differing"]
    first = next(d for d in differing if d["label"] == "prompt 1")
    i = first["first_difference"]
    assert first["reference_ids"][:i] == first["candidate_ids"][:i]
    assert first["reference_ids"][i] != first["candidate_ids"][i]
    assert f"position {i}" in report.verdict.summary and str(first["reference_ids"][i]) in report.verdict.summary


def test_a_changed_chat_template_is_the_tokenizer_verdict(llm_cache, tmp_path):
    model = llm_cache.model("qwen2", tied=True)
    out = shutil.copytree(llm_cache.export(model, 16), tmp_path / "out")
    config = json.loads((out / "llm_config.json").read_text())
    config["jinja"]["chat_template"] = config["jinja"]["chat_template"].replace("<|im_start|>", "<|im_start|> ")
    (out / "llm_config.json").write_text(json.dumps(config))
    report = check(model, out)
    assert report.verdict.kind is VerdictKind.TOKENIZER and report.exit_code == 1
    assert "chat template" in report.verdict.summary and "'<|im_start|> user" in report.verdict.summary


def test_weights_changed_after_export_are_conversion_naming_the_layer(llm_cache, tmp_path):
    model = llm_cache.model("qwen2", tied=True)
    out = shutil.copytree(llm_cache.export(model, 16), tmp_path / "out")
    ops = json.loads((out / "llm.mnn.json").read_text())["oplists"]
    target = next(op for op in ops if op["name"] == "/layers.1/mlp/up_proj/Linear")
    offset, size = target["main"]["external"][:2]
    weights = np.fromfile(out / "llm.mnn.weight", dtype=np.uint8)
    halves = weights[offset:offset + size].view(np.float16).copy()
    halves[:4000] = -halves[:4000]  # a few thousand 16-bit weights negated
    weights[offset:offset + size] = halves.view(np.uint8)
    weights.tofile(out / "llm.mnn.weight")
    report = check(model, out)  # the default budget
    assert report.verdict.kind is VerdictKind.CONVERSION and report.exit_code == 1, report.verdict
    assert report.verdict.where == "/layers.1/mlp/up_proj/Linear"


def test_remote_code_is_refused_before_anything_runs(llm_cache, tmp_path):
    model = shutil.copytree(llm_cache.model("qwen2", tied=True), tmp_path / "hf",
                            ignore=shutil.ignore_patterns(".done"))
    (model / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(ModelError, match="modeling_evil.py"):
        check(model, llm_cache.export(llm_cache.model("qwen2", tied=True), 16))


def test_without_transformers_the_reference_is_framework_missing():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from parity.llm.reference import _transformers\n"
            "try:\n    _transformers()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    assert out.stdout.startswith("FrameworkMissing transformers is not installed"), out
    assert "parity[torch]" in out.stdout


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "120", "LC_ALL": "C.UTF-8"}
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=1800)


def test_the_cli_checks_a_pair_of_folders_and_writes_its_reports(llm_cache, tmp_path):
    """`parity check HF_DIR EXPORT_DIR`: the terminal report, the JSON with per-step figures, the
    HTML and JUnit reports, exit 0 on a 16-bit export."""
    model = llm_cache.model("qwen2", tied=True)
    out = llm_cache.export(model, 16)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nThe capital of France is\n\n", encoding="utf-8")
    done = _cli("check", model, out, "--prompts", prompts, "--prompt", "def add(a, b):", "--steps", 3,
                "--json", tmp_path / "r.json", "--html", tmp_path / "r.html", "--junit", tmp_path / "r.xml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pass" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["verdict"]["kind"] == "pass"
    assert report["llm"], report.keys()
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "<testsuite" in (tmp_path / "r.xml").read_text(encoding="utf-8")


def test_the_cli_refuses_llm_options_on_model_files_and_a_folder_of_neither_kind(tmp_path):
    from helpers import MODELS

    done = _cli("check", MODELS / "cnn.onnx", MODELS / "cnn.mnn", "--steps", 3)
    assert done.returncode == 2 and "--steps is for a Hugging Face folder" in done.stderr, done.stderr
    hf, other = tmp_path / "hf", tmp_path / "other"
    hf.mkdir()
    other.mkdir()
    (hf / "config.json").write_text("{}", encoding="utf-8")
    done = _cli("check", hf, other)
    assert done.returncode == 3 and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("damage, keep", [("embeddings_bf16.bin", 1 / 3), ("tokenizer.mtok", 0)])
def test_an_export_with_a_damaged_file_is_exit_3_not_a_compression_loss_nor_a_crash(llm_cache, tmp_path, damage,
                                                                                       keep):
    """Cut short, the embeddings file was read as zeros (a 'compression' verdict); an empty
    tokenizer crashed MNN.llm (SIGSEGV, exit 4): both are the export's fault, said in one line."""
    model = llm_cache.model("qwen2")
    out = shutil.copytree(llm_cache.export(model, 8), tmp_path / "out")
    damaged = out / damage
    assert damaged.is_file(), sorted(p.name for p in out.iterdir())  # llmexport's file names
    damaged.write_bytes(damaged.read_bytes()[: int(damaged.stat().st_size * keep)])
    done = _cli("check", model, out, "--steps", 2)
    assert done.returncode == 3 and len(done.stderr.strip().splitlines()) == 1, done.stdout[-2000:] + done.stderr
    assert damage in done.stderr and "compression" not in done.stdout, done.stderr


def test_steps_beyond_the_model_s_positions_are_refused_before_any_run(llm_cache):
    """--steps 100000 ran transformers for minutes and kept steps x vocab float64 logits."""
    model = llm_cache.model("qwen2")
    with pytest.raises(parity.UsageError, match="max_position_embeddings"):
        check_llm(model, llm_cache.export(model, 8), prompts=PROMPTS, steps=100_000)


def test_the_pytest_fixture_checks_an_llm_pair(llm_cache):
    from parity.pytest_plugin import check_parity

    model = llm_cache.model("llama")
    report = check_parity(model, llm_cache.export(model, 16), prompts=PROMPTS[:1], steps=3, compare_weights=False)
    assert report.passed and report.llm["links"]
    # a failing pair fails the test with the rendered report (a strict budget on a 4-bit export)
    with pytest.raises(pytest.fail.Exception, match="parity: compression"):
        check_parity(model, llm_cache.export(model, 4), prompts=PROMPTS[:1], steps=3, budget="kl_mean<=1e-6",
                     float_export=llm_cache.export(model, 16), compare_weights=False)
    with pytest.raises(parity.UsageError, match="budget="):
        check_parity(model, llm_cache.export(model, 16), atol=1e-3)


def test_a_sweep_manifest_takes_llm_pairs_with_their_options(llm_cache, tmp_path):
    model = llm_cache.model("llama")
    (tmp_path / "prompts.txt").write_text("The capital of France is\n", encoding="utf-8")
    from helpers import MODELS

    manifest = tmp_path / "zoo.toml"
    manifest.write_text(
        f'[[model]]\nname = "cnn"\nonnx = "{MODELS / "cnn.onnx"}"\nmnn = "{MODELS / "cnn.mnn"}"\n\n'
        f'[[model]]\nname = "llama-16"\nhuggingface = "{model}"\nmnn_llm = "{llm_cache.export(model, 16)}"\n'
        f'steps = 3\nprompts = "prompts.txt"\n\n'
        f'[[model]]\nname = "llama-4"\nhuggingface = "{model}"\nmnn_llm = "{llm_cache.export(model, 4)}"\n'
        f'steps = 3\nprompts = "prompts.txt"\nbudget = "kl_mean<=1e-6"\n'
        f'float_export = "{llm_cache.export(model, 16)}"\n', encoding="utf-8")
    done = _cli("sweep", manifest, "-j", 2, "--json", tmp_path / "s.json", "--junit", tmp_path / "s.xml")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    results = {r["name"]: r for r in json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["results"]}
    assert results["cnn"]["exit_code"] == 0 and results["llama-16"]["exit_code"] == 0
    assert results["llama-4"]["exit_code"] == 1
    junit = (tmp_path / "s.xml").read_text(encoding="utf-8")
    assert junit.count("<testcase") == 3 and junit.count("<failure") == 1
    # half a language model's pair, or one mixed with model files, is one line
    manifest.write_text(f'[[model]]\nhuggingface = "{model}"\nonnx = "{MODELS / "cnn.onnx"}"\n', encoding="utf-8")
    done = _cli("sweep", manifest)
    assert done.returncode == 3 and "takes both huggingface and mnn_llm" in done.stderr, done.stderr
