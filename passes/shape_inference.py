"""``infer_shapes``: record a dtype and shape on every value (wraps :func:`compiler.ir.infer_shapes`)."""

from __future__ import annotations

import onnx_ir as ir

from compiler.ir.shapes import infer_shapes
from passes.base import Pass, Property, register_pass


def _types(model: ir.Model) -> list[tuple[object, object]]:
    return [(v.dtype, None if v.shape is None else tuple(v.shape)) for node in model.graph for v in node.outputs]


@register_pass
class InferShapesPass(Pass):
    """Infers the dtype and shape of every node output, node by node."""

    name = "infer_shapes"
    description = "infer dtypes and shapes of every value (ONNX schemas for standard ops, cacc infer functions)"
    guarantees = frozenset({Property.SHAPES_INFERRED})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Run inference in place; modified when any recorded type or shape changed."""
        before = _types(model)
        infer_shapes(model)
        return ir.passes.PassResult(model, modified=_types(model) != before)
