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
multiply-adds per instruction against 8 for an fp32 FMA. On CPUs with VNNI (AVX-VNNI, or AVX-512
VNNI with VL) the ``u8s8`` / ``s8u8`` step is one ``vpdpbusd`` (u8 x s8, four products summed into
the int32 accumulator, never saturating): 32 multiply-adds per instruction, exact for any weight,
so the lowering takes those kernels for full-range 8-bit weights too (:func:`u8s8_order`). Other
targets get the same loop nest vectorised by LLVM; GPU targets schedule the unscheduled function
with their generic rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx
from tvm.script import tirx as T
from tvm.target import Target

from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.tiling import ceil_to, emit_target, has_feature
from backends.tvm.target import target_cores
from compiler.errors import BackendError

QKERNEL_ATTR = "cacc.qkernel"
"""PrimFunc attribute marking cacc's integer GEMM kernels (value: ``"qgemm"``)."""
NEEDS_VNNI_ATTR = "cacc.needs_vnni"
"""PrimFunc attribute of a ``u8s8`` / ``s8u8`` kernel emitted for a VNNI target: its weight ``k`` pairs may
saturate ``vpmaddubsw``, so only ``vpdpbusd`` (or the plain int32 loop) computes it exactly."""

PMADDWD_INTRIN = "cacc_avx2_pmaddwd_8x2"
PMADDUBSW_INTRIN = "cacc_avx2_pmaddubsw_8x4"
PMADDUBSW_T_INTRIN = "cacc_avx2_pmaddubsw_8x4_t"  # broadcast int8 weights x uint8 activation vectors
VPDPBUSD_INTRIN = "cacc_vnni_vpdpbusd_8x4"
VPDPBUSD_T_INTRIN = "cacc_vnni_vpdpbusd_8x4_t"
#: ``vpdpbusd`` on 256-bit vectors (AVX-VNNI, or AVX-512 VNNI + VL: LLVM picks the encoding)
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.256"
#: ``vpdpbusd`` on 512-bit vectors (AVX-512 VNNI): 16 int32 lanes
_VPDPBUSD_512 = "llvm.x86.avx512.vpdpbusd.512"
VPDPBUSD_512_INTRIN = "cacc_vnni_vpdpbusd_16x4"
#: PrimFunc attribute of a kernel planned for 16-lane (512-bit) vectors (absent: 8)
LANES_ATTR = "cacc.qgemm_lanes"
_LANES = 8  # int32 lanes of a 256-bit vector
_ROW_BLOCK_BYTES = 256 * 1024  # activation rows kept in L2 per row block


def _dot_desc(a_dtype: str, b_dtype: str, k: int) -> tirx.PrimFunc:
    """The description of an 8-lane dot-product step: ``C[i] += sum_k A[k] * B[i, k]`` in int32."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), a_dtype, offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((8, k), b_dtype, offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((8,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:k], B[0:8, 0:k])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for kk in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, kk])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _dot16_desc(a_dtype: str, b_dtype: str) -> tirx.PrimFunc:
    """The 16-lane byte step's description: ``C[h, l] += sum_k A[k] * B[8 h + l, k]`` (``C`` two 8-lane halves)."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), a_dtype, offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((16, 4), b_dtype, offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((2, 8), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:8], A[0:4], B[0:16, 0:4])
            T.writes(C[0:2, 0:8])
            for h, i, kk in T.grid(2, 8, 4):
                with T.sblock("update"):
                    vh, vi, vk = T.axis.remap("SSR", [h, i, kk])
                    C[vh, vi] = C[vh, vi] + T.cast(A[vk], "int32") * T.cast(B[vh * 8 + vi, vk], "int32")

    return desc


