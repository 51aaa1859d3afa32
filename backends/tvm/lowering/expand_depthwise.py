"""Lower a 1x1 expansion conv and the depthwise conv reading it as one kernel
(:mod:`backends.tvm.schedules.expand_depthwise`).

The depthwise conv's lowering asks for the fusion (:func:`backends.tvm.lowering.nn.emit_conv`): the expansion
was already emitted as its own kernel, and reading its input instead leaves that call dead, which the
emitter's dead-code elimination removes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from backends.tvm.lowering.blocked import emit_planned_kernel
from backends.tvm.lowering.common import Blocked, EmitContext
from backends.tvm.lowering.kernels import conv_key, conv_operands_ok, static_shape
from backends.tvm.schedules.expand_depthwise import (
    expand_depthwise_func,
    fusable,
    output_shape,
    pack_depthwise_weight,
    pack_expand_weight,
    pack_group_bias,
    plan_candidates,
)
from backends.tvm.schedules.tiling import conv_block_config, emit_target, target_lanes

Activation = tuple[str, Sequence[float]]


def emit_expand_depthwise(
    ctx: EmitContext,
    x_v: ir.Value,
    expand: tuple[np.ndarray, np.ndarray | None, Activation],
    depthwise: tuple[np.ndarray, np.ndarray | None, Activation],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> Blocked | None:
    """``act2(dwconv(act1(conv1x1(x) + b1)) + b2)`` as one channel-blocked kernel, or ``None`` when it does not
    apply (not an LLVM target, batch > 1, shapes or dtypes the kernel does not take, or a map small enough to
    stay in cache: :func:`~backends.tvm.schedules.expand_depthwise.fusable`).

    ``expand`` / ``depthwise``: each conv's weight, bias and activation (name, parameters); ``strides``,
    ``dilations`` and ``pads`` (ONNX order) are the depthwise conv's.
    """
    (w1, b1, act1), (w2, b2, act2) = expand, depthwise
    if emit_target().kind.name != "llvm":
        return None
    shape = static_shape(ctx, x_v)
    cfg, full = conv_block_config(), target_lanes()
    b = cfg.lanes
    if shape is None or len(shape) != 4 or shape[0] != 1 or w1.ndim != 4 or w2.ndim != 4:
        return None
    _n, c, h, w = shape
    ce = int(w1.shape[0])
    if (
        tuple(w1.shape) != (ce, c, 1, 1)
        or tuple(w2.shape[:2]) != (ce, 1)
        or not conv_operands_ok(shape, ctx.dtype(x_v), w1, b1, act1[0])
        or not conv_operands_ok([1, ce, h, w], "float32", w2, b2, act2[0])
        or not fusable(c, ce, h, w, int(w2.shape[2]), strides, dilations, b)
    ):
        return None
    kh, kw = int(w2.shape[2]), int(w2.shape[3])
    plans = plan_candidates(c, h, w, ce, kh, kw, strides, pads, b, full)
    if plans[0].oh < 1 or plans[0].ow < 1:
        return None
    key = conv_key("expand_depthwise", shape, [*w1.shape[:2], *w2.shape[1:]], strides, dilations, pads, full.lanes)
    return emit_planned_kernel(
        ctx,
        x_v,
        b,
        "cacc_expand_depthwise",
        key,
        plans,
        ("group", "mr_e", "bands"),
        lambda p: expand_depthwise_func(p, act1, act2),
        lambda p: [
            pack_expand_weight(w1, p),
            pack_group_bias(b1, p),
            pack_depthwise_weight(w2, p),
            pack_group_bias(b2, p),
        ],
        output_shape,
    )
