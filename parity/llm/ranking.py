"""Which quantized layers cost an LLM export its budget, and the --quant_config that fixes it.

Cheap stage (torch, quantize.py): the reference with llmexport's quantization imitated, run
teacher-forced over the check's prompts and continuations; its loss (KL mean against the float
reference) fully quantized, then with one layer at a time kept at more bits (8, or float16 for
an 8-bit export): the drop is that layer's share. At most ``max_layers`` are measured, those
with the largest weight error first; the rest are listed as skipped.

Confirmation (real exports, one long-lived llmexport child): the top 1, 2, ... layers kept at
more bits through ``--quant_config``, each export run by MNN.llm as the given export runs and
judged by the check's budget, starting from the count the imitation says is enough, until the
budget holds or ``max_exports`` were made. The smallest passing config is what
``--write-quant-config`` writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from parity.llm import figures
from parity.llm.links import Link
from parity.llm.quantize import Imitation, QuantLayer, layers_of

MAX_LAYERS = 256  # layers measured one at a time (each one forward pass over the check's sequences)
MAX_EXPORTS = 4  # real exports made to confirm


@dataclass
class Ranking:
    bits: int  # what the export quantizes with
    fix_bits: int  # what a ranked layer is kept at
    imitated: dict  # figures of the fully quantized imitation
    given: dict  # the given export's figures, and at precision high, memory normal when run
    layers: list = field(default_factory=list)  # {"op", "share", "kl_mean", "weight_error"}, best first
    skipped: list = field(default_factory=list)
    confirmed: list = field(default_factory=list)  # {"kept", "passed", "summary"} per real export
    config: dict | None = None  # the smallest passing --quant_config
    written: str | None = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("bits", "fix_bits", "imitated", "given", "layers", "skipped",
                                              "confirmed", "config", "written", "notes")}

    def evidence(self) -> list[str]:
        """The ranking in a few lines, for the verdict's evidence."""
        top = ", ".join(f"{x['op']} ({x['share']:+.3g})" for x in self.layers[:3])
        lines = [f"ranking (torch imitation of the {self.bits}-bit weights, KL mean {self.imitated['kl_mean']:.3g} "
                 f"vs the export's {self.given['kl_mean']:.3g}; one layer at {self.fix_bits} bits at a time, "
                 f"the KL mean it takes off): {len(self.layers)} layers ranked, first {top}"]
        for c in self.confirmed:
            lines.append(f"real export with the top {c['kept']} at {self.fix_bits} bits: KL mean "
                         f"{c['summary']['kl_mean']:.3g}, {'passes' if c['passed'] else 'fails'} the budget")
        if self.skipped:
            lines.append(f"not ranked: {len(self.skipped)} ({'; '.join(self.skipped[:3])}"
                         f"{'; ...' if len(self.skipped) > 3 else ''})")
        return lines

    def lines(self, top: int = 10) -> list[str]:
        """Every ranked layer (``top`` of them) and what was skipped, for the report's notes."""
        out = [f"ranked {i + 1}: {x['op']} takes {x['share']:.3g} off the KL mean at {self.fix_bits} bits "
               f"(imitation {self.imitated['kl_mean']:.3g} -> {x['kl_mean']:.3g}; weight error {x['weight_error']:.3g})"
               for i, x in enumerate(self.layers[:top])]
        if len(self.layers) > top:
            out.append(f"ranked: {len(self.layers) - top} more in the JSON report (llm.ranking)")
        out += [f"not ranked: {s}" for s in self.skipped]
        return out


