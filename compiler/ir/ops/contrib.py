"""ONNX Runtime contrib ops (domain ``com.microsoft``) that cacc emits for ORT.

``com.microsoft::MatMulNBits(A, B, scales, [zero_points], [g_idx], [bias])``
    ``Y = A @ dequant(B)^T (+ bias)`` with ``B`` quantized in blocks of ``block_size`` along K.
    ``B``: uint8 ``[N, ceil(K / block_size), block_size * bits / 8]``, codes packed low bits
    first along K; ``scales``: ``[N * n_blocks]`` (or ``[N, n_blocks]``) in A's dtype;
    ``zero_points``: uint8 packed the same way per row (``[N * ceil(n_blocks * bits / 8)]``), or
    unpacked in A's dtype, default ``2^(bits-1)``; ``bias``: ``[N]``. Attributes ``K``, ``N``,
    ``bits`` (2, 4, 8), ``block_size`` (power of two >= 16), ``accuracy_level`` (ignored here: the
    reference computes in A's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register
from compiler.ir.ops.registry import optional_input as _opt
from compiler.ir.ops.registry import required_input as _req

MS_DOMAIN = "com.microsoft"


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack ``bits``-bit codes stored low bits first in the last axis of uint8 ``packed``;
    returns the first ``count`` codes along that axis as int64."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count].astype(np.int64)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`unpack_codes`: pack non-negative codes along the last axis (zero-padded)."""
    per_byte = 8 // bits
    n = codes.shape[-1]
    padded = -(-n // per_byte) * per_byte
    c = np.zeros((*codes.shape[:-1], padded), np.uint8)
    c[..., :n] = codes
    c = c.reshape(*codes.shape[:-1], -1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(c << shifts, axis=-1).astype(np.uint8)


def dequantize_nbits(
    b: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    *,
    k: int,
    n: int,
    bits: int,
    block_size: int,
) -> np.ndarray:
    """The float weight ``[N, K]`` a MatMulNBits ``B`` / ``scales`` / ``zero_points`` encode."""
    blocks = -(-k // block_size)
    if b.shape != (n, blocks, block_size * bits // 8):
        raise ValueError(f"B has shape {list(b.shape)}, expected {[n, blocks, block_size * bits // 8]}")
    codes = unpack_codes(b, bits, block_size).reshape(n, blocks * block_size)
    s = scales.reshape(n, blocks)
    if zero_points is None:
        zp = np.full((n, blocks), 1 << (bits - 1), np.float64)
    elif zero_points.dtype == np.uint8:
        zp = unpack_codes(zero_points.reshape(n, -1), bits, blocks).astype(np.float64)
    else:
        zp = zero_points.reshape(n, blocks).astype(np.float64)
    cols = np.arange(blocks * block_size) // block_size
    w = (codes - zp[:, cols]).astype(s.dtype) * s[:, cols]
    return w[:, :k]


def infer_matmul_nbits(node: ir.Node) -> Sequence[tuple[ir.DataType, ir.Shape | None]]:
    a = node.inputs[0]
    dtype = a.dtype if a is not None and a.dtype is not None else ir.DataType.FLOAT
    if a is None or a.shape is None:
        return [(dtype, None)]
    dims: list[int | ir.SymbolicDim] = [*list(a.shape)[:-1], int(attr(node, "N", 0))]
    return [(dtype, ir.Shape(dims))]


@register("MatMulNBits", MS_DOMAIN, infer=infer_matmul_nbits)
def matmul_nbits(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """``A @ dequant(B)^T (+ bias)`` (see the module docstring)."""
    a, b, scales = (_req(inputs, i, "MatMulNBits") for i in range(3))
    if _opt(inputs, 4) is not None:
        raise ValueError("MatMulNBits with g_idx is not supported")
    k, n = int(attr(node, "K", 0)), int(attr(node, "N", 0))
    bits, block = int(attr(node, "bits", 4)), int(attr(node, "block_size", 0))
    if a.shape[-1] != k:
        raise ValueError(f"A's last dimension {a.shape[-1]} is not K={k}")
    if bits not in (2, 4, 8) or block < 16 or block & (block - 1):
        raise ValueError(f"unsupported bits={bits} / block_size={block}")
    w = dequantize_nbits(b, scales, _opt(inputs, 3), k=k, n=n, bits=bits, block_size=block)
    # a contiguous [K, N] operand, as a DequantizeLinear -> MatMul computes it: the same BLAS call, the same bits
    y = np.matmul(a, np.ascontiguousarray(w.T, dtype=a.dtype))
    bias = _opt(inputs, 5)
    if bias is not None:
        y = y + bias
    return [y.astype(a.dtype, copy=False)]
