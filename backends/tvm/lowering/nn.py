"""Neural-network ops: Conv, pooling, normalisations, Softmax, MatMul, Gemm.

``emit_conv`` and ``emit_matmul`` are shared with the fused ``cacc::`` ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from tvm import relax, tirx

from backends.tvm.lowering.blocked import emit_blocked_conv2d, is_conv
from backends.tvm.lowering.common import (
    Blocked,
    Dim,
    EmitContext,
    Out,
    attr,
    input_at,
    lowering,
    norm_axis,
    scalar,
)
from backends.tvm.lowering.depthwise_project import emit_depthwise_project
from backends.tvm.lowering.expand_depthwise import emit_expand_depthwise
from backends.tvm.lowering.kernels import call_kernel, emit_batch_matmul, emit_conv2d, emit_dense, static_shape
from backends.tvm.schedules.rowwise import layer_norm_func, softmax_func
from backends.tvm.schedules.tiling import target_lanes
from compiler.errors import BackendError

R = relax.op


def _spatial_params(
    ctx: EmitContext, node: ir.Node, x_shape: list[Dim], kernel: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads in ONNX order [begins..., ends...]) with auto_pad resolved."""
    n = len(kernel)
    strides = [int(v) for v in attr(node, "strides", None) or [1] * n]
    dilations = [int(v) for v in attr(node, "dilations", None) or [1] * n]
    pads = [int(v) for v in attr(node, "pads", None) or [0] * (2 * n)]
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for i in range(n):
            size = x_shape[2 + i]
            if not isinstance(size, int):
                raise BackendError(f"{node.op_type}: auto_pad on a symbolic dim", node=node.name)
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    return strides, dilations, pads


def _bias_shape(rank: int, channels: Dim) -> list[Dim]:
    return [1, channels] + [1] * (rank - 2)


def emit_conv(
    ctx: EmitContext, node: ir.Node, activation: str = "", activation_params: Sequence[float] = ()
) -> tuple[relax.Expr | Blocked, bool]:
    """Conv (1-D / 2-D / 3-D, grouped, dilated, padded) plus its optional bias.

    Returns the expression (channel-blocked when :func:`emit_blocked_conv2d` applies) and whether
    ``activation`` was fused into it (by cacc's conv kernels).
    """
    x_v, w_v = node.inputs[0], node.inputs[1]
    if x_v is None or w_v is None:
        raise BackendError(f"{node.op_type} needs X and W", node=node.name)
    x_shape, w_shape = ctx.shape(x_v), ctx.shape(w_v)
    kernel = [int(k) for k in (attr(node, "kernel_shape", None) or w_shape[2:])]
    strides, dilations, pads = _spatial_params(ctx, node, x_shape, kernel)
    groups = int(attr(node, "group", 1))
    n = len(kernel)
    w_arr, b_v = ctx.const(w_v), input_at(node, 2)
    b_arr = ctx.const(b_v)
    if n == 2 and w_arr is not None and (b_v is None or b_arr is not None):
        fused = _emit_fused_pair(
            ctx, node, w_arr, b_arr, strides, dilations, pads, groups, (activation, activation_params)
        )
        if fused is not None:
            return fused, True
        out_v = node.outputs[0] if node.outputs else None
        args = (w_arr, b_arr, strides, dilations, pads, groups, activation, activation_params)
        blocked = emit_blocked_conv2d(ctx, x_v, out_v, *args)
        if blocked is not None:
            return blocked, True
    x, w = ctx.expr(x_v), ctx.expr(w_v)
    if n == 2 and w_arr is not None and (b_v is None or b_arr is not None):
        fused = emit_conv2d(ctx, x, w_arr, b_arr, strides, dilations, pads, groups, activation, activation_params)
        if fused is not None:
            return fused, True
    conv = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}.get(n)
    if conv is None:
        raise BackendError(f"{node.op_type} with {n} spatial dims is not supported", node=node.name)
    y = ctx.emit(conv(x, w, strides=strides, padding=pads, dilation=dilations, groups=groups))
    if b_v is not None:
        bias = ctx.const(b_v)
        b = (
            relax.const(bias.reshape(-1, *([1] * n)))
            if bias is not None
            else ctx.emit(R.reshape(ctx.expr(b_v), [w_shape[0]] + [1] * n))
        )
        y = ctx.emit(R.add(y, b))
    return y, False


