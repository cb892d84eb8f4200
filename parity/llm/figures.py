"""Per-step figures of an LLM's logits against a reference's, and their summary. Pure numpy.

Each step is one next-token distribution, teacher-forced (both sides saw the same ids before it).
The summary follows llama.cpp's ``llama-perplexity --kl-divergence``: KL mean / p99 / max and the
share of steps whose top token is the same; plus parity's scaled logit error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The columns of a step, in the order reports show them.
STEP_COLUMNS = ("step", "kl", "scaled_error", "cosine", "top1", "top5", "p_lost",
                "reference_token", "candidate_token", "finite")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


@dataclass(frozen=True)
class Step:
    step: int
    kl: float  # KL(reference || candidate), nats
    scaled_error: float  # max|diff| / max(1, max|reference|): a logit error relative to the logits' scale
    cosine: float
    top1: bool  # the same top token
    top5: float  # share of the reference's top 5 among the candidate's top 5
    p_lost: float  # probability the candidate takes from the reference's top token (llama.cpp's delta p, sign flipped)
    reference_token: int
    candidate_token: int
    finite: bool = True  # False: the candidate's logits hold a NaN or an infinity (kl, error: inf)


def steps(reference: np.ndarray, candidate: np.ndarray) -> list[Step]:
    """The figures of each row (steps x vocab); a shape mismatch is a ValueError naming both."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f"logits of shape {ref.shape} (reference) and {cand.shape} (candidate) "
                         f"are not steps x vocab of the same size")
    out = []
    lp_ref, lp_cand = log_softmax(ref), log_softmax(cand)
    for i in range(ref.shape[0]):
        r, c = ref[i], cand[i]
        finite = bool(np.all(np.isfinite(c)))
        p = np.exp(lp_ref[i])
        kl = float(np.sum(p * (lp_ref[i] - lp_cand[i]))) if finite else float("inf")
        top_r, top_c = int(np.argmax(r)), int(np.argmax(c)) if finite else -1
        k = min(5, r.size)
        top5_r = set(np.argsort(-r)[:k].tolist())
        top5_c = set(np.argsort(-c)[:k].tolist()) if finite else set()
        norm = float(np.linalg.norm(r) * np.linalg.norm(c))
        out.append(Step(
            step=i,
            kl=max(kl, 0.0),  # rounding can give -1e-17
            scaled_error=float(np.max(np.abs(r - c)) / max(1.0, float(np.max(np.abs(r))))) if finite else float("inf"),
            cosine=float(np.dot(r, c) / norm) if finite and norm > 0 else float("nan"),
            top1=top_r == top_c,
            top5=len(top5_r & top5_c) / k,
            p_lost=float(p[top_r] - np.exp(lp_cand[i][top_r])) if finite else 1.0,
            reference_token=top_r,
            candidate_token=top_c,
            finite=finite,
        ))
    return out


@dataclass(frozen=True)
class Summary:
    steps: int
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1: float  # share of steps with the same top token ("same top p")
    top5: float
    error: float  # the largest scaled error
    cosine_min: float
    p_lost_max: float
    nonfinite: int = 0  # steps whose candidate logits hold a NaN or an infinity

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(all_steps) -> Summary:
    """The summary of any number of steps (of one prompt or all)."""
    all_steps = list(all_steps)
    if not all_steps:
        raise ValueError("no steps to summarize")
    kl = np.array([s.kl for s in all_steps])
    return Summary(
        steps=len(all_steps),
        kl_mean=float(np.mean(kl)),
        kl_p99=float(np.percentile(kl, 99)) if np.all(np.isfinite(kl)) else float("inf"),
        kl_max=float(np.max(kl)),
        top1=float(np.mean([s.top1 for s in all_steps])),
        top5=float(np.mean([s.top5 for s in all_steps])),
        error=float(max(s.scaled_error for s in all_steps)),
        cosine_min=float(np.nanmin([s.cosine for s in all_steps])) if any(
            np.isfinite(s.cosine) for s in all_steps) else float("nan"),
        p_lost_max=float(max(s.p_lost for s in all_steps)),
        nonfinite=sum(not s.finite for s in all_steps),
    )
