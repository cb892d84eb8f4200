"""MNN.llm, driven from the parent: one worker child per export and settings (runtime_child.py),
on this machine or on a ``--mnn-target`` (the export folder is sent there once).

``settings`` are config.json keys that override what the export's config.json says
(``precision``, ``memory``, ``backend_type``, ``thread_num``); empty means "as the app runs it".
"""

from __future__ import annotations

from parity.core.errors import BackendError

_CHILD = "parity.llm.runtime_child"


def describe(settings: dict) -> str:
    """"precision high, memory normal" for a link's name; "" for the export's own settings."""
    return ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))


def open_worker(export, framework: str, target: str | None, timeout: float):
    """(a started worker child for ``export``, the export folder's path where it runs): here, or
    on ``target`` with the folder sent there once. Nothing is left running on a failure."""
    if target is None:
        from parity.run.worker import Worker

        return Worker(framework, timeout=timeout).start(), str(export.path)
    from parity.run.targets import RemoteWorker, parse_target

    worker = RemoteWorker(parse_target(target), framework, timeout=timeout).start()
    try:
        return worker, worker.folder_path(export.path, export.runtime_files())
    except BaseException:
        worker.close()
        raise


class MNNLLM:
    """An MNN-LLM export served by a worker child, here or on ``target`` (a ``--mnn-target``
    text; None or "local" for this machine). Use as a context manager."""

    def __init__(self, export, settings: dict | None = None, *, target: str | None = None,
                 timeout: float = 600.0):
        self.export = export  # a folders.MNNExport
        self.settings = dict(settings or {})
        self.target = target if target not in (None, "local") else None
        self.timeout = timeout
        self.facts: dict = {}  # the target's (platform, MNN version), when not local
        self._worker = None
        self._config_path = str(export.config_path)

    def __enter__(self) -> "MNNLLM":
        self._worker, folder = open_worker(self.export, "MNN.llm", self.target, self.timeout)
        if self.target is not None:
            self.facts = dict(self._worker.facts)
            self._config_path = f"{folder}/{self.export.config_path.name}"
        return self

    def __exit__(self, *exc) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _call(self, function: str, step: str, **kwargs):
        if self._worker is None:
            raise BackendError("MNNLLM used outside its `with` block")
        where = [describe(self.settings)] if self.settings else []
        where += [f"on {self.target}"] if self.target else []
        return self._worker.call(f"{_CHILD}:{function}",
                                 step=f"{step} of {self.export.path.name}"
                                      + (f" ({', '.join(where)})" if where else ""),
                                 config_path=self._config_path, overrides=self.settings, **kwargs)

    def where(self) -> dict:
        """Where it ran, as a report's MNN settings record it (render/text.target_lines): the
        target, its platform, the CPU features MNN reported and whether precision low computes
        in float16 there."""
        from parity.mnn.log import cpu_features

        features = cpu_features(self._worker.log_text()) if self._worker is not None else {}
        precision = self.settings.get("precision", self.export.settings().get("precision", "normal"))
        backend = self.settings.get("backend_type", self.export.settings().get("backend_type", "cpu"))
        return {"target": self.target or "local", "platform": self.facts or None, "cpu_features": features,
                "float16_arithmetic": precision == "low" and features.get("fp16") == 1, "backend": backend}

    def tokenize(self, texts) -> list[list[int]]:
        return self._call("tokenize", "tokenizing", texts=list(texts))

    def decode(self, ids) -> str:
        return self._call("decode", "decoding", ids=list(ids))

    def chat_prompts(self, texts) -> list[str]:
        return self._call("chat_prompts", "applying the chat template", texts=list(texts))

    def logits(self, prompt, feed):
        """Teacher-forced logits: (1 + len(feed)) x vocab (see runtime_child.logits)."""
        return self._call("logits", "computing logits", prompt=list(prompt), feed=list(feed))

    def prefill(self, ids):
        """Every position's logits from one prefill of ``ids`` (see runtime_child.prefill)."""
        return self._call("prefill", "computing a prefill's logits", ids=list(ids))

    def all_logits(self, ids, first: int = 0):
        """One prefill's logits of positions ``first`` .. len(ids) - 1 (see runtime_child.all_logits)."""
        return self._call("all_logits", "computing a window's logits", ids=list(ids), first=int(first))

    def greedy(self, prompt, steps: int, stop=()):
        return self._call("greedy", "generating", prompt=list(prompt), steps=int(steps), stop=list(stop))
