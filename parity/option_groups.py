"""Every option of a check, declared once: its flag, type, default, help, the ``parity.check``
keyword it fills, and whether a sweep manifest or the pytest plugin takes it too.

The CLI makes its click options from these declarations (parity.cli.params), a sweep manifest's
fields are validated and turned into a child's command line by them (parity.checking.sweep), and
the plugin's keywords become ``parity.check`` keywords through them, so an option is added in one
place. Light to import: ``parity --help`` reads this module, so parsers import what they need
when they run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from parity.core.check_stats import CHECK_STATS
from parity.core.errors import UsageError
from parity.run.targets import targets_help

# the words some options take; options.py validates by them
ISOLATE_CHOICES = ("first", "all", "none")
PRECISION_CHOICES = ("normal", "high", "low", "low_bf16")
MEMORY_MODES = {"normal": 0, "high": 1, "low": 2}
INT8_METHODS = ("ADMM", "EMA", "KL")


class BadOptionValue(UsageError):
    """A value the option's parser refuses; the CLI shows it as click shows its own."""

    def __init__(self, flag: str, message: str):
        super().__init__(message)
        self.flag = flag


@dataclass(frozen=True)
class Option:
    name: str  # the click parameter, the manifest field and the Python keyword
    fills: str | None  # the parity.check keyword ("seed", "mnn_options.threads"); None: the CLI's own
    help: str
    # "text", "path" (file or directory), "file", "float>=0", "float>0", "int>=0", "int>=1",
    # "int", "flag", or a tuple of choices
    type: Any = "text"
    default: Any = None
    metavar: str | None = None
    show_default: bool | str = False
    multiple: bool = False
    flags: tuple[str, ...] = ()  # when not just --name-with-dashes
    parse: Callable[[Any], Any] | None = None  # the CLI's value -> the keyword's value
    help_for: Mapping[str, str] = field(default_factory=dict)  # another command's own help
    # how a sweep manifest spells it: "text", "number", "integer", "bool", "shapes"; None: not there
    manifest: str | None = None
    plugin: bool = False  # a keyword of assert_parity / check_parity besides parity.check's own

    @property
    def flag(self) -> str:
        return self.flags[-1] if self.flags else "--" + self.name.replace("_", "-")


def _shapes(values) -> dict:
    from parity.core.specs import parse_shape

    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        if not sep or not name:
            raise BadOptionValue("--shape", f"{value!r} is not NAME=1x64x32")
        if name in shapes:
            raise BadOptionValue("--shape", f"input {name!r} is given twice; give each input one shape")
        try:
            shapes[name] = parse_shape(dims)
        except ValueError as exc:
            raise BadOptionValue("--shape", str(exc)) from None
        if 0 in shapes[name]:
            raise BadOptionValue("--shape", f"{value!r} has a dim of 0: an empty input, with nothing to compare")
    return shapes


def _val_ranges(values) -> tuple:
    from parity.core.inputs import parse_val_range

    ranges = tuple(parse_val_range(v) for v in values)
    names = [name for name, _ in ranges]
    twice = next((name for name in names if names.count(name) > 1), False)
    if twice is not False:
        raise BadOptionValue("--val-range", f"{'input ' + repr(twice) if twice else 'every input (no NAME)'} is "
                                            f"given twice; give each one range")
    return ranges


def _output_tolerances(values) -> dict:
    """``--tol NAME=ATOL,RTOL`` (repeatable) -> name -> Tolerance."""
    from parity.core.metrics import Tolerance

    tolerances = {}
    for value in values:
        name, sep, numbers = value.rpartition("=")
        try:
            atol, rtol = (float(x) for x in numbers.split(","))
            if not sep or not name:
                raise ValueError
            if name in tolerances:
                raise BadOptionValue("--tol", f"output {name!r} is given twice; give each output one tolerance")
            tolerances[name] = Tolerance(atol, rtol)
        except ValueError:
            raise BadOptionValue("--tol", f"{value!r} is not NAME=ATOL,RTOL with numbers >= 0 "
                                          f"(e.g. logits=1e-3,1e-2)") from None
    return tolerances


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GB"``, ``"1000000"`` -> bytes (--max-memory)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise BadOptionValue("--max-memory", f"{text!r} is not a size like 512M or 2G")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    size = int(float(match.group(1)) * factor)
    if size < 1:  # no tensor fits in 0 bytes: the capture would hold each alone and say it stayed within
        raise BadOptionValue("--max-memory", f"{text!r} is no memory at all; give a size like 512M or 2G")
    return size


def _not(value: bool) -> bool:
    return not value


_ATOL_DEFAULT = "2e-3 x max(1, max|reference|)"

