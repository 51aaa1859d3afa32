"""The ``reference`` target: run the IR with cacc's numpy reference interpreter (slow, exact)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from backends.base import Backend, BuildOptions, Executable
from compiler.ir.interpreter import Interpreter


class ReferenceExecutable(Executable):
    """Runs a model through :class:`compiler.ir.Interpreter`."""

    description = "numpy reference interpreter"

    def __init__(self, model: ir.Model) -> None:
        self._interpreter = Interpreter(model)
        self._outputs = [v.name or "" for v in model.graph.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the reference interpreter."""
        result = self._interpreter.run(feeds)
        return [result[name] for name in self._outputs]


class ReferenceBackend(Backend):
    """Target ``reference``."""

    name = "reference"

    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Nothing to build: wrap the interpreter."""
        return ReferenceExecutable(model)
