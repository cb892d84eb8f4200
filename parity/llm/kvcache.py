"""The KV cache: MNN.llm decoding step by step (with its KV cache, as the app decodes) against one
prefill of the same tokens (every position's logits at once, no cache). On a correct runtime the
two agree to float rounding (3e-6 measured at precision high, memory normal); a difference is the
runtime's own, whatever transformers says, and it has the step where it starts.

Measured on MNN 3.6.1 (tests/test_llm_kvcache.py plants one): ``attention_mode`` 10 (int8 keys and
values with flash attention) takes the values' scale from the first prefill and clips later
tokens, so decoding after a short prompt drifts while the prefill stays right. ``memory low``
rounds a single row (decode) and many rows (prefill) differently with quantized weights: a gap
of its own, which the exact settings remove.

What bounds a long prompt in MNN.llm 3.6.1: nothing in its config (``max_all_tokens`` is read but
not used, ``max_new_tokens`` bounds ``response`` only); the KV cache grows on demand. The model's
``max_position_embeddings`` is the bound parity keeps the long sequence within.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.llm import budget as budgets
from parity.llm import figures

# decode against prefill of the same tokens: float rounding apart, they are the same computation
TOLERANCE = budgets.Budget.parse("kl_max<=0.01,error<=0.05")
# config.json keys that change how MNN.llm keeps or quantizes its KV cache (named in a finding)
CACHE_KEYS = ("attention_mode", "quant_qkv", "kvcache_mmap", "reuse_kv", "chunk", "chunk_limits")
# the long sequence (positions; the model's own bound comes first): a prefill of all but its last
# LONG_DECODE ids, which are then decoded step by step, so the cache is checked deep into it
LONG = 256
LONG_DECODE = 8


@dataclass
class Sequence:
    """One sequence: decoded from ``start`` on (rows = positions start-1 .. end-1) and prefilled."""

    label: str
    start: int  # how many ids the first (prefill) call takes
    decode: np.ndarray  # rows x vocab, step by step after the first call
    prefill: np.ndarray  # the same rows from one prefill


class KVCheck:
    """Decode against prefill over some sequences, judged by ``TOLERANCE``."""

    def __init__(self, sequences: list[Sequence], settings_words: str):
        self.sequences = sequences
        self.settings_words = settings_words
        self.steps = [figures.steps(s.prefill, s.decode) for s in sequences]
        self.summary = figures.summarize(st for per in self.steps for st in per)
        self.passed = not TOLERANCE.broken(self.summary)
        self.first_out = None
        for seq, per in zip(sequences, self.steps):
            step = TOLERANCE.first_step_out(per)
            if step is not None:
                self.first_out = (seq, step)
                break

    def where(self) -> str | None:
        if self.first_out is None:
            return None
        seq, step = self.first_out
        return f"{seq.label}, decode step {step.step} (position {seq.start + step.step - 1})"

    def line(self) -> str:
        s = self.summary
        state = "agree" if self.passed else f"differ from {self.where()}"
        return (f"KV cache ({self.settings_words}): decoding step by step and one prefill of the same "
                f"tokens {state}: KL max {s.kl_max:.3g}, scaled error {s.error:.3g}, same top token "
                f"{s.top1:.0%} over {s.steps} steps of {len(self.sequences)} sequence(s)")

    def to_dict(self) -> dict:
        return {"settings": self.settings_words, "passed": self.passed, "tolerance": str(TOLERANCE),
                "summary": self.summary.to_dict(), "where": self.where(),
                "sequences": [{"label": seq.label, "prefill_ids": seq.start, "steps": len(per),
                               "error": figures.summarize(per).error, "kl_max": figures.summarize(per).kl_max}
                              for seq, per in zip(self.sequences, self.steps)]}


def long_ids(prompt_ids, continuation, limit: int) -> list[int]:
    """A long sequence from a prompt and its continuation, repeated up to ``limit`` positions."""
    base = list(prompt_ids) + list(continuation)
    out = []
    while len(out) < limit:
        out.extend(base)
    return out[:limit]


def run(mnn, prompt_ids, continuations, decode_rows, *, long_limit: int, settings_words: str) -> KVCheck:
    """In the MNN.llm child ``mnn`` (runtime.MNNLLM): each prompt's teacher-forced decode rows
    (already computed) against one prefill of prompt + continuation, and one long sequence whose
    last ids are decoded step by step after a prefill of the rest."""
    sequences = []
    for i, (ids, cont, rows) in enumerate(zip(prompt_ids, continuations, decode_rows)):
        full = mnn.prefill(list(ids) + list(cont[:-1]))
        sequences.append(Sequence(f"prompt {i + 1}", len(ids), np.asarray(rows), full[len(ids) - 1:]))
    if long_limit > 0 and prompt_ids:
        ids = long_ids(prompt_ids[0], continuations[0], long_limit)
        start = max(1, len(ids) - LONG_DECODE)
        decode = mnn.logits(ids[:start], ids[start:-1])
        sequences.append(Sequence(f"a {len(ids)}-token sequence", start, decode, mnn.prefill(ids[:-1])[start - 1:]))
    return KVCheck(sequences, settings_words)


def cache_settings(effective: dict) -> dict:
    """The settings in effect that change how the KV cache is kept (for a finding)."""
    return {k: effective[k] for k in CACHE_KEYS if k in effective}
