"""Emit a TVM Relax ``IRModule`` from cacc's IR (an onnx-ir model with inferred shapes).

The module has one function, ``main``, whose parameters are the graph inputs in order;
initializers become Relax constants (and ops on constants fold at emit time, so weight
layout changes cost nothing at run time). Unsupported ops are reported all at once.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax, tirx

from backends.tvm.lowering import EmitContext, find_lowering
from backends.tvm.lowering import quant as _quant  # noqa: F401  (registers the quantization lowerings)
from backends.tvm.lowering.blocked import lower_blocked, plan_blocked_values
from backends.tvm.lowering.common import np_dtype, relax_dtype
from backends.tvm.lowering.qconv import lower_integer_conv
from backends.tvm.lowering.qmatmul import lower_integer
from backends.tvm.lowering.qweight import lower_weight_only
from compiler.errors import BackendError


def _node_label(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def check_supported(model: ir.Model) -> None:
    """Raise one BackendError listing every op type without a Relax lowering (with its nodes)."""
    missing: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph):
        if find_lowering(node.domain, node.op_type) is None:
            qualified = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            missing.setdefault(qualified, []).append(_node_label(node, i))
    if missing:
        lines = []
        for op, nodes in sorted(missing.items()):
            shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
            lines.append(f"  - {op} (nodes: {shown})")
        raise BackendError(f"TVM backend: {len(missing)} unsupported operator type(s):\n" + "\n".join(lines))


def _input_var(value: ir.Value, sym: dict[str, tirx.Var]) -> relax.Var:
    if value.shape is None or value.dtype is None:
        raise BackendError(f"graph input '{value.name}' needs a known dtype and rank")
    dims: list[int | tirx.Var] = []
    for i, d in enumerate(value.shape):
        if isinstance(d, int):
            dims.append(d)
        else:
            name = str(d.value) if d.value is not None else f"{value.name}_dim{i}"
            dims.append(sym.setdefault(name, tirx.Var(name, "int64")))
    dtype = relax_dtype(np.dtype(value.dtype.numpy()))
    return relax.Var(value.name, relax.TensorType(dims, dtype))


def emit_relax(model: ir.Model) -> tvm.IRModule:
    """Lower ``model`` to a Relax IRModule with a single function ``main``."""
    check_supported(model)
    graph = model.graph
    bb = relax.BlockBuilder()
    sym: dict[str, tirx.Var] = {}
    params = [_input_var(v, sym) for v in graph.inputs]
    input_names = {v.name for v in graph.inputs}
    with bb.function("main", params):
        with bb.dataflow():
            ctx = EmitContext(bb)
            ctx.prefer_blocked = plan_blocked_values(graph)
            for value, var in zip(graph.inputs, params, strict=False):
                ctx.bind(value, var)
            for name, init in graph.initializers.items():
                if name not in input_names and init.const_value is not None:
                    ctx.bind(init, np.asarray(init.const_value.numpy()))
            for i, node in enumerate(graph):
                _emit_node(ctx, node, i)
            outs = [ctx.expr(v) for v in graph.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv)
    # bindings a pattern lowering made dead (a dequantized activation the integer GEMM reads quantized)
    return relax.transform.DeadCodeElimination(["main"])(bb.get())


def _emit_node(ctx: EmitContext, node: ir.Node, index: int) -> None:
    label = _node_label(node, index)
    for v in node.inputs:
        if v is not None and v.name and v.name not in ctx.exprs and v.name not in ctx.known and v.const_value:
            ctx.bind(v, np.asarray(v.const_value.numpy()))
    fn = find_lowering(node.domain, node.op_type)
    if fn is None:  # check_supported ran first; kept for type narrowing
        raise BackendError(f"no lowering for {node.op_type}", node=label)
    try:
        integer = lower_integer(ctx, node)  # quantized matmul / pointwise conv patterns -> integer kernels
        if integer is None:
            integer = lower_integer_conv(ctx, node)
        if integer is None:
            integer = lower_weight_only(ctx, node)  # 4-bit weights unpacked in the kernel
        if integer is None:
            integer = lower_blocked(ctx, node)  # add / relu / per-tensor Q, DQ of channel-blocked values
        outs = integer if integer is not None else list(fn(ctx, node))
    except BackendError as exc:
        if exc.node is None:
            raise BackendError(exc.message, node=label) from exc
        raise
    except Exception as exc:  # TVM raises its own error types from struct-info inference
        raise BackendError(f"lowering {node.op_type} to Relax failed: {exc}", node=label) from exc
    if len(outs) < len([o for o in node.outputs if o is not None and o.name]):
        raise BackendError(f"{node.op_type} lowering produced {len(outs)} outputs", node=label)
    for value, out in zip(node.outputs, outs, strict=False):
        if value is None or not value.name:
            continue
        if isinstance(out, np.generic):  # numpy reductions / takes on 0-d data return scalars
            out = np.asarray(out)
        if isinstance(out, np.ndarray) and value.dtype is not None:  # keep the IR's dtype for known values
            want = np_dtype(value.dtype, node)
            if out.dtype != want:
                out = out.astype(want)
        ctx.bind(value, out)
