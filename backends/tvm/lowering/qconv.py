"""Integer pointwise convolutions from quantized patterns: ``DQ(activation) x DQ(constant int8 weight)``.

Matched on ``Conv`` and ``cacc::FusedConv`` with a ``1 x 1`` kernel (any stride, no padding,
``group=1``) whose data input is a per-tensor ``DequantizeLinear`` of a run-time uint8/int8
tensor and whose weight is a ``DequantizeLinear`` of a constant int8 ``[Co, Ci, 1, 1]``
initializer (per-tensor or per-output-channel scale, zero point folded in when the result stays
int8). The layer is the GEMM ``W[Co, Ci] @ X[Ci, N*H*W]`` on :mod:`backends.tvm.schedules.qgemm`'s
``s8u8`` kernel: weight rows are broadcast, the uint8 activations are packed four channels per
int32 lane by a Relax prologue (reshape / pad / transpose, which TVM fuses with the
``QuantizeLinear`` that produced them), and the epilogue applies ``s_x * s_w[co]``, the zero-point
correction ``-zp_x * sum_ci w[co, ci]``, the bias and the activation (e.g. ``Clip(0, 6)``), writing
NCHW directly:

    y[n, co, p] = act(s_x * s_w[co] * sum_ci (x_q[n, ci, p] - zp_x) * w_q[co, ci] + bias[co])

Exact like the ``u8s8`` GEMM: only when the channel pairs cannot saturate ``vpmaddubsw`` (always
for 7-bit weights, and for any weight on a VNNI CPU, see :func:`~backends.tvm.schedules.qgemm.u8s8_order`).
Anything else returns ``None`` and the ops lower one by one (dequantize, then the fp32 conv).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from tvm import relax

from backends.tvm.lowering.common import CACC_DOMAIN, Blocked, EmitContext, Out, attr, input_at
from backends.tvm.lowering.kernels import call_kernel, static_shape
from backends.tvm.lowering.nn import _spatial_params
from backends.tvm.lowering.qmatmul import _Act, _activation, _bias, _producer, _zero_point_args, kernel_switches
from backends.tvm.schedules.epilogue import SUPPORTED
from backends.tvm.schedules.qconv import blocked_operand_func, quant_pack_func
from backends.tvm.schedules.qgemm import QGemmPlan, pack_qweight, plan_qgemm, qgemm_func, u8s8_order

R = relax.op


def _conv_weight(ctx: EmitContext, v: ir.Value) -> tuple[np.ndarray, np.ndarray] | None:
    """``w - zp_w`` as int8 ``[Co, Ci]`` and the fp32 scale ``[Co]`` of a pointwise weight, or ``None``."""
    dq = _producer(v, "DequantizeLinear")
    if dq is None or len(dq.inputs) < 2 or int(attr(dq, "block_size", 0)):
        return None
    q, s, z = ctx.const(dq.inputs[0]), ctx.const(dq.inputs[1]), ctx.const(input_at(dq, 2))
    if q is None or s is None or q.ndim != 4 or q.shape[2:] != (1, 1) or q.dtype not in (np.int8, np.uint8):
        return None
    if s.dtype != np.float32 or (input_at(dq, 2) is not None and z is None):
        return None
    co = q.shape[0]
    axis = int(attr(dq, "axis", 1))
    if s.size != 1 and ((axis + 4 if axis < 0 else axis) != 0 or s.size != co):
        return None
    w = q.reshape(co, -1).astype(np.int16)
    if z is not None:
        if z.size not in (1, co):
            return None
        w = w - z.astype(np.int16).reshape(-1, 1)
    if w.min() < -128 or w.max() > 127:
        return None
    return w.astype(np.int8), np.broadcast_to(s.reshape(-1), (co,)).astype(np.float32)


def _pack_activation(
    ctx: EmitContext, x: relax.Expr, shape: list[int], perm: np.ndarray, kp: int, cols: int, nb: int
) -> relax.Expr:
    """uint8 ``[N, Ci, H, W]`` -> ``[cols/nb, Kp/4, nb, 4]`` (channel ``perm`` applied, zero padded)."""
    n, ci = shape[0], shape[1]
    pixels = math.prod(shape[2:])
    if n == 1:
        a = ctx.emit(R.reshape(x, [ci, pixels]))
    else:
        a = ctx.emit(R.reshape(R.permute_dims(x, [1, 0, 2, 3]), [ci, n * pixels]))
    if not np.array_equal(perm, np.arange(perm.size)):
        if perm.size > ci:  # padding rows come from the zero pad below
            a = ctx.emit(R.nn.pad(a, [0, perm.size - ci, 0, 0]))
        a = ctx.emit(R.take(a, relax.const(perm.astype(np.int64)), axis=0))
        ci = perm.size
    if (kp, cols) != (ci, n * pixels):
        a = ctx.emit(R.nn.pad(a, [0, kp - ci, 0, cols - n * pixels]))
    a = ctx.emit(R.reshape(a, [kp // 4, 4, cols // nb, nb]))
    return ctx.emit(R.permute_dims(a, [2, 0, 3, 1]))


def _constant_quantize(ctx: EmitContext, q: ir.Value) -> tuple[ir.Value, np.ndarray, int] | None:
    """``(x, scale, zero point)`` of the per-tensor ``QuantizeLinear`` with constant parameters producing ``q``
    (``scale`` the one-element array), else ``None``."""
    node = _producer(q, "QuantizeLinear")
    if node is None or int(attr(node, "block_size", 0)) or node.inputs[0] is None:
        return None
    s, z = ctx.const(input_at(node, 1)), ctx.const(input_at(node, 2))
    if s is None or s.size != 1 or (input_at(node, 2) is not None and (z is None or z.size != 1)):
        return None
    return node.inputs[0], s, 0 if z is None else int(z.reshape(-1)[0])


def _fused_quant_pack(
    ctx: EmitContext, q: ir.Value, shape: list[int], perm: np.ndarray, plan: QGemmPlan
) -> relax.Expr | None:
    """The packed operand straight from the float input of the ``QuantizeLinear`` producing ``q``
    (one vectorised kernel), or ``None`` when that producer is not a per-tensor constant quantize."""
    found = _constant_quantize(ctx, q)
    if found is None or shape[0] != 1 or not np.array_equal(perm, np.arange(perm.size)):
        return None
    x_v, s, zero = found
    if not ctx.is_runtime(x_v) or ctx.dtype(x_v) != "float32":
        return None
    dtype = ctx.dtype(q)
    info = np.iinfo(np.dtype(dtype))
    ci, pixels = shape[1], shape[2] * shape[3]
    func = quant_pack_func(
        plan, ci, pixels, float(s.reshape(-1)[0]), zero, int(info.min), int(info.max), 128 if dtype == "int8" else 0
    )
    x = ctx.emit(R.reshape(ctx.expr(x_v), [ci, pixels]))
    packed = call_kernel(ctx, func, "cacc_qconv_pack", [x], [plan.np_ // plan.nb, plan.kp // 4, plan.nb], "uint32")
    return ctx.emit(R.memory.view(packed, [plan.np_ // plan.nb, plan.kp // 4, plan.nb, 4], "uint8"))


def _scale_arg(ctx: EmitContext, act: _Act, w_scale: np.ndarray) -> relax.Expr:
    """``s_x * s_w[co]``: a constant when the activation scale is known, else computed at run time."""
    s_known = ctx.const(act.scale)
    if s_known is not None:
        return relax.const((w_scale * np.float32(s_known.reshape(-1)[0])).astype(np.float32))
    s = ctx.emit(R.reshape(R.astype(ctx.expr(act.scale), "float32"), []))
    return ctx.emit(R.multiply(relax.const(w_scale), s))


def _call_qgemm(
    ctx: EmitContext,
    act: _Act,
    plan: QGemmPlan,
    args: list[relax.Expr],
    colsum: np.ndarray,
    pixels: int,
    shift: int,
    epilogue: tuple[np.ndarray | bool | None, str, list[float]],
    name: str,
    shape: list[int],
    out_block: int = 0,
    centred: bool = False,
) -> relax.Expr | None:
    """Emit the integer GEMM on ``args`` (operands and scale) plus its zero-point correction (from the weight
    ``colsum`` per output channel, over ``pixels`` activation vectors; none when the activation operand is
    ``centred``, i.e. already ``x_q - zp_x``) and ``epilogue`` (bias, activation, its parameters); ``None``
    when the activation's zero point needs a per-row correction, which the conv kernels do not take."""
    bias, activation, params = epilogue
    zero_point, zp_args = ("", []) if centred else _zero_point_args(ctx, act, shift, colsum, pixels, plan)
    if zero_point not in ("", "col"):
        return None
    args = [*args, *zp_args]
    if isinstance(bias, np.ndarray):
        args.append(relax.const(np.ascontiguousarray(bias)))
    func = qgemm_func(
        plan,
        zero_point=zero_point,
        bias=isinstance(bias, np.ndarray),
        activation=activation,
        activation_params=params,
        out_block=out_block,
    )
    return call_kernel(ctx, func, name, args, shape, "float32")


