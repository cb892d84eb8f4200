"""Small transformers written out in torch, exported to ONNX and converted to MNN, for tests of
``parity check ... --layers`` on models shaped like Hugging Face ones (nothing is downloaded).

Each builder writes ``<name>.onnx``, ``<name>.mnn`` and ``<name>.inputs.npz`` into ``directory``
and returns them as a :class:`Built` (a named tuple: ``onnx_path, mnn_path, inputs = build(...)``).
Models are deterministic (seeded, torch's global RNG left untouched; the ONNX files are
byte-identical across builds), ~300-400 KB each, and export plus conversion takes well under a
second each. When a builder plants a change, only the .mnn sees it: the
.onnx written is the right model, the .mnn is converted from an edited copy of it (deleted
afterwards), so parity has a real difference to find.

- :func:`build_masked_encoder`: BERT-style post-LN encoder, eager attention with Hugging Face's
  additive mask (``torch.finfo(float32).min`` at padded keys), exact GELU MLP. ``planted`` scales
  one projection's weight by 1.02 in the .mnn; :func:`projection_tensors` names the ONNX values
  of that projection, where the first divergence must lie.
- :func:`build_llama_like`: llama-style decoder (RMSNorm written out, causal mask, SiLU-gated
  MLP, Hugging Face's 0.02 initialisation). ``scale_weight=OUTPUT_ONLY_WEIGHT`` scales a weight
  whose effect fails the output's element rule (19% of the logits, worst 2.8x the tolerance)
  while every paired intermediate layer passes the (looser) layer rule (worst: 0.4 of it; the
  logits themselves use 0.55 of the layer rule).
- :func:`build_layer_only`: an intermediate layer fails the layer rule but the output passes,
  because the model masks the change out (padded positions, or a zero-initialised branch).

Import after ``pytest.importorskip("torch")``: this module imports torch.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from parity.mnn.converter import convert

OPSET = 17
SEQ = 16
VOCAB = 64
PAD_ID = 0
PADDED = 5  # the last PADDED positions of the saved inputs are padding (attention_mask 0)
FACTOR = 1.02  # what a planted weight is multiplied by

# The projection the masked encoder's tests plant a change in (an nn.Linear module path).
K_PROJ = "layers.1.attn.k_proj"
# The llama-like weight whose 1.02 scaling fails the output but no paired layer.
OUTPUT_ONLY_WEIGHT = "layers.1.self_attn.o_proj"


class Built(NamedTuple):
    onnx_path: Path
    mnn_path: Path
    inputs: Path


class Projection(NamedTuple):
    """The ONNX names of one nn.Linear as the TorchScript-based exporter writes it."""

    module: str
    weight: str  # the MatMul's initializer (the weight, transposed by constant folding)
    bias: str | None  # the Add's initializer
    matmul: str  # the MatMul's output value
    add: str | None  # the Add's output value (the module's output when it has a bias)
    nodes: tuple[str, ...]  # the ONNX node names of the module

    @property
    def values(self) -> tuple[str, ...]:
        """Every value the projection computes: where a first divergence in it is named
        (MNN fuses MatMul+Add and keeps the Add's output name)."""
        return tuple(v for v in (self.matmul, self.add) if v)


# -- torch modules -------------------------------------------------------------------------------
MASK_MIN = torch.finfo(torch.float32).min  # -3.4028235e38, as Hugging Face fills masks


def _additive_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) 1/0 -> (batch, 1, 1, seq): 0 where attended, float32 min where padded
    (transformers' ``_prepare_4d_attention_mask``)."""
    inverted = 1.0 - attention_mask[:, None, None, :].to(torch.float32)
    return inverted * MASK_MIN


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x, mask_bias):
        b, t, d = x.shape
        hd = d // self.heads
        q = self.q_proj(x).view(b, t, self.heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores + mask_bias
        probs = scores.softmax(dim=-1)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d)
        return self.o_proj(context)


