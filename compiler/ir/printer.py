"""A compact, readable text form of the IR, and op statistics (used by ``cacc inspect``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from compiler.ir.interpreter import format_shape


def _type_str(value: ir.Value) -> str:
    dtype = value.dtype.numpy().name if value.dtype is not None else "?"
    return f"{dtype}{format_shape(value.shape)}"


def _attr_str(a: ir.Attr) -> str:
    if a.is_ref():
        return f"{a.name}=@{a.ref_attr_name}"
    v = a.value
    if a.type == ir.AttributeType.TENSOR:
        return f"{a.name}=tensor<{v.dtype.name}{list(v.shape)}>"
    if a.type == ir.AttributeType.FLOAT:
        return f"{a.name}={v:g}"
    if a.type == ir.AttributeType.STRING:
        return f"{a.name}={v!r}"
    if isinstance(v, (list, tuple)):
        return f"{a.name}=[{','.join(str(x) for x in v)}]"
    return f"{a.name}={v}"


def _value_ref(value: ir.Value | None) -> str:
    if value is None:
        return "_"
    if value.const_value is not None and value.const_value.size == 1 and value.producer() is None:
        scalar = np.asarray(value.const_value.numpy()).reshape(-1)[0]
        return f"%{value.name}<{scalar:g}>" if np.issubdtype(type(scalar), np.number) else f"%{value.name}"
    return f"%{value.name}"


def format_graph(model: ir.Model | ir.Graph, *, max_nodes: int | None = None) -> str:
    """The graph as text: signature, initializer summary, one line per node, outputs."""
    graph = model.graph if isinstance(model, ir.Model) else model
    lines = [f"graph {graph.name or 'main'} ("]
    lines += [f"    %{v.name}: {_type_str(v)}," for v in graph.inputs]
    lines.append(") {")
    init_bytes = sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
    lines.append(f"  # {len(graph.initializers)} initializers, {init_bytes / 1e6:.2f} MB")
    for i, node in enumerate(graph):
        if max_nodes is not None and i >= max_nodes:
            lines.append(f"  ... {len(graph) - max_nodes} more nodes")
            break
        outs = ", ".join(f"%{v.name}: {_type_str(v)}" for v in node.outputs)
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        attrs = ", ".join(_attr_str(a) for a in node.attributes.values())
        args = ", ".join(_value_ref(v) for v in node.inputs)
        attr_part = f"<{attrs}>" if attrs else ""
        lines.append(f"  {outs} = {op}{attr_part}({args})  # {node.name}")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


def op_histogram(model: ir.Model | ir.Graph) -> Counter[str]:
    """How many nodes of each (domain-qualified) op type the graph has."""
    graph = model.graph if isinstance(model, ir.Model) else model
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in graph)


def parameter_count(model: ir.Model | ir.Graph) -> tuple[int, int]:
    """``(number of parameters, bytes)`` held in initializers."""
    graph = model.graph if isinstance(model, ir.Model) else model
    count = nbytes = 0
    for v in graph.initializers.values():
        if v.const_value is not None:
            count += v.const_value.size
            nbytes += v.const_value.nbytes
    return count, nbytes
