"""cacc's fused ops: ``cacc::FusedConv`` and ``cacc::FusedMatMul`` (op + bias + activation).

They are emitted as one chain of Relax calls that TVM's FuseOps pass turns into one kernel.
"""

from __future__ import annotations

import onnx_ir as ir
from tvm import relax

from backends.tvm.lowering.common import CACC_DOMAIN, EmitContext, Out, attr, input_at, lowering
from backends.tvm.lowering.elementwise import apply_activation
from backends.tvm.lowering.nn import emit_conv, emit_matmul
from compiler.errors import BackendError


def _activation(ctx: EmitContext, node: ir.Node, y: relax.Expr) -> relax.Expr:
    name = attr(node, "activation", "") or ""
    params = [float(p) for p in attr(node, "activation_params", []) or []]
    return apply_activation(ctx, y, name, params, node)


@lowering("FusedConv", domain=CACC_DOMAIN)
def lower_fused_conv(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """act(Conv(X, W, B))."""
    return [_activation(ctx, node, emit_conv(ctx, node))]


@lowering("FusedMatMul", domain=CACC_DOMAIN)
def lower_fused_matmul(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """act(MatMul(A, B) + bias)."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError("FusedMatMul needs A and B", node=node.name)
    y = emit_matmul(ctx, ctx.expr(a), ctx.expr(b))
    bias = input_at(node, 2)
    if bias is not None:
        y = ctx.emit(relax.op.add(y, ctx.expr(bias)))
    return [_activation(ctx, node, y)]
