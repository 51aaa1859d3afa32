"""``decompose_cacc_ops``: rewrite ``cacc::FusedConv`` / ``cacc::FusedMatMul`` back into standard
ONNX ops (``Conv`` / ``MatMul`` [+ ``Add``] + activation ops), e.g. for the ONNX exporter.

Activations become their ONNX op where one exists (``Relu``, ``Clip``, ``HardSwish``, ...);
``Silu`` becomes ``Sigmoid`` + ``Mul``; ``Gelu``/``GeluTanh`` become ``Gelu`` (with
``approximate="tanh"``) on opset >= 20 and the ``Erf``/``Tanh`` formulas below that.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from compiler.ir.ops.registry import CACC_DOMAIN, attr
from passes._utils import (
    Namer,
    add_initializer,
    drop_unused_initializers,
    drop_unused_storage_casts,
    is_onnx_op,
    node_label,
    storage_cast,
    storage_source,
    take_over,
)
from passes.base import Pass, Property, register_pass

_ACTIVATION_KEYS = ("activation", "activation_params")


class _Builder:
    """Appends standard nodes computing an activation, naming values uniquely."""

    def __init__(self, graph: ir.Graph, namer: Namer, base: str, like: ir.Value, opset: int) -> None:
        self.graph, self.namer, self.base, self.like, self.opset = graph, namer, base, like, opset
        self.nodes: list[ir.Node] = []

    def const(self, value: float) -> ir.Value:
        dtype = self.like.dtype or ir.DataType.FLOAT
        return add_initializer(self.graph, self.namer(f"{self.base}_c"), np.array(value), dtype)

    def op(self, op_type: str, inputs: list[ir.Value | None], **attributes: str | float) -> ir.Value:
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in attributes.items()]
        node = ir.Node("", op_type, inputs, attributes=attrs, name=self.namer(f"{self.base}/{op_type}"))
        out = node.outputs[0]
        out.name = self.namer(f"{self.base}_{op_type.lower()}")
        out.type, out.shape = self.like.type, self.like.shape
        self.nodes.append(node)
        return out

    def gelu(self, x: ir.Value, tanh: bool) -> ir.Value:
        if self.opset >= 20:
            return self.op("Gelu", [x], approximate="tanh" if tanh else "none")
        if tanh:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Add", [x, self.op("Mul", [cube, self.const(0.044715)])])
            t = self.op("Tanh", [self.op("Mul", [inner, self.const(math.sqrt(2.0 / math.pi))])])
        else:  # 0.5 x (1 + erf(x / sqrt 2))
            t = self.op("Erf", [self.op("Mul", [x, self.const(1.0 / math.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.const(0.5)]), self.op("Add", [t, self.const(1.0)])])

    def activation(self, x: ir.Value, name: str, params: list[float], where: str) -> ir.Value:
        if name in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
            return self.op(name, [x])
        if name == "Clip":
            lo, hi = params
            return self.op(
                "Clip",
                [x, None if math.isinf(lo) else self.const(lo), None if math.isinf(hi) else self.const(hi)],
            )
        if name == "LeakyRelu":
            return self.op("LeakyRelu", [x], alpha=float(params[0]))
        if name == "HardSigmoid":
            return self.op("HardSigmoid", [x], alpha=float(params[0]), beta=float(params[1]))
        if name in ("Gelu", "GeluTanh"):
            return self.gelu(x, name == "GeluTanh")
        if name == "Silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        raise PassError(f"cannot decompose activation '{name}'", node=where)


def _bias_for(graph: ir.Graph, namer: Namer, label: str, w: ir.Value | None, bias: ir.Value, out: ir.Value) -> ir.Value:
    """The bias ``Add`` input of a decomposed ``FusedMatMul``. A quantized layer's (weight from a
    ``DequantizeLinear``) constant 1-D bias is stored at the output's rank (``[1, ..., 1, N]``, as torch's export
    writes it): ONNX Runtime fuses ``MatMul`` + ``Add`` of a 1-D bias into ``Gemm`` before its QDQ fusions, and
    a ``Gemm`` between ``DequantizeLinear`` nodes runs in fp32 instead of as an integer kernel."""
    producer = w.producer() if w is not None else None
    rank = len(out.shape) if out.shape is not None else 0
    stored = storage_source(bias)  # a float16-stored bias keeps its storage cast, after the reshape
    held = stored if stored is not None else bias
    if producer is None or not is_onnx_op(producer, "DequantizeLinear") or rank < 2 or held.const_value is None:
        return bias
    arr = held.const_value.numpy()
    if arr.ndim != 1:
        return bias
    shaped = add_initializer(graph, namer(f"{label}_bias_r{rank}"), arr.reshape([1] * (rank - 1) + [-1]), held.dtype)
    return shaped if stored is None else storage_cast(graph, namer, shaped)


def decompose_cacc_ops(model: ir.Model) -> bool:
    """Replace every cacc fused op of ``model`` by standard ops (in place); whether any was replaced."""
    graph = model.graph
    namer = Namer(graph)
    opset = model.opset_imports.get("", 20)
    changed = False
    for node in list(graph):
        if node.domain != CACC_DOMAIN or node.op_type not in ("FusedConv", "FusedMatMul"):
            continue
        label = node_label(node)
        out = node.outputs[0]
        b = _Builder(graph, namer, label, out, opset)
        inputs = list(node.inputs)
        if node.op_type == "FusedConv":
            attrs = {k: a for k, a in node.attributes.items() if k not in _ACTIVATION_KEYS}
            conv = ir.Node("", "Conv", inputs, attributes=list(attrs.values()), name=namer(f"{label}/Conv"))
            conv.outputs[0].name = namer(f"{label}_conv")
            b.nodes.append(conv)
            y = conv.outputs[0]
        else:
            y = b.op("MatMul", inputs[:2])
            if len(inputs) > 2 and inputs[2] is not None:
                y = b.op("Add", [y, _bias_for(graph, namer, label, inputs[1], inputs[2], out)])
        y.type, y.shape = out.type, out.shape
        name = attr(node, "activation", "")
        if name:
            y = b.activation(y, name, [float(p) for p in attr(node, "activation_params", [])], label)
        graph.insert_before(node, b.nodes)
        take_over(out, y, namer)
        graph.remove(node, safe=True)
        drop_unused_initializers(graph, [v for v in inputs[2:3] if v is not None])  # a bias stored reshaped
        changed = True
    if changed:
        drop_unused_storage_casts(graph)
    if changed and not any(n.domain == CACC_DOMAIN for n in graph):
        model.opset_imports.pop(CACC_DOMAIN, None)
    return changed


@register_pass
class DecomposeCaccOpsPass(Pass):
    """Rewrites cacc fused ops into standard ONNX ops."""

    name = "decompose_cacc_ops"
    description = "rewrite cacc::FusedConv / cacc::FusedMatMul into standard ONNX ops"
    guarantees = frozenset({Property.STANDARD_OPS_ONLY})
    stage = "lowering"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Decompose in place; modified when any cacc op was replaced."""
        return ir.passes.PassResult(model, modified=decompose_cacc_ops(model))
