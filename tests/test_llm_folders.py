"""The LLM check's folders: a Hugging Face model, an MNN-LLM export, or one clear error."""

import json

import pytest

from helpers import MODELS

from parity import ExitCode, ModelError
from parity.llm.folders import HFModel, MNNExport, open_pair, recognize


def hf_folder(path, **config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **config}))
    (path / "model.safetensors").write_bytes(b"\0" * 8)
    (path / "tokenizer.json").write_text("{}")
    return path


def export_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"llm_model": "llm.mnn", "llm_weight": "llm.mnn.weight",
                                                  "precision": "low", "memory": "low"}))
    (path / "llm_config.json").write_text(json.dumps({"model_type": "qwen2", "jinja": {"chat_template": "T"}}))
    (path / "export_args.json").write_text(json.dumps({"quant_bit": 4, "quant_block": 64}))
    (path / "llm.mnn").write_bytes((MODELS / "cnn.mnn").read_bytes())  # a readable MNN model
    (path / "llm.mnn.weight").write_bytes(b"x")
    (path / "tokenizer.txt").write_text("430 1\n")  # MNN.llm's tokenizer magic
    return path


def test_each_kind_is_recognized(tmp_path):
    hf = recognize(hf_folder(tmp_path / "hf"))
    export = recognize(export_folder(tmp_path / "out"))
    assert isinstance(hf, HFModel) and hf.model_type == "qwen2"
    assert isinstance(export, MNNExport) and export.quant_bit == 4 and export.chat_template == "T"
    assert export.settings() == {"precision": "low", "memory": "low"}
    assert export.path.is_absolute()  # MNN.llm runs in a child with another working directory


def test_a_folder_that_is_neither_is_one_line_exit_3(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hi")
    with pytest.raises(ModelError) as info:
        recognize(tmp_path / "x")
    message = str(info.value)
    assert info.value.exit_code is ExitCode.MODEL_OR_INPUT and "\n" not in message
    assert "neither a Hugging Face model folder" in message and "notes.txt" in message


@pytest.mark.parametrize("what, expected", [
    ("file", "is not a folder"), ("missing", "does not exist")])
def test_a_path_that_is_no_folder(tmp_path, what, expected):
    path = tmp_path / "f"
    if what == "file":
        path.write_text("x")
    with pytest.raises(ModelError, match=expected):
        recognize(path)


def test_remote_code_is_refused_unless_trusted(tmp_path):
    auto = hf_folder(tmp_path / "auto", auto_map={"AutoModelForCausalLM": "modeling_x.X"})
    with pytest.raises(ModelError, match="auto_map.*trust_remote_code"):
        recognize(auto)
    assert recognize(auto, trust_remote_code=True).remote_code == ("auto_map",)
    code = hf_folder(tmp_path / "code")
    (code / "modeling_x.py").write_text("import os\n")
    with pytest.raises(ModelError, match="modeling_x.py"):
        recognize(code)


def test_pickled_weights_only_are_refused(tmp_path):
    folder = hf_folder(tmp_path / "bin")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="no .safetensors.*pytorch_model.bin"):
        recognize(folder)


def test_an_export_without_its_weights_says_which_file(tmp_path):
    folder = export_folder(tmp_path / "out")
    (folder / "llm.mnn.weight").unlink()
    with pytest.raises(ModelError, match="lacks its weights file 'llm.mnn.weight'"):
        recognize(folder)


def test_the_pair_in_the_wrong_order_says_so(tmp_path):
    hf, out = hf_folder(tmp_path / "hf"), export_folder(tmp_path / "out")
    assert [type(x) for x in open_pair(hf, out)] == [HFModel, MNNExport]
    with pytest.raises(ModelError, match="is an MNN-LLM export; the first folder"):
        open_pair(out, hf)


def test_unreadable_json_names_the_file(tmp_path):
    folder = export_folder(tmp_path / "out")
    (folder / "llm_config.json").write_text("{not json")
    with pytest.raises(ModelError, match="llm_config.json.*not readable JSON"):
        recognize(folder)


@pytest.mark.parametrize("config", [{"architectures": 5}, {"model_type": ["llama"]},
                                    {"architectures": ["Qwen2ForCausalLM", 3]}])
def test_a_model_config_of_the_wrong_types_is_one_line(tmp_path, config):
    with pytest.raises(ModelError, match="model_type must be a string and architectures a list of strings"):
        recognize(hf_folder(tmp_path / "hf", **config))


@pytest.mark.parametrize("name", [5, "", "../llm.mnn", "/etc/passwd", "sub/llm.mnn"])
def test_an_export_naming_its_files_outside_its_folder_or_not_as_names_is_one_line(tmp_path, name):
    folder = export_folder(tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "llm_model": name}))
    with pytest.raises(ModelError, match="llm_model must be a file name in the export folder"):
        recognize(folder)
    done = _inspect(folder)
    assert done.returncode == ExitCode.MODEL_OR_INPUT and len(done.stderr.strip().splitlines()) == 1, done.stderr


