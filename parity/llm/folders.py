"""What a folder is: a Hugging Face causal LM, an MNN-LLM export (llmexport's output), or neither.

Only files are read here (JSON, names), never code: a Hugging Face folder that would run its own
Python (``auto_map`` in its config, or ``.py`` files) is refused unless the caller trusts it,
because llmexport loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from parity.backends.base import check_weights_file
from parity.core.errors import ModelError
from parity.core.paths import check_input, show

# Tokenizer files transformers reads; one is enough.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
# An MNN-LLM export's files, as llmexport writes them (config.json names the model files).
EXPORT_FILES = ("config.json", "llm_config.json")


@dataclass(frozen=True)
class HFModel:
    """A Hugging Face causal-LM folder."""

    path: Path
    model_type: str
    architectures: tuple
    config: dict = field(repr=False, default_factory=dict)
    remote_code: tuple = ()  # why it would run its own code: "auto_map", "modeling_x.py", ...

    @property
    def kind(self) -> str:
        return "huggingface"


@dataclass(frozen=True)
class MNNExport:
    """An MNN-LLM folder: config.json (runtime settings) and llm_config.json (architecture)."""

    path: Path
    config: dict = field(repr=False)  # config.json: runtime settings and file names
    llm_config: dict = field(repr=False)  # llm_config.json: model_type, chat template, ...
    export_args: dict | None = field(repr=False, default=None)  # export_args.json when present

    @property
    def kind(self) -> str:
        return "mnn-llm"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def model_file(self) -> Path:
        return self.path / (self.config.get("llm_model") or "llm.mnn")

    @property
    def weight_file(self) -> Path:
        return self.path / (self.config.get("llm_weight") or "llm.mnn.weight")

    @property
    def quant_bit(self) -> int | None:
        """The weights' bits, from export_args.json (llmexport writes it); None when unknown."""
        args = self.export_args or {}
        bit = args.get("quant_bit")
        return int(bit) if isinstance(bit, (int, float)) and not isinstance(bit, bool) and 1 <= bit <= 64 else None

    @property
    def chat_template(self) -> str | None:
        jinja = self.llm_config.get("jinja") or {}
        template = jinja.get("chat_template") if isinstance(jinja, dict) else None
        return template if isinstance(template, str) else None

    def runtime_files(self) -> list[str]:
        """The files MNN.llm may read, to send to a target: the folder's own files but for the
        exporter's by-products (the model as JSON and ONNX, export_args.json) and hidden ones."""
        skip = ("llm.mnn.json", "export_args.json")
        return sorted(p.name for p in self.path.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.name not in skip
                      and ".onnx" not in p.name)

    def settings(self) -> dict:
        """The runtime settings the app runs with (config.json), as the report shows them."""
        keys = ("backend_type", "precision", "memory", "thread_num", "sampler_type")
        return {k: self.config[k] for k in keys if k in self.config}


def _read_json(path: Path, folder: Path) -> dict:
    check_input(path, "the file", error=ModelError)  # never opened if a FIFO: it would block
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{show(path)} in {show(folder)} is not readable JSON ({exc}); "
                         f"re-export or re-download the model") from None
    if not isinstance(data, dict):
        raise ModelError(f"{show(path)} in {show(folder)} is JSON but not an object; "
                         f"re-export or re-download the model")
    return data


def recognize(path, *, trust_remote_code: bool = False) -> HFModel | MNNExport:
    """The folder at ``path`` as an ``HFModel`` or an ``MNNExport``; ``ModelError`` (one line, exit 3)
    for anything else, saying what it lacks."""
    # absolute: MNN.llm runs in a child whose working directory is elsewhere
    folder = Path(path).absolute()
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ModelError(f"{show(folder)} {what}: an LLM check takes a Hugging Face model folder "
                         f"and an MNN-LLM export folder")
    names = {p.name for p in folder.iterdir()}
    if all(n in names for n in EXPORT_FILES):
        return _export(folder)
    if "config.json" in names:
        return _hf(folder, names, trust_remote_code)
    raise ModelError(
        f"{show(folder)} is neither a Hugging Face model folder (config.json, *.safetensors, "
        f"tokenizer files) nor an MNN-LLM export (config.json, llm_config.json, llm.mnn); "
        f"it holds {sorted(names)[:8]}"
    )