# The check's own options, in groups, each in the order `parity check --help` lists them.
COMPARISON = (
    Option("atol", "tolerance.atol", type="float>=0", show_default=_ATOL_DEFAULT, manifest="number", plugin=True,
           help="Absolute tolerance of the element rule |c - r| <= atol + rtol * |r|. By default it scales with "
                "each output's largest magnitude; a value given here is absolute.",
           help_for={"convert": "Absolute tolerance of the check.", "compare": "Absolute tolerance (see check)."}),
    Option("rtol", "tolerance.rtol", type="float>=0", show_default="1e-3", manifest="number", plugin=True,
           help="Relative tolerance of the element rule.",
           help_for={"convert": "Relative tolerance of the check.", "compare": "Relative tolerance (see check)."}),
    Option("seed", "seed", type="int>=0", default=0, show_default=True, manifest="integer",
           help="Seed of the generated inputs (ignored with --inputs).",
           help_for={"convert": "Seed of the generated inputs."}),
    Option("shape", "shapes", multiple=True, metavar="NAME=1x64x32", parse=_shapes, manifest="shapes",
           help="Concrete shape for an input with dynamic dims (repeatable). Dynamic dims default to 1.",
           help_for={"convert": "Concrete shape for an input with dynamic dims (repeatable)."}),
    Option("inputs", "inputs", type="path", manifest="text",
           help="Use the arrays in this .npz (one per input name) instead of generated inputs; a directory or a "
                "quoted glob ('data/*.npz') of .npz files runs each as a sample, with figures aggregated (worst "
                "sample, mean cosine, top-1 agreement).",
           help_for={"convert": "Check on the arrays in this .npz (or each .npz of a directory or quoted glob, "
                                "as samples) instead of generated inputs."}),
    Option("save_inputs", "save_inputs", type="path", metavar="FILE.npz",
           help="Write the inputs used to this .npz, to rerun or share the exact case."),
    Option("val_range", "val_ranges", multiple=True, metavar="[NAME:]LOW,HIGH", parse=_val_ranges,
           help="Generated inputs in [LOW, HIGH]: floats uniform, integers LOW..HIGH (repeatable; without NAME, "
                "every input), e.g. input_ids:0,30521."),
    Option("data_loader", "data_loader", metavar="FILE.py:FUNCTION",
           help="Inputs from your code: FUNCTION yields (or returns) dicts of input name -> array, each a sample "
                "(runs FILE.py, as --torch does)."),
    Option("tol", "tolerances", multiple=True, metavar="NAME=ATOL,RTOL", parse=_output_tolerances,
           help="The tolerance of one output (repeatable), e.g. logits=1e-3,1e-2."),
    Option("check_stat", "check_stat", type=CHECK_STATS, default="elementwise", show_default=True,
           help="What decides a float output: every element within atol + rtol |r| (elementwise), or "
                "max/mean/median |c - r| within atol + rtol * the same of |r|, or cosine >= 1 - rtol."),
    Option("save_outputs", "save_outputs", type="path", metavar="FILE.npz",
           help="Write the reference model's outputs to this .npz, to compare later runs with them."),
    Option("load_outputs", "load_outputs", type="file", metavar="FILE.npz",
           help="Use the outputs saved in this .npz (--save-outputs, or a device's dumps named as the model's "
                "outputs) as the reference: then give one model, e.g. model.mnn."),
    Option("samples_axis", "samples_axis", type="int", metavar="AXIS",
           help="The --inputs .npz holds many samples along AXIS of every array: each is run and compared on "
                "its own, and the figures are aggregated (as for a directory of .npz files)."),
    Option("allow_nonfinite", "allow_nonfinite", type="flag",
           help="Accept NaN/Inf in --inputs instead of refusing them."),
)

# where the report goes; written by the CLI after the check (OutputOptions)
REPORTS = (
    Option("json", None, type="path", metavar="PATH",
           help="Write the JSON report (schema parity.report/1) to PATH; '-' for stdout."),
    Option("html", None, type="path", metavar="PATH",
           help="Write a self-contained HTML report (verdict, tables, per-layer chart)."),
    Option("junit", None, type="path", metavar="PATH",
           help="Write JUnit XML: one testcase per output per link (and per failing layer)."),
    Option("model_explorer", None, type="path", metavar="PATH",
           help="Write a Google Model Explorer node-data overlay of the per-layer error, keyed by ONNX tensor "
                "names."),
)

_TARGET_HELP = targets_help()  # every kind of target, from its table (run/targets.KINDS)

