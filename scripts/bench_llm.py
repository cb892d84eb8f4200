"""The LLM tier of scripts/bench.py (``--tier llm``): a Qwen2-0.5B-shaped model with random weights
(hidden 896, 24 layers, 14 heads, 2 key-value heads, MLP 4864, vocabulary 32000), built and
exported once into the cache (float16 weights), then measured beside a hand-written loop in the
same run:

    (llm-a) ``parity check HF EXPORT --float-export EXPORT --steps 32`` (a passing check: no export
            and no diagnosis is timed, as the issue asks) against a loop that loads
            transformers and MNN.llm, tokenizes the same prompts, generates greedily in transformers,
            runs MNN.llm over the same tokens and computes the KL per step: target <= 1.3x
    (llm-b) ``--text`` over the bench text (4,261 tokens with this tokenizer), reported
    (llm-c) the peak memory of parity's whole process tree during (llm-a), against the two
            models' weights (transformers float32 + the export's weight file)

Each ``parity check`` runs as a user's command would (a new process: imports, loads, children).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("The capital of France is", "Write one sentence about the sea.", "def fibonacci(n):")
STEPS = 32
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=32000, max_position_embeddings=4096)
TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single "
        "step. def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2). "
        "Paris is the capital of France; Berlin is the capital of Germany. The sea is wide and deep. ")


def build(cache: Path) -> dict:
    """The model folder and its float16-weight export, made once (about 2 minutes, 2.5 GB)."""
    cache.mkdir(parents=True, exist_ok=True)
    hf = cache / "llm-qwen2-0.5b-shaped-v2"
    if not (hf / ".done").exists():
        _make_model(hf)
        (hf / ".done").touch()
    exports = {}
    for bits in (16,):
        out = cache / f"llm-qwen2-0.5b-shaped-v2-mnn-{bits}bit"
        if not (out / ".done").exists():
            from parity.llm.export import ExportSettings, export

            print(f"bench: exporting the LLM at {bits} bits (once, into {out})", flush=True)
            export(hf, out, ExportSettings(quant_bit=bits), timeout=3600)
            (out / ".done").touch()
        exports[bits] = out
    return {"hf": hf, "exports": exports}


def _make_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    print(f"bench: building a Qwen2-0.5B-shaped model with random weights in {folder}", flush=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT * 4], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE  # as the export's llm_config.json carries one
    config = AutoConfig.for_model("qwen2", tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **SHAPE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.05 if "embed" in name or "lm_head" in name else 0.02)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")

HAND_LOOP = r'''
import sys, json, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import MNN.llm as mnn_llm
hf, export, steps, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
tok = AutoTokenizer.from_pretrained(hf)
model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
llm = mnn_llm.create(export + "/config.json")
llm.set_config({"sampler_type": "greedy"})
llm.load()
def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
kls = []
for text in prompts:
    chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps,
                             output_logits=True, return_dict_in_generate=True)
    ref = np.stack([l[0].double().numpy() for l in out.logits])
    cont = out.sequences[0, len(ids):].tolist()
    llm.reset()
    rows = [np.array(llm.forward(ids).read(), dtype=np.float64).reshape(-1, ref.shape[-1])[-1]]
    for t in cont[:-1]:
        rows.append(np.array(llm.forward([t]).read(), dtype=np.float64).reshape(-1, ref.shape[-1])[-1])
    lp, lq = log_softmax(ref), log_softmax(np.stack(rows))
    kls += list((np.exp(lp) * (lp - lq)).sum(-1))
print(json.dumps({"kl_mean": float(np.mean(kls))}))
sys.stdout.flush()
import os; os._exit(0)  # MNN.llm may crash when its model is freed at exit
'''


def _run(argv: list[str], *, sample_memory: bool = False) -> tuple[float, int, str]:
    """(seconds, peak RSS of the process tree in bytes, stdout) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak = 0
    while proc.poll() is None:
        if sample_memory:
            peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench: {' '.join(argv[:4])} ... exited {proc.returncode}: {err.strip()[-800:]}")
    return seconds, peak, out


