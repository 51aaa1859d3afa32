"""Direct 2-D convolution kernels (NCHW) for the register-tiled schedule.

* dense conv (``group == 1``): the weight is packed ``[Co/mr, C, KH, KW, mr]``; a register tile
  is ``mr`` output channels x ``nb`` output columns (1x1 convs become a packed GEMM).
* depthwise conv (``group == C == Co``): a tile is ``mr`` output rows x ``nb`` output columns of
  one channel, the ``KH x KW`` taps are the reduction.

The input is zero-padded by a copy only when the kernel reads outside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import te, tirx

from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.tiled import KERNEL_ATTR, tile_attr
from backends.tvm.schedules.tiling import TileConfig, ceil_to, pick_tile


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes, strides, dilation and padding of one 2-D conv: what the NCHW and the channel-blocked plans share."""

    n: int
    c: int
    h: int
    w: int
    co: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int]  # top, left (bottom / right padding follows from the output size)
    oh: int
    ow: int
    depthwise: bool

    def input_extent(self, oh_p: int, ow_p: int) -> tuple[int, int]:
        """Rows and columns of (padded) input that the taps of an ``oh_p x ow_p`` (tile-padded) output read."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return (oh_p - 1) * sh + (self.kh - 1) * dh + 1, (ow_p - 1) * sw + (self.kw - 1) * dw + 1

    def reads_outside(self, oh_p: int, ow_p: int) -> bool:
        """Whether an ``oh_p x ow_p`` output's taps read outside the input (then from a zero-padded copy)."""
        h_need, w_need = self.input_extent(oh_p, ow_p)
        return any(self.pad) or h_need > self.h or w_need > self.w

    @property
    def geometry_fields(self) -> dict[str, Any]:
        """The geometry as keyword arguments (to build a plan that extends it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ConvGeometry)}


@dataclass(frozen=True)
class PairGeometry:
    """The geometry of a fused pair of convs (:mod:`backends.tvm.schedules.expand_depthwise`,
    :mod:`backends.tvm.schedules.depthwise_project`): the pair's input map (``c`` channels of ``h x w``; a 1x1
    expansion keeps ``h x w``) and the depthwise conv's kernel, stride and padding ``[top, left, bottom, right]``."""

    c: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    block: int  #: channels of one block in the blocked layout

    @property
    def oh(self) -> int:
        """Output rows."""
        return (self.h + self.pad[0] + self.pad[2] - self.kh) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        """Output columns."""
        return (self.w + self.pad[1] + self.pad[3] - self.kw) // self.stride[1] + 1


def pair_geometry(
    c: int, h: int, w: int, kh: int, kw: int, stride: Sequence[int], pad: Sequence[int], block: int
) -> dict[str, Any]:
    """:class:`PairGeometry`'s fields as keyword arguments (ints and int tuples)."""
    return {
        "c": c, "h": h, "w": w, "kh": kh, "kw": kw, "stride": (int(stride[0]), int(stride[1])),
        "pad": (int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3])), "block": block,
    }  # fmt: skip


def conv_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    depthwise: bool,
) -> ConvGeometry:
    """The geometry of a conv on NCHW ``x_shape`` with weight ``[Co, C/g, KH, KW]`` (``pads`` in ONNX order)."""
    n, c, h, w = (int(v) for v in x_shape)
    co, kh, kw = int(w_shape[0]), int(w_shape[2]), int(w_shape[3])
    oh, ow = conv_output_size(h, w, kh, kw, strides, dilations, pads)
    stride, dilation = (int(strides[0]), int(strides[1])), (int(dilations[0]), int(dilations[1]))
    return ConvGeometry(n, c, h, w, co, kh, kw, stride, dilation, (int(pads[0]), int(pads[1])), oh, ow, depthwise)


@dataclass(frozen=True)
class ConvPlan(ConvGeometry):
    """Shapes, strides, padding and register tile of one 2-D conv."""

    mr: int
    nb: int
    local_pad: bool = False  #: padding copy computed per parallel tile instead of in one pass


