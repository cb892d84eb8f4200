"""check_llm: a Hugging Face causal LM against its MNN-LLM export, with the cause of a difference.

The runs: the reference's greedy continuation of each prompt (transformers); the export as given
(its config.json's settings, or ``settings``), teacher-forced on that continuation so the steps
stay aligned after a top-1 flip, in one MNN.llm child that also tokenizes and renders the chat
template. The verdict: tokenizer when the ids of the prompts or the chat template differ; pass
when the export is within the budget; otherwise diagnose.py's links decide among conversion,
runtime and compression.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from parity.core.report import BackendInfo, InputInfo, Report, Verdict, VerdictKind
from parity.llm import budget as budgets
from parity.llm.diagnose import Case, diagnose, run_logits
from parity.llm.folders import open_pair
from parity.llm.links import Link

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Write one sentence about the sea.",
    "def fibonacci(n):",
)
DEFAULT_STEPS = 8


def check_llm(hf_dir, export_dir, *, prompts=DEFAULT_PROMPTS, steps: int = DEFAULT_STEPS,
              budget: str | budgets.Budget = budgets.DEFAULT, settings: dict | None = None,
              float_export=None, chat: bool = True, compare_weights: bool = True,
              trust_remote_code: bool = False, target: str | None = None,
              timeout: float = 900.0) -> Report:
    """Check the MNN-LLM export at ``export_dir`` against the Hugging Face model at ``hf_dir``.

    ``settings`` override the export's config.json (``{"precision": "high"}``); by default it runs
    as the app does. ``float_export``: an export with float16 weights to use as the conversion's
    floor instead of the one parity makes. ``chat``: feed the prompts through the chat template
    when the model has one. ``compare_weights``: on a failing link, compare the weights with a
    fresh export's (one more export). ``target``: where MNN.llm runs, as ``--mnn-target`` says
    (the export folder is sent there; every link of the diagnosis runs there too)."""
    import parity
    from parity.llm.reference import Reference

    budget = budgets.Budget.parse(budget) if isinstance(budget, str) else budget
    prompts, settings = tuple(prompts), dict(settings or {})
    if not prompts or steps < 1:
        raise parity.UsageError("an LLM check needs at least one prompt and one step")
    hf, export = open_pair(hf_dir, export_dir, trust_remote_code=trust_remote_code)
    ref = Reference(hf)
    chat_texts = ref.chat_prompts(prompts) if chat else None
    fed = chat_texts or list(prompts)
    prompt_ids = ref.tokenize(fed, special=chat_texts is None)
    runs = [ref.greedy(ids, steps) for ids in prompt_ids]
    continuations, reference_logits = [r[0] for r in runs], [r[1] for r in runs]

    target = None if target in (None, "local") else str(target)
    tokens, seen, given_logits = _tokenizer_and_logits(ref, export, settings, prompts, prompt_ids,
                                                       continuations, steps, timeout, target)
    given = Link("transformers -> mnn-llm", "mnn-llm", _given_run(export, settings, target), budget,
                 given_logits, reference_logits)
    case = Case(hf, ref, export, settings, given, prompt_ids, continuations, reference_logits,
                work=Path(), timeout=timeout, target=target, float_export=float_export,
                compare_weights=compare_weights, links=[given])
    verdict = _verdict(case, tokens, budget)
    return Report(
        passed=verdict.kind is VerdictKind.PASS,
        backends=_backends(ref, export, settings, seen["where"]),
        inputs=tuple(InputInfo(f"prompt {i + 1}", (len(ids),), "int32",
                               "default" if prompts == DEFAULT_PROMPTS else "given")
                     for i, ids in enumerate(prompt_ids)),
        comparisons=tuple(link.comparison() for link in case.links),
        verdict=verdict,
        # "rule" as every report has one: the terminal and HTML show it as the check's tolerance
        tolerance={"budget": str(budget), "float_floor": str(budgets.FLOAT_FLOOR),
                   "rule": f"budget {budget}; float export's floor {budgets.FLOAT_FLOOR}"},
        notes=tuple(case.notes),
        findings=tuple(f"tokenizer, {line}" for line in tokens.hard_findings),
        parity_version=parity.__version__,
        llm={"prompts": _prompt_records(ref, prompts, fed, prompt_ids, continuations, seen["greedy"]),
             "steps": steps, "chat_template_applied": chat_texts is not None,
             "links": [link.to_dict() for link in case.links], "tokenizer": tokens.to_dict(),
             "export": {"quant_bit": export.quant_bit, "settings": export.settings()},
             **({"layers": case.layers} if case.layers is not None else {})},
        options={"prompts": list(prompts), "steps": steps, "budget": str(budget), "settings": settings,
                 "float_export": None if float_export is None else str(float_export), "chat": chat,
                 "target": target},
    )


def _given_run(export, settings: dict, target) -> str:
    """How the export as given runs: "precision low, memory low, as its config.json says, on arm64"."""
    modes = ", ".join(f"{k} {v}" for k, v in {**export.settings(), **settings}.items() if k in ("precision", "memory"))
    return modes + ("" if settings else ", as its config.json says") + (f", on {target}" if target else "")


def _backends(ref, export, settings: dict, where: dict) -> tuple:
    """The report's two backends: transformers, and MNN.llm with its settings and where it ran."""
    version = (where.get("platform") or {}).get("mnn") or _mnn_version()
    return (BackendInfo("transformers", str(ref.model_info.path), ref.version, {"dtype": "float32"}),
            BackendInfo("mnn", str(export.path), version,
                        {**export.settings(), **settings, "quant_bit": export.quant_bit, **where}))


