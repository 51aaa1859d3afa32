"""cacc's own ops (domain ``cacc``), created by the fusion passes.

``cacc::FusedConv(X, W, [B])``
    ``act(Conv(X, W, B))``. Attributes: every ``Conv`` attribute, plus ``activation``
    (a name in :data:`FUSABLE`, or ``""`` for none) and ``activation_params`` (floats:
    ``Clip`` → ``[min, max]``, ``LeakyRelu`` → ``[alpha]``, ``HardSigmoid`` → ``[alpha, beta]``).
``cacc::FusedMatMul(A, B, [bias])``
    ``act(MatMul(A, B) + bias)`` with numpy ``matmul`` broadcasting; ``bias`` broadcasts
    against the result (normally shape ``[N]``). Same activation attributes.

Backends lower them as one kernel; the ONNX exporter decomposes them back into standard ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.activations import FUSABLE
from compiler.ir.ops.registry import CACC_DOMAIN, attr, lookup, register


def apply_activation(node: ir.Node, y: np.ndarray) -> np.ndarray:
    """Apply the node's ``activation`` attribute to ``y``."""
    name = attr(node, "activation", "")
    if not name:
        return y
    if name not in FUSABLE:
        raise ValueError(f"unknown fused activation '{name}'")
    return FUSABLE[name](y, attr(node, "activation_params", []))


# ------------------------------------------------------------------ shape inference


def _conv_out_dim(size: int, k: int, stride: int, dilation: int, pad_total: int, auto_pad: str) -> int:
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-size // stride)
    if auto_pad == "VALID":
        return (size - dilation * (k - 1) - 1) // stride + 1
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def infer_fused_conv(node: ir.Node) -> Sequence[tuple[ir.DataType, ir.Shape | None]]:
    x, w = node.inputs[0], node.inputs[1]
    dtype = x.dtype if x is not None and x.dtype is not None else ir.DataType.FLOAT
    if x is None or w is None or x.shape is None or w.shape is None:
        return [(dtype, None)]
    spatial = len(x.shape) - 2
    kernel = attr(node, "kernel_shape", None) or list(w.shape)[2:]
    strides = attr(node, "strides", None) or [1] * spatial
    dilations = attr(node, "dilations", None) or [1] * spatial
    pads = attr(node, "pads", None) or [0] * (2 * spatial)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    dims: list[int | ir.SymbolicDim] = [x.shape[0], w.shape[0]]
    for i in range(spatial):
        size, k = x.shape[2 + i], kernel[i]
        if not isinstance(size, int) or not isinstance(k, int):
            dims.append(ir.SymbolicDim(None))
        else:
            dims.append(_conv_out_dim(size, k, strides[i], dilations[i], pads[i] + pads[i + spatial], auto_pad))
    return [(dtype, ir.Shape(dims))]


def infer_fused_matmul(node: ir.Node) -> Sequence[tuple[ir.DataType, ir.Shape | None]]:
    a, b = node.inputs[0], node.inputs[1]
    dtype = a.dtype if a is not None and a.dtype is not None else ir.DataType.FLOAT
    if a is None or b is None or a.shape is None or b.shape is None:
        return [(dtype, None)]
    sa: list[int | ir.SymbolicDim] = list(a.shape)
    sb: list[int | ir.SymbolicDim] = list(b.shape)
    if len(sa) < 2 or len(sb) < 2:
        return [(dtype, None)]  # vector operands: left to the verifier's consistency check
    batch_a, batch_b = sa[:-2], sb[:-2]
    n = max(len(batch_a), len(batch_b))
    one: list[int | ir.SymbolicDim] = [1]
    batch_a = one * (n - len(batch_a)) + batch_a
    batch_b = one * (n - len(batch_b)) + batch_b
    batch = [db if da == 1 else da for da, db in zip(batch_a, batch_b)]
    return [(dtype, ir.Shape([*batch, sa[-2], sb[-1]]))]


# ------------------------------------------------------------------ kernels


@register("FusedConv", CACC_DOMAIN, infer=infer_fused_conv)
def fused_conv(node: ir.Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    conv = lookup("", "Conv")
    if conv is None:
        raise RuntimeError("Conv kernel is not registered")
    (y,) = conv.kernel(node, inputs)
    return [apply_activation(node, y)]


@register("FusedMatMul", CACC_DOMAIN, infer=infer_fused_matmul)
def fused_matmul(node: ir.Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    a, b = inputs[0], inputs[1]
    if a is None or b is None:
        raise ValueError("FusedMatMul needs A and B")
    y = np.matmul(a, b)
    bias = inputs[2] if len(inputs) > 2 else None
    if bias is not None:
        y = y + bias
    return [apply_activation(node, y)]