def _tree_rss(pid: int) -> int:
    """The resident memory of ``pid``'s process group (parity's children are in it)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pid:  # the process group id (field 5)
                continue
            total += int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def figures(repeat: int, cache: Path) -> list[dict]:
    built = build(cache)
    hf, e16 = str(built["hf"]), str(built["exports"][16])
    prompts_args = [a for p in PROMPTS for a in ("--prompt", p)]
    parity_argv = [sys.executable, "-m", "parity", "check", hf, e16, "--float-export", e16, "--steps", str(STEPS),
                   *prompts_args, "--quiet"]
    hand_argv = [sys.executable, "-c", HAND_LOOP, hf, e16, str(STEPS), json.dumps(PROMPTS)]
    ours, theirs, peaks = [], [], []
    for _ in range(max(1, repeat)):
        seconds, _, _ = _run(hand_argv)
        theirs.append(seconds)
        seconds, peak, _ = _run(parity_argv, sample_memory=True)
        ours.append(seconds)
        peaks.append(peak)
    ratio = statistics.median(ours) / statistics.median(theirs)
    weights = Path(hf, "model.safetensors").stat().st_size + sum(
        p.stat().st_size for p in Path(e16).iterdir() if p.name.endswith((".weight", ".bin")))
    out = [{"id": "llm-a", "name": f"parity check, {len(PROMPTS)} prompts x {STEPS} steps vs a hand-written loop",
            "measured_s": statistics.median(ours), "baseline_s": statistics.median(theirs), "ratio": ratio,
            "target": "<= 1.3x", "ok": ratio <= 1.3},
           {"id": "llm-c", "name": "peak memory of parity's process tree vs the two models' weights",
            "value": max(peaks) / 2**20, "weights": weights / 2**20, "ratio": max(peaks) / weights,
            "target": "reported", "ok": None}]
    out.append(_text_figure(hf, e16, repeat))
    return out


def _text_figure(hf: str, export: str, repeat: int) -> dict:
    """--text over 2,048 tokens, when parity has it."""
    help_text = subprocess.run([sys.executable, "-m", "parity", "check", "--help"], capture_output=True,
                               text=True).stdout
    if "--text" not in help_text:
        return {"id": "llm-b", "name": "--text over 2,048 tokens", "skipped": "this parity has no --text"}
    with tempfile.TemporaryDirectory(prefix="parity-bench-") as tmp:
        text = Path(tmp, "text.txt")
        text.write_text(TEXT * 60, encoding="utf-8")
        seconds, peak, _ = _run([sys.executable, "-m", "parity", "check", hf, export, "--text", str(text),
                                 "--quiet"], sample_memory=True)
    return {"id": "llm-b", "name": "--text over the bench text (about 2,000+ tokens)", "measured_s": seconds,
            "value": peak / 2**20, "target": "reported", "ok": None}


def print_figure(f: dict) -> None:
    if f.get("skipped"):
        print(f"({f['id']}) {f['name']}: skipped, {f['skipped']}", flush=True)
    elif f["id"] == "llm-a":
        mark = "ok" if f["ok"] else "MISSED"
        print(f"({f['id']}) {f['name']}: {f['measured_s']:.1f} s vs {f['baseline_s']:.1f} s = {f['ratio']:.2f}x, "
              f"target {f['target']}: {mark}", flush=True)
    elif f["id"] == "llm-c":
        print(f"({f['id']}) {f['name']}: {f['value']:.0f} MiB peak; weights {f['weights']:.0f} MiB "
              f"(transformers float32 + the export's files), {f['ratio']:.2f}x", flush=True)
    else:
        print(f"({f['id']}) {f['name']}: {f['measured_s']:.1f} s, peak {f['value']:.0f} MiB", flush=True)
