"""Tensor-manipulation ops: shapes, reshapes, slicing, gathering, concatenation, padding.

Shape-only subgraphs (``Shape -> Gather -> Concat -> Reshape``) are evaluated at emit time
whenever the shapes are static: every op here folds with numpy when its inputs are known.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from tvm import relax, tirx

from backends.tvm.lowering.common import (
    Dim,
    EmitContext,
    Out,
    all_inputs_known,
    attr,
    input_at,
    int_list,
    lowering,
    norm_axis,
    require_const,
    scalar,
)
from compiler.errors import BackendError

R = relax.op


def _static(shape: list[Dim]) -> list[int] | None:
    return [int(d) for d in shape] if all(isinstance(d, int) for d in shape) else None


def _prod(dims: list[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out


def _value_or_expr(ctx: EmitContext, v: ir.Value) -> Out:
    known = ctx.const(v)
    return known if known is not None else ctx.expr(v)


def _first(node: ir.Node) -> ir.Value:
    x = node.inputs[0] if node.inputs else None
    if x is None:
        raise BackendError(f"{node.op_type} needs an input", node=node.name)
    return x


# ------------------------------------------------------------------ constants and shapes


@lowering("Constant")
def lower_constant(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Constant: always a known value."""
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        a = node.attributes.get(name)
        if a is None:
            continue
        if name == "value":
            return [np.asarray(a.value.numpy())]
        dtype = np.float32 if "float" in name else np.int64
        return [np.asarray(a.value, dtype=dtype)]
    raise BackendError("Constant without a supported value attribute", node=node.name)