#: Depthwise register tiles (rows, vectors) worth trying, best first. Measured on AVX2 over
#: EfficientNet-Lite0's 12 depthwise convs (1 thread): 4 x 1 vector was fastest or close on most
#: (1.83 ms in all, against 2.84 ms for the least-padding 3 x 4), 4 x 2, 6 x 1 and 2 x 4 won the rest.
DEPTHWISE_TILES = ((4, 1), (4, 2), (6, 1), (2, 4), (2, 2))


def is_depthwise(c: int, co: int, groups: int, w_in: int) -> bool:
    """Whether a conv with ``c`` input / ``co`` output channels, ``groups`` and ``w_in`` weight input channels
    is depthwise (one filter per channel)."""
    return groups == c == co and w_in == 1 and groups > 1


def conv_output_size(
    h: int, w: int, kh: int, kw: int, strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int]
) -> tuple[int, int]:
    """``(OH, OW)`` of a 2-D conv (``pads`` in ONNX order ``[t, l, b, r]``)."""
    oh = (h + pads[0] + pads[2] - (kh - 1) * int(dilations[0]) - 1) // int(strides[0]) + 1
    ow = (w + pads[1] + pads[3] - (kw - 1) * int(dilations[1]) - 1) // int(strides[1]) + 1
    return oh, ow


def conv_tile_shape(oh: int, ow: int, co: int, depthwise: bool, cfg: TileConfig) -> tuple[int, int]:
    """The default register tile ``(mr, nb)``: depthwise tiles rows x columns, dense tiles channels x columns."""
    if depthwise:
        mr, vecs = DEPTHWISE_TILES[0]
        return mr, vecs * cfg.lanes
    return pick_tile(co, ow, cfg)


def plan_conv(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    depthwise: bool,
    cfg: TileConfig,
    tile: tuple[int, int] | None = None,
    local_pad: bool = False,
) -> ConvPlan:
    """Output size and register tile of a conv (``pads`` in ONNX order ``[t, l, b, r]``).

    ``tile`` overrides the default ``(mr, nb)`` (:func:`conv_tile_shape`).
    """
    g = conv_geometry(x_shape, w_shape, strides, dilations, pads, depthwise)
    mr, nb = tile if tile is not None else conv_tile_shape(g.oh, g.ow, g.co, depthwise, cfg)
    return ConvPlan(**g.geometry_fields, mr=mr, nb=nb, local_pad=local_pad)


