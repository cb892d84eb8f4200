"""What the MNN worker child runs for an LLM export (see runtime.py): MNN.llm's tokenizer, chat
template, and logits with its KV cache, as the app runs them.

MNN.llm may crash at interpreter exit after correct results; in a worker child that does not
matter: the parent takes each reply as it comes and kills the idle child at the end.
Standard library and numpy only at import; MNN loads inside the functions.
"""

from __future__ import annotations

import json

# One loaded model per (config, settings): loading is the slow part, and each run resets it.
_LOADED: dict = {}


def _llm(config_path: str, overrides: dict):
    key = (config_path, json.dumps(overrides, sort_keys=True))
    if key not in _LOADED:
        import os

        try:
            import MNN.llm as mnn_llm
        except ImportError as exc:
            import MNN

            raise ImportError(f"this MNN ({getattr(MNN, 'version', lambda: '?')()}) has no MNN.llm ({exc}): "
                              f"install MNN's wheel from PyPI, which has it") from None

        if not os.path.isfile(config_path):  # MNN.llm would crash on it later, not say so
            raise FileNotFoundError(f"no MNN-LLM config at {config_path!r}")

        for old in list(_LOADED):  # one model at a time: a real one holds hundreds of MB
            del _LOADED[old]
        model = mnn_llm.create(config_path)
        # every position's logits from one prefill; greedy, so nothing is sampled
        settings = {"all_logits": True, "sampler_type": "greedy", **overrides}
        if not model.set_config(settings):
            raise ValueError(f"MNN.llm refused the settings {settings}")
        model.load()
        _LOADED[key] = model
    return _LOADED[key]


def facts(config_path: str, overrides: dict) -> dict:
    """MNN's version and the settings MNN.llm runs with."""
    import MNN

    _llm(config_path, overrides)
    return {"mnn": getattr(MNN, "__version__", "?"), "overrides": overrides}


def tokenize(config_path: str, texts: list, overrides: dict | None = None) -> list:
    """MNN.llm's ids of each text, as the app's tokenizer gives them."""
    model = _llm(config_path, overrides or {})
    return [[int(i) for i in model.tokenizer_encode(t)] for t in texts]


def decode(config_path: str, ids: list, overrides: dict | None = None) -> str:
    model = _llm(config_path, overrides or {})
    return "".join(model.tokenizer_decode(int(i)) for i in ids)


def chat_prompts(config_path: str, texts: list, overrides: dict | None = None) -> list:
    """Each text as one user message with MNN.llm's chat template applied (what ``response`` feeds)."""
    model = _llm(config_path, overrides or {})
    return [model.apply_chat_template(t) for t in texts]


def logits(config_path: str, prompt: list, feed: list, overrides: dict | None = None):
    """Teacher-forced logits, float32 (1 + len(feed)) x vocab: row 0 after a prefill of ``prompt``,
    then one decode step (KV cache, as the app decodes) per id of ``feed``, the reference's
    continuation, so the steps stay aligned with the reference's after a top-1 flip."""
    import numpy as np

    model = _llm(config_path, overrides or {})
    model.reset()
    rows = []
    out = np.array(model.forward([int(i) for i in prompt]).read(), dtype=np.float32)
    rows.append(out.reshape(-1, out.shape[-1])[-1].copy())
    for token in feed:
        out = np.array(model.forward([int(token)]).read(), dtype=np.float32)
        rows.append(out.reshape(-1, out.shape[-1])[-1].copy())
    return np.stack(rows)


def prefill(config_path: str, ids: list, overrides: dict | None = None):
    """One prefill of ``ids``, every position's logits (float32, len(ids) x vocab): what decoding
    with the KV cache must reproduce row by row."""
    import numpy as np

    model = _llm(config_path, overrides or {})
    model.reset()
    out = np.array(model.forward([int(i) for i in ids]).read(), dtype=np.float32)
    model.reset()
    return out.reshape(-1, out.shape[-1])


def greedy(config_path: str, prompt: list, steps: int, overrides: dict | None = None,
           stop: list | None = None):
    """MNN.llm's own greedy continuation (``steps`` ids, or up to a stop id) and its logits."""
    import numpy as np

    model = _llm(config_path, overrides or {})
    model.reset()
    out = np.array(model.forward([int(i) for i in prompt]).read(), dtype=np.float32)
    row = out.reshape(-1, out.shape[-1])[-1]
    ids = []
    for _ in range(steps):
        token = int(np.argmax(row))
        ids.append(token)
        if stop and token in stop:
            break
        out = np.array(model.forward([token]).read(), dtype=np.float32)
        row = out.reshape(-1, out.shape[-1])[-1]
    return ids


def all_logits(config_path: str, ids: list, first: int = 0, overrides: dict | None = None):
    """One prefill of ``ids`` after ``reset()``, every position's logits kept (``all_logits``):
    float32 rows ``first`` .. len(ids) - 1 (the positions --text scores; fewer rows cross the pipe).
    An export whose config sets ``chunk`` returns only its last block's rows: that is refused,
    as those rows would be misaligned with the ids."""
    import numpy as np

    from parity.core.errors import ModelError

    model = _llm(config_path, overrides or {})
    model.reset()
    out = np.array(model.forward([int(i) for i in ids]).read(), dtype=np.float32)
    rows = out.reshape(-1, out.shape[-1])
    if rows.shape[0] != len(ids):
        raise ModelError(f"MNN.llm returned {rows.shape[0]} rows of logits for {len(ids)} ids (a 'chunk' "
                         f"setting in config.json returns only the last block): remove it for --text")
    return rows[first:].copy()
