"""Emit cacc's hand-scheduled kernels (backends.tvm.schedules) as Relax ``call_tir``s.

Each helper returns ``None`` when the kernel does not apply (symbolic shapes, other dtypes,
broadcasting), and the caller falls back to the generic Relax op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from tvm import relax, tirx

from backends.tvm.lowering.common import EmitContext
from backends.tvm.schedules.choice import (
    WORKLOAD_ATTR,
    KernelWorkload,
    Tile,
    choose_tile,
    conv_candidates,
    gemm_candidates,
)
from backends.tvm.schedules.conv import DEPTHWISE_TILES, conv_func, is_depthwise, pack_conv_weight, plan_conv
from backends.tvm.schedules.epilogue import SUPPORTED
from backends.tvm.schedules.gemm import GemmPlan, gemm_func, pack_lhs, pack_rhs
from backends.tvm.schedules.tiling import fits_registers, pick_tile, target_lanes

R = relax.op


def static_shape(ctx: EmitContext, e: relax.Expr | ir.Value) -> list[int] | None:
    """The shape of ``e`` (an expression or an IR value) as ints, or ``None`` when a dim is symbolic."""
    shape = ctx.shape(e)
    return [int(d) for d in shape] if all(isinstance(d, int) for d in shape) else None


def conv_operands_ok(
    shape: list[int] | None, x_dtype: str, w: np.ndarray, bias: np.ndarray | None, activation: str
) -> bool:
    """Whether a conv has what cacc's fp32 conv kernels take: a static 4-D fp32 input, a constant 4-D fp32
    weight, a fusable activation and no bias or one fp32 value per output channel."""
    return not (
        shape is None
        or len(shape) != 4
        or w.ndim != 4
        or w.dtype != np.float32
        or x_dtype != "float32"
        or activation not in SUPPORTED
        or (bias is not None and (bias.dtype != np.float32 or bias.size != w.shape[0]))
    )


def conv_key(
    kind: str, shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
    pads: Sequence[int], lanes: int,
) -> str:  # fmt: skip
    """The tile-choice key of a conv kernel (its kind, shapes, strides, dilations, pads and vector lanes)."""
    return (
        f"{kind}:x{'x'.join(map(str, shape))}:w{'x'.join(map(str, w_shape))}"
        f":s{'.'.join(map(str, strides))}:d{'.'.join(map(str, dilations))}:p{'.'.join(map(str, pads))}:lanes{lanes}"
    )


def call_kernel(
    ctx: EmitContext,
    func: tirx.PrimFunc,
    name: str,
    args: Sequence[relax.Expr],
    shape: list[int],
    dtype: str,
    workload: str | None = None,
) -> relax.Expr:
    """Add ``func`` to the module and emit ``call_tir(func, args)`` returning a ``dtype`` tensor of ``shape``.
    ``workload``: the key of the tuning workload ``func`` was built for (:data:`WORKLOAD_ATTR`), so tuning can
    tell the kernels the model runs from those a later fusion made dead."""
    if workload is not None:
        func = func.with_attr(WORKLOAD_ATTR, workload)
    gvar = ctx.bb.add_func(func.without_attr("global_symbol"), name)
    return ctx.emit(relax.call_tir(gvar, relax.Tuple(list(args)), relax.TensorType(shape, dtype)))


def emit_dense(
    ctx: EmitContext,
    a: relax.Expr,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> relax.Expr | None:
    """``act(a @ w + bias)`` for a constant 2-D ``w`` (packed at emit time); ``None`` if it does not apply."""
    shape = static_shape(ctx, a)
    if (
        shape is None
        or len(shape) < 2
        or w.ndim != 2
        or w.dtype != np.float32
        or ctx.dtype(a) != "float32"
        or shape[-1] != w.shape[0]
        or activation not in SUPPORTED
        or (bias is not None and (bias.dtype != np.float32 or bias.size != w.shape[1]))
    ):
        return None
    m, k, n = math.prod(shape[:-1]), w.shape[0], w.shape[1]
    cfg = target_lanes()
    mr, nb = pick_tile(m, n, cfg)
    default = {"mr": mr, "nb": nb, "rows_outer": 0}

    def make(t: Tile) -> tirx.PrimFunc:
        return gemm_func(
            GemmPlan(1, m, k, n, t["mr"], t["nb"]),
            "float32",
            lhs_packed=False,
            rhs_packed=True,
            bias="col" if bias is not None else "",
            activation=activation,
            activation_params=activation_params,
            rows_outer=bool(t["rows_outer"]),
        )

    wl = KernelWorkload(f"dense:m{m}:k{k}:n{n}:lanes{cfg.lanes}", default, gemm_candidates(m, n, cfg, default), make)
    tile = choose_tile(wl)
    func = make(tile)
    args = [ctx.emit(R.reshape(a, [1, m, k])), relax.const(pack_rhs(w, tile["nb"]))]
    if bias is not None:
        args.append(relax.const(np.ascontiguousarray(bias.reshape(-1))))
    y = call_kernel(ctx, func, "cacc_dense", args, [1, m, n], "float32", wl.key)
    return ctx.emit(R.reshape(y, [*shape[:-1], n]))


def emit_batch_matmul(ctx: EmitContext, a: relax.Expr, b: relax.Expr) -> relax.Expr | None:
    """``a @ b`` for two run-time operands with equal static batch dims; ``None`` if it does not apply."""
    sa, sb = static_shape(ctx, a), static_shape(ctx, b)
    if (
        sa is None
        or sb is None
        or len(sa) < 2
        or len(sa) != len(sb)
        or sa[:-2] != sb[:-2]
        or sa[-1] != sb[-2]
        or ctx.dtype(a) != "float32"
        or ctx.dtype(b) != "float32"
    ):
        return None
    batch, m, k, n = math.prod(sa[:-2]), sa[-2], sa[-1], sb[-1]
    cfg = target_lanes()
    mr, nb = pick_tile(m, n, cfg)
    default = {"mr": mr, "nb": nb, "rows_outer": 1}

    def make(t: Tile) -> tirx.PrimFunc:
        plan = GemmPlan(batch, m, k, n, t["mr"], t["nb"])
        return gemm_func(plan, "float32", lhs_packed=False, rhs_packed=False, rows_outer=bool(t["rows_outer"]))

    key = f"batch_matmul:b{batch}:m{m}:k{k}:n{n}:lanes{cfg.lanes}"
    func = make(choose_tile(KernelWorkload(key, default, gemm_candidates(m, n, cfg, default), make)))
    args = [ctx.emit(R.reshape(a, [batch, m, k])), ctx.emit(R.reshape(b, [batch, k, n]))]
    y = call_kernel(ctx, func, "cacc_batch_matmul", args, [batch, m, n], "float32", key)
    return ctx.emit(R.reshape(y, [*sa[:-2], m, n]))


def emit_conv2d(
    ctx: EmitContext,
    x: relax.Expr,
    w: np.ndarray,
    bias: np.ndarray | None,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    groups: int,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> relax.Expr | None:
    """``act(conv2d(x, w) + bias)`` (dense or depthwise, constant ``w``); ``None`` if it does not apply."""
    shape = static_shape(ctx, x)
    if shape is None or not conv_operands_ok(shape, ctx.dtype(x), w, bias, activation):
        return None
    c, co = shape[1], int(w.shape[0])
    depthwise = is_depthwise(c, co, groups, int(w.shape[1]))
    if not depthwise and (groups != 1 or w.shape[1] != c):
        return None
    if not depthwise and _pointwise_as_gemm(shape, w.shape, strides, pads):
        return _emit_pointwise_conv(ctx, x, shape, w, bias, activation, activation_params)
    cfg = target_lanes()
    base = plan_conv(shape, w.shape, strides, dilations, pads, depthwise, cfg)
    if base.oh < 1 or base.ow < 1:
        return None
    padded = any(int(v) for v in pads)
    # measured on AVX2: stride-1 depthwise convs gain from padding per tile (the input stays in cache)
    local = int(depthwise and padded and all(int(v) == 1 for v in strides))
    default = {"mr": base.mr, "nb": base.nb, "local_pad": local}
    rows = base.oh if depthwise else base.co
    dw_tiles = [(mr, v * cfg.lanes) for mr, v in DEPTHWISE_TILES if fits_registers(mr, v, cfg)] if depthwise else None
    candidates = conv_candidates(rows, base.ow, cfg, default, 4 if depthwise else 8, padded, dw_tiles)

    def make(t: Tile) -> tirx.PrimFunc:
        tile = (t["mr"], t["nb"])
        p = plan_conv(shape, w.shape, strides, dilations, pads, depthwise, cfg, tile, bool(t["local_pad"]))
        has_bias = bias is not None
        return conv_func(p, "float32", bias=has_bias, activation=activation, activation_params=activation_params)

    key = conv_key(f"{'depthwise_' if depthwise else ''}conv2d", shape, w.shape, strides, dilations, pads, cfg.lanes)
    tile = choose_tile(KernelWorkload(key, default, candidates, make))
    plan = plan_conv(shape, w.shape, strides, dilations, pads, depthwise, cfg, (tile["mr"], tile["nb"]))
    func = make(tile)
    args = [x, relax.const(pack_conv_weight(w, plan))]
    if bias is not None:
        args.append(relax.const(np.ascontiguousarray(bias.reshape(-1))))
    name = "cacc_depthwise_conv2d" if depthwise else "cacc_conv2d"
    return call_kernel(ctx, func, name, args, [plan.n, co, plan.oh, plan.ow], "float32", key)


def _pointwise_as_gemm(
    shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int]
) -> bool:
    """Whether a dense conv runs as a flattened-pixel GEMM (see :func:`_emit_pointwise_conv`).

    Only 1x1 stride-1 unpadded convs whose rows do not fill two-vector register tiles (the
    direct kernel tiles one output row at a time); measured on AVX2 (EfficientNet-Lite0),
    rows that are a multiple of two vectors are as fast in the direct kernel.
    """
    lanes = target_lanes().lanes
    return (
        tuple(int(v) for v in w_shape[2:]) == (1, 1)
        and all(int(v) == 1 for v in strides)
        and not any(int(v) for v in pads)
        and int(shape[3]) % (2 * lanes) != 0
    )


def _emit_pointwise_conv(
    ctx: EmitContext,
    x: relax.Expr,
    shape: list[int],
    w: np.ndarray,
    bias: np.ndarray | None,
    activation: str,
    activation_params: Sequence[float],
) -> relax.Expr:
    """A 1x1 stride-1 unpadded conv as a GEMM ``W[Co, C] @ X[n][C, H*W]`` (packed ``W``, bias per row).

    Flattening ``H*W`` into the column axis keeps register tiles full on small feature maps.
    Pixel tiles are the outer (parallel) loop: each ``C x nb`` pixel panel is reused by all
    weight row tiles.
    """
    n, c, h, wd = shape
    co, hw = int(w.shape[0]), h * wd
    cfg = target_lanes()
    # two-vector column tiles and as many rows as fit: measured faster than pick_tile's wider,
    # shorter tiles here (the pixel rows of X are strided by H*W, one cache line per channel)
    default = {"mr": min(6, (cfg.registers - 3) // 2), "nb": 2 * cfg.lanes, "rows_outer": 0}

    def make(t: Tile) -> tirx.PrimFunc:
        return gemm_func(
            GemmPlan(n, co, c, hw, t["mr"], t["nb"]),
            "float32",
            lhs_packed=True,
            rhs_packed=False,
            bias="row" if bias is not None else "",
            activation=activation,
            activation_params=activation_params,
            rows_outer=bool(t["rows_outer"]),
            pack_rhs_panels=bool(t.get("pack", 0)),
        )

    key = f"pointwise_conv2d:n{n}:c{c}:co{co}:hw{hw}:lanes{cfg.lanes}"
    candidates = gemm_candidates(co, hw, cfg, default)
    if hw <= 1024:  # small maps: also try packing the pixel panels (a strided row per channel otherwise)
        candidates += [{**t, "pack": 1} for t in candidates[:6]]
    tile = choose_tile(KernelWorkload(key, default, candidates, make))
    func = make(tile)
    args = [relax.const(pack_lhs(w.reshape(co, c), tile["mr"])), ctx.emit(R.reshape(x, [n, c, hw]))]
    if bias is not None:
        args.append(relax.const(np.ascontiguousarray(bias.reshape(-1))))
    y = call_kernel(ctx, func, "cacc_pointwise_conv2d", args, [n, co, hw], "float32", key)
    return ctx.emit(R.reshape(y, [n, co, h, wd]))
