"""What the MNN worker child runs for the per-layer view (layers.py): a prefill of an MNN-LLM
export's llm.mnn through MNN's Module API, without MNN.llm, returning any tensor by name.

llm.mnn's four inputs: ``input_ids`` takes the embeddings (float32, seq x 1 x hidden; MNN.llm
looks them up outside the graph, so parity rebuilds them here as MNN.llm does),
``attention_mask`` a float causal mask, ``position_ids`` int32, ``logits_index`` [0] for every
position's logits. The KV cache lives inside the fused attention ops and needs nothing for a
prefill. Any tensor can be an input too: the graph is then cut there, which runs one decoder
layer on a value parity gives (the reference's input to that layer).

Standard library and numpy only at import; MNN loads inside the functions.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

# The tensors of decoder layer N in llmexport's graph (the same for Qwen2, Llama, Gemma2, Phi3):
# its input (the residual stream, after any embedding scale), the attention block's and the MLP's
# outputs (before they join the residual) and the layer's output.
PATTERNS = {
    "input": "/blocks.{}/Reshape_output_0",
    "attention": "/blocks.{}/self_attn/o_proj/FakeLinear_output_0",
    "mlp": "/blocks.{}/mlp/down_proj/FakeLinear_output_0",
    "output": "/blocks.{}/Add_1_output_0",
}
INPUTS = ("input_ids", "attention_mask", "position_ids", "logits_index")
# MNN.llm's config.json words -> the runtime manager's values (memory takes ints only: a string
# is ignored silently, MNN_NOTES)
_PRECISION = {"normal": 0, "high": "high", "low": "low"}
_MEMORY = {"normal": 0, "high": 1, "low": 2}


def _files(folder: str) -> tuple[dict, dict, str, str]:
    """(config.json, llm_config.json, the model's path, the weight file's path)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    with open(os.path.join(folder, config.get("llm_config", "llm_config.json")), encoding="utf-8") as handle:
        llm_config = json.load(handle)
    model = os.path.join(folder, config.get("llm_model") or "llm.mnn")
    weight = os.path.join(folder, config.get("llm_weight") or "llm.mnn.weight")
    return config, llm_config, model, weight


def tensor_names(folder: str) -> list:
    """Every tensor name of the export's llm.mnn: from llm.mnn.json when llmexport left it, else
    from the model itself (a folder sent to a target has no JSON)."""
    _, _, model, _ = _files(folder)
    dump = model + ".json"
    if os.path.isfile(dump):
        with open(dump, encoding="utf-8") as handle:
            return list(json.load(handle).get("tensorName", ()))
    import MNN.expr as F

    return list(F.load_as_dict(model).keys())


def decoder_layers(names) -> list:
    """Per decoder layer, in order, the PATTERNS tensors the graph has ({"output": ..., ...});
    a layer without an output tensor ends the list."""
    have = set(names)
    count = 1 + max((int(m.group(1)) for m in map(re.compile(r"^/blocks\.(\d+)/").match, have) if m), default=-1)
    out = []
    for n in range(count):
        found = {role: p.format(n) for role, p in PATTERNS.items() if p.format(n) in have}
        if "output" not in found:
            break
        out.append(found)
    return out


