"""A depthwise conv fused with the 1x1 projection conv that reads it, one output row at a time.

In an inverted-residual block the depthwise conv's output is read only by the 1x1 projection. The projection
of an output row needs that row's depthwise values of every channel and nothing else, so each parallel task
(a band of output rows) computes one depthwise row of all ``C`` channels into a small buffer
(``[C/b, OW, b]``, in L1 / L2) and projects it at once: the depthwise map is never written to memory. No value
is computed twice.

Written directly in TIR like :mod:`backends.tvm.schedules.expand_depthwise`: the depthwise tile is ``mr_d``
pixels x one ``b``-channel block (taps read the blocked input with bounds-checked, "likely" in-bounds loads:
the padding is never copied), the projection tile ``mr_p`` pixels x all ``Co`` output channels in vectors of
``V`` lanes, written channel-blocked ``[1, Co/b, OH, OW, b]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from backends.tvm.schedules.conv import PairGeometry, pair_geometry
from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.expand_depthwise import DEPTHWISE_WIDTH
from backends.tvm.schedules.tiling import TileConfig, ceil_to, fits_registers

#: Accumulator registers of the default projection tile (``mr_p`` pixels x the output channels' vectors).
PROJECT_ACCUMULATORS = 12
#: Row bands (parallel tasks) per thread.
BANDS_PER_THREAD = 2
#: Fuse only when the depthwise output (fp32) is larger than this: smaller maps stay in L2 between the two
#: separate kernels. EfficientNet-Lite0's first depthwise conv (112 x 112 x 32 out, 1.6 MB; its other large
#: ones are fused with their expansion) and projection: 101-108 us fused, 141-166 as two kernels inside the int8
#: model; the model 2.76-2.82 ms against 2.81-2.90 (2-core Xeon, 2 threads, alternating rounds).
MIN_DEPTHWISE_BYTES = 1 << 20


@dataclass(frozen=True)
class DepthwiseProjectPlan(PairGeometry):
    """Shapes and tiles of one fused depthwise conv (``c`` channels) + projection (to ``co`` channels)."""

    co: int
    lanes: int  #: vector lanes of the projection tile
    mr_p: int
    bands: int
    mr_d: int = DEPTHWISE_WIDTH


def fusable(c: int, co: int, oh: int, ow: int, dilation: Sequence[int], block: int) -> bool:
    """Whether a depthwise conv of ``c`` channels with an ``oh x ow`` output, projected to ``co`` channels, is
    worth fusing: whole channel blocks, no dilation, a depthwise output larger than :data:`MIN_DEPTHWISE_BYTES`."""
    return (
        c % block == 0
        and co % block == 0
        and all(int(d) == 1 for d in dilation)
        and c * oh * ow * 4 > MIN_DEPTHWISE_BYTES
    )


def plan_candidates(
    c: int,
    h: int,
    w: int,
    co: int,
    kh: int,
    kw: int,
    stride: Sequence[int],
    pad: Sequence[int],
    block: int,
    cfg: TileConfig,
    threads: int,
) -> list[DepthwiseProjectPlan]:
    """Plans worth trying, the default first: projection tiles of about :data:`PROJECT_ACCUMULATORS`
    accumulators and a few others that fit the registers, each with 1, 2 or 4 row bands per thread; none when
    not even one pixel of all ``co`` output channels fits."""
    lanes = cfg.lanes if co % cfg.lanes == 0 else block
    vecs = co // lanes
    geometry = pair_geometry(c, h, w, kh, kw, stride, pad, block)
    ow = PairGeometry(**geometry).ow
    fit = [m for m in (14, 12, 8, 7, 6, 4, 3, 2, 1) if fits_registers(m, vecs, cfg) and m <= ow]
    if not fit:  # the output channels' vectors alone would spill the registers
        return []
    first = max((m for m in fit if m * vecs <= PROJECT_ACCUMULATORS), default=fit[-1])
    widths = [first, *[m for m in fit if m != first and m * vecs <= 2 * PROJECT_ACCUMULATORS][:2]]
    return [
        DepthwiseProjectPlan(**geometry, co=co, lanes=lanes, mr_p=m, bands=max(threads, 1) * per_thread)
        for per_thread in (BANDS_PER_THREAD, 1, 2 * BANDS_PER_THREAD)
        for m in widths
    ]


def pack_depthwise_weight(w: np.ndarray, p: DepthwiseProjectPlan) -> np.ndarray:
    """``[C, 1, KH, KW]`` -> ``[C/b, KH, KW, b]``."""
    b = p.block
    return np.ascontiguousarray(w.reshape(p.c // b, b, p.kh, p.kw).transpose(0, 2, 3, 1))


def pack_project_weight(w: np.ndarray, p: DepthwiseProjectPlan) -> np.ndarray:
    """``[Co, C, 1, 1]`` -> ``[C, Co]``."""
    return np.ascontiguousarray(w.reshape(p.co, p.c).T)


def pack_bias(bias: np.ndarray | None, channels: int, p: DepthwiseProjectPlan) -> np.ndarray:
    """A per-channel bias (zeros when absent) as ``[channels / b, b]``."""
    b = np.zeros(channels, np.float32) if bias is None else bias.astype(np.float32)
    return np.ascontiguousarray(b.reshape(channels // p.block, p.block))


def output_shape(p: DepthwiseProjectPlan) -> list[int]:
    """The blocked output ``[1, Co / b, OH, OW, b]``."""
    return [1, p.co // p.block, p.oh, p.ow, p.block]


def depthwise_project_func(
    p: DepthwiseProjectPlan,
    depthwise_activation: tuple[str, Sequence[float]] = ("", ()),
    project_activation: tuple[str, Sequence[float]] = ("", ()),
) -> tirx.PrimFunc:
    """PrimFunc ``(X, Wd, Bd, Wp, Bp, out)``: ``out = act2(conv1x1(act1(dwconv(X, Wd) + Bd), Wp) + Bp)``.

    ``X`` is ``[1, C/b, H, W, b]``, the weights and biases packed by :func:`pack_depthwise_weight`,
    :func:`pack_project_weight` and :func:`pack_bias`; the function is already scheduled.
    """
    b, lanes, mr_d, mr_p = p.block, p.lanes, p.mr_d, p.mr_p
    c, h, w, co, kh, kw = p.c, p.h, p.w, p.co, p.kh, p.kw
    (sh, sw), (pt, pl, _pb, _pr) = p.stride, p.pad
    oh, ow = p.oh, p.ow
    owd = ceil_to(ow, mr_d)  # the depthwise row buffer, in whole depthwise tiles
    owt = -(-ow // mr_p)
    rows = -(-oh // p.bands)  # output rows per band
    nv = co // lanes
    zero = tirx.const(0.0, "float32")

    def act1(v: tirx.PrimExpr) -> tirx.PrimExpr:
        return activation_expr(v, *depthwise_activation)

    def act2(v: tirx.PrimExpr) -> tirx.PrimExpr:
        return activation_expr(v, *project_activation)

    # fmt: off
    @T.prim_func(check_well_formed=False)
    def func(
        X: T.Buffer((1, c // b, h, w, b), "float32"),  # type: ignore[valid-type]
        Wd: T.Buffer((c // b, kh, kw, b), "float32"),  # type: ignore[valid-type]
        Bd: T.Buffer((c // b, b), "float32"),  # type: ignore[valid-type]
        Wp: T.Buffer((c, co), "float32"),  # type: ignore[valid-type]
        Bp: T.Buffer((co // b, b), "float32"),  # type: ignore[valid-type]
        out: T.Buffer((1, co // b, oh, ow, b), "float32"),  # type: ignore[valid-type]
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        for band in T.parallel(p.bands):
            row = T.decl_buffer((c // b, owd, b), "float32")
            dacc = T.decl_buffer((mr_d, b), "float32")
            pacc = T.decl_buffer((mr_p, co), "float32")
            for oyi in range(T.max(T.min(rows, oh - band * rows), 0)):
                oy = band * rows + oyi
                for cb in range(c // b):
                    for xt in range(owd // mr_d):
                        for xi in T.unroll(mr_d):
                            for ln in T.vectorized(b):
                                dacc[xi, ln] = zero
                        for ky in range(kh):
                            for kx in range(kw):
                                for xi in T.unroll(mr_d):
                                    for ln in T.vectorized(b):
                                        dacc[xi, ln] = dacc[xi, ln] + T.if_then_else(
                                            T.likely(
                                                oy * sh + ky >= pt and oy * sh + ky < pt + h
                                                and (xt * mr_d + xi) * sw + kx >= pl
                                                and (xt * mr_d + xi) * sw + kx < pl + w
                                            ),
                                            X[0, cb, oy * sh + ky - pt, (xt * mr_d + xi) * sw + kx - pl, ln],
                                            zero,
                                        ) * Wd[cb, ky, kx, ln]
                        for xi in T.unroll(mr_d):
                            for ln in T.vectorized(b):
                                row[cb, xt * mr_d + xi, ln] = act1(dacc[xi, ln] + Bd[cb, ln])
                for xt in range(owt):
                    x0 = T.min(xt * mr_p, ow - mr_p)  # the last tile overlaps the one before: affine reads
                    for xi in T.unroll(mr_p):
                        for v in T.unroll(nv):
                            for ln in T.vectorized(lanes):
                                pacc[xi, v * lanes + ln] = zero
                    for rco in range(c // b):
                        for rci in range(b):
                            for xi in T.unroll(mr_p):
                                for v in T.unroll(nv):
                                    for ln in T.vectorized(lanes):
                                        pacc[xi, v * lanes + ln] = pacc[xi, v * lanes + ln] + row[
                                            rco, x0 + xi, rci
                                        ] * Wp[rco * b + rci, v * lanes + ln]
                    for xi in T.unroll(mr_p):
                        for blk in range(co // b):
                            for ln in T.vectorized(b):
                                out[0, blk, oy, x0 + xi, ln] = act2(pacc[xi, blk * b + ln] + Bp[blk, ln])
    # fmt: on
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)