@dataclass(frozen=True)
class _ProducerConv:
    """A 2-D conv whose output the conv being lowered reads, and only it: constant weight and bias, geometry
    and activation."""

    x: ir.Value
    w: np.ndarray
    bias: np.ndarray | None
    strides: list[int]
    dilations: list[int]
    pads: list[int]
    groups: int
    activation: tuple[str, list[float]]

    @property
    def depthwise(self) -> bool:
        """One filter per channel."""
        return self.groups == int(self.w.shape[0]) and int(self.w.shape[1]) == 1


def _producer_conv(ctx: EmitContext, x_v: ir.Value) -> _ProducerConv | None:
    conv = x_v.producer()
    if conv is None or x_v.is_graph_output() or len(x_v.uses()) != 1 or not is_conv(conv):
        return None
    xin_v, w_v, b_v = conv.inputs[0], conv.inputs[1], input_at(conv, 2)
    quantized = xin_v is not None and (q := xin_v.producer()) is not None and q.op_type == "DequantizeLinear"
    w, bias = ctx.const(w_v), ctx.const(b_v)
    if xin_v is None or quantized or w is None or w.ndim != 4 or (b_v is not None and bias is None):
        return None  # (a conv reading quantized activations keeps its integer kernel)
    strides, dilations, pads = _spatial_params(ctx, conv, ctx.shape(xin_v), [int(k) for k in w.shape[2:]])
    act = (attr(conv, "activation", "") or "", [float(v) for v in attr(conv, "activation_params", []) or []])
    return _ProducerConv(xin_v, w, bias, strides, dilations, pads, int(attr(conv, "group", 1)), act)


def _pointwise(w: np.ndarray, groups: int, strides: list[int], dilations: list[int], pads: list[int]) -> bool:
    return groups == 1 and w.shape[2:] == (1, 1) and all(v == 1 for v in strides + dilations) and not any(pads)


def _emit_fused_pair(
    ctx: EmitContext,
    node: ir.Node,
    w: np.ndarray,
    bias: np.ndarray | None,
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    groups: int,
    activation: tuple[str, Sequence[float]],
) -> Blocked | None:
    """``node`` (a 2-D conv with constant weight ``w``) computed in one kernel with the conv producing its input,
    when that conv's output is read only here: a depthwise conv after a 1x1 expansion
    (:func:`emit_expand_depthwise`), or a 1x1 projection after a depthwise conv not already fused that way
    (:func:`emit_depthwise_project`); ``None`` when neither applies."""
    x_v = node.inputs[0]
    depthwise = groups > 1 and groups == int(w.shape[0]) and int(w.shape[1]) == 1
    pointwise = _pointwise(w, groups, strides, dilations, pads)
    if x_v is None or not (depthwise or pointwise):
        return None
    first = _producer_conv(ctx, x_v)
    if first is None:
        return None
    second = (w, bias, activation)
    y: Blocked | None = None
    if depthwise and _pointwise(first.w, first.groups, first.strides, first.dilations, first.pads):
        spec = (first.w, first.bias, first.activation)
        y = emit_expand_depthwise(ctx, first.x, spec, second, strides, dilations, pads)
    elif pointwise and first.depthwise and x_v.name not in ctx.fused_values:
        spec = (first.w, first.bias, first.activation)
        y = emit_depthwise_project(ctx, first.x, spec, second, first.strides, first.dilations, first.pads)
    if y is not None and node.outputs and node.outputs[0] is not None:
        ctx.fused_values.add(node.outputs[0].name or "")
    return y


