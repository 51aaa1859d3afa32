"""Quantization ops: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked incl. int4),
DynamicQuantizeLinear, MatMulInteger.

Values known at emit time (quantized weights) are computed with the reference kernels, so a
constant ``DequantizeLinear`` becomes an fp32 constant: any quantized model compiles, running
dequantize-then-fp32 where no integer kernel applies. Run-time quantization rounds half to even
(:func:`round_half_even`) and saturates like ONNX; on CPUs a per-tensor quantization with constant
parameters is one flat kernel (:mod:`backends.tvm.schedules.quantize`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from tvm import relax
from tvm.target import Target

from backends.tvm.lowering.common import (
    EmitContext,
    Out,
    all_inputs_known,
    attr,
    input_at,
    lowering,
    norm_axis,
    np_dtype,
    relax_dtype,
    scalar,
)
from backends.tvm.lowering.kernels import call_kernel, static_shape
from backends.tvm.schedules.quantize import quantize_func
from compiler.errors import BackendError
from compiler.ir.ops import quant as ref

R = relax.op

#: Integer dtypes a run-time tensor may be quantized to (sub-byte types only exist as constants).
RUNTIME_QUANT_DTYPES = ("uint8", "int8", "uint16", "int16", "int32")


def _reference(ctx: EmitContext, node: ir.Node, kernel: object) -> list[Out]:
    inputs: Sequence[np.ndarray | None] = [ctx.const(v) for v in node.inputs]
    try:
        return list(kernel(node, inputs))  # type: ignore[operator]
    except (ValueError, TypeError) as exc:
        raise BackendError(f"{node.op_type}: {exc}", node=node.name) from exc


def _param(ctx: EmitContext, node: ir.Node, i: int, x_shape: list, axis: int, block: int, dtype: str) -> relax.Expr:
    """Scale / zero point ``i`` as an expression broadcastable against ``x`` (per-tensor, per-axis, blocked)."""
    v = input_at(node, i)
    if v is None:
        raise BackendError(f"{node.op_type}: missing input {i}", node=node.name)
    rank = len(x_shape)
    known = ctx.const(v)
    if known is not None:
        if block == 0 and known.size == 1:
            return scalar(known.reshape(()).item(), dtype)
        full = x_shape[axis] if isinstance(x_shape[axis], int) else None
        if block > 0:
            if full is None:
                raise BackendError(f"{node.op_type}: blocked axis {axis} must be static", node=node.name)
            known = np.take(np.repeat(known, block, axis=axis), np.arange(full), axis=axis)
        else:
            known = known.reshape([-1 if d == axis else 1 for d in range(rank)])
        return relax.const(known.astype(dtype))
    e = ctx.expr(v)
    if ctx.dtype(e) != dtype:
        e = ctx.emit(R.astype(e, dtype))
    shape = ctx.shape(e)
    if block == 0 and (len(shape) == 0 or (len(shape) == 1 and shape[0] == 1)):
        return ctx.emit(R.reshape(e, [])) if shape else e
    if block > 0:
        if len(shape) != rank:
            raise BackendError(f"{node.op_type}: blocked parameter must have the input's rank", node=node.name)
        if shape[axis] != 1:
            full = x_shape[axis]
            if not isinstance(full, int):
                raise BackendError(f"{node.op_type}: blocked axis {axis} must be static", node=node.name)
            e = ctx.emit(R.repeat(e, block, axis=axis))
            e = ctx.emit(R.strided_slice(e, axes=[axis], begin=[0], end=[full]))
        return e
    return ctx.emit(R.reshape(e, [-1 if d == axis else 1 for d in range(rank)]))


def _qparams(node: ir.Node, rank: int) -> tuple[int, int]:
    axis = int(attr(node, "axis", 1))
    block = int(attr(node, "block_size", 0))
    return (norm_axis(axis, rank, node) if rank else 0), block


def round_half_even(ctx: EmitContext, v: relax.Expr, saturating: bool) -> relax.Expr:
    """``v`` rounded half to even. ``R.round`` is a libm ``nearbyint`` call per element (1 ms for one
    188k-element activation of EfficientNet); an fp32 ``v`` that will be saturated to an 8/16-bit range
    (``saturating``) rounds with ``floor`` and selects instead, which vectorise: ``t = floor(v + 0.5)``,
    minus one on a tie whose ``t`` is odd. (Magnitudes above 2^22, where ``v + 0.5`` is inexact, are
    saturated anyway.)"""
    if not saturating or ctx.dtype(v) != "float32":
        return ctx.emit(R.round(v))
    half = scalar(0.5, "float32")
    t = ctx.emit(R.floor(R.add(v, half)))
    tie = R.equal(R.subtract(t, v), half)
    odd = R.not_equal(R.multiply(R.floor(R.multiply(t, half)), scalar(2.0, "float32")), t)
    return ctx.emit(R.where(R.logical_and(tie, odd), R.subtract(t, scalar(1.0, "float32")), t))


def quantize_expr(
    ctx: EmitContext, x: relax.Expr, scale: relax.Expr, zero: relax.Expr | None, dtype: str
) -> relax.Expr:
    """``saturate(round_half_even(x / scale) + zero)`` cast to the integer ``dtype``."""
    info = np.iinfo(np.dtype(dtype))
    ft = ctx.dtype(x)
    y = round_half_even(ctx, ctx.emit(R.divide(x, scale)), info.bits <= 16)
    if zero is not None:
        y = ctx.emit(R.add(y, zero))
    y = ctx.emit(R.clip(y, float(info.min), float(info.max)))
    if ft != "float32":
        y = ctx.emit(R.astype(y, "float32"))
    return ctx.emit(R.astype(y, dtype))


def quantize_per_tensor(ctx: EmitContext, x: relax.Expr, scale: float, zero: int, dtype: str) -> relax.Expr:
    """:func:`quantize_expr` with constant per-tensor parameters: on CPUs, for a static-shape fp32 ``x`` and
    an 8/16-bit ``dtype``, one flat kernel on 1-D views of ``x`` and the result (no copies)."""
    target = Target.current(allow_none=True)
    info = np.iinfo(np.dtype(dtype))
    shape = static_shape(ctx, x)
    cpu = target is None or target.kind.name == "llvm"
    if cpu and shape is not None and ctx.dtype(x) == "float32" and info.bits <= 16:
        n = int(np.prod(shape))
        func = quantize_func(n, scale, zero, int(info.min), int(info.max), dtype)
        y = call_kernel(ctx, func, "cacc_quantize", [ctx.emit(R.memory.view(x, [n]))], [n], dtype)
        return ctx.emit(R.memory.view(y, shape))
    ft = ctx.dtype(x)
    return quantize_expr(ctx, x, relax.const(scale, ft), relax.const(float(zero), ft), dtype)


@lowering("QuantizeLinear")
def lower_quantize(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """QuantizeLinear (per-tensor, per-axis, blocked; run-time outputs of 8/16/32-bit integer types)."""
    if all_inputs_known(ctx, node):
        return _reference(ctx, node, ref.quantize_linear)
    x_v, zp_v = node.inputs[0], input_at(node, 2)
    if x_v is None:
        raise BackendError("QuantizeLinear needs an input", node=node.name)
    out_dtype = np_dtype(node.outputs[0].dtype, node)
    if out_dtype.name not in RUNTIME_QUANT_DTYPES:
        raise BackendError(
            f"QuantizeLinear to {out_dtype.name} of a run-time tensor is not supported by the TVM backend "
            f"(supported: {', '.join(RUNTIME_QUANT_DTYPES)})",
            node=node.name,
        )
    x = ctx.expr(x_v)
    shape = ctx.shape(x)
    s_known, z_known = ctx.const(node.inputs[1]), ctx.const(zp_v)
    if s_known is not None and s_known.size == 1 and (zp_v is None or (z_known is not None and z_known.size == 1)):
        zp = 0 if z_known is None else int(z_known.reshape(-1)[0])
        return [quantize_per_tensor(ctx, x, float(s_known.reshape(-1)[0]), zp, relax_dtype(out_dtype))]
    axis, block = _qparams(node, len(shape))
    ft = ctx.dtype(x)
    scale = _param(ctx, node, 1, shape, axis, block, ft)
    zero = None if zp_v is None else _param(ctx, node, 2, shape, axis, block, ft)
    return [quantize_expr(ctx, x, scale, zero, relax_dtype(out_dtype))]


@lowering("DequantizeLinear")
def lower_dequantize(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """DequantizeLinear; a constant input (a quantized weight) is dequantized at emit time."""
    if all_inputs_known(ctx, node):
        return _reference(ctx, node, ref.dequantize_linear)
    x_v, s_v, zp_v = node.inputs[0], input_at(node, 1), input_at(node, 2)
    if x_v is None or s_v is None:
        raise BackendError("DequantizeLinear needs x and scale", node=node.name)
    if ctx.is_const(x_v):
        x = relax.const(np.asarray(ctx.const(x_v)).astype(np.int32))
    else:
        x = ctx.expr(x_v)
        if ctx.dtype(x) not in RUNTIME_QUANT_DTYPES:
            raise BackendError(f"DequantizeLinear of a run-time {ctx.dtype(x)} tensor is not supported", node=node.name)
    shape = ctx.shape(x)
    axis, block = _qparams(node, len(shape))
    ft = relax_dtype(np_dtype(s_v.dtype, node)) if s_v.dtype is not None else "float32"
    y = ctx.emit(R.astype(x, ft))
    if zp_v is not None:
        y = ctx.emit(R.subtract(y, _param(ctx, node, 2, shape, axis, block, ft)))
    return [ctx.emit(R.multiply(y, _param(ctx, node, 1, shape, axis, block, ft)))]


@lowering("DynamicQuantizeLinear")
def lower_dynamic_quantize(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """DynamicQuantizeLinear -> (uint8 y, scale, zero point), the range [min(x, 0), max(x, 0)]."""
    if all_inputs_known(ctx, node):
        return _reference(ctx, node, ref.dynamic_quantize_linear)
    x_v = node.inputs[0]
    if x_v is None:
        raise BackendError("DynamicQuantizeLinear needs an input", node=node.name)
    x = ctx.expr(x_v)
    if ctx.dtype(x) != "float32":
        x = ctx.emit(R.astype(x, "float32"))
    zero = scalar(0.0, "float32")
    lo = ctx.emit(R.minimum(R.min(x), zero))
    hi = ctx.emit(R.maximum(R.max(x), zero))
    scale = ctx.emit(R.divide(R.subtract(hi, lo), scalar(255.0, "float32")))
    # all-zero input: scale 0, y = zp = 0 (dividing by 1 instead gives exactly that)
    safe = ctx.emit(R.where(R.equal(scale, zero), scalar(1.0, "float32"), scale))
    zp_f = ctx.emit(R.clip(round_half_even(ctx, ctx.emit(R.subtract(zero, R.divide(lo, safe))), True), 0.0, 255.0))
    y = quantize_expr(ctx, x, safe, zp_f, "uint8")
    return [y, scale, ctx.emit(R.astype(zp_f, "uint8"))]


def _centered(ctx: EmitContext, v: ir.Value, zp: ir.Value | None, row_zp: bool) -> relax.Expr:
    known = ctx.const(v)
    e = relax.const(known.astype(np.int32)) if known is not None else ctx.emit(R.astype(ctx.expr(v), "int32"))
    if zp is None:
        return e
    z = ctx.const(zp)
    if z is not None:
        z32 = z.astype(np.int32)
        zc = relax.const(z32.reshape(-1, 1) if row_zp and z32.size > 1 else z32.reshape(()) if z32.size == 1 else z32)
    else:
        zc = ctx.emit(R.astype(ctx.expr(zp), "int32"))
        if row_zp and ctx.shape(zc) and ctx.shape(zc)[0] != 1:
            zc = ctx.emit(R.reshape(zc, [-1, 1]))
    return ctx.emit(R.subtract(e, zc))


@lowering("MatMulInteger")
def lower_matmul_integer(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """MatMulInteger -> int32 (zero points per tensor, per row of A, per column of B)."""
    if all_inputs_known(ctx, node):
        return _reference(ctx, node, ref.matmul_integer)
    a_v, b_v = node.inputs[0], node.inputs[1]
    if a_v is None or b_v is None:
        raise BackendError("MatMulInteger needs A and B", node=node.name)
    a = _centered(ctx, a_v, input_at(node, 2), row_zp=True)
    b = _centered(ctx, b_v, input_at(node, 3), row_zp=False)
    return [ctx.emit(R.matmul(a, b, out_dtype="int32"))]
