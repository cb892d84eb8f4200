"""The tokenizer and chat template of an export against the Hugging Face model's.

The ids each side gives for the same text (the prompts, the prompts with the chat template
applied, and ``HARD_STRINGS``), special tokens included as each side adds them (BOS where a
tokenizer adds one); and the chat template each side renders for the same message. A
difference is reported at its first differing id, with the text and tokens around it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Strings tokenizers get wrong: whitespace runs, unicode normalization, emoji sequences, CJK,
# control-like characters, and the special tokens themselves (added per model in ``texts``).
HARD_STRINGS = (
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\t\tand\nnew\n\nlines",
    "many        spaces   between",
    "Ünïcödé café naïve résumé",
    "combining e\u0301 and precomposed \u00e9",
    "emoji 😀🚀 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧",
    "北京是中国的首都。東京は日本の首都です。서울",
    "non\u00a0breaking\u200bzero width",
    "digits 1234567890 3.14159 -42",
    "code: def f(x):\n    return x ** 2",
)


@dataclass(frozen=True)
class TextComparison:
    label: str  # "prompt 1", "prompt 1 (chat)", "hard 3", "special tokens"
    text: str
    reference_ids: tuple
    candidate_ids: tuple

    @property
    def same(self) -> bool:
        return self.reference_ids == self.candidate_ids

    @property
    def decisive(self) -> bool:
        """A prompt the check feeds (raw or chat-templated), not one of the hard strings."""
        return self.label.startswith("prompt ")

    @property
    def first_difference(self) -> int | None:
        for i, (a, b) in enumerate(zip(self.reference_ids, self.candidate_ids)):
            if a != b:
                return i
        n, m = len(self.reference_ids), len(self.candidate_ids)
        return None if n == m else min(n, m)


@dataclass(frozen=True)
class TemplateComparison:
    prompt: str
    reference: str | None  # None: that side has no chat template
    candidate: str | None

    @property
    def same(self) -> bool:
        return self.reference == self.candidate

    @property
    def first_difference(self) -> int | None:
        a, b = self.reference or "", self.candidate or ""
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return i
        return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class TokenizerResult:
    texts: tuple  # TextComparison
    templates: tuple  # TemplateComparison
    # one line per difference on what the check feeds (the prompts, raw and chat-templated, and
    # the chat template): these decide the verdict
    findings: tuple
    # one line per difference on the hard strings only: reported, not deciding by themselves
    # (transformers NFC-normalizes "e\u0301" where the tokenizers library and MNN do not)
    hard_findings: tuple = ()

    @property
    def same(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {
            "compared": len(self.texts),
            "differing": [asdict(t) | {"first_difference": t.first_difference}
                          for t in self.texts if not t.same],
            "templates": [asdict(t) | {"first_difference": t.first_difference}
                          for t in self.templates if not t.same],
            "findings": list(self.findings),
            "hard_string_findings": list(self.hard_findings),
        }


def texts(prompts, chat_prompts, special_tokens) -> list[tuple[str, str]]:
    """(label, text) of everything both tokenizers are given."""
    out = [(f"prompt {i + 1}", p) for i, p in enumerate(prompts)]
    out += [(f"prompt {i + 1} (chat template)", p) for i, p in enumerate(chat_prompts or ())]
    out += [(f"hard string {i + 1}", s) for i, s in enumerate(HARD_STRINGS)]
    specials = [t for t in special_tokens if t]
    if specials:
        out.append(("special tokens", "".join(f"{t} word " for t in specials)))
    return out


def compare(labelled, reference_ids, candidate_ids, decode_reference, *, templates=()) -> TokenizerResult:
    """The comparison of ids (lists aligned with ``labelled``) and of rendered templates.
    ``decode_reference(ids)`` turns ids into text for the messages."""
    compared = tuple(TextComparison(label, text, tuple(r), tuple(c))
                     for (label, text), r, c in zip(labelled, reference_ids, candidate_ids))
    findings = [_template_line(t) for t in templates if not t.same]
    findings += [_ids_line(t, decode_reference) for t in compared if not t.same and t.decisive]
    hard = [_ids_line(t, decode_reference) for t in compared if not t.same and not t.decisive]
    return TokenizerResult(compared, tuple(templates), tuple(findings), tuple(hard))


def _ids_line(t: TextComparison, decode) -> str:
    i = t.first_difference
    ref = list(t.reference_ids[i:i + 3])
    cand = list(t.candidate_ids[i:i + 3])
    before = decode(list(t.reference_ids[:i]))
    return (f"{t.label}: ids differ from position {i} (after {before[-30:]!r}): "
            f"transformers {ref} ({decode(ref)!r}), the export {cand}; "
            f"text {t.text[:60]!r}, {len(t.reference_ids)} vs {len(t.candidate_ids)} ids")


def _template_line(t: TemplateComparison) -> str:
    if t.candidate is None or t.reference is None:
        missing = "the export" if t.candidate is None else "the Hugging Face model"
        return f"chat template: {missing} has none (prompt {t.prompt[:40]!r})"
    i = t.first_difference
    return (f"chat template: the rendered prompt differs at character {i}: transformers "
            f"{t.reference[max(0, i - 20):i + 20]!r}, the export {t.candidate[max(0, i - 20):i + 20]!r}")