@lowering("Conv")
def lower_conv(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Conv."""
    return [emit_conv(ctx, node)[0]]


def emit_matmul(
    ctx: EmitContext,
    a: relax.Expr,
    b: relax.Expr,
    b_const: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> relax.Expr | None:
    """numpy-style matmul through cacc's tiled kernels (``b_const``: ``b``'s value when known).

    With ``bias`` / ``activation`` the result is the fused ``act(a @ b + bias)``; returns ``None``
    when no kernel applies and a fused epilogue was asked for (the caller emits it instead).
    """
    if b_const is not None:
        y = emit_dense(ctx, a, b_const, bias, activation, activation_params)
        if y is not None:
            return y
    elif bias is None and not activation:
        y = emit_batch_matmul(ctx, a, b)
        if y is not None:
            return y
    if bias is not None or activation:
        return None
    return ctx.emit(R.matmul(a, b))


@lowering("MatMul")
def lower_matmul(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """MatMul with numpy broadcasting."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError("MatMul needs two inputs", node=node.name)
    if ctx.is_const(a) and ctx.is_const(b):
        return [np.matmul(ctx.const(a), ctx.const(b))]  # type: ignore[arg-type]
    y = emit_matmul(ctx, ctx.expr(a), ctx.expr(b), ctx.const(b))
    if y is None:  # pragma: no cover - without an epilogue emit_matmul always emits
        raise BackendError("MatMul could not be emitted", node=node.name)
    return [y]