def _dot16_impl(a_dtype: str, b_dtype: str) -> tirx.PrimFunc:
    """One 512-bit ``vpdpbusd``: ``A`` (4 bytes, broadcast) against ``B`` (16 lanes x 4 bytes) into ``C``."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), a_dtype, offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((16, 4), b_dtype, offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((2, 8), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:8], A[0:4], B[0:16, 0:4])
            T.writes(C[0:2, 0:8])
            # C's two halves are contiguous (a compact 2 x 8 region of the accumulator): one 16-lane vector
            C[0, T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(_VPDPBUSD_512),
                C.vload([0, 0], dtype="int32x16"),
                T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], a_dtype + "x4"), dtype="int32"), 16), dtype=a_dtype + "x64"
                ),
                B.vload([0, 0], dtype=b_dtype + "x64"),
                dtype="int32x16",
            )

    return impl


@T.prim_func(s_tir=True)
def _pmaddwd_impl(
    A: T.Buffer((2,), "int16", offset_factor=1),  # type: ignore[valid-type]
    B: T.Buffer((8, 2), "int16", offset_factor=1),  # type: ignore[valid-type]
    C: T.Buffer((8,), "int32", offset_factor=1),  # type: ignore[valid-type]
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # no let-bound temporaries: each would become a per-tile workspace allocation
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16"),
            B.vload([0, 0], dtype="int16x16"),
            dtype="int32x8",
        )


def _byte_dot(acc: tirx.PrimExpr, a: tirx.PrimExpr, b: tirx.PrimExpr, a_unsigned: bool, vnni: bool) -> tirx.PrimExpr:
    """``acc`` plus the sums of four ``u8 x s8`` products per int32 lane of the 32-byte operands ``a`` and ``b``
    (``a_unsigned``: ``a`` is the uint8 one): one ``vpdpbusd``, or ``vpmaddubsw`` (pairs into saturating int16)
    then ``vpmaddwd`` by ones."""
    u8, s8 = (a, b) if a_unsigned else (b, a)
    if vnni:
        return tirx.call_llvm_pure_intrin("int32x8", _VPDPBUSD, acc, u8, s8)
    pairs = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", u8, s8)
    return acc + tirx.call_llvm_pure_intrin(
        "int32x8", "llvm.x86.avx2.pmadd.wd", pairs, tirx.Broadcast(tirx.const(1, "int16"), 16)
    )


def _byte_dot_impl(a_dtype: str, b_dtype: str, vnni: bool) -> tirx.PrimFunc:
    """The implementation of a byte kind's ``8 x 4`` step: ``A`` (4 bytes, broadcast to every lane) against ``B``
    (8 lanes x 4 bytes); whichever of the two is uint8 is the unsigned operand."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), a_dtype, offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((8, 4), b_dtype, offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((8,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = _byte_dot(
                C.vload([0], dtype="int32x8"),
                T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], a_dtype + "x4"), dtype="int32"), 8), dtype=a_dtype + "x32"
                ),
                B.vload([0, 0], dtype=b_dtype + "x32"),
                a_dtype == "uint8",
                vnni,
            )

    return impl


_registered = False

#: Per kind: (A dtype, packed W dtype, k per int32 lane, AVX2 intrinsic).
_KINDS = {
    "s16": ("int16", "int16", 2, PMADDWD_INTRIN),
    "u8s8": ("uint8", "int8", 4, PMADDUBSW_INTRIN),
    "s8u8": ("int8", "uint8", 4, PMADDUBSW_T_INTRIN),
}
#: The ``vpdpbusd`` intrinsic of the byte kinds on VNNI targets.
_VNNI_INTRINS = {"u8s8": VPDPBUSD_INTRIN, "s8u8": VPDPBUSD_T_INTRIN}


