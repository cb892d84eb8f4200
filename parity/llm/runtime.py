"""MNN.llm, driven from the parent: one worker child per export and settings (runtime_child.py).

``settings`` are config.json keys that override what the export's config.json says
(``precision``, ``memory``, ``backend_type``, ``thread_num``); empty means "as the app runs it".
"""

from __future__ import annotations

from parity.core.errors import BackendError
from parity.run.worker import Worker

_CHILD = "parity.llm.runtime_child"


def describe(settings: dict) -> str:
    """"precision high, memory normal" for a link's name; "" for the export's own settings."""
    return ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))


class MNNLLM:
    """An MNN-LLM export served by a worker child. Use as a context manager."""

    def __init__(self, export, settings: dict | None = None, *, timeout: float = 600.0):
        self.export = export  # a folders.MNNExport
        self.settings = dict(settings or {})
        self.timeout = timeout
        self._worker: Worker | None = None

    def __enter__(self) -> "MNNLLM":
        self._worker = Worker("MNN.llm", timeout=self.timeout).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _call(self, function: str, step: str, **kwargs):
        if self._worker is None:
            raise BackendError("MNNLLM used outside its `with` block")
        where = f" ({describe(self.settings)})" if self.settings else ""
        return self._worker.call(f"{_CHILD}:{function}", step=f"{step} of {self.export.path.name}{where}",
                                 config_path=str(self.export.config_path), overrides=self.settings,
                                 **kwargs)

    def tokenize(self, texts) -> list[list[int]]:
        return self._call("tokenize", "tokenizing", texts=list(texts))

    def decode(self, ids) -> str:
        return self._call("decode", "decoding", ids=list(ids))

    def chat_prompts(self, texts) -> list[str]:
        return self._call("chat_prompts", "applying the chat template", texts=list(texts))

    def logits(self, prompt, feed):
        """Teacher-forced logits: (1 + len(feed)) x vocab (see runtime_child.logits)."""
        return self._call("logits", "computing logits", prompt=list(prompt), feed=list(feed))

    def greedy(self, prompt, steps: int, stop=()):
        return self._call("greedy", "generating", prompt=list(prompt), steps=int(steps), stop=list(stop))
