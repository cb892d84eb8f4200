"""check_llm: a Hugging Face causal LM against its MNN-LLM export, with the cause of a difference.

The links, each teacher-forced on the reference's greedy continuation (so steps stay aligned
after a top-1 flip):

    transformers -> the export as given (its config.json's settings, or ``settings``)
    then, when that link fails:
    the given weights against a fresh export made with the given one's settings (by layer)
    transformers -> a float export (float16 weights; one parity makes in a child, or ``float_export``),
                    run at precision high and memory normal: the conversion's floor
    transformers -> the export as given at precision high, memory normal: the runtime modes

Verdicts, the first that applies: tokenizer (ids or chat template differ); pass; conversion
(weights differ from a fresh export's, or the float export already differs beyond its floor);
runtime (the given export passes at precision high and memory normal); compression (the float
export matches and the quantized one costs more than the budget).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from parity.core.report import (
    BackendInfo, Comparison, InputInfo, OutputComparison, Report, Verdict, VerdictKind)
from parity.llm import budget as budgets
from parity.llm import figures
from parity.llm.folders import MNNExport, open_pair, recognize

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Write one sentence about the sea.",
    "def fibonacci(n):",
)
DEFAULT_STEPS = 8
# The runtime settings that take MNN.llm's approximations out: float32 compute on x86 and ARM,
# no dynamic int8 activations. What they fix is the runtime's doing, not the export's.
EXACT = {"precision": "high", "memory": "normal"}
# What each approximate setting does, for the verdict.
_SETTING_WORDS = {
    ("precision", "low"): "precision low (float16 compute where the CPU has it: range 65504)",
    ("memory", "low"): "memory low (dynamic int8 activations for quantized weights)",
}


class _Link:
    """One link's runs: per prompt, reference and candidate logits, and the figures."""

    def __init__(self, name: str, candidate: str, run: str, budget, logits_by_prompt, reference_logits):
        self.name, self.candidate, self.run, self.budget = name, candidate, run, budget
        self.logits = logits_by_prompt
        self.reference = reference_logits
        self.steps = [figures.steps(r, c) for r, c in zip(reference_logits, logits_by_prompt)]
        self.summary = figures.summarize(s for per in self.steps for s in per)
        self.broken = budget.broken(self.summary)
        self.passed = not self.broken
        self.first_out = None
        for p, per in enumerate(self.steps):
            step = budget.first_step_out(per)
            if step is not None:
                self.first_out = (p, step)
                break

    def where(self) -> str:
        if self.first_out is None:
            return self.name
        p, step = self.first_out
        return f"prompt {p + 1}, step {step.step} ({self.name})"

    def figures_line(self) -> str:
        s = self.summary
        return (f"{self.name}: KL mean {s.kl_mean:.3g}, p99 {s.kl_p99:.3g}, max {s.kl_max:.3g}; "
                f"same top token {s.top1:.0%}; scaled error {s.error:.3g} over {s.steps} steps")

    def comparison(self, prompts) -> Comparison:
        outputs = []
        for i, (ref, cand, per) in enumerate(zip(self.reference, self.logits, self.steps)):
            s = figures.summarize(per)
            diff = np.abs(ref - cand)
            outputs.append(OutputComparison(
                name=f"logits[prompt {i + 1}]", reference_name="logits", candidate_name="logits",
                passed=not self.budget.broken(s),
                max_abs_diff=float(np.max(diff)), mean_abs_diff=float(np.mean(diff)),
                cosine=s.cosine_min, reference_absmax=float(np.max(np.abs(ref))),
                reference_shape=tuple(ref.shape), candidate_shape=tuple(cand.shape),
                kind="logits", size=int(ref.size),
                budget={"budget": str(self.budget), **s.to_dict(),
                        "broken": [str(c) for c in self.budget.broken(s)],
                        "first_step_out": _first_out(self.budget, per)},
            ))
        return Comparison(reference="transformers", candidate=self.candidate, passed=self.passed,
                          outputs=tuple(outputs), candidate_run=self.run,
                          tolerance={"budget": str(self.budget)})

    def to_dict(self) -> dict:
        return {"link": self.name, "run": self.run, "budget": str(self.budget), "passed": self.passed,
                "summary": self.summary.to_dict(), "broken": [str(c) for c in self.broken],
                "first_step_out": None if self.first_out is None else
                {"prompt": self.first_out[0] + 1, **asdict(self.first_out[1])},
                "prompts": [[asdict(s) for s in per] for per in self.steps]}


def _first_out(budget, per):
    step = budget.first_step_out(per)
    return None if step is None else step.step


def _run_export(export: MNNExport, settings: dict, prompt_ids, continuations, *, timeout, extra=None):
    """Teacher-forced logits of each prompt, and what ``extra(mnn)`` returns in the same child."""
    from parity.llm.runtime import MNNLLM

    with MNNLLM(export, settings, timeout=timeout) as mnn:
        logits = [mnn.logits(ids, cont[:-1]) for ids, cont in zip(prompt_ids, continuations)]
        more = extra(mnn) if extra is not None else None
    return logits, more


