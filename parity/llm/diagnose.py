"""The verdict of an LLM check whose export does not match: which step made the difference.

Given the failing link (transformers -> the export as given), in this order, the first that
decides wins:

    weights    the given weights against a fresh export made with the given one's settings, by
               layer: a layer that differs was changed after export (conversion)
    floor      transformers -> an export with float16 weights at precision high, memory normal:
               beyond its floor, the export itself changes the model (conversion)
    runtime    the given export at precision high, memory normal: within budget there, the
               runtime's approximations made the difference (runtime)
    otherwise  the float export matches and the quantized weights cost more than the budget
               (compression)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parity.core.report import Verdict, VerdictKind
from parity.llm import budget as budgets
from parity.llm.folders import MNNExport, recognize
from parity.llm.links import Link

# The runtime settings that take MNN.llm's approximations out: float32 compute on x86 and ARM,
# no dynamic int8 activations. What they fix is the runtime's doing, not the export's.
EXACT = {"precision": "high", "memory": "normal"}
# What each approximate setting does, for the verdict.
SETTING_WORDS = {
    ("precision", "low"): "precision low (float16 compute where the CPU has it: range 65504)",
    ("memory", "low"): "memory low (dynamic int8 activations for quantized weights)",
}


@dataclass
class Case:
    """What the diagnosis works from, and what it adds (links run, notes)."""

    hf: object  # folders.HFModel
    reference: object  # reference.Reference: the model loaded in transformers
    export: MNNExport
    settings: dict  # the caller's overrides of the export's config.json
    given: Link  # transformers -> the export as given: failing
    prompt_ids: list
    continuations: list
    reference_logits: list
    work: Path  # a private folder for the exports parity makes
    timeout: float
    target: str | None = None  # --mnn-target: where MNN.llm runs (None: here)
    float_export: object = None  # a folder to use as the float export, or None
    compare_weights: bool = True
    rank_layers: bool = False  # rank the quantized layers also when the export passes
    quant_config_path: object = None  # --write-quant-config: where the ranking's fix goes
    ranking: dict | None = None  # ranking.Ranking.to_dict(), once ranked
    links: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    kv: object = None  # kvcache.KVCheck of the export as given, or None
    floor_export: MNNExport | None = None  # the float export the floor link ran
    layers: dict | None = None  # layers.py's per-layer view, when one was made

    def on(self) -> str:
        """Where MNN.llm runs, for a link's run: ", on arm64"; "" on this machine."""
        return f", on {self.target}" if self.target else ""

    def run(self, export: MNNExport, settings: dict):
        return run_logits(export, settings, self.prompt_ids, self.continuations, timeout=self.timeout,
                          target=self.target)


def run_logits(export: MNNExport, settings: dict, prompt_ids, continuations, *, timeout, extra=None,
               target=None):
    """Teacher-forced logits of each prompt in MNN.llm (on ``target``), and what
    ``extra(mnn, logits)`` returns from the same child (tokenizer, templates, greedy texts, the
    KV-cache check)."""
    from parity.llm.runtime import MNNLLM

    with MNNLLM(export, settings, target=target, timeout=timeout) as mnn:
        logits = [mnn.logits(ids, cont[:-1]) for ids, cont in zip(prompt_ids, continuations)]
        more = extra(mnn, logits) if extra is not None else None
    return logits, more


def diagnose(case: Case) -> Verdict:
    from parity.llm.export import ExportSettings

    verdict = _kv_cache(case)
    if verdict is not None:
        return verdict
    made = ExportSettings.of(case.export)
    fresh = None
    if case.compare_weights and case.export.export_args is not None:
        fresh, verdict = _weights(case, made)
        if verdict is not None:
            return verdict
    floor = _floor(case, made, fresh)
    if not floor.passed:
        from parity.llm import layers

        # which decoder layer of the float export makes the difference (None: none stands out)
        layer, layer_lines = layers.place(case, case.floor_export, EXACT, floor)
        return Verdict(
            VerdictKind.CONVERSION, layer or floor.where(),
            f"an export with float16 weights already differs from transformers beyond its floor "
            f"({', '.join(map(str, floor.broken))}): the export, not its quantization or runtime, "
            f"changes the model",
            evidence=(floor.figures_line(), case.given.figures_line(), *layer_lines),
            next_steps=("report it to MNN's llmexport with the model's config.json and this report",),
        )
    verdict = _runtime(case, floor)
    if verdict is not None:
        return verdict
    from parity.llm.ranking import with_ranking

    return with_ranking(case, made, Verdict(
        VerdictKind.COMPRESSION, case.given.where(),
        f"the quantized weights ({made.quant_bit} bits, blocks of {made.quant_block}) cost more than "
        f"the budget ({', '.join(map(str, case.given.broken))}), while an export with float16 "
        f"weights matches",
        evidence=(case.given.figures_line(), *(link.figures_line() for link in case.links[1:])),
        next_steps=("export with more bits (--quant_bit 8), smaller blocks (--quant_block 32), or keep "
                    "the most costly layers at 8 bits with --quant_config; or raise the budget with --budget",),
    ))


