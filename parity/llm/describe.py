"""``parity inspect FOLDER`` for the LLM check's folders: what an MNN-LLM export or a Hugging Face
model folder holds, read from its files only (JSON and sizes; nothing is loaded or run)."""

from __future__ import annotations

from pathlib import Path

from parity.llm.folders import HFModel, MNNExport, recognize

# what a Hugging Face config calls the figures an MNN-LLM export's llm_config.json also gives
_HF_SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
_EXPORT_ARGS = ("quant_bit", "quant_block", "lm_quant_bit", "lm_quant_block", "sym", "tokenizer_path", "path")


def describe(folder) -> list[str]:
    """Lines describing ``folder``; ModelError (one line) when it is neither kind."""
    found = recognize(folder, trust_remote_code=True)  # describing runs no code: folders.py reads files only
    return _export_lines(found) if isinstance(found, MNNExport) else _hf_lines(found)


def _size(path: Path) -> str:
    size = path.stat().st_size if path.is_file() else 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _export_lines(export: MNNExport) -> list[str]:
    llm = export.llm_config
    lines = [f"{export.path}: an MNN-LLM export (llmexport), model type {llm.get('model_type', '?')}"]
    shape = {k: llm[k] for k in ("hidden_size", "layer_nums", "attention_type") if k in llm}
    if "tie_embeddings" in llm:  # llmexport writes the tied table's offsets there, or nothing
        shape["tied embeddings"] = "yes" if llm["tie_embeddings"] else "no"
    if shape:
        lines.append("  architecture: " + ", ".join(f"{k} {v}" for k, v in shape.items()))
    settings = export.settings()
    sampler = {k: export.config[k] for k in ("temperature", "top_k", "top_p") if k in export.config}
    lines.append("  runs as (config.json): " + ", ".join(f"{k} {v}" for k, v in settings.items())
                 + (f"; sampling {', '.join(f'{k} {v}' for k, v in sampler.items())}" if sampler else ""))
    if settings.get("memory") == "low":
        lines.append("  note: memory low runs quantized weights with dynamic int8 activations; `parity check` "
                     "compares this mode with memory normal when the export fails its budget")
    args = export.export_args or {}
    if args:
        lines.append("  exported with: " + ", ".join(f"{k} {args[k]}" for k in _EXPORT_ARGS if args.get(k) is not None))
    else:
        lines.append("  exported with: unknown (no export_args.json); the weights' bits are read from llm.mnn by "
                     "`parity inspect " + str(export.model_file) + "`")
    template = export.chat_template
    lines.append(f"  chat template: {'yes, ' + str(len(template)) + ' characters' if template else 'none'}")
    files = sorted(p for p in export.path.iterdir() if p.is_file())
    lines.append("  files: " + ", ".join(f"{p.name} {_size(p)}" for p in files))
    return lines


def _hf_lines(model: HFModel) -> list[str]:
    config = model.config
    lines = [f"{model.path}: a Hugging Face model, {model.model_type} ({', '.join(model.architectures)})"]
    shape = {k: config[k] for k in _HF_SHAPE if k in config}
    if shape:
        lines.append("  architecture: " + ", ".join(f"{k} {v}" for k, v in shape.items()))
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype:
        lines.append(f"  weights: {dtype}")
    weights = sorted(p for p in model.path.glob("*.safetensors"))
    lines.append("  safetensors: " + ", ".join(f"{p.name} {_size(p)}" for p in weights))
    if model.remote_code:
        lines.append(f"  code: {', '.join(model.remote_code)}: `parity check` refuses it without --trust-remote-code")
    return lines
