"""Tensor-manipulation ONNX ops: constants, shapes, reshaping, slicing, padding, creation.

Indexing ops (Gather*, Scatter*, TopK, NonZero, OneHot, ...) live in :mod:`indexing`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register
from compiler.ir.ops.registry import optional_input as _opt
from compiler.ir.ops.registry import required_input as _req


def ints(x: np.ndarray | None) -> list[int] | None:
    """A 1-D integer input as a Python list (``None`` stays ``None``)."""
    return None if x is None else [int(v) for v in np.asarray(x).reshape(-1)]


def _axis(a: int, ndim: int) -> int:
    if not -ndim <= a < max(ndim, 1):
        raise ValueError(f"axis {a} out of range for rank {ndim}")
    return a + ndim if a < 0 else a


def _axes_input_or_attr(node: ir.Node, inputs: Inputs, i: int) -> list[int] | None:
    """Axes given as input ``i`` (newer opsets) or as the ``axes`` attribute (older)."""
    from_input = ints(_opt(inputs, i))
    return from_input if from_input is not None else attr(node, "axes", None)


# ------------------------------------------------------------------ constants and shapes


@register("Constant")
def constant(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Constant from any of its ``value*`` attributes."""
    for name in node.attributes:
        if name == "value":
            return [np.asarray(attr(node, "value"))]
        if name == "value_float":
            return [np.array(attr(node, name), dtype=np.float32)]
        if name == "value_floats":
            return [np.array(attr(node, name), dtype=np.float32)]
        if name == "value_int":
            return [np.array(attr(node, name), dtype=np.int64)]
        if name == "value_ints":
            return [np.array(attr(node, name), dtype=np.int64)]
        if name == "value_string":
            return [np.array(attr(node, name), dtype=object)]
        if name == "value_strings":
            return [np.array(attr(node, name), dtype=object)]
    raise ValueError("Constant has no supported value attribute (sparse_value is not supported)")


