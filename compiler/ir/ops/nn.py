"""Neural-network ONNX ops: Conv, ConvTranspose, MatMul, Gemm, pooling, Flatten.

Convolutions and pools share one windowing scheme: the input is padded once, then for
every kernel offset a strided view of the padded input gives the values that offset
sees at each output position. Convolution stacks those views into columns (im2col)
and does one batched matmul per group; depthwise convolution accumulates the views
directly, pools reduce them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register
from compiler.ir.ops.registry import required_input as _req

# ------------------------------------------------------------------ window geometry


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry over the spatial dims: kernel, strides, dilations, pads, output size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out: tuple[int, ...]


def window(node: ir.Node, spatial: Sequence[int], kernel: Sequence[int], *, ceil_mode: bool = False) -> Window:
    """Resolve ``strides`` / ``dilations`` / ``pads`` / ``auto_pad`` of ``node`` for input size ``spatial``."""
    n = len(spatial)
    strides = list(attr(node, "strides", None) or [1] * n)
    dilations = list(attr(node, "dilations", None) or [1] * n)
    pads = list(attr(node, "pads", None) or [0] * (2 * n))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    begin, end, out = [], [], []
    for i in range(n):
        size, k, s, d = spatial[i], kernel[i], strides[i], dilations[i]
        eff = d * (k - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max(0, (o - 1) * s + eff - size)
            small = total // 2
            b, e = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
        elif auto_pad == "VALID":
            b, e = 0, 0
            o = (size - eff) // s + 1
        elif auto_pad in ("NOTSET", ""):
            b, e = pads[i], pads[i + n]
            span = size + b + e - eff
            if ceil_mode:
                o = -(-span // s) + 1
                if (o - 1) * s >= size + b:  # the last window must start inside the input or left pad
                    o -= 1
            else:
                o = span // s + 1
        else:
            raise ValueError(f"unknown auto_pad '{auto_pad}'")
        begin.append(b)
        end.append(e)
        out.append(max(o, 0))
    return Window(tuple(kernel), tuple(strides), tuple(dilations), tuple(begin), tuple(end), tuple(out))


def pad_spatial(x: np.ndarray, w: Window, value: float | int = 0) -> np.ndarray:
    """Pad the spatial dims of ``x`` (N, C, *spatial) so that every window of ``w`` fits."""
    widths = [(0, 0), (0, 0)]
    for i, size in enumerate(x.shape[2:]):
        need = (w.out[i] - 1) * w.strides[i] + w.dilations[i] * (w.kernel[i] - 1) + 1
        end = max(need - size - w.pads_begin[i], w.pads_end[i], 0)
        widths.append((w.pads_begin[i], end))
    if all(b == 0 and e == 0 for b, e in widths):
        return x
    return np.pad(x, widths, mode="constant", constant_values=value)


def window_views(xp: np.ndarray, w: Window) -> list[np.ndarray]:
    """For each kernel offset (row-major), the strided view ``[N, C, *out]`` of padded ``xp`` it sees."""
    views = []
    for offset in itertools.product(*(range(k) for k in w.kernel)):
        idx: list[slice] = [slice(None), slice(None)]
        for i, k in enumerate(offset):
            start = k * w.dilations[i]
            idx.append(slice(start, start + (w.out[i] - 1) * w.strides[i] + 1, w.strides[i]))
        views.append(xp[tuple(idx)])
    return views


# ------------------------------------------------------------------ convolution


def conv(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, node: ir.Node, acc_dtype: np.dtype | None = None
) -> np.ndarray:
    """N-D grouped convolution of ``x`` [N, C, *S] by ``weight`` [M, C/group, *K] with ``node``'s attributes.

    ``acc_dtype`` is the accumulation/output dtype (default: ``x``'s); the padding value is 0.
    """
    group = int(attr(node, "group", 1))
    kernel = list(attr(node, "kernel_shape", None) or weight.shape[2:])
    n, c = x.shape[:2]
    m, cg = weight.shape[:2]
    if c != cg * group or m % group:
        raise ValueError(f"Conv channel mismatch: input C={c}, weight {list(weight.shape)}, group={group}")
    dtype = np.dtype(acc_dtype) if acc_dtype is not None else x.dtype
    x = x.astype(dtype, copy=False)
    weight = weight.astype(dtype, copy=False)
    w = window(node, x.shape[2:], kernel)
    xp = pad_spatial(x, w)
    views = window_views(xp, w)
    mg = m // group
    ksize = len(views)
    if cg == 1 and mg == 1:  # depthwise: accumulate the shifted views, no im2col
        wk = weight.reshape(m, ksize)
        y = np.zeros((n, m, *w.out), dtype=dtype)
        bshape = (1, m) + (1,) * len(w.out)
        for i, v in enumerate(views):
            y += v * wk[:, i].reshape(bshape)
    else:
        p = int(np.prod(w.out)) if w.out else 1
        if ksize == 1:
            cols = views[0].reshape(n, group, cg, p)
        else:
            cols = np.stack(views, axis=2).reshape(n, group, cg * ksize, p)
        wmat = weight.reshape(group, mg, cg * ksize)
        y = np.matmul(wmat, cols).reshape(n, m, *w.out)
    if bias is not None:
        y = y + bias.astype(dtype, copy=False).reshape((1, m) + (1,) * len(w.out))
    return y


@register("Conv")
def conv_kernel(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Conv (N-D; group, strides, dilations, pads, auto_pad)."""
    x, wt = _req(inputs, 0, "Conv"), _req(inputs, 1, "Conv")
    bias = inputs[2] if len(inputs) > 2 else None
    return [conv(x, wt, bias, node)]


@register("ConvTranspose")
def conv_transpose(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ConvTranspose (N-D; group, strides, dilations, pads, output_padding, output_shape, auto_pad)."""
    x, weight = _req(inputs, 0, "ConvTranspose"), _req(inputs, 1, "ConvTranspose")
    bias = inputs[2] if len(inputs) > 2 else None
    group = int(attr(node, "group", 1))
    n, _c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    cg, mg = weight.shape[0] // group, weight.shape[1]
    m = mg * group
    kernel = list(attr(node, "kernel_shape", None) or weight.shape[2:])
    strides = list(attr(node, "strides", None) or [1] * nd)
    dilations = list(attr(node, "dilations", None) or [1] * nd)
    out_pad = list(attr(node, "output_padding", None) or [0] * nd)
    pads = list(attr(node, "pads", None) or [0] * (2 * nd))
    out_shape = attr(node, "output_shape", None)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    full = [strides[i] * (spatial[i] - 1) + out_pad[i] + dilations[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    if out_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-nd:] if out_shape is not None else [spatial[i] * strides[i] for i in range(nd)]
        for i in range(nd):
            total = full[i] - target[i]
            small = total // 2
            if auto_pad == "SAME_UPPER":
                pads[i], pads[i + nd] = small, total - small
            else:
                pads[i], pads[i + nd] = total - small, small
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    # y_full[n, g, mg, *full]; each kernel offset scatters x (mixed by W) at a strided offset.
    y = np.zeros((n, group, mg, *full), dtype=x.dtype)
    xg = x.reshape(n, group, cg, -1)
    wg = weight.reshape(group, cg, mg, *kernel)
    for offset in itertools.product(*(range(k) for k in kernel)):
        sel: tuple[slice | int, ...] = (slice(None), slice(None), slice(None), *offset)
        wk = wg[sel]  # [G, cg, mg]
        contrib = np.matmul(np.swapaxes(wk, 1, 2), xg).reshape(n, group, mg, *spatial)
        idx: list[slice] = [slice(None)] * 3
        for i, k in enumerate(offset):
            start = k * dilations[i]
            idx.append(slice(start, start + strides[i] * (spatial[i] - 1) + 1, strides[i]))
        y[tuple(idx)] += contrib
    y = y.reshape(n, m, *full)
    # crop pads (negative room is zero-filled)
    crop: list[slice] = [slice(None), slice(None)]
    widths = [(0, 0), (0, 0)]
    for i in range(nd):
        b, e = pads[i], pads[i + nd]
        size = full[i] - b - e
        crop.append(slice(max(b, 0), max(b, 0) + size))
        widths.append((max(-b, 0), max(size - (full[i] - max(b, 0)), 0)))
    y = np.pad(y, widths) if any(w != (0, 0) for w in widths) else y
    y = y[tuple(crop)]
    if bias is not None:
        y = y + bias.reshape((1, m) + (1,) * nd)
    return [np.ascontiguousarray(y)]


# ------------------------------------------------------------------ matmul / gemm


@register("MatMul")
def matmul(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX MatMul (numpy ``matmul`` semantics)."""
    return [np.matmul(_req(inputs, 0, "MatMul"), _req(inputs, 1, "MatMul"))]


@register("Gemm")
def gemm(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Gemm: ``alpha * A' @ B' + beta * C`` with ``transA`` / ``transB``."""
    a, b = _req(inputs, 0, "Gemm"), _req(inputs, 1, "Gemm")
    c = inputs[2] if len(inputs) > 2 else None
    if attr(node, "transA", 0):
        a = a.T
    if attr(node, "transB", 0):
        b = b.T
    alpha, beta = a.dtype.type(attr(node, "alpha", 1.0)), a.dtype.type(attr(node, "beta", 1.0))
    y = np.matmul(a, b)
    if alpha != 1:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1 else c)
    return [y.astype(a.dtype, copy=False)]


# ------------------------------------------------------------------ pooling


def _pool_window(node: ir.Node, x: np.ndarray) -> Window:
    kernel = attr(node, "kernel_shape", None)
    if kernel is None:
        raise ValueError("pooling needs attribute 'kernel_shape'")
    return window(node, x.shape[2:], list(kernel), ceil_mode=bool(attr(node, "ceil_mode", 0)))


def _max_pool_indices(x: np.ndarray, w: Window, best: np.ndarray, node: ir.Node) -> np.ndarray:
    """Flat input indices (row-major, or column-major spatial with ``storage_order=1``) of each window's max."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    kpos = np.unravel_index(best, w.kernel)  # kernel offset per output position
    coords = []
    for i in range(nd):
        out_i = np.arange(w.out[i]).reshape([-1 if j == i else 1 for j in range(nd)])
        coords.append(out_i * w.strides[i] + kpos[i] * w.dilations[i] - w.pads_begin[i])
    order: Literal["C", "F"] = "F" if attr(node, "storage_order", 0) else "C"
    clipped = tuple(np.clip(np.broadcast_to(ci, best.shape), 0, s - 1) for ci, s in zip(coords, spatial, strict=True))
    flat = np.ravel_multi_index(clipped, spatial, order=order)
    plane = int(np.prod(spatial))
    base = (np.arange(n).reshape(-1, 1) * c + np.arange(c).reshape(1, -1)) * plane
    return (flat + base.reshape((n, c) + (1,) * nd)).astype(np.int64)


@register("MaxPool")
def max_pool(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX MaxPool (pads, auto_pad, ceil_mode, dilations); optional ``Indices`` output (storage_order)."""
    x = _req(inputs, 0, "MaxPool")
    w = _pool_window(node, x)
    low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    views = window_views(pad_spatial(x, w, low), w)
    y = views[0].copy()
    want_indices = len(node.outputs) > 1 and node.outputs[1] is not None and bool(node.outputs[1].name)
    if not want_indices:
        for v in views[1:]:
            np.maximum(y, v, out=y)
        return [y]
    best = np.zeros(y.shape, dtype=np.int64)
    for i, v in enumerate(views[1:], start=1):
        better = v > y  # first maximum in window scan order wins
        y = np.where(better, v, y)
        best = np.where(better, i, best)
    return [y, _max_pool_indices(x, w, best, node)]


@register("AveragePool")
def average_pool(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX AveragePool (pads, auto_pad, ceil_mode, count_include_pad, dilations)."""
    x = _req(inputs, 0, "AveragePool")
    w = _pool_window(node, x)
    include_pad = bool(attr(node, "count_include_pad", 0))
    views = window_views(pad_spatial(x, w, 0), w)
    total = np.zeros(views[0].shape, dtype=x.dtype)
    for v in views:
        total += v
    # divisor: real elements, or (count_include_pad) elements inside the explicitly padded input
    ones = np.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    if include_pad:
        widths = [(0, 0), (0, 0), *zip(w.pads_begin, w.pads_end, strict=True)]
        explicit = np.pad(ones, widths, constant_values=1)
        pw = Window(w.kernel, w.strides, w.dilations, (0,) * len(w.kernel), (0,) * len(w.kernel), w.out)
        count_views = window_views(pad_spatial(explicit, pw, 0), pw)
    else:
        count_views = window_views(pad_spatial(ones, w, 0), w)
    count = np.zeros(count_views[0].shape, dtype=x.dtype)
    for v in count_views:
        count += v
    return [(total / np.maximum(count, x.dtype.type(1))).astype(x.dtype, copy=False)]


@register("LpPool")
def lp_pool(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX LpPool (``p`` = 2)."""
    x = _req(inputs, 0, "LpPool")
    p = x.dtype.type(attr(node, "p", 2))
    w = _pool_window(node, x)
    views = window_views(pad_spatial(np.abs(x), w, 0), w)
    total = np.zeros(views[0].shape, dtype=x.dtype)
    for v in views:
        total += v**p
    return [(total ** (x.dtype.type(1) / p)).astype(x.dtype, copy=False)]


@register("GlobalAveragePool")
def global_average_pool(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX GlobalAveragePool."""
    x = _req(inputs, 0, "GlobalAveragePool")
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)]


@register("GlobalMaxPool")
def global_max_pool(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX GlobalMaxPool."""
    x = _req(inputs, 0, "GlobalMaxPool")
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


@register("Flatten")
def flatten(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Flatten (``axis`` = 1, negative allowed): a 2-D result."""
    x = _req(inputs, 0, "Flatten")
    axis = int(attr(node, "axis", 1))
    if axis < 0:
        axis += x.ndim
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(rows, -1) if x.size else x.reshape(rows, int(np.prod(x.shape[axis:], dtype=np.int64)))]
