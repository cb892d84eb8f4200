"""llmexport's weight quantization, imitated in torch on the reference model.

llmexport 0.0.5 (utils/torch_utils.py ``_quant_on_device``, utils/mnn_converter.py
``rebuild_linear``) quantizes each decoder layer's Linear weights and the lm_head in blocks of
``quant_block`` input columns per output row (halved until the block divides the row; 0: one
block per row), asymmetric by default: scale = (max - min) / (2^bits - 1), q = round((w - min) /
scale) clipped, w' = min + q * scale; ``--sym`` uses abs max / (2^(bits-1) - 1). The lm_head
takes ``lm_quant_bit``/``lm_quant_block``; ``--quant_config`` sets one op's bits, block and
symmetry by its op name. 16 bits is float16. The embeddings are bfloat16, or, when tied, the
lm_head's quantized table (then changing the lm_head's weight changes both here as in MNN).

Op names follow llmexport's ``unload_param``: ``/layers.N/self_attn/q_proj/Linear``,
``/layers.N/mlp/down_proj/Linear``, ``/lm/lm_head/Linear``; each is matched to the reference's
module of the same place, and kept only where the export's llm.mnn.json has that op with the
same shape (an architecture whose Linear llmexport splits or renames is not ranked, but stays
quantized in the imitation as the export quantizes it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# export_args.json switches that change the quantization beyond what is imitated here
NOT_IMITATED = ("awq", "hqq", "omni", "smooth", "gptq_path", "lora_path")
LM_HEAD = "/lm/lm_head/Linear"


@dataclass(frozen=True)
class QuantLayer:
    op: str  # llmexport's op name: "/layers.1/mlp/down_proj/Linear"
    module: str  # the reference's module: "model.layers.1.mlp.down_proj"
    bits: int  # as the export quantized it
    block: int
    symmetric: bool
    shape: tuple  # (out, in)


def quant_dequant(weight, bits: int, block: int, symmetric: bool = False):
    """``weight`` (out x in, float32) as MNN reads it back from llmexport's ``bits``-bit blocks."""
    import torch

    if bits >= 16:
        return weight.to(torch.float16).to(weight.dtype)
    oc, ic = weight.shape
    size = ic if block == 0 else block
    while ic % size:
        size //= 2
    w = weight.reshape(oc, ic // size, size)
    top = (1 << (bits - 1)) - 1
    if symmetric:
        scale = w.abs().amax(-1, keepdim=True) / top
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / safe), -top, top)
        out = torch.where(scale > 0, q * scale, torch.zeros_like(w))
    else:
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (high - low) / (2 * top + 1)
        # a block of equal values has scale 0: llmexport's division gives NaN there, which MNN
        # reads back as the block's minimum
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round((w - low) / safe), 0, 2 * top + 1)
        out = torch.where(scale > 0, low + q * scale, low.expand_as(w))
    return out.reshape(oc, ic)


def op_name(module: str) -> str | None:
    """llmexport's op name of the reference's Linear ``module``; None when it names none."""
    m = re.fullmatch(r"(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)", module)
    if m:
        return f"/layers.{m.group(1)}/{m.group(2)}/{m.group(3)}/Linear"
    return LM_HEAD if module == "lm_head" else None


def export_ops(export) -> dict | None:
    """op name -> (out, in) of each Linear the export holds (llm.mnn.json's Convolutions);
    None when the export has no llm.mnn.json."""
    path = Path(export.model_file).with_name(Path(export.model_file).name + ".json")
    if not path.is_file():
        return None
    ops = {}
    for op in json.loads(path.read_text(encoding="utf-8")).get("oplists", ()):
        common = (op.get("main") or {}).get("common") if isinstance(op.get("main"), dict) else None
        if op.get("type") == "Convolution" and isinstance(common, dict):
            ops[op.get("name")] = (int(common.get("outputCount", 0)), int(common.get("inputCount", 0)))
    return ops


def layers_of(model, export) -> tuple[list[QuantLayer], list[str], list[str]]:
    """(the export's quantized Linear layers matched to the reference's modules, the reference's
    Linear modules quantized but not rankable with why, notes on what is not imitated)."""
    import torch

    args = export.export_args or {}
    notes = [f"export_args.json sets {k}: the imitation does not model it" for k in NOT_IMITATED if args.get(k)]
    bits, block = int(args.get("quant_bit") or 4), int(args.get("quant_block", 64) or 0)
    symmetric = bool(args.get("sym"))
    per_op = _quant_config(args.get("quant_config"), notes)
    ops = export_ops(export)
    layers, skipped = [], []
    for module, linear in model.named_modules():
        if not isinstance(linear, torch.nn.Linear):
            continue
        name, shape = op_name(module), tuple(linear.weight.shape)
        if name is None or (ops is not None and ops.get(name) != shape):
            skipped.append(f"{module} ({'x'.join(map(str, shape))}): no op of that name and shape in the export")
            continue
        lm = name == LM_HEAD
        own = per_op.get(name, {})
        layers.append(QuantLayer(
            name, module, int(own.get("bits", args.get("lm_quant_bit") or bits if lm else bits)),
            int(own.get("block_size", args.get("lm_quant_block", block) if lm else block) or 0),
            bool(own.get("symmetric", symmetric)), shape))
    tied = bool(args.get("tie_word_embeddings", getattr(model.config, "tie_word_embeddings", False)))
    if tied and any(x.op == LM_HEAD for x in layers):
        notes.append(f"the embeddings are tied: MNN looks them up in {LM_HEAD}'s quantized table, so its "
                     f"rank counts both")
    else:
        skipped.append("the embeddings: bfloat16 (embeddings_bf16.bin), not quantized in blocks")
    return layers, skipped, notes


def _quant_config(path, notes: list) -> dict:
    """The per-op settings the given export was made with (its --quant_config), when readable."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        notes.append(f"the export was made with --quant_config {path}, which cannot be read here: its "
                     f"layers are imitated at the export's --quant_bit")
        return {}


class Imitation:
    """The reference model with its Linear weights quantized as the export's, in place; each
    layer can be set to other bits; everything is restored on exit. Use as a context manager."""

    def __init__(self, model, layers: list[QuantLayer], tied: bool):
        self.model, self.layers, self.tied = model, layers, tied
        self.modules = dict(model.named_modules())
        self.original: dict = {}
        self.embedding = None

    def __enter__(self) -> "Imitation":
        import torch

        with torch.no_grad():
            for layer in self.layers:
                weight = self.modules[layer.module].weight
                self.original[layer.module] = weight.data.clone()
                self.set(layer, layer.bits)
            embed = self.model.get_input_embeddings()
            if not self.tied and embed is not None:
                # llmexport writes untied embeddings as bfloat16
                self.embedding = embed.weight.data.clone()
                embed.weight.data = embed.weight.data.to(torch.bfloat16).to(embed.weight.dtype)
        return self

    def set(self, layer: QuantLayer, bits: int) -> None:
        self.modules[layer.module].weight.data = quant_dequant(
            self.original[layer.module], bits, layer.block, layer.symmetric)

    def __exit__(self, *exc) -> None:
        for module, weight in self.original.items():
            self.modules[module].weight.data = weight
        if self.embedding is not None:
            self.model.get_input_embeddings().weight.data = self.embedding

    def weight_error(self, layer: QuantLayer) -> float:
        """The layer's relative weight error at its bits: the order layers are measured in."""
        import torch

        w = self.original[layer.module]
        q = quant_dequant(w, layer.bits, layer.block, layer.symmetric)
        return float(torch.linalg.norm(w - q) / max(float(torch.linalg.norm(w)), 1e-30))