def rank(case, made, budget, *, confirm: bool = True, write=None, max_layers: int = MAX_LAYERS,
         max_exports: int = MAX_EXPORTS) -> Ranking | None:
    """Rank ``case``'s quantized layers (diagnose.Case; ``made``: export.ExportSettings); with
    ``confirm``, real exports until the budget holds; ``write``: where the config goes."""
    model = case.reference.model
    layers, skipped, notes = layers_of(model, case.export)
    if made.quant_bit >= 16 or not layers:
        return None
    fix_bits = 8 if made.quant_bit < 8 else 16
    tied = bool((case.export.export_args or {}).get("tie_word_embeddings",
                                                    getattr(model.config, "tie_word_embeddings", False)))
    sequences = [list(p) + list(c[:-1]) for p, c in zip(case.prompt_ids, case.continuations)]
    starts = [len(p) - 1 for p in case.prompt_ids]
    reference = _logits(model, sequences, starts)
    with Imitation(model, layers, tied) as imitation:
        full = _summary(reference, _logits(model, sequences, starts))
        order = sorted(layers, key=imitation.weight_error, reverse=True)
        measured, rest = order[:max_layers], order[max_layers:]
        skipped += [f"{x.op}: beyond the {max_layers} layers with the largest weight error" for x in rest]
        ranked = _one_at_a_time(imitation, measured, fix_bits, full, reference, sequences, starts)
        predicted = _enough(imitation, ranked, fix_bits, budget, reference, sequences, starts)
    ranking = Ranking(made.quant_bit, fix_bits, full.to_dict(), _given(case), ranked, skipped, notes=notes)
    if confirm and not case.given.passed:
        _confirm(case, made, ranking, predicted, max_exports)
    if write is not None:
        _write(ranking, write)
    return ranking


def _logits(model, sequences, starts) -> list:
    """Teacher-forced logits of each sequence from its prompt's last position on (steps x vocab)."""
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0, start:]
                .double().numpy() for ids, start in zip(sequences, starts)]


def _summary(reference, candidate) -> figures.Summary:
    return figures.summarize(s for r, c in zip(reference, candidate) for s in figures.steps(r, c))


def _one_at_a_time(imitation, layers: list[QuantLayer], fix_bits, full, reference, sequences, starts) -> list:
    """Each layer's share: the KL mean the imitation loses with that layer alone at ``fix_bits``."""
    out = []
    for layer in layers:
        imitation.set(layer, fix_bits)
        kept = _summary(reference, _logits(imitation.model, sequences, starts))
        imitation.set(layer, layer.bits)
        out.append({"op": layer.op, "module": layer.module, "share": full.kl_mean - kept.kl_mean,
                    "kl_mean": kept.kl_mean, "weight_error": imitation.weight_error(layer), "bits": layer.bits})
    out.sort(key=lambda x: x["share"], reverse=True)
    return out


def _enough(imitation, ranked, fix_bits, budget, reference, sequences, starts) -> int:
    """How many of the top layers at ``fix_bits`` the imitation needs to meet ``budget`` (all of
    them when even that does not)."""
    by_op = {layer.op: layer for layer in imitation.layers}
    for k, entry in enumerate(ranked, 1):
        imitation.set(by_op[entry["op"]], fix_bits)
        if not budget.broken(_summary(reference, _logits(imitation.model, sequences, starts))):
            break
    for entry in ranked:
        imitation.set(by_op[entry["op"]], by_op[entry["op"]].bits)
    return max(1, k) if ranked else 0


def _given(case) -> dict:
    """The given export's KL mean, and at precision high, memory normal when the diagnosis ran it."""
    out = {"kl_mean": case.given.summary.kl_mean}
    exact = next((link for link in case.links if link.run.startswith("precision high, memory normal")), None)
    if exact is not None:
        out["kl_mean_precision_high_memory_normal"] = exact.summary.kl_mean
    return out


def config_of(ranking: Ranking, kept: int) -> dict:
    return {x["op"]: {"bits": ranking.fix_bits} for x in ranking.layers[:kept]}