def _kv_cache(case: Case) -> Verdict | None:
    """A runtime verdict when decoding with the KV cache, not the model, makes the difference: MNN's
    decode differs from one prefill of the same tokens, that prefill matches transformers, and the
    exact settings do not remove the gap (when they do, the settings' own diagnosis follows)."""
    from parity.llm import kvcache

    kv = case.kv
    if kv is None or kv.passed:
        return None
    prompts = len(case.prompt_ids)
    prefill = Link("transformers -> mnn-llm prefill", "mnn-llm prefill", "one prefill, no KV cache" + case.on(),
                   case.given.budget, [seq.prefill for seq in kv.sequences[:prompts]], case.reference_logits)
    case.links.append(prefill)
    if not prefill.passed:
        case.notes.append(kv.line())
        return None
    effective = {**case.export.settings(), **case.settings}
    exact = kv
    if any(effective.get(k) != v for k, v in EXACT.items()):
        exact = _kv_run(case, {**case.settings, **EXACT}, "precision high, memory normal")
        if exact.passed:
            case.notes.append(f"{kv.line()}; with precision high, memory normal they agree")
            return None
    keys = kvcache.cache_settings(effective)
    said = f"; the cache settings in effect: {', '.join(f'{k} {v}' for k, v in keys.items())}" if keys else ""
    return Verdict(
        VerdictKind.RUNTIME, kv.where(),
        f"decoding with MNN.llm's KV cache makes the difference: step by step it differs from one prefill "
        f"of the same tokens from {kv.where()}, even with precision high, memory normal, while that "
        f"prefill matches transformers within {case.given.budget}{said}",
        evidence=(kv.line(), *([exact.line()] if exact is not kv else []), prefill.figures_line(),
                  case.given.figures_line()),
        next_steps=("check the KV-cache settings in config.json (attention_mode / quant_qkv quantize the "
                    "cache; 8 is MNN's default), or report it to MNN with this report",),
    )


def _kv_run(case: Case, settings: dict, words: str):
    from parity.llm import kvcache
    from parity.llm.runtime import MNNLLM

    with MNNLLM(case.export, settings, target=case.target, timeout=case.timeout) as mnn:
        decode = [mnn.logits(ids, cont[:-1]) for ids, cont in zip(case.prompt_ids, case.continuations)]
        return kvcache.run(mnn, case.prompt_ids, case.continuations, decode, long_limit=0,
                           settings_words=words + case.on())


def _export(case: Case, name: str, settings) -> MNNExport:
    from parity.llm.export import export

    return recognize(export(case.hf.path, case.work / name, settings, timeout=case.timeout).path)


def _weights(case: Case, made):
    """(the fresh export, a conversion verdict when the given weights differ from it, by layer)."""
    from parity.llm import weights

    fresh = _export(case, f"fresh-{made.quant_bit}bit", made)
    diffs = weights.compare(case.export, fresh)
    if diffs is None:
        case.notes.append("the weights could not be compared by layer (no llm.mnn.json, or another layout)")
        return fresh, None
    if not diffs:
        return fresh, None
    first = diffs[0]
    listed = ", ".join(f"{d.name} ({d.bytes_differing} of {d.size} bytes)" for d in diffs[:4])
    return fresh, Verdict(
        VerdictKind.CONVERSION, first.name,
        f"the export's weights are not what exporting this model makes: {len(diffs)} layer(s) differ "
        f"from a fresh export with the same settings ({made.quant_bit} bits), first {first.name}",
        evidence=(listed, case.given.figures_line()),
        next_steps=(f"export the model again (llmexport --path HF_DIR --export mnn --quant_bit "
                    f"{made.quant_bit}); was the weight file edited, or made from other weights?",),
    )


