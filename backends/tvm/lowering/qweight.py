"""Weight-only 4-bit GEMMs: ``x @ DequantizeLinear(constant int4 / uint4 weight)``.

Matched on ``MatMul``, ``Gemm`` (``transA=0``, ``alpha=1``) and ``cacc::FusedMatMul`` whose data
input is a float32 run-time tensor and whose weight is a ``DequantizeLinear`` of a constant 4-bit
``[K, N]`` initializer (``[N, K]`` under ``transB``) with per-tensor, per-output-column, or
blocked-along-``K`` scales and optional zero points. The weight stays 4-bit in the compiled module
(two values a byte) and is unpacked to fp32 inside the kernel, one column panel at a time
(:func:`backends.tvm.schedules.gemm.gemm_func` with ``rhs_int4_group``): numerics are the
reference's ``x @ dequantize(w)``, at the fp32 kernel's speed. A weight small enough to stay in cache
between runs (:data:`RESIDENT_FP32_BYTES` as fp32) is not worth it: the kernel would unpack it on every call
and save no memory traffic. That one, and anything else that does not match, returns ``None`` (the
dequantization is then folded at compile time and the fp32 kernel runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from tvm import relax

from backends.tvm.lowering.common import CACC_DOMAIN, EmitContext, Out, attr, input_at
from backends.tvm.lowering.kernels import call_kernel, static_shape
from backends.tvm.lowering.qmatmul import _bias, _producer, kernel_switches
from backends.tvm.schedules.epilogue import SUPPORTED
from backends.tvm.schedules.gemm import gemm_func, pack_rhs, pack_rhs_nibbles, plan_gemm
from backends.tvm.schedules.tiling import target_lanes

R = relax.op

_FOUR_BIT = {ir.DataType.INT4: 8, ir.DataType.UINT4: 0}  # the offset mapping stored values to nibbles 0..15

#: A 4-bit weight whose fp32 copy takes at most this many bytes runs on the fp32 kernel, dequantized at compile
#: time. Measured on fmnist_cnn's 1,176 x 24 dense layer (113 KB as fp32, one row): 4.8 us unpacking in the kernel
#: against 1.4 us for the fp32 kernel, the int4 model ~15% slower than the fp32 one. MiniLM's smallest layer
#: (384 x 384, 590 KB as fp32) keeps the 4-bit kernel.
RESIDENT_FP32_BYTES = 256 * 1024


@dataclass(frozen=True)
class Int4Weight:
    """A 4-bit weight as nibbles ``u`` ``[K, N]`` (0..15) with ``w = u * scale[k // group] + offset[k // group]``."""

    nibbles: np.ndarray
    scale: np.ndarray  #: [G, N] fp32
    offset: np.ndarray  #: [G, N] fp32
    group: int


def int4_weight(ctx: EmitContext, b: ir.Value, trans: bool) -> Int4Weight | None:
    """The 4-bit weight behind ``b`` (a ``DequantizeLinear`` of a constant), as ``[K, N]``; else ``None``."""
    dq = _producer(b, "DequantizeLinear")
    if dq is None or len(dq.inputs) < 2 or dq.inputs[0] is None:
        return None
    q_v = dq.inputs[0]
    if q_v.dtype not in _FOUR_BIT:
        return None
    q, s = ctx.const(q_v), ctx.const(dq.inputs[1])
    z = ctx.const(input_at(dq, 2))
    if q is None or s is None or q.ndim != 2 or s.dtype != np.float32 or (input_at(dq, 2) is not None and z is None):
        return None
    rank_axis = int(attr(dq, "axis", 1)) % 2
    block = int(attr(dq, "block_size", 0))
    k_axis = 1 if trans else 0
    q = q.astype(np.int32)
    k, n = (q.shape[1], q.shape[0]) if trans else q.shape
    if s.size == 1 and block == 0:
        group, s2 = k, np.full((1, n), float(s.reshape(-1)[0]), np.float32)
        z2 = None if z is None else np.full((1, n), int(z.reshape(-1)[0]), np.int32)
    elif block == 0 and rank_axis != k_axis and s.size == n:
        group, s2 = k, s.reshape(1, n).astype(np.float32)
        z2 = None if z is None else z.reshape(1, n).astype(np.int32)
    elif block > 0 and rank_axis == k_axis and s.ndim == 2:
        group = block
        s2 = s.T if trans else s
        z2 = None if z is None else (z.T if trans else z).astype(np.int32)
        if s2.shape != (-(-k // group), n):
            return None
    else:
        return None
    w = q.T if trans else q
    base = _FOUR_BIT[q_v.dtype]
    zero = np.zeros_like(s2, dtype=np.int32) if z2 is None else z2
    offset = (-(base + zero) * s2).astype(np.float32)
    return Int4Weight(np.ascontiguousarray((w + base).astype(np.uint8)), s2.astype(np.float32), offset, group)


def emit_int4_dense(
    ctx: EmitContext,
    a: relax.Expr,
    wt: Int4Weight,
    bias: np.ndarray | None,
    activation: str,
    params: list[float],
) -> relax.Expr | None:
    """``act(a @ dequantize(wt) + bias)``, the 4-bit weight unpacked in the kernel; ``None`` if it does not apply."""
    shape = static_shape(ctx, a)
    k, n = wt.nibbles.shape
    if shape is None or len(shape) < 2 or shape[-1] != k or ctx.dtype(a) != "float32" or activation not in SUPPORTED:
        return None
    m = math.prod(shape[:-1])
    plan = plan_gemm(1, m, k, n, target_lanes())
    func = gemm_func(
        plan,
        "float32",
        lhs_packed=False,
        rhs_packed=True,
        bias="col" if bias is not None else "",
        activation=activation,
        activation_params=params,
        rhs_int4_group=wt.group,
    )
    args = [
        ctx.emit(R.reshape(a, [1, m, k])),
        relax.const(pack_rhs_nibbles(wt.nibbles, plan.nb)),
        relax.const(pack_rhs(wt.scale, plan.nb)),  # [G, N] per-group rows packed like a weight
        relax.const(pack_rhs(wt.offset, plan.nb)),
    ]
    if bias is not None:
        args.append(relax.const(bias))
    y = call_kernel(ctx, func, "cacc_dense_int4", args, [1, m, n], "float32")
    return ctx.emit(R.reshape(y, [*shape[:-1], n]))


def lower_weight_only(ctx: EmitContext, node: ir.Node) -> list[Out] | None:
    """The 4-bit weight-only lowering of ``node`` when it matches (see the module doc), else ``None``."""
    enabled, _ = kernel_switches()
    if not enabled or len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    kind = (node.domain if node.domain not in ("", "ai.onnx") else "", node.op_type)
    activation, params, trans_b, bias_v, beta = "", [], False, None, 1.0
    if kind == (CACC_DOMAIN, "FusedMatMul"):
        activation = attr(node, "activation", "") or ""
        params = [float(p) for p in attr(node, "activation_params", []) or []]
        bias_v = input_at(node, 2)
    elif kind == ("", "Gemm"):
        if int(attr(node, "transA", 0)) or float(attr(node, "alpha", 1.0)) != 1.0:
            return None
        trans_b, beta = bool(attr(node, "transB", 0)), float(attr(node, "beta", 1.0))
        bias_v = input_at(node, 2) if beta != 0.0 else None
    elif kind != ("", "MatMul"):
        return None
    x = node.inputs[0]
    if ctx.is_const(x) or not ctx.is_runtime(x):
        return None
    wt = int4_weight(ctx, node.inputs[1], trans_b)
    if wt is None or wt.nibbles.size * 4 <= RESIDENT_FP32_BYTES:
        return None
    bias = _bias(ctx, bias_v, wt.nibbles.shape[1], beta)
    if bias is False:
        return None
    y = emit_int4_dense(ctx, ctx.expr(x), wt, bias if isinstance(bias, np.ndarray) else None, activation, params)
    return None if y is None else [y]
