"""The MNN converter, run in a child process inside a private temporary directory.

Never through the ``mnnconvert`` console script or ``MNN.tools.mnnconvert``: that wrapper
imports a logger that pip-installs a package and uploads statistics. The converter writes a
scratch file into the current directory, so it runs in the worker's private directory and the
result is moved into place only when conversion succeeded.

Files in and out go through ``parity.core.paths``: the ONNX model's external data is checked to
stay inside the model's directory before the converter reads anything; the output is checked
before converting (not an input, not a device or FIFO, its directory exists); the model, and
the weights file ``--saveExternalData`` makes (``MODEL.mnn.weight``, which MNN loads from
next to the model), are published together, atomically, only when conversion succeeded. A
model whose name is not valid UTF-8 reaches the converter through a symlink with a plain name.

(The module is named ``converter`` so that the package attribute ``parity.convert`` stays the
function.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from parity.backends.base import check_model_file
from parity.run.worker import ChildFailure, Worker
from parity.core.errors import BackendCrash, BackendError, UsageError
from parity.core.paths import check_output, external_data, is_utf8, publish, stage_model, utf8_name

# Converter options that are parity's business, not the user's.
_RESERVED = {"-f", "--framework", "--modelFile", "--MNNModel", "--bizCode"}
# What MNN's converter names the external weights of MODEL (and what MNN loads with it).
WEIGHT_SUFFIX = ".weight"


@dataclass(frozen=True)
class ConvertResult:
    source: str
    output: str
    options: tuple[str, ...]
    log: str
    weights: str | None = None  # the external weights file, with --saveExternalData


def weights_path(mnn_path: str | os.PathLike) -> Path:
    """Where MNN keeps (and looks for) the external weights of ``mnn_path``."""
    return Path(os.fspath(mnn_path) + WEIGHT_SUFFIX)


def convert(
    onnx_path: str | os.PathLike,
    mnn_path: str | os.PathLike,
    *,
    options: Sequence[str] = (),
    timeout: float = 300.0,
    inputs: Iterable = (),
) -> ConvertResult:
    """Convert ``onnx_path`` to ``mnn_path`` with MNN's converter; raise on any failure, and
    leave nothing at ``mnn_path`` then. ``inputs``: more files the output must not replace."""
    return start_conversion(onnx_path, mnn_path, options=options, timeout=timeout, inputs=inputs).result()


class Conversion:
    """A conversion under way in its own child process (``start_conversion``): ``result()``
    waits for it and publishes the model, ``cancel()`` stops it and leaves nothing."""

    def __init__(self, source: Path, target: Path, options: tuple, timeout: float, protected: list,
                 externals: Sequence = ()):
        self.source, self.target, self.options = source, target, options
        self._protected = protected
        self._worker = Worker("MNN converter", timeout=timeout).start()
        self._scratch = self._worker.dir / "converted.mnn"
        self._step = f"converting {source.name}"
        given = os.path.abspath(source)
        try:
            if not is_utf8(given):  # the converter's C++ argv takes UTF-8 only
                given = str(stage_model(source, self._worker.dir, externals))
            self._worker.submit("parity.mnn.converter:_convert_in_child", step=self._step, source=given,
                                target=str(self._scratch), options=list(options))
        except BaseException:
            self.cancel()
            raise

    def result(self) -> ConvertResult:
        worker = self._worker
        if worker is None:
            raise RuntimeError(f"the conversion of {self.source.name} was collected or cancelled already")
        try:
            try:
                worker.result(step=self._step)
            except BackendCrash:
                raise
            except BackendError as exc:
                said = failure_reason(worker.log_text())
                if said and said not in str(exc):
                    raise BackendError(f"{exc}; converter said: {said}") from None
                raise
            log = worker.log_text()
            unknown = list(dict.fromkeys(_UNKNOWN_OPTION.findall(log)))
            if unknown:  # MNN converts without them: a model other than the one asked for
                raise UsageError(f"MNN's converter does not know {', '.join('--' + o for o in unknown)} "
                                 f"(it said 'Not support option'), so nothing was written; see MNNConvert's "
                                 f"options for the spelling")
            files = [(self._scratch, self.target)]
            weights = weights_path(self._scratch)
            if weights.exists():  # published first: the model that needs it appears last
                files.insert(0, (weights, weights_path(self.target)))
            publish(files, "the converted model", inputs=self._protected)
        finally:
            self.cancel()
        return ConvertResult(str(self.source), str(self.target), self.options, log,
                             str(weights_path(self.target)) if len(files) == 2 else None)

    def cancel(self) -> None:
        """Stop the converter (if still at work) and remove its private directory."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None


