"""Channel-blocked (NCHW[b]c) conv chains: which values to block, the blocked conv and elementwise lowerings.

A conv whose output feeds another conv writes it channel-blocked (:class:`Blocked`), and the next
conv reads it that way: depthwise convs then vectorise over channels instead of along short rows
(:mod:`backends.tvm.schedules.nchwc`). Residual ``Add`` / ``Relu`` and per-tensor ``QuantizeLinear`` /
``DequantizeLinear`` of blocked values stay blocked (an integer 1x1 conv then reads blocked uint8
activations, :mod:`backends.tvm.lowering.qconv`). Any other consumer gets the NCHW form from
:meth:`EmitContext.expr`, converted once, so the choice of layout never changes what the model computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import onnx_ir as ir
from tvm import relax, tirx

from backends.tvm.lowering.common import CACC_DOMAIN, Blocked, EmitContext, Out, input_at, np_dtype
from backends.tvm.lowering.kernels import call_kernel, conv_key, conv_operands_ok, static_shape
from backends.tvm.lowering.quant import quantize_per_tensor
from backends.tvm.schedules.choice import KernelWorkload, Tile, choose_tile, tile_json
from backends.tvm.schedules.nchwc import (
    DEPTHWISE_WIDTHS,
    BlockedConvPlan,
    blocked_conv_applies,
    blocked_conv_func,
    dense_tiles,
    output_shape,
    pack_blocked_bias,
    pack_blocked_weight,
    plan_blocked_conv,
    wide_dense_tiles,
)
from backends.tvm.schedules.tiling import conv_block_config, emit_target, target_lanes

R = relax.op
Plan = TypeVar("Plan")

#: Elementwise ops that keep a blocked layout (every input blocked alike, nothing broadcast).
_LAYOUT_FREE = {"Add": R.add, "Relu": R.nn.relu}
#: Per-tensor (de)quantization keeps it too (its scale and zero point are constants).
_QUANT = ("QuantizeLinear", "DequantizeLinear")


def is_conv(node: ir.Node) -> bool:
    """Whether ``node`` is an ONNX ``Conv`` or a ``cacc::FusedConv``."""
    return (node.domain in ("", "ai.onnx") and node.op_type == "Conv") or (
        node.domain == CACC_DOMAIN and node.op_type == "FusedConv"
    )


def _scalar_const(v: ir.Value | None) -> bool:
    return v is None or (v.const_value is not None and v.const_value.size == 1)


def _is_layout_free(node: ir.Node) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in _QUANT:
        return len(node.inputs) >= 2 and all(_scalar_const(v) for v in node.inputs[1:3])
    return node.op_type in _LAYOUT_FREE


def _data_inputs(node: ir.Node) -> Sequence[ir.Value | None]:
    return node.inputs[:1] if node.op_type in _QUANT else node.inputs


def plan_blocked_values(graph: ir.Graph) -> set[str]:
    """Names of the values worth writing channel-blocked: outputs of 2-D convs (and of adds / relus of such
    values) that a conv reads, directly or through such adds / relus. Whether a conv can actually write a
    blocked value (dtype, channel counts) is decided when it is emitted."""
    blockable: set[str] = set()
    nodes = list(graph)
    for node in nodes:
        out = node.outputs[0] if node.outputs else None
        if out is None or not out.name or (out.shape is not None and len(out.shape) != 4):
            continue
        inputs_blocked = all(v is not None and v.name in blockable for v in _data_inputs(node))
        if is_conv(node) or (_is_layout_free(node) and inputs_blocked):
            blockable.add(out.name)
    prefer: set[str] = set()
    for node in reversed(nodes):
        out = node.outputs[0] if node.outputs else None
        if out is None or out.name not in blockable:
            continue
        for user, _idx in out.uses():
            if is_conv(user) or (_is_layout_free(user) and user.outputs[0].name in prefer):
                prefer.add(out.name)
                break
    return prefer


def to_blocked(ctx: EmitContext, x: relax.Expr, block: int) -> relax.Expr:
    """NCHW ``x`` as ``[N, C/block, H, W, block]``."""
    n, c, h, w = ctx.shape(x)
    return ctx.emit(R.permute_dims(R.reshape(x, [n, c // block, block, h, w]), [0, 1, 3, 4, 2]))


def emit_blocked_conv2d(
    ctx: EmitContext,
    x_v: ir.Value,
    out_v: ir.Value | None,
    w: np.ndarray,
    bias: np.ndarray | None,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    groups: int,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> Blocked | None:
    """``act(conv2d(x, w) + bias)`` written channel-blocked, when ``x`` is blocked or the output is wanted
    blocked (:attr:`EmitContext.prefer_blocked`) and a blocked kernel applies; else ``None``."""
    if emit_target().kind.name != "llvm":
        return None
    held = ctx.blocked_form(x_v)
    wanted = out_v is not None and out_v.name in ctx.prefer_blocked
    shape = static_shape(ctx, x_v)
    cfg = conv_block_config()
    b = cfg.lanes
    full = target_lanes()
    wide = full if full.lanes == 2 * b else None  # AVX-512 registers hold two 8-channel blocks
    if (
        (held is None and not wanted)
        or (held is not None and held.block != b)
        or shape is None
        or not conv_operands_ok(shape, ctx.dtype(x_v), w, bias, activation)
        or not blocked_conv_applies(shape[1], int(w.shape[0]), groups, int(w.shape[1]), b, held is not None)
    ):
        return None
    depthwise = groups > 1
    if depthwise and held is None:
        held = Blocked(to_blocked(ctx, ctx.expr(x_v), b), b)
    in_blocked = held is not None
    x = held.expr if held is not None else ctx.expr(x_v)
    n, c, h, wd = shape
    pointwise = tuple(w.shape[2:]) == (1, 1) and all(int(s) == 1 for s in strides) and not any(int(p) for p in pads)
    if pointwise:  # a 1x1 conv runs on the flattened 1 x H*W map: full register tiles on any width
        shape = [n, c, 1, h * wd]
        x = ctx.emit(R.reshape(x, [n, c // b, 1, h * wd, b] if in_blocked else [n, c, 1, h * wd]))

    def plan(t: Tile | None) -> BlockedConvPlan:
        return plan_blocked_conv(
            shape, w.shape, strides, dilations, pads, cfg, depthwise=depthwise, in_blocked=in_blocked, tile=t, wide=wide
        )

    base = plan(None)
    if base.oh < 1 or base.ow < 1:
        return None
    default: Tile
    if depthwise:
        default = {
            "mr": base.mr,
            "local_pad": int(base.local_pad),
            "plane_pad": int(base.plane_pad),
            "inline_pad": int(base.inline_pad),
        }
        # padding read in place; one padding pass; per output row; per channel block
        pad_modes = ((0, 0, 1), (0, 0, 0), (1, 0, 0), (1, 1, 0))
        candidates = [
            {"mr": mr, "local_pad": lp, "plane_pad": pp, "inline_pad": ip}
            for mr in DEPTHWISE_WIDTHS
            for lp, pp, ip in pad_modes
        ]
    else:
        default = {
            "mr": base.mr,
            "vecs": base.vecs,
            "channels_outer": int(base.channels_outer),
            "local_pad": 0,
            "wide": int(base.wide),
        }
        tiles = [(mr, v, 1) for mr, v in wide_dense_tiles(base.co, b, wide)]
        tiles += [(mr, v, 0) for mr, v in dense_tiles(base.co, cfg)]
        candidates = [
            {"mr": mr, "vecs": v, "channels_outer": outer, "local_pad": 0, "wide": wd}
            for mr, v, wd in tiles
            for outer in (0, 1)
        ]
    if not base.pads_input:
        candidates = [t for t in candidates if not t["local_pad"] and not t.get("inline_pad")]
    if all(t != default for t in candidates):
        candidates.insert(0, default)

    def make(t: Tile) -> tirx.PrimFunc:
        return blocked_conv_func(
            plan(t), "float32", bias=bias is not None, activation=activation, activation_params=activation_params
        )

    kind = f"{'depthwise_' if depthwise else ''}conv2d_nchwc:{'b' if in_blocked else 'p'}"
    key = conv_key(kind, shape, w.shape, strides, dilations, pads, b)
    tile = choose_tile(KernelWorkload(key, default, candidates, make))
    p = plan(tile)
    args = [x, relax.const(pack_blocked_weight(w, p))]
    if bias is not None:
        args.append(relax.const(pack_blocked_bias(bias, p)))
    name = "cacc_depthwise_conv2d_nchwc" if depthwise else "cacc_conv2d_nchwc"
    y = call_kernel(ctx, make(tile), name, args, output_shape(p), "float32", key)
    oh, ow = (h, wd) if pointwise else (p.oh, p.ow)
    return Blocked(ctx.emit(R.reshape(y, [p.n, p.co // b, oh, ow, b])), b)


def emit_planned_kernel(
    ctx: EmitContext,
    x_v: ir.Value,
    block: int,
    name: str,
    key: str,
    plans: Sequence[Plan],
    knobs: Sequence[str],
    make: Callable[[Plan], tirx.PrimFunc],
    consts: Callable[[Plan], list[np.ndarray]],
    out_shape: Callable[[Plan], list[int]],
) -> Blocked:
    """A kernel with a blocked input and output, of the plan the tile source picks among ``plans`` (the default
    first; a plan's tile is its ``knobs``): ``make(plan)`` called on ``x_v`` channel-blocked and ``consts(plan)``."""

    def tile(p: Plan) -> Tile:
        return {k: int(getattr(p, k)) for k in knobs}

    by_tile = {tile_json(tile(p)): p for p in plans}
    wl = KernelWorkload(key, tile(plans[0]), [tile(p) for p in plans], lambda t: make(by_tile[tile_json(t)]))
    plan = by_tile[tile_json(choose_tile(wl))]
    held = ctx.blocked_form(x_v)
    x = held.expr if held is not None and held.block == block else to_blocked(ctx, ctx.expr(x_v), block)
    args = [x, *(relax.const(a) for a in consts(plan))]
    return Blocked(call_kernel(ctx, make(plan), name, args, out_shape(plan), "float32", key), block)


def lower_blocked(ctx: EmitContext, node: ir.Node) -> list[Out] | None:
    """``Add`` / ``Relu`` of blocked values of one shape and per-tensor ``QuantizeLinear`` /
    ``DequantizeLinear`` of a blocked value, kept blocked; ``None`` when it does not apply."""
    if not _is_layout_free(node) or not node.inputs:
        return None
    held = [ctx.blocked_form(v) for v in _data_inputs(node)]
    if any(h is None for h in held):
        return None
    exprs = [h.expr for h in held if h is not None]
    block = held[0].block  # type: ignore[union-attr]
    if node.op_type in _QUANT:
        scale, zero = ctx.const(node.inputs[1]), ctx.const(input_at(node, 2))
        if scale is None or scale.dtype != np.float32 or (input_at(node, 2) is not None and zero is None):
            return None
        if node.op_type == "QuantizeLinear":
            dtype = np_dtype(node.outputs[0].dtype, node).name
            if dtype not in ("uint8", "int8") or ctx.dtype(exprs[0]) != "float32":
                return None
            z = 0 if zero is None else int(zero.reshape(-1)[0])
            q = quantize_per_tensor(ctx, exprs[0], float(scale.reshape(-1)[0]), z, dtype)
            return [Blocked(q, block)]
        x = ctx.emit(R.astype(exprs[0], "float32"))
        if zero is not None:
            x = ctx.emit(R.subtract(x, relax.const(float(zero.reshape(-1)[0]), "float32")))
        return [Blocked(ctx.emit(R.multiply(x, relax.const(float(scale.reshape(-1)[0]), "float32"))), block)]
    if node.outputs[0].dtype != ir.DataType.FLOAT:
        return None
    shapes = [ctx.shape(e) for e in exprs]
    if any(s != shapes[0] for s in shapes) or len(exprs) != (2 if node.op_type == "Add" else 1):
        return None
    return [Blocked(ctx.emit(_LAYOUT_FREE[node.op_type](*exprs)), block)]