MNN = (
    Option("timeout", "timeout", type="float>0", default=300.0, show_default=True, manifest="number",
           help="Seconds each MNN step (load, run) may take.",
           help_for={"convert": "Seconds the conversion and each MNN step may take."}),
    Option("mnn_backend", "mnn_options.backend", default="CPU", show_default=True,
           help="MNN backend type (CPU, OPENCL, VULKAN, METAL, ...). One not compiled into MNN falls back to "
                "CPU; the report then says so (a note, and settings.backend_ran in the JSON)."),
    Option("mnn_threads", "mnn_options.threads", type="int>=1", default=4, show_default=True,
           help="MNN CPU threads (through its runtime manager)."),
    Option("mnn_precision", "mnn_options.precision", default="normal", show_default=True, metavar="MODE[,MODE]",
           manifest="text", plugin=True,
           help="MNN precision mode: normal, high, low (float16 arithmetic where the CPU has it, as on ARMv8.2) "
                "or low_bf16. Several, comma-separated (high,low), run the MNN model once each, each its own "
                "link. Without --atol/--rtol, a link that ran in float16 gets float16's default tolerance.",
           help_for={"convert": "MNN precision mode(s) of the check, as in parity check."}),
    Option("mnn_target", "mnn_options.target", default="local", show_default=True, metavar="TARGET",
           manifest="text", plugin=True, help=_TARGET_HELP),
    Option("mnn_memory", "mnn_options.memory", metavar="MODE[,MODE]", manifest="text",
           help="MNN memory mode: normal, high or low; low runs weight-quantized models with dynamic int8 "
                "activations. Several, comma-separated (normal,low), run the MNN model once each, each its own "
                "link [default: MNN's own]."),
    Option("mnn_static_shapes", "mnn_options.static_shapes", type="flag",
           help="Load the MNN model for fixed input shapes (shape_mutable=False), as apps with fixed inputs do; "
                "MNN then plans the graph at load time."),
)

TORCH = (
    # the CLI puts it first in the chain of models
    Option("torch", None, metavar="FILE.py:FACTORY",
           help="A PyTorch model from Python code, put first in the chain: path/to/file.py:factory or "
                "package.module:factory, returning an nn.Module (or an nn.Module class taking no arguments)."),
    Option("torch_inputs", "torch_inputs", metavar="A,B", parse=_names,
           help="Names of the torch model's positional inputs, in order (default: the ONNX model's inputs)."),
)

LAYERS = (
    Option("layers", "layers", type="flag", manifest="bool",
           help="Also compare every intermediate tensor (one capture run per framework) and find the first "
                "layer that diverges.",
           help_for={"convert": "Also compare every intermediate tensor."}),
    Option("layer_rtol", "layer_rtol", type="float>=0", show_default="10 x rtol",
           help="Layer rule: max_abs_diff <= atol + layer_rtol * max|reference| of that tensor."),
    Option("no_diagnose", "diagnose", type="flag", parse=_not,
           help="On a mismatch, skip the experiments that decide between a conversion and a runtime cause (they "
                "rerun MNN and its converter a few times)."),
    Option("repro", "repro", type="path", metavar="DIR",
           help="On a conversion or runtime verdict, write the smallest reproduction (ONNX subgraph, its MNN "
                "conversion, inputs, README.txt with the numbers) to DIR."),
    Option("isolate", "isolate", type=ISOLATE_CHOICES, default="first", show_default=True,
           help="Which failing layers to re-run alone on the reference's inputs, to separate error introduced "
                "there from error carried from upstream."),
    Option("max_memory", "max_memory", metavar="SIZE", parse=parse_size,
           help="Cap on captured tensors held at once with --layers, e.g. 512M or 2G [default: a quarter of "
                "RAM]."),
    Option("fail_on_layers", "fail_on_layers", type="flag",
           help="Exit 1 when a layer differs beyond the layer rule even though every output matches (a "
                "layer-only finding; by default it is reported and the outputs decide the exit code). Implies "
                "--layers."),
)

COMPRESSION = (
    Option("budget", "budget", metavar="RULE[,RULE]", manifest="text",
           help="What compression may cost, judged on float MNN -> compressed MNN: cosine>=X, top1>=X, "
                "snr_db>=X, error<=X, comma-separated [default: by compression: fp16 cosine>=0.9999, int8 "
                "cosine>=0.999, int4 cosine>=0.98]."),
    Option("float_mnn", "float_mnn", type="file", metavar="FLOAT.mnn",
           help="The float conversion of the same ONNX, to attribute a compressed model's loss against "
                "[default: parity converts the ONNX without compression]."),
    Option("no_attribution", "attribute", type="flag", parse=_not,
           help="Check a compressed .mnn directly against ONNX, by the element tolerance, without the float "
                "conversion in between."),
    Option("rank_layers", "rank_layers", type="flag",
           help="Rank the compressed layers by what each costs (one layer compressed at a time), also when the "
                "budget holds; a compression verdict ranks them anyway."),
    Option("write_fixed", "write_fixed", type="file", metavar="FILE.mnn",
           help="Write the compressed model with its most costly layers kept in float (the ranking's fix, built "
                "by MNN's converter from its JSON dump) to FILE.mnn."),
)

