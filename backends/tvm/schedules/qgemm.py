"""Integer GEMM ``act(float(A16 @ W16) * scale + bias)`` with packed int16 weights (int8 values).

The data operand ``A`` is the quantized activation *minus its zero point*, widened to int16 by
the (fused) prologue, so no column-sum correction is needed and per-row zero points are free;
``W`` holds int8 weight values widened to int16 and packed at emit time as
``[Np/nb, Kp/2, nb, 2]`` (each column tile one contiguous panel, two consecutive ``k`` per
int32 lane). The accumulator is int32 and exact; the epilogue requantizes with
``scale[n]`` (``s_x * s_w[n]``, optionally times a per-row ``s_x[m]``), adds the bias and applies
the activation.

On x86 with AVX2 the inner ``8 columns x 2 k`` step is one ``vpmaddwd`` (s16 x s16 -> pairwise
s32 sums, no saturation for 8-bit values, unlike ``vpmaddubsw``) plus one ``vpaddd``: 16
multiply-adds per instruction against 8 for an fp32 FMA. Other targets get the same loop nest
vectorised by LLVM; GPU targets schedule the unscheduled function with their generic rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx
from tvm.script import tirx as T
from tvm.target import Target, codegen

from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.tiling import TileConfig, ceil_to, pick_tile

QKERNEL_ATTR = "cacc.qkernel"
"""PrimFunc attribute marking cacc's integer GEMM kernels (value: ``"qgemm"``)."""

PMADDWD_INTRIN = "cacc_avx2_pmaddwd_8x2"
_LANES = 8  # int32 lanes of a 256-bit vector


@T.prim_func(s_tir=True)
def _pmaddwd_desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _pmaddwd_impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        a_pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a_vec = T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16")
        b_vec = B.vload([0, 0], dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_vec, b_vec, dtype="int32x8"
        )


_registered = False


def register_intrinsics() -> None:
    """Register the AVX2 ``vpmaddwd`` tensor intrinsic (once; TVM's own x86 set is never imported)."""
    global _registered
    if _registered:
        return
    s_tir.TensorIntrin.register(PMADDWD_INTRIN, _pmaddwd_desc, _pmaddwd_impl, override=True)
    _registered = True


def has_avx2(target: Target) -> bool:
    """Whether ``target`` is an LLVM x86 target with AVX2."""
    if target.kind.name != "llvm":
        return False
    try:
        return bool(codegen.target_has_features("avx2", target))
    except Exception:  # an LLVM that does not know the target's CPU
        return False


@dataclass(frozen=True)
class QGemmPlan:
    """Shapes and register tile of one integer GEMM ``[M, K] @ [K, N]``."""

    m: int
    k: int
    n: int
    mr: int
    nb: int

    @property
    def mp(self) -> int:
        """M padded to the row tile."""
        return ceil_to(self.m, self.mr)

    @property
    def kp(self) -> int:
        """K padded to pairs."""
        return ceil_to(self.k, 2)

    @property
    def np_(self) -> int:
        """N padded to the column tile."""
        return ceil_to(self.n, self.nb)


def plan_qgemm(m: int, k: int, n: int) -> QGemmPlan:
    """The register tile (int32 accumulators in 16 AVX2 registers, like the fp32 GEMM's)."""
    mr, nb = pick_tile(m, n, TileConfig(_LANES, 16))
    return QGemmPlan(m, k, n, mr, nb)


def pack_qweight(w: np.ndarray, plan: QGemmPlan) -> np.ndarray:
    """Integer ``[K, N]`` -> int16 ``[Np/nb, Kp/2, nb, 2]`` (zero padded)."""
    k, n = w.shape
    padded = np.zeros((plan.kp, plan.np_), np.int16)
    padded[:k, :n] = w
    # [Kp/2, 2, Np/nb, nb] -> [Np/nb, Kp/2, nb, 2]
    return np.ascontiguousarray(padded.reshape(plan.kp // 2, 2, -1, plan.nb).transpose(2, 0, 3, 1))


def qgemm_func(
    plan: QGemmPlan,
    *,
    row_scale: bool = False,
    bias: bool = False,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> tirx.PrimFunc:
    """PrimFunc ``(A[Mp, Kp] int16, W packed int16, scale[N] f32[, row_scale[Mp]][, bias[N]], out[M, N] f32)``."""
    p = plan
    mr, nb = p.mr, p.nb
    a = te.placeholder((p.mp, p.kp), "int16", name="A")
    w = te.placeholder((p.np_ // nb, p.kp // 2, nb, 2), "int16", name="W")
    rko = te.reduce_axis((0, p.kp // 2), name="ko")
    rki = te.reduce_axis((0, 2), name="ki")
    acc = te.compute(
        (p.mp // mr, mr, p.np_ // nb, nb),
        lambda io, ii, jo, ji: te.sum(
            a[io * mr + ii, rko * 2 + rki].astype("int32") * w[jo, rko, ji, rki].astype("int32"), axis=[rko, rki]
        ),
        name="acc",
    )
    scale = te.placeholder((p.n,), "float32", name="scale")
    args = [a, w, scale]
    rs = te.placeholder((p.mp,), "float32", name="row_scale") if row_scale else None
    if rs is not None:
        args.append(rs)
    bias_t = te.placeholder((p.n,), "float32", name="bias") if bias else None
    if bias_t is not None:
        args.append(bias_t)

    def epi(i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        v = acc(i // mr, i % mr, j // nb, j % nb).astype("float32") * scale[j]
        if rs is not None:
            v = v * rs[i]
        if bias_t is not None:
            v = v + bias_t[j]
        return activation_expr(v, activation, activation_params)

    out = te.compute((p.m, p.n), epi, name="out")
    func = te.create_prim_func([*args, out])
    return func.with_attr(QKERNEL_ATTR, "qgemm").with_attr("op_pattern", 8)


def schedule_qgemm(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule:
    """Register-tiled schedule; the ``8 x 2`` inner step tensorized to ``vpmaddwd`` on AVX2 targets.

    Loop nest: ``(column tile, row tile)`` fused and parallel -> ``k`` pairs -> rows (unrolled) ->
    column vectors (unrolled) -> 8 lanes x 2 k (one instruction); the epilogue runs per tile.
    """
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    io, ii, jo, ji, ko, ki = sch.get_loops(acc)
    nb = int(sch.get(ji).extent)
    jv, jl = sch.split(ji, factors=[None, _LANES])
    sch.reorder(jo, io, ko, ii, jv, jl, ki)
    tile = sch.fuse(jo, io)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    o_inner = sch.get_loops(out)[-1]
    if nb % _LANES == 0:
        _oo, oi = sch.split(o_inner, factors=[None, _LANES])
        sch.vectorize(oi)
    init = sch.decompose_reduction(acc, ko)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    sch.unroll(ii)
    sch.unroll(jv)
    if has_avx2(target):
        register_intrinsics()
        sch.tensorize(jl, PMADDWD_INTRIN)
    else:
        sch.unroll(ki)
        sch.vectorize(jl)
    # keep the accumulator tile in registers (set after tensorizing: the intrinsic's buffers are global)
    sch.set_scope(init, 0, "local")
    return sch


__all__ = [
    "PMADDWD_INTRIN",
    "QKERNEL_ATTR",
    "QGemmPlan",
    "has_avx2",
    "pack_qweight",
    "plan_qgemm",
    "qgemm_func",
    "register_intrinsics",
    "schedule_qgemm",
    "tvm",
]