@lowering("Gemm")
def lower_gemm(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Gemm: alpha * A' @ B' + beta * C; transposes and scalings of constant operands fold at emit time."""
    a_v, b_v, c_v = node.inputs[0], node.inputs[1], input_at(node, 2)
    if a_v is None or b_v is None:
        raise BackendError("Gemm needs A and B", node=node.name)
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    trans_a, trans_b = bool(attr(node, "transA", 0)), bool(attr(node, "transB", 0))

    def operand(v: ir.Value, trans: bool, scale: float) -> relax.Expr:
        known = ctx.const(v)
        if known is not None:
            arr = np.array(known.T if trans else known, order="C")
            if scale != 1.0:
                arr = (arr * arr.dtype.type(scale)).astype(arr.dtype)
            return relax.const(arr)
        e = ctx.expr(v)
        if trans:
            e = ctx.emit(R.permute_dims(e, [1, 0]))
        if scale != 1.0:
            e = ctx.emit(R.multiply(e, scalar(scale, ctx.dtype(e))))
        return e

    # alpha goes onto B when B is constant (free), else onto the product
    b_known = ctx.is_const(b_v)
    b_arr, c_arr = ctx.const(b_v), ctx.const(c_v)
    if b_arr is not None and b_arr.ndim == 2 and (c_v is None or beta == 0.0 or c_arr is not None):
        w = np.array(b_arr.T if trans_b else b_arr, order="C")
        if alpha != 1.0:
            w = (w * w.dtype.type(alpha)).astype(w.dtype)
        bias = None
        if c_arr is not None and beta != 0.0:
            bias = (np.asarray(c_arr) * c_arr.dtype.type(beta)).astype(c_arr.dtype)
        n = w.shape[1]
        if bias is None or (bias.size in (1, n) and bias.ndim <= 2 and (bias.ndim < 2 or bias.shape[0] == 1)):
            full_bias = None if bias is None else np.broadcast_to(bias.reshape(-1), (n,)).copy()
            y0 = emit_dense(ctx, operand(a_v, trans_a, 1.0), w, full_bias)
            if y0 is not None:
                return [y0]
    y = ctx.emit(R.matmul(operand(a_v, trans_a, 1.0), operand(b_v, trans_b, alpha if b_known else 1.0)))
    if alpha != 1.0 and not b_known:
        y = ctx.emit(R.multiply(y, scalar(alpha, ctx.dtype(y))))
    if c_v is not None and beta != 0.0:
        y = ctx.emit(R.add(y, operand(c_v, False, beta)))
    return [y]


# ------------------------------------------------------------------ pooling


def _pool(ctx: EmitContext, node: ir.Node, kind: str) -> relax.Expr:
    x_v = node.inputs[0]
    if x_v is None:
        raise BackendError(f"{node.op_type} needs an input", node=node.name)
    x = ctx.expr(x_v)
    shape = ctx.shape(x)
    kernel = [int(k) for k in attr(node, "kernel_shape", [])]
    if not kernel:
        raise BackendError(f"{node.op_type} needs kernel_shape", node=node.name)
    strides, dilations, pads = _spatial_params(ctx, node, shape, kernel)
    ceil_mode = bool(attr(node, "ceil_mode", 0))
    n = len(kernel)
    ops = {
        "max": {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d},
        "avg": {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d},
    }[kind]
    fn = ops.get(n)
    if fn is None:
        raise BackendError(f"{node.op_type} with {n} spatial dims is not supported", node=node.name)
    count_include_pad = bool(attr(node, "count_include_pad", 0))
    return ctx.emit(
        fn(
            x,
            pool_size=kernel,
            strides=strides,
            padding=pads,
            dilation=dilations,
            ceil_mode=ceil_mode,
            count_include_pad=count_include_pad,
        )
    )


@lowering("MaxPool")
def lower_max_pool(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """MaxPool (the Indices output is not supported)."""
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
        raise BackendError("MaxPool's Indices output is not supported", node=node.name)
    return [_pool(ctx, node, "max")]


@lowering("AveragePool")
def lower_avg_pool(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """AveragePool (count_include_pad, ceil_mode)."""
    return [_pool(ctx, node, "avg")]


@lowering("GlobalAveragePool", "GlobalMaxPool")
def lower_global_pool(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Global pooling over all spatial dims (keeps them as size 1)."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    axes = list(range(2, ctx.rank(x)))
    fn = R.mean if node.op_type == "GlobalAveragePool" else R.max
    return [ctx.emit(fn(x, axis=axes, keepdims=True))]


# ------------------------------------------------------------------ normalisation / softmax


@lowering("BatchNormalization")
def lower_batch_norm(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Inference BatchNormalization as ``x * s + t`` (s, t folded when the statistics are constants)."""
    if any(o is not None and o.uses() for o in node.outputs[1:]):
        raise BackendError("training-mode BatchNormalization outputs are not supported", node=node.name)
    x_v = node.inputs[0]
    if x_v is None:
        raise BackendError("BatchNormalization needs X", node=node.name)
    x = ctx.expr(x_v)
    rank = ctx.rank(x)
    eps = float(attr(node, "epsilon", 1e-5))
    params = [ctx.const(v) for v in node.inputs[1:5]]
    bshape = [-1] + [1] * (rank - 2)
    if all(p is not None for p in params):
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)  # type: ignore[arg-type]
        s = gamma / np.sqrt(var + eps)
        t = beta - mean * s
        dt = np.dtype(ctx.dtype(x))
        return [
            ctx.emit(
                R.add(
                    R.multiply(x, relax.const(s.astype(dt).reshape(bshape))),
                    relax.const(t.astype(dt).reshape(bshape)),
                )
            )
        ]
    g, b, m, v = (ctx.expr(p) for p in node.inputs[1:5])  # type: ignore[arg-type]
    return [ctx.emit(R.nn.batch_norm(x, g, b, m, v, axis=1, epsilon=eps, training=False)[0])]


