"""check_text: the --text check of an LLM pair (text.py says how it scores), from transformers or from
reference logits saved by an earlier run (stored.py), with its Report.

With ``load_outputs`` no transformers model is loaded, nor transformers or torch imported: the saved
ids and logits are the reference, once the file is verified to come from this folder, text and window.
"""

from __future__ import annotations

from dataclasses import asdict

from parity.core.report import BackendInfo, Comparison, InputInfo, OutputComparison, Report, Verdict, VerdictKind
from parity.llm import budget as budgets
from parity.llm import stored
from parity.llm.text import Tally, plan, read_text, window_size


class TransformersSource:
    """The reference from transformers: its tokenizer's ids and one forward per window, float32."""

    def __init__(self, hf, text: str):
        from parity.llm.reference import Reference

        self.ref = Reference(hf)
        self.tokenized = self.ref.tokenize([text], special=True)[0]  # as an app feeds the text
        self.ids = self.ref.tokenize([text], special=False)[0]
        # what the tokenizer puts at a text's start (BOS where it adds one): each window starts with it
        probe_with, probe = self.ref.tokenize(["a"], special=True)[0], self.ref.tokenize(["a"], special=False)[0]
        head = len(probe_with) - len(probe)
        self.prefix = probe_with[:head] if head > 0 and probe_with[head:] == probe else []
        self.version, self.name = self.ref.version, "transformers"

    def rows(self, window):
        import torch

        with torch.no_grad():
            out = self.ref.model(input_ids=torch.tensor([list(window.ids)], dtype=torch.long), use_cache=False)
        return out.logits[0, window.first:].float().numpy()


class SavedSource:
    """The reference from a file --save-outputs wrote, verified against the folder, text and window."""

    def __init__(self, path, hf, text: str, window: int):
        self.file = stored.Reader(path)
        self.file.verify(hf.path, text, window)
        meta = self.file.meta
        self.tokenized, self.ids, self.prefix = self.file.tokenized, self.file.ids, list(meta["prefix"])
        self.version, self.name = meta.get("transformers", "?"), f"transformers (saved in {path})"

    def rows(self, window):
        return self.file.window(window.index)


def check_text(hf_dir, export_dir, text_path, *, window: int | None = None,
               budget: str | budgets.Budget = budgets.DEFAULT, settings: dict | None = None,
               target: str | None = None, timeout: float = 900.0, trust_remote_code: bool = False,
               save_outputs=None, load_outputs=None, progress=None) -> Report:
    """The export at ``export_dir`` against the Hugging Face model at ``hf_dir`` over the text in
    ``text_path`` (text.py). ``save_outputs``: write the reference's logits there; ``load_outputs``:
    take them from there instead of running transformers. ``progress(message, done, total)``."""
    from parity.llm.folders import open_pair
    from parity.llm.runtime import MNNLLM

    budget = budgets.Budget.parse(budget) if isinstance(budget, str) else budget
    hf, export = open_pair(hf_dir, export_dir, trust_remote_code=trust_remote_code)
    text = read_text(text_path)
    size = window_size(window, hf.config)
    source = (SavedSource(load_outputs, hf, text, size) if load_outputs is not None
              else TransformersSource(hf, text))
    windows = plan(source.ids, source.prefix, size)
    target = None if target in (None, "local") else str(target)
    writer = stored.Writer(save_outputs) if save_outputs is not None else None
    tally = Tally()
    try:
        with MNNLLM(export, settings, target=target, timeout=timeout) as mnn:
            seen_ids = mnn.tokenize([text])[0]
            for w in windows:
                if progress is not None:
                    progress(f"--text: window {w.index + 1} of {len(windows)}", w.index, len(windows))
                rows = source.rows(w)
                tally.add(w, rows, mnn.all_logits(w.ids, w.first))
                if writer is not None:
                    writer.window(w.index, rows)
            tokens = _tokenizer(source.tokenized, seen_ids, mnn)
            where = mnn.where()
        if writer is not None:
            writer.finish({"fingerprint": stored.fingerprint(hf.path), "text_sha256": stored.text_digest(text),
                           "window": size, "prefix": list(source.prefix), "windows": len(windows),
                           "transformers": source.version}, source.tokenized, source.ids)
            writer = None
    finally:
        if writer is not None:
            writer.abandon()
    run = dict(hf=hf, export=export, settings=dict(settings or {}), where=where, source=source,
               text_path=text_path, size=size, windows=windows, budget=budget)
    return _report(run, tally, tokens)


def _tokenizer(reference_ids, seen_ids, mnn) -> dict:
    """MNN.llm's ids of the text against the reference's: the first difference, its tokens decoded."""
    if list(reference_ids) == list(seen_ids):
        return {"same": True, "tokens": len(reference_ids)}
    k = next((i for i, (a, b) in enumerate(zip(reference_ids, seen_ids)) if a != b),
             min(len(reference_ids), len(seen_ids)))
    piece = [mnn.decode(ids[k:k + 3]) for ids in (reference_ids, seen_ids)]
    return {"same": False, "tokens": len(reference_ids), "mnn_tokens": len(seen_ids), "first_difference": k,
            "line": f"the text's ids differ from token {k} of {len(reference_ids)}: the reference has "
                    f"{piece[0]!r}, MNN.llm {piece[1]!r} ({len(seen_ids)} ids in all)"}


