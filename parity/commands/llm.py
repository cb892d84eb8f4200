"""``parity check HF_DIR EXPORT_DIR``: a Hugging Face causal LM against its MNN-LLM export
(parity/llm). Parses the LLM options, calls ``check_llm`` and shows the report as any check's."""

from __future__ import annotations

import os
from pathlib import Path

import click

from parity.core.errors import UsageError

_ONLY_LLM = ("prompt", "prompts", "steps", "float_export", "trust_remote_code", "write_quant_config", "text",
             "text_window")


def is_llm_pair(models) -> bool:
    if len(models) != 2 or any(os.path.isfile(m) for m in models):  # model files: no folder to read
        return False
    from parity.llm.folders import is_pair

    return is_pair(models)


def refuse_llm_options(values: dict) -> None:
    given = [n for n in _ONLY_LLM if values.get(n) not in (None, False, ())]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} is for a Hugging Face folder and its MNN-LLM export "
                         f"(parity check HF_DIR EXPORT_DIR)")


# what an LLM pair takes besides _ONLY_LLM; any other option given would do nothing: refused
_ALSO_LLM = ("models", "save_outputs", "load_outputs", "budget", "rank_layers", "mnn_precision", "mnn_memory",
             "mnn_target", "timeout", "json", "html", "junit", "quiet", "no_color", "traceback")
LLM_TIMEOUT = 900.0  # seconds MNN.llm and the export may take, unless --timeout says


def _given(name: str) -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def refuse_model_options() -> None:
    """An option of model files given for an LLM pair (--atol, --layers, --shape...): exit 2
    naming it, instead of a check that silently ignores it (a PASS under --atol 0)."""
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx is not None else ():
        if param.name not in _ONLY_LLM + _ALSO_LLM and _given(param.name):
            flag = max(param.opts, key=len)
            if param.name.startswith("mnn_"):
                raise UsageError(f"{flag} is for .mnn files; MNN.llm runs as the export's config.json says "
                                 f"(thread_num, backend_type...); --mnn-precision and --mnn-memory override it")
            raise UsageError(f"{flag} is for model files; an LLM pair (a Hugging Face folder and its MNN-LLM "
                             f"export) is judged by --budget over its --steps or --text (see parity check --help)")


def prompts_of(values: dict) -> tuple[str, ...] | None:
    prompts = list(values.get("prompt") or ())
    if values.get("prompts"):
        from parity.core.paths import check_input

        check_input(values["prompts"], "--prompts")
        try:
            text = Path(values["prompts"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts {values['prompts']}: not readable as UTF-8 text ({exc})") from None
        # one per line: split at newlines only (str.splitlines also splits at \f, \x1c, U+2028...)
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        prompts += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise UsageError(f"--prompts {values['prompts']}: no prompt in the file")
    return tuple(prompts) or None


def settings_of(values: dict) -> dict:
    """--mnn-precision / --mnn-memory, when given: the export then runs with them instead of
    its config.json's (what the app runs)."""
    settings = {}
    for name, key in (("mnn_precision", "precision"), ("mnn_memory", "memory")):
        if _given(name) and values.get(name):
            if "," in values[name]:
                raise UsageError(f"--{name.replace('_', '-')}: one mode for an LLM pair, not a list")
            settings[key] = values[name]
    return settings


def check(models, quiet: bool, values: dict):
    """The report of the pair and where its reports go (OutputOptions), for the caller to emit."""
    from parity.commands.params import check_options, check_report_paths, group, progress, report_flags
    from parity.llm.check import DEFAULT_PROMPTS, DEFAULT_STEPS, check_llm

    written = {"--write-quant-config": values.get("write_quant_config")}
    refuse_model_options()
    check_report_paths(report_flags(values), inputs=[*models, *_files(models), values.get("prompts")], others=written)
    target = values.get("mnn_target")
    if target not in (None, "local"):
        from parity.run.targets import parse_target

        parse_target(target)  # one line for a bad one, before anything runs
    output = check_options({name: values.get(name) for name in group("reports")}).output
    if values.get("text") or values.get("text_window") or values.get("save_outputs") or values.get("load_outputs"):
        return text_check(models, quiet, values), output
    kwargs = dict(prompts=prompts_of(values) or DEFAULT_PROMPTS, steps=values.get("steps") or DEFAULT_STEPS,
                  settings=settings_of(values), float_export=values.get("float_export"),
                  trust_remote_code=bool(values.get("trust_remote_code")), target=target,
                  timeout=_timeout(values), rank_layers=bool(values.get("rank_layers")),
                  write_quant_config=values.get("write_quant_config"))
    if values.get("budget"):
        kwargs["budget"] = values["budget"]
    with progress(quiet) as say:
        say(f"checking the MNN-LLM export {models[1]} against {models[0]} (transformers, llmexport, MNN.llm)")
        report = check_llm(models[0], models[1], **kwargs)
    return report, output


def _timeout(values: dict) -> float:
    """--timeout as given; by default LLM_TIMEOUT (an export or MNN.llm's load takes minutes)."""
    return values["timeout"] if _given("timeout") else LLM_TIMEOUT


def _files(models) -> list[Path]:
    """The files of both folders: no output may replace one (a config.json, the weights)."""
    return [f for m in models if Path(m).is_dir() for f in Path(m).iterdir() if f.is_file()]


def text_check(models, quiet: bool, values: dict):
    """--text (parity/llm/text_check.py): it replaces the prompts' check, so prompt options are refused
    with it; --save-outputs / --load-outputs keep the reference's logits of the text."""
    from parity.commands.params import check_report_paths, progress, report_flags
    from parity.llm.text_check import check_text

    if not values.get("text"):
        given = next(f for f in ("text_window", "save_outputs", "load_outputs") if values.get(f))
        raise UsageError(f"--{given.replace('_', '-')} on an LLM pair goes with --text FILE (the reference's "
                         f"logits kept are the text's)")
    for name in ("prompt", "prompts", "steps", "float_export"):
        if values.get(name):
            raise UsageError(f"--{name.replace('_', '-')} and --text: --text replaces the prompts' check; "
                             f"run them as two checks")
    if values.get("save_outputs") and values.get("load_outputs"):
        raise UsageError("--save-outputs and --load-outputs together: the saved file would be a copy; give one")
    read = [*models, *_files(models), values["text"], values.get("load_outputs")]
    check_report_paths(report_flags(values), inputs=read, others={"--save-outputs": values.get("save_outputs")})
    kwargs = dict(window=values.get("text_window"), settings=settings_of(values), target=values.get("mnn_target"),
                  trust_remote_code=bool(values.get("trust_remote_code")), timeout=_timeout(values),
                  save_outputs=values.get("save_outputs"), load_outputs=values.get("load_outputs"))
    if values.get("budget"):
        kwargs["budget"] = values["budget"]
    with progress(quiet) as say:
        say(f"checking the MNN-LLM export {models[1]} against {models[0]} over the text {values['text']}")
        return check_text(models[0], models[1], values["text"], progress=say, **kwargs)
