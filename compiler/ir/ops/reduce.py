"""Reductions: Reduce* (``axes`` as attribute before opset 18 / ReduceSum 13, as input after;
both accepted), ``keepdims``, ``noop_with_empty_axes``; ArgMax / ArgMin (``select_last_index``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import Inputs, attr, register

Reducer = Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]


def reduce_axes(node: ir.Node, inputs: Inputs, ndim: int) -> tuple[int, ...] | None:
    """The normalized reduction axes, or ``None`` for "no-op" (empty axes with ``noop_with_empty_axes``).

    A no-op reduction still applies the op's elementwise part (``ReduceSumSquare`` squares,
    ``ReduceL1`` takes ``abs``, ...), as onnxruntime does.
    """
    axes_in = inputs[1] if len(inputs) > 1 else None
    axes = [int(a) for a in axes_in.reshape(-1)] if axes_in is not None else attr(node, "axes", None)
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return None
        return tuple(range(ndim))
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"reduction axis {a} out of range for rank {ndim}")
        out.append(a + ndim if a < 0 else a)
    return tuple(sorted(set(out)))


def _acc(x: np.ndarray) -> np.dtype:
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)


def _mean(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    return x.mean(axis=axes, keepdims=keep, dtype=_acc(x))


def _extreme(fn: Callable[..., np.ndarray], empty: float) -> Reducer:
    def red(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
        if x.size == 0 or any(x.shape[a] == 0 for a in axes):
            if np.issubdtype(x.dtype, np.integer):
                info = np.iinfo(x.dtype)
                fill: float = info.max if empty > 0 else info.min
            else:
                fill = empty
            shape = [1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes]
            return np.full(shape, fill, dtype=x.dtype)
        return fn(x, axis=axes, keepdims=keep)

    return red


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    m = x.max(axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.exp(x - m).sum(axis=axes, keepdims=True)) + m
    return out if keep else np.squeeze(out, axis=axes)


REDUCERS: dict[str, Reducer] = {
    "ReduceSum": lambda x, a, k: x.sum(axis=a, keepdims=k, dtype=x.dtype),
    "ReduceMean": _mean,
    "ReduceMax": _extreme(np.max, -np.inf),
    "ReduceMin": _extreme(np.min, np.inf),
    "ReduceProd": lambda x, a, k: x.prod(axis=a, keepdims=k, dtype=x.dtype),
    "ReduceL1": lambda x, a, k: np.abs(x).sum(axis=a, keepdims=k, dtype=x.dtype),
    "ReduceL2": lambda x, a, k: np.sqrt((x.astype(_acc(x)) ** 2).sum(axis=a, keepdims=k)),
    "ReduceSumSquare": lambda x, a, k: (x * x).sum(axis=a, keepdims=k, dtype=x.dtype),
    "ReduceLogSum": lambda x, a, k: np.log(x.astype(_acc(x)).sum(axis=a, keepdims=k)),
    "ReduceLogSumExp": _log_sum_exp,
}


def _register_reduce(op_type: str, fn: Reducer) -> None:
    def kernel(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
        x = inputs[0] if inputs else None
        if x is None:
            raise ValueError(f"{op_type} needs input 0")
        axes = reduce_axes(node, inputs, x.ndim)
        if axes is None:  # no-op: reduce over no axes (still applies e.g. the square of ReduceSumSquare)
            axes = ()
        keep = bool(attr(node, "keepdims", 1))
        with np.errstate(all="ignore"):
            out = np.asarray(fn(x, axes, keep))
        return [out.astype(x.dtype, copy=False)]

    kernel.__name__ = f"kernel_{op_type}"
    kernel.__doc__ = f"ONNX {op_type}."
    register(op_type)(kernel)


for _name, _fn in REDUCERS.items():
    _register_reduce(_name, _fn)


def _arg(node: ir.Node, inputs: Inputs, op: str, largest: bool) -> list[np.ndarray]:
    x = inputs[0] if inputs else None
    if x is None:
        raise ValueError(f"{op} needs input 0")
    axis = int(attr(node, "axis", 0))
    if axis < 0:
        axis += x.ndim
    fn = np.argmax if largest else np.argmin
    if attr(node, "select_last_index", 0):
        flipped = np.flip(x, axis=axis)
        idx = x.shape[axis] - 1 - fn(flipped, axis=axis)
    else:
        idx = fn(x, axis=axis)
    idx = idx.astype(np.int64)
    if attr(node, "keepdims", 1):
        idx = np.expand_dims(idx, axis)
    return [idx]


@register("ArgMax")
def arg_max(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ArgMax (axis, keepdims, select_last_index) → int64."""
    return _arg(node, inputs, "ArgMax", True)


@register("ArgMin")
def arg_min(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ArgMin (axis, keepdims, select_last_index) → int64."""
    return _arg(node, inputs, "ArgMin", False)
