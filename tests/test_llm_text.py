"""``parity check HF_DIR EXPORT_DIR --text FILE``: perplexity and KL over a text in windows, against
figures this test computes itself with plain transformers and MNN.llm calls (no parity code), and the
reference's logits saved and reused by a check that then loads no transformers."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the torch extra is not installed")
pytest.importorskip("tokenizers", reason="the torch extra is not installed")


import llm_models  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

pytestmark += llm_models.needs_llmexport()

WINDOW = 256
WORDS = ("the capital of France is Paris and Germany Berlin a quick brown fox jumps over lazy dog sleeps runs "
         "into forest numbers 0 1 2 3 42 100 weather today sunny light breeze from west she said hello he "
         "replied hi there walked home together talking laughing def add return for in range print").split()

# MNN.llm, as an app calls it, in a child of the test: it crashes when its model is destroyed at exit,
# so the child writes its logits and leaves by os._exit.
MNN_CHILD = r"""
import json, os, sys
import numpy as np
import MNN.llm as llm
config, windows, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
m = llm.create(config)
m.set_config({"all_logits": True, "sampler_type": "greedy"})
m.load()
rows = {}
for i, ids in enumerate(windows):
    m.reset()
    x = np.array(m.forward(ids).read(), dtype=np.float32)
    rows[f"w{i}"] = x.reshape(len(ids), -1)
