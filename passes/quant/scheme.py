"""The quantizer formula and its parameters.

Symmetric: ``x_q = round(clamp(x / S, -2^(b-1), 2^(b-1) - 1))`` with ``S = max|x| / (2^(b-1) - 1)``.
Asymmetric (unsigned by default): ``x_q = round(clamp(x / S + Z, 0, 2^b - 1))`` with
``S = (hi - lo) / (2^b - 1)`` and ``Z = round(-lo / S)``, the range widened to contain 0 so
that 0 is exact. Rounding is half-to-even, like ONNX ``QuantizeLinear``, and
``dequantize(q) = (q - Z) * S`` is ONNX ``DequantizeLinear``; the IR's Q/DQ nodes therefore
compute exactly what these functions compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

_DTYPES = {
    (8, True): ir.DataType.INT8,
    (8, False): ir.DataType.UINT8,
    (4, True): ir.DataType.INT4,
    (4, False): ir.DataType.UINT4,
    (2, True): ir.DataType.INT2,
    (2, False): ir.DataType.UINT2,
    (16, True): ir.DataType.INT16,
    (16, False): ir.DataType.UINT16,
}

#: Smallest scale used, so that an all-zero tensor still quantizes (to zeros).
MIN_SCALE = 1e-12


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit integer: ``(-2^(b-1), 2^(b-1) - 1)`` or ``(0, 2^b - 1)``."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quant_dtype(bits: int, signed: bool) -> ir.DataType:
    """The ONNX element type storing ``bits``-bit (un)signed integers."""
    try:
        return _DTYPES[(bits, signed)]
    except KeyError:
        raise ValueError(f"no ONNX integer type for {bits}-bit {'signed' if signed else 'unsigned'} values") from None


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of a quantized tensor (arrays broadcastable against it)."""

    scale: np.ndarray  #: float32
    zero_point: np.ndarray  #: int64 (stored in the quantized dtype by the rewrites)
    bits: int
    signed: bool

    @property
    def symmetric(self) -> bool:
        """Whether every zero point is 0."""
        return not np.any(self.zero_point)


def scale_zero_point(
    lo: np.ndarray | float, hi: np.ndarray | float, bits: int, *, symmetric: bool, signed: bool | None = None
) -> QuantParams:
    """Parameters covering ``[lo, hi]`` (elementwise for per-channel / per-group ranges).

    ``signed`` defaults to ``symmetric`` (symmetric int, asymmetric uint).
    """
    signed = symmetric if signed is None else signed
    lo_a = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi_a = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    qmin, qmax = qrange(bits, signed)
    if symmetric:
        scale = np.maximum(np.maximum(-lo_a, hi_a) / ((1 << (bits - 1)) - 1), MIN_SCALE)
        zero = np.zeros_like(scale, dtype=np.int64) + (0 if signed else 1 << (bits - 1))
    else:
        scale = np.maximum((hi_a - lo_a) / (qmax - qmin), MIN_SCALE)
        zero = np.clip(np.rint(qmin - lo_a / scale), qmin, qmax).astype(np.int64)
    return QuantParams(scale.astype(np.float32), zero, bits, signed)


def quantize(x: np.ndarray, p: QuantParams) -> np.ndarray:
    """``round(clamp(x / S + Z, qmin, qmax))`` as int64 (half to even, like ONNX)."""
    qmin, qmax = qrange(p.bits, p.signed)
    y = x.astype(np.float32) / p.scale + p.zero_point.astype(np.float32)
    return np.clip(np.rint(y), qmin, qmax).astype(np.int64)


def dequantize(q: np.ndarray, p: QuantParams) -> np.ndarray:
    """``(q - Z) * S`` as float32."""
    return ((q - p.zero_point).astype(np.float32) * p.scale).astype(np.float32)


def weight_params(
    w: np.ndarray, axis: int, bits: int, *, symmetric: bool = True, group_size: int = 0, reduce_axis: int | None = None
) -> QuantParams:
    """Per-channel (``group_size == 0``) or per-group min/max parameters of a weight.

    ``axis`` is the output-channel axis. Per-channel parameters have shape ``[w.shape[axis]]``
    broadcast along ``axis``; per-group ones split ``reduce_axis`` (the input-channel axis) into
    groups of ``group_size`` and have ``w``'s shape with ``ceil(size / group_size)`` on that axis
    (the ONNX blocked layout, ``block_size = group_size``).
    """
    axis %= w.ndim
    if group_size <= 0:
        others = tuple(i for i in range(w.ndim) if i != axis)
        lo, hi = w.min(axis=others, keepdims=True), w.max(axis=others, keepdims=True)
        return scale_zero_point(lo, hi, bits, symmetric=symmetric)
    if reduce_axis is None:
        raise ValueError("group quantization needs reduce_axis (the axis split into groups)")
    r = reduce_axis % w.ndim
    n = w.shape[r]
    groups = -(-n // group_size)
    padded = (
        np.concatenate([w, np.take(w, [n - 1] * (groups * group_size - n), axis=r)], axis=r) if n % group_size else w
    )
    shape = list(padded.shape)
    shape[r : r + 1] = [groups, group_size]
    g = padded.reshape(shape)
    lo, hi = g.min(axis=r + 1), g.max(axis=r + 1)
    return scale_zero_point(lo, hi, bits, symmetric=symmetric)


def expand_groups(p: QuantParams, axis: int, group_size: int, length: int) -> QuantParams:
    """Repeat per-group parameters ``group_size`` times along ``axis`` (cut to ``length``) so they
    broadcast against the full tensor."""

    def rep(a: np.ndarray) -> np.ndarray:
        return np.take(np.repeat(a, group_size, axis=axis), np.arange(length), axis=axis)

    return QuantParams(rep(p.scale), rep(p.zero_point), p.bits, p.signed)


def quantize_weight(
    w: np.ndarray, out_axis: int, reduce_axis: int, bits: int, *, symmetric: bool = True, group_size: int = 0
) -> tuple[np.ndarray, QuantParams]:
    """Round-to-nearest weight quantization: ``(q, params)`` with per-channel (``group_size == 0``) or
    blocked parameters, as :func:`weight_params` lays them out."""
    p = weight_params(w, out_axis, bits, symmetric=symmetric, group_size=group_size, reduce_axis=reduce_axis)
    full = expand_groups(p, reduce_axis % w.ndim, group_size, w.shape[reduce_axis]) if group_size > 0 else p
    return quantize(w, full), p
