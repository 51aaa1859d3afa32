"""Channel-blocked (NCHW[b]c) 2-D conv kernels for the register-tiled schedule.

A blocked tensor is ``[N, C/b, H, W, b]`` with ``b`` = the target's fp32 vector lanes, so one
vector holds ``b`` channels of one pixel. Convs then vectorise over output channels, which keeps
register tiles full on any feature-map width (the NCHW kernels vectorise along a row, and a 7 or
14 pixel row pads its vectors):

* depthwise (input blocked): a register tile is ``mr`` output pixels of one row x one vector of
  channels; the taps are the reduction, each an input vector times a weight vector.
* dense (input blocked or plain NCHW, e.g. the stem conv on an image): a tile is ``mr`` output
  pixels x ``vecs`` vectors of output channels; every input channel is one broadcast times
  ``vecs`` weight vectors. 1x1 stride-1 convs run on the flattened ``1 x H*W`` map.

The dense output is computed as ``[N, Co/(vecs b), vecs, OH, OW, b]``, the same memory as the
blocked ``[N, Co/b, OH, OW, b]`` (a free reshape). Padding is read in place (``inline_pad``: every input
read is a bounds-checked ``likely`` select, no copy; the depthwise default) or materialised by a copy, for
the whole input or per parallel tile (``local_pad``): per output row, or for a depthwise conv per channel
block (``plane_pad``: the parallel loop runs over channel blocks, each padded plane built once, in cache).
Dense convs copy: they read each input value for many output channels, and on the stem conv inline reads
measured slower (412 against 304 us).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tvm import te, tirx

from backends.tvm.schedules.conv import ConvGeometry, conv_geometry, is_depthwise
from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.tiled import KERNEL_ATTR, tile_attr
from backends.tvm.schedules.tiling import TileConfig, ceil_to, fits_registers

#: Depthwise tile widths (output pixels x one vector) worth trying, best first. Measured on AVX2 over
#: EfficientNet-Lite0's 12 depthwise convs (2 threads, padding read in place): 7 pixels won 8, 8 won 3, 4 won 1.
DEPTHWISE_WIDTHS = (7, 8, 4, 6)
# Depthwise convs read their padding in place by default (``inline_pad``). Measured on AVX2 over
# EfficientNet-Lite0's 12 depthwise convs (1 thread, 7-pixel tiles): 854 us summed against 1,219 us with the
# previous default (per-plane copies, per-row on the 112 x 112 maps); faster on every one of the 12.

#: Dense tiles (pixels, vectors) worth trying, best first. Measured on AVX2 over EfficientNet-Lite0's 20 dense
#: convs (2 threads): 4x3 won 5 and 4x2 won 13 (4x2 beat 6x2 on every conv, by up to 2x on the 32->16 conv at
#: 112x112); the two 40-channel convs take 2x5 (1.6x faster than 14x1, which loads a broadcast per FMA).
DENSE_TILES = ((4, 3), (4, 2), (2, 5), (6, 2), (14, 1), (7, 2), (12, 1))

#: Dense tiles (pixels, block vectors) with two blocks to a register, on CPUs whose vectors hold ``2 b`` lanes
#: (AVX-512 with 8-channel blocks: ``vecs`` even, ``vecs / 2`` zmm registers per pixel), best first. Measured on
#: the 16 of EfficientNet-Lite0's 20 dense convs whose output channels make whole pairs (2-core Xeon, AVX-512):
#: the best wide tiles sum to 1.51 ms against 2.21 for the best 8-lane ones; this order with channel tiles
#: outermost only on maps of at most 64 pixels picks tiles summing to 1.52 ms (7x4 won every 7x7 conv, 14x2 the
#: 14x14 projections, 4x6 the 56x56 / 28x28 expansions).
WIDE_DENSE_TILES = ((7, 4), (4, 6), (14, 2), (8, 2), (6, 4), (4, 4), (12, 2), (8, 4), (6, 6), (4, 8))
#: Row padding a default wide tile may add (a 7-pixel tile on a 4x4 map would compute 21 rows for 16).
_WIDE_MAX_WASTE = 1.05


@dataclass(frozen=True)
class BlockedConvPlan(ConvGeometry):
    """Shapes, strides, padding, layout and register tile of one channel-blocked conv."""

    block: int
    in_blocked: bool  #: X is ``[N, C/b, H, W, b]`` (else plain NCHW)
    mr: int  #: output pixels per register tile
    vecs: int = 1  #: output-channel vectors per register tile (dense only)
    channels_outer: bool = False  #: parallel over channel tiles, pixel tiles inner (dense only)
    local_pad: bool = False
    plane_pad: bool = False  #: depthwise: parallel over channel blocks, each padded once (with ``local_pad``)
    inline_pad: bool = False  #: read the padding in place (bounds-checked reads, no padded copy)
    wide: bool = False  #: dense: registers of two blocks (``2 b`` lanes; ``vecs`` even)

    @property
    def padded_output(self) -> tuple[int, int]:
        """The output rows and columns the register tiles cover (columns padded to whole tiles)."""
        return self.oh, ceil_to(self.ow, self.mr)

    @property
    def pads_input(self) -> bool:
        """Whether the kernel reads outside the input (zero padding, read in place or from a padded copy)."""
        return self.reads_outside(*self.padded_output)


def blocked_conv_applies(c: int, co: int, groups: int, w_in: int, block: int, in_blocked: bool) -> bool:
    """Whether a conv has a blocked kernel: ``co`` a multiple of ``block`` and dense or depthwise
    (``w_in``: the weight's input channels); depthwise and blocked inputs need ``c`` in whole blocks."""
    depthwise = is_depthwise(c, co, groups, w_in)
    if co % block or not (depthwise or (groups == 1 and w_in == c)):
        return False
    return c % block == 0 if depthwise or in_blocked else True


def plan_blocked_conv(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    cfg: TileConfig,
    *,
    depthwise: bool,
    in_blocked: bool,
    tile: dict[str, int] | None = None,
    wide: TileConfig | None = None,
) -> BlockedConvPlan:
    """The plan of a conv on logical NCHW ``x_shape`` (``pads`` in ONNX order ``[t, l, b, r]``).

    ``tile`` (``mr``, ``vecs``, ``channels_outer``, ``local_pad``, ``plane_pad``, ``inline_pad``, ``wide``)
    overrides the measured defaults (:data:`DEPTHWISE_WIDTHS` / :data:`DENSE_TILES`, or :data:`WIDE_DENSE_TILES`
    given the ``wide`` registers of a CPU with ``2 b``-lane vectors; depthwise convs pad inline); the padding
    flags are dropped when nothing is padded, and ``inline_pad`` takes precedence over the copying modes.
    """
    g = conv_geometry(x_shape, w_shape, strides, dilations, pads, depthwise)
    if tile is None:
        if depthwise:
            tile = {"mr": DEPTHWISE_WIDTHS[0], "inline_pad": 1}
        else:
            mr, vecs, is_wide = default_dense_tile(g.co, cfg, wide, pixels=g.oh * g.ow)
            # measured: parallel over channel tiles for small maps (few pixel tiles), and with 8-lane tiles for
            # expanding convs
            outer = g.oh * g.ow <= 64 or (g.co > g.c and not is_wide)
            tile = {"mr": mr, "vecs": vecs, "channels_outer": int(outer), "wide": is_wide}
    vecs = 1 if depthwise else tile["vecs"]
    is_wide = bool(tile.get("wide", 0))
    if is_wide and (depthwise or vecs % 2):
        raise ValueError(f"a wide tile needs a dense conv and an even number of vectors, got {tile}")
    plan = BlockedConvPlan(
        **g.geometry_fields,
        block=cfg.lanes,
        in_blocked=in_blocked,
        mr=tile["mr"],
        vecs=vecs,
        channels_outer=bool(tile.get("channels_outer", 0)),
        local_pad=bool(tile.get("local_pad", 0)),
        plane_pad=depthwise and bool(tile.get("local_pad", 0)) and bool(tile.get("plane_pad", 0)),
        inline_pad=bool(tile.get("inline_pad", 0)),
        wide=is_wide,
    )
    if not plan.pads_input:
        return replace(plan, local_pad=False, plane_pad=False, inline_pad=False)
    if plan.inline_pad:
        return replace(plan, local_pad=False, plane_pad=False)
    return plan


def dense_tiles(co: int, cfg: TileConfig) -> list[tuple[int, int]]:
    """The :data:`DENSE_TILES` that fit the registers and divide ``co`` into whole vector groups."""
    blocks = co // cfg.lanes
    return [(mr, v) for mr, v in DENSE_TILES if blocks % v == 0 and fits_registers(mr, v, cfg)]


def wide_dense_tiles(co: int, block: int, wide: TileConfig | None) -> list[tuple[int, int]]:
    """The :data:`WIDE_DENSE_TILES` that fit ``wide``'s registers (each holding ``wide.lanes / block`` blocks) and
    divide ``co`` into whole vector groups; none without ``wide`` registers of two blocks."""
    if wide is None or wide.lanes != 2 * block:
        return []
    blocks = co // block
    return [(mr, v) for mr, v in WIDE_DENSE_TILES if blocks % v == 0 and fits_registers(mr, v // 2, wide)]


def default_dense_tile(
    co: int, cfg: TileConfig, wide: TileConfig | None = None, pixels: int = 0
) -> tuple[int, int, int]:
    """``(mr, vecs, wide)``: the first of :func:`wide_dense_tiles` that pads ``pixels`` output pixels (if given) by
    at most 5%, or the first of them, else the first of :func:`dense_tiles` (one vector of 4 pixels when none
    fits)."""
    tiles = wide_dense_tiles(co, cfg.lanes, wide)
    if tiles:
        snug = [t for t in tiles if not pixels or ceil_to(pixels, t[0]) <= _WIDE_MAX_WASTE * pixels]
        return (*(snug or tiles)[0], 1)
    narrow = dense_tiles(co, cfg)
    return (*narrow[0], 0) if narrow else (4, 1, 0)


def pack_blocked_weight(w: np.ndarray, p: BlockedConvPlan) -> np.ndarray:
    """The weight in the kernel's layout.

    depthwise ``[C, 1, KH, KW]`` -> ``[C/b, KH, KW, b]``; dense ``[Co, C, KH, KW]`` ->
    ``[Co/(vecs b), C/b, KH, KW, b, vecs, b]`` (blocked input) or ``[Co/(vecs b), C, KH, KW, vecs, b]``.
    """
    b = p.block
    if p.depthwise:
        return np.ascontiguousarray(w.reshape(p.c // b, b, p.kh, p.kw).transpose(0, 2, 3, 1))
    t = p.co // (p.vecs * b)
    wt = w.reshape(t, p.vecs, b, p.c, p.kh, p.kw)  # co = (t * vecs + v) * b + l
    if p.in_blocked:
        wt = wt.reshape(t, p.vecs, b, p.c // b, b, p.kh, p.kw)
        return np.ascontiguousarray(wt.transpose(0, 3, 5, 6, 4, 1, 2))
    return np.ascontiguousarray(wt.transpose(0, 3, 4, 5, 1, 2))


def pack_blocked_bias(bias: np.ndarray, p: BlockedConvPlan) -> np.ndarray:
    """The bias as ``[Co/b, b]`` (channel ``cb * b + l``)."""
    return np.ascontiguousarray(bias.reshape(p.co // p.block, p.block))


def output_shape(p: BlockedConvPlan) -> list[int]:
    """The shape the kernel writes: ``[N, Co/b, OH, OW, b]`` (depthwise) or ``[N, T, vecs, OH, OW, b]``."""
    if p.depthwise:
        return [p.n, p.co // p.block, p.oh, p.ow, p.block]
    return [p.n, p.co // (p.vecs * p.block), p.vecs, p.oh, p.ow, p.block]


def _padded_input(x: te.Tensor, p: BlockedConvPlan) -> Callable[..., tirx.PrimExpr]:
    """Indexing into ``x`` zero-padded to everything the taps of the padded output tiles read: ``x`` itself
    if nothing is padded, a bounds-checked read with ``inline_pad``, else a padded copy (``X_pad``)."""
    if not p.pads_input:
        return x
    pt, pl = p.pad
    h_need, w_need = p.input_extent(*p.padded_output)
    zero = tirx.const(0, x.dtype)

    def pad(n: tirx.Var, c: tirx.Var, y: tirx.Var, xx: tirx.Var, *lane: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(y >= pt, y < pt + p.h, xx >= pl, xx < pl + p.w)
        if p.inline_pad:  # almost always inside: LLVM keeps the in-bounds path straight
            inside = tirx.likely(inside)
        return tirx.if_then_else(inside, x[(n, c, y - pt, xx - pl, *lane)], zero)

    if p.inline_pad:
        return pad
    shape = [int(d) for d in x.shape]
    shape[2], shape[3] = h_need, w_need
    return te.compute(shape, pad, name="X_pad")


def blocked_conv_func(
    p: BlockedConvPlan,
    dtype: str,
    *,
    bias: bool,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> tirx.PrimFunc:
    """PrimFunc ``(X, W_packed[, bias[Co/b, b]], out)``: ``out = act(conv(X, W) + bias)``, blocked output."""
    (sh, sw), (dh, dw), b, mr = p.stride, p.dilation, p.block, p.mr
    owt = ceil_to(p.ow, mr) // mr
    x_shape = (p.n, p.c // b, p.h, p.w, b) if p.in_blocked else (p.n, p.c, p.h, p.w)
    x = te.placeholder(x_shape, dtype, name="X")
    xp = _padded_input(x, p)
    ky, kx = te.reduce_axis((0, p.kh), name="ky"), te.reduce_axis((0, p.kw), name="kx")

    def col(xt: tirx.Var, xi: tirx.Var) -> tirx.PrimExpr:
        return (xt * mr + xi) * sw + kx * dw

    if p.depthwise:
        wt = te.placeholder((p.c // b, p.kh, p.kw, b), dtype, name="W")
        acc = te.compute(
            (p.n, p.c // b, p.oh, owt, mr, b),
            lambda n, c, y, xt, xi, ln: te.sum(
                wt[c, ky, kx, ln] * xp(n, c, y * sh + ky * dh, col(xt, xi), ln), axis=[ky, kx]
            ),
            name="acc",
        )
        attr = tile_attr(4, 5, "0.1.2.3", local_pad=p.local_pad, parallel=2 if p.plane_pad else 0, lanes=b)
    else:
        t_count = p.co // (p.vecs * b)
        if p.in_blocked:
            wt = te.placeholder((t_count, p.c // b, p.kh, p.kw, b, p.vecs, b), dtype, name="W")
            ro, ri = te.reduce_axis((0, p.c // b), name="rco"), te.reduce_axis((0, b), name="rci")
            acc = te.compute(
                (p.n, t_count, p.oh, owt, mr, p.vecs, b),
                lambda n, t, y, xt, xi, v, ln: te.sum(
                    wt[t, ro, ky, kx, ri, v, ln] * xp(n, ro, y * sh + ky * dh, col(xt, xi), ri),
                    axis=[ro, ky, kx, ri],
                ),
                name="acc",
            )
        else:
            wt = te.placeholder((t_count, p.c, p.kh, p.kw, p.vecs, b), dtype, name="W")
            rc = te.reduce_axis((0, p.c), name="rc")
            acc = te.compute(
                (p.n, t_count, p.oh, owt, mr, p.vecs, b),
                lambda n, t, y, xt, xi, v, ln: te.sum(
                    wt[t, rc, ky, kx, v, ln] * xp(n, rc, y * sh + ky * dh, col(xt, xi)), axis=[rc, ky, kx]
                ),
                name="acc",
            )
        order = "0.1.2.3" if p.channels_outer else "0.2.3.1"
        attr = tile_attr(4, "5+6", order, local_pad=p.local_pad, lanes=2 * b if p.wide else b)
    args = [x, wt]
    bias_t = None
    if bias:
        bias_t = te.placeholder((p.co // b, b), dtype, name="bias")
        args.append(bias_t)

    def epi(*idx: tirx.Var) -> tirx.PrimExpr:
        if p.depthwise:
            n, cb, y, xx, ln = idx
            val = acc(n, cb, y, xx // mr, xx % mr, ln)
        else:
            n, t, v, y, xx, ln = idx
            val, cb = acc(n, t, y, xx // mr, xx % mr, v, ln), t * p.vecs + v
        if bias_t is not None:
            val = val + bias_t[cb, ln]
        return activation_expr(val, activation, activation_params)

    out = te.compute(output_shape(p), epi, name="out")
    func = te.create_prim_func([*args, out])
    return func.with_attr(KERNEL_ATTR, attr).with_attr("op_pattern", 8)