def _lines(run, tally, summary) -> list[str]:
    windows, source = run["windows"], run["source"]
    ppl_r, ppl_c = tally.perplexity("reference"), tally.perplexity("candidate")
    return [
        f"text: {len(source.ids)} tokens, {len(windows)} window(s) of {run['size']}, each scored on its second "
        f"half: {summary.steps} positions" + ("" if isinstance(source, TransformersSource)
                                              else f"; reference logits from {source.file.path}"),
        f"perplexity: transformers {ppl_r:.6g}, mnn-llm {ppl_c:.6g} (ratio {ppl_c / ppl_r:.6g})",
        f"KL mean {summary.kl_mean:.3g}, p99 {summary.kl_p99:.3g}, max {summary.kl_max:.3g}; same top token at "
        f"{tally.top1} of {summary.steps}; p_lost mean {tally.p_lost / summary.steps:.3g}, max {summary.p_lost_max:.3g}",
    ]


def _verdict(run, tally, summary, tokens) -> Verdict:
    budget, lines = run["budget"], _lines(run, tally, summary)
    if not tokens["same"]:
        return Verdict(VerdictKind.TOKENIZER, f"text, token {tokens['first_difference']}",
                       f"the export's tokenizer is not the model's: {tokens['line']}", evidence=tuple(lines),
                       next_steps=("re-export with the model's own tokenizer (llmexport --tokenizer_path HF_DIR)",))
    broken = budget.broken(summary)
    if not broken:
        return Verdict(VerdictKind.PASS, None, f"the export matches transformers within {budget} over the text",
                       tuple(lines))
    worst = tally.worst[0]
    return Verdict(VerdictKind.MISMATCH, f"text, token {worst.step} (the largest KL, {worst.kl:.3g})",
                   f"the export's figures over the text break the budget ({', '.join(map(str, broken))})",
                   evidence=tuple(lines),
                   next_steps=("run the check without --text: its prompts' diagnosis says whether the conversion, "
                               "the runtime or the compression costs this",))


def _report(run, tally, tokens) -> Report:
    import parity

    summary, budget, source = tally.summary(), run["budget"], run["source"]
    verdict = _verdict(run, tally, summary, tokens)
    export, settings = run["export"], run["settings"]
    backends = (BackendInfo("transformers", str(run["hf"].path), source.version,
                            {"dtype": "float32", "reference": source.name}),
                BackendInfo("mnn", str(export.path), (run["where"].get("platform") or {}).get("mnn") or _mnn(),
                            {**export.settings(), **settings, "quant_bit": export.quant_bit, **run["where"]}))
    return Report(
        passed=verdict.kind is VerdictKind.PASS, backends=backends,
        inputs=(InputInfo("text", (len(source.ids),), "int64", "given"),),
        comparisons=(_comparison(run, tally, summary),), verdict=verdict,
        tolerance={"budget": str(budget), "rule": f"budget {budget}"},
        parity_version=parity.__version__,  # the figures' lines are the verdict's evidence
        findings=() if tokens["same"] else (f"tokenizer, {tokens['line']}",),
        llm={"text": _record(run, tally, summary, tokens),
             "export": {"quant_bit": export.quant_bit, "settings": export.settings()}},
        options={"text": str(run["text_path"]), "text_window": run["size"], "budget": str(budget),
                 "settings": settings, "target": run["where"].get("target")})


def _record(run, tally, summary, tokens) -> dict:
    """llm["text"] of the JSON report: the figures per side and over all, per window, the worst positions."""
    n = summary.steps
    return {
        "file": str(run["text_path"]), "tokens": len(run["source"].ids), "window": run["size"],
        "windows": len(run["windows"]), "scored": n, "prefix": list(run["source"].prefix),
        "reference": {"source": run["source"].name, "perplexity": tally.perplexity("reference"),
                      "nll_mean": tally.nll["reference"] / n},
        "candidate": {"perplexity": tally.perplexity("candidate"), "nll_mean": tally.nll["candidate"] / n},
        "summary": {**summary.to_dict(), "p_lost_mean": tally.p_lost / n,
                    "perplexity_ratio": tally.perplexity("candidate") / tally.perplexity("reference")},
        "budget": str(run["budget"]), "passed": not run["budget"].broken(summary),
        "broken": [str(c) for c in run["budget"].broken(summary)],
        "worst": [asdict(s) for s in tally.worst], "per_window": tally.windows, "tokenizer": tokens,
    }


def _comparison(run, tally, summary) -> Comparison:
    budget, d = run["budget"], tally.abs_diff
    shape = (summary.steps, d.get("vocab", 0))
    output = OutputComparison(
        name="logits[text]", reference_name="logits", candidate_name="logits", passed=not budget.broken(summary),
        max_abs_diff=d["max"], mean_abs_diff=d["sum"] / max(1, d["count"]), cosine=summary.cosine_min,
        reference_absmax=d["reference_absmax"], reference_shape=shape, candidate_shape=shape, kind="logits",
        size=d["count"], budget={"budget": str(budget), **summary.to_dict(),
                                 "broken": [str(c) for c in budget.broken(summary)], "first_step_out": None})
    return Comparison(reference="transformers", candidate="mnn-llm", passed=output.passed, outputs=(output,),
                      candidate_run="teacher-forced over the text",
                      tolerance={"budget": str(budget), "rule": f"budget {budget}"})


def _mnn() -> str:
    from importlib import metadata

    try:
        return metadata.version("MNN")
    except metadata.PackageNotFoundError:
        return "?"