class EncoderLayer(nn.Module):
    """BERT's post-LN layer: x = LN(x + attn(x)); x = LN(x + fc2(gelu(fc1(x))))."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attn = EncoderAttention(dim, heads)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf); MNN's converter uses tanh by default
        self.fc2 = nn.Linear(hidden, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x, mask_bias):
        x = self.attn_norm(x + self.attn(x, mask_bias))
        return self.mlp_norm(x + self.fc2(self.act(self.fc1(x))))


class MaskedEncoder(nn.Module):
    """input_ids (1, 16) int64, attention_mask (1, 16) int64 -> last_hidden_state (1, 16, 64);
    with ``pooled``, the masked mean over attended positions (1, 64) instead, as
    sentence-transformers pools."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128, depth: int = 2,
                 pooled: bool = False, lora_rank: int = 0):
        super().__init__()
        self.pooled = pooled
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Embedding(SEQ, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden) for _ in range(depth))
        if lora_rank:
            # a LoRA adapter fresh from initialisation: lora_b is zero, so lora_a's values never
            # reach the output (peft's default init)
            self.lora_a = nn.Linear(dim, lora_rank, bias=False)
            self.lora_b = nn.Linear(lora_rank, dim, bias=False)
            nn.init.zeros_(self.lora_b.weight)
        else:
            self.lora_a = self.lora_b = None

    def forward(self, input_ids, attention_mask):
        t = input_ids.shape[1]
        x = self.embed(input_ids) + self.position.weight[:t]
        x = self.embed_norm(x)
        mask_bias = _additive_padding_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, mask_bias)
        if self.lora_a is not None:
            x = x + self.lora_b(self.lora_a(x))
        if not self.pooled:
            return x
        weights = attention_mask[:, :, None].to(torch.float32)
        return (x * weights).sum(dim=1) / weights.sum(dim=1)


class RMSNorm(nn.Module):
    """LlamaRMSNorm written out: weight * x / sqrt(mean(x^2) + eps)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class LlamaAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, causal_mask):
        b, t, d = x.shape
        hd = d // self.heads
        q = self.q_proj(x).view(b, t, self.heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd) + causal_mask
        probs = scores.softmax(dim=-1)
        return self.o_proj(torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d))


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = LlamaMLP(dim, hidden)

    def forward(self, x, causal_mask):
        x = x + self.self_attn(self.input_layernorm(x), causal_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLlama(nn.Module):
    """input_ids (1, 16) int64 -> logits (1, 16, 64). No rotary embedding; the causal mask is a
    constant holding float32 min above the diagonal (folded into an initializer on export)."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(LlamaLayer(dim, heads, hidden) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.register_buffer("causal_mask", torch.full((SEQ, SEQ), MASK_MIN).triu(1), persistent=False)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        mask = self.causal_mask[:t, :t]
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.norm(x))


def _hf_init(model: nn.Module, std: float = 0.02) -> None:
    """Hugging Face's ``_init_weights``: normal(0, std) weights, zero biases, norms at 1/0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def _randomize_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Norm gains and biases away from 1 and 0, so they are not identities."""
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, RMSNorm)):
            module.weight.data.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
        if isinstance(module, nn.LayerNorm):
            module.bias.data.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


