"""Quantization ONNX ops: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked),
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv.

Quantization rounds half to even and saturates to the output type's range
(uint8 / int8 / uint16 / int16 / int32 / uint4 / int4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.nn import conv
from compiler.ir.ops.registry import Inputs, attr, register
from compiler.ir.ops.registry import optional_input as _opt
from compiler.ir.ops.registry import required_input as _req

_INT_RANGES = {"int4": (-8, 7), "uint4": (0, 15), "int2": (-2, 1), "uint2": (0, 3)}


def int_range(dtype: np.dtype) -> tuple[int, int]:
    """``(min, max)`` representable by an integer quantized dtype (including int4 / uint4)."""
    dtype = np.dtype(dtype)
    if dtype.name in _INT_RANGES:
        return _INT_RANGES[dtype.name]
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def saturate_round(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round half to even, clip to ``dtype``'s range and cast."""
    lo, hi = int_range(dtype)
    return np.clip(np.rint(y), lo, hi).astype(dtype)


def broadcast_param(p: np.ndarray, x: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """Shape a scale / zero-point to broadcast against ``x``: scalar, per-axis (1-D) or blocked (same rank)."""
    if p.size == 1 and block_size == 0:
        return p.reshape(())
    axis = axis + x.ndim if axis < 0 else axis
    if block_size > 0:
        full = np.repeat(p, block_size, axis=axis)
        return np.take(full, np.arange(x.shape[axis]), axis=axis)
    if p.ndim != 1 or p.shape[0] != x.shape[axis]:
        raise ValueError(f"quantization parameter of shape {list(p.shape)} does not match axis {axis} of {x.shape}")
    return p.reshape([-1 if i == axis else 1 for i in range(x.ndim)])


@register("QuantizeLinear")
def quantize_linear(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX QuantizeLinear: ``saturate(round(x / scale) + zero_point)``; axis, block_size, output_dtype."""
    x, scale = _req(inputs, 0, "QuantizeLinear"), _req(inputs, 1, "QuantizeLinear")
    zp = _opt(inputs, 2)
    axis, block = int(attr(node, "axis", 1)), int(attr(node, "block_size", 0))
    if zp is not None:
        out_dtype = zp.dtype
    else:
        code = int(attr(node, "output_dtype", 0))
        out_dtype = ir.DataType(code).numpy() if code else np.dtype(np.uint8)
    s = broadcast_param(scale, x, axis, block).astype(x.dtype, copy=False)
    y = np.rint(x / s).astype(np.float64)
    if zp is not None:
        y = y + broadcast_param(zp, x, axis, block).astype(np.float64)
    return [saturate_round(y, out_dtype)]


@register("DequantizeLinear")
def dequantize_linear(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX DequantizeLinear: ``(x - zero_point) * scale`` in the scale's dtype; axis, block_size."""
    x, scale = _req(inputs, 0, "DequantizeLinear"), _req(inputs, 1, "DequantizeLinear")
    zp = _opt(inputs, 2)
    axis, block = int(attr(node, "axis", 1)), int(attr(node, "block_size", 0))
    xi = x.astype(np.int64) if x.dtype.kind in "iub" or x.dtype.name in _INT_RANGES else x.astype(scale.dtype)
    if zp is not None:
        xi = xi - broadcast_param(zp, x, axis, block).astype(xi.dtype)
    return [(xi.astype(scale.dtype) * broadcast_param(scale, x, axis, block)).astype(scale.dtype, copy=False)]


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX DynamicQuantizeLinear → (uint8 y, float32 scale, uint8 zero_point), range always containing 0."""
    x = _req(inputs, 0, "DynamicQuantizeLinear").astype(np.float32, copy=False)
    lo = np.float32(min(0.0, float(x.min()) if x.size else 0.0))
    hi = np.float32(max(0.0, float(x.max()) if x.size else 0.0))
    scale = np.float32((hi - lo) / np.float32(255))
    if scale == 0:
        return [np.zeros(x.shape, np.uint8), np.array(scale, np.float32), np.array(0, np.uint8)]
    zp = saturate_round(np.asarray(np.float32(0) - lo / scale), np.dtype(np.uint8))
    y = saturate_round(np.rint(x / scale) + zp.astype(np.float32), np.dtype(np.uint8))
    return [y, np.array(scale, np.float32), np.asarray(zp)]


def _centered(x: np.ndarray, zp: np.ndarray | None, shape: Sequence[int] | None = None) -> np.ndarray:
    xi = x.astype(np.int32)
    if zp is None:
        return xi
    z = zp.astype(np.int32)
    return xi - (z.reshape(shape) if shape is not None and z.size > 1 else z.reshape(()) if z.size == 1 else z)


@register("MatMulInteger")
def matmul_integer(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX MatMulInteger → int32; ``a_zero_point`` per-tensor or per-row, ``b_zero_point`` per-column."""
    a, b = _req(inputs, 0, "MatMulInteger"), _req(inputs, 1, "MatMulInteger")
    ac = _centered(a, _opt(inputs, 2), (-1, 1))
    bc = _centered(b, _opt(inputs, 3))
    return [np.matmul(ac, bc).astype(np.int32)]


@register("QLinearMatMul")
def qlinear_matmul(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX QLinearMatMul: integer matmul requantized by ``a_scale * b_scale / y_scale``."""
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (_req(inputs, i, "QLinearMatMul") for i in range(8))
    acc = np.matmul(_centered(a, a_zp, (-1, 1)), _centered(b, b_zp)).astype(np.float64)
    mult = a_s.astype(np.float64) * b_s.astype(np.float64) / y_s.astype(np.float64)
    return [saturate_round(np.rint(acc * mult.astype(np.float32)) + y_zp.astype(np.float64), y_zp.dtype)]


def _conv_int(
    x: np.ndarray, x_zp: np.ndarray | None, w: np.ndarray, w_zp: np.ndarray | None, node: ir.Node
) -> np.ndarray:
    xc = _centered(x, x_zp)
    wc = _centered(w, w_zp, (-1,) + (1,) * (w.ndim - 1))
    return conv(xc, wc, None, node, acc_dtype=np.dtype(np.int32))


@register("ConvInteger")
def conv_integer(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ConvInteger → int32 (padding is the input zero point)."""
    x, w = _req(inputs, 0, "ConvInteger"), _req(inputs, 1, "ConvInteger")
    return [_conv_int(x, _opt(inputs, 2), w, _opt(inputs, 3), node)]


@register("QLinearConv")
def qlinear_conv(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX QLinearConv: integer conv (+ int32 bias) requantized by ``x_scale * w_scale / y_scale``."""
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (_req(inputs, i, "QLinearConv") for i in range(8))
    bias = _opt(inputs, 8)
    acc = _conv_int(x, x_zp, w, w_zp, node)
    spatial = (1,) * (x.ndim - 2)
    if bias is not None:
        acc = acc + bias.astype(np.int32).reshape((1, -1, *spatial))
    mult = (x_s.astype(np.float64) * w_s.astype(np.float64) / y_s.astype(np.float64)).astype(np.float32)
    mult = mult.reshape((1, -1, *spatial)) if mult.size > 1 else mult.reshape(())
    y = np.rint(acc.astype(np.float64) * mult) + y_zp.astype(np.float64)
    return [saturate_round(y, y_zp.dtype)]
