"""Integer GEMMs from quantized patterns: ``DQ(activation) x DQ(constant int8 weight)``.

Matched on ``MatMul``, ``Gemm`` (``transA=0``) and ``cacc::FusedMatMul`` whose data input is a
``DequantizeLinear`` of a run-time uint8/int8 tensor (per-tensor scale and zero point, or per
row: ``block_size`` covering the last axis) and whose weight is a ``DequantizeLinear`` of a
constant 8-bit ``[K, N]`` initializer (per-tensor or per-output-channel scale / zero point). The
layer then runs as :mod:`backends.tvm.schedules.qgemm`'s kernel:

    y = act(s_x[m] * s_w[n] * sum_k (x_q[m, k] - zp_x[m]) * (w_q[k, n] - zp_w[n]) + bias[n])

with an exact int32 accumulator. Two kernels: ``u8s8`` (``vpmaddubsw``; uint8 ``x_q`` as is, the
zero point corrected with the weight column sums) when the weight rows can be ordered so that no
``k`` pair saturates the instruction's int16 sums (:func:`u8s8_order`; always for 7-bit
weights, and for any weight on a VNNI CPU, where ``vpdpbusd`` sums in int32), else ``s16``
(``x_q - zp_x`` widened to int16, ``vpmaddwd``). Either prologue fuses
with the ``QuantizeLinear`` that produced ``x_q``. Anything else returns ``None`` and the ops
lower one by one (dequantize, then the fp32 kernel).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from tvm import relax

from backends.tvm.lowering.common import CACC_DOMAIN, EmitContext, Out, attr, input_at
from backends.tvm.lowering.kernels import call_kernel, static_shape
from backends.tvm.schedules.epilogue import SUPPORTED
from backends.tvm.schedules.qgemm import (
    QGemmPlan,
    kernel_lanes,
    pack_qweight,
    plan_qgemm,
    qgemm_func,
    u8s8_order,
)

R = relax.op

_enabled = True
_u8s8 = True


@contextlib.contextmanager
def integer_kernels(enabled: bool, *, u8s8: bool = True) -> Iterator[None]:
    """Within the block, emit (``enabled``) or not integer GEMMs for quantized layers; ``u8s8=False``
    keeps them on the int16 kernel even where the uint8 x int8 one would be exact."""
    global _enabled, _u8s8
    saved = _enabled, _u8s8
    _enabled, _u8s8 = enabled, u8s8
    try:
        yield
    finally:
        _enabled, _u8s8 = saved


def kernel_switches() -> tuple[bool, bool]:
    """``(integer kernels enabled, u8 x s8 kernels allowed)`` as set by :func:`integer_kernels`."""
    return _enabled, _u8s8


@dataclass
class _Act:
    q: ir.Value
    scale: ir.Value
    zero: ir.Value | None


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _is_row_param(ctx: EmitContext, v: ir.Value | None, rank: int, k: int, node: ir.Node) -> bool:
    """Per-tensor, or blocked along the last axis with one block per row (shape ``[..., 1]``)."""
    if v is None:
        return True
    shape = ctx.shape(v)
    if int(attr(node, "block_size", 0)) == 0:
        return math.prod(int(d) if isinstance(d, int) else 2 for d in shape) == 1
    axis = int(attr(node, "axis", 1))
    return (
        len(shape) == rank
        and axis in (-1, rank - 1)
        and int(attr(node, "block_size", 0)) >= k
        and all(isinstance(d, int) for d in shape)
        and shape[-1] == 1
    )


def _activation(ctx: EmitContext, a: ir.Value, k: int) -> _Act | None:
    dq = _producer(a, "DequantizeLinear")
    if dq is None or len(dq.inputs) < 2:
        return None
    q, s, z = dq.inputs[0], dq.inputs[1], input_at(dq, 2)
    if q is None or s is None or ctx.is_const(q) or not ctx.is_runtime(q):
        return None
    if ctx.dtype(q) not in ("uint8", "int8") or (s.dtype is not None and s.dtype != ir.DataType.FLOAT):
        return None
    rank = ctx.rank(q)
    if not (_is_row_param(ctx, s, rank, k, dq) and _is_row_param(ctx, z, rank, k, dq)):
        return None
    return _Act(q, s, z)


def _weight(ctx: EmitContext, b: ir.Value, trans: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """``(w - zp_w)`` as int16 ``[K, N]`` and the fp32 scale ``[N]``, or ``None``."""
    dq = _producer(b, "DequantizeLinear")
    if dq is None or len(dq.inputs) < 2 or int(attr(dq, "block_size", 0)):
        return None
    q, s, z = ctx.const(dq.inputs[0]), ctx.const(dq.inputs[1]), ctx.const(input_at(dq, 2))
    if q is None or s is None or q.ndim != 2 or q.dtype not in (np.int8, np.uint8) or s.dtype != np.float32:
        return None
    if input_at(dq, 2) is not None and z is None:
        return None
    n_axis = 0 if trans else 1
    axis = int(attr(dq, "axis", 1))
    axis = axis + 2 if axis < 0 else axis
    n = q.shape[n_axis]
    if s.size != 1 and (axis != n_axis or s.size != n):
        return None
    w = q.astype(np.int16)
    if z is not None:
        if z.size != 1 and z.size != n:
            return None
        w = w - (z.astype(np.int16).reshape(-1, 1) if trans and z.size > 1 else z.astype(np.int16).reshape(-1))
    if trans:
        w = w.T
    return np.ascontiguousarray(w), np.broadcast_to(s.reshape(-1), (n,)).astype(np.float32)


def _row_param_expr(ctx: EmitContext, v: ir.Value, dtype: str) -> relax.Expr:
    known = ctx.const(v)
    if known is not None:
        return relax.const(known.astype(dtype))
    e = ctx.expr(v)
    return e if ctx.dtype(e) == dtype else ctx.emit(R.astype(e, dtype))


def _prologue_s16(ctx: EmitContext, act: _Act, m: int, k: int, plan: QGemmPlan) -> relax.Expr:
    """``x_q - zp_x`` as int16 ``[Mp, Kp]``."""
    a = ctx.emit(R.astype(ctx.expr(act.q), "int16"))
    if act.zero is not None:
        a = ctx.emit(R.subtract(a, _row_param_expr(ctx, act.zero, "int16")))
    a = ctx.emit(R.reshape(a, [m, k]))
    if (plan.mp, plan.kp) != (m, k):
        a = ctx.emit(R.nn.pad(a, [0, plan.mp - m, 0, plan.kp - k]))
    return a


def _zero_point_args(
    ctx: EmitContext, act: _Act, shift: int, colsum: np.ndarray, m: int, plan: QGemmPlan
) -> tuple[str, list[relax.Expr]]:
    """The u8s8 kernel's zero-point correction: ``("col", [corr])`` or ``("row", [row_zp, colsum])``."""
    if act.zero is None:
        return ("col", [relax.const((-shift * colsum).astype(np.int32))]) if shift else ("", [])
    known = ctx.const(act.zero)
    if known is not None and known.size == 1:
        zp = int(known.reshape(-1)[0]) + shift
        return "col", [relax.const((-zp * colsum).astype(np.int32))]
    zp_e = _row_param_expr(ctx, act.zero, "int32")
    if shift:
        zp_e = ctx.emit(R.add(zp_e, relax.const(shift, "int32")))
    if math.prod(int(d) for d in ctx.shape(zp_e)) == 1:
        zp_s = ctx.emit(R.reshape(zp_e, []))
        return "col", [ctx.emit(R.multiply(relax.const((-colsum).astype(np.int32)), zp_s))]
    row = ctx.emit(R.reshape(zp_e, [m]))
    if plan.mp != m:
        row = ctx.emit(R.nn.pad(row, [0, plan.mp - m]))
    return "row", [row, relax.const(colsum.astype(np.int32))]


