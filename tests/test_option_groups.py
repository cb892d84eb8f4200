"""The check options are declared once (parity.option_groups): the CLI's click options, a sweep
manifest's fields and the pytest plugin's keywords all come from those declarations, and build
the same CheckOptions as the Python API's keywords."""

from __future__ import annotations

import inspect

import click
import pytest

from parity.cli import cli
from parity.commands.params import check_options
from parity.option_groups import CHECK_STATS, MANIFEST, OPTIONS, PLUGIN
from parity.options import CheckOptions, OutputOptions


def _parsed(command: str, argv: list[str]) -> dict:
    """What click makes of ``argv`` for ``command``: its parameters by name."""
    ctx = cli.commands[command].make_context(command, list(argv), resilient_parsing=False)
    return dict(ctx.params)


@pytest.mark.parametrize("command", ["check", "convert", "compare"])
def test_every_option_of_the_command_is_declared_with_its_help(command):
    # compare's own: how to read raw dumps, which no check has
    own = {"traceback", "dtype", "shape_text", "model_input"}
    params = [p for p in cli.commands[command].params if isinstance(p, click.Option) and p.name not in own]
    assert len(params) >= 7
    for param in params:
        declared = OPTIONS[param.name]  # KeyError: an option the command declares by itself
        assert param.help == declared.help_for.get(command, declared.help)
        assert declared.flag in param.opts


def test_cli_values_build_the_options_the_python_keywords_build():
    values = _parsed("check", ["a.onnx", "b.mnn", "--rtol", "0.01", "--seed", "3", "--shape", "x=1x4",
                               "--tol", "y=1e-3,1e-2", "--isolate", "all", "--mnn-threads", "2",
                               "--mnn-static-shapes", "--no-diagnose", "--no-attribution", "--max-memory", "1M",
                               "--save-inputs", "in.npz", "--json", "r.json", "--check-stat", "cosine"])
    for own in ("models", "torch", "quiet", "no_color"):
        values.pop(own)
    from parity.core.metrics import Tolerance

    expected = CheckOptions.from_keywords(
        tolerance=Tolerance(None, 0.01), seed=3, shapes={"x": (1, 4)}, tolerances={"y": Tolerance(1e-3, 1e-2)},
        isolate="all", max_memory=1 << 20, diagnose=False, attribute=False, save_inputs="in.npz",
        check_stat="cosine", mnn_options={"threads": 2, "static_shapes": True})
    made = check_options(values)
    assert made.output.json == "r.json" and made.output.save_inputs == "in.npz"
    assert made == CheckOptions(**{**{f: getattr(expected, f) for f in expected.__dataclass_fields__},
                                   "output": OutputOptions(save_inputs="in.npz", json="r.json")})


def test_a_manifest_entry_reaches_the_check_as_its_declared_options():
    """Every manifest field that is a check option becomes the flag that sets the same value."""
    from parity.checking.sweep import Item

    entry = {"atol": 0.5, "rtol": 0.25, "seed": 7, "timeout": 60.0, "inputs": "x.npz", "layers": True,
             "mnn_target": "arm64", "mnn_precision": "high,low", "shape": {"x": [1, 8], "y": "2x3"},
             "mnn_memory": "low", "budget": "cosine>=0.99", "steps": 4, "prompts": "p.txt", "float_export": "f16"}
    assert set(entry) == set(MANIFEST)  # this test covers every manifest option
    argv = Item("m", ["a.onnx", "b.mnn"], entry).argv()
    assert argv[:3] == ["check", "a.onnx", "b.mnn"]
    values = _parsed("check", argv[1:])
    assert values["models"] == ("a.onnx", "b.mnn")
    assert (values["atol"], values["rtol"], values["seed"], values["timeout"]) == (0.5, 0.25, 7, 60.0)
    assert (values["inputs"], values["layers"], values["mnn_target"], values["mnn_precision"]) == (
        "x.npz", True, "arm64", "high,low")
    assert values["shape"] == ("x=1x8", "y=2x3")
    assert (values["mnn_memory"], values["budget"], values["steps"], values["prompts"], values["float_export"]) == (
        "low", "cosine>=0.99", 4, "p.txt", "f16")


def test_an_unknown_manifest_field_lists_the_declared_ones(tmp_path):
    from parity.checking.sweep import discover
    from parity.core.errors import InputError

    manifest = tmp_path / "zoo.toml"
    manifest.write_text('[[model]]\nonnx = "a.onnx"\nmnn = "a.mnn"\nlayer_rtol = 0.1\n', encoding="utf-8")
    with pytest.raises(InputError) as raised:
        discover(manifest)
    message = str(raised.value)
    assert "unknown field 'layer_rtol'" in message
    assert all(name in message for name in MANIFEST)


def test_the_plugin_takes_the_options_declared_for_it():
    from parity.pytest_plugin import check_parity

    keywords = [p.name for p in inspect.signature(check_parity).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert sorted(keywords) == sorted(PLUGIN)


def test_the_check_statistics_are_one_list():
    from parity.core.judge import CHECK_STATS as judged

    choice = next(p for p in cli.commands["check"].params if p.name == "check_stat").type
    assert judged is CHECK_STATS and tuple(choice.choices) == CHECK_STATS


def test_check_options_take_and_give_what_the_check_writes_by_the_old_names():
    options = CheckOptions(seed=2, save_inputs="in.npz", repro="out/", write_fixed="f.mnn")
    assert options.output == OutputOptions(save_inputs="in.npz", repro="out/", write_fixed="f.mnn")
    assert (options.save_inputs, options.repro, options.write_fixed, options.save_outputs) == (
        "in.npz", "out/", "f.mnn", None)
    recorded = CheckOptions(output=OutputOptions(json="r.json"), save_outputs="o.npz").to_dict()
    assert recorded["save_outputs"] == "o.npz" and "json" not in recorded and "output" not in recorded
