"""ONNX Resize (opsets 13–21): nearest / linear / cubic, applied one axis at a time (all three
are separable). Coordinate modes: half_pixel, half_pixel_symmetric, pytorch_half_pixel,
align_corners, asymmetric, tf_crop_and_resize. ``axes`` and ``keep_aspect_ratio_policy``
(opset 18) are honoured; ``antialias`` is not supported."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register


def _opt(inputs: Inputs, i: int) -> np.ndarray | None:
    x = inputs[i] if i < len(inputs) else None
    return x if x is not None and x.size else None


def source_coords(mode: str, out: int, size: int, scale: float, roi: tuple[float, float] | None) -> np.ndarray:
    """For each output index along an axis, the (fractional) input coordinate it samples."""
    x = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out / (scale * size)
        center = size / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if out > 1:
            return start * (size - 1) + x * (end - start) * (size - 1) / (out - 1)
        return np.full_like(x, 0.5 * (start + end) * (size - 1))
    raise ValueError(f"unknown coordinate_transformation_mode '{mode}'")


def _nearest(coords: np.ndarray, mode: str, scale: float) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.ceil(coords - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(coords + 0.5)
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    raise ValueError(f"unknown nearest_mode '{mode}'")


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Weights of taps ``x0-1 .. x0+2`` for fractional offset ``t`` (shape [out, 4])."""
    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=1)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def resize_axis(
    x: np.ndarray, axis: int, out: int, scale: float, node: ir.Node, roi: tuple[float, float] | None
) -> np.ndarray:
    """Resize ``x`` along one ``axis`` to ``out`` elements."""
    size = x.shape[axis]
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel")
    coords = source_coords(ctm, out, size, scale, roi)
    outside = (coords < 0) | (coords > size - 1) if ctm == "tf_crop_and_resize" else None
    if mode == "nearest":
        idx = _nearest(coords, attr(node, "nearest_mode", "round_prefer_floor"), scale)
        taps = [np.clip(idx, 0, size - 1).astype(np.int64)]
        weights = [np.ones(out)]
    elif mode == "linear":
        c = np.clip(coords, 0, size - 1)
        x0 = np.floor(c)
        t = c - x0
        taps = [x0.astype(np.int64), np.minimum(x0 + 1, size - 1).astype(np.int64)]
        weights = [1 - t, t]
    elif mode == "cubic":
        x0 = np.floor(coords)
        w = _cubic_weights(coords - x0, float(attr(node, "cubic_coeff_a", -0.75)))
        raw = [x0.astype(np.int64) + k for k in (-1, 0, 1, 2)]
        if attr(node, "exclude_outside", 0):
            inside = np.stack([(r >= 0) & (r < size) for r in raw], axis=1)
            w = np.where(inside, w, 0)
            w = w / w.sum(axis=1, keepdims=True)
        taps = [np.clip(r, 0, size - 1) for r in raw]
        weights = [w[:, k] for k in range(4)]
    else:
        raise ValueError(f"unknown Resize mode '{mode}'")
    bshape = [-1 if i == axis else 1 for i in range(x.ndim)]
    y = None
    for tap, wt in zip(taps, weights, strict=False):
        term = np.take(x, tap, axis=axis) * wt.astype(x.dtype).reshape(bshape)
        y = term if y is None else y + term
    if y is None:
        raise ValueError("Resize produced no taps")
    if outside is not None:
        y = np.where(outside.reshape(bshape), x.dtype.type(attr(node, "extrapolation_value", 0.0)), y)
    return y.astype(x.dtype, copy=False)


@register("Resize")
def resize(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Resize (inputs X, roi, scales, sizes; ``axes`` attribute from opset 18)."""
    x = inputs[0]
    if x is None:
        raise ValueError("Resize needs input 0")
    if attr(node, "antialias", 0):
        raise ValueError("Resize antialias=1 is not supported")
    roi, scales, sizes = _opt(inputs, 1), _opt(inputs, 2), _opt(inputs, 3)
    axes = [a + x.ndim if a < 0 else a for a in (attr(node, "axes", None) or range(x.ndim))]
    if sizes is not None:
        target = [int(s) for s in sizes.reshape(-1)]
        ratios = [target[i] / x.shape[a] for i, a in enumerate(axes)]
        policy = attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy in ("not_larger", "not_smaller"):
            r = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [r] * len(axes)
            target = [int(np.floor(r * x.shape[a] + 0.5)) for a in axes]
    elif scales is not None:
        ratios = [float(s) for s in scales.reshape(-1).astype(np.float32)]
        target = [int(np.floor(x.shape[a] * r)) for a, r in zip(axes, ratios, strict=False)]
    else:
        raise ValueError("Resize needs scales or sizes")
    roi_list = [float(v) for v in roi.reshape(-1)] if roi is not None else None
    y = x
    for i, a in enumerate(axes):
        if target[i] == x.shape[a] and ratios[i] == 1.0:
            continue
        r = (roi_list[i], roi_list[i + len(axes)]) if roi_list is not None else None
        y = resize_axis(y, a, target[i], ratios[i], node, r)
    return [y]