def register_intrinsics() -> None:
    """Register the AVX2 ``vpmaddwd`` / ``vpmaddubsw`` and the VNNI ``vpdpbusd`` tensor intrinsics (once; TVM's
    own x86 set is never imported)."""
    global _registered
    if _registered:
        return
    for kind, (a_dtype, b_dtype, k, name) in _KINDS.items():
        impl = _pmaddwd_impl if kind == "s16" else _byte_dot_impl(a_dtype, b_dtype, vnni=False)
        s_tir.TensorIntrin.register(name, _dot_desc(a_dtype, b_dtype, k), impl, override=True)
    for kind, name in _VNNI_INTRINS.items():
        a_dtype, b_dtype, k, _ = _KINDS[kind]
        impl = _byte_dot_impl(a_dtype, b_dtype, vnni=True)
        s_tir.TensorIntrin.register(name, _dot_desc(a_dtype, b_dtype, k), impl, override=True)
    a_dtype, b_dtype, _k, _ = _KINDS["u8s8"]
    s_tir.TensorIntrin.register(
        VPDPBUSD_512_INTRIN, _dot16_desc(a_dtype, b_dtype), _dot16_impl(a_dtype, b_dtype), override=True
    )
    _registered = True


def has_avx2(target: Target) -> bool:
    """Whether ``target`` is an LLVM x86 target with AVX2."""
    return has_feature(target, "avx2")


def has_vnni(target: Target) -> bool:
    """Whether ``target`` is an LLVM x86 target with 256-bit ``vpdpbusd`` (AVX-VNNI, or AVX-512 VNNI and VL)."""
    return has_avx2(target) and (
        has_feature(target, "avxvnni") or (has_feature(target, "avx512vnni") and has_feature(target, "avx512vl"))
    )


#: CPUs (LLVM names) whose integer GEMMs take 512-bit ``vpdpbusd`` (16 int32 lanes). On a 2-core VM that LLVM calls
#: ``znver4`` both widths peak at the same ~465 GOP/s a core (``tools/cpu_peak.py``), but a 16-lane kernel needs half
#: the activation broadcasts and instructions per product, and it measured faster (so the 8-lane kernel is not
#: bound by its dot products): MiniLM int8 ran 6.11 -> 5.76 ms (session 18), 0.85-0.91x the 8-lane time in session
#: 19 (bit-identical). The Intel Xeon of sessions 10-17 (``rocketlake``) ran EfficientNet 0.15-0.2 ms slower with
#: it, so other CPUs keep 256-bit vectors.
WIDE_VNNI_CPUS = ("znver4", "znver5")


def kernel_lanes(kind: str) -> int:
    """The int32 lanes of a ``kind`` matmul kernel's vectors on the target being emitted for: 16 (512-bit
    ``vpdpbusd``) for ``u8s8`` on AVX-512 VNNI CPUs in :data:`WIDE_VNNI_CPUS`, else 8."""
    target = emit_target()
    mcpu = str(target.attrs.get("mcpu", "") or "")
    wide = kind == "u8s8" and has_vnni(target) and has_feature(target, "avx512vnni") and mcpu in WIDE_VNNI_CPUS
    return 2 * _LANES if wide else _LANES


@dataclass(frozen=True)
class QGemmPlan:
    """Shapes, register tile and operand kind of one integer GEMM ``[M, K] @ [K, N]``.

    ``kind`` is ``"s16"`` (int16 operands, 2 ``k`` per int32 lane), ``"s8u8"`` (``u8s8`` with the
    operands swapped: int8 weight rows broadcast, uint8 activations packed) or ``"u8s8"`` (uint8
    activations x int8 weights, 4 ``k`` per lane; exact only for weights whose ``k`` pairs
    cannot saturate ``vpmaddubsw``'s int16 sums, see :func:`u8s8_pairing`).
    """

    m: int
    k: int
    n: int
    mr: int
    nb: int
    kind: str = "s16"
    lanes: int = _LANES  #: int32 lanes of a vector: 8, or 16 (``u8s8`` on 512-bit ``vpdpbusd``)

    @property
    def group(self) -> int:
        """``k`` values per int32 lane."""
        return _KINDS[self.kind][2]

    @property
    def per_row(self) -> bool:
        """Whether the per-channel parameters (scale, zero-point correction, bias) index rows (``s8u8``)."""
        return self.kind == "s8u8"

    @property
    def mp(self) -> int:
        """M padded to the row tile."""
        return ceil_to(self.m, self.mr)

    @property
    def kp(self) -> int:
        """K padded to whole lanes."""
        return ceil_to(self.k, self.group)

    @property
    def np_(self) -> int:
        """N padded to the column tile."""
        return ceil_to(self.n, self.nb)