def _emit(
    ctx: EmitContext,
    act: _Act,
    w: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None,
    activation: str,
    params: list[float],
) -> relax.Expr | None:
    shape = static_shape(ctx, ctx.expr(act.q))
    if shape is None or len(shape) < 2 or shape[-1] != w.shape[0]:
        return None
    m, k, n = math.prod(shape[:-1]), w.shape[0], w.shape[1]
    perm = u8s8_order(w) if _u8s8 else None
    zero_point = ""
    if perm is None:
        plan = plan_qgemm(m, k, n, "s16")
        args: list[relax.Expr] = [_prologue_s16(ctx, act, m, k, plan), relax.const(pack_qweight(w, plan))]
        zp_args: list[relax.Expr] = []
    else:
        # uint8 activations as they are (int8 ones shifted by 128), zero point through the weight column sums
        plan = plan_qgemm(m, k, n, "u8s8", kernel_lanes("u8s8"))
        shift = 128 if ctx.dtype(act.q) == "int8" else 0
        a = ctx.expr(act.q)
        if shift:
            a = ctx.emit(R.astype(R.add(R.astype(a, "int16"), relax.const(shift, "int16")), "uint8"))
        a = ctx.emit(R.reshape(a, [m, k]))
        if (plan.mp, plan.kp) != (m, k):
            a = ctx.emit(R.nn.pad(a, [0, plan.mp - m, 0, plan.kp - k]))
        wk = np.zeros((plan.kp, n), np.int8)
        wk[:k] = w
        if not np.array_equal(perm, np.arange(plan.kp)):
            a = ctx.emit(R.take(a, relax.const(perm.astype(np.int64)), axis=1))
            wk = wk[perm]
        args = [a, relax.const(pack_qweight(wk, plan))]
        zero_point, zp_args = _zero_point_args(ctx, act, shift, w.astype(np.int64).sum(axis=0), m, plan)
    s_known = ctx.const(act.scale)
    per_row = math.prod(int(d) for d in ctx.shape(act.scale)) > 1
    if per_row:
        args.append(relax.const(w_scale))
    elif s_known is not None:
        args.append(relax.const((w_scale * np.float32(s_known.reshape(-1)[0])).astype(np.float32)))
    else:
        s = ctx.emit(R.reshape(_row_param_expr(ctx, act.scale, "float32"), []))
        args.append(ctx.emit(R.multiply(relax.const(w_scale), s)))
    args += zp_args
    if per_row:
        rs = ctx.emit(R.reshape(_row_param_expr(ctx, act.scale, "float32"), [m]))
        args.append(ctx.emit(R.nn.pad(rs, [0, plan.mp - m])) if plan.mp != m else rs)
    if bias is not None:
        args.append(relax.const(np.ascontiguousarray(bias.astype(np.float32))))
    func = qgemm_func(
        plan,
        zero_point=zero_point,
        row_scale=per_row,
        bias=bias is not None,
        activation=activation,
        activation_params=params,
    )
    y = call_kernel(ctx, func, f"cacc_qgemm_{plan.kind}", args, [m, n], "float32")
    return y if len(shape) == 2 else ctx.emit(R.reshape(y, [*shape[:-1], n]))


