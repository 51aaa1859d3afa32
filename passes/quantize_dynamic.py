"""``quantize_dynamic``: int8 dynamic quantization (activation scales computed at run time).

Weights: per-output-channel symmetric int8, as in ``quantize_int8``. Activations, per tensor:
``DynamicQuantizeLinear(x) -> (q, scale, zero point) -> DequantizeLinear`` (uint8 asymmetric; ONNX
Runtime fuses it with the MatMul into ``DynamicQuantizeMatMul``). Per token (``per_token=True``): the
scale of each row (last axis) is ``max |x| / 127`` computed with standard ops, then ``QuantizeLinear``
/ ``DequantizeLinear`` with that blocked scale (``block_size`` = the row length, int8 symmetric).
No calibration data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_ir as ir

from passes._utils import Namer, add_initializer, constant, rank, static_shape
from passes.base import LayerRecord, Pass, register_pass
from passes.quant.layers import (
    QuantLayer,
    find_layers,
    matches_any,
    quantize_weight_in_place,
    require_opset,
    weight_bytes,
)
from passes.quant.scheme import quantize_weight
from passes.quantize_int8 import Int8Options, prepare_model

PASS_NAME = "quantize_dynamic"


@dataclass
class DynamicOptions:
    """Options of ``quantize_dynamic``. ``layers`` maps a node-name glob to ``"fp32"``."""

    per_token: bool = False
    skip: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm"])
    layers: dict[str, Any] = field(default_factory=dict)
    min_weight_elements: int = 128
    reduce_range: bool | None = None  #: 7-bit weights (see ``quantize_int8``); None: on for target onnx

    def __post_init__(self) -> None:
        unknown = sorted(set(self.op_types) - {"MatMul", "Gemm"})
        if unknown:
            raise ValueError(f"op_types {unknown} cannot be dynamically quantized; use MatMul / Gemm")
        bad = {k: v for k, v in self.layers.items() if v != "fp32"}
        if bad:
            raise ValueError(f"layers overrides must be 'fp32', got {bad}")


def _reason(layer: QuantLayer, opts: DynamicOptions) -> str:
    if matches_any(layer.name, opts.skip):
        return "in the skip list"
    if any(matches_any(layer.name, [p]) for p in opts.layers):
        return "kept fp32 by a per-layer override"
    if layer.weight_array().size < opts.min_weight_elements:
        return f"weight has fewer than {opts.min_weight_elements} elements: int8 would not pay off"
    if constant(layer.activation) is not None:
        return "data input is a constant: nothing to gain at run time"
    if opts.per_token and (rank(layer.activation) is None or static_shape(layer.weight) is None):
        return "per-token quantization needs the input's rank"
    return ""


def _dynamic_per_tensor(graph: ir.Graph, x: ir.Value, users: list[ir.Node], namer: Namer) -> None:
    base = x.name or "act"
    dql = ir.Node("", "DynamicQuantizeLinear", [x], name=namer(f"{base}/dynamic_q"), num_outputs=3)
    for out, suffix, dtype in zip(dql.outputs, ("q", "scale", "zero_point"), ("UINT8", "FLOAT", "UINT8")):
        out.name = namer(f"{base}_dyn_{suffix}")
        out.dtype = ir.DataType[dtype]
    dql.outputs[0].shape = x.shape.copy() if x.shape is not None else None
    dql.outputs[1].shape = dql.outputs[2].shape = ir.Shape([])
    dq = ir.Node("", "DequantizeLinear", list(dql.outputs), name=namer(f"{base}/dynamic_dq"), num_outputs=1)
    _finish(graph, x, users, [dql, dq], namer)


def _dynamic_per_token(graph: ir.Graph, x: ir.Value, users: list[ir.Node], k: int, namer: Namer) -> None:
    require_opset(graph, 21)
    base = x.name or "act"
    r = rank(x) or 2

    def node(op: str, inputs: list[ir.Value], **attrs: Any) -> ir.Node:
        attributes = [ir.AttrInt64(n, v) if isinstance(v, int) else ir.AttrInt64s(n, v) for n, v in attrs.items()]
        n = ir.Node("", op, inputs, attributes, name=namer(f"{base}/{op}"), num_outputs=1)
        n.outputs[0].name = namer(f"{base}_{op.lower()}")
        n.outputs[0].dtype = ir.DataType.FLOAT
        return n

    absx = node("Abs", [x])
    axes = add_initializer(graph, namer(f"{base}_axes"), np.array([-1], np.int64))
    amax = node("ReduceMax", [absx.outputs[0], axes], keepdims=1)
    inv = add_initializer(graph, namer(f"{base}_inv127"), np.array(1.0 / 127.0, np.float32))
    scaled = node("Mul", [amax.outputs[0], inv])
    tiny = add_initializer(graph, namer(f"{base}_min_scale"), np.array(1e-12, np.float32))
    scale = node("Max", [scaled.outputs[0], tiny])
    q = ir.Node(
        "",
        "QuantizeLinear",
        [x, scale.outputs[0]],
        [ir.AttrInt64("axis", r - 1), ir.AttrInt64("block_size", k), ir.AttrInt64("output_dtype", ir.DataType.INT8)],
        name=namer(f"{base}/token_q"),
        num_outputs=1,
    )
    q.outputs[0].name = namer(f"{base}_token_q")
    q.outputs[0].dtype = ir.DataType.INT8
    q.outputs[0].shape = x.shape.copy() if x.shape is not None else None
    dq = ir.Node(
        "",
        "DequantizeLinear",
        [q.outputs[0], scale.outputs[0]],
        [ir.AttrInt64("axis", r - 1), ir.AttrInt64("block_size", k)],
        name=namer(f"{base}/token_dq"),
        num_outputs=1,
    )
    _finish(graph, x, users, [absx, amax, scaled, scale, q, dq], namer)


def _finish(graph: ir.Graph, x: ir.Value, users: list[ir.Node], nodes: list[ir.Node], namer: Namer) -> None:
    out = nodes[-1].outputs[0]
    out.name = namer(f"{x.name or 'act'}_dq")
    out.dtype = ir.DataType.FLOAT
    out.shape = x.shape.copy() if x.shape is not None else None
    first = next(n for n in graph if n in set(users))
    graph.insert_before(first, nodes)
    for user in users:
        for i, inp in enumerate(user.inputs):
            if inp is x:
                user.replace_input_with(i, out)


def quantize_dynamic_layers(
    model: ir.Model, layers: list[QuantLayer], opts: DynamicOptions, *, reduce_range: bool = False
) -> list[LayerRecord]:
    """Quantize ``layers`` dynamically in place (weights int8 per channel, activations at run time)."""
    graph = model.graph
    namer = Namer(graph)
    records = []
    groups: dict[ir.Value, list[QuantLayer]] = {}
    for layer in layers:
        before = weight_bytes(layer.weight)
        q, params = quantize_weight(layer.weight_array(), layer.out_axis, layer.reduce_axis, 7 if reduce_range else 8)
        dq = quantize_weight_in_place(graph, layer, q, replace(params, bits=8), namer=namer)
        kind = "per-token" if opts.per_token else "per-tensor"
        records.append(
            LayerRecord(layer.name, layer.op_type, PASS_NAME, f"int8 dynamic ({kind})", 8, 8,
                        bytes_before=before, bytes_after=sum(weight_bytes(v) for v in dq.inputs))
        )  # fmt: skip
        if layer.activation is not None:
            groups.setdefault(layer.activation, []).append(layer)
    for x, members in groups.items():
        users = [m.node for m in members]
        if opts.per_token:
            _dynamic_per_token(graph, x, users, int(q_rows(members[0])), namer)
        else:
            _dynamic_per_tensor(graph, x, users, namer)
    return records


def q_rows(layer: QuantLayer) -> int:
    """The reduction length K of a MatMul layer (its weight's first dimension)."""
    shape = static_shape(layer.weight)
    return shape[layer.reduce_axis] if shape else 0


@register_pass
class QuantizeDynamicPass(Pass):
    """Dynamic int8 quantization of MatMul / Gemm layers."""

    name = PASS_NAME
    description = "dynamic int8 quantization (int8 per-channel weights, activations quantized at run time)"
    stage = "compression"
    numerics_tolerance = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.parse_options(DynamicOptions)
        reduce_range = self.context.target == "onnx" if opts.reduce_range is None else opts.reduce_range
        prepare_model(model, Int8Options(op_types=list(opts.op_types), skip=list(opts.skip)))
        chosen, kept = [], []
        for layer in find_layers(model, opts.op_types):
            reason = _reason(layer, opts)
            if reason:
                n = weight_bytes(layer.weight)
                kept.append(
                    LayerRecord(
                        layer.name, layer.op_type, self.name, "kept fp32", bytes_before=n, bytes_after=n, note=reason
                    )
                )
            else:
                chosen.append(layer)
        order = {layer.name: i for i, layer in enumerate(find_layers(model, opts.op_types))}
        records = quantize_dynamic_layers(model, chosen, opts, reduce_range=reduce_range)
        self.context.layers.extend(sorted(kept + records, key=lambda r: order.get(r.node, len(order))))
        return ir.passes.PassResult(model, bool(records))
