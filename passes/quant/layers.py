"""The layers quantization passes work on, and the Q/DQ rewrites they share.

A *layer* is a MatMul, Gemm or Conv whose weight is a constant. Quantizing its weight replaces
the float initializer by an integer one and a ``DequantizeLinear`` (per output channel, or
blocked along the input channels for group quantization); quantizing its activation inserts a
``QuantizeLinear`` -> ``DequantizeLinear`` pair on its input. The exported model is thus
standard ONNX, and backends pattern-match ``DQ -> MatMul/Conv`` into integer kernels.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passes._utils import Namer, add_initializer, constant, int_attr, is_onnx_op, node_label
from passes.quant.scheme import QuantParams, quant_dtype

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")


@dataclass
class QuantLayer:
    """A node with a constant weight.

    ``out_axis`` is the weight's output-channel axis (per-channel scales run along it) and
    ``reduce_axis`` its input-channel axis (split into groups by group quantization).
    """

    node: ir.Node
    weight_index: int  #: which input of ``node`` is the weight
    out_axis: int
    reduce_axis: int

    @property
    def name(self) -> str:
        """The node's name (or a label made from its op type and output)."""
        return node_label(self.node)

    @property
    def op_type(self) -> str:
        """``MatMul``, ``Gemm`` or ``Conv``."""
        return self.node.op_type

    @property
    def weight(self) -> ir.Value:
        """The weight value (an initializer until it is quantized)."""
        value = self.node.inputs[self.weight_index]
        if value is None:  # find_layers only returns layers with a weight
            raise ValueError(f"{self.name} has no weight input")
        return value

    @property
    def activation(self) -> ir.Value | None:
        """The data input (input 0)."""
        return self.node.inputs[0]

    def weight_array(self) -> np.ndarray:
        """The float weight (raises ``ValueError`` once it is no longer a float constant)."""
        w = constant(self.weight)
        if w is None or w.dtype.kind != "f":
            raise ValueError(f"{self.name}: weight '{self.weight.name}' is not a float constant")
        return w


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` equals one of ``patterns`` or matches one as a glob (``*``, ``?``, ``[...]``)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _layer(node: ir.Node) -> QuantLayer | None:
    if not is_onnx_op(node, *QUANTIZABLE_OPS) or len(node.inputs) < 2:
        return None
    w = constant(node.inputs[1])
    if w is None or w.dtype.kind != "f" or node.inputs[0] is None:
        return None
    if node.op_type == "MatMul" and w.ndim == 2:
        return QuantLayer(node, 1, out_axis=1, reduce_axis=0)
    if node.op_type == "Gemm" and w.ndim == 2 and int_attr(node, "transA", 0) == 0:
        return QuantLayer(node, 1, *((0, 1) if int_attr(node, "transB", 0) else (1, 0)))
    if node.op_type == "Conv" and w.ndim >= 3:
        return QuantLayer(node, 1, out_axis=0, reduce_axis=1)
    return None


def find_layers(
    model: ir.Model, op_types: Sequence[str] = QUANTIZABLE_OPS, skip: Iterable[str] = ()
) -> list[QuantLayer]:
    """Quantizable layers in graph order, minus those whose name matches a ``skip`` pattern."""
    skip = list(skip)
    layers = []
    for node in model.graph:
        layer = _layer(node)
        if layer is not None and layer.op_type in op_types and not matches_any(layer.name, skip):
            layers.append(layer)
    return layers


def weight_bytes(value: ir.Value | None) -> int:
    """Bytes of a constant (sub-byte types counted packed), 0 for anything else."""
    return value.const_value.nbytes if value is not None and value.const_value is not None else 0


def require_opset(graph: ir.Graph, version: int) -> None:
    """Raise the graph's default-domain opset to at least ``version`` (20 -> 21 only adds types and
    blocked quantization to the ops this compiler uses)."""
    current = graph.opset_imports.get("", 1)
    if current < version:
        graph.opset_imports[""] = version


def _store(q: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integers in the numpy (or ml_dtypes) type of a ``bits``-bit ONNX integer."""
    return q.astype(quant_dtype(bits, signed).numpy())


def _shaped_param(a: np.ndarray, per_axis: int | None) -> np.ndarray:
    """Per-tensor: a scalar; per-axis: 1-D; blocked (``per_axis is None`` and ndim > 1): as is."""
    if a.size == 1:
        return a.reshape(())
    if per_axis is not None:
        return a.reshape(-1)
    return a


def quantize_weight_in_place(
    graph: ir.Graph,
    layer: QuantLayer,
    q: np.ndarray,
    params: QuantParams,
    *,
    block_size: int = 0,
    namer: Namer | None = None,
) -> ir.Node:
    """Replace ``layer``'s float weight by integer ``q`` and a ``DequantizeLinear`` feeding the layer.

    ``params`` are per-channel along ``layer.out_axis`` (``block_size == 0``) or blocked along
    ``layer.reduce_axis`` (``block_size`` > 0, parameters in ONNX's blocked layout). The zero point
    is stored only when it is not all zeros. Returns the new DequantizeLinear node; the old
    weight initializer is dropped when nothing else uses it.
    """
    namer = namer or Namer(graph)
    if block_size or params.bits < 8:
        require_opset(graph, 21)  # blocked quantization and 4-bit types
    old = layer.weight
    base = old.name or layer.name
    q_value = add_initializer(graph, namer(f"{base}_q"), _store(q, params.bits, params.signed))
    per_axis = layer.out_axis if block_size == 0 else None
    inputs = [q_value, add_initializer(graph, namer(f"{base}_scale"), _shaped_param(params.scale, per_axis))]
    if not params.symmetric or not params.signed:
        zp = _store(_shaped_param(params.zero_point, per_axis), params.bits, params.signed)
        inputs.append(add_initializer(graph, namer(f"{base}_zero_point"), zp))
    axis = layer.out_axis if block_size == 0 else layer.reduce_axis
    attributes = [ir.AttrInt64("axis", axis)]
    if block_size:
        attributes.append(ir.AttrInt64("block_size", block_size))
    dq = ir.Node("", "DequantizeLinear", inputs, attributes, name=namer(f"{layer.name}/weight_dq"), num_outputs=1)
    out = dq.outputs[0]
    out.name = namer(f"{base}_dq")
    out.dtype = ir.DataType.FLOAT
    out.shape = ir.Shape(q.shape)
    graph.insert_before(layer.node, dq)
    layer.node.replace_input_with(layer.weight_index, out)
    if old.name is not None and not old.uses() and not old.is_graph_output() and old.name in graph.initializers:
        del graph.initializers[old.name]
    return dq


def insert_activation_qdq(
    graph: ir.Graph,
    value: ir.Value,
    params: QuantParams,
    users: Sequence[ir.Node],
    *,
    namer: Namer | None = None,
) -> tuple[ir.Node, ir.Node]:
    """Insert ``QuantizeLinear -> DequantizeLinear`` (per-tensor ``params``) on ``value`` and make
    ``users`` read the dequantized value. Returns the (Q, DQ) nodes."""
    namer = namer or Namer(graph)
    base = value.name or "act"
    scale = add_initializer(graph, namer(f"{base}_scale"), params.scale.reshape(()).astype(np.float32))
    zp_arr = _store(params.zero_point.reshape(()), params.bits, params.signed)
    zero = add_initializer(graph, namer(f"{base}_zero_point"), zp_arr)
    q = ir.Node("", "QuantizeLinear", [value, scale, zero], name=namer(f"{base}/q"), num_outputs=1)
    q.outputs[0].name = namer(f"{base}_q")
    q.outputs[0].dtype = quant_dtype(params.bits, params.signed)
    q.outputs[0].shape = value.shape.copy() if value.shape is not None else None
    dq = ir.Node("", "DequantizeLinear", [q.outputs[0], scale, zero], name=namer(f"{base}/dq"), num_outputs=1)
    dq.outputs[0].name = namer(f"{base}_dq")
    dq.outputs[0].type = value.type
    dq.outputs[0].shape = value.shape.copy() if value.shape is not None else None
    first = min(users, key=lambda n: _position(graph, n))
    graph.insert_before(first, [q, dq])
    for user in users:
        for i, inp in enumerate(user.inputs):
            if inp is value:
                user.replace_input_with(i, dq.outputs[0])
    return q, dq


def _position(graph: ir.Graph, node: ir.Node) -> int:
    for i, n in enumerate(graph):
        if n is node:
            return i
    raise ValueError(f"node {node_label(node)} is not in the graph")


def bias_add(layer: QuantLayer) -> tuple[ir.Node, int, np.ndarray] | None:
    """The single ``Add`` of a constant after ``layer`` (node, which input is the constant, its value)."""
    out = layer.node.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1:
        return None
    add = uses[0].node
    if not is_onnx_op(add, "Add") or len(add.inputs) != 2:
        return None
    index = 1 if add.inputs[0] is out else 0
    c = constant(add.inputs[index])
    return (add, index, c) if c is not None else None