def _floor(case: Case, made, fresh) -> Link:
    """transformers -> an export with float16 weights, without the runtime's approximations."""
    from parity.llm.export import ExportSettings

    if case.float_export is not None:
        floor_export = recognize(case.float_export)
    elif made.quant_bit == 16 and fresh is not None:
        floor_export = fresh
    else:
        floor_export = _export(case, "float16", ExportSettings(quant_bit=16))
    case.floor_export = floor_export
    logits, _ = case.run(floor_export, EXACT)
    link = Link("transformers -> mnn-llm float export", "mnn-llm float export",
                "float16 weights, precision high, memory normal" + case.on(), budgets.FLOAT_FLOOR,
                logits, case.reference_logits)
    case.links.append(link)
    return link


def _runtime(case: Case, floor: Link) -> Verdict | None:
    """A runtime verdict when the given export passes without the runtime's approximations; it
    names the setting that alone makes the difference when one does (on x86, precision low
    computes in float32, so memory low is often the one)."""
    effective = {**case.export.settings(), **case.settings}
    approximate = [(k, effective.get(k)) for k in EXACT if effective.get(k) != EXACT[k]]
    if not approximate:
        return None
    exact = _link(case, EXACT, "precision high, memory normal")
    if not exact.passed:
        return None
    causes, shown = approximate, [exact]
    if len(approximate) > 1:
        singles = [(kv, _link(case, {kv[0]: EXACT[kv[0]]}, f"{kv[0]} {EXACT[kv[0]]}")) for kv in approximate]
        shown += [link for _, link in singles]
        causes = [kv for kv, link in singles if link.passed] or approximate
    words = [SETTING_WORDS.get(kv, f"{kv[0]} {kv[1]}") for kv in causes]
    fix = ", ".join(f'"{k}": "{EXACT[k]}"' for k, _ in causes)
    where, range_line, layer_lines = case.given.where(), None, ()
    if ("precision", "low") in causes:
        from parity.llm import layers

        layer, range_line = float16_range(case)
        # MNN's own numbers by layer, as given: the layer whose float16 error stands out when the
        # range does not name one
        named, layer_lines = layers.place(case, case.export, case.settings, case.given)
        if layer is not None or named is not None:
            where = f"{layer or named}, {where}"
    return Verdict(
        VerdictKind.RUNTIME, where,
        f"the runtime settings make the difference: with {' and '.join(words)} the export breaks "
        f"{', '.join(map(str, case.given.broken))}; with {' and '.join(f'{k} {EXACT[k]}' for k, _ in causes)} "
        f"it passes" + (f"; {range_line}" if range_line else ""),
        evidence=(case.given.figures_line(), *(link.figures_line() for link in shown), floor.figures_line(),
                  *layer_lines),
        next_steps=(f"set {fix} in the export's config.json (or the app's runtime config), or accept "
                    f"the cost with --budget",),
    )


def _link(case: Case, change: dict, words: str) -> Link:
    """transformers -> the given export with ``change`` to its settings."""
    logits, _ = case.run(case.export, {**case.settings, **change})
    link = Link(f"transformers -> mnn-llm ({words})", "mnn-llm", words + case.on(), case.given.budget, logits,
                case.reference_logits)
    case.links.append(link)
    return link


FLOAT16_MAX = 65504.0


def float16_range(case: Case) -> tuple[str | None, str | None]:
    """(the first place the residual stream leaves float16's range, a sentence on it) from the
    reference's residual stream over the checked sequences; (None, a sentence) when it stays
    within the range (then float16's rounding, not its range, is what costs)."""
    sequences = [list(p) + list(c) for p, c in zip(case.prompt_ids, case.continuations)]
    try:
        peaks = case.reference.residual_peaks(sequences)
    except Exception as exc:  # a model the hooks do not fit: the verdict stands without the layer
        case.notes.append(f"the residual stream could not be measured ({type(exc).__name__}: {exc})")
        return None, None
    if not peaks:
        return None, None
    beyond = next((i for i, peak in enumerate(peaks) if peak > FLOAT16_MAX), None)
    if beyond is None:
        top = max(range(len(peaks)), key=peaks.__getitem__)
        return None, (f"the residual stream stays within float16's range in transformers (largest "
                      f"{peaks[top]:.3g}, {_place(top)}): float16's rounding, not its range, costs it")
    place = _place(beyond)
    return place, (f"in transformers the residual stream reaches {peaks[beyond]:.3g} {place.replace('decoder', 'at the output of decoder', 1) if beyond else 'in the embeddings'} "
                   f"(of {len(peaks) - 1}), beyond float16's largest value {FLOAT16_MAX:.0f}: in float16 it "
                   f"overflows there")


def _place(index: int) -> str:
    return "the embeddings" if index == 0 else f"decoder layer {index - 1}"
