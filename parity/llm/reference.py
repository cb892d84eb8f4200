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
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(model.path), trust_remote_code=trust)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(model.path), use_safetensors=True, dtype=torch.float32, trust_remote_code=trust)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()
            raise ModelError(f"transformers could not load {show(model.path)}: "
                             f"{first[0] if first else type(exc).__name__}") from None
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
    def stop_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return [int(eos)] if eos is not None else []

    # -- logits --------------------------------------------------------------------------------
    def greedy(self, prompt, steps: int):
        """The greedy continuation (``steps`` ids; no early stop, so every prompt has as many
        steps) and the logits of each step, float64 steps x vocab. Each step runs the whole
        sequence again, without a KV cache: the reference takes no shortcut, and no cache API
        (renamed across transformers versions) is needed."""
        import numpy as np
        import torch

        ids = list(prompt)
        rows, continuation = [], []
        with torch.no_grad():
            for _ in range(steps):
                out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
                row = out.logits[0, -1].double()
                rows.append(row.numpy())
                token = int(torch.argmax(row))
                continuation.append(token)
                ids.append(token)
        return continuation, np.stack(rows)