np.savez(out, **rows)
sys.stdout.flush()
os._exit(0)
"""


def _text(path, tokens_at_least=2000):
    """A deterministic text of varied sentences, with at least ``tokens_at_least`` tokens."""
    rng = random.Random(24)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
                 for _ in range(110)]
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


def _cli(*args, probe=False):
    """``python -m parity ...``; with ``probe``, through runpy in a child that then says on stderr
    whether torch or transformers were ever imported."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "120", "LC_ALL": "C.UTF-8"}
    code = ("import runpy, sys\nsys.argv = ['parity', *sys.argv[1:]]\ntry:\n"
            "    runpy.run_module('parity', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    head = ["-c", code] if probe else ["-m", "parity"]
    return subprocess.run([sys.executable, *head, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=1800)


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _by_hand(model_dir, export_dir, text_path, tmp_path):
    """Perplexity of both sides and the KL figures, from transformers and MNN.llm called directly:
    windows of WINDOW consecutive tokens (a shorter remainder left out), each fed but its last token
    and scored on positions L//2 .. L-2 against the token that follows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text_path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]  # no BOS to put first
    assert len(ids) >= 2000, len(ids)
    windows = [ids[s:s + WINDOW] for s in range(0, len(ids) - WINDOW + 1, WINDOW)]
    (tmp_path / "windows.json").write_text(json.dumps([w[:-1] for w in windows]))
    done = subprocess.run([sys.executable, "-c", MNN_CHILD, str(export_dir / "config.json"),
                           str(tmp_path / "windows.json"), str(tmp_path / "mnn.npz")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    mnn = np.load(tmp_path / "mnn.npz")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kl, nll_ref, nll_mnn = [], [], []
    for i, w in enumerate(windows):
        first = len(w) // 2
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([w[:-1]])).logits[0, first:].numpy()
        lp, lq = _log_softmax(ref), _log_softmax(mnn[f"w{i}"][first:])
        target = np.array(w[first + 1:])
        rows = np.arange(len(target))
        nll_ref += list(-lp[rows, target])
        nll_mnn += list(-lq[rows, target])
        kl += list(np.sum(np.exp(lp) * (lp - lq), axis=-1))
    return {"reference": float(np.exp(np.mean(nll_ref))), "candidate": float(np.exp(np.mean(nll_mnn))),
            "kl_mean": float(np.mean(kl)), "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(np.max(kl)),
            "scored": len(kl), "tokens": len(ids), "windows": len(windows)}


def _figures(report_path):
    text = json.loads(report_path.read_text(encoding="utf-8"))["llm"]["text"]
    return {"reference": text["reference"]["perplexity"], "candidate": text["candidate"]["perplexity"],
            **{k: text["summary"][k] for k in ("kl_mean", "kl_p99", "kl_max")},
            "scored": text["scored"], "tokens": text["tokens"], "windows": text["windows"]}


def test_text_figures_agree_with_plain_transformers_and_mnn_llm(llm_cache, tmp_path):
    model = llm_cache.model("qwen2", tied=True)
    export = llm_cache.export(model, 16)
    text = _text(tmp_path / "text.txt")
    done = _cli("check", model, export, "--text", text, "--text-window", WINDOW, "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "perplexity: transformers" in done.stdout and "mnn-llm" in done.stdout
    got, want = _figures(tmp_path / "r.json"), _by_hand(model, export, text, tmp_path)
    assert {k: got[k] for k in ("scored", "tokens", "windows")} == {k: want[k] for k in ("scored", "tokens", "windows")}
    for key in ("reference", "candidate", "kl_mean", "kl_p99", "kl_max"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), (key, got, want)
    assert want["kl_mean"] > 0 and want["reference"] > 1  # figures that can disagree


def test_saved_reference_logits_check_another_export_without_transformers(llm_cache, tmp_path):
    model = llm_cache.model("qwen2", tied=True)
    text = _text(tmp_path / "text.txt")
    saved = tmp_path / "reference.npz"
    done = _cli("check", model, llm_cache.export(model, 16), "--text", text, "--text-window", WINDOW,
                "--save-outputs", saved, "-q")
    assert done.returncode == 0 and saved.is_file(), done.stderr[-3000:]
    other = llm_cache.export(model, 4)
    fresh = _cli("check", model, other, "--text", text, "--text-window", WINDOW, "--json", tmp_path / "fresh.json")
    loaded = _cli("check", model, other, "--text", text, "--text-window", WINDOW, "--load-outputs", saved,
                  "--json", tmp_path / "loaded.json", probe=True)
    assert fresh.returncode in (0, 1) and loaded.returncode == fresh.returncode, loaded.stderr[-3000:]
    # torch and transformers never imported: no transformers model loaded, nor its tokenizer
    assert "IMPORTED False False" in loaded.stderr, loaded.stderr[-3000:]
    a, b = _figures(tmp_path / "fresh.json"), _figures(tmp_path / "loaded.json")
    assert a["kl_mean"] > 1e-4  # the 4-bit export differs: its figures are not the 16-bit one's
    for key in a:  # the saved logits are float32, as transformers gave them: the same figures
        assert b[key] == pytest.approx(a[key], rel=1e-12), (key, a, b)


def test_a_saved_file_of_another_model_text_or_window_is_refused_in_one_line(llm_cache, tmp_path):
    model = llm_cache.model("qwen2", tied=True)
    export = llm_cache.export(model, 16)
    text = _text(tmp_path / "text.txt")
    saved = tmp_path / "reference.npz"
    assert _cli("check", model, export, "--text", text, "--text-window", 64, "--save-outputs", saved,
                "-q").returncode == 0
    other_model = tmp_path / "hf"
    other_model.mkdir()
    for f in model.iterdir():
        (other_model / f.name).symlink_to(f)
    config = json.loads((model / "config.json").read_text())
    (other_model / "config.json").unlink()
    (other_model / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    other_text = tmp_path / "other.txt"
    other_text.write_text(text.read_text(encoding="utf-8") + "One more line.\n", encoding="utf-8")
    not_saved = tmp_path / "not.npz"
    not_saved.write_bytes(b"not a zip")
    cases = {"saved from another model: its config.json differ": (other_model, text, 64, saved),
             "saved for another text": (model, other_text, 64, saved),
             "saved with --text-window 64, not 32": (model, text, 32, saved),
             "is not a file of reference logits": (model, text, 64, not_saved)}
    for expected, (hf, txt, window, path) in cases.items():
        done = _cli("check", hf, export, "--text", txt, "--text-window", window, "--load-outputs", path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 3 and len(lines) == 1 and expected in lines[0], (expected, done.stderr)


def test_text_options_that_do_not_go_together_are_refused(llm_cache, tmp_path):
    model = llm_cache.model("qwen2", tied=True)
    export = llm_cache.export(model, 16)
    text = _text(tmp_path / "text.txt")
    for args, expected in ((("--text", text, "--steps", 3), "--text replaces the prompts' check"),
                           (("--save-outputs", tmp_path / "s.npz"), "goes with --text FILE"),
                           (("--text", text, "--text-window", 100000), "max_position_embeddings")):
        done = _cli("check", model, export, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, done.stderr)
