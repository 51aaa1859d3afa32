"""``quantize_weight_only``: low-bit (4- or 3-bit) weight-only group quantization, RTN or GPTQ.

A ``Gemm`` layer first becomes ``MatMul`` (+ ``Add``) on its transposed weight (quantize_int8's exact
``prepare_model``), so every dense weight is ``[K, N]``. Each MatMul weight (and Conv, round-to-nearest only)
becomes an int4 initializer ->
``DequantizeLinear(axis = input-channel axis, block_size = group)`` -> the layer; 3-bit weights
use the 3-bit range (-4..3, or 0..7 asymmetric) stored in int4. Optionally (``embeddings``) the
tables of large ``Gather`` embeddings are quantized the same way (rows in groups) and gathered
from the dequantized table.

SpQR-style outliers (``outlier_fraction``): the weights with the largest quantization error stay
in fp16 beside the low-bit matrix, stored as flat int32 indices + fp16 values and written over the
dequantized weight with ``Reshape -> ScatterElements -> Reshape`` (6 bytes per outlier, counted).

Options: ``bits`` (4 | 3), ``group_size`` (128; a layer whose input size K is smaller uses K, a
larger one groups of ``group_size`` and a partial last group; a Conv whose kernel per output
channel, ``C/groups x kh x kw``, fits one group quantizes per output channel),
``symmetric``, ``method`` ("rtn" | "gptq", GPTQ needs calibration data), ``act_order``,
``damp``, ``block`` (GPTQ lazy-batch width), ``skip`` (node name globs), ``overrides`` (glob ->
{bits, group_size, symmetric, method, outlier_fraction, skip}), ``outlier_fraction``,
``embeddings``, ``samples`` (calibration samples used, 0 = all), ``mask_padding`` (GPTQ Hessians
skip padding tokens, read from an integer graph input named like ``*mask*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from passes._utils import Namer, add_initializer, constant, int_attr, is_onnx_op, node_label
from passes.base import LayerRecord, Pass, register_pass
from passes.quant.gptq import GroupQuantized, gptq, rtn, select_outliers
from passes.quant.hessian import collect_hessians, token_mask_input
from passes.quant.layers import QuantLayer, find_layers, matches_any, quantize_weight_in_place, weight_bytes
from passes.quant.scheme import QuantParams, quantize_weight
from passes.quantize_int8 import Int8Options, prepare_model

_LAYER_KEYS = {"bits", "group_size", "symmetric", "method", "outlier_fraction", "skip", "act_order"}
#: Gather tables smaller than this many elements are left in float (nothing to gain).
_MIN_EMBEDDING_ELEMENTS = 1 << 16


@dataclass
class LayerSettings:
    """How one layer is quantized (the pass options, after per-layer overrides)."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    method: str = "rtn"
    act_order: bool = False
    outlier_fraction: float = 0.0
    skip: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` on an unsupported combination."""
        if self.bits not in (3, 4):
            raise ValueError(f"bits must be 4 or 3 (stored in int4), got {self.bits}")
        if self.group_size <= 0:
            raise ValueError(f"group_size must be positive, got {self.group_size}")
        if self.method not in ("rtn", "gptq"):
            raise ValueError(f"method must be 'rtn' or 'gptq', got {self.method!r}")
        if not 0.0 <= self.outlier_fraction < 0.5:
            raise ValueError(f"outlier_fraction must be in [0, 0.5), got {self.outlier_fraction}")


@dataclass
class WeightOnlyOptions:
    """Options of :class:`QuantizeWeightOnly` (see the module docstring)."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    method: str = "rtn"
    act_order: bool = False
    damp: float = 0.01
    block: int = 128
    skip: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    outlier_fraction: float = 0.0
    embeddings: bool = True
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm", "Conv"])
    samples: int = 0
    mask_padding: bool = True

    def __post_init__(self) -> None:
        self.defaults().validate()
        if not 0.0 <= self.damp < 1.0:
            raise ValueError(f"damp must be in [0, 1), got {self.damp}")
        if self.block <= 0:
            raise ValueError(f"block must be positive, got {self.block}")
        for pattern, values in self.overrides.items():
            unknown = sorted(set(values) - _LAYER_KEYS)
            if unknown:
                raise ValueError(f"override '{pattern}': unknown key(s) {', '.join(unknown)}")
            replace(self.defaults(), **values).validate()

    def defaults(self) -> LayerSettings:
        """The settings of a layer without overrides."""
        return LayerSettings(
            self.bits, self.group_size, self.symmetric, self.method, self.act_order, self.outlier_fraction
        )

    def settings_for(self, name: str) -> LayerSettings:
        """The settings of layer ``name``: defaults, then every matching override in order."""
        s = self.defaults()
        for pattern, values in self.overrides.items():
            if matches_any(name, [pattern]):
                s = replace(s, **values)
        return s

    def needs_calibration(self) -> bool:
        """Whether any layer may use GPTQ (or Hessian-weighted outliers)."""
        return self.method == "gptq" or any(v.get("method") == "gptq" for v in self.overrides.values())


def effective_group(k: int, group_size: int) -> int:
    """The group size used for input size ``k``: ``k`` when ``k <= group_size``, else ``group_size``
    with a partial last group. That is the fewest groups (scales) of at most ``group_size`` weights, and
    a power-of-two ``group_size`` keeps the layer packable into ORT's MatMulNBits; an equal split into
    more groups (K = 1,176 as 12 x 98 instead of 9 x 128 + 24) only adds scales."""
    return min(k, group_size)


def _canonical(layer: QuantLayer, w: np.ndarray) -> np.ndarray:
    """The weight as ``[N, K]`` (rows = output channels)."""
    return w if layer.reduce_axis == 1 else w.T


def _stored_params(gq: GroupQuantized, transpose: bool) -> QuantParams:
    """Blocked parameters in the weight's own layout; 3-bit codes are stored as int4."""
    scale, zp = (gq.scale.T, gq.zero_point.T) if transpose else (gq.scale, gq.zero_point)
    return QuantParams(np.ascontiguousarray(scale), np.ascontiguousarray(zp), 4, gq.signed)


def _shape_const(graph: ir.Graph, namer: Namer, base: str, shape: list[int]) -> ir.Value:
    return add_initializer(graph, namer(base), np.array(shape, np.int64))


def add_outliers(
    graph: ir.Graph,
    layer: QuantLayer,
    dq: ir.Node,
    flat_index: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, ...],
    namer: Namer,
) -> int:
    """Write fp16 ``values`` at ``flat_index`` (row-major into the weight) over ``dq``'s output:
    ``Reshape([-1]) -> ScatterElements(axis 0) -> Reshape(weight shape)``. Returns the bytes added."""
    out = dq.outputs[0]
    base = out.name or layer.name
    idx = add_initializer(graph, namer(f"{base}_outlier_index"), flat_index.astype(np.int32))
    val = add_initializer(graph, namer(f"{base}_outlier_value"), values.astype(np.float16))
    flat_shape = _shape_const(graph, namer, f"{base}_flat_shape", [-1])
    full_shape = _shape_const(graph, namer, f"{base}_shape", list(shape))
    total = int(np.prod(shape))
    nodes = [
        ir.Node("", "Reshape", [out, flat_shape], name=namer(f"{layer.name}/outlier_flat"), num_outputs=1),
        ir.Node("", "Cast", [val], [ir.AttrInt64("to", ir.DataType.FLOAT)], name=namer(f"{layer.name}/outlier_cast")),
    ]
    scatter = ir.Node(
        "",
        "ScatterElements",
        [nodes[0].outputs[0], idx, nodes[1].outputs[0]],
        [ir.AttrInt64("axis", 0)],
        name=namer(f"{layer.name}/outliers"),
    )
    back = ir.Node("", "Reshape", [scatter.outputs[0], full_shape], name=namer(f"{layer.name}/outlier_shape"))
    for node, name, dims in (
        (nodes[0], f"{base}_flat", [total]),
        (nodes[1], f"{base}_outlier_f32", [len(values)]),
        (scatter, f"{base}_with_outliers", [total]),
        (back, f"{base}_full", list(shape)),
    ):
        node.outputs[0].name = namer(name)
        node.outputs[0].dtype = ir.DataType.FLOAT
        node.outputs[0].shape = ir.Shape(dims)
    graph.insert_before(layer.node, [*nodes, scatter, back])
    layer.node.replace_input_with(layer.weight_index, back.outputs[0])
    return sum(weight_bytes(v) for v in (idx, val, flat_shape, full_shape))


def quantize_layer(
    graph: ir.Graph,
    layer: QuantLayer,
    settings: LayerSettings,
    hessian: np.ndarray | None,
    *,
    damp: float,
    block: int,
    namer: Namer,
) -> tuple[str, int, str]:
    """Quantize ``layer`` in place; returns ``(action, bytes_after, note)``."""
    w = layer.weight_array()
    k = int(w.shape[layer.reduce_axis])
    group = effective_group(k, settings.group_size)
    mode = "sym" if settings.symmetric else "asym"
    if layer.op_type == "Conv":
        # groups run along the input channels, one set per kernel tap; where a whole output channel's kernel
        # fits one group (depthwise convs, a stem conv on 3 channels) it takes one scale per output channel:
        # groups of 1 or 3 channels once stored a scale per weight or two, more than the fp32 weight
        kernel = int(np.prod(w.shape[1:]))
        per_channel = group < kernel <= settings.group_size
        block = 0 if per_channel else group  # 0: per-channel parameters along the output axis
        q, p = quantize_weight(
            w, layer.out_axis, layer.reduce_axis, settings.bits, symmetric=settings.symmetric, group_size=block
        )
        p = QuantParams(p.scale, p.zero_point, 4, p.signed)
        dq = quantize_weight_in_place(graph, layer, q, p, block_size=block, namer=namer)
        notes = ["conv: round-to-nearest"] if settings.method == "gptq" else []
        if per_channel:
            notes.append(f"one group per output channel ({kernel} weights)")
        return f"int{settings.bits} g{kernel if per_channel else group} {mode} rtn", _dq_bytes(dq), "; ".join(notes)
    w2 = _canonical(layer, w)
    use_gptq = settings.method == "gptq" and hessian is not None
    mask = None
    if settings.outlier_fraction > 0:
        diag = np.diag(hessian) if hessian is not None else None
        mask = select_outliers(
            w2, settings.outlier_fraction, settings.bits, group, symmetric=settings.symmetric, hessian_diag=diag
        )
    if use_gptq and hessian is not None:
        gq = gptq(
            w2,
            hessian,
            settings.bits,
            group,
            symmetric=settings.symmetric,
            act_order=settings.act_order,
            damp=damp,
            block=block,
            outliers=mask,
        )
    else:
        gq = rtn(w2, settings.bits, group, symmetric=settings.symmetric, outliers=mask)
    transpose = layer.reduce_axis == 0
    q = gq.q.T if transpose else gq.q
    dq = quantize_weight_in_place(
        graph, layer, np.ascontiguousarray(q), _stored_params(gq, transpose), block_size=group, namer=namer
    )
    size = _dq_bytes(dq)
    note = "no calibration Hessian: round-to-nearest" if settings.method == "gptq" and not use_gptq else ""
    method = "gptq" + ("+act_order" if settings.act_order else "") if use_gptq else "rtn"
    if mask is not None and mask.any():
        rows, cols = np.nonzero(gq.outliers)  # row-major over [N, K]
        flat = cols * w2.shape[0] + rows if transpose else rows * w2.shape[1] + cols
        order = np.argsort(flat)
        size += add_outliers(graph, layer, dq, flat[order], gq.outlier_values[order], w.shape, namer)
        note = (note + "; " if note else "") + f"{int(mask.sum())} fp16 outliers"
    return f"int{settings.bits} g{group} {mode} {method}", size, note


def _dq_bytes(dq: ir.Node) -> int:
    return sum(weight_bytes(v) for v in dq.inputs)


def embedding_gathers(model: ir.Model, skip: list[str]) -> list[QuantLayer]:
    """Gather nodes reading rows (axis 0) of a large constant 2-D float table, as layers whose
    "output channels" are the table rows (axis 0) and whose groups run along axis 1."""
    found = []
    for node in model.graph:
        if not is_onnx_op(node, "Gather") or int_attr(node, "axis", 0) != 0:
            continue
        table = constant(node.inputs[0])
        if table is None or table.ndim != 2 or table.dtype.kind != "f" or table.size < _MIN_EMBEDDING_ELEMENTS:
            continue
        if matches_any(node_label(node), skip):
            continue
        found.append(QuantLayer(node, 0, out_axis=0, reduce_axis=1))
    return found


@register_pass
class QuantizeWeightOnly(Pass):
    """Weight-only 4-/3-bit group quantization (RTN or GPTQ) with optional fp16 outliers."""

    name = "quantize_weight_only"
    description = "weight-only int4/int3 group quantization (RTN or GPTQ, act-order, SpQR-style outliers)"
    stage = "compression"
    numerics_tolerance: ClassVar[float | None] = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Quantize every eligible layer's weight."""
        opts = self.parse_options(WeightOnlyOptions)
        # the exact rewrites of quantize_int8: a Gemm layer becomes MatMul [K, N] (+ Add), so its bias and activation
        # fuse with the 4-bit weight and the onnx target can pack it into MatMulNBits (blocked along K)
        prepared = prepare_model(model, Int8Options(op_types=list(opts.op_types), skip=list(opts.skip)))
        layers = find_layers(model, opts.op_types, opts.skip)
        if opts.embeddings:
            layers += embedding_gathers(model, opts.skip)
        settings = {ly.name: opts.settings_for(ly.name) for ly in layers}
        hessians: dict[str, np.ndarray] = {}
        wants = [
            ly
            for ly in layers
            if settings[ly.name].method == "gptq" and not settings[ly.name].skip and ly.op_type == "MatMul"
        ]
        if wants:
            feeds = list(self.calibration_feeds(minimum=1))
            if opts.samples > 0:
                feeds = feeds[: opts.samples]
            mask = token_mask_input(model) if opts.mask_padding else None
            hessians = collect_hessians(model, wants, feeds, mask)
        namer = Namer(model.graph)
        modified = prepared
        for layer in layers:
            s = settings[layer.name]
            before = weight_bytes(layer.weight)
            if s.skip:
                self.context.layers.append(
                    LayerRecord(layer.name, layer.op_type, self.name, "kept fp32", None, None, before, before,
                                note="skipped by override")
                )  # fmt: skip
                continue
            try:
                action, after, note = quantize_layer(
                    model.graph, layer, s, hessians.get(layer.name), damp=opts.damp, block=opts.block, namer=namer
                )
            except (ValueError, np.linalg.LinAlgError) as exc:
                raise PassError(f"{layer.name}: {exc}", pass_name=self.name) from exc
            modified = True
            self.context.layers.append(
                LayerRecord(layer.name, layer.op_type, self.name, action, s.bits, None, before, after, note=note)
            )
        return ir.passes.PassResult(model, modified)