def _bias(ctx: EmitContext, v: ir.Value | None, n: int, scale: float = 1.0) -> np.ndarray | bool | None:
    """The bias as ``[N]`` fp32, ``None`` when absent, ``False`` when it cannot be fused."""
    if v is None:
        return None
    known = ctx.const(v)
    if (
        known is None
        or known.dtype != np.float32
        or known.size not in (1, n)
        or (known.ndim > 1 and known.size > 1 and known.shape[-1] != n)
    ):
        return False
    return np.broadcast_to(known.reshape(-1) * np.float32(scale), (n,)).astype(np.float32)


def lower_integer(ctx: EmitContext, node: ir.Node) -> list[Out] | None:
    """The integer-GEMM lowering of ``node`` when it is a quantized matmul pattern, else ``None``."""
    if not _enabled or len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    kind = (node.domain if node.domain not in ("", "ai.onnx") else "", node.op_type)
    activation, params, alpha, trans_b, bias_v, beta = "", [], 1.0, False, None, 1.0
    if kind == ("", "MatMul"):
        pass
    elif kind == (CACC_DOMAIN, "FusedMatMul"):
        activation = attr(node, "activation", "") or ""
        params = [float(p) for p in attr(node, "activation_params", []) or []]
        bias_v = input_at(node, 2)
    elif kind == ("", "Gemm"):
        if int(attr(node, "transA", 0)):
            return None
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        trans_b = bool(attr(node, "transB", 0))
        bias_v = input_at(node, 2) if beta != 0.0 else None
    else:
        return None
    if activation not in SUPPORTED:
        return None
    weight = _weight(ctx, node.inputs[1], trans_b)
    if weight is None:
        return None
    w, w_scale = weight
    act = _activation(ctx, node.inputs[0], w.shape[0])
    if act is None:
        return None
    bias = _bias(ctx, bias_v, w.shape[1], beta)
    if bias is False:
        return None
    y = _emit(
        ctx, act, w, w_scale * np.float32(alpha), bias if isinstance(bias, np.ndarray) else None, activation, params
    )
    return None if y is None else [y]
