"""Reductions: Reduce* (axes as attribute or, from opset 13/18, as input) and ArgMax / ArgMin.

A reduction over the spatial axes of a channel-blocked map (a global pool after a conv) reduces the blocked
form and moves only the ``[N, C]`` result to NCHW, where converting the whole map first cost EfficientNet-Lite0's
head (1,280 channels at 7 x 7) a 30 us transpose for a 5 us mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from tvm import relax

from backends.tvm.lowering.common import (
    EmitContext,
    Out,
    attr,
    input_at,
    int_list,
    lowering,
    norm_axis,
    require_const,
)
from compiler.errors import BackendError

R = relax.op

_REDUCE: dict[str, Callable[..., relax.Expr]] = {
    "ReduceMean": R.mean,
    "ReduceSum": R.sum,
    "ReduceMax": R.max,
    "ReduceMin": R.min,
    "ReduceProd": R.prod,
}
_NUMPY: dict[str, Callable[..., np.ndarray]] = {
    "ReduceMean": np.mean,
    "ReduceSum": np.sum,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
}


def _axes(ctx: EmitContext, node: ir.Node, rank: int) -> list[int] | None:
    """Normalised reduction axes; ``None`` means "no reduction" (noop_with_empty_axes)."""
    if input_at(node, 1) is not None:
        axes = int_list(require_const(ctx, node, 1, "axes")) or []
    else:
        axes = [int(a) for a in attr(node, "axes", None) or []]
    if not axes:
        return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(norm_axis(a, rank, node) for a in axes)


@lowering(*_REDUCE, "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceLogSum")
def lower_reduce(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Reduce* ops, keepdims honoured."""
    x_v = node.inputs[0]
    if x_v is None:
        raise BackendError(f"{node.op_type} needs an input", node=node.name)
    rank = ctx.rank(x_v)
    axes = _axes(ctx, node, rank)
    keep = bool(attr(node, "keepdims", 1))
    op = node.op_type
    known = ctx.const(x_v)
    if axes is None:
        return [known if known is not None else ctx.expr(x_v)]
    if known is not None and op in _NUMPY:
        return [np.asarray(_NUMPY[op](known, axis=tuple(axes), keepdims=keep)).astype(known.dtype)]
    held = ctx.blocked_form(x_v)
    if held is not None and op in _REDUCE and axes == [2, 3]:
        n, cb, _h, _w, b = ctx.shape(held.expr)
        pooled = R.permute_dims(_REDUCE[op](held.expr, axis=[2, 3], keepdims=True), [0, 1, 4, 2, 3])
        return [ctx.emit(R.reshape(pooled, [n, cb * b, 1, 1] if keep else [n, cb * b]))]
    x = ctx.expr(x_v)
    if op in _REDUCE:
        return [ctx.emit(_REDUCE[op](x, axis=axes, keepdims=keep))]
    if op == "ReduceSumSquare":
        return [ctx.emit(R.sum(R.multiply(x, x), axis=axes, keepdims=keep))]
    if op == "ReduceL1":
        return [ctx.emit(R.sum(R.abs(x), axis=axes, keepdims=keep))]
    if op == "ReduceL2":
        return [ctx.emit(R.sqrt(R.sum(R.multiply(x, x), axis=axes, keepdims=keep)))]
    if op == "ReduceLogSum":
        return [ctx.emit(R.log(R.sum(x, axis=axes, keepdims=keep)))]
    # ReduceLogSumExp, stabilised by the max
    m = ctx.emit(R.max(x, axis=axes, keepdims=True))
    s = R.log(R.sum(R.exp(R.subtract(x, m)), axis=axes, keepdims=True))
    y = ctx.emit(R.add(s, m))
    if not keep:
        y = ctx.emit(R.squeeze(y, axis=axes))
    return [y]


@lowering("ArgMax", "ArgMin")
def lower_arg(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """ArgMax / ArgMin (int64 result; select_last_index is not supported)."""
    if attr(node, "select_last_index", 0):
        raise BackendError(f"{node.op_type} with select_last_index=1 is not supported", node=node.name)
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    axis = norm_axis(attr(node, "axis", 0), ctx.rank(x), node)
    keep = bool(attr(node, "keepdims", 1))
    fn = R.argmax if node.op_type == "ArgMax" else R.argmin
    y = ctx.emit(fn(x, axis=axis, keepdims=keep))
    if ctx.dtype(y) != "int64":
        y = ctx.emit(R.astype(y, "int64"))
    return [y]
