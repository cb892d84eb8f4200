"""One link of an LLM check: a candidate's teacher-forced logits against the reference's, per
prompt and step, judged by a budget; and how the report shows it."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from parity.core.report import Comparison, OutputComparison
from parity.llm import figures


class Link:
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
        if s.nonfinite:
            first = next((p, st.step) for p, per in enumerate(self.steps) for st in per if not st.finite)
            return (f"{self.name}: logits not finite (NaN or infinity) at {s.nonfinite} of {s.steps} steps, "
                    f"first at prompt {first[0] + 1}, step {first[1]}; same top token {s.top1:.0%}")
        return (f"{self.name}: KL mean {s.kl_mean:.3g}, p99 {s.kl_p99:.3g}, max {s.kl_max:.3g}; "
                f"same top token {s.top1:.0%}; scaled error {s.error:.3g} over {s.steps} steps")

    def comparison(self) -> Comparison:
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
                          tolerance={"budget": str(self.budget), "rule": f"budget {self.budget}"})

    def to_dict(self) -> dict:
        return {"link": self.name, "run": self.run, "budget": str(self.budget), "passed": self.passed,
                "summary": self.summary.to_dict(), "broken": [str(c) for c in self.broken],
                "first_step_out": None if self.first_out is None else
                {"prompt": self.first_out[0] + 1, **asdict(self.first_out[1])},
                "prompts": [[asdict(s) for s in per] for per in self.steps]}


def _first_out(budget, per):
    step = budget.first_step_out(per)
    return None if step is None else step.step