def _confirm(case, made, ranking: Ranking, predicted: int, max_exports: int) -> None:
    """Real exports with the top layers at more bits, from the imitation's count up until the
    budget holds; then down while it still holds, for the smallest config."""
    from dataclasses import replace

    from parity.llm.export import Exporter
    from parity.llm.folders import recognize

    tried: dict[int, bool] = {}
    settings = {**case.export.settings(), **case.settings}

    def attempt(exporter, kept: int) -> bool:
        path = case.work / f"quant-config-{kept}.json"
        path.write_text(json.dumps(config_of(ranking, kept), indent=2), encoding="utf-8")
        out = exporter.export(case.hf.path, case.work / f"ranked-{kept}",
                              replace(made, quant_config=str(path), tokenizer_path=None))
        logits, _ = case.run(recognize(out.path), settings)
        link = Link(f"transformers -> mnn-llm (top {kept} at {ranking.fix_bits} bits)", "mnn-llm",
                    f"{made.quant_bit} bits, {kept} layer(s) at {ranking.fix_bits}" + case.on(),
                    case.given.budget, logits, case.reference_logits)
        case.links.append(link)
        ranking.confirmed.append({"kept": kept, "passed": link.passed, "summary": link.summary.to_dict()})
        tried[kept] = link.passed
        return link.passed

    with Exporter(timeout=case.timeout) as exporter:
        kept = min(max(predicted, 1), len(ranking.layers))
        while len(tried) < max_exports and kept <= len(ranking.layers) and not attempt(exporter, kept):
            kept += 1
        while tried.get(kept) and kept > 1 and kept - 1 not in tried and len(tried) < max_exports \
                and attempt(exporter, kept - 1):
            kept -= 1
    passing = [k for k, ok in tried.items() if ok]
    if passing:
        ranking.config = config_of(ranking, min(passing))
    else:
        ranking.notes.append(f"no config tried ({', '.join(f'top {k}' for k in sorted(tried))}) met the budget")


def _write(ranking: Ranking, path) -> None:
    from parity.core.paths import write_atomic

    if ranking.config is None:
        ranking.notes.append(f"--write-quant-config: nothing written to {path}: no config met the budget")
        return
    write_atomic(path, (json.dumps(ranking.config, indent=2) + "\n").encode("utf-8"), "--write-quant-config")
    ranking.written = str(Path(path))


def with_ranking(case, made, verdict):
    """``verdict`` (compression) with the ranking's lines in its evidence and next steps, the
    ranking in ``case.ranking``; a ranking that cannot run leaves the verdict as it is, with a note."""
    from dataclasses import replace

    from parity.core.errors import ParityError

    try:
        ranking = rank(case, made, case.given.budget, write=case.quant_config_path)
    except ParityError as exc:
        case.notes.append(f"the layers could not be ranked: {exc}")
        return verdict
    if ranking is None:
        case.notes.append("the layers were not ranked: the export has no quantized Linear layer parity can match")
        return verdict
    case.ranking = ranking.to_dict()
    case.notes.extend(ranking.lines() + ranking.notes)
    steps = list(verdict.next_steps)
    if ranking.config is not None:
        steps.insert(0, reexport_line(case.hf.path, made, ranking))
    return replace(verdict, evidence=tuple(verdict.evidence) + tuple(ranking.evidence()), next_steps=tuple(steps))


def reexport_line(hf_path, made, ranking: Ranking) -> str:
    """How to re-export with the smallest config found."""
    from parity.core.paths import argument

    kept = ", ".join(ranking.config)
    where = argument(ranking.written) if ranking.written else "FILE.json"
    line = (f"keep {kept} at {ranking.fix_bits} bits: llmexport --path {argument(hf_path)} --export mnn "
            f"--quant_bit {made.quant_bit}" + (f" --quant_block {made.quant_block}" if made.quant_block != 64 else "")
            + f" --quant_config {where}")
    if ranking.written:
        return line + f" (written by --write-quant-config)"
    return line + f", FILE.json holding {json.dumps(ranking.config)} (or give --write-quant-config FILE.json)"


def ranked_pass(case, verdict):
    """A passing export with --rank-layers: the cheap ranking only (nothing to fix, nothing written)."""
    from dataclasses import replace

    from parity.llm.export import ExportSettings

    ranking = rank(case, ExportSettings.of(case.export), case.given.budget, confirm=False)
    if ranking is None:
        case.notes.append("--rank-layers: the export has no quantized Linear layer parity can match")
        return verdict
    if case.quant_config_path is not None:
        case.notes.append(f"--write-quant-config: nothing written to {case.quant_config_path}: the export "
                          f"already meets the budget")
    case.ranking = ranking.to_dict()
    case.notes.extend(ranking.lines() + ranking.notes)
    return replace(verdict, evidence=tuple(verdict.evidence) + tuple(ranking.evidence()))
