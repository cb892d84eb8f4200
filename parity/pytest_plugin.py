"""pytest plugin (entry point ``pytest11``): the ``assert_parity`` fixture.

    def test_converted_model(assert_parity):
        assert_parity("model.onnx", "model.mnn", atol=1e-4)

It fails the test with parity's rendered table and verdict when the models disagree, and
returns the Report otherwise. A Hugging Face folder and its MNN-LLM export make an LLM check
(``parity.check_llm``; its keywords: prompts=, steps=, budget=, float_export=, settings=...):

    def test_exported_llm(assert_parity):
        assert_parity("qwen2-0.5b", "qwen2-0.5b-mnn", steps=16, budget="kl_mean<=0.02")
 ``mnn_target=`` and ``mnn_precision=`` say where and how MNN runs
(as --mnn-target and --mnn-precision do); ``pytest --parity-mnn-target arm64`` sets the target
of every check that does not name one. Cheap to import: parity and its frameworks load on first use.
Works under pytest-xdist (every worker checks in its own child processes).
"""

from __future__ import annotations

import pytest


_DEFAULT_TARGET: list = [None]  # from --parity-mnn-target


def check_parity(*models, atol: float | None = None, rtol: float | None = None,
                 mnn_target: str | None = None, mnn_precision: str | None = None, **options):
    """Run ``parity.check`` on ``models``; fail the current test with the rendered report.
    ``atol``, ``rtol``, ``mnn_target`` and ``mnn_precision`` are the options of those names
    (parity.option_groups), made into ``parity.check`` keywords as the CLI makes them; keys
    given in ``mnn_options`` win over ``mnn_target`` and ``mnn_precision``."""
    __tracebackhide__ = True  # pytest shows the test's line and parity's error, not this function
    import io
    import numbers

    from parity.core.errors import ParityError, UsageError
    from parity.llm.folders import is_pair
    from parity.render.text import render

    try:
        for name, value in (("atol", atol), ("rtol", rtol)):  # numpy's scalars are Real too
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0):
                raise UsageError(f"{name} must be a number >= 0, not {value!r}")
        if is_pair(models):
            report = _check_llm(models, atol, rtol, mnn_target, mnn_precision, options)
        else:
            from parity.run.worker import kept_children

            with kept_children("pytest plugin"):  # one MNN child for the session's checks, not one each
                report = _check_models(models, atol, rtol, mnn_target, mnn_precision, options)
    except ParityError as exc:  # the error as it is, without parity's own frames under the test's
        raise exc.with_traceback(None) from None
    if not report.passed:
        buffer = io.StringIO()
        render(report, buffer, color=False, width=150)
        pytest.fail(f"parity: {report.verdict.kind}\n{buffer.getvalue()}", pytrace=False)
    return report


def _check_models(models, atol, rtol, mnn_target, mnn_precision, options):
    from parity.checking.pipeline import check
    from parity.option_groups import check_keywords

    shortcuts = check_keywords({"atol": atol, "rtol": rtol, "mnn_target": mnn_target or _DEFAULT_TARGET[0],
                                "mnn_precision": mnn_precision or None})
    if "mnn_options" in shortcuts:
        shortcuts["mnn_options"].update(options.pop("mnn_options", None) or {})
    return check(list(models), **{**options, **shortcuts})


def _check_llm(models, atol, rtol, mnn_target, mnn_precision, options):
    """A Hugging Face folder and its MNN-LLM export: check_llm, with the target and precision
    shortcuts as for model files (precision one mode: an LLM pair runs the export once)."""
    from parity.core.errors import UsageError
    from parity.llm.check import check_llm

    if atol is not None or rtol is not None:
        raise UsageError("atol and rtol are for model files; an LLM pair is judged by budget= (e.g. 'kl_mean<=0.02')")
    import inspect

    settings = dict(options.pop("settings", None) or {})
    if mnn_precision:
        settings["precision"] = mnn_precision
    known = [n for n, p in inspect.signature(check_llm).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown LLM check option {unknown[0]!r}; an LLM pair takes {', '.join(known)}")
    return check_llm(*models, target=mnn_target or _DEFAULT_TARGET[0], settings=settings, **options)


@pytest.fixture
def assert_parity():
    """``assert_parity(*models, atol=None, rtol=None, **check_options) -> Report``."""
    return check_parity


def pytest_addoption(parser):
    parser.addoption("--parity-mnn-target", default=None, metavar="TARGET",
                     help="parity: where assert_parity runs MNN when a test does not say "
                          "(local, arm64, ssh://[user@]host[:port], exec:COMMAND)")


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: tests that compare models with parity")
    target = config.getoption("--parity-mnn-target", default=None)
    if target not in (None, "local"):  # a bad one is one usage error at start-up, not every test's
        from parity.core.errors import ParityError
        from parity.run.targets import parse_target

        try:
            parse_target(target)
        except ParityError as exc:
            raise pytest.UsageError(f"--parity-mnn-target: {exc}") from None
    _DEFAULT_TARGET[0] = target
