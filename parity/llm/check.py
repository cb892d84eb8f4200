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
              trust_remote_code: bool = False, target: str | None = None, timeout: float = 900.0,
              rank_layers: bool = False, write_quant_config=None) -> Report:
    """Check the MNN-LLM export at ``export_dir`` against the Hugging Face model at ``hf_dir``.

    ``settings`` override the export's config.json (``{"precision": "high"}``); by default it runs
    as the app does. ``float_export``: a float16-weight export, the conversion's floor, instead of
    the one parity makes. ``chat``: prompts through the chat template when the model has one.
    ``compare_weights``: on a failing link, compare the weights with a fresh export's. ``target``:
    where MNN.llm runs (``--mnn-target``; every link runs there). ``rank_layers``: rank the quantized
    layers also on a pass; ``write_quant_config``: where the smallest passing --quant_config goes."""
    import parity
    from parity.llm.reference import Reference

    budget = budgets.Budget.parse(budget) if isinstance(budget, str) else budget
    prompts, settings = _checked_prompts(prompts), dict(settings or {})
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise parity.UsageError(f"an LLM check needs a whole number of steps >= 1, not {steps!r}")
    hf, export = open_pair(hf_dir, export_dir, trust_remote_code=trust_remote_code)
    ref = Reference(hf)
    chat_texts, fed, prompt_ids, continuations, reference_logits = _reference_runs(ref, prompts, steps, chat)

    target = None if target in (None, "local") else str(target)
    tokens, seen, given_logits = _tokenizer_and_logits(ref, export, settings, prompts, prompt_ids,
                                                       continuations, steps, timeout, target)
    given = Link("transformers -> mnn-llm", "mnn-llm", _given_run(export, settings, target), budget,
                 given_logits, reference_logits)
    case = Case(hf, ref, export, settings, given, prompt_ids, continuations, reference_logits, work=Path(),
                timeout=timeout, target=target, float_export=float_export, compare_weights=compare_weights,
                links=[given], kv=seen["kv"], rank_layers=rank_layers, quant_config_path=write_quant_config)
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
        findings=_findings(tokens, seen["kv"], verdict),
        parity_version=parity.__version__,
        llm={"prompts": _prompt_records(ref, prompts, fed, prompt_ids, continuations, seen["greedy"]),
             "steps": steps, "chat_template_applied": chat_texts is not None,
             "links": [link.to_dict() for link in case.links], "tokenizer": tokens.to_dict(),
             "kv_cache": seen["kv"].to_dict(),
             "export": {"quant_bit": export.quant_bit, "settings": export.settings()},
             "ranking": case.ranking, **({"layers": case.layers} if case.layers is not None else {})},
        options={"prompts": list(prompts), "steps": steps, "budget": str(budget), "settings": settings,
                 "chat": chat, "target": target, "rank_layers": rank_layers,
                 **_paths(float_export=float_export, write_quant_config=write_quant_config)},
    )


def _checked_prompts(prompts) -> tuple[str, ...]:
    """The prompts as a tuple of texts: one string is one prompt (not its characters); an empty
    one, or one that is not text (bytes that are not UTF-8 on the command line), is refused."""
    import parity

    prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
    if not prompts:
        raise parity.UsageError("an LLM check needs at least one prompt")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise parity.UsageError(f"a prompt must be text with something in it, not {prompt!r}")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise parity.UsageError(f"the prompt {prompt!r} is not valid UTF-8 (bytes the terminal could "
                                    f"not decode); give it in UTF-8, or in a --prompts file") from None
    return prompts


def _reference_runs(ref, prompts, steps: int, chat: bool):
    """(the chat-templated texts or None, the texts fed, their ids, the reference's greedy
    continuations and their logits). A prompt and its steps must fit the model's positions."""
    import parity

    chat_texts = ref.chat_prompts(prompts) if chat else None
    fed = chat_texts or list(prompts)
    prompt_ids = ref.tokenize(fed, special=chat_texts is None)
    longest = max(len(ids) for ids in prompt_ids)
    if longest + steps - 1 > ref.max_positions:  # the last step's token is chosen, never fed
        raise parity.UsageError(f"a prompt of {longest} tokens and {steps} steps need {longest + steps - 1} positions; "
                                f"the model takes {ref.max_positions} (max_position_embeddings): give fewer --steps "
                                f"or a shorter prompt")
    runs = [ref.greedy(ids, steps) for ids in prompt_ids]
    return chat_texts, fed, prompt_ids, [r[0] for r in runs], [r[1] for r in runs]


def _own_greedy(mnn, prompt, continuation, rows, steps) -> list[int]:
    """MNN.llm's own greedy continuation. Teacher-forced on the reference's ids, its rows' top
    tokens are those ids wherever it would have chosen them itself: then its own continuation is
    the same, without running it again."""
    import numpy as np

    if [int(i) for i in np.argmax(rows, axis=-1)] == list(continuation):
        return list(continuation)
    return mnn.greedy(prompt, steps)


def _findings(tokens, kv, verdict) -> tuple:
    """What the report says besides its verdict: the tokenizers' differences on hard strings, and
    a KV-cache difference a passing check did not decide on."""
    kv_lines = (f"runtime, {kv.line()}",) if not kv.passed and verdict.kind is VerdictKind.PASS else ()
    return tuple(f"tokenizer, {line}" for line in tokens.hard_findings) + kv_lines


def _paths(**paths) -> dict:
    return {name: None if path is None else str(path) for name, path in paths.items()}


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

    def tokenizer_and_text(mnn, logits):
        from parity.llm import kvcache

        words = _given_run(export, settings, target)
        return {"ids": mnn.tokenize([t for _, t in labelled]), "templates": mnn.chat_prompts(prompts),
                "greedy": [_own_greedy(mnn, ids, cont, rows, steps)
                           for ids, cont, rows in zip(prompt_ids, continuations, logits)],
                "where": mnn.where(),
                "kv": kvcache.run(mnn, prompt_ids, continuations, logits, settings_words=words,
                                  long_limit=min(kvcache.LONG, ref.max_positions))}

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
        verdict = Verdict(VerdictKind.PASS, None, f"the export matches transformers within {budget}",
                          (given.figures_line(), case.kv.line()))
        if case.rank_layers:
            from parity.llm.ranking import ranked_pass

            verdict = ranked_pass(case, verdict)
        return verdict
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
