"""Per-step figures and budgets of the LLM check, against figures computed here by hand."""

import math

import numpy as np
import pytest

from parity import UsageError
from parity.llm import figures
from parity.llm.budget import Budget


def test_identical_logits_cost_nothing():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50))
    for step in figures.steps(logits, logits.copy()):
        assert step.kl == pytest.approx(0.0, abs=1e-12) and step.top1 and step.top5 == 1.0
        assert step.scaled_error == 0.0 and step.p_lost == pytest.approx(0.0, abs=1e-12)


def test_kl_top_tokens_and_error_by_hand():
    ref = np.array([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
    cand = np.array([[1.0, 2.0, 0.0, -1.0, -2.0, -3.0]])  # the top two swapped
    p = np.exp(ref[0]) / np.exp(ref[0]).sum()
    q = np.exp(cand[0]) / np.exp(cand[0]).sum()
    (step,) = figures.steps(ref, cand)
    assert step.kl == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)
    assert not step.top1 and step.reference_token == 0 and step.candidate_token == 1
    assert step.top5 == 1.0  # the same five tokens lead, in another order
    assert step.scaled_error == pytest.approx(1.0 / 3.0)  # max|diff| 1 over max|ref| 3
    assert step.p_lost == pytest.approx(p[0] - q[0])


def test_summary_is_llama_cpp_like():
    ref = np.zeros((100, 8))
    cand = np.zeros((100, 8))
    cand[-1, 3] = 5.0  # one step of a hundred differs, and flips its top token
    summary = figures.summarize(figures.steps(ref, cand))
    kls = [s.kl for s in figures.steps(ref, cand)]
    assert summary.kl_max == pytest.approx(max(kls)) and summary.kl_mean == pytest.approx(max(kls) / 100)
    assert summary.top1 == pytest.approx(0.99)


def test_non_finite_candidate_is_out_of_every_budget():
    ref = np.zeros((1, 4))
    cand = np.array([[np.nan, 0, 0, 0]])
    (step,) = figures.steps(ref, cand)
    assert math.isinf(step.kl) and not step.top1
    assert Budget.parse("kl_mean<=1").broken(figures.summarize([step]))


def test_budget_clauses_and_the_first_step_out():
    ref = np.zeros((3, 6))
    cand = np.zeros((3, 6))
    cand[1, 3] = 4.0  # step 1 flips its top token
    steps = figures.steps(ref, cand)
    budget = Budget.parse("kl_p99<=0.5, top1>=0.9")
    summary = figures.summarize(steps)
    assert [str(c) for c in budget.broken(summary)] == ["kl_p99<=0.5", "top1>=0.9"]
    assert budget.first_step_out(steps).step == 1
    assert Budget.parse("error<=10").broken(summary) == []


@pytest.mark.parametrize("text", ["kl<=1", "kl_mean<1", "top1>=x", ""])
def test_a_bad_budget_is_a_usage_error_naming_the_clauses(text):
    with pytest.raises(UsageError, match="kl_mean"):
        Budget.parse(text)


def test_the_html_report_charts_each_link_per_step_a_line_per_prompt():
    """Per link two charts (KL, scaled error), a line per prompt with a point per step, every point
    inside the chart, whatever the figures' range (a float export's 1e-7 beside a quantized 0.5)."""
    import re

    from parity.core.report import Report, Verdict
    from parity.render import html

    def steps(n, scale):
        return [{"step": i, "kl": scale * (i + 1), "scaled_error": scale * 3, "top1": True} for i in range(n)]

    links = [{"link": "transformers -> mnn-llm", "prompts": [steps(4, 0.5), steps(6, 0.1)]},
             {"link": "transformers -> mnn-llm float export", "prompts": [steps(4, 1e-7), steps(6, 3e-7)]}]
    report = Report(passed=False, backends=(), inputs=(), comparisons=(), verdict=Verdict("compression", "", "s"),
                    llm={"links": links})
    page = html.render(report)
    charts = re.findall(r'<svg class="steps" width="(\d+)" height="(\d+)"', page)
    lines = re.findall(r'<polyline class="prompt"[^>]* points="([^"]*)"', page)
    assert len(charts) == 4 and len(lines) == 8
    counts = [len(points.split()) for points in lines]
    assert counts == [4, 6, 4, 6, 4, 6, 4, 6]
    width, height = map(int, charts[0])
    for points in lines:
        for x, y in (map(float, p.split(",")) for p in points.split()):
            assert 0 <= x <= width and 0 <= y <= height
