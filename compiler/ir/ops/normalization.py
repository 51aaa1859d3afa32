"""Normalization ONNX ops: BatchNormalization, LayerNormalization, InstanceNormalization,
GroupNormalization, LpNormalization, and Softmax / LogSoftmax / Hardmax (opset-13 semantics)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register
from compiler.ir.ops.registry import required_input as _req


def _channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against an ``[N, C, ...]`` tensor."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _stash(node: ir.Node, x: np.ndarray) -> np.dtype:
    """The computation dtype for ``stash_type`` (default float32), never narrower than ``x``."""
    stash = ir.DataType(int(attr(node, "stash_type", 1))).numpy()
    return np.promote_types(stash, x.dtype) if np.issubdtype(x.dtype, np.floating) else np.dtype(stash)


@register("BatchNormalization")
def batch_norm(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX BatchNormalization in inference mode (running statistics)."""
    x = _req(inputs, 0, "BatchNormalization")
    scale, bias, mean, var = (_req(inputs, i, "BatchNormalization") for i in range(1, 5))
    if attr(node, "training_mode", 0):
        raise ValueError("BatchNormalization training_mode=1 is not supported")
    eps = x.dtype.type(attr(node, "epsilon", 1e-5))
    d = x.ndim
    inv = (_channel(scale, d) / np.sqrt(_channel(var, d) + eps)).astype(x.dtype, copy=False)
    y = (x - _channel(mean, d).astype(x.dtype)) * inv + _channel(bias, d).astype(x.dtype)
    return [y.astype(x.dtype, copy=False), mean, var]


@register("LayerNormalization")
def layer_norm(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX LayerNormalization (axis, epsilon, stash_type); outputs Y, Mean, InvStdDev."""
    x = _req(inputs, 0, "LayerNormalization")
    scale = _req(inputs, 1, "LayerNormalization")
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(attr(node, "axis", -1))
    if axis < 0:
        axis += x.ndim
    dt = _stash(node, x)
    eps = dt.type(attr(node, "epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    xs = x.astype(dt, copy=False)
    mean = xs.mean(axis=axes, keepdims=True, dtype=dt)
    centered = xs - mean
    var = (centered * centered).mean(axis=axes, keepdims=True, dtype=dt)
    inv_std = dt.type(1) / np.sqrt(var + eps)
    y = (centered * inv_std).astype(x.dtype, copy=False) * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype, copy=False), mean, inv_std]


def _normalize(xs: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mean = xs.mean(axis=axes, keepdims=True, dtype=xs.dtype)
    centered = xs - mean
    var = (centered * centered).mean(axis=axes, keepdims=True, dtype=xs.dtype)
    return centered / np.sqrt(var + xs.dtype.type(eps))


@register("InstanceNormalization")
def instance_norm(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX InstanceNormalization: per (n, c) statistics over the spatial dims."""
    x, scale, bias = (_req(inputs, i, "InstanceNormalization") for i in range(3))
    y = _normalize(x, tuple(range(2, x.ndim)), attr(node, "epsilon", 1e-5))
    return [(y * _channel(scale, x.ndim) + _channel(bias, x.ndim)).astype(x.dtype, copy=False)]


@register("GroupNormalization")
def group_norm(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX GroupNormalization: scale/bias per channel (opset 21) or per group (opset 18), told by their size."""
    x, scale, bias = (_req(inputs, i, "GroupNormalization") for i in range(3))
    groups = int(attr(node, "num_groups", 0))
    n, c = x.shape[:2]
    if groups <= 0 or c % groups:
        raise ValueError(f"GroupNormalization: {c} channels do not split into num_groups={groups}")
    dt = _stash(node, x)
    xg = x.astype(dt).reshape(n, groups, -1)
    y = _normalize(xg, (2,), attr(node, "epsilon", 1e-5)).reshape(x.shape)
    if scale.size == groups and groups != c:  # opset 18: one scale per group
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    y = y.astype(x.dtype) * _channel(scale, x.ndim) + _channel(bias, x.ndim)
    return [y.astype(x.dtype, copy=False)]


@register("LpNormalization")
def lp_norm(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX LpNormalization (``axis`` = -1, ``p`` = 2)."""
    x = _req(inputs, 0, "LpNormalization")
    axis, p = int(attr(node, "axis", -1)), int(attr(node, "p", 2))
    norm = np.abs(x).sum(axis=axis, keepdims=True) if p == 1 else np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return [(x / norm).astype(x.dtype, copy=False)]


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along ``axis`` in ``x``'s dtype."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@register("Softmax")
def softmax_kernel(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Softmax (opset ≥ 13: one ``axis``, default -1)."""
    return [softmax(_req(inputs, 0, "Softmax"), int(attr(node, "axis", -1)))]


@register("LogSoftmax")
def log_softmax(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX LogSoftmax (opset ≥ 13: one ``axis``, default -1)."""
    x = _req(inputs, 0, "LogSoftmax")
    axis = int(attr(node, "axis", -1))
    shifted = x - x.max(axis=axis, keepdims=True)
    return [shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))]


@register("Hardmax")
def hardmax(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Hardmax (opset ≥ 13): 1 at the first maximum along ``axis``."""
    x = _req(inputs, 0, "Hardmax")
    axis = int(attr(node, "axis", -1))
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return [y]
