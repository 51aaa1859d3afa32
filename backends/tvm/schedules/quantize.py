"""Per-tensor ``QuantizeLinear`` of a run-time fp32 tensor as one flat, vectorised CPU kernel.

``y[i] = saturate(round_half_even(x[i] / s) + zp)`` over the tensor viewed 1-D. Relax's own
lowering (divide / round / add / clip / cast fused over the N-D shape) indexes through the
tensor's dimensions and vectorises ``nearbyint`` poorly: EfficientNet-Lite0's 1.2M-element
activation took 500-650 us on one thread, against 230 us here (the ``vdivps`` the spec's
division needs is most of what is left).

Rounding: LLVM lowers ``tirx.round`` to ``llvm.nearbyint`` (``vroundps`` / ``frinti``), which
rounds half to even in the default floating-point mode; written as ``tirx.nearbyint`` the same
intrinsic comes out with a scalarised clamp. Other targets keep Relax's lowering.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te, tirx
from tvm.target import Target

from backends.tvm.schedules.qgemm import QKERNEL_ATTR

QUANTIZE_KIND = "quantize"
"""``cacc.qkernel`` value of the flat quantize kernel."""

_VEC = 32  # one 256-bit vector of uint8 results
_CHUNK = 4096  # elements per parallel task


def round_half_even(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """``v`` rounded half to even: ``tirx.round`` for CPU (LLVM) emission, where it is the fast form of
    ``llvm.nearbyint``; ``tirx.nearbyint`` elsewhere (CUDA's ``round`` rounds halves away from zero)."""
    target = Target.current(allow_none=True)
    return tirx.round(v) if target is None or target.kind.name == "llvm" else tirx.nearbyint(v)


def saturated_quantize(x: tirx.PrimExpr, scale: float, zero: int, qmin: int, qmax: int) -> tirx.PrimExpr:
    """``QuantizeLinear`` of the fp32 ``x`` with constant ``scale`` / ``zero``, saturated to ``[qmin, qmax]``;
    still fp32 (an integral value), for the caller to cast."""
    v = round_half_even(x / tirx.const(scale, "float32")) + tirx.const(float(zero), "float32")
    return tirx.max(tirx.min(v, tirx.const(float(qmax), "float32")), tirx.const(float(qmin), "float32"))


def quantize_func(n: int, scale: float, zero: int, qmin: int, qmax: int, dtype: str) -> tirx.PrimFunc:
    """PrimFunc ``(x[n] f32, y[n] dtype)``: per-tensor quantization with constant ``scale`` / ``zero``."""
    x = te.placeholder((n,), "float32", name="x")
    y = te.compute((n,), lambda i: saturated_quantize(x[i], scale, zero, qmin, qmax).astype(dtype), name="y")
    return te.create_prim_func([x, y]).with_attr(QKERNEL_ATTR, QUANTIZE_KIND).with_attr("op_pattern", 8)


def schedule_quantize(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Whole vectors (``_VEC`` lanes, or 8, or scalar when ``n`` has no such factor) in parallel chunks
    of about ``_CHUNK`` elements; every split exact, so no predicate blocks the vectoriser."""
    sch = s_tir.Schedule(func)
    (i,) = sch.get_loops(sch.get_sblock("y"))
    n = int(sch.get(i).extent)
    lanes = next(v for v in (_VEC, 8, 1) if n % v == 0)
    steps, lane = sch.split(i, factors=[None, lanes])
    count = n // lanes
    per = max(d for d in range(1, min(count, max(1, _CHUNK // lanes)) + 1) if count % d == 0)
    tasks, _step = sch.split(steps, factors=[None, per])
    sch.parallel(tasks)
    if lanes > 1:
        sch.vectorize(lane)
    return sch


__all__ = ["QUANTIZE_KIND", "quantize_func", "round_half_even", "saturated_quantize", "schedule_quantize", "tvm"]