def _blocked_operand(
    ctx: EmitContext, act: _Act, held: Blocked, plan: QGemmPlan, kind: str, shift: int
) -> relax.Expr | None:
    """The blocked conv's activation operand ``[Mp, Kp]`` in one pass from the fp32 blocked input of the
    ``QuantizeLinear`` producing ``act.q`` (:func:`~backends.tvm.schedules.qconv.blocked_operand_func`);
    ``None`` when that producer is not a per-tensor constant quantize of a blocked fp32 value."""
    found = _constant_quantize(ctx, act.q)
    if found is None or plan.kp != plan.k:
        return None
    x_v, s, zero = found
    src = ctx.blocked_form(x_v)
    if src is None or src.block != held.block or ctx.dtype(src.expr) != "float32" or s.dtype != np.float32:
        return None
    if kind == "s16":  # centred: x_q minus the dequantization's zero point, as int16
        dz = ctx.const(act.zero)
        if act.zero is not None and (dz is None or dz.size != 1):
            return None
        offset, dtype = -(0 if dz is None else int(dz.reshape(-1)[0])), "int16"
    else:
        offset, dtype = shift, "uint8"
    shape = static_shape(ctx, src.expr)
    if shape is None or len(shape) != 5 or shape[0] != 1:
        return None
    _n, cb, h, w, b = shape
    info = np.iinfo(np.dtype(ctx.dtype(act.q)))
    func = blocked_operand_func(
        (cb, h, w, b), plan.mp, float(s.reshape(-1)[0]), zero, int(info.min), int(info.max), offset, dtype
    )
    y = call_kernel(ctx, func, "cacc_quantize_operand", [src.expr], [plan.mp, cb, b], dtype)
    return ctx.emit(R.memory.view(y, [plan.mp, plan.kp]))


