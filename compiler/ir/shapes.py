"""Shape and dtype inference, node by node.

Standard ONNX ops use ONNX's own schema inference (with constant inputs passed as
data, so ``Reshape`` by a constant shape is exact); ops in cacc's domain use the
``infer`` function registered with their kernel. Working per node (not by handing the
whole model to ``onnx.shape_inference``) means a custom op in the middle of a graph
does not stop inference for everything after it.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from compiler.errors import CompilerError
from compiler.ir.ops.registry import lookup

# Constant inputs larger than this are not passed to ONNX inference as data: no shape
# computation needs them, and serializing them per node would be slow.
_MAX_DATA_ELEMENTS = 1024


def _type_proto(value: ir.Value) -> onnx.TypeProto | None:
    if value.type is None:
        return None
    tp = ir.serde.serialize_type(value.type)
    if value.shape is not None and isinstance(value.type, ir.TensorType):
        shape_proto = tp.tensor_type.shape
        del shape_proto.dim[:]
        for d in value.shape:
            dim = shape_proto.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif d.value is not None:
                dim.dim_param = str(d.value)
    return tp


def _merge(value: ir.Value, dtype: ir.DataType | None, shape: ir.Shape | None) -> None:
    if dtype is not None and dtype != ir.DataType.UNDEFINED:
        value.dtype = dtype
    if shape is not None and (value.shape is None or _more_specific(shape, value.shape)):
        value.shape = shape


def _more_specific(new: ir.Shape, old: ir.Shape) -> bool:
    if len(new) != len(old):
        return True
    known = lambda s: sum(isinstance(d, int) for d in s)  # noqa: E731
    return known(new) >= known(old)


def infer_node(node: ir.Node, opset_imports: dict[str, int]) -> None:
    """Infer and set the dtype/shape of ``node``'s outputs (in place)."""
    opdef = lookup(node.domain, node.op_type)
    if opdef is not None and opdef.infer is not None:
        for value, (dtype, shape) in zip(node.outputs, opdef.infer(node)):
            _merge(value, dtype, shape)
        return
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    version = node.version or opset_imports.get(domain, onnx.defs.onnx_opset_version())
    try:
        schema = onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return  # unknown op: the verifier reports it
    input_types: dict[str, onnx.TypeProto] = {}
    input_data: dict[str, onnx.TensorProto] = {}
    for operand in node.inputs:
        if operand is None or not operand.name:
            continue
        tp = _type_proto(operand)
        if tp is None:
            return  # an input of unknown type: nothing to infer from yet
        input_types[operand.name] = tp
        const = operand.const_value
        if const is not None and const.size <= _MAX_DATA_ELEMENTS:
            input_data[operand.name] = ir.serde.serialize_tensor(const)
    node_proto = ir.serde.serialize_node(node)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in opset_imports.items()]
    try:
        result = onnx.shape_inference.infer_node_outputs(
            schema, node_proto, input_types, input_data, opset_imports=opsets
        )
    except Exception as exc:  # onnx raises InferenceError / RuntimeError with its own text
        raise CompilerError(f"shape inference failed for {node.op_type}: {exc}", node=node.name) from exc
    for value in node.outputs:
        tp = result.get(value.name or "")
        if tp is None or not tp.HasField("tensor_type"):
            continue
        ty = ir.serde.deserialize_type_proto_for_type(tp)
        shape = ir.serde.deserialize_type_proto_for_shape(tp)
        _merge(value, ty.dtype if ty is not None else None, shape)


def infer_shapes(model: ir.Model) -> ir.Model:
    """Infer dtypes and shapes of every value in ``model`` (in place); returns the model."""
    opsets = dict(model.opset_imports)
    for node in model.graph:
        infer_node(node, opsets)
    return model
