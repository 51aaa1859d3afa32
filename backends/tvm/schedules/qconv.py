"""Quantize-and-pack prologue of the integer pointwise conv (:mod:`backends.tvm.lowering.qconv`).

``packed[jo, ko, ji]`` (uint32) holds the four uint8 activations ``q(x[4 ko + i, nb jo + ji])``,
``i = 0..3`` from the low byte up: viewed as uint8 ``[cols/nb, Kp/4, nb, 4]`` it is the ``s8u8``
GEMM's packed operand. ``q`` is ``QuantizeLinear`` (``x / s`` rounded half to even, ``+ zp``,
saturated; int8 results shifted by 128 to uint8). Reading four channel rows with contiguous
vector loads and writing whole int32 lanes keeps it vectorised, where Relax's
quantize / reshape / transpose chain moves single bytes.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te, tirx

from backends.tvm.schedules.qgemm import QKERNEL_ATTR, QGemmPlan
from backends.tvm.schedules.quantize import round_half_even

PACK_KIND = "pack"
"""``cacc.qkernel`` value of the quantize-and-pack prologue."""

_VEC = 8


def quant_pack_func(
    plan: QGemmPlan, channels: int, pixels: int, scale: float, zero: int, qmin: int, qmax: int, shift: int
) -> tirx.PrimFunc:
    """PrimFunc ``(x[channels, pixels] f32, packed[Np/nb, Kp/4, nb] u32)``."""
    nb = plan.nb
    x = te.placeholder((channels, pixels), "float32", name="x")
    s = tirx.const(scale, "float32")

    def q(c: tirx.PrimExpr, p: tirx.PrimExpr) -> tirx.PrimExpr:
        # padded channels meet zero weights and padded pixels are never stored: clamped reads suffice
        cc = c if channels % 4 == 0 else tirx.min(c, channels - 1)
        pp = p if pixels % nb == 0 else tirx.min(p, pixels - 1)
        v = round_half_even(x[cc, pp] / s) + tirx.const(float(zero), "float32")
        v = tirx.max(tirx.min(v, tirx.const(float(qmax), "float32")), tirx.const(float(qmin), "float32"))
        return (v.astype("int32") + shift).astype("uint32")

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


__all__ = ["PACK_KIND", "quant_pack_func", "schedule_quant_pack", "tvm"]