# -- inputs ---------------------------------------------------------------------------------------
def _token_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """input_ids in [1, VOCAB) with the last PADDED positions PAD_ID, and the matching mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(1, SEQ), dtype=np.int64)
    mask = np.ones((1, SEQ), np.int64)
    ids[:, SEQ - PADDED:] = PAD_ID
    mask[:, SEQ - PADDED:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# -- ONNX names and edits ------------------------------------------------------------------------
def _node_module(node_name: str) -> str:
    """``/layers.1/attn/k_proj/MatMul`` -> ``layers.1.attn.k_proj``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def projection_tensors(onnx_path: str | Path, module: str = K_PROJ) -> Projection:
    """The ONNX initializers, values and nodes of the nn.Linear at ``module`` (a module path such
    as ``layers.1.attn.k_proj``) in a model exported by :func:`build_masked_encoder` or
    :func:`build_llama_like`."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    nodes = [n for n in model.graph.node if _node_module(n.name) == module]
    matmuls = [n for n in nodes if n.op_type in ("MatMul", "Gemm")]
    if len(matmuls) != 1:
        raise KeyError(f"{module!r}: expected one MatMul in {onnx_path}, found "
                       f"{[n.name for n in matmuls]}")
    matmul = matmuls[0]
    weight = next(i for i in matmul.input if i in initializers)
    add = next((n for n in nodes if n.op_type == "Add" and matmul.output[0] in n.input), None)
    bias = next((i for i in add.input if i in initializers), None) if add is not None else None
    return Projection(module, weight, bias, matmul.output[0], add.output[0] if add is not None else None,
                      tuple(n.name for n in nodes))


def _resolve_initializer(onnx_path: Path, name: str) -> str:
    """An initializer name as given, or the weight of the projection at module path ``name``."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(init.name == name for init in model.graph.initializer):
        return name
    try:
        return projection_tensors(onnx_path, name).weight
    except KeyError:
        known = sorted(init.name for init in model.graph.initializer)
        raise KeyError(f"{name!r} is neither an initializer nor a projection module of {onnx_path}; "
                       f"initializers: {known}") from None


