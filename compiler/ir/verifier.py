"""IR verifier, in the spirit of ``torch.fx.Graph.lint``: finds every problem, then raises once."""

from __future__ import annotations

import copy

import onnx_ir as ir

from compiler.errors import CompilerError, VerificationError
from compiler.ir.ops.registry import lookup
from compiler.ir.shapes import infer_node


def _shapes_compatible(a: ir.Shape, b: ir.Shape) -> bool:
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a, b))


def find_problems(model: ir.Model, *, check_types: bool = True) -> list[str]:
    """Every invariant violation in ``model``, as readable sentences (empty when valid).

    Checks: unique value names, inputs defined before use (topological order, no dangling
    values), graph outputs produced, every op supported, and (``check_types``) that each
    node's recorded output dtypes/shapes agree with what inference derives from its inputs.
    """
    graph = model.graph
    problems: list[str] = []
    available: set[ir.Value] = set(graph.inputs) | set(graph.initializers.values())
    names: dict[str, str] = {}

    def claim(name: str, owner: str) -> None:
        if not name:
            return
        if name in names:
            problems.append(f"value name '{name}' is defined twice ({names[name]} and {owner})")
        else:
            names[name] = owner

    for v in graph.inputs:
        claim(v.name or "", "graph input")
    for name, v in graph.initializers.items():
        if v in graph.inputs:
            continue
        claim(name, "initializer")
        if v.const_value is None:
            problems.append(f"initializer '{name}' has no data")

    opsets = dict(model.opset_imports)
    for index, node in enumerate(graph):
        label = node.name or f"#{index} {node.op_type}"
        if node.graph is not graph:
            problems.append(f"node '{label}' does not belong to the graph")
        if lookup(node.domain, node.op_type) is None:
            problems.append(f"node '{label}': unsupported op {node.domain or 'ai.onnx'}::{node.op_type}")
        for i, value in enumerate(node.inputs):
            if value is None:
                continue
            if value not in available:
                if value.producer() is None and value not in graph.inputs and value.const_value is None:
                    problems.append(f"node '{label}' input {i} ('{value.name}') is dangling: nothing produces it")
                else:
                    problems.append(f"node '{label}' input {i} ('{value.name}') is used before it is produced")
        for value in node.outputs:
            claim(value.name or "", f"node '{label}'")
            available.add(value)
        if check_types:
            problems.extend(_check_node_types(node, label, opsets))
    for i, value in enumerate(graph.outputs):
        if value not in available:
            problems.append(f"graph output {i} ('{value.name}') is never produced")
    return problems


def _check_node_types(node: ir.Node, label: str, opsets: dict[str, int]) -> list[str]:
    """Re-infer the node's outputs on shadow copies of its output values and compare."""
    recorded = [(v.dtype, v.shape) for v in node.outputs]
    if all(dtype is None and shape is None for dtype, shape in recorded):
        return []
    saved = [(v.type, copy.copy(v.shape)) for v in node.outputs]
    try:
        for v in node.outputs:
            v.type = None
            v.shape = None
        try:
            infer_node(node, opsets)
        except CompilerError as exc:
            return [f"node '{label}': {exc.message}"]
        inferred = [(v.dtype, v.shape) for v in node.outputs]
    finally:
        for v, (ty, shape) in zip(node.outputs, saved):
            v.type = ty
            v.shape = shape
    problems = []
    for v, (rdt, rshape), (idt, ishape) in zip(node.outputs, recorded, inferred):
        if rdt is not None and idt is not None and rdt != idt:
            problems.append(f"node '{label}' output '{v.name}' is recorded as {rdt.name} but computes {idt.name}")
        if rshape is not None and ishape is not None and not _shapes_compatible(rshape, ishape):
            problems.append(f"node '{label}' output '{v.name}' is recorded with shape {rshape} but computes {ishape}")
    return problems


def verify(model: ir.Model, *, check_types: bool = True, pass_name: str | None = None) -> None:
    """Raise :class:`VerificationError` listing every problem if ``model`` is not valid IR."""
    problems = find_problems(model, check_types=check_types)
    if problems:
        raise VerificationError(problems, pass_name=pass_name)