@lowering("LayerNormalization")
def lower_layer_norm(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """LayerNormalization over ``axis..rank-1`` (only the Y output)."""
    if any(o is not None and o.uses() for o in node.outputs[1:]):
        raise BackendError("LayerNormalization Mean / InvStdDev outputs are not supported", node=node.name)
    x_v, s_v = node.inputs[0], input_at(node, 1)
    if x_v is None or s_v is None:
        raise BackendError("LayerNormalization needs X and Scale", node=node.name)
    x = ctx.expr(x_v)
    rank = ctx.rank(x)
    axis = norm_axis(attr(node, "axis", -1), rank, node)
    axes = list(range(axis, rank))
    norm_shape = ctx.shape(x)[axis:]
    gamma = ctx.expr(s_v)
    if ctx.shape(gamma) != norm_shape:
        gamma = ctx.emit(R.broadcast_to(gamma, norm_shape))
    b_v = input_at(node, 2)
    if b_v is None:
        beta: relax.Expr = relax.const(np.zeros([int(d) for d in norm_shape], dtype=np.dtype(ctx.dtype(x))))
    else:
        beta = ctx.expr(b_v)
        if ctx.shape(beta) != norm_shape:
            beta = ctx.emit(R.broadcast_to(beta, norm_shape))
    eps = float(attr(node, "epsilon", 1e-5))
    y = _row_kernel(
        ctx, x, axis, "cacc_layer_norm", lambda rows, n, lanes: layer_norm_func(rows, n, lanes, eps), [gamma, beta]
    )
    return [y if y is not None else ctx.emit(R.nn.layer_norm(x, gamma, beta, axes=axes, epsilon=eps))]


def _row_kernel(
    ctx: EmitContext,
    x: relax.Expr,
    axis: int,
    name: str,
    make: Callable[[int, int, int], tirx.PrimFunc],
    extra: Sequence[relax.Expr] = (),
) -> relax.Expr | None:
    """``x`` viewed as ``[rows, n]`` through the row kernel ``make(rows, n, lanes)`` (extra arguments
    ``extra``), when ``axis`` is the last of a static fp32 ``x`` and ``n`` a multiple of the vector
    width; else ``None``."""
    shape = static_shape(ctx, x)
    lanes = target_lanes().lanes
    if not shape or axis != len(shape) - 1 or shape[-1] % lanes or ctx.dtype(x) != "float32":
        return None
    rows, n = math.prod(shape[:-1]), shape[-1]
    flat = ctx.emit(R.reshape(x, [rows, n]))
    y = call_kernel(ctx, make(rows, n, lanes), name, [flat, *extra], [rows, n], "float32")
    return ctx.emit(R.reshape(y, shape))


@lowering("Softmax", "LogSoftmax")
def lower_softmax(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Softmax / LogSoftmax along ``axis`` (opset >= 13 semantics)."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    axis = norm_axis(attr(node, "axis", -1), ctx.rank(x), node)
    log = node.op_type == "LogSoftmax"
    y = _row_kernel(ctx, x, axis, "cacc_softmax", lambda rows, n, lanes: softmax_func(rows, n, lanes, log=log))
    fn = R.nn.log_softmax if log else R.nn.softmax
    return [y if y is not None else ctx.emit(fn(x, axis=axis))]


@lowering("InstanceNormalization")
def lower_instance_norm(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """InstanceNormalization: per (batch, channel) normalisation over the spatial dims."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    rank = ctx.rank(x)
    eps = float(attr(node, "epsilon", 1e-5))
    axes = list(range(2, rank))
    dt = ctx.dtype(x)
    mean = R.mean(x, axis=axes, keepdims=True)
    centered = ctx.emit(R.subtract(x, mean))
    var = R.mean(R.multiply(centered, centered), axis=axes, keepdims=True)
    y = R.divide(centered, R.sqrt(R.add(var, scalar(eps, dt))))
    bshape = [-1] + [1] * (rank - 2)
    g = R.reshape(ctx.expr(node.inputs[1]), bshape)  # type: ignore[arg-type]
    b = R.reshape(ctx.expr(node.inputs[2]), bshape)  # type: ignore[arg-type]
    return [ctx.emit(R.add(R.multiply(y, g), b))]