def _edit_initializer(src: Path, dst: Path, name: str, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == name:
            array = edit(numpy_helper.to_array(init).copy()).astype(numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(array, name))
            break
    else:
        raise KeyError(name)
    onnx.save(model, str(dst))
    return dst


def _export(model: nn.Module, feeds: dict[str, np.ndarray], output: str, path: Path) -> None:
    args = tuple(torch.from_numpy(a) for a in feeds.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=list(feeds), output_names=[output],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _convert(onnx_path: Path, mnn_path: Path, edit: tuple[str, Callable] | None) -> None:
    """Convert ``onnx_path``, or an edited copy of it when ``edit`` = (initializer, fn)."""
    if edit is None:
        convert(onnx_path, mnn_path)
        return
    scratch = Path(tempfile.mkdtemp(prefix="parity-edit-"))
    try:
        edited = _edit_initializer(onnx_path, scratch / onnx_path.name, *edit)
        convert(edited, mnn_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build(model: nn.Module, feeds: dict[str, np.ndarray], output: str, directory, name: str,
           edit: tuple[str, Callable] | None) -> Built:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path, mnn_path = directory / f"{name}.onnx", directory / f"{name}.mnn"
    inputs = directory / f"{name}.inputs.npz"
    _export(model.eval(), feeds, output, onnx_path)
    if edit is not None:
        edit = (_resolve_initializer(onnx_path, edit[0]), edit[1])
    _convert(onnx_path, mnn_path, edit)
    np.savez(inputs, **feeds)
    return Built(onnx_path, mnn_path, inputs)


def _scale(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda array: array * np.float32(factor)


# -- builders -------------------------------------------------------------------------------------
def masked_encoder(seed: int = 0, **kwargs) -> MaskedEncoder:
    """The torch model :func:`build_masked_encoder` exports (also a ``--torch`` factory)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedEncoder(**kwargs)
        _randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        # Attention that matters: with PyTorch's default init the residual stream dominates and
        # a 2% change of a K projection moves the output by 0.5 of its tolerance. Sharper scores
        # (q, k x2: up to ~10) and an attention branch comparable to the residual (v, o x3) make
        # it fail the output by ~4.7x (ONNX Runtime estimate) on the saved inputs.
        for layer in model.layers:
            for proj, gain in ((layer.attn.q_proj, 2.0), (layer.attn.k_proj, 2.0),
                               (layer.attn.v_proj, 3.0), (layer.attn.o_proj, 3.0)):
                proj.weight.mul_(gain)
    return model.eval()


def build_masked_encoder(directory, *, planted: str | None = None, factor: float = FACTOR,
                         name: str = "encoder") -> Built:
    """BERT-style encoder (2 post-LN layers, hidden 64, 4 heads, seq 16) with inputs
    ``input_ids`` and ``attention_mask`` (int64, the last 5 positions padded in the saved
    inputs) and output ``last_hidden_state`` (1, 16, 64).

    ``planted``: an ONNX initializer name, or an nn.Linear module path such as :data:`K_PROJ`
    (meaning its weight), multiplied by ``factor`` in the copy the .mnn is converted from.
    """
    model = masked_encoder()
    edit = (planted, _scale(factor)) if planted else None
    return _build(model, _token_inputs(), "last_hidden_state", directory, name, edit)


def llama_like(seed: int = 0) -> TinyLlama:
    """The torch model :func:`build_llama_like` exports (also a ``--torch`` factory)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyLlama()
        _hf_init(model)
        _randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        # Tuned so that OUTPUT_ONLY_WEIGHT x1.02 sits between the two rules (ONNX Runtime
        # estimate, MNN agrees to ~1e-7): logits of magnitude ~2.4 (lm_head std 0.1, as trained
        # models have larger logits than 0.02 init gives), where the element rule's tolerance is
        # 0.2% of max|r| and the layer rule's 1.2%; the last attention's output projection at
        # 0.4x its init, so the change moves the logits by ~0.65% of max|r|: 19% of the elements
        # fail (worst 2.8x the tolerance) while the worst paired layer uses 0.55 of its own.
        model.lm_head.weight.mul_(5.0)
        model.layers[-1].self_attn.o_proj.weight.mul_(0.4)
    return model.eval()


def build_llama_like(directory, *, scale_weight: str | None = None, factor: float = FACTOR,
                     name: str = "llama") -> Built:
    """Llama-style decoder (2 layers, hidden 64, 4 heads, SiLU-gated MLP 128, vocab 64):
    ``input_ids`` (1, 16) int64 -> ``logits`` (1, 16, 64). Hugging Face's 0.02 initialisation
    keeps the residual stream small (max ~0.1), where the default atol's floor (2e-3) is large;
    the RMSNorms bring it back to magnitude ~3.

    ``scale_weight``: an initializer name or module path whose weight is multiplied by
    ``factor`` in the copy the .mnn is converted from. With :data:`OUTPUT_ONLY_WEIGHT` the
    logits fail the element rule while every paired layer passes the layer rule.
    """
    model = llama_like()
    feeds = {"input_ids": _token_inputs()["input_ids"]}
    edit = (scale_weight, _scale(factor)) if scale_weight else None
    return _build(model, feeds, "logits", directory, name, edit)


def build_layer_only(directory, *, kind: str = "padding", name: str = "layer_only") -> Built:
    """A .mnn in which an intermediate layer fails the layer rule while the output passes.

    ``kind="padding"``: the masked encoder with masked-mean pooling (output ``pooled``, (1, 64));
    the embedding row of the padding token is tripled in the .mnn. Every tensor at padded
    positions differs, but the attention mask hides padded keys and the pooling drops padded
    positions, so the output is unchanged.
    ``kind="lora"``: the masked encoder with a LoRA adapter fresh from initialisation
    (``x + lora_b(lora_a(x))``, lora_b zero); ``lora_a``'s weight is multiplied by 1.5 in the
    .mnn. Its output differs, lora_b multiplies it by zero.
    """
    if kind == "padding":
        model = masked_encoder(pooled=True)
        def triple_pad_row(array):
            array[PAD_ID] *= 3.0
            return array
        edit = ("embed.weight", triple_pad_row)
        output = "pooled"
    elif kind == "lora":
        model = masked_encoder(lora_rank=8)
        edit = ("lora_a", _scale(1.5))
        output = "last_hidden_state"
    else:
        raise ValueError(f"kind must be 'padding' or 'lora', not {kind!r}")
    return _build(model, _token_inputs(), output, directory, name, edit)


# Which ONNX value a layer-only change first shows in, per kind (for the tests' assertions).
def layer_only_origin(onnx_path: str | Path, kind: str = "padding") -> tuple[str, ...]:
    """The ONNX values where :func:`build_layer_only`'s change first appears."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if kind == "padding":
        return tuple(n.output[0] for n in model.graph.node
                     if n.op_type == "Gather" and "embed.weight" in n.input)
    if kind == "lora":
        return projection_tensors(onnx_path, "lora_a").values
    raise ValueError(kind)
