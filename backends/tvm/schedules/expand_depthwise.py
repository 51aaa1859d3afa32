"""A 1x1 expansion conv fused with the depthwise conv that reads it, over a rolling buffer of rows.

An inverted-residual block (MobileNetV2, EfficientNet) expands ``C`` channels to ``Ce`` with a 1x1 conv and
runs a ``KH x KW`` depthwise conv on the result. On early, large maps the expanded map does not fit the L2
cache (EfficientNet-Lite0's 112 x 112 x 96 and 56 x 56 x 144 fp32 maps, 4.8 and 1.8 MB): the two separate
kernels write it to memory and read it back. Here each parallel task owns ``G`` channel blocks and a band of
output rows and keeps only the last ``KH`` expanded rows, in a ring indexed by ``row % KH``: for each output row
it computes the ``stride`` rows it has not computed yet (all ``KH`` for its first row), then the depthwise row
from the ring.
Every expanded row is computed once per task (bands recompute ``KH - stride`` rows each).

The kernel is written directly in TIR (a rolling buffer whose row loop has a data-dependent extent is not
something TE + schedule primitives express): register tiles are ``mr_e`` pixels x the group's ``G b``
channels for the expansion and ``mr_d`` pixels x ``G b`` for the depthwise conv, vectorised in registers of
``V`` lanes. Input and output are channel-blocked ``[N, C/b, H, W, b]`` (:mod:`backends.tvm.schedules.nchwc`).
The ring holds padded rows: its padding columns are zeroed once per task and padding rows when they enter, so the
expansion reads only inside its input, at affine addresses (its last tile of a row overlaps the one before
instead of running past the row's end; clamped addresses had cost 15-25% of the kernel's time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from backends.tvm.schedules.conv import PairGeometry, pair_geometry
from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.tiling import TileConfig, ceil_to, fits_registers

#: The default expansion tile: the widest of :data:`EXPAND_WIDTHS` up to 8 pixels with at most this many
#: accumulator registers (``mr_e`` pixels x the group's vectors). Measured on a 2-core Xeon (AVX-512) over
#: EfficientNet-Lite0's expansions on 112 x 112 and 56 x 56 maps: 8 pixels of one vector (16-channel groups),
#: 6 of two (32-channel groups) were at or within noise of the best.
EXPAND_ACCUMULATORS = 12
#: Expansion tile widths (pixels) worth trying.
EXPAND_WIDTHS = (12, 8, 6, 4, 3, 2)
#: Depthwise tile width (output pixels): the separate depthwise kernel's measured default.
DEPTHWISE_WIDTH = 7
#: Row bands per channel group (parallel tasks = groups x bands); each band recomputes ``KH - stride`` rows.
BANDS = 2
#: Fuse only when the expanded fp32 map is larger than this. Measured inside EfficientNet-Lite0's int8 model
#: (2-core Xeon, 2 MB L2 a core, 2 threads, 10 alternating rounds): fusing its 112 x 112 x 96 and 56 x 56 x 144
#: maps (4.8 and 1.8 MB) ran 2.88-2.91 ms against 3.06-3.07 unfused; fusing the 28 x 28 x 240 ones (750 KB,
#: they stay in L2 between the two kernels) as well, 3.41.
MIN_EXPANDED_BYTES = 1 << 20


@dataclass(frozen=True)
class ExpandDepthwisePlan(PairGeometry):
    """Shapes and tiles of one fused expansion (``c`` -> ``ce`` channels) + depthwise conv."""

    ce: int
    lanes: int  #: vector lanes ``V``
    group: int  #: channel blocks per task (``G``)
    mr_e: int
    mr_d: int = DEPTHWISE_WIDTH
    bands: int = BANDS

    @property
    def group_channels(self) -> int:
        """Channels per task (``G b``)."""
        return self.group * self.block

    @property
    def ring_width(self) -> int:
        """Columns of the ring: the padded input columns, and all the depthwise tiles read."""
        tiles = ceil_to(self.ow, self.mr_d)
        return max((tiles - 1) * self.stride[1] + self.kw, self.pad[1] + self.w)


def fusable(
    c: int, ce: int, h: int, w: int, kh: int, stride: Sequence[int], dilation: Sequence[int], block: int
) -> bool:
    """Whether an expansion ``C -> Ce`` on an ``h x w`` map followed by a ``kh``-row depthwise conv is worth
    fusing: whole channel blocks, no dilation, a stride no larger than the kernel, and an expanded map larger
    than :data:`MIN_EXPANDED_BYTES`."""
    return (
        c % block == 0
        and ce % block == 0
        and all(int(d) == 1 for d in dilation)
        and all(0 < int(s) <= kh for s in stride)
        and ce * h * w * 4 > MIN_EXPANDED_BYTES
    )


def group_choices(ce: int, block: int, lanes: int) -> list[int]:
    """Channel blocks per task whose channels fill whole vectors: 2 vectors, 1, then 3."""
    blocks = ce // block
    per_vec = max(lanes // block, 1)
    out = [g * per_vec for g in (2, 1, 3) if blocks % (g * per_vec) == 0]
    return out or [1]


def plan_candidates(
    c: int,
    h: int,
    w: int,
    ce: int,
    kh: int,
    kw: int,
    stride: Sequence[int],
    pad: Sequence[int],
    block: int,
    cfg: TileConfig,
) -> list[ExpandDepthwisePlan]:
    """Plans worth trying, the default first: per channel group size, the :data:`EXPAND_WIDTHS` whose tile
    fits the registers (its accumulators, a row of weight vectors and a broadcast), with 2 or 4 row bands."""
    lanes = cfg.lanes if cfg.lanes % block == 0 or block % cfg.lanes == 0 else block
    out: list[ExpandDepthwisePlan] = []
    for g in group_choices(ce, block, lanes):
        vecs = max(g * block // lanes, 1)
        fit = [m for m in EXPAND_WIDTHS if fits_registers(m, vecs, cfg) and m <= w] or [1]
        first = max((m for m in fit if m * vecs <= EXPAND_ACCUMULATORS and m <= 8), default=fit[-1])
        widths = [first, *[m for m in fit if m != first][:2]]
        for bands in (BANDS, 2 * BANDS):
            for m in widths:
                out.append(
                    ExpandDepthwisePlan(
                        **pair_geometry(c, h, w, kh, kw, stride, pad, block),
                        ce=ce, lanes=min(lanes, g * block), group=g, mr_e=m, bands=bands,
                    )
                )  # fmt: skip
    # default: the first group size with its first width and BANDS bands
    return out


def pack_expand_weight(w: np.ndarray, p: ExpandDepthwisePlan) -> np.ndarray:
    """``[Ce, C, 1, 1]`` -> ``[Ce / (G b), C / b, b, G b]``."""
    gc, b = p.group_channels, p.block
    return np.ascontiguousarray(w.reshape(p.ce // gc, gc, p.c // b, b).transpose(0, 2, 3, 1))


def pack_depthwise_weight(w: np.ndarray, p: ExpandDepthwisePlan) -> np.ndarray:
    """``[Ce, 1, KH, KW]`` -> ``[Ce / (G b), KH, KW, G b]``."""
    gc = p.group_channels
    return np.ascontiguousarray(w.reshape(p.ce // gc, gc, p.kh, p.kw).transpose(0, 2, 3, 1))


def pack_group_bias(bias: np.ndarray | None, p: ExpandDepthwisePlan) -> np.ndarray:
    """A per-channel bias (zeros when absent) as ``[Ce / (G b), G b]``."""
    b = np.zeros(p.ce, np.float32) if bias is None else bias.astype(np.float32)
    return np.ascontiguousarray(b.reshape(p.ce // p.group_channels, p.group_channels))


def output_shape(p: ExpandDepthwisePlan) -> list[int]:
    """The blocked output ``[1, Ce / b, OH, OW, b]``."""
    return [1, p.ce // p.block, p.oh, p.ow, p.block]


def expand_depthwise_func(
    p: ExpandDepthwisePlan,
    expand_activation: tuple[str, Sequence[float]] = ("", ()),
    depthwise_activation: tuple[str, Sequence[float]] = ("", ()),
) -> tirx.PrimFunc:
    """PrimFunc ``(X, W1, B1, W2, B2, out)``: ``out = act2(dwconv(pad(act1(conv1x1(X, W1) + B1)), W2) + B2)``.

    ``X`` is ``[1, C/b, H, W, b]``, the weights and biases packed by :func:`pack_expand_weight`,
    :func:`pack_depthwise_weight` and :func:`pack_group_bias`; the function is already scheduled.
    """
    b, lanes, gc, mr_e, mr_d = p.block, p.lanes, p.group_channels, p.mr_e, p.mr_d
    h, w, kh, kw = p.h, p.w, p.kh, p.kw
    (sh, sw), (pt, pl, _pb, _pr) = p.stride, p.pad
    oh, ow = p.oh, p.ow
    owt = ceil_to(ow, mr_d) // mr_d
    wn, wte = p.ring_width, -(-p.w // mr_e)
    ng, cb, nv, bands = p.ce // gc, p.c // b, gc // lanes, p.bands
    rows = -(-oh // bands)  # output rows per band
    zero = tirx.const(0.0, "float32")

    def act1(v: tirx.PrimExpr) -> tirx.PrimExpr:
        return activation_expr(v, *expand_activation)

    def act2(v: tirx.PrimExpr) -> tirx.PrimExpr:
        return activation_expr(v, *depthwise_activation)

    # fmt: off
    @T.prim_func(check_well_formed=False)
    def func(
        X: T.Buffer((1, cb, h, w, b), "float32"),  # type: ignore[valid-type]
        W1: T.Buffer((ng, cb, b, gc), "float32"),  # type: ignore[valid-type]
        B1: T.Buffer((ng, gc), "float32"),  # type: ignore[valid-type]
        W2: T.Buffer((ng, kh, kw, gc), "float32"),  # type: ignore[valid-type]
        B2: T.Buffer((ng, gc), "float32"),  # type: ignore[valid-type]
        out: T.Buffer((1, p.ce // b, oh, ow, b), "float32"),  # type: ignore[valid-type]
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        for task in T.parallel(ng * bands):
            ring = T.decl_buffer((kh, wn, gc), "float32")
            eacc = T.decl_buffer((mr_e, gc), "float32")
            dacc = T.decl_buffer((mr_d, gc), "float32")
            g = task // bands
            for row, x, v in T.grid(kh, wn - w, nv):  # the padding columns, never written below
                for ln in T.vectorized(lanes):
                    ring[row, T.Select(x < pl, x, x + w), v * lanes + ln] = zero
            for oyi in range(T.min(rows, oh - task % bands * rows)):
                oy = task % bands * rows + oyi
                first = T.Select(oyi == 0, 0, kh - sh)  # ring rows already computed
                for rr in range(kh - first):
                    r = oy * sh + first + rr  # padded input row
                    if r >= pt and r < pt + h:
                        for xo in range(wte):
                            x0 = T.min(xo * mr_e, w - mr_e)  # the last tile overlaps its neighbour: reads stay in X
                            for xi in T.unroll(mr_e):
                                for v in T.unroll(nv):
                                    for ln in T.vectorized(lanes):
                                        eacc[xi, v * lanes + ln] = zero
                            for rco in range(cb):
                                for rci in range(b):
                                    for xi in T.unroll(mr_e):
                                        for v in T.unroll(nv):
                                            for ln in T.vectorized(lanes):
                                                eacc[xi, v * lanes + ln] = eacc[xi, v * lanes + ln] + X[
                                                    0, rco, r - pt, x0 + xi, rci
                                                ] * W1[g, rco, rci, v * lanes + ln]
                            for xi in T.unroll(mr_e):
                                for v in T.unroll(nv):
                                    for ln in T.vectorized(lanes):
                                        ring[r % kh, pl + x0 + xi, v * lanes + ln] = act1(
                                            eacc[xi, v * lanes + ln] + B1[g, v * lanes + ln]
                                        )
                    else:
                        for x, v in T.grid(wn, nv):
                            for ln in T.vectorized(lanes):
                                ring[r % kh, x, v * lanes + ln] = zero
                for xt in range(owt):
                    for xi in T.unroll(mr_d):
                        for v in T.unroll(nv):
                            for ln in T.vectorized(lanes):
                                dacc[xi, v * lanes + ln] = zero
                    for ky in range(kh):
                        for kx in range(kw):
                            for xi in T.unroll(mr_d):
                                for v in T.unroll(nv):
                                    for ln in T.vectorized(lanes):
                                        dacc[xi, v * lanes + ln] = dacc[xi, v * lanes + ln] + ring[
                                            (oy * sh + ky) % kh, (xt * mr_d + xi) * sw + kx, v * lanes + ln
                                        ] * W2[g, ky, kx, v * lanes + ln]
                    for xi in T.unroll(mr_d):
                        for blk in range(gc // b):
                            for ln in T.vectorized(b):
                                if xt * mr_d + xi < ow:
                                    out[0, g * (gc // b) + blk, oy, xt * mr_d + xi, ln] = act2(
                                        dacc[xi, blk * b + ln] + B2[g, blk * b + ln]
                                    )
    # fmt: on
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)