def _settings_words(export: MNNExport, settings: dict) -> str:
    effective = {**export.settings(), **settings}
    return ", ".join(f"{k} {effective[k]}" for k in ("precision", "memory") if k in effective)


def check_llm(hf_dir, export_dir, *, prompts=DEFAULT_PROMPTS, steps: int = DEFAULT_STEPS,
              budget: str | budgets.Budget = budgets.DEFAULT, settings: dict | None = None,
              float_export=None, chat: bool = True, compare_weights: bool = True,
              trust_remote_code: bool = False, timeout: float = 900.0) -> Report:
    """Check the MNN-LLM export at ``export_dir`` against the Hugging Face model at ``hf_dir``.

    ``settings`` override the export's config.json (``{"precision": "high"}``); by default it runs
    as the app does. ``float_export``: an export with float16 weights to use as the conversion's
    floor instead of the one parity makes. ``chat``: feed the prompts through the chat template
    when the model has one."""
    import parity
    from parity.llm import tokenizer as tok
    from parity.llm.reference import Reference

    if isinstance(budget, str):
        budget = budgets.Budget.parse(budget)
    prompts = tuple(prompts)
    if not prompts or steps < 1:
        raise parity.UsageError("an LLM check needs at least one prompt and one step")
    settings = dict(settings or {})
    hf, export = open_pair(hf_dir, export_dir, trust_remote_code=trust_remote_code)
    ref = Reference(hf)

    # the ids both sides are fed: the reference's (the tokenizers are compared on their own)
    chat_texts = ref.chat_prompts(prompts) if chat else None
    fed_texts = chat_texts or list(prompts)
    prompt_ids = ref.tokenize(fed_texts, special=chat_texts is None)
    continuations, reference_logits = [], []
    for ids in prompt_ids:
        cont, logits = ref.greedy(ids, steps)
        continuations.append(cont)
        reference_logits.append(logits)

    labelled = tok.texts(prompts, ref.chat_prompts(prompts), ref.special_tokens)

    def tokenizer_and_text(mnn):
        return {
            "ids": mnn.tokenize([t for _, t in labelled]),
            "templates": mnn.chat_prompts(prompts),
            "greedy": [mnn.greedy(ids, steps) for ids in prompt_ids],
        }

    given_logits, seen = _run_export(export, settings, prompt_ids, continuations, timeout=timeout,
                                     extra=tokenizer_and_text)
    reference_ids = [ref.tokenize([t], special=not label.endswith("(chat template)"))[0]
                     for label, t in labelled]
    reference_templates = ref.chat_prompts(prompts) or [None] * len(prompts)
    templates = [tok.TemplateComparison(p, r, c)
                 for p, r, c in zip(prompts, reference_templates, seen["templates"])]
    tokens = tok.compare(labelled, reference_ids, seen["ids"], ref.decode, templates=templates)

    run = _settings_words(export, settings) + ("" if settings else " (its config.json)")
    given = _Link("transformers -> mnn-llm", "mnn-llm", run, budget, given_logits, reference_logits)
    links = [given]
    notes = []
    findings = tuple(f"tokenizer, {line}" for line in tokens.hard_findings)
    verdict, work = None, None
    try:
        if not tokens.same:
            verdict = Verdict(
                VerdictKind.TOKENIZER, tokens.findings[0].split(":")[0],
                f"the export's tokenizer or chat template is not the model's: {tokens.findings[0]}",
                evidence=tokens.findings[:6] + (given.figures_line(),),
                next_steps=("re-export with the model's own tokenizer (llmexport --tokenizer_path "
                            "HF_DIR), or fix the chat template in llm_config.json",),
            )
        elif given.passed:
            verdict = Verdict(VerdictKind.PASS, None,
                              f"the export matches transformers within {budget}", (given.figures_line(),))
        else:
            work = Path(tempfile.mkdtemp(prefix="parity-llm-"))
            verdict = _diagnose(hf, export, settings, given, links, notes, prompt_ids, continuations,
                                reference_logits, float_export, compare_weights, work, timeout)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    prompt_records = []
    for i, (text, ids, cont, mnn_ids) in enumerate(zip(prompts, prompt_ids, continuations, seen["greedy"])):
        prompt_records.append({"prompt": text, "fed": fed_texts[i], "ids": ids,
                               "reference_ids": cont, "reference_text": ref.decode(cont),
                               "candidate_ids": mnn_ids, "candidate_text": ref.decode(mnn_ids)})
    return Report(
        passed=verdict.kind is VerdictKind.PASS,
        backends=(BackendInfo("transformers", str(hf.path), ref.version, {"dtype": "float32"}),
                  BackendInfo("mnn", str(export.path), _mnn_version(),
                              {**export.settings(), **settings, "quant_bit": export.quant_bit})),
        inputs=tuple(InputInfo(f"prompt {i + 1}", (len(ids),), "int32",
                               "default" if prompts == DEFAULT_PROMPTS else "given")
                     for i, ids in enumerate(prompt_ids)),
        comparisons=tuple(link.comparison(prompts) for link in links),
        verdict=verdict,
        tolerance={"budget": str(budget), "float_floor": str(budgets.FLOAT_FLOOR)},
        notes=tuple(notes),
        findings=findings,
        parity_version=parity.__version__,
        llm={"prompts": prompt_records, "steps": steps, "chat_template_applied": chat_texts is not None,
             "links": [link.to_dict() for link in links], "tokenizer": tokens.to_dict(),
             "export": {"quant_bit": export.quant_bit, "settings": export.settings()}},
        options={"prompts": list(prompts), "steps": steps, "budget": str(budget), "settings": settings,
                 "float_export": None if float_export is None else str(float_export), "chat": chat},
    )


