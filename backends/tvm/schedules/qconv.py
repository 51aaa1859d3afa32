"""Quantize-and-pack prologues of the integer pointwise convs (:mod:`backends.tvm.lowering.qconv`).

``packed[jo, ko, ji]`` (uint32) holds the four uint8 activations ``q(x[4 ko + i, nb jo + ji])``,
``i = 0..3`` from the low byte up: viewed as uint8 ``[cols/nb, Kp/4, nb, 4]`` it is the ``s8u8``
GEMM's packed operand. ``q`` is ``QuantizeLinear`` (``x / s`` rounded half to even, ``+ zp``,
saturated; int8 results shifted by 128 to uint8). Reading four channel rows with contiguous
vector loads and writing whole int32 lanes keeps it vectorised, where Relax's
quantize / reshape / transpose chain moves single bytes.

The conv on channel-blocked activations takes its operand ``A[Mp, Kp]`` (pixel rows, channel columns;
``x_q - zp`` as int16 for the ``s16`` kernel, ``x_q`` (+128 for int8) as uint8 for ``u8s8``) from
:func:`blocked_operand_func`: one pass from the fp32 ``[1, C/b, H, W, b]`` tensor, where a quantize
kernel and a transpose / cast / subtract / pad kernel each made one.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te, tirx

from backends.tvm.schedules.qgemm import QKERNEL_ATTR, QGemmPlan
from backends.tvm.schedules.quantize import saturated_quantize

PACK_KIND = "pack"
"""``cacc.qkernel`` value of the quantize-and-pack prologue."""
OPERAND_KIND = "blocked_operand"
"""``cacc.qkernel`` value of the blocked conv's quantized operand."""

_VEC = 8
_OPERAND_ROWS = 16  #: pixel rows per parallel tile of the blocked operand (at most)


def quant_pack_func(
    plan: QGemmPlan, channels: int, pixels: int, scale: float, zero: int, qmin: int, qmax: int, shift: int
) -> tirx.PrimFunc:
    """PrimFunc ``(x[channels, pixels] f32, packed[Np/nb, Kp/4, nb] u32)``."""
    nb = plan.nb
    x = te.placeholder((channels, pixels), "float32", name="x")

    def q(c: tirx.PrimExpr, p: tirx.PrimExpr) -> tirx.PrimExpr:
        # padded channels meet zero weights and padded pixels are never stored: clamped reads suffice
        cc = c if channels % 4 == 0 else tirx.min(c, channels - 1)
        pp = p if pixels % nb == 0 else tirx.min(p, pixels - 1)
        return (saturated_quantize(x[cc, pp], scale, zero, qmin, qmax).astype("int32") + shift).astype("uint32")

    def pack(jo: tirx.Var, ko: tirx.Var, ji: tirx.Var) -> tirx.PrimExpr:
        p = jo * nb + ji
        out = q(ko * 4, p)
        for i in range(1, 4):
            out = out | (q(ko * 4 + i, p) << tirx.const(8 * i, "uint32"))
        return out

    packed = te.compute((plan.np_ // nb, plan.kp // 4, nb), pack, name="packed")
    # opaque (never fused); scheduled by schedule_qgemm -> schedule_quant_pack on CPUs, generic rules on GPUs
    return te.create_prim_func([x, packed]).with_attr(QKERNEL_ATTR, PACK_KIND).with_attr("op_pattern", 8)


def schedule_quant_pack(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Panels in parallel, 8 pixels (one int32 vector) per step."""
    sch = s_tir.Schedule(func)
    jo, _ko, ji = sch.get_loops(sch.get_sblock("packed"))
    sch.parallel(jo)
    _jv, jl = sch.split(ji, factors=[None, _VEC])
    sch.vectorize(jl)
    return sch


def blocked_operand_func(
    shape: tuple[int, int, int, int],
    rows: int,
    scale: float,
    zero: int,
    qmin: int,
    qmax: int,
    offset: int,
    dtype: str,
) -> tirx.PrimFunc:
    """PrimFunc ``(x[1, C/b, H, W, b] f32, a[rows, C/b, b] dtype)``: ``a[p, cb, l]`` is
    ``QuantizeLinear(x[0, cb, p // W, p % W, l]) + offset`` for the ``H*W`` pixels and 0 in the padding rows
    (``rows >= H*W``); ``shape`` is ``(C/b, H, W, b)``. Viewed ``[rows, C]`` it is the GEMM's activation
    operand (``offset``: ``-zp`` for ``s16``, ``0`` or ``128`` for ``u8s8``)."""
    cb, h, w, b = shape
    x = te.placeholder((1, cb, h, w, b), "float32", name="x")

    def operand(p: tirx.Var, c: tirx.Var, lane: tirx.Var) -> tirx.PrimExpr:
        pp = tirx.min(p, h * w - 1)  # padding rows read a real pixel and store 0
        v = saturated_quantize(x[0, c, pp // w, pp % w, lane], scale, zero, qmin, qmax)
        q = (v.astype("int32") + offset).astype(dtype)
        return q if rows == h * w else tirx.if_then_else(p < h * w, q, tirx.const(0, dtype))

    a = te.compute((rows, cb, b), operand, name="operand")
    return te.create_prim_func([x, a]).with_attr(QKERNEL_ATTR, OPERAND_KIND).with_attr("op_pattern", 8)


def schedule_blocked_operand(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Tiles of :data:`_OPERAND_ROWS` pixel rows in parallel; per tile, channel block by channel block, one
    vector of ``b`` channels per pixel (each block's pixels are contiguous in the input)."""
    sch = s_tir.Schedule(func)
    p, c, lane = sch.get_loops(sch.get_sblock("operand"))
    rows = int(sch.get(p).extent)
    tile = next((t for t in range(_OPERAND_ROWS, 0, -1) if rows % t == 0), 1)
    po, pi = sch.split(p, factors=[None, tile])
    sch.reorder(po, c, pi, lane)
    sch.parallel(po)
    sch.vectorize(lane)
    return sch


__all__ = [
    "OPERAND_KIND",
    "PACK_KIND",
    "blocked_operand_func",
    "quant_pack_func",
    "schedule_blocked_operand",
    "schedule_quant_pack",
    "tvm",
]
