"""Lower a depthwise conv and the 1x1 projection conv reading it as one kernel
(:mod:`backends.tvm.schedules.depthwise_project`).

The projection's lowering asks for the fusion (:func:`backends.tvm.lowering.nn.emit_conv`): the depthwise conv
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
from backends.tvm.schedules.depthwise_project import (
    depthwise_project_func,
    fusable,
    output_shape,
    pack_bias,
    pack_depthwise_weight,
    pack_project_weight,
    plan_candidates,
)
from backends.tvm.schedules.tiling import conv_block_config, emit_target, target_lanes
from backends.tvm.target import target_cores

Activation = tuple[str, Sequence[float]]


def emit_depthwise_project(
    ctx: EmitContext,
    x_v: ir.Value,
    depthwise: tuple[np.ndarray, np.ndarray | None, Activation],
    project: tuple[np.ndarray, np.ndarray | None, Activation],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> Blocked | None:
    """``act2(conv1x1(act1(dwconv(x) + b1)) + b2)`` as one channel-blocked kernel, or ``None`` when it does not
    apply (not an LLVM target, batch > 1, shapes or dtypes the kernel does not take, or a depthwise output small
    enough to stay in cache: :func:`~backends.tvm.schedules.depthwise_project.fusable`).

    ``depthwise`` / ``project``: each conv's weight, bias and activation (name, parameters); ``strides``,
    ``dilations`` and ``pads`` (ONNX order) are the depthwise conv's.
    """
    (wd, bd, act1), (wp, bp, act2) = depthwise, project
    target = emit_target()
    if target.kind.name != "llvm":
        return None
    shape = static_shape(ctx, x_v)
    cfg, full = conv_block_config(), target_lanes()
    b = cfg.lanes
    if shape is None or len(shape) != 4 or shape[0] != 1 or wd.ndim != 4 or wp.ndim != 4:
        return None
    _n, c, h, w = shape
    co, kh, kw = int(wp.shape[0]), int(wd.shape[2]), int(wd.shape[3])
    plans = plan_candidates(c, h, w, co, kh, kw, strides, pads, b, full, target_cores(target) or 1)
    if not plans:
        return None
    oh, ow = plans[0].oh, plans[0].ow
    if (
        tuple(wd.shape[:2]) != (c, 1)
        or tuple(wp.shape) != (co, c, 1, 1)
        or oh < 1
        or ow < 1
        or not conv_operands_ok(shape, ctx.dtype(x_v), wd, bd, act1[0])
        or not conv_operands_ok([1, c, oh, ow], "float32", wp, bp, act2[0])
        or not fusable(c, co, oh, ow, dilations, b)
    ):
        return None
    key = conv_key("depthwise_project", shape, [*wd.shape, co], strides, dilations, pads, full.lanes)
    return emit_planned_kernel(
        ctx,
        x_v,
        b,
        "cacc_depthwise_project",
        key,
        plans,
        ("mr_p", "bands"),
        lambda p: depthwise_project_func(p, act1, act2),
        lambda p: [pack_depthwise_weight(wd, p), pack_bias(bd, c, p), pack_project_weight(wp, p), pack_bias(bp, co, p)],
        output_shape,
    )