def plan_qgemm(m: int, k: int, n: int, kind: str = "s16", lanes: int = _LANES) -> QGemmPlan:
    """The register tile, least padding first (ties: more rows, which reuse each weight load more), of column
    vectors of ``lanes`` int32 lanes (see :func:`kernel_lanes`).

    Up to 6 rows x 2 column vectors (12 int32 accumulators; with the 2 weight vectors, the
    broadcast activation and the product LLVM spills only the constant ``vpmaddwd`` ones), or 3
    rows x 3 vectors for narrow matrices.
    """
    best: tuple[float, int, int] | None = None
    for vecs in (2, 3, 1):
        for mr in range(3 if vecs == 3 else 6, 0, -1):
            padded = ceil_to(m, mr) * ceil_to(n, vecs * lanes) / (m * n)
            cost = padded**2 * (1.0 + 0.3 / mr + 0.25 / vecs)  # padding also costs a copy; thin tiles: loads
            if best is None or cost < best[0] - 1e-9:
                best = (cost, mr, vecs * lanes)
    if best is None:  # pragma: no cover - the loops always run
        raise ValueError("no register tile")
    return QGemmPlan(m, k, n, best[1], best[2], kind, lanes)


def pack_qweight(w: np.ndarray, plan: QGemmPlan) -> np.ndarray:
    """Integer ``[K, N]`` -> ``[Np/nb, Kp/g, nb, g]`` (int16 for ``s16``, int8 for ``u8s8``; zero padded)."""
    k, n = w.shape
    g = plan.group
    padded = np.zeros((plan.kp, plan.np_), _KINDS[plan.kind][1])
    padded[:k, :n] = w
    # [Kp/g, g, Np/nb, nb] -> [Np/nb, Kp/g, nb, g]
    return np.ascontiguousarray(padded.reshape(plan.kp // g, g, -1, plan.nb).transpose(2, 0, 3, 1))


#: ``vpmaddubsw`` sums two u8 x s8 products into a saturating int16: with activations in [0, 255]
#: a pair of weights is exact when its positive parts and its negative parts each sum to at most 128.
_PAIR_LIMIT = 32767 // 255


def _pair_ok(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pos = np.maximum(a, 0) + np.maximum(b, 0)
    neg = np.maximum(-a, 0) + np.maximum(-b, 0)
    return (pos <= _PAIR_LIMIT) & (neg <= _PAIR_LIMIT)


def u8s8_pairing(w: np.ndarray) -> np.ndarray | None:
    """A row order of the int8 weight ``[K, N]`` (padded to a multiple of 4 with zero rows, index >= K)
    in which every adjacent ``k`` pair is exact under ``vpmaddubsw``, or ``None`` when none is found.

    Greedy matching: the rows with the most large entries are paired first, each with the first
    remaining row compatible in every column (small rows pair with anything).
    """
    if w.ndim != 2 or w.size == 0 or w.min() < -128 or w.max() > 127:
        return None
    k = w.shape[0]
    kp = ceil_to(k, 4)
    wi = np.zeros((kp, w.shape[1]), np.int32)
    wi[:k] = w
    if bool(np.all(_pair_ok(wi[0::2], wi[1::2]))):
        return np.arange(kp)
    big = (np.abs(wi) > _PAIR_LIMIT // 2).sum(axis=1)
    order = list(np.argsort(-big, kind="stable"))
    free = set(range(kp))
    light = sorted(range(kp), key=lambda r: int(big[r]))
    pairs: list[int] = []
    for r in order:
        if r not in free:
            continue
        free.discard(r)
        mate = next((c for c in light if c in free and bool(np.all(_pair_ok(wi[r], wi[c])))), None)
        if mate is None:
            return None
        free.discard(mate)
        pairs += [int(r), int(mate)]
    return np.asarray(pairs, np.int64)


def u8s8_order(w: np.ndarray) -> np.ndarray | None:
    """The row order of the int8 weight ``[K, N]`` the ``u8s8`` / ``s8u8`` kernels take on the target being
    emitted for: any order (the identity, padded to a multiple of 4) where ``vpdpbusd`` computes them (VNNI:
    int32 sums, exact for every weight), else :func:`u8s8_pairing`."""
    if w.ndim == 2 and w.size and has_vnni(emit_target()) and w.min() >= -128 and w.max() <= 127:
        return np.arange(ceil_to(w.shape[0], 4))
    return u8s8_pairing(w)


def qgemm_func(
    plan: QGemmPlan,
    *,
    zero_point: str = "",
    row_scale: bool = False,
    bias: bool = False,
    activation: str = "",
    activation_params: Sequence[float] = (),
    out_block: int = 0,
) -> tirx.PrimFunc:
    """PrimFunc ``(A[Mp, Kp], W packed, scale[N] f32[, zp...][, row_scale[Mp]][, bias[N]], out[M, N] f32)``.

    ``out_block`` (``u8s8`` or ``s16``, ``N`` a multiple of it) writes ``out`` column-blocked as ``[N/b, M, b]``: the
    channel-blocked output of a pointwise conv whose ``M`` rows are pixels (``backends.tvm.lowering.blocked``).

    ``A`` is int16 (``s16``: already centred) or uint8 (``u8s8``). ``zero_point`` corrects the
    uint8 activation's zero point with the weight column sums: ``"col"`` adds ``corr[N]`` int32
    (``-zp_x * colsum``), ``"row"`` subtracts ``row_zp[Mp] * colsum[N]`` (both int32).

    ``s8u8`` (a pointwise conv ``W[Co, Ci] @ X[Ci, HW]``): ``A`` is the constant int8 weight, ``W``
    the packed uint8 activations, and ``scale`` / ``corr`` / ``bias`` index rows (``[M]``).
    """
    p = plan
    mr, nb, g, lanes = p.mr, p.nb, p.group, p.lanes
    a_dtype, w_dtype = _KINDS[p.kind][:2]
    a = te.placeholder((p.mp, p.kp), a_dtype, name="A")
    w = te.placeholder((p.np_ // nb, p.kp // g, nb, g), w_dtype, name="W")
    channels = p.m if p.per_row else p.n
    rko = te.reduce_axis((0, p.kp // g), name="ko")
    rki = te.reduce_axis((0, g), name="ki")
    # columns as (panel, vector, lane): an output written channel-blocked then reads single-variable indices; a
    # 16-lane vector as (2 halves, 8 lanes), so that the epilogue's reads stay single-variable indices too (which
    # computing it per register tile needs; ``h * 8 + l`` is not one)
    halves = [lanes // _LANES] if lanes != _LANES else []
    acc = te.compute(
        (p.mp // mr, mr, p.np_ // nb, nb // lanes, *halves, _LANES),
        lambda io, ii, jo, jv, *jl: te.sum(
            a[io * mr + ii, rko * g + rki].astype("int32")
            * w[jo, rko, jv * lanes + (jl[0] * _LANES + jl[1] if halves else jl[0]), rki].astype("int32"),
            axis=[rko, rki],
        ),
        name="acc",
    )
    scale = te.placeholder((channels,), "float32", name="scale")
    args = [a, w, scale]
    corr = colsum = row_zp = None
    if zero_point == "col":
        corr = te.placeholder((channels,), "int32", name="corr")
        args.append(corr)
    elif zero_point == "row":
        row_zp = te.placeholder((p.mp,), "int32", name="row_zp")
        colsum = te.placeholder((p.n,), "int32", name="colsum")
        args += [row_zp, colsum]
    rs = te.placeholder((p.mp,), "float32", name="row_scale") if row_scale else None
    if rs is not None:
        args.append(rs)
    bias_t = te.placeholder((channels,), "float32", name="bias") if bias else None
    if bias_t is not None:
        args.append(bias_t)

    def epi(i: tirx.Var, j: tirx.PrimExpr, col: tuple[tirx.PrimExpr, ...] | None = None) -> tirx.PrimExpr:
        """The output at row ``i``, column ``j`` (``col``: its (panel, vector, lane) when known)."""
        jo, jv, jh, jl = col if col is not None else (j // nb, (j % nb) // lanes, j % lanes // _LANES, j % _LANES)
        total = acc(i // mr, i % mr, jo, jv, *([jh] if halves else []), jl)
        c = i if p.per_row else j
        if corr is not None:
            total = total + corr[c]
        if row_zp is not None and colsum is not None:
            total = total - row_zp[i] * colsum[j]
        v = total.astype("float32") * scale[c]
        if rs is not None:
            v = v * rs[i]
        if bias_t is not None:
            v = v + bias_t[c]
        return activation_expr(v, activation, activation_params)

    if out_block:
        if out_block != _LANES:
            raise ValueError(f"out_block must be {_LANES}, got {out_block}")
        if lanes != out_block:
            raise ValueError(f"a blocked output needs 8-lane vectors, got a {lanes}-lane plan")
        vecs = nb // lanes

        def blocked(cb: tirx.Var, i: tirx.Var, ln: tirx.Var) -> tirx.PrimExpr:
            return epi(i, cb * lanes + ln, (cb // vecs, cb % vecs, 0, ln))

        out = te.compute((p.n // out_block, p.m, out_block), blocked, name="out")
    else:
        out = te.compute((p.m, p.n), lambda i, j: epi(i, j), name="out")
    func = te.create_prim_func([*args, out]).with_attr(QKERNEL_ATTR, p.kind).with_attr("op_pattern", 8)
    if p.lanes != _LANES:
        func = func.with_attr(LANES_ATTR, p.lanes)
    if p.kind in _VNNI_INTRINS and has_vnni(emit_target()):  # its weight order may rely on vpdpbusd
        func = func.with_attr(NEEDS_VNNI_ATTR, True)
    return func


def row_block_tiles(tiles: int, panels: int, limit: int, target: Target) -> int:
    """Row tiles per row block: whole blocks (no predicate) of at most ``limit`` tiles (L2), and, where
    fewer tiles per block spread ``blocks x panels`` parallel iterations evenly over the target's cores
    (5 column panels on 2 cores run as 3 + 2: 1.2x the balanced time), the largest such block."""
    cores = target_cores(target) or 1
    fits = [d for d in range(1, tiles + 1) if tiles % d == 0 and d <= max(1, limit)]
    per = max(fits)
    for d in sorted(fits, reverse=True):
        work = tiles // d * panels
        if -(-work // cores) * cores <= 1.05 * work:
            return d
    return per


def schedule_qgemm(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule:
    """Register-tiled schedule; the ``8 x g`` inner step tensorized on AVX2 targets.

    Loop nest: ``(row block, column panel)`` fused and parallel -> row tiles -> ``k`` groups ->
    rows (unrolled) -> column vectors (unrolled) -> 8 lanes x g k (``vpmaddwd``, or ``vpmaddubsw``
    + ``vpmaddwd``, or ``vpdpbusd``; 16 lanes, one 512-bit ``vpdpbusd``, for a kernel planned with 16-lane vectors,
    see :func:`kernel_lanes`); the epilogue runs per tile. A row block's activations (``_ROW_BLOCK_BYTES``)
    stay in L2 while every column panel (``Kp x nb`` weights, L1) streams them; the accumulator
    tile is allocated once per panel.
    """
    kind = str(func.attrs[QKERNEL_ATTR])
    if kind not in _KINDS:  # the integer convs' quantize-and-pack prologues, or a flat quantize
        from backends.tvm.schedules.qconv import OPERAND_KIND, schedule_blocked_operand, schedule_quant_pack
        from backends.tvm.schedules.quantize import QUANTIZE_KIND, schedule_quantize

        if kind == OPERAND_KIND:
            return schedule_blocked_operand(func)
        return schedule_quantize(func) if kind == QUANTIZE_KIND else schedule_quant_pack(func)
    vnni = kind in _VNNI_INTRINS and has_vnni(target)
    if has_avx2(target) and not vnni and func.attrs.get(NEEDS_VNNI_ATTR, False):
        # vpmaddubsw would saturate on the weight pairs the kernel was emitted with (the plain loop is exact)
        raise BackendError(
            f"the integer kernel was emitted for a CPU with VNNI, but target {target} has none: emit the model "
            "under the target it is built for"
        )
    wide = int(func.attrs.get(LANES_ATTR, _LANES)) == 16
    if wide and not (vnni and kind == "u8s8" and has_feature(target, "avx512vnni")):
        raise BackendError(f"the 16-lane integer kernel needs AVX-512 VNNI, which target {target} lacks")
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    if wide:  # the 16 lanes are two loops (2 x 8), tensorized together
        io, ii, jo, jv, jl, jl8, ko, ki = sch.get_loops(acc)
        nb = int(sch.get(jv).extent) * 16
    else:
        io, ii, jo, jv, jl, ko, ki = sch.get_loops(acc)
        jl8 = None
        nb = int(sch.get(jv).extent) * int(sch.get(jl).extent)
    tiles, mr = int(sch.get(io).extent), int(sch.get(ii).extent)
    row_bytes = int(sch.get(ko).extent) * int(sch.get(ki).extent) * (2 if kind == "s16" else 1)
    per = row_block_tiles(tiles, int(sch.get(jo).extent), _ROW_BLOCK_BYTES // max(1, row_bytes * mr), target)
    ib, it = sch.split(io, factors=[None, per])
    sch.reorder(ib, jo, it, ko, ii, jv, jl, *([jl8] if jl8 is not None else []), ki)
    sch.parallel(sch.fuse(ib, jo))
    tile = it
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    o_inner = sch.get_loops(out)[-1]
    if nb % _LANES == 0:
        _oo, oi = sch.split(o_inner, factors=[None, _LANES])
        sch.vectorize(oi)
    sch.unroll(ii)
    sch.unroll(jv)
    if has_avx2(target):
        register_intrinsics()
        init = sch.decompose_reduction(acc, ko)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(jl, VPDPBUSD_512_INTRIN if wide else _VNNI_INTRINS[kind] if vnni else _KINDS[kind][3])
        # keep the accumulator tile in registers (set after tensorizing: the intrinsic's buffers are global)
        sch.set_scope(init, 0, "local")
    else:  # LLVM vectorises the 8 columns (the k group unrolled outside them)
        sch.set_scope(acc, 0, "local")
        sch.reorder(ki, jl)
        sch.unroll(ki)
        sch.vectorize(jl)
        sch.decompose_reduction(acc, ko)
    return sch


__all__ = [
    "PMADDUBSW_INTRIN",
    "PMADDUBSW_T_INTRIN",
    "PMADDWD_INTRIN",
    "QKERNEL_ATTR",
    "VPDPBUSD_INTRIN",
    "VPDPBUSD_T_INTRIN",
    "QGemmPlan",
    "has_avx2",
    "has_vnni",
    "pack_qweight",
    "plan_qgemm",
    "qgemm_func",
    "register_intrinsics",
    "schedule_qgemm",
    "tvm",
    "u8s8_order",
    "u8s8_pairing",
]