def _blocked_qconv(
    ctx: EmitContext,
    act: _Act,
    held: Blocked,
    w: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | bool | None,
    strides: list[int],
    activation: str,
    params: list[float],
) -> Blocked | None:
    """A stride-1 pointwise conv on channel-blocked uint8/int8 activations, written channel-blocked: the
    integer GEMM ``X[H*W, Ci] @ W[Ci, Co]`` (pixel rows broadcast, weight vectors over output channels,
    as for a MatMul) with its output stored ``[Co/b, H*W, b]``. ``u8s8`` when the weight's channel pairs
    cannot saturate ``vpmaddubsw`` in their order (always for 7-bit weights), else ``s16`` on
    ``x_q - zp_x`` widened to int16 (full 8-bit weights). ``None`` when it does not apply."""
    n, _cb, h, wd, b = (int(d) for d in ctx.shape(held.expr))
    co, ci = w.shape
    wk_t = np.ascontiguousarray(w.T)  # [Ci, Co]
    if n != 1 or strides != [1, 1] or co % b:
        return None
    perm = u8s8_order(wk_t)
    kind = "u8s8" if perm is not None and np.array_equal(perm, np.arange(perm.size)) else "s16"
    m = h * wd
    plan = plan_qgemm(m, ci, co, kind)
    if plan.nb % b:
        return None
    shift = 128 if kind == "u8s8" and ctx.dtype(act.q) == "int8" else 0
    x = _blocked_operand(ctx, act, held, plan, kind, shift)
    if x is None:
        x = ctx.emit(R.reshape(R.permute_dims(held.expr, [0, 2, 3, 1, 4]), [m, ci]))
        if kind == "s16":
            x = ctx.emit(R.astype(x, "int16"))
            if act.zero is not None:
                x = ctx.emit(R.subtract(x, R.reshape(R.astype(ctx.expr(act.zero), "int16"), [])))
        elif shift:
            x = ctx.emit(R.astype(R.add(R.astype(x, "int16"), relax.const(shift, "int16")), "uint8"))
        if (plan.mp, plan.kp) != (m, ci):
            x = ctx.emit(R.nn.pad(x, [0, plan.mp - m, 0, plan.kp - ci]))
    wk = np.zeros((plan.kp, co), np.int8)
    wk[:ci] = wk_t
    args = [x, relax.const(pack_qweight(wk, plan)), _scale_arg(ctx, act, w_scale)]
    colsum = wk_t.astype(np.int64).sum(axis=0)
    epilogue = (bias, activation, params)
    name = f"cacc_qconv1x1_blocked_{kind}"
    y = _call_qgemm(ctx, act, plan, args, colsum, m, shift, epilogue, name, [co // b, m, b], b, centred=kind == "s16")
    return None if y is None else Blocked(ctx.emit(R.reshape(y, [1, co // b, h, wd, b])), b)


def lower_integer_conv(ctx: EmitContext, node: ir.Node) -> list[Out] | None:
    """The integer lowering of ``node`` when it is a quantized pointwise conv pattern, else ``None``."""
    enabled, u8s8 = kernel_switches()
    if not enabled or not u8s8 or len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    activation, params = "", []
    if (domain, node.op_type) == (CACC_DOMAIN, "FusedConv"):
        activation = attr(node, "activation", "") or ""
        params = [float(p) for p in attr(node, "activation_params", []) or []]
    elif (domain, node.op_type) != ("", "Conv"):
        return None
    if activation not in SUPPORTED or int(attr(node, "group", 1)) != 1:
        return None
    weight = _conv_weight(ctx, node.inputs[1])
    if weight is None:
        return None
    w, w_scale = weight
    co, ci = w.shape
    act = _activation(ctx, node.inputs[0], ci)
    if act is None or any(
        v is not None and math.prod(int(d) for d in ctx.shape(v)) != 1 for v in (act.scale, act.zero)
    ):
        return None
    held = ctx.blocked_form(act.q)
    shape = static_shape(ctx, held.expr if held is not None else ctx.expr(act.q))
    if held is not None and shape is not None:
        shape = [shape[0], shape[1] * shape[4], shape[2], shape[3]]
    if shape is None or len(shape) != 4 or shape[1] != ci:
        return None
    strides, _dil, pads = _spatial_params(ctx, node, list(shape), [1, 1])
    if any(pads):
        return None
    bias = _bias(ctx, input_at(node, 2), co)
    if bias is False:
        return None
    if held is not None:
        out = _blocked_qconv(ctx, act, held, w, w_scale, bias, strides, activation, params)
        if out is not None:
            return [out]
    perm = u8s8_order(np.ascontiguousarray(w.T))
    if perm is None:
        return None
    x = ctx.expr(act.q)
    shift = 128 if ctx.dtype(act.q) == "int8" else 0
    if shift:
        x = ctx.emit(R.astype(R.add(R.astype(x, "int16"), relax.const(shift, "int16")), "uint8"))
    if strides != [1, 1]:
        x = ctx.emit(R.strided_slice(x, axes=[2, 3], begin=[0, 0], end=shape[2:], strides=strides))
        shape = [shape[0], ci, -(-shape[2] // strides[0]), -(-shape[3] // strides[1])]
    n, oh, ow = shape[0], shape[2], shape[3]
    cols = n * oh * ow
    plan = plan_qgemm(co, perm.size, cols, "s8u8")
    wk = np.zeros((plan.mp, plan.kp), np.int8)
    wk[:co, : perm.size] = np.pad(w, [(0, 0), (0, perm.size - ci)])[:, perm]
    packed = _fused_quant_pack(ctx, act.q, shape, perm, plan) if strides == [1, 1] else None
    if packed is None:
        packed = _pack_activation(ctx, x, shape, perm, plan.kp, plan.np_, plan.nb)
    args = [relax.const(wk), packed, _scale_arg(ctx, act, w_scale)]
    colsum = w.astype(np.int64).sum(axis=1)
    epilogue = (bias, activation, params)
    y = _call_qgemm(ctx, act, plan, args, colsum, cols, shift, epilogue, "cacc_qconv1x1_s8u8", [co, cols])
    if y is None:
        return None
    if n == 1:
        return [ctx.emit(R.reshape(y, [1, co, oh, ow]))]
    return [ctx.emit(R.permute_dims(R.reshape(y, [co, n, oh, ow]), [1, 0, 2, 3]))]
