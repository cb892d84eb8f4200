"""The reference: the Hugging Face model in transformers (float32, safetensors only, no remote
code), its tokenizer and chat template, its greedy continuation and teacher-forced logits.

It runs in this process: torch and transformers crash nothing, and MNN is in its own child.
"""

from __future__ import annotations

from parity.core.errors import FrameworkMissing, ModelError
from parity.core.paths import show


def _transformers():
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        raise FrameworkMissing(
            "transformers" if "transformers" in str(exc) else "torch",
            "the LLM check's reference is the model in transformers: pip install 'parity[torch]'",
        ) from None
    return transformers


class Reference:
    """A Hugging Face causal LM (a ``folders.HFModel``), loaded once."""

    def __init__(self, model):
        self.model_info = model
        transformers = _transformers()
        import torch

        trust = bool(model.remote_code)  # folders.recognize refused it unless trusted
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar is noise here
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(model.path), trust_remote_code=trust)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(model.path), use_safetensors=True, dtype=torch.float32, trust_remote_code=trust)
        except Exception as exc:  # transformers' own errors too: a config its dataclasses refuse (StrictDataclass...)
            first = str(exc).strip().splitlines()
            raise ModelError(f"transformers could not load {show(model.path)}: "
                             f"{type(exc).__name__}: {first[0] if first else ''}") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.model.eval()
        self.version = transformers.__version__

    # -- the tokenizer, as an app using transformers sees it ----------------------------------
    def tokenize(self, texts, *, special: bool = True) -> list[list[int]]:
        """Ids of each text; ``special``: with the special tokens the tokenizer adds (BOS where it
        adds one). A chat-templated text is tokenized without (the template writes them, and
        ``apply_chat_template(tokenize=True)`` adds none)."""
        return [list(map(int, self.tokenizer(t, add_special_tokens=special)["input_ids"]))
                for t in texts]

    @property
    def special_tokens(self) -> list[str]:
        return list(getattr(self.tokenizer, "all_special_tokens", ()) or ())

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    def chat_prompts(self, texts) -> list[str] | None:
        """Each text as one user message, the chat template applied with a generation prompt;
        None when the tokenizer has no template."""
        if not self.chat_template:
            return None
        return [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                   add_generation_prompt=True) for t in texts]

    @property
    def max_positions(self) -> int:
        """The positions the model was made for (max_position_embeddings; 2048 when it names none)."""
        config = self.model.config
        value = getattr(config, "max_position_embeddings", None)
        if value is None:  # a multimodal config keeps its language model's under text_config
            value = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else 2048

    @property
    def stop_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return [int(eos)] if eos is not None else []

    # -- logits --------------------------------------------------------------------------------
    def greedy(self, prompt, steps: int):
        """The greedy continuation (``steps`` ids; no early stop, so every prompt has as many
        steps) and the logits of each step, float64 steps x vocab. The ids are chosen with the
        KV cache (one token per step); the logits come from one forward over the whole sequence
        without a cache, so the reference's figures take no shortcut."""
        import numpy as np
        import torch

        import inspect

        # the cache's keyword: "cache" in transformers 5.x, "past_key_values" before (deprecated since)
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        ids, continuation = list(prompt), []
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=True)
            for step in range(steps):
                token = int(torch.argmax(out.logits[0, -1]))
                continuation.append(token)
                if step + 1 < steps:
                    out = self.model(input_ids=torch.tensor([[token]], dtype=torch.long),
                                     use_cache=True, **{key: out[key]})
            full = self.model(input_ids=torch.tensor([ids + continuation[:-1]], dtype=torch.long),
                              use_cache=False).logits[0, len(ids) - 1:]
        return continuation, full.double().numpy()

    def residual_peaks(self, sequences) -> list[float]:
        """The largest magnitude of the residual stream over ``sequences`` (lists of ids): entry 0
        is what enters the first decoder layer (the embeddings, scaled as the architecture does),
        entry i the output of decoder layer i - 1. Where float16's range (65504) is first
        exceeded names the layer a float16 runtime overflows in."""
        import torch

        layers = _decoder_layers(self.model)
        if layers is None:
            return []
        peaks = [0.0] * (len(layers) + 1)

        def keep(index):
            def hook(module, args, kwargs, output):
                if index == 0:
                    x = args[0] if args else kwargs.get("hidden_states")
                    if torch.is_tensor(x):
                        peaks[0] = max(peaks[0], float(x.detach().abs().max()))
                y = output[0] if isinstance(output, (tuple, list)) else output
                if torch.is_tensor(y):
                    peaks[index + 1] = max(peaks[index + 1], float(y.detach().abs().max()))
            return hook

        handles = [layer.register_forward_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                for ids in sequences:
                    self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return peaks

    def layer_states(self, ids) -> dict:
        """A prefill of ``ids`` (no cache), seen layer by layer: {"logits": positions x vocab,
        "layers": per decoder layer {"input", "attention", "mlp", "output"}: positions x hidden}
        (the input as the layer receives it, after any embedding scale; the attention and MLP
        blocks' outputs before they join the residual stream). A block the layer lacks is absent."""
        import torch

        layers = _decoder_layers(self.model)
        states = [{} for _ in range(len(layers) if layers is not None else 0)]

        def keep(index, role):
            def hook(module, args, kwargs, output):
                if role == "output":
                    x = args[0] if args else kwargs.get("hidden_states")
                    if torch.is_tensor(x):
                        states[index]["input"] = x.detach()[0].float().numpy().copy()
                y = output[0] if isinstance(output, (tuple, list)) else output
                if torch.is_tensor(y):
                    states[index][role] = y.detach()[0].float().numpy().copy()
            return hook

        handles = []
        for i, layer in enumerate(layers or ()):
            handles.append(layer.register_forward_hook(keep(i, "output"), with_kwargs=True))
            for role, attr in (("attention", "self_attn"), ("mlp", "mlp")):
                block = getattr(layer, attr, None)
                if isinstance(block, torch.nn.Module):
                    handles.append(block.register_forward_hook(keep(i, role), with_kwargs=True))
        try:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return {"logits": out.logits[0].double().numpy(), "layers": states}


def _decoder_layers(model):
    """The model's decoder layers: ``model.model.layers`` in the common layout, else its longest
    ModuleList; None when it has none."""
    import torch

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers):
        return layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    return max(lists, key=len) if lists else None