def _export(folder: Path) -> MNNExport:
    config = _read_json(folder / "config.json", folder)
    llm_config = _read_json(folder / "llm_config.json", folder)
    args_path = folder / "export_args.json"
    export_args = _read_json(args_path, folder) if args_path.is_file() else None
    for key in ("llm_model", "llm_weight"):  # null: MNN.llm takes its default name, as parity does
        if config.get(key) is not None:
            _file_name(folder / "config.json", key, config[key])
    export = MNNExport(folder, config, llm_config, export_args)
    for role, file in (("model", export.model_file), ("weights", export.weight_file)):
        if file.exists():
            check_input(file, f"the {role} file", error=ModelError)  # a FIFO, a device: said as such
        if not file.is_file():
            raise ModelError(f"the MNN-LLM export {show(folder)} lacks its {role} file "
                             f"{show(file.name)} (named in config.json); re-export the model")
    # MNN.llm crashes (SIGSEGV) on a damaged model or tokenizer, and reads past the end of a
    # short weights file: each is refused here, in the export's words
    check_weights_file(export.model_file, export.weight_file, strict=True)
    _check_tokenizer(export)
    return export


def _named_file(export: MNNExport, key: str, default: str) -> Path:
    """A file config.json (or llm_config.json) names for MNN.llm: a plain name in the folder."""
    name = export.config.get(key, export.llm_config.get(key))
    return export.path / _file_name(export.config_path, key, default if name is None else name)  # null: default


def _file_name(config_path: Path, key: str, name) -> str:
    """``name`` when it is a plain file name in the export folder: never a path out of it."""
    if not (isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name):
        raise ModelError(f"{show(config_path)}: {key} must be a file name in the export folder, "
                         f"not {name!r}; re-export the model")
    return name


def _check_tokenizer(export: MNNExport) -> None:
    """MNN.llm's tokenizer file: there, and opening with its format's magic number, which MNN.llm
    checks (430: transformers/llm/engine tokenizer); anything else crashes it."""
    path = _named_file(export, "tokenizer_file", "tokenizer.txt")
    if path.exists():
        check_input(path, "the tokenizer", error=ModelError)  # never opened if a FIFO: it would block
    try:
        with open(path, "rb") as f:
            head = f.readline(64).split()
    except OSError as exc:
        raise ModelError(f"the MNN-LLM export {show(export.path)} lacks its tokenizer {show(path.name)} "
                         f"({exc.strerror}); re-export the model") from None
    if not head or head[0] != _TOKENIZER_MAGIC:
        raise ModelError(f"{show(path)} is not an MNN.llm tokenizer (it does not begin with "
                         f"{_TOKENIZER_MAGIC.decode()}): damaged or from elsewhere; re-export the model")


_TOKENIZER_MAGIC = b"430"