def embeddings(folder: str, ids) -> np.ndarray:
    """What MNN.llm feeds llm.mnn's ``input_ids`` for ``ids``: float32, len(ids) x 1 x hidden.
    Untied models keep bfloat16 rows in embeddings_bf16.bin; tied ones read the lm_head's rows
    from the weight file (``tie_embeddings``: offset, scales' offset and size, bits, block),
    float16 at 16 bits, llmexport's block quantization below (MNN's diskembedding.cpp)."""
    config, llm_config, _, weight = _files(folder)
    hidden = int(llm_config["hidden_size"])
    ids = np.asarray(ids, dtype=np.int64)
    tie = llm_config.get("tie_embeddings")
    if tie and len(tie) == 5:
        rows = _tied_rows(weight, ids, hidden, *map(int, tie))
    else:
        path = os.path.join(folder, config.get("embedding_file") or "embeddings_bf16.bin")
        table = np.memmap(path, dtype=np.uint16, mode="r").reshape(-1, hidden)
        # bfloat16 is the upper half of a float32
        rows = (np.asarray(table[ids]).astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(rows.reshape(len(ids), 1, hidden), dtype=np.float32)


def _tied_rows(weight: str, ids, hidden: int, offset: int, alpha_offset: int, alpha_size: int,
               bits: int, block: int) -> np.ndarray:
    raw = np.memmap(weight, dtype=np.uint8, mode="r")
    row_bytes = hidden * bits // 8
    rows = np.stack([np.asarray(raw[offset + t * row_bytes: offset + (t + 1) * row_bytes]) for t in ids])
    if bits == 16:
        return rows.view(np.float16).astype(np.float32)
    blocks, size = (1, hidden) if block == 0 else (hidden // block, block)
    vocab = (alpha_offset - offset) * (8 // bits) // hidden
    alpha = np.frombuffer(np.asarray(raw[alpha_offset:alpha_offset + alpha_size]).tobytes(), np.float32)
    if bits == 8:
        q = rows.astype(np.float32)
    else:  # 4 bits: the high nibble first
        q = np.stack([rows >> 4, rows & 15], -1).reshape(len(ids), hidden).astype(np.float32)
    q = q.reshape(len(ids), blocks, size)
    least = -(1 << (bits - 1))
    if alpha_size != 4 * blocks * vocab:  # asymmetric: (zero, scale) pairs
        pairs = alpha.reshape(-1, blocks, 2)[ids]
        scale, zero = pairs[..., 1], pairs[..., 0] + pairs[..., 1] * least
    else:
        scale = alpha.reshape(-1, blocks)[ids]
        zero = least * scale
    return (q * scale[..., None] + zero[..., None]).reshape(len(ids), hidden)


def _module(folder: str, inputs, outputs, settings: dict):
    import MNN.nn as nn

    config, _, model, weight = _files(folder)
    # a weight file MNN cannot open only prints a line per op and gives garbage: refuse it here
    for path in (model, weight):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"the export has no {os.path.basename(path)} at {path!r}")
    merged = {**config, **settings}
    runtime = {"backend": "CPU", "numThread": int(merged.get("thread_num", 4))}
    precision = _PRECISION.get(str(merged.get("precision", "normal")), 0)
    if precision != 0:
        runtime["precision"] = precision
    runtime["memory"] = _MEMORY.get(str(merged.get("memory", "normal")), 0)
    manager = nn.create_runtime_manager((runtime,))
    manager.set_external(weight)
    return nn.load_module_from_file(model, list(inputs), list(outputs), runtime_manager=manager,
                                    rearrange=True)


def prefill(folder: str, ids: list, outputs: list, settings: dict | None = None,
            cuts: dict | None = None) -> dict:
    """One prefill of ``ids``: {name: float32 array, positions x features} for each of
    ``outputs`` ("logits", or any tensor name). ``settings``: config.json keys over the export's
    (precision, memory, thread_num). ``cuts``: {tensor name: positions x hidden} fed in place of
    what the graph computes there (the embeddings are then not needed when every path to the
    outputs is cut)."""
    import MNN.expr as F

    n = len(ids)
    cuts = dict(cuts or {})
    first = list(cuts) or ["input_ids"]
    module = _module(folder, first + list(INPUTS[1:]), outputs, settings or {})

    def var(array, dtype):
        v = F.placeholder(list(array.shape), F.NCHW, dtype)
        v.write(array)
        return v

    fed = [np.asarray(cuts[name], np.float32).reshape(1, n, -1) for name in cuts] or [embeddings(folder, ids)]
    mask = np.triu(np.full((n, n), np.finfo(np.float32).min, np.float32), 1).reshape(1, 1, n, n)
    feeds = [var(np.ascontiguousarray(a), F.float) for a in fed] + [
        var(mask, F.float), var(np.arange(n, dtype=np.int32).reshape(1, n), F.int),
        var(np.array([0], np.int32), F.int)]
    results = module.onForward(feeds)
    if len(results) != len(outputs):  # MNN returns [] rather than raise on a wrong feed
        raise RuntimeError(f"llm.mnn's prefill returned {len(results)} outputs for {len(outputs)} asked")
    out = {}
    for name, value in zip(outputs, results):
        if value.data_format == F.NC4HW4:  # packed channels: read() would give the wrong order
            value = F.convert(value, F.NCHW)
        out[name] = np.array(value.read(), dtype=np.float32).reshape(n, -1)
    return out
