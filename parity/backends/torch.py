"""PyTorch adapter: an ExportedProgram (.pt2), a TorchScript file (.pt/.ts/.torchscript), or
Python code (``path/to/file.py:factory`` or ``package.module:factory``).

torch is an optional extra: it is imported in ``open()``, and its absence is a backend error
with the install hint. Models run in-process on CPU, in eval mode, under inference_mode.
Input names and order are borrowed from the ONNX (or MNN) model in the chain, or given.

Outputs are flattened depth-first into name -> array: a tensor is named by the model's single
output (``output`` until paired); a tuple or list by index (``0``, ``1``); a dict, or a
Hugging Face ``ModelOutput``, by key in insertion order, skipping None; nesting joins the parts
with dots (``encoder.0``). This is the order torch.onnx flattens outputs in, so outputs whose
names differ from the ONNX names still pair by position.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.backends.base import Backend, RunResult, check_model_file
from parity.core.errors import BackendError, FrameworkMissing, InputError, ModelError, UsageError, user_code

OUTPUT_PREFIX = "::output::"  # capture name for a returned output (matches parity.checking.pairing)
from parity.core.specs import TensorMap, TensorSpec

INSTALL_HINT = "pip install 'parity[torch]'"
FILE_SUFFIXES = (".pt2", ".pt", ".ts", ".torchscript")


def import_torch():
    try:
        import torch
    except ImportError:
        raise FrameworkMissing("torch", f"a PyTorch model needs it: {INSTALL_HINT}") from None
    return torch


def is_factory_spec(text: str) -> bool:
    return ":" in text and not Path(text).suffix.lower() in FILE_SUFFIXES


def _load_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UsageError(f"--torch {spec!r} is not path/to/file.py:factory or package.module:factory")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"--torch file {target!r} does not exist")
        name = f"parity_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))  # let the file import its neighbours
        try:
            with user_code(f"importing --torch file {target!r}", ModelError):  # sys.exit is no Exception
                try:
                    module_spec.loader.exec_module(module)
                except Exception as exc:
                    raise ModelError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from None
        finally:
            sys.path.pop(0)
    else:
        try:
            with user_code(f"importing {target!r} for --torch", ModelError):
                module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(f"cannot import {target!r} for --torch: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ModelError(f"{target!r} has no {attr!r}; it has {names}") from None


def flatten_outputs(value, prefix: str = "") -> list[tuple[str, object]]:
    """Depth-first (name, tensor) pairs; the documented order above."""
    torch = sys.modules["torch"]
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):  # ModelOutput is an OrderedDict holding only non-None fields
        children = [(str(k), v) for k, v in value.items() if v is not None]
    elif isinstance(value, (tuple, list)):
        children = [(str(i), v) for i, v in enumerate(value)]
    elif value is None:
        return []
    else:  # a Python number: comparable as a 0-d array
        return [(prefix or "output", value)]
    for key, child in children:
        items.extend(flatten_outputs(child, f"{prefix}.{key}" if prefix else key))
    return items


class TorchBackend(Backend):
    framework = "torch"
    suffixes = FILE_SUFFIXES
    manifest_key = "torch"
    describes_inputs = False  # a module's forward has names, not specs: it takes the chain's

    def __init__(self, path, *, input_names: list[str] | None = None, **options):
        spec = str(path)
        is_factory = is_factory_spec(spec)
        super().__init__(spec.rpartition(":")[0] if is_factory else path, **options)
        self.spec, self.is_factory = spec, is_factory  # file.py:factory, as given
        self.input_names = list(input_names) if input_names else None
        self._inputs: list[TensorSpec] | None = None
        self._module = None
        self._output_names: list[str] | None = None
        self._exported_shapes: ExportedShapes | None = None  # a .pt2's input shapes

    @classmethod
    def names_code(cls, text: str) -> bool:
        return ":" in text  # path/to/file.py:factory or package.module:factory

    @classmethod
    def variants(cls, options, role: str = "") -> list[dict]:
        return [{"input_names": list(options.torch_inputs) if options.torch_inputs else None}]

    @property
    def label(self) -> str:
        return f"torch model {self.spec if self.is_factory else self.path.name}"

    def open(self) -> None:
        if not self.is_factory:
            check_model_file(self.path, self.framework)
        self._open()
        self._opened = True

    def _open(self) -> None:
        torch = import_torch()
        if self.is_factory:
            factory = _load_factory(self.spec)
            with user_code(f"calling {self.spec}", ModelError):  # sys.exit is no Exception
                try:
                    module = factory if isinstance(factory, torch.nn.Module) else factory()
                except Exception as exc:
                    raise ModelError(f"calling {self.spec} failed: {type(exc).__name__}: {exc}") from None
            if not isinstance(module, torch.nn.Module):
                raise ModelError(f"{self.spec} returned {type(module).__name__}, not a torch.nn.Module")
        elif self.path.suffix.lower() == ".pt2":
            if not zipfile.is_zipfile(self.path):
                raise ModelError(f"{str(self.path)!r} is not an ExportedProgram (.pt2 files are zip archives)")
            import logging

            quiet = logging.getLogger("torch.export")
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)  # torch logs a traceback before raising
            try:
                program = torch.export.load(str(self.path))
                module = program.module()
            except Exception as exc:
                raise ModelError(f"{str(self.path)!r} is not a loadable ExportedProgram (.pt2): "
                                 f"{_first_line(exc)}") from None
            finally:
                quiet.setLevel(level)
            self._exported_shapes = exported_shapes(program)
        else:
            try:
                module = torch.jit.load(str(self.path), map_location="cpu")
            except Exception as exc:
                raise ModelError(
                    f"{str(self.path)!r} is not a TorchScript file ({_first_line(exc)}); for a "
                    f"pickled nn.Module or a state dict use --torch file.py:factory"
                ) from None
        if hasattr(module, "eval") and not self.path.suffix.lower() == ".pt2":
            module.eval()
        self._module = module

    def bind_inputs(self, specs: list[TensorSpec]) -> None:
        """Take input names, order and dtypes from another model in the chain."""
        if self.input_names:
            by_name = {s.name: s for s in specs}
            unknown = [n for n in self.input_names if n not in by_name]
            if specs and unknown:
                raise UsageError(f"--torch-inputs names {unknown}, which the other models lack; they have {list(by_name)}")
            self._inputs = [by_name.get(n, TensorSpec(n, None, "float32")) for n in self.input_names]
        else:
            self._inputs = list(specs)

    @property
    def input_specs(self) -> list[TensorSpec]:
        if self._inputs is None:
            if self.input_names:
                return [TensorSpec(n, None, "float32") for n in self.input_names]
            raise UsageError(f"{self.label} has no input names: give --torch-inputs a,b")
        return self._inputs

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, None, "?") for n in (self._output_names or [])]

    @property
    def version(self) -> str:
        return import_torch().__version__

    def settings(self) -> dict:
        route = "factory" if self.is_factory else (
            "exported_program" if self.path.suffix.lower() == ".pt2" else "torchscript")
        return {"route": route, "device": "cpu", "mode": "eval, inference_mode"}

    def module_names(self) -> list[str] | None:
        """Qualified names of the submodules whose calls can be hooked, or None when the model
        is a graph (.pt2, TorchScript) whose submodules are never called one by one."""
        torch = import_torch()
        if not self.is_factory or isinstance(self._module, torch.jit.ScriptModule):
            return None
        return [name for name, _ in self._module.named_modules() if name]

    def capture(self, feeds: TensorMap, names: list[str], *, cache: bool = True) -> RunResult:
        """Run once with forward hooks on the named submodules; return their tensor outputs.

        A module that runs more than once, or returns no single tensor, is left out, with the
        reason in ``RunResult.notes`` as ``name: reason``.
        """
        kept = self.kept_values(feeds, names)
        if kept is not None:
            return kept
        torch = import_torch()
        modules = dict(self._module.named_modules())
        handles = []

        def hook_for(name):
            def hook(_module, _inputs, output):
                seen[name].append(output.detach().clone() if isinstance(output, torch.Tensor) else None)
            return hook

        calls = {name: 0 for name in modules if name}

        def count_for(name):
            def count(_module, _inputs, _output):
                calls[name] += 1
            return count

        for name in calls:
            handles.append(modules[name].register_forward_hook(count_for(name)))
        returned = [n for n in names if n.startswith(OUTPUT_PREFIX)]
        hooked = [n for n in names if not n.startswith(OUTPUT_PREFIX)]
        seen = {name: [] for name in hooked}
        for name in hooked:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        try:
            final = self._run(feeds).outputs
        finally:
            for handle in handles:
                handle.remove()
        self.last_calls = calls
        arrays, notes = {}, []
        for name in returned:
            if name[len(OUTPUT_PREFIX):] in final:
                arrays[name] = final[name[len(OUTPUT_PREFIX):]]
        for name, outputs in seen.items():
            if not outputs:
                notes.append(f"{name}: the module did not run in torch on these inputs")
            elif len(outputs) > 1:
                notes.append(f"{name}: the module ran {len(outputs)} times in one forward")
            elif outputs[0] is None:
                notes.append(f"{name}: the module returned no single tensor")
            else:
                tensor = outputs[0]
                arrays[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        return RunResult(arrays, {}, tuple(notes))

    def _run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        torch = import_torch()
        names = [s.name for s in self.input_specs]
        shapes = [tuple(np.shape(feeds[n])) for n in names]
        exported = self._exported_shapes
        if exported is not None and not exported.accepts(shapes):
            raise self._shape_error(names, shapes)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]
        with user_code(f"running {self.label}", BackendError):  # sys.exit is no Exception
            try:
                with torch.inference_mode():
                    result = self._module(*args)
            except Exception as exc:
                # torch.export's guards (AssertionError "Guard failed: ...", RuntimeError "Expected
                # input at *args[0].shape[0] to be equal to 1" in older torch) check more than
                # ExportedShapes does (relations between dims): the same hint for them
                if exported is not None and _is_guard_failure(exc):
                    raise self._shape_error(names, shapes, _first_line(exc)) from None
                raise BackendError(f"torch failed running {self.label}: {type(exc).__name__}: "
                                   f"{_first_line(exc)}") from None
        arrays: TensorMap = {}
        notes: list[str] = []
        for name, value in flatten_outputs(result):
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu()
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.float()
                    notes.append(f"torch output {name!r} is bfloat16, compared as float32")
                arrays[name] = tensor.numpy()
            else:
                arrays[name] = np.asarray(value)
        self._output_names = list(arrays)
        return RunResult(arrays, {}, tuple(notes))

    def _shape_error(self, names: list[str], shapes: list[tuple[int, ...]], guard: str = "") -> InputError:
        """One line: the shapes the .pt2 was exported for, the shapes given, the --shape to pass."""
        exported = self._exported_shapes
        given = " ".join(f"{n}={_dims(s)}" for n, s in zip(names, shapes))
        if len(exported.dims) != len(names):  # kwargs or non-tensor inputs: its own names
            names = exported.names
        accepts = " ".join(f"{n}={exported.describe(i)}" for i, n in enumerate(names))
        example = exported.example
        if example and len(example) == len(names):
            fix = " ".join(f"--shape {n}={_dims(e)}" for n, e in zip(names, example)) + " (as exported)"
        else:
            fix = " ".join(f"--shape {n}={exported.describe(i)}" for i, n in enumerate(names))
        why = f" ({guard})" if guard else ""
        dynamic = any(not isinstance(d, int) for dims in exported.dims for d in dims)
        return InputError(
            f"{self.path.name} was exported by torch.export for inputs {accepts} and cannot run on "
            f"{given}{why}: pass {fix}, or export it with {'wider ' if dynamic else ''}dynamic_shapes")


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _is_guard_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "Guard failed" in text or (isinstance(exc, RuntimeError) and "Expected input at" in text)


@dataclass(frozen=True)
class ExportedShapes:
    """The user inputs of an ExportedProgram: per input its dims, an int for a static dim or
    (symbol, lowest, highest or None) for a dynamic one; the shapes it was exported at."""

    names: list[str]
    dims: list[tuple]
    example: list[tuple[int, ...]] | None

    def describe(self, index: int) -> str:
        parts = []
        for d in self.dims[index]:
            if isinstance(d, int):
                parts.append(str(d))
            else:
                _, low, high = d
                parts.append(f"[{low}..{'' if high is None else high}]")
        return "x".join(parts) if parts else "scalar"

    def accepts(self, shapes: list[tuple[int, ...]]) -> bool:
        """Whether the shapes fit the dims: ranks, static dims, ranges, one value per symbol.
        Inputs that do not map one to one (kwargs, non-tensors) are left to torch."""
        if len(shapes) != len(self.dims):
            return True
        bound: dict[str, int] = {}
        for dims, shape in zip(self.dims, shapes):
            if len(dims) != len(shape):
                return False
            for d, n in zip(dims, shape):
                if isinstance(d, int):
                    if d != n:
                        return False
                    continue
                symbol, low, high = d
                if n < low or (high is not None and n > high) or bound.setdefault(symbol, n) != n:
                    return False
        return True


def exported_shapes(program) -> ExportedShapes | None:
    """The input shapes of an ExportedProgram from its placeholders' fake tensors and range
    constraints, with the example inputs it was exported at; None when they cannot be read."""
    torch = sys.modules["torch"]
    try:
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        names = list(program.graph_signature.user_inputs)
        ranges = program.range_constraints
        dims = []
        for name in names:
            value = placeholders[name].meta.get("val")
            if not isinstance(value, torch.Tensor):
                return None
            shape = []
            for d in value.shape:
                if isinstance(d, int):
                    shape.append(d)
                    continue
                expr = d.node.expr
                bounds = ranges.get(expr)
                low = _bound(bounds.lower) if bounds is not None else None
                high = _bound(bounds.upper) if bounds is not None else None
                shape.append((str(expr), low or 0, high))
            dims.append(tuple(shape))
        example = None
        given = getattr(program, "example_inputs", None)
        if given is not None:
            leaves = torch.utils._pytree.tree_leaves(given)
            if all(isinstance(t, torch.Tensor) for t in leaves) and len(leaves) == len(names):
                example = [tuple(t.shape) for t in leaves]
    except Exception:  # another torch's ExportedProgram: torch's own guards still apply
        return None
    return ExportedShapes(names, dims, example)


def _bound(value) -> int | None:
    """A range bound as an int, or None for torch's and sympy's infinities."""
    try:
        return int(value)
    except Exception:  # int_oo raises AttributeError, sympy's oo OverflowError or TypeError
        return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
