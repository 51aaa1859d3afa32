"""``eliminate_dead_code``: remove nodes and initializers that no graph output depends on.

A thin wrapper over onnx-ir's own passes (``RemoveUnusedNodesPass``, ``RemoveUnusedFunctionsPass``,
``RemoveUnusedOpsetsPass``); the model's inputs and outputs are never changed.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from passes.base import Pass, Property, register_pass


@register_pass
class EliminateDeadCodePass(Pass):
    """Removes unused nodes, initializers, functions and opset imports."""

    name = "eliminate_dead_code"
    description = "remove nodes, initializers, functions and opset imports that no output depends on"
    guarantees = frozenset({Property.NO_DEAD_CODE})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Run the onnx-ir removal passes in place; modified when any of them changed something."""
        modified = False
        for inner in (RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
            modified |= inner(model).modified
        return ir.passes.PassResult(model, modified=modified)