def _inspect(folder):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "parity", "inspect", str(folder)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_inspect_describes_an_export_and_a_model_folder_from_their_files(tmp_path):
    done = _inspect(export_folder(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "an MNN-LLM export (llmexport), model type qwen2" in done.stdout
    assert "precision low, memory low" in done.stdout and "dynamic int8 activations" in done.stdout
    assert "quant_bit 4, quant_block 64" in done.stdout and "chat template: yes" in done.stdout
    done = _inspect(hf_folder(tmp_path / "hf", hidden_size=64, auto_map={"AutoModel": "x.Y"}))
    assert done.returncode == 0, done.stderr
    assert "a Hugging Face model, qwen2 (Qwen2ForCausalLM)" in done.stdout and "hidden_size 64" in done.stdout
    assert "code: auto_map" in done.stdout  # said, not run: describing reads files only


def test_inspect_of_a_folder_of_neither_kind_is_one_line_exit_3(tmp_path):
    (tmp_path / "x").mkdir()
    done = _inspect(tmp_path / "x")
    assert done.returncode == ExitCode.MODEL_OR_INPUT and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "neither a Hugging Face model folder" in done.stderr


def _cut(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@pytest.fixture(scope="module")
def external_mnn(tmp_path_factory):
    """cnn.mnn converted with --saveExternalData: a model that reads its values from its .weight file."""
    from parity.mnn.converter import convert

    folder = tmp_path_factory.mktemp("external")
    convert(MODELS / "cnn.onnx", folder / "llm.mnn", options=["--saveExternalData", "1"])
    return folder


DAMAGED = {  # MNN.llm crashes (SIGSEGV) on each, or reads past the end of the file
    "empty model": (lambda d: (d / "llm.mnn").write_bytes(b""), "not a readable MNN model"),
    "random model": (lambda d: (d / "llm.mnn").write_bytes(bytes(range(256)) * 8), "not a readable MNN model"),
    "model cut short": (lambda d: _cut(d / "llm.mnn"), "not a readable MNN model"),
    "weights cut short": (lambda d: _cut(d / "llm.mnn.weight"), "truncated"),
    "weights empty": (lambda d: (d / "llm.mnn.weight").write_bytes(b""), "holds 0 bytes"),
    "tokenizer empty": (lambda d: (d / "tokenizer.txt").write_bytes(b""), "not an MNN.llm tokenizer"),
    "tokenizer of another format": (lambda d: (d / "tokenizer.txt").write_text("431 4\n"), "not an MNN.llm tokenizer"),
    "tokenizer missing": (lambda d: (d / "tokenizer.txt").unlink(), "lacks its tokenizer"),
}


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_a_damaged_export_is_refused_before_mnn_llm_sees_it(tmp_path, external_mnn, damage):
    out = export_folder(tmp_path / "out")
    for name in ("llm.mnn", "llm.mnn.weight"):
        (out / name).write_bytes((external_mnn / name).read_bytes())
    assert isinstance(recognize(out), MNNExport)  # whole, it is an export
    make, expected = DAMAGED[damage]
    make(out)
    with pytest.raises(ModelError, match=expected) as caught:
        recognize(out)
    assert caught.value.exit_code == ExitCode.MODEL_OR_INPUT and "\n" not in str(caught.value)


def _with_embeddings(tmp_path, size, **llm_config):
    hf = hf_folder(tmp_path / "hf", vocab_size=8)
    out = export_folder(tmp_path / "out")
    (out / "llm_config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 4, **llm_config}))
    if size is not None:
        (out / "embeddings_bf16.bin").write_bytes(b"\0" * size)
    return hf, out


def test_an_embeddings_file_with_a_row_for_each_token_is_taken(tmp_path):
    hf, out = _with_embeddings(tmp_path, 8 * 4 * 2)  # 8 tokens of 4 bfloat16 values
    assert [type(x) for x in open_pair(hf, out)] == [HFModel, MNNExport]


@pytest.mark.parametrize("size, expected", [(8 * 4 * 2 - 2, "holds 62 bytes"), (None, "lacks its embeddings file")])
def test_a_short_or_missing_embeddings_file_is_refused_not_read_as_a_compression_loss(tmp_path, size, expected):
    hf, out = _with_embeddings(tmp_path, size)
    with pytest.raises(ModelError, match=expected):
        open_pair(hf, out)


def test_tied_embeddings_are_measured_where_the_export_says_they_lie(tmp_path):
    """tie_embeddings = [offset, scales offset, scales bytes, bits, block]: at offset 0 in the
    embeddings file, elsewhere in the weights file (one byte here: too short for 8 tokens)."""
    hf, out = _with_embeddings(tmp_path, 8 * 4 // 2 + 16, tie_embeddings=[0, 16, 16, 4, 4])
    assert [type(x) for x in open_pair(hf, out)] == [HFModel, MNNExport]
    (out / "llm_config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 4,
                                                     "tie_embeddings": [1, 16, 16, 4, 4]}))
    with pytest.raises(ModelError, match="llm.mnn.weight"):
        open_pair(hf, out)


def _cli(*args, cwd=None):
    import subprocess
    import sys

    env = {**__import__("os").environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("flag", [["--atol", "0"], ["--layers"], ["--shape", "x=1x2"], ["--seed", "3"],
                                  ["--torch", "net.py:build"], ["--repro", "rp"], ["--model-explorer", "m.json"]])
def test_an_option_of_model_files_on_an_llm_pair_is_refused_not_ignored(tmp_path, flag):
    """--atol 0 on an LLM pair ran the check without it and passed; every option of model files
    is now exit 2, naming it, before anything is read."""
    hf, out = hf_folder(tmp_path / "hf"), export_folder(tmp_path / "out")
    done = _cli("check", hf, out, *flag, cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"{flag[0]} is for model files" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # nothing written


def test_saved_text_logits_never_replace_a_file_of_either_folder(tmp_path):
    hf, out = hf_folder(tmp_path / "hf"), export_folder(tmp_path / "out")
    text = tmp_path / "text.txt"
    text.write_text("The capital of France is Paris. " * 20)
    weights = (hf / "model.safetensors").read_bytes()
    done = _cli("check", hf, out, "--text", text, "--save-outputs", hf / "model.safetensors")
    assert done.returncode == ExitCode.MODEL_OR_INPUT and "is the input" in done.stderr, done.stderr
    assert (hf / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("where, name, content, expected", [
    ("out", "config.json", {"llm_model": None}, None),  # MNN.llm takes its default name, as parity does
    ("out", "config.json", {"llm_model": 5}, "llm_model must be a file name"),
    ("out", "export_args.json", {"quant_bit": float("nan")}, None),
    ("out", "llm_config.json", {"model_type": "qwen2", "jinja": {"chat_template": 5}}, None),
    ("hf", "config.json", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "text_config": "x"}, None),
])
def test_config_values_of_the_wrong_type_are_one_line_or_ignored_never_an_internal_error(tmp_path, where, name,
                                                                                         content, expected):
    hf, out = hf_folder(tmp_path / "hf"), export_folder(tmp_path / "out")
    folder = {"hf": hf, "out": out}[where]
    if name == "config.json" and where == "out":
        content = {**json.loads((out / name).read_text()), **content}
    (folder / name).write_text(json.dumps(content))  # NaN: Python's json writes it, as llmexport's would
    if expected is None:
        hf_model, export = open_pair(hf, out)
        assert export.quant_bit in (4, None) and export.chat_template in ("T", None)
        assert export.model_file.name == "llm.mnn"
        return
    with pytest.raises(ModelError, match=expected):
        open_pair(hf, out)


@pytest.mark.parametrize("name", ["tokenizer.txt", "llm_config.json", "config.json"])
def test_a_fifo_in_an_export_is_refused_not_read(tmp_path, name):
    """Opening a FIFO blocks until a writer comes: parity hung."""
    import os

    out = export_folder(tmp_path / "out")
    (out / name).unlink()
    os.mkfifo(out / name)
    with pytest.raises(ModelError, match="FIFO"):
        recognize(out)


def test_prompts_are_texts_one_per_line():
    """A string is one prompt, not its characters; an empty or undecodable one is refused; a
    --prompts file splits at newlines only (str.splitlines also splits at U+2028, \\f...)."""
    import pathlib
    import tempfile

    from parity import UsageError
    from parity.commands.llm import prompts_of
    from parity.llm.check import _checked_prompts

    assert _checked_prompts("Hello") == ("Hello",)
    for bad in ("", "   ", "\udcff", 5):
        with pytest.raises(UsageError):
            _checked_prompts([bad])
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "p.txt"
        path.write_text("one\u2028two\x0cthree\x1cfour\r\n# a comment\n\nfive\n", encoding="utf-8")
        assert prompts_of({"prompts": str(path)}) == ("one\u2028two\x0cthree\x1cfour", "five")


def test_any_byte_of_a_model_damaged_is_refused_in_one_line_never_an_internal_error(tmp_path, external_mnn):
    """Every byte of an .mnn with external weights set to 0xff in turn: the weights check either
    takes the file or refuses it as damaged (ModelError); a byte read out of range once raised
    IndexError (exit 123)."""
    from parity.backends.base import check_weights_file

    data = (external_mnn / "llm.mnn").read_bytes()
    path = tmp_path / "llm.mnn"
    (tmp_path / "llm.mnn.weight").write_bytes((external_mnn / "llm.mnn.weight").read_bytes())
    refused = 0
    for at in range(0, len(data), 3):
        path.write_bytes(data[:at] + b"\xff" + data[at + 1:])
        try:
            check_weights_file(path, strict=True)
        except ModelError:
            refused += 1
    assert refused  # the damage was seen somewhere