@register("ConstantOfShape")
def constant_of_shape(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ConstantOfShape (``value``: a one-element tensor, default float32 0)."""
    shape = ints(_req(inputs, 0, "ConstantOfShape")) or []
    value = attr(node, "value", None)
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(shape, fill[0], dtype=fill.dtype)]


@register("Shape")
def shape(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Shape with ``start`` / ``end`` (clamped, negative allowed)."""
    x = _req(inputs, 0, "Shape")
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return [np.array(x.shape[slice(start, end)], dtype=np.int64)]


@register("Size")
def size(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Size (int64 scalar)."""
    return [np.array(_req(inputs, 0, "Size").size, dtype=np.int64)]


# ------------------------------------------------------------------ reshaping


@register("Reshape")
def reshape(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Reshape: ``0`` copies the input dim (unless ``allowzero``), ``-1`` is inferred."""
    x = _req(inputs, 0, "Reshape")
    target = ints(_req(inputs, 1, "Reshape")) or []
    if not attr(node, "allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


@register("Transpose")
def transpose(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Transpose (``perm`` defaults to reversing the dims)."""
    x = _req(inputs, 0, "Transpose")
    perm = attr(node, "perm", None)
    return [np.transpose(x, perm)]


@register("Squeeze")
def squeeze(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Squeeze (axes input from opset 13, attribute before; none → all size-1 dims)."""
    x = _req(inputs, 0, "Squeeze")
    axes = _axes_input_or_attr(node, inputs, 1)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in axes))]


@register("Unsqueeze")
def unsqueeze(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Unsqueeze (axes input from opset 13, attribute before; axes index the output)."""
    x = _req(inputs, 0, "Unsqueeze")
    axes = _axes_input_or_attr(node, inputs, 1)
    if axes is None:
        raise ValueError("Unsqueeze needs axes")
    out_rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(_axis(a, out_rank) for a in axes)))]


@register("Concat")
def concat(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Concat along ``axis``."""
    arrays = [x for x in inputs if x is not None]
    return [np.concatenate(arrays, axis=int(attr(node, "axis", 0)))]


@register("Split")
def split(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Split: sizes from the ``split`` input (13) / attribute (< 13), ``num_outputs`` (18), or equal parts."""
    x = _req(inputs, 0, "Split")
    axis = _axis(int(attr(node, "axis", 0)), x.ndim)
    sizes = ints(_opt(inputs, 1)) or attr(node, "split", None)
    dim = x.shape[axis]
    if sizes is None:
        parts = int(attr(node, "num_outputs", len(node.outputs)))
        chunk = -(-dim // parts)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]
    if sum(sizes) != dim:
        raise ValueError(f"Split sizes {sizes} do not add up to dim {dim}")
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@register("Slice")
def slice_(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Slice (starts, ends, axes, steps inputs; negative steps; out-of-range values clamp)."""
    x = _req(inputs, 0, "Slice")
    starts = ints(_req(inputs, 1, "Slice")) or []
    ends = ints(_req(inputs, 2, "Slice")) or []
    axes = ints(_opt(inputs, 3)) or list(range(len(starts)))
    steps = ints(_opt(inputs, 4)) or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        if step == 0:
            raise ValueError("Slice step cannot be 0")
        index[_axis(axis, x.ndim)] = slice(start, end, step)  # Python slices clamp exactly like ONNX
    return [x[tuple(index)]]


@register("Expand")
def expand(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Expand (bidirectional broadcast with the target shape)."""
    x = _req(inputs, 0, "Expand")
    target = ints(_req(inputs, 1, "Expand")) or []
    return [np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(target))))]


@register("Tile")
def tile(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Tile."""
    return [np.tile(_req(inputs, 0, "Tile"), ints(_req(inputs, 1, "Tile")) or [])]


@register("Pad")
def pad(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Pad: constant / reflect / edge / wrap; pads (and opset-18 ``axes``) as inputs, negative pads crop."""
    x = _req(inputs, 0, "Pad")
    mode = attr(node, "mode", "constant")
    pads = ints(_opt(inputs, 1)) or attr(node, "pads", None) or []
    value_in = _opt(inputs, 2)
    value = value_in.reshape(-1)[0] if value_in is not None and value_in.size else attr(node, "value", 0.0)
    axes = ints(_opt(inputs, 3))
    axes = [_axis(a, x.ndim) for a in axes] if axes is not None else list(range(x.ndim))
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    widths = [[0, 0] for _ in range(x.ndim)]
    for i, a in enumerate(axes):
        widths[a] = [pads[i], pads[i + len(axes)]]
    # negative pads crop first
    crop = tuple(slice(max(-b, 0), x.shape[d] - max(-e, 0)) for d, (b, e) in enumerate(widths))
    x = x[crop]
    pos = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        return [np.pad(x, pos, mode="constant", constant_values=np.asarray(value).astype(x.dtype))]
    if mode in ("reflect", "edge", "wrap"):
        return [np.pad(x, pos, mode=mode)]
    raise ValueError(f"Pad mode '{mode}' is not supported")


# ------------------------------------------------------------------ creation / misc


@register("Range")
def range_(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Range: ``max(ceil((limit - start) / delta), 0)`` elements of ``start + i * delta``."""
    start, limit, delta = (_req(inputs, i, "Range") for i in range(3))
    dtype = start.dtype
    count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    if np.issubdtype(dtype, np.integer):
        return [(start + np.arange(count, dtype=dtype) * delta).astype(dtype)]
    return [(start + np.arange(count, dtype=dtype) * delta).astype(dtype, copy=False)]


@register("Trilu")
def trilu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Trilu (``upper`` = 1; diagonal offset ``k`` input) over the last two dims."""
    x = _req(inputs, 0, "Trilu")
    k_in = _opt(inputs, 1)
    k = int(k_in.reshape(-1)[0]) if k_in is not None else 0
    return [np.triu(x, k) if attr(node, "upper", 1) else np.tril(x, k)]


@register("Einsum")
def einsum(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Einsum (via ``np.einsum``)."""
    eq = attr(node, "equation", None)
    if not eq:
        raise ValueError("Einsum needs attribute 'equation'")
    arrays = [x for x in inputs if x is not None]
    out = np.asarray(np.einsum(eq.replace(" ", ""), *arrays, optimize=len(arrays) > 2))
    return [out.astype(arrays[0].dtype, copy=False)]


@register("DepthToSpace")
def depth_to_space(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX DepthToSpace (``blocksize``, ``mode`` DCR / CRD)."""
    x = _req(inputs, 0, "DepthToSpace")
    b = int(attr(node, "blocksize", 0))
    n, c, h, w = x.shape
    if attr(node, "mode", "DCR") == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [t.reshape(n, c // (b * b), h * b, w * b)]


@register("SpaceToDepth")
def space_to_depth(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX SpaceToDepth (``blocksize``)."""
    x = _req(inputs, 0, "SpaceToDepth")
    b = int(attr(node, "blocksize", 0))
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return [t.reshape(n, c * b * b, h // b, w // b)]


@register("CumSum")
def cumsum(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX CumSum (``axis`` input; ``exclusive``, ``reverse``)."""
    x = _req(inputs, 0, "CumSum")
    axis = _axis(int(_req(inputs, 1, "CumSum").reshape(-1)[0]), x.ndim)
    y = np.flip(x, axis) if attr(node, "reverse", 0) else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    if attr(node, "exclusive", 0):
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)), np.delete(out, -1, axis=axis)], axis=axis)
    return [np.flip(out, axis) if attr(node, "reverse", 0) else out]