@lowering("Shape")
def lower_shape(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Shape of a statically shaped tensor, as a known int64 array (with start / end)."""
    x = _first(node)
    shape = _static(ctx.shape(x))
    if shape is None:
        raise BackendError(f"Shape of '{x.name}' with symbolic dims is not supported", node=node.name)
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return [np.asarray(shape[slice(start, end)], dtype=np.int64)]


@lowering("Size")
def lower_size(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Number of elements of a statically shaped tensor."""
    shape = _static(ctx.shape(_first(node)))
    if shape is None:
        raise BackendError("Size with symbolic dims is not supported", node=node.name)
    return [np.asarray(math.prod(shape), dtype=np.int64)]


@lowering("ConstantOfShape")
def lower_constant_of_shape(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """ConstantOfShape with a known shape."""
    shape = int_list(require_const(ctx, node, 0, "shape"))
    value = attr(node, "value", None)
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(shape, fill[0], dtype=fill.dtype)]  # type: ignore[arg-type]


@lowering("Range")
def lower_range(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Range with known start / limit / delta."""
    start, limit, delta = (require_const(ctx, node, i, n) for i, n in enumerate(("start", "limit", "delta")))
    return [np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)]


# ------------------------------------------------------------------ reshapes


def _reshape_target(in_shape: list[Dim], spec: list[int], allowzero: bool, node: ir.Node) -> list[Dim]:
    out: list[Dim] = [in_shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(spec)]
    if out.count(-1) > 1:
        raise BackendError("Reshape with more than one -1", node=node.name)
    if -1 in out:
        i = out.index(-1)
        rest = _prod([d for j, d in enumerate(out) if j != i])
        total = _prod(in_shape)
        out[i] = total // rest if isinstance(total, int) and isinstance(rest, int) else tirx.floordiv(total, rest)
    return out


def reshape(ctx: EmitContext, x: Out, shape: list[Dim]) -> Out:
    """Reshape an expression or known array to ``shape``."""
    if isinstance(x, np.ndarray):
        return x.reshape([int(d) for d in shape])
    if ctx.shape(x) == shape:
        return x
    return ctx.emit(R.reshape(x, shape))


@lowering("Reshape")
def lower_reshape(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Reshape by a known shape (0 copies the input dim unless allowzero, -1 is inferred)."""
    x = _first(node)
    spec = int_list(require_const(ctx, node, 1, "shape")) or []
    target = _reshape_target(ctx.shape(x), spec, bool(attr(node, "allowzero", 0)), node)
    return [reshape(ctx, _value_or_expr(ctx, x), target)]


@lowering("Flatten")
def lower_flatten(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Flatten to 2-D at ``axis``."""
    x = _first(node)
    shape = ctx.shape(x)
    axis = norm_axis(attr(node, "axis", 1), len(shape) + 1, node)
    return [reshape(ctx, _value_or_expr(ctx, x), [_prod(shape[:axis]), _prod(shape[axis:])])]


def _squeeze_axes(ctx: EmitContext, node: ir.Node) -> list[int] | None:
    axes_v = input_at(node, 1)
    if axes_v is not None:
        return int_list(require_const(ctx, node, 1, "axes"))
    a = attr(node, "axes", None)
    return None if a is None else [int(v) for v in a]


@lowering("Squeeze")
def lower_squeeze(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Squeeze given axes (or every unit dim)."""
    x = _first(node)
    shape = ctx.shape(x)
    axes = _squeeze_axes(ctx, node)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    drop = {norm_axis(a, len(shape), node) for a in axes}
    return [reshape(ctx, _value_or_expr(ctx, x), [d for i, d in enumerate(shape) if i not in drop])]


@lowering("Unsqueeze")
def lower_unsqueeze(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Unsqueeze: insert unit dims at ``axes`` (of the output)."""
    x = _first(node)
    shape = ctx.shape(x)
    axes = _squeeze_axes(ctx, node) or []
    rank = len(shape) + len(axes)
    new_axes = sorted(norm_axis(a, rank, node) for a in axes)
    out: list[Dim] = list(shape)
    for a in new_axes:
        out.insert(a, 1)
    return [reshape(ctx, _value_or_expr(ctx, x), out)]


@lowering("Transpose")
def lower_transpose(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Transpose by ``perm`` (default: reverse); folded on constants such as weights."""
    x = _first(node)
    rank = ctx.rank(x)
    perm = attr(node, "perm", None) or list(range(rank))[::-1]
    known = ctx.const(x)
    if known is not None:
        return [np.array(np.transpose(known, perm), order="C")]
    if list(perm) == list(range(rank)):
        return [ctx.expr(x)]
    return [ctx.emit(R.permute_dims(ctx.expr(x), [int(p) for p in perm]))]


@lowering("Expand")
def lower_expand(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Expand with numpy broadcasting against a known shape."""
    x = _first(node)
    spec = int_list(require_const(ctx, node, 1, "shape")) or []
    in_shape = ctx.shape(x)
    rank = max(len(spec), len(in_shape))
    a = [1] * (rank - len(in_shape)) + list(in_shape)
    b: list[Dim] = [1] * (rank - len(spec)) + list(spec)
    out: list[Dim] = [da if db == 1 else db for da, db in zip(a, b, strict=False)]
    known = ctx.const(x)
    if known is not None:
        return [np.array(np.broadcast_to(known, [int(d) for d in out]), order="C")]
    if out == in_shape:
        return [ctx.expr(x)]
    return [ctx.emit(R.broadcast_to(ctx.expr(x), out))]


@lowering("Tile")
def lower_tile(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Tile by known repeats."""
    x = _first(node)
    reps = int_list(require_const(ctx, node, 1, "repeats")) or []
    known = ctx.const(x)
    if known is not None:
        return [np.tile(known, reps)]
    return [ctx.emit(R.tile(ctx.expr(x), reps))]


# ------------------------------------------------------------------ concat / split / slice


@lowering("Concat")
def lower_concat(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Concat along ``axis`` (known inputs fold)."""
    inputs = [v for v in node.inputs if v is not None]
    rank = ctx.rank(inputs[0])
    axis = norm_axis(attr(node, "axis", 0), rank, node)
    if all_inputs_known(ctx, node):
        return [np.concatenate([ctx.const(v) for v in inputs], axis=axis)]  # type: ignore[misc]
    parts = [ctx.expr(v) for v in inputs if ctx.shape(v)[axis] != 0]
    if len(parts) == 1:
        return [parts[0]]
    return [ctx.emit(R.concat(parts, axis=axis))]


@lowering("Split")
def lower_split(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Split by known sizes (input or attribute) or into ``num_outputs`` equal parts."""
    x = _first(node)
    shape = ctx.shape(x)
    axis = norm_axis(attr(node, "axis", 0), len(shape), node)
    sizes = int_list(ctx.const(input_at(node, 1))) if input_at(node, 1) is not None else attr(node, "split", None)
    n = len(node.outputs)
    if sizes is None:
        dim = shape[axis]
        if not isinstance(dim, int):
            raise BackendError("Split of a symbolic dim needs explicit sizes", node=node.name)
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    cuts = list(np.cumsum(sizes)[:-1].astype(int))
    known = ctx.const(x)
    if known is not None:
        return list(np.split(known, cuts, axis=axis))
    tup = ctx.emit(R.split(ctx.expr(x), [int(c) for c in cuts], axis=axis))
    return [ctx.emit(relax.TupleGetItem(tup, i)) for i in range(n)]


@lowering("Slice")
def lower_slice(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Slice with known starts / ends / axes / steps (negative steps become a take)."""
    x = _first(node)
    shape = ctx.shape(x)
    starts = int_list(require_const(ctx, node, 1, "starts")) or []
    ends = int_list(require_const(ctx, node, 2, "ends")) or []
    axes = int_list(ctx.const(input_at(node, 3))) if input_at(node, 3) is not None else list(range(len(starts)))
    steps = int_list(ctx.const(input_at(node, 4))) if input_at(node, 4) is not None else [1] * len(starts)
    if axes is None or steps is None:
        raise BackendError("Slice: axes and steps must be known at compile time", node=node.name)
    known = ctx.const(x)
    index: list[slice] = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        index[norm_axis(a, len(shape), node)] = slice(s, e, st)
    if known is not None:
        return [np.array(known[tuple(index)], order="C")]
    expr = ctx.expr(x)
    b_axes, b_begin, b_end, b_step = [], [], [], []
    for ax, sl in enumerate(index):
        if sl == slice(None):
            continue
        dim = shape[ax]
        if not isinstance(dim, int):
            b_axes.append(ax)
            b_begin.append(sl.start)
            b_end.append(sl.stop)
            b_step.append(sl.step)
            continue
        idx = range(*sl.indices(dim))
        if sl.step > 0:
            if idx.start == 0 and idx.stop >= dim and idx.step == 1:
                continue
            b_axes.append(ax)
            b_begin.append(idx.start)
            b_end.append(max(idx.stop, idx.start))
            b_step.append(idx.step)
        else:  # negative step: gather the explicit indices
            expr = ctx.emit(R.take(expr, relax.const(np.asarray(list(idx), dtype=np.int64)), axis=ax))
    if b_axes:
        expr = ctx.emit(R.strided_slice(expr, b_axes, b_begin, b_end, b_step, assume_inbound=True))
    return [expr]


# ------------------------------------------------------------------ gathers


def _norm_indices(idx: np.ndarray, dim: Dim, node: ir.Node) -> np.ndarray:
    if not isinstance(dim, int):
        if (idx < 0).any():
            raise BackendError("negative gather indices on a symbolic dim", node=node.name)
        return idx.astype(np.int64)
    return np.where(idx < 0, idx + dim, idx).astype(np.int64)


def _dynamic_norm(ctx: EmitContext, idx: relax.Expr, dim: Dim) -> relax.Expr:
    dt = str(idx.ty.dtype)
    return ctx.emit(
        R.where(
            R.less(idx, scalar(0, dt)),
            R.add(idx, relax.const(dim, dt) if isinstance(dim, int) else R.astype(relax.PrimValue(dim), dt)),
            idx,
        )
    )


@lowering("Gather")
def lower_gather(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Gather along ``axis`` (negative indices allowed)."""
    data, indices = node.inputs[0], node.inputs[1]
    if data is None or indices is None:
        raise BackendError("Gather needs data and indices", node=node.name)
    shape = ctx.shape(data)
    axis = norm_axis(attr(node, "axis", 0), len(shape), node)
    idx_known = ctx.const(indices)
    if idx_known is not None:
        idx_known = _norm_indices(idx_known, shape[axis], node)
    if idx_known is not None and ctx.is_const(data):
        return [np.take(ctx.const(data), idx_known, axis=axis)]  # type: ignore[arg-type]
    if idx_known is not None:
        idx_expr = relax.const(idx_known, "int64")
        if idx_known.ndim == 0:
            # a scalar index drops the axis: slice then reshape
            i = int(idx_known)
            sl = ctx.emit(R.strided_slice(ctx.expr(data), [axis], [i], [i + 1], assume_inbound=True))
            return [reshape(ctx, sl, [d for j, d in enumerate(shape) if j != axis])]
        return [ctx.emit(R.take(ctx.expr(data), idx_expr, axis=axis))]
    # run-time indices: "wrap" maps -1 to dim - 1, as ONNX requires
    return [ctx.emit(R.take(ctx.expr(data), ctx.expr(indices), axis=axis, mode="wrap"))]


@lowering("GatherElements")
def lower_gather_elements(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """GatherElements along ``axis``."""
    data, indices = node.inputs[0], node.inputs[1]
    if data is None or indices is None:
        raise BackendError("GatherElements needs data and indices", node=node.name)
    shape = ctx.shape(data)
    axis = norm_axis(attr(node, "axis", 0), len(shape), node)
    idx_known = ctx.const(indices)
    if idx_known is not None:
        idx_known = _norm_indices(idx_known, shape[axis], node)
        if ctx.is_const(data):
            return [np.take_along_axis(ctx.const(data), idx_known, axis=axis)]  # type: ignore[arg-type]
        idx: relax.Expr = relax.const(idx_known, "int64")
    else:
        idx = _dynamic_norm(ctx, ctx.expr(indices), shape[axis])
    return [ctx.emit(R.gather_elements(ctx.expr(data), idx, axis=axis))]


def _np_gather_nd(data: np.ndarray, idx: np.ndarray, batch_dims: int) -> np.ndarray:
    if batch_dims != 0:
        raise ValueError("batch_dims")
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    out = np.stack([data[tuple(row)] for row in flat]) if flat.shape[0] else np.empty((0, *data.shape[k:]))
    return out.reshape(*idx.shape[:-1], *data.shape[k:]).astype(data.dtype)


@lowering("GatherND")
def lower_gather_nd(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """GatherND with ``batch_dims``."""
    data, indices = node.inputs[0], node.inputs[1]
    if data is None or indices is None:
        raise BackendError("GatherND needs data and indices", node=node.name)
    batch_dims = int(attr(node, "batch_dims", 0))
    shape = ctx.shape(data)
    idx_known = ctx.const(indices)
    if idx_known is not None:
        k = idx_known.shape[-1]
        dims = np.asarray([d if isinstance(d, int) else 0 for d in shape[batch_dims : batch_dims + k]])
        if (idx_known < 0).any() and (dims == 0).any():
            raise BackendError("negative GatherND indices on a symbolic dim", node=node.name)
        idx_known = np.where(idx_known < 0, idx_known + dims, idx_known).astype(np.int64)
        if ctx.is_const(data) and batch_dims == 0:
            return [_np_gather_nd(ctx.const(data), idx_known, 0)]  # type: ignore[arg-type]
        idx: relax.Expr = relax.const(idx_known, "int64")
    else:
        idx = ctx.expr(indices)
    return [ctx.emit(R.gather_nd(ctx.expr(data), idx, batch_dims=batch_dims))]


# ------------------------------------------------------------------ padding


@lowering("Pad")
def lower_pad(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Pad with known pads (constant / reflect / edge / wrap modes)."""
    x = _first(node)
    rank = ctx.rank(x)
    pads = int_list(require_const(ctx, node, 1, "pads")) or []
    value_v = input_at(node, 2)
    value = 0.0
    if value_v is not None:
        value = float(require_const(ctx, node, 2, "constant_value").reshape(-1)[0])
    axes = int_list(ctx.const(input_at(node, 3))) if input_at(node, 3) is not None else list(range(rank))
    if axes is None:
        raise BackendError("Pad: axes must be known", node=node.name)
    n = len(axes)
    widths = [0] * (2 * rank)
    for i, a in enumerate(axes):
        ax = norm_axis(a, rank, node)
        widths[2 * ax], widths[2 * ax + 1] = pads[i], pads[i + n]
    if any(w < 0 for w in widths):
        raise BackendError("Pad with negative pads is not supported", node=node.name)
    mode = attr(node, "mode", "constant")
    relax_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if relax_mode is None:
        raise BackendError(f"Pad mode '{mode}' is not supported", node=node.name)
    if not any(widths):
        return [_value_or_expr(ctx, x)]
    known = ctx.const(x)
    if known is not None and mode == "constant":
        pw = [(widths[2 * i], widths[2 * i + 1]) for i in range(rank)]
        return [np.pad(known, pw, constant_values=np.asarray(value, dtype=known.dtype))]
    return [ctx.emit(R.nn.pad(ctx.expr(x), widths, relax_mode, value))]
