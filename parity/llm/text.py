"""``--text FILE``: an LLM export against transformers, teacher-forced over a text in windows, as
llama.cpp's ``llama-perplexity`` (and its ``--kl-divergence`` mode) does.

The ids: the reference's tokenizer's, for both sides, so the positions align (MNN.llm's own ids of the
text are compared with them, and a difference is the tokenizer verdict, as for prompts). The text is
tokenized once without special tokens and cut into consecutive windows of ``window`` tokens, each
starting with the special tokens the tokenizer puts at a text's start (BOS where it adds one), as
llama.cpp puts BOS at each chunk's start. A remainder shorter than a window is left out (llama.cpp
does the same), unless the text holds less than one window: then the whole text is the one window.

Each window runs as one forward on both sides (transformers in float32; MNN.llm one prefill with
``all_logits`` after ``reset()``), and is scored on its second half: the logits at positions
L//2 .. L-2 against the ids that follow them, so every scored token has at least half a window of
context. The figures over every scored position: perplexity of both sides (exp of the mean negative
log-likelihood of the actual next token), KL(reference || export) mean / p99 / max, same top token,
p_lost mean and max. Only one window's logits are held at a time.

--text replaces the prompts' check (no greedy continuations, no diagnosis): its verdict is pass, or
mismatch when the figures break the budget (run without --text for the cause), or tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from parity.core.errors import UsageError
from parity.core.paths import show
from parity.llm import figures

DEFAULT_WINDOW = 512
MIN_WINDOW = 4  # two tokens of context, one scored
_ROWS_AT_ONCE = 64  # rows turned into float64 figures at a time: a real vocabulary's rows are ~1 MB each


@dataclass(frozen=True)
class Window:
    index: int
    start: int  # the first and last + 1 text token of this window (in the text's ids, prefix excluded)
    end: int
    ids: tuple  # what is fed: the prefix and the window's tokens but its last (which is only predicted)
    targets: tuple  # the ids the scored positions predict
    first: int  # the first scored position in ``ids``
    predicted: int  # where the first target is in the text's ids (positions are reported so)


def read_text(path) -> str:
    from parity.core.paths import check_input

    check_input(path, "--text")
    try:
        return open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--text {show(path)}: not readable as UTF-8 text ({exc})") from None


def window_size(given: int | None, config: dict) -> int:
    """The window: ``given``, or 512 bounded by the model's max_position_embeddings; one beyond that
    bound is refused (the model was not trained on longer contexts, and MNN.llm does not bound it)."""
    bound = config.get("max_position_embeddings") or config.get("n_positions")
    bound = int(bound) if isinstance(bound, (int, float)) and bound > 0 else None
    if given is None:
        return min(DEFAULT_WINDOW, bound or DEFAULT_WINDOW)
    if given < MIN_WINDOW or (bound is not None and given > bound):
        raise UsageError(f"--text-window {given}: give {MIN_WINDOW} to {bound or 'any length'} tokens "
                         f"(the model's max_position_embeddings)" if bound else
                         f"--text-window {given}: give at least {MIN_WINDOW} tokens")
    return given


def plan(ids, prefix, window: int) -> list[Window]:
    """The windows over the text's ``ids`` (without special tokens), each fed after ``prefix``."""
    prefix, ids = list(prefix), list(ids)
    body = window - len(prefix)
    if body < MIN_WINDOW // 2 or len(prefix) + len(ids) < MIN_WINDOW:
        raise UsageError(f"--text: {len(ids)} tokens in windows of {window}: too few to score; "
                         f"give a longer text or a larger --text-window")
    starts = range(0, len(ids) - body + 1, body) if len(ids) >= body else [0]
    out = []
    for index, start in enumerate(starts):
        tokens = prefix + ids[start:start + body]
        first = len(tokens) // 2
        out.append(Window(index, start, min(start + body, len(ids)), tuple(tokens[:-1]),
                          tuple(tokens[first + 1:]), first, start + first + 1 - len(prefix)))
    return out


