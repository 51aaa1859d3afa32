"""Helpers shared by several passes: constants, fresh names, value replacement that keeps
graph output names, and the record of rewrites that matched but were rejected."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import attr

ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Rejection:
    """A rewrite that matched a node but whose check failed, and why."""

    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node}: {self.reason}"


def is_onnx_op(node: ir.Node, *op_types: str) -> bool:
    """Whether ``node`` is a standard ONNX op (of one of ``op_types`` when given)."""
    return node.domain in ONNX_DOMAINS and (not op_types or node.op_type in op_types)


def node_label(node: ir.Node) -> str:
    """A name for messages: the node's name, or its op type and first output."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else "?"
    return f"{node.op_type}->{out}"


def _initializer_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


#: Node metadata marking a storage cast (kept in the ONNX ``metadata_props``, so saved models keep it too).
STORAGE_MARK = "cacc.storage"


def storage_source(value: ir.Value | None) -> ir.Value | None:
    """The float16 initializer that a *storage cast* widens into ``value``, else ``None``.

    A storage cast is a ``Cast(to=FLOAT)`` of a float16 initializer, marked :data:`STORAGE_MARK` by
    :func:`storage_cast`: a float32 constant stored in half the bytes (see :mod:`passes.compact_storage`).
    Passes treat its output as the constant it stands for (:func:`constant`) and ``fold_constants`` leaves it
    in place, as it does a weight ``DequantizeLinear``. An unmarked cast (a model's own float16 weights) is an
    ordinary node, which ``fold_constants`` folds."""
    node = value.producer() if value is not None else None
    if node is None or not is_onnx_op(node, "Cast") or not node.inputs or STORAGE_MARK not in node.metadata_props:
        return None
    src = node.inputs[0]
    if int(attr(node, "to", 0)) != ir.DataType.FLOAT.value or src is None or src.is_graph_input():
        return None
    return src if src.const_value is not None and src.const_value.dtype == ir.DataType.FLOAT16 else None


def is_storage_cast(node: ir.Node) -> bool:
    """Whether ``node`` is a storage cast (see :func:`storage_source`)."""
    return bool(node.outputs) and storage_source(node.outputs[0]) is not None


def storage_cast(graph: ir.Graph, namer: Namer, half: ir.Value) -> ir.Value:
    """A new storage cast of the float16 initializer ``half``, placed first in ``graph``; its float32 output."""
    base = (half.name or "const").removesuffix("_f16")
    to_float = ir.AttrInt64("to", ir.DataType.FLOAT.value)
    cast = ir.Node("", "Cast", [half], [to_float], name=namer(f"{base}/storage_cast"))
    cast.metadata_props[STORAGE_MARK] = "float16"
    out = cast.outputs[0]
    out.name = namer(f"{base}_f32")
    out.dtype = ir.DataType.FLOAT
    out.shape = half.shape.copy() if half.shape is not None else None
    graph.insert_before(next(iter(graph)), [cast])  # it reads only an initializer: first is always in order
    return out


def drop_unused_storage_casts(graph: ir.Graph) -> None:
    """Remove storage casts nobody reads any more, and their float16 initializers when unused too."""
    for node in [n for n in graph if is_storage_cast(n)]:
        out = node.outputs[0]
        if out.uses() or out.is_graph_output():
            continue
        src = node.inputs[0]
        graph.remove(node, safe=True)
        if src is not None:
            drop_unused_initializers(graph, [src])


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant value: an initializer with data that is not a graph input
    (a graph input can be overridden at run time), or the output of a storage cast (as float32),
    else ``None``."""
    arr = _initializer_array(value)
    if arr is not None:
        return arr
    src = storage_source(value)
    return None if src is None else np.asarray(_initializer_array(src)).astype(np.float32)


def is_constant(value: ir.Value | None) -> bool:
    """Whether :func:`constant` would return an array for ``value``."""
    return _initializer_array(value) is not None or storage_source(value) is not None


def scalar_constant(value: ir.Value | None) -> float | None:
    """The value of a constant holding a single element, else ``None``."""
    arr = constant(value)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(-1)[0])


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dimension is a known integer, else ``None``."""
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d for d in dims if isinstance(d, int))