def pack_conv_weight(w: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """Dense conv: ``[Co, C, KH, KW]`` -> ``[Co/mr, C, KH, KW, mr]``; depthwise: ``[C, KH, KW]``."""
    if plan.depthwise:
        return np.ascontiguousarray(w.reshape(plan.co, plan.kh, plan.kw))
    cop = ceil_to(plan.co, plan.mr)
    padded = np.zeros((cop, *w.shape[1:]), dtype=w.dtype)
    padded[: plan.co] = w
    return np.ascontiguousarray(padded.reshape(cop // plan.mr, plan.mr, *w.shape[1:]).transpose(0, 2, 3, 4, 1))


Reader = Callable[..., Any]  # (n, c, y_in, x_out, kx) -> PrimExpr


def _input_reader(x: te.Tensor, p: ConvPlan, oh_p: int, ow_p: int) -> Reader:
    """``read(n, c, y_in, x_out, kx)``: the input pixel under tap ``kx`` of output column ``x_out``.

    Padding is materialised by a copy when the kernel reads outside ``x``. With a column stride
    the copy also splits columns by phase (``[.., H, stride, W/stride]``) so that the taps of
    consecutive output columns stay contiguous (vector loads instead of gathers).
    """
    (_sh, sw), (_dh, dw), (pt, pl) = p.stride, p.dilation, p.pad
    h_need, w_need = p.input_extent(oh_p, ow_p)
    zero = tirx.const(0, x.dtype)
    if sw == 1:
        if not p.reads_outside(oh_p, ow_p):
            return lambda n, c, y, xo, kx: x[n, c, y, xo + kx * dw]

        def pad(n: tirx.Var, c: tirx.Var, y: tirx.Var, xx: tirx.Var) -> tirx.PrimExpr:
            inside = tirx.all(y >= pt, y < pt + p.h, xx >= pl, xx < pl + p.w)
            return tirx.if_then_else(inside, x[n, c, y - pt, xx - pl], zero)

        xp = te.compute((p.n, p.c, h_need, w_need), pad, name="X_pad")
        return lambda n, c, y, xo, kx: xp[n, c, y, xo + kx * dw]

    width = ow_p + ((p.kw - 1) * dw) // sw

    def phase_pad(n: tirx.Var, c: tirx.Var, y: tirx.Var, ph: tirx.Var, q: tirx.Var) -> tirx.PrimExpr:
        xx = q * sw + ph
        inside = tirx.all(y >= pt, y < pt + p.h, xx >= pl, xx < pl + p.w)
        return tirx.if_then_else(inside, x[n, c, y - pt, xx - pl], zero)

    xq = te.compute((p.n, p.c, h_need, sw, width), phase_pad, name="X_pad")
    return lambda n, c, y, xo, kx: xq[n, c, y, (kx * dw) % sw, xo + (kx * dw) // sw]


def conv_func(
    p: ConvPlan,
    dtype: str,
    *,
    bias: bool,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> tirx.PrimFunc:
    """PrimFunc ``(X, W_packed[, bias], out)``: ``out = act(conv(X, W) + bias)``."""
    sh, dh = p.stride[0], p.dilation[0]
    mr, nb = p.mr, p.nb
    ow_p = ceil_to(p.ow, nb)
    x = te.placeholder((p.n, p.c, p.h, p.w), dtype, name="X")
    if p.depthwise:
        oh_p = ceil_to(p.oh, mr)
        read = _input_reader(x, p, oh_p, ow_p)
        wt = te.placeholder((p.c, p.kh, p.kw), dtype, name="W")
        ry, rx = te.reduce_axis((0, p.kh), name="ky"), te.reduce_axis((0, p.kw), name="kx")
        acc = te.compute(
            (p.n, p.c, oh_p // mr, mr, ow_p // nb, nb),
            lambda n, c, yt, yi, xt, xi: te.sum(
                wt[c, ry, rx] * read(n, c, (yt * mr + yi) * sh + ry * dh, xt * nb + xi, rx),
                axis=[ry, rx],
            ),
            name="acc",
        )
        at = lambda n, c, y, xx: acc(n, c, y // mr, y % mr, xx // nb, xx % nb)  # noqa: E731
        attr = tile_attr(3, 5, "0.1.2.4", local_pad=p.local_pad)
    else:
        read = _input_reader(x, p, p.oh, ow_p)
        cop = ceil_to(p.co, mr)
        wt = te.placeholder((cop // mr, p.c, p.kh, p.kw, mr), dtype, name="W")
        rc = te.reduce_axis((0, p.c), name="rc")
        ry, rx = te.reduce_axis((0, p.kh), name="ky"), te.reduce_axis((0, p.kw), name="kx")
        acc = te.compute(
            (p.n, cop // mr, mr, p.oh, ow_p // nb, nb),
            lambda n, ct, ci, y, xt, xi: te.sum(
                wt[ct, rc, ry, rx, ci] * read(n, rc, y * sh + ry * dh, xt * nb + xi, rx),
                axis=[rc, ry, rx],
            ),
            name="acc",
        )
        at = lambda n, c, y, xx: acc(n, c // mr, c % mr, y, xx // nb, xx % nb)  # noqa: E731
        attr = tile_attr(2, 5, "0.3.1.4", local_pad=p.local_pad)
    args = [x, wt]
    bias_t = None
    if bias:
        bias_t = te.placeholder((p.co,), dtype, name="bias")
        args.append(bias_t)

    def epi(n: tirx.Var, c: tirx.Var, y: tirx.Var, xx: tirx.Var) -> tirx.PrimExpr:
        v = at(n, c, y, xx)
        if bias_t is not None:
            v = v + bias_t[c]
        return activation_expr(v, activation, activation_params)

    out = te.compute((p.n, p.co, p.oh, p.ow), epi, name="out")
    func = te.create_prim_func([*args, out])
    return func.with_attr(KERNEL_ATTR, attr).with_attr("op_pattern", 8)