# the weight bits MNN's converter takes; it clamps or ignores any other without a word (MNN 3.6.1,
# measured: --weightQuantBits 1 gave 2-bit weights, 9 and -4 8-bit, abc float; 0 is its default,
# no weight quantization)
_WEIGHT_BITS = {0, 2, 3, 4, 5, 6, 7, 8}


def _refuse_bad_numbers(options: list) -> None:
    for i, word in enumerate(options):
        flag, eq, value = word.partition("=")
        if flag != "--weightQuantBits":
            continue
        value = value if eq else (options[i + 1] if i + 1 < len(options) else "")
        try:
            bits = int(value)
        except ValueError:
            bits = None
        if bits not in _WEIGHT_BITS:
            raise UsageError(f"converter option {flag} {value!r}: MNN's converter takes 0 (none) or an integer "
                             f"from 2 to 8 and would quietly convert something else")


def start_conversion(
    onnx_path: str | os.PathLike,
    mnn_path: str | os.PathLike,
    *,
    options: Sequence[str] = (),
    timeout: float = 300.0,
    inputs: Iterable = (),
) -> Conversion:
    """Check the paths and start converting ``onnx_path`` to ``mnn_path`` in a child process;
    return at once. The model appears at ``mnn_path`` only when ``result()`` collects it."""
    if isinstance(options, (str, bytes)):  # its characters would be passed as options, each ignored
        raise UsageError(f"converter options are a list of words (e.g. [\"--fp16\"]), not one string {options!r}")
    if not all(isinstance(option, str) for option in options):
        raise UsageError(f"converter options are words (strings): {list(options)!r}")
    source = Path(onnx_path)
    check_model_file(source, "onnx")
    target = Path(mnn_path)
    for option in options:
        if option.split("=")[0] in _RESERVED:
            raise UsageError(f"converter option {option} is set by parity; leave it out")
    _refuse_bad_numbers(list(options))
    externals = external_data(source)  # refused here when it points outside the model's directory
    protected = [source, *(file for _, file in externals), *inputs]
    check_output(target, "-o", inputs=protected)
    if any(o.split("=")[0] == "--saveExternalData" for o in options):
        check_output(weights_path(target), "-o (its weights file)", inputs=protected)
    return Conversion(source, target, tuple(options), timeout, protected, externals)


# "[20:58:27] :220: " before a converter log line: the time and the source line that logged it
_STAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}\]\s*[^:\s]*:\d+:\s*")
# What MNN's converter says of an option it does not know (and then converts without it)
_UNKNOWN_OPTION = re.compile(r"^Not support option: (\S+)\s*$", re.MULTILINE)
# The line that names what MNN's converter cannot convert, e.g. "These Op Not Support: ONNX::IsNaN"
_UNSUPPORTED = re.compile(r"not support", re.IGNORECASE)


def failure_reason(log: str) -> str:
    """Why the converter failed, from its log, in one line: the line naming the operators it
    does not support (printed before its last line, "Converted Failed!"), else its last line."""
    lines = [_STAMP.sub("", ln.strip()).strip() for ln in log.splitlines()]
    lines = [ln for ln in lines if ln]
    unsupported = list(dict.fromkeys(ln for ln in lines if _UNSUPPORTED.search(ln)))
    if unsupported:
        return ("; ".join(unsupported) + " (MNN has no conversion for these operators: export the model "
                "without them, e.g. another opset or another implementation of the layer)")
    return lines[-1] if lines else ""


def _convert_in_child(source: str, target: str, options: list) -> bool:
    import _tools  # MNN's converter binding, shipped in the MNN wheel

    # the converter's C++ argv takes UTF-8 (the parent staged a source whose name is not UTF-8)
    argv = ["MNNConvert", "-f", "ONNX", "--modelFile", utf8_name(source) or source,
            "--MNNModel", utf8_name(target) or target,
            "--bizCode", "parity", *options]
    ok = _tools.mnnconvert(argv)
    if not ok or not os.path.exists(target) or os.path.getsize(target) == 0:
        raise ChildFailure("backend", f"MNN's converter failed on {os.path.basename(source)}")
    return True