def rank(value: ir.Value | None) -> int | None:
    """The value's rank when known."""
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def int_attr(node: ir.Node, name: str, default: int) -> int:
    """An integer attribute (``default`` when absent)."""
    return int(attr(node, name, default))


def single_user(value: ir.Value) -> ir.Node | None:
    """The only node using ``value``, if it has exactly one use and is not a graph output."""
    if value.is_graph_output():
        return None
    uses = value.uses()
    if len(uses) != 1:
        return None
    return next(iter(uses)).node


def users_reason(value: ir.Value) -> str:
    """Why ``value`` cannot be an intermediate of a fused pattern ("" when it can)."""
    if value.is_graph_output():
        return f"'{value.name}' is a graph output"
    n = len(value.uses())
    if n != 1:
        return f"'{value.name}' has {n} users"
    return ""


class Namer:
    """Fresh, graph-unique value and node names."""

    def __init__(self, graph: ir.Graph) -> None:
        self._used: set[str] = set()
        for v in graph.inputs:
            self._used.add(v.name or "")
        self._used.update(graph.initializers)
        for node in graph:
            self._used.update(v.name or "" for v in node.outputs)

    def __call__(self, base: str) -> str:
        """A name starting with ``base`` that no value in the graph has."""
        base = base or "v"
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name


def add_initializer(
    graph: ir.Graph,
    name: str,
    array: np.ndarray,
    dtype: ir.DataType | None = None,
) -> ir.Value:
    """A new initializer named ``name`` (must be unused) holding ``array`` (cast to ``dtype``)."""
    if dtype is not None:
        array = np.asarray(array).astype(dtype.numpy(), copy=False)
    array = np.asarray(array)
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a scalar into [1])
        array = array.copy()
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def copy_type(src: ir.Value, dst: ir.Value) -> None:
    """Give ``dst`` the dtype and shape of ``src`` (where ``src`` knows them)."""
    if src.type is not None:
        dst.type = src.type
    if src.shape is not None:
        dst.shape = src.shape.copy()


def can_replace(old: ir.Value, new: ir.Value) -> str:
    """Why ``old`` cannot be replaced by ``new`` ("" when it can).

    Replacing a graph output means the new value takes the output's name, which is
    impossible when the new value is a graph input, an initializer or another output.
    """
    if not old.is_graph_output():
        return ""
    if new.is_graph_input() or new.is_initializer() or new.is_graph_output():
        return f"graph output '{old.name}' would be renamed to '{new.name}'"
    return ""


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Make every user of ``old`` (graph outputs included) use ``new`` instead.

    When ``old`` is a graph output, ``new`` takes over its name so that the graph keeps
    its output names (``old`` is renamed out of the way). Call :func:`can_replace` first;
    an initializer replacing an output must already carry the output's name.
    """
    if new.type is None:
        new.type = old.type
    if new.shape is None and old.shape is not None:
        new.shape = old.shape.copy()
    rename = old.is_graph_output() and not (new.is_initializer() or new.is_graph_input())
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if rename and old.name:
        name = old.name
        old.name = f"{name}__replaced"
        new.name = name


def remove_nodes(graph: ir.Graph, nodes: Iterable[ir.Node]) -> None:
    """Remove ``nodes`` (whose outputs no longer have users) and initializers they alone used."""
    nodes = list(nodes)
    inputs = {v for n in nodes for v in n.inputs if v is not None}
    graph.remove(nodes, safe=True)
    drop_unused_initializers(graph, inputs)


def drop_unused_initializers(graph: ir.Graph, candidates: Iterable[ir.Value]) -> None:
    """Delete those ``candidates`` that are initializers nobody uses any more."""
    for v in candidates:
        if (
            v.is_initializer()
            and not v.uses()
            and not v.is_graph_output()
            and not v.is_graph_input()
            and v.name is not None
            and v.name in graph.initializers
        ):
            del graph.initializers[v.name]


def broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """Numpy broadcasting of two static shapes (``None`` if incompatible)."""
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None


def take_over(old: ir.Value, new: ir.Value, namer: Namer) -> None:
    """Make ``new`` (a fresh node output) replace ``old`` everywhere and take its name, dtype and shape."""
    copy_type(old, new)
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    name = old.name or namer("v")
    old.name = namer(f"{name}__replaced")
    new.name = name
