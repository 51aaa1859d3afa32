"""``remove_identity``: remove ops that return their input unchanged.

Removes ``Identity``, inference-mode ``Dropout`` and no-ops: ``Cast`` to the input's dtype,
``Reshape``/``Expand`` to the input's own static shape, ``Transpose`` by the identity permutation,
``Add``/``Sub`` of a constant zero,
``Mul``/``Div`` by a constant one (when broadcasting leaves shape and dtype alone), and ``Slice``
taking everything. Graph outputs keep their names: when the removed op's output is a graph output,
its input is renamed instead, and when that is impossible (the input is a graph input, an
initializer or another output) the op stays and the reason is recorded in ``last_rejections``.

onnx-ir's ``IdentityEliminationPass`` is not used: when ``y = Identity(x)`` and both are graph
outputs it renames ``x`` to ``y`` and the output named ``x`` is lost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import attr
from passes._utils import (
    Rejection,
    broadcast_shape,
    can_replace,
    constant,
    is_onnx_op,
    node_label,
    rank,
    remove_nodes,
    replace_value,
    static_shape,
)
from passes.base import Pass, register_pass

#: A check: given the node, the input value it forwards (or a reason string why it is not a no-op).
Check = Callable[[ir.Node], "ir.Value | str"]


def _identity(node: ir.Node) -> ir.Value | str:
    return node.inputs[0] if node.inputs[0] is not None else "no input"


def _dropout(node: ir.Node) -> ir.Value | str:
    training = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.array(False)
    if training is None or bool(np.asarray(training).reshape(-1)[0]):
        return "training_mode is not a constant false"
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return "the mask output is used"
    return node.inputs[0] if node.inputs[0] is not None else "no input"


def _cast(node: ir.Node) -> ir.Value | str:
    x = node.inputs[0]
    if x is None or x.dtype is None:
        return "input dtype unknown"
    to = attr(node, "to", None)
    return x if to is not None and int(to) == x.dtype.value else "changes the dtype"


def _reshape_target(node: ir.Node, dims: tuple[int, ...]) -> tuple[int, ...] | None:
    target = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        return None
    allowzero = int(attr(node, "allowzero", 0))
    out = [dims[i] if (d == 0 and not allowzero and i < len(dims)) else int(d) for i, d in enumerate(target.tolist())]
    if out.count(-1) == 1:
        known = int(np.prod([d for d in out if d != -1]))
        if known == 0:
            return None
        out[out.index(-1)] = int(np.prod(dims)) // known
    return tuple(out)


def _reshape(node: ir.Node) -> ir.Value | str:
    x = node.inputs[0]
    dims = static_shape(x)
    if x is None or dims is None:
        return "input shape not static"
    return x if _reshape_target(node, dims) == dims else "changes the shape"


def _expand(node: ir.Node) -> ir.Value | str:
    x = node.inputs[0]
    dims = static_shape(x)
    target = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None or dims is None or target is None:
        return "input shape or target shape not static"
    return x if broadcast_shape(dims, target.tolist()) == dims else "changes the shape"


def _transpose(node: ir.Node) -> ir.Value | str:
    x = node.inputs[0]
    perm = attr(node, "perm", None)
    if x is None:
        return "no input"
    if perm is None:  # default: reverse the axes, an identity for rank <= 1
        r = rank(x)
        return x if r is not None and r <= 1 else "reverses the axes"
    return x if list(perm) == list(range(len(perm))) else "permutes the axes"


def _neutral_binary(node: ir.Node) -> ir.Value | str:
    """``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1``."""
    neutral = 0.0 if node.op_type in ("Add", "Sub") else 1.0
    commutative = node.op_type in ("Add", "Mul")
    candidates = [(node.inputs[0], node.inputs[1])]
    if commutative:
        candidates.append((node.inputs[1], node.inputs[0]))
    for x, c in candidates:
        arr = constant(c)
        if x is None or arr is None or not np.all(arr == neutral):
            continue
        dims = static_shape(x)
        if x.dtype is None or c is None or x.dtype != c.dtype:
            return "dtype of the result unknown or different"
        if dims is None or broadcast_shape(dims, arr.shape) != dims:
            return "broadcasting could change the shape"
        return x
    return f"no constant {neutral:g} operand"


def _slice(node: ir.Node) -> ir.Value | str:
    x = node.inputs[0]
    dims = static_shape(x)
    if x is None or dims is None:
        return "input shape not static"
    arrays = [constant(v) if i < len(node.inputs) and (v := node.inputs[i]) is not None else None for i in range(5)]
    starts, ends = arrays[1], arrays[2]
    if starts is None or ends is None:
        return "starts/ends not constant"
    present = [i < len(node.inputs) and node.inputs[i] is not None for i in range(5)]
    if (present[3] and arrays[3] is None) or (present[4] and arrays[4] is None):
        return "axes/steps not constant"
    axes = arrays[3].tolist() if arrays[3] is not None else list(range(len(starts)))
    steps = arrays[4].tolist() if arrays[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes, steps, strict=False):
        dim = dims[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step != 1 or start > 0 or end < dim:
            return "does not take everything"
    return x


_CHECKS: dict[str, Check] = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Cast": _cast,
    "Reshape": _reshape,
    "Expand": _expand,
    "Transpose": _transpose,
    "Add": _neutral_binary,
    "Sub": _neutral_binary,
    "Mul": _neutral_binary,
    "Div": _neutral_binary,
    "Slice": _slice,
}

#: Rejections for these ops are ordinary (most Adds are not additions of zero) and not recorded.
_QUIET = frozenset({"Add", "Sub", "Mul", "Div", "Reshape", "Transpose", "Cast", "Expand", "Slice"})


@register_pass
class RemoveIdentityPass(Pass):
    """Removes Identity, inference Dropout, and ops that do not change their input."""

    name = "remove_identity"
    description = "remove Identity, inference Dropout and no-op Cast/Reshape/Expand/Transpose/Add/Mul/Div/Slice"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Remove the no-ops in place; modified when any was removed."""
        self.last_rejections = []
        modified = False
        graph = model.graph
        for node in list(graph):
            check = _CHECKS.get(node.op_type)
            if check is None or not is_onnx_op(node) or not node.inputs:
                continue
            source = check(node)
            if isinstance(source, str):
                if node.op_type not in _QUIET:
                    self.last_rejections.append(Rejection(node_label(node), source))
                continue
            out = node.outputs[0]
            reason = can_replace(out, source)
            if reason:
                self.last_rejections.append(Rejection(node_label(node), reason))
                continue
            replace_value(out, source)
            remove_nodes(graph, [node])
            modified = True
        return ir.passes.PassResult(model, modified=modified)
