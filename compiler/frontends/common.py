"""Steps every frontend ends with: inline functions, check op support (all at once), sort, infer shapes."""

from __future__ import annotations

from collections import defaultdict

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from compiler.errors import FrontendError, UnsupportedOp, UnsupportedOpError
from compiler.ir.ops.registry import lookup
from compiler.ir.shapes import infer_shapes
from compiler.ir.verifier import find_problems

MIN_OPSET = 13


def unsupported_ops(model: ir.Model) -> list[UnsupportedOp]:
    """Every op type in ``model`` without a reference kernel, with the nodes using it."""
    missing: dict[tuple[str, str], list[str]] = defaultdict(list)
    for index, node in enumerate(model.graph.all_nodes()):
        if lookup(node.domain, node.op_type) is None:
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            missing[(domain, node.op_type)].append(node.name or f"#{index}")
    return [UnsupportedOp(op, domain, tuple(nodes)) for (domain, op), nodes in sorted(missing.items())]


def normalize(model: ir.Model, *, source: str | None = None) -> ir.Model:
    """Bring an imported model into cacc's canonical form, or raise a typed error.

    Inlines model-local functions, rejects every unsupported op at once, sorts nodes
    topologically, names unnamed nodes, infers shapes and verifies the structure.
    """
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < MIN_OPSET:
        raise FrontendError(f"default-domain opset {opset} is older than {MIN_OPSET}; upgrade it first", path=source)
    if model.functions:
        common_passes.InlinePass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedOpError(missing, path=source)
    if any(
        a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for n in model.graph for a in n.attributes.values()
    ):
        raise FrontendError("control flow (If/Loop/Scan subgraphs) is not supported", path=source)
    common_passes.TopologicalSortPass()(model)
    common_passes.NameFixPass()(model)
    for value in model.graph.inputs:
        if value.dtype is None or value.shape is None:
            raise FrontendError(f"graph input '{value.name}' has no static dtype/rank", path=source)
    infer_shapes(model)
    problems = find_problems(model, check_types=False)
    if problems:
        raise FrontendError("the imported model is malformed:\n  - " + "\n  - ".join(problems), path=source)
    return model
