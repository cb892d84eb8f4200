"""The reference's --text logits in an .npz (``--save-outputs`` / ``--load-outputs`` on an LLM pair),
so a later check of another export of the same model needs no transformers run.

What is kept: full float32 logits of every scored position (the rows transformers gave, bit for bit),
one array per window, written as each window is computed and read back one window at a time, so a
long text never holds all its logits in memory. Not float16 or top-k: an export with float16 weights
keeps a KL mean near 1e-6 nats, below what float16 (a log-probability rounded by up to 4e-3) or a
top-k tail estimate would keep; exact figures cost size (positions x vocab x 4 bytes: about 0.6 GB for
1,000 scored positions of a 150k-token vocabulary).

Also kept: the token ids (so the tokenizer need not run again), the window layout, and what they were
made from: a fingerprint of the Hugging Face folder (config.json, the tokenizer files, the weight
files' names and sizes) and the text's SHA-256. A file made from another model, text or window is
refused with one line before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from parity.core.errors import InputError
from parity.core.paths import check_input, show

FORMAT = "parity.llm-text-reference/1"
# files that decide the reference's ids and logits besides the weights (which count by name and size:
# hashing gigabytes on every check would cost more than the check's reference run saves)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json")


def fingerprint(folder) -> dict:
    """What a saved reference must have been made from: hashes of the Hugging Face folder's config,
    tokenizer files, and weight files' names and sizes."""
    folder = Path(folder)

    def digest(names):
        h = hashlib.sha256()
        for name in names:
            path = folder / name
            if path.is_file():
                h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        return h.hexdigest()[:16]

    weights = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(f"{path.name}\0{path.stat().st_size}\0".encode())
    return {"config": digest(["config.json"]), "tokenizer": digest(_TOKENIZER_FILES),
            "weights": weights.hexdigest()[:16]}


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Writer:
    """Writes a reference file window by window into a temporary file next to ``path``, renamed
    into place by ``finish`` (an interrupted check leaves no half-written file behind)."""

    def __init__(self, path):
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)

    def _array(self, name: str, array) -> None:
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)

    def window(self, index: int, rows) -> None:
        self._array(f"window_{index:05d}", np.asarray(rows, dtype=np.float32))

    def finish(self, meta: dict, tokenized, ids) -> None:
        self._array("meta", np.array(json.dumps({"format": FORMAT, **meta})))
        self._array("tokenized", np.asarray(tokenized, dtype=np.int64))
        self._array("ids", np.asarray(ids, dtype=np.int64))
        self._zip.close()
        os.replace(self._tmp, self.path)

    def abandon(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)


class Reader:
    """A reference file, checked to be one; ``verify`` refuses it for another model, text or window."""

    def __init__(self, path):
        self.path = Path(path)
        what = f"--load-outputs {show(self.path)}"
        check_input(self.path, "--load-outputs")  # a missing file says so, not that it is of another kind
        try:
            self._npz = np.load(self.path, allow_pickle=False)
            self.meta = json.loads(str(self._npz["meta"][()]))
            if self.meta.get("format") != FORMAT:
                raise ValueError(self.meta.get("format"))
            self.tokenized = [int(i) for i in self._npz["tokenized"]]
            self.ids = [int(i) for i in self._npz["ids"]]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            raise InputError(f"{what} is not a file of reference logits for --text (write one with "
                             f"--text FILE --save-outputs {show(self.path)})") from None

    def verify(self, folder, text: str, window: int) -> None:
        what = f"--load-outputs {show(self.path)}"
        saved, here = self.meta.get("fingerprint", {}), fingerprint(folder)
        for key, files in (("config", "config.json"), ("tokenizer", "tokenizer files"),
                           ("weights", "weight files (names and sizes)")):
            if saved.get(key) != here[key]:
                raise InputError(f"{what} was saved from another model: its {files} differ from "
                                 f"{show(folder)}'s; save it again from this folder (--save-outputs)")
        if self.meta.get("text_sha256") != text_digest(text):
            raise InputError(f"{what} was saved for another text than --text's; give the same text or save again")
        if self.meta.get("window") != window:
            raise InputError(f"{what} was saved with --text-window {self.meta.get('window')}, not {window}; "
                             f"give --text-window {self.meta.get('window')} or save again")

    def window(self, index: int) -> np.ndarray:
        return np.asarray(self._npz[f"window_{index:05d}"], dtype=np.float32)