def _mnn_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("MNN")
    except metadata.PackageNotFoundError:
        return "?"


def _diagnose(hf, export, settings, given, links, notes, prompt_ids, continuations, reference_logits,
              float_export, compare_weights, work: Path, timeout) -> Verdict:
    from parity.llm import weights
    from parity.llm.export import ExportSettings, export as run_export

    figures_given = given.figures_line()
    made = ExportSettings.of(export)
    # 1. the given weights against a fresh export with the same settings
    fresh = None
    if compare_weights and export.export_args is not None:
        result = run_export(hf.path, work / f"fresh-{made.quant_bit}bit", made, timeout=timeout)
        fresh = recognize(result.path)
        diffs = weights.compare(export, fresh)
        if diffs is None:
            notes.append("the weights could not be compared by layer (no llm.mnn.json, or another layout)")
        elif diffs:
            first = diffs[0]
            listed = ", ".join(f"{d.name} ({d.bytes_differing} of {d.size} bytes)" for d in diffs[:4])
            return Verdict(
                VerdictKind.CONVERSION, first.name,
                f"the export's weights are not what exporting this model makes: {len(diffs)} layer(s) "
                f"differ from a fresh export with the same settings ({made.quant_bit} bits), first {first.name}",
                evidence=(listed, figures_given),
                next_steps=("export the model again (llmexport --path HF_DIR --export mnn "
                            f"--quant_bit {made.quant_bit}); was the weight file edited or copied from another model?",),
            )
    # 2. the float export (float16 weights), run without the runtime's approximations
    if float_export is not None:
        floor_export = recognize(float_export)
    elif made.quant_bit == 16 and fresh is not None:
        floor_export = fresh
    else:
        result = run_export(hf.path, work / "float16", ExportSettings(quant_bit=16), timeout=timeout)
        floor_export = recognize(result.path)
    floor_logits, _ = _run_export(floor_export, EXACT, prompt_ids, continuations, timeout=timeout)
    floor = _Link("transformers -> mnn-llm float export", "mnn-llm (float16 weights)",
                  "float16 weights, precision high, memory normal", budgets.FLOAT_FLOOR,
                  floor_logits, reference_logits)
    links.append(floor)
    if not floor.passed:
        return Verdict(
            VerdictKind.CONVERSION, floor.where(),
            f"an export with float16 weights already differs from transformers beyond its floor "
            f"({', '.join(map(str, floor.broken))}): the export, not its quantization or runtime, changes the model",
            evidence=(floor.figures_line(), figures_given),
            next_steps=("report it to MNN's llmexport with the model's config.json and this report",),
        )
    # 3. the given export without the runtime's approximations
    exact = {**settings, **EXACT}
    effective = {**export.settings(), **settings}
    approximate = [(k, effective.get(k)) for k in EXACT if effective.get(k) != EXACT[k]]
    if approximate:
        exact_logits, _ = _run_export(export, exact, prompt_ids, continuations, timeout=timeout)
        exact_link = _Link("transformers -> mnn-llm (precision high, memory normal)", "mnn-llm",
                           "precision high, memory normal", given.budget, exact_logits, reference_logits)
        links.append(exact_link)
        if exact_link.passed:
            fix = ", ".join(f'"{k}": "{EXACT[k]}"' for k, _ in approximate)
            words = [_SETTING_WORDS.get(kv, f"{kv[0]} {kv[1]}") for kv in approximate]
            return Verdict(
                VerdictKind.RUNTIME, given.where(),
                f"the runtime settings make the difference: with {' and '.join(words)} the export breaks "
                f"{', '.join(map(str, given.broken))}; at precision high and memory normal it passes",
                evidence=(figures_given, exact_link.figures_line(), floor.figures_line()),
                next_steps=(f"set {fix} in the "
                            "export's config.json (or the app's runtime config), or accept the cost with --budget",),
            )
    # 4. the float export matches; the quantized weights cost more than the budget
    return Verdict(
        VerdictKind.COMPRESSION, given.where(),
        f"the quantized weights ({made.quant_bit} bits, blocks of {made.quant_block}) cost more than the "
        f"budget ({', '.join(map(str, given.broken))}), while an export with float16 weights matches",
        evidence=(figures_given, floor.figures_line()),
        next_steps=("export with more bits (--quant_bit 8), smaller blocks (--quant_block 32), or keep the "
                    "most costly layers at 8 bits with --quant_config; or raise the budget with --budget",),
    )
