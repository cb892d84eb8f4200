"""Outputs saved by an earlier run (``--save-outputs``), read back as the reference of a later
check (``--load-outputs``): a run computed once, or on another machine, compared later, and
device dumps checked against it. No framework runs: the arrays are the model's outputs."""

from __future__ import annotations

from parity.backends.base import Backend, RunResult
from parity.core.specs import TensorMap, TensorSpec


class SavedOutputs(Backend):
    framework = "saved"
    checks_dims = False
    describes_inputs = False  # the inputs are the next model's: the outputs came from them

    def __init__(self, path, **options):
        super().__init__(path, **options)
        self._arrays: TensorMap = {}

    def _open(self) -> None:
        from parity.core.inputs import read_npz

        self._arrays = read_npz(self.path, "--load-outputs file", not_a="an .npz file of saved outputs")
        self._outputs = [TensorSpec(name, tuple(a.shape), a.dtype.name) for name, a in self._arrays.items()]
        self._inputs = []

    def bind_inputs(self, specs: list[TensorSpec]) -> None:
        """The inputs are the next model's: the saved outputs came from the same inputs."""
        self._inputs = list(specs)

    @property
    def version(self) -> str:
        return "saved outputs"

    def _run(self, feeds: TensorMap, outputs: list[str] | None = None) -> RunResult:
        names = outputs or list(self._arrays)
        return RunResult({name: self._arrays[name] for name in names if name in self._arrays})