def _check_embeddings(hf: HFModel, export: MNNExport) -> None:
    """MNN.llm looks a token's embedding up on disk: a row of hidden_size values per token of
    the vocabulary, in bfloat16 in the embeddings file (llm_config's tie_embeddings absent), or
    quantized at tie_embeddings = [offset, scales offset, scales bytes, bits, block] (in the
    embeddings file at offset 0, else in the weights file). A missing or short file is read as
    zeros or garbage, which would read as a compression loss: refused here."""
    text_config = hf.config.get("text_config")
    vocab = hf.config.get("vocab_size", text_config.get("vocab_size") if isinstance(text_config, dict) else None)
    hidden, tied = export.llm_config.get("hidden_size"), export.llm_config.get("tie_embeddings")
    if not all(isinstance(v, int) and v > 0 for v in (vocab, hidden)):
        return  # nothing to measure the file by
    if isinstance(tied, list) and len(tied) == 5 and all(isinstance(v, int) and v >= 0 for v in tied):
        path = _named_file(export, "embedding_file", "embeddings_bf16.bin") if tied[0] == 0 else export.weight_file
        need = max(tied[0] + vocab * hidden * tied[3] // 8, tied[1] + tied[2])
    else:
        path, need = _named_file(export, "embedding_file", "embeddings_bf16.bin"), vocab * hidden * 2
    try:
        size = path.stat().st_size
    except OSError:
        raise ModelError(f"the MNN-LLM export {show(export.path)} lacks its embeddings file {show(path.name)}, "
                         f"where MNN.llm looks up each token; re-export the model") from None
    if size < need:
        raise ModelError(f"{show(path)} holds {size:,} bytes, but the {vocab:,} tokens of {show(hf.path.name)} "
                         f"need {need:,} there ({hidden} values each): the file is truncated or the export "
                         f"comes from another model; re-export it")


def _hf(folder: Path, names: set, trust_remote_code: bool) -> HFModel:
    config = _read_json(folder / "config.json", folder)
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ()
    if (model_type is not None and not isinstance(model_type, str)) or not (
            isinstance(architectures, (list, tuple)) and all(isinstance(a, str) for a in architectures)):
        raise ModelError(f"{show(folder / 'config.json')}: model_type must be a string and architectures a list of "
                         f"strings (it has {model_type!r} and {architectures!r}); re-download or re-save the model")
    if not model_type or not architectures:
        raise ModelError(f"{show(folder / 'config.json')} names no model_type and architectures: "
                         f"not a Hugging Face model folder (nor an MNN-LLM export, which has "
                         f"llm_config.json)")
    if not any(n.endswith(".safetensors") for n in names):
        found = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".gguf"))]
        raise ModelError(
            f"{show(folder)} has no .safetensors weights"
            + (f" (only {sorted(found)}, which parity does not load: pickled weights can run code)"
               if found else "")
            + "; save the model with save_pretrained(..., safe_serialization=True)"
        )
    if not any(n in names for n in TOKENIZER_FILES):
        raise ModelError(f"{show(folder)} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                         f"save the tokenizer into the model folder (tokenizer.save_pretrained)")
    remote = tuple(["auto_map"] if "auto_map" in config else []) + tuple(
        sorted(n for n in names if n.endswith(".py")))
    if remote and not trust_remote_code:
        raise ModelError(
            f"{show(folder)} carries its own code ({', '.join(remote)}), which loading it would "
            f"run (llmexport loads with trust_remote_code=True); parity refuses it unless you "
            f"trust that code (trust_remote_code=True, --trust-remote-code)"
        )
    return HFModel(folder, str(model_type), tuple(architectures), config, remote)


def open_pair(hf_dir, export_dir, *, trust_remote_code: bool = False) -> tuple[HFModel, MNNExport]:
    """The two folders of an LLM check, each checked to be of its kind."""
    hf = recognize(hf_dir, trust_remote_code=trust_remote_code)
    export = recognize(export_dir)
    if not isinstance(hf, HFModel):
        raise ModelError(f"{show(hf_dir)} is an MNN-LLM export; the first folder of an LLM check is "
                         f"the Hugging Face model it was exported from")
    if not isinstance(export, MNNExport):
        raise ModelError(f"{show(export_dir)} is a Hugging Face model folder; the second folder of an "
                         f"LLM check is its MNN-LLM export (llmexport --export mnn)")
    _check_embeddings(hf, export)
    return hf, export


def is_pair(models) -> bool:
    """Two models, one a folder with a config.json (a Hugging Face model or an MNN-LLM export)
    and the other a folder or missing: an LLM check, which says in one line what either folder
    lacks (or that it does not exist)."""
    models = list(models)
    if len(models) != 2 or not all(Path(m).is_dir() or not Path(m).exists() for m in models):
        return False
    return any((Path(m) / "config.json").is_file() for m in models)
