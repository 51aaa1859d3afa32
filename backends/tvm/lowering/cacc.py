"""cacc's fused ops: ``cacc::FusedConv`` and ``cacc::FusedMatMul`` (op + bias + activation).

They are emitted as one chain of Relax calls that TVM's FuseOps pass turns into one kernel.
"""

from __future__ import annotations

import numpy as np
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
    name = attr(node, "activation", "") or ""
    params = [float(p) for p in attr(node, "activation_params", []) or []]
    y, fused = emit_conv(ctx, node, name, params)
    return [y if fused else _activation(ctx, node, y)]


@lowering("FusedMatMul", domain=CACC_DOMAIN)
def lower_fused_matmul(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """act(MatMul(A, B) + bias)."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError("FusedMatMul needs A and B", node=node.name)
    bias = input_at(node, 2)
    bias_arr = ctx.const(bias)
    b_arr = ctx.const(b)
    if b_arr is not None and (bias is None or bias_arr is not None):
        name = attr(node, "activation", "") or ""
        params = [float(p) for p in attr(node, "activation_params", []) or []]
        n = b_arr.shape[-1] if b_arr.ndim == 2 else -1
        full = None
        if bias_arr is not None and bias_arr.size in (1, n) and bias_arr.ndim <= 1:
            full = np.broadcast_to(bias_arr.reshape(-1), (n,)).copy()
        if bias is None or full is not None:
            fused = emit_matmul(ctx, ctx.expr(a), ctx.expr(b), b_arr, full, name, params)
            if fused is not None:
                return [fused]
    y = emit_matmul(ctx, ctx.expr(a), ctx.expr(b), b_arr)
    if y is None:
        raise BackendError("FusedMatMul could not be emitted", node=node.name)
    if bias is not None:
        y = ctx.emit(relax.op.add(y, ctx.expr(bias)))
    return [_activation(ctx, node, y)]