@dataclass
class Tally:
    """Running figures over scored positions: sums, extremes and the KL values, never the logits."""

    kl: list = field(default_factory=list)
    nll: dict = field(default_factory=lambda: {"reference": 0.0, "candidate": 0.0})
    top1: int = 0
    top5: float = 0.0
    error: float = 0.0
    cosine_min: float = math.inf
    p_lost: float = 0.0
    p_lost_max: float = -math.inf
    nonfinite: int = 0
    abs_diff: dict = field(default_factory=lambda: {"max": 0.0, "sum": 0.0, "count": 0, "reference_absmax": 0.0})
    worst: list = field(default_factory=list)  # the positions of highest KL, with their tokens
    windows: list = field(default_factory=list)

    def add(self, window: Window, reference, candidate) -> dict:
        """Add one window's scored rows (positions x vocab, both sides); its own figures."""
        before = (len(self.kl), dict(self.nll), self.top1)
        targets = np.asarray(window.targets)
        for lo in range(0, len(targets), _ROWS_AT_ONCE):
            ref = np.asarray(reference[lo:lo + _ROWS_AT_ONCE], dtype=np.float64)
            cand = np.asarray(candidate[lo:lo + _ROWS_AT_ONCE], dtype=np.float64)
            self._rows(window, lo, ref, cand, targets[lo:lo + len(ref)])
        count = len(self.kl) - before[0]
        record = {"window": window.index + 1, "tokens": [window.start, window.end], "scored": count,
                  "kl_mean": float(np.mean(self.kl[before[0]:])),
                  "top1": (self.top1 - before[2]) / count,
                  **{f"perplexity_{side}": math.exp((self.nll[side] - before[1][side]) / count)
                     for side in self.nll}}
        self.windows.append(record)
        return record

    def _rows(self, window, lo, ref, cand, targets) -> None:
        rows = np.arange(len(targets))
        for side, x in (("reference", ref), ("candidate", cand)):
            self.nll[side] -= float(np.sum(figures.log_softmax(x)[rows, targets]))
        diff = np.abs(ref - cand)
        self.abs_diff["max"] = max(self.abs_diff["max"], float(np.max(diff)))
        self.abs_diff["sum"] += float(np.sum(diff))
        self.abs_diff["count"] += diff.size
        self.abs_diff["vocab"] = diff.shape[1]
        self.abs_diff["reference_absmax"] = max(self.abs_diff["reference_absmax"], float(np.max(np.abs(ref))))
        for step in figures.steps(ref, cand):
            step = replace(step, step=window.predicted + lo + step.step)  # the predicted token's position
            self.kl.append(step.kl)
            self.top1 += step.top1
            self.top5 += step.top5
            self.error = max(self.error, step.scaled_error)
            if math.isfinite(step.cosine):
                self.cosine_min = min(self.cosine_min, step.cosine)
            self.p_lost += step.p_lost
            self.p_lost_max = max(self.p_lost_max, step.p_lost)
            self.nonfinite += not step.finite
            self.worst = sorted([*self.worst, step], key=lambda s: -s.kl)[:5]

    def summary(self) -> figures.Summary:
        kl = np.asarray(self.kl)
        return figures.Summary(
            steps=len(kl), kl_mean=float(np.mean(kl)),
            kl_p99=float(np.percentile(kl, 99)) if np.all(np.isfinite(kl)) else math.inf,
            kl_max=float(np.max(kl)), top1=self.top1 / len(kl), top5=self.top5 / len(kl), error=self.error,
            cosine_min=self.cosine_min if math.isfinite(self.cosine_min) else math.nan,
            p_lost_max=self.p_lost_max, nonfinite=self.nonfinite)

    def perplexity(self, side: str) -> float:
        mean = self.nll[side] / len(self.kl)
        return math.exp(mean) if mean < 700 else math.inf