DISPLAY = (
    Option("quiet", None, type="flag", flags=("-q", "--quiet"), help="No progress messages on stderr."),
    Option("no_color", None, type="flag", help="Plain terminal output."),
)

# parity convert's own: where the model goes, and how it is quantized to full int8
CONVERSION = (
    Option("output", None, type="path", flags=("-o", "--output"), metavar="MODEL.mnn",
           help="Where to write the MNN model [default: MODEL with the suffix .mnn]."),
    Option("int8_calibration", "calibration", type="path", metavar="DIR",
           help="Make a full int8 model (int8 weights and activations) with MNN's quantization tool, calibrated "
                "on the .npz samples in DIR (or a quoted glob); the check runs on the same samples unless "
                "--inputs is given."),
    Option("int8_method", "calibration_method", type=INT8_METHODS, default="ADMM", show_default=True,
           help="How the quantization tool calibrates activations. MNN 3.6.1 measured here: KL crashed, EMA "
                "ignores the layers to keep in float (no ranking or fix)."),
)

# a Hugging Face model folder against its MNN-LLM export (parity/llm): the CLI's own options,
# read by commands/llm.py; --budget, --mnn-precision, --mnn-memory and the reports are shared
LLM = (
    Option("prompt", None, multiple=True, metavar="TEXT",
           help="LLM pairs: a prompt to continue (repeatable) [default: three built-in prompts]."),
    Option("prompts", None, type="file", metavar="FILE", manifest="text",
           help="LLM pairs: prompts, one per line (blank lines and lines starting with # skipped)."),
    Option("steps", None, type="int>=1", metavar="N", manifest="integer",
           help="LLM pairs: greedy steps per prompt, teacher-forced on the reference's tokens [default: 8]."),
    Option("float_export", None, type="path", metavar="DIR", manifest="text",
           help="LLM pairs: an export of the same model with float16 weights (--quant_bit 16), the floor to "
                "judge conversion and compression against [default: parity exports one]."),
    Option("write_quant_config", None, type="path", metavar="FILE.json",
           help="LLM pairs: on a compression verdict, write the smallest llmexport --quant_config found (the "
                "ranked layers kept at 8 bits, confirmed by real exports) that meets the budget; re-export with "
                "llmexport --quant_config FILE.json. --rank-layers ranks the layers also when the export passes."),
    Option("text", None, type="file", metavar="FILE",
           help="LLM pairs: instead of prompts, teacher-force both sides over this UTF-8 text in windows (as "
                "llama.cpp's perplexity and KL-divergence mode): perplexity of both, KL and same-top figures over "
                "every scored position. With --save-outputs / --load-outputs the reference's logits are kept "
                "for later checks of other exports, which then run no transformers."),
    Option("text_window", None, type="int>=1", metavar="N",
           help="LLM pairs with --text: tokens per window, each scored on its second half [default: 512, at "
                "most the model's max_position_embeddings]."),
    Option("trust_remote_code", None, type="flag",
           help="LLM pairs: accept a Hugging Face folder that holds code (auto_map or .py files); without it "
                "such a folder is refused, as its code would run."),
)

GROUPS = {"comparison": COMPARISON, "reports": REPORTS, "mnn": MNN, "torch": TORCH, "layers": LAYERS,
          "compression": COMPRESSION, "display": DISPLAY, "conversion": CONVERSION, "llm": LLM}
OPTIONS = {option.name: option for group in GROUPS.values() for option in group}
MANIFEST = {name: option for name, option in OPTIONS.items() if option.manifest}
PLUGIN = tuple(name for name, option in OPTIONS.items() if option.plugin)


def check_keywords(values: Mapping[str, Any]) -> dict:
    """``parity.check``'s keywords from declared options' values by option name (a command's
    parameters, the plugin's keywords). Options the CLI handles itself and values that are
    None (not given) are left out; a value its parser refuses raises BadOptionValue."""
    keywords: dict = {}
    for name, value in values.items():
        option = OPTIONS[name]
        if option.fills is None or value is None:
            continue
        if option.parse is not None:
            value = option.parse(value)
        *parents, last = option.fills.split(".")
        into = keywords
        for parent in parents:
            into = into.setdefault(parent, {})
        into[last] = value
    if "tolerance" in keywords:  # --atol/--rtol make one Tolerance, given when either is
        from parity.core.metrics import DEFAULT_RTOL, Tolerance

        given = keywords.pop("tolerance")
        keywords["tolerance"] = Tolerance(given.get("atol"), given.get("rtol", DEFAULT_RTOL))
    return keywords
