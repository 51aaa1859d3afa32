"""``fold_constants``: evaluate nodes whose inputs are all constants and replace their outputs
by initializers; also fold ``Shape``/``Size`` of values whose shape is fully static.

One topological sweep reaches the fixed point: a folded node's outputs become initializers
before any of its users is visited. Folding uses the reference kernels
(``compiler.ir.ops.registry``), so the folded values are exactly what the interpreter computes.
Nodes left without users are removed at the end. ``DequantizeLinear`` (and ORT's
``MatMulNBits``) of constant weights is never folded: that would undo quantization; nor is a storage
cast (``Cast`` of a float16 initializer to float32, :func:`passes._utils.storage_source`), for the same
reason. Nodes reading a storage cast's output see the float32 constant and fold as usual.

A folded value that only feeds broadcasting arithmetic (``Add`` / ``Sub`` / ``Mul`` / ``Div``) is stored
in its smallest broadcastable form: an axis along which every slice is bit-identical becomes size 1
where another input still gives the output that extent (MiniLM's token-type embeddings, gathered for
token 0 at every position, fold to one 384-float row instead of 128 copies). The results are the same
bits: broadcasting repeats exactly the slice that was stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from compiler.ir.ops.registry import attr, lookup
from passes._utils import (
    Namer,
    Rejection,
    add_initializer,
    broadcast_shape,
    constant,
    is_constant,
    is_onnx_op,
    is_storage_cast,
    node_label,
    replace_value,
    static_shape,
)
from passes.base import Pass, Property, register_pass

#: Ops whose result differs from run to run: never folded.
NON_DETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)

#: Elementwise ops that broadcast their inputs, numpy-style (see :func:`compact_broadcast`).
BROADCASTING = ("Add", "Sub", "Mul", "Div")

#: A folded output larger than this many elements is only materialized when it is not much
#: larger than the node's constant inputs: folding e.g. ``ConstantOfShape`` or ``Expand`` of a
#: scalar into a huge tensor would trade a cheap op for megabytes of weights.
MAX_EXPANDED_ELEMENTS = 1_000_000
#: ... "much larger" meaning more than this many times the total size of the inputs.
MAX_GROWTH = 2


def _shape_of(node: ir.Node) -> np.ndarray | None:
    """``Shape``/``Size`` of a value with a fully static shape."""
    x = node.inputs[0] if node.inputs else None
    dims = static_shape(x)
    if dims is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)
    n = len(dims)
    start = int(attr(node, "start", 0))
    end = attr(node, "end", None)
    start = max(0, min(n, start + n if start < 0 else start))
    stop = n if end is None else max(0, min(n, int(end) + n if int(end) < 0 else int(end)))
    return np.array(dims[start:stop], dtype=np.int64)


def _constant_node(node: ir.Node) -> list[np.ndarray] | None:
    """The value of a ``Constant`` node (``None`` for forms it does not know, e.g. sparse)."""
    for name, a in node.attributes.items():
        if a.is_ref():
            return None
        if name == "value":
            return [a.value.numpy()]
        if name in ("value_float", "value_floats"):
            return [np.asarray(a.value, dtype=np.float32)]
        if name in ("value_int", "value_ints"):
            return [np.asarray(a.value, dtype=np.int64)]
    return None


def _keeps_output_shape(value: ir.Value, shape: tuple[int, ...]) -> bool:
    """Whether every user of ``value`` (all broadcasting ops) still has its output shape with ``value`` of
    ``shape``: the other input's static shape broadcasts with it to the output's static shape."""
    for use in value.uses():
        node = use.node
        if not is_onnx_op(node, *BROADCASTING) or len(node.inputs) != 2 or not node.outputs:
            return False
        other = node.inputs[1 - use.idx]
        other_dims, out = static_shape(other), static_shape(node.outputs[0])
        if other is value or other_dims is None or out is None or broadcast_shape(shape, other_dims) != out:
            return False
    return True


def compact_broadcast(value: ir.Value, array: np.ndarray) -> np.ndarray:
    """``array`` (the folded content of ``value``) with each axis whose slices are all bit-identical cut to
    size 1, where every user of ``value`` broadcasts it and keeps its output shape; else ``array`` itself."""
    if value.is_graph_output() or array.ndim == 0 or not value.uses() or array.dtype.kind not in "biuf":
        return array
    for axis in range(array.ndim):
        if array.shape[axis] == 1:
            continue
        bits = array.view(f"u{array.itemsize}") if array.dtype.kind == "f" else array
        if not (bits == np.take(bits, [0], axis=axis)).all():
            continue
        shape = (*array.shape[:axis], 1, *array.shape[axis + 1 :])
        if _keeps_output_shape(value, shape):
            array = np.ascontiguousarray(np.take(array, [0], axis=axis))
    return array


@register_pass
class FoldConstantsPass(Pass):
    """Replaces computations on constants by their results (see the module docstring)."""

    name = "fold_constants"
    description = "evaluate nodes with only constant inputs (and Shape/Size of static shapes) into initializers"
    guarantees = frozenset({Property.CONSTANTS_FOLDED})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Fold in place; modified when any node was folded."""
        self.last_rejections = []
        graph = model.graph
        namer = Namer(graph)
        folded = 0
        for node in list(graph):
            arrays = self._evaluate(node)
            if arrays is None:
                continue
            for value, array in zip(node.outputs, arrays, strict=False):
                if value.uses() or value.is_graph_output():
                    self._replace(graph, namer, value, array)
            folded += 1
        if folded:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=folded > 0)

    def _reject(self, node: ir.Node, reason: str) -> None:
        self.last_rejections.append(Rejection(node_label(node), reason))

    def _evaluate(self, node: ir.Node) -> Sequence[np.ndarray] | None:
        """The node's output arrays if it can be folded, else ``None``."""
        if node.domain in ("", "ai.onnx") and node.op_type in ("Shape", "Size"):
            shape = _shape_of(node)
            if shape is not None:
                return [shape]
        if node.domain in ("", "ai.onnx") and node.op_type == "Constant":
            return _constant_node(node)
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return None  # control flow: its body may read outer values
        inputs = [v for v in node.inputs if v is not None]
        if not all(is_constant(v) for v in inputs):
            return None
        if not any(v.uses() or v.is_graph_output() for v in node.outputs):
            return None  # dead: removed below, nothing to compute
        if is_onnx_op(node, "DequantizeLinear") or (node.domain == "com.microsoft" and node.op_type == "MatMulNBits"):
            return None  # quantized weights stay quantized: folding would undo the compression
        if is_storage_cast(node):
            return None  # a float16-stored constant, likewise (its users see the float32 value through it)
        if node.op_type in NON_DETERMINISTIC:
            self._reject(node, f"{node.op_type} is not deterministic")
            return None
        in_arrays = [constant(v) for v in node.inputs]
        in_size = sum(a.size for a in in_arrays if a is not None)
        for value in node.outputs:
            dims = static_shape(value)
            if dims is not None and self._too_big(int(np.prod(dims)), in_size):
                self._reject(node, f"output '{value.name}' would have {int(np.prod(dims))} elements")
                return None
        opdef = lookup(node.domain, node.op_type)
        if opdef is None:
            self._reject(node, f"no reference kernel for {node.domain or 'ai.onnx'}::{node.op_type}")
            return None
        try:
            arrays = [np.asarray(a) for a in opdef.kernel(node, in_arrays)]
        except Exception as exc:  # a kernel refusing these inputs: leave the node to run later
            self._reject(node, f"kernel failed: {type(exc).__name__}: {exc}")
            return None
        if len(arrays) < len(node.outputs):
            self._reject(node, f"kernel returned {len(arrays)} outputs for {len(node.outputs)}")
            return None
        for value, array in zip(node.outputs, arrays, strict=False):
            if self._too_big(array.size, in_size):
                self._reject(node, f"output '{value.name}' would have {array.size} elements")
                return None
        return arrays

    @staticmethod
    def _too_big(out_size: int, in_size: int) -> bool:
        return out_size > MAX_EXPANDED_ELEMENTS and out_size > MAX_GROWTH * in_size

    @staticmethod
    def _replace(graph: ir.Graph, namer: Namer, value: ir.Value, array: np.ndarray) -> None:
        """Replace ``value`` by a new initializer holding ``array`` (same name if it is a graph output)."""
        dtype = value.dtype
        if dtype is not None and array.dtype != dtype.numpy():
            array = array.astype(dtype.numpy())
        if value.is_graph_output():
            # The initializer takes the output's name: move the old value out of the way first.
            name = value.name or namer("folded")
            value.name = namer(f"{name}__folded")
        else:
            name = namer(f"{value.name or 'folded'}_const")
            array = compact_broadcast(value, array)
        init = add_initializer(graph, name, array)
        replace_value(value, init)
