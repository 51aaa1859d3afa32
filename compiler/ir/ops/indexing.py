"""Indexing ONNX ops: Gather, GatherElements, GatherND, ScatterND, ScatterElements, TopK,
NonZero, OneHot. Negative indices count from the end, as ONNX allows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register
from compiler.ir.ops.registry import required_input as _req


def _norm_index(idx: np.ndarray, dim: int | np.ndarray, op: str) -> np.ndarray:
    idx = idx.astype(np.int64, copy=False)
    out = np.where(idx < 0, idx + dim, idx)
    if out.size and (out.min() < 0 or np.any(out >= dim)):
        raise ValueError(f"{op}: index out of range")
    return out


@register("Gather")
def gather(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Gather along ``axis``."""
    x, idx = _req(inputs, 0, "Gather"), _req(inputs, 1, "Gather")
    axis = int(attr(node, "axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    return [np.take(x, _norm_index(idx, x.shape[axis], "Gather"), axis=axis)]


@register("GatherElements")
def gather_elements(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX GatherElements along ``axis``."""
    x, idx = _req(inputs, 0, "GatherElements"), _req(inputs, 1, "GatherElements")
    axis = int(attr(node, "axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    return [np.take_along_axis(x, _norm_index(idx, x.shape[axis], "GatherElements"), axis=axis)]


@register("GatherND")
def gather_nd(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX GatherND with ``batch_dims``."""
    x, idx = _req(inputs, 0, "GatherND"), _req(inputs, 1, "GatherND")
    b = int(attr(node, "batch_dims", 0))
    k = idx.shape[-1]
    batch_shape = x.shape[:b]
    nb = int(np.prod(batch_shape, dtype=np.int64))
    xb = x.reshape(nb, *x.shape[b:])
    ib = _norm_index(idx, np.array(x.shape[b : b + k]), "GatherND").reshape(nb, -1, k)
    rows = np.arange(nb)[:, None]
    out = xb[(rows, *(ib[..., j] for j in range(k)))]  # [nb, m, *x.shape[b+k:]]
    return [out.reshape(*idx.shape[:-1], *x.shape[b + k :])]


def _reducer(node: ir.Node) -> Callable[[np.ndarray, tuple[np.ndarray, ...], np.ndarray], None]:
    reduction = attr(node, "reduction", "none")
    ufuncs = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
    if reduction == "none":

        def assign(out: np.ndarray, index: tuple[np.ndarray, ...], values: np.ndarray) -> None:
            out[index] = values

        return assign
    if reduction not in ufuncs:
        raise ValueError(f"unknown scatter reduction '{reduction}'")
    ufunc = ufuncs[reduction]

    def accumulate(out: np.ndarray, index: tuple[np.ndarray, ...], values: np.ndarray) -> None:
        ufunc.at(out, index, values)

    return accumulate


@register("ScatterND")
def scatter_nd(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ScatterND (``reduction`` none / add / mul / max / min)."""
    x, idx, upd = (_req(inputs, i, "ScatterND") for i in range(3))
    out = x.copy()
    k = idx.shape[-1]
    flat = _norm_index(idx, np.array(x.shape[:k]), "ScatterND").reshape(-1, k)
    values = upd.reshape(flat.shape[0], *x.shape[k:])
    _reducer(node)(out, tuple(flat[:, j] for j in range(k)), values)
    return [out]


@register("ScatterElements")
def scatter_elements(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ScatterElements along ``axis`` (``reduction`` none / add / mul / max / min)."""
    x, idx, upd = (_req(inputs, i, "ScatterElements") for i in range(3))
    axis = int(attr(node, "axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    out = x.copy()
    full: list[np.ndarray] = list(np.indices(idx.shape, sparse=True))
    full[axis] = _norm_index(idx, x.shape[axis], "ScatterElements")
    index = tuple(np.broadcast_to(a, idx.shape) for a in full)
    _reducer(node)(out, index, upd)
    return [out]


@register("TopK")
def top_k(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX TopK (``K`` input; axis, largest, sorted). Equal values keep the lower index first."""
    x = _req(inputs, 0, "TopK")
    k = int(_req(inputs, 1, "TopK").reshape(-1)[0])
    axis = int(attr(node, "axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    n = x.shape[axis]
    if attr(node, "largest", 1):
        # stable ascending sort of the reversed axis, reversed back: descending, ties by lower index
        order = np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
        order = n - 1 - order
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return [np.take_along_axis(x, idx, axis=axis), idx]


@register("NonZero")
def non_zero(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX NonZero: int64 ``[rank, count]`` indices in row-major order."""
    x = _req(inputs, 0, "NonZero")
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


@register("OneHot")
def one_hot(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX OneHot (``axis`` = -1); negative indices count from ``depth``, out-of-range ones give all-off."""
    idx, depth_in, values = (_req(inputs, i, "OneHot") for i in range(3))
    depth = int(depth_in.reshape(-1)[0])
    axis = int(attr(node, "axis", -1))
    rank = idx.ndim + 1
    axis = axis + rank if axis < 0 else axis
    ids = idx.astype(np.int64)
    ids = np.where(ids < 0, ids + depth, ids)
    hot = np.expand_dims(ids, axis) == np.arange(depth).reshape([-1 if i == axis else 1 for i in range(rank)])
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return [np.where(hot, on, off).astype(values.dtype)]


@register("Compress")
def compress(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Compress (``axis`` optional: flattens when absent)."""
    x, cond = _req(inputs, 0, "Compress"), _req(inputs, 1, "Compress")
    axis = attr(node, "axis", None)
    return [np.compress(cond.astype(bool), x, axis=axis)]