def _tokenizer_and_logits(ref, export, settings, prompts, prompt_ids, continuations, steps, timeout, target):
    """The tokenizer comparison, what MNN.llm gave (ids, templates, its greedy continuations) and
    the given export's teacher-forced logits, from one MNN.llm child."""
    from parity.llm import tokenizer as tok

    labelled = tok.texts(prompts, ref.chat_prompts(prompts), ref.special_tokens)

    def tokenizer_and_text(mnn):
        return {"ids": mnn.tokenize([t for _, t in labelled]), "templates": mnn.chat_prompts(prompts),
                "greedy": [mnn.greedy(ids, steps) for ids in prompt_ids], "where": mnn.where()}

    logits, seen = run_logits(export, settings, prompt_ids, continuations, timeout=timeout,
                              extra=tokenizer_and_text, target=target)
    # as an app using transformers sees them: a chat-templated text carries its special tokens
    reference_ids = [ref.tokenize([t], special=not label.endswith("(chat template)"))[0]
                     for label, t in labelled]
    templates = [tok.TemplateComparison(p, r, c) for p, r, c in
                 zip(prompts, ref.chat_prompts(prompts) or [None] * len(prompts), seen["templates"])]
    tokens = tok.compare(labelled, reference_ids, seen["ids"], ref.decode, templates=templates)
    return tokens, seen, logits


def _verdict(case: Case, tokens, budget) -> Verdict:
    given = case.given
    if not tokens.same:
        return Verdict(
            VerdictKind.TOKENIZER, tokens.findings[0].split(":")[0],
            f"the export's tokenizer or chat template is not the model's: {tokens.findings[0]}",
            evidence=tokens.findings[:6] + (given.figures_line(),),
            next_steps=("re-export with the model's own tokenizer (llmexport --tokenizer_path HF_DIR), "
                        "or fix the chat template in llm_config.json",),
        )
    if given.passed:
        return Verdict(VerdictKind.PASS, None, f"the export matches transformers within {budget}",
                       (given.figures_line(),))
    case.work = Path(tempfile.mkdtemp(prefix="parity-llm-"))
    try:
        return diagnose(case)
    finally:
        shutil.rmtree(case.work, ignore_errors=True)


def _prompt_records(ref, prompts, fed, prompt_ids, continuations, mnn_greedy) -> list:
    """Each prompt, what was fed, and the generated texts of both sides, side by side."""
    return [{"prompt": text, "fed": fed[i], "ids": prompt_ids[i],
             "reference_ids": continuations[i], "reference_text": ref.decode(continuations[i]),
             "candidate_ids": mnn_greedy[i], "candidate_text": ref.decode(mnn_greedy[i])}
            for i, text in enumerate(prompts)]


def _mnn_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("MNN")
    except metadata.PackageNotFoundError:
        return "?"
