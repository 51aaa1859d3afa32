"""``smooth_quant``: SmoothQuant (Xiao et al., 2023) before int8 W8A8 quantization.

Activation outliers concentrate in a few input channels, which per-tensor activation quantization
cannot represent well. For the layers reading one activation ``X`` (e.g. Q/K/V after a LayerNorm),
each input channel ``j`` gets a scale ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``max|W_j|``
over every such layer's row ``j``): the weights' rows are multiplied by ``s`` and the activation is
divided by it, which leaves the product unchanged (exact in float) but moves the difficulty from the
activation into the weights, which are quantized per output channel.

``1 / s`` is folded into the producer of ``X`` when ``X`` feeds only these layers: a
``LayerNormalization`` / ``Mul`` by a constant (its scale and bias), or a ``MatMul`` by a constant weight
(its output columns, and the bias ``Add`` after it); otherwise a ``Mul`` by ``1 / s`` is inserted in front
of the layers (``insert_mul=False`` skips such groups instead). Statistics come from the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import attr
from passes._utils import Namer, add_initializer, constant, is_onnx_op, node_label, rank
from passes.base import LayerRecord, Pass, register_pass
from passes.quant.calibration import observe
from passes.quant.layers import QuantLayer, find_layers
from passes.quantize_int8 import Int8Options, prepare_model

PASS_NAME = "smooth_quant"


@dataclass
class SmoothQuantOptions:
    """Options of ``smooth_quant``."""

    alpha: float = 0.5  #: migration strength: 0 keeps activations, 1 moves all of their range into weights
    skip: list[str] = field(default_factory=list)
    insert_mul: bool = True  #: where 1/s cannot be folded, insert a Mul (else leave the group alone)
    num_samples: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = act_max_j^alpha / weight_max_j^(1 - alpha)`` (1 where either is 0), clipped to [1e-5, 1e5]."""
    a = np.asarray(act_max, np.float64)
    w = np.asarray(weight_max, np.float64)
    ok = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


def _only_users(value: ir.Value, nodes: list[ir.Node]) -> bool:
    return not value.is_graph_output() and {u.node for u in value.uses()} <= set(nodes)


def _replace_const(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, namer: Namer) -> None:
    old = node.inputs[index]
    value = add_initializer(graph, namer(f"{(old.name if old else None) or 'smooth'}_smoothed"), array)
    node.replace_input_with(index, value)
    if old is not None and old.is_initializer() and not old.uses() and old.name in graph.initializers:
        del graph.initializers[old.name]  # type: ignore[arg-type]


def _fold_into_producer(graph: ir.Graph, x: ir.Value, users: list[ir.Node], inv: np.ndarray, namer: Namer) -> str:
    """Fold ``x * inv`` (per last-axis channel) into ``x``'s producer; the producer's label, "" if impossible."""
    producer = x.producer()
    if producer is None or not _only_users(x, users):
        return ""
    k = inv.shape[0]
    if is_onnx_op(producer, "LayerNormalization") and int(attr(producer, "axis", -1)) in (-1, (rank(x) or 0) - 1):
        gamma = constant(producer.inputs[1]) if len(producer.inputs) > 1 else None
        beta = constant(producer.inputs[2]) if len(producer.inputs) > 2 else None
        if gamma is None or gamma.shape[-1:] != (k,) or (len(producer.inputs) > 2 and beta is None):
            return ""
        _replace_const(graph, producer, 1, (gamma * inv).astype(gamma.dtype), namer)
        if beta is not None:
            _replace_const(graph, producer, 2, (beta * inv).astype(beta.dtype), namer)
        return node_label(producer)
    if is_onnx_op(producer, "Mul"):
        for i in (0, 1):
            c = constant(producer.inputs[i])
            if c is not None and c.ndim >= 1 and c.shape[-1] == k:
                _replace_const(graph, producer, i, (c * inv).astype(c.dtype), namer)
                return node_label(producer)
        return ""
    bias_add = None
    if is_onnx_op(producer, "Add"):
        for i in (0, 1):
            c = constant(producer.inputs[i])
            other = producer.inputs[1 - i]
            if c is not None and c.shape[-1:] == (k,) and other is not None and other.producer() is not None:
                bias_add, bias_index, mm_out = producer, i, other
                producer = other.producer()  # type: ignore[assignment]
                if not _only_users(mm_out, [bias_add]):
                    return ""
                break
    if producer is not None and is_onnx_op(producer, "MatMul"):
        w = constant(producer.inputs[1])
        if w is None or w.ndim != 2 or w.shape[1] != k:
            return ""
        _replace_const(graph, producer, 1, (w * inv[None, :]).astype(w.dtype), namer)
        if bias_add is not None:
            b = constant(bias_add.inputs[bias_index])
            _replace_const(graph, bias_add, bias_index, (b * inv).astype(b.dtype), namer)  # type: ignore[operator,union-attr]
        return node_label(producer)
    return ""


def _insert_mul(graph: ir.Graph, x: ir.Value, users: list[ir.Node], inv: np.ndarray, namer: Namer) -> str:
    base = x.name or "act"
    c = add_initializer(graph, namer(f"{base}_smooth_inv"), inv)
    mul = ir.Node("", "Mul", [x, c], name=namer(f"{base}/smooth"), num_outputs=1)
    out = mul.outputs[0]
    out.name = namer(f"{base}_smoothed")
    out.type = x.type
    out.shape = x.shape.copy() if x.shape is not None else None
    graph.insert_before(next(n for n in graph if n in set(users)), mul)
    for user in users:
        for i, inp in enumerate(user.inputs):
            if inp is x:
                user.replace_input_with(i, out)
    return mul.name or ""


@register_pass
class SmoothQuantPass(Pass):
    """Migrates activation outliers into the weights of MatMul layers (exact in float)."""

    name = PASS_NAME
    description = "SmoothQuant: per-input-channel scales moving activation outliers into the weights"
    stage = "compression"
    numerics_tolerance = 1e-4

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.parse_options(SmoothQuantOptions)
        feeds = self.calibration_feeds(minimum=1)
        if opts.num_samples is not None:
            feeds = feeds[: opts.num_samples]
        prepare_model(model, Int8Options(op_types=["MatMul", "Gemm"], skip=list(opts.skip)))
        groups: dict[str, list[QuantLayer]] = {}
        for layer in find_layers(model, ["MatMul"], skip=opts.skip):
            x = layer.activation
            if x is not None and x.name and constant(x) is None and (rank(x) or 2) >= 2:
                groups.setdefault(x.name, []).append(layer)
        if not groups:
            return ir.passes.PassResult(model, False)
        stats = observe(
            model, list(groups), feeds, channel_axes=dict.fromkeys(groups, -1), progress=opts.progress, desc=self.name
        )
        graph, namer = model.graph, Namer(model.graph)
        changed = False
        for name, layers in groups.items():
            act_max = stats[name].channel_absmax
            x = layers[0].activation
            if act_max is None or x is None:
                continue
            weights = [layer.weight_array() for layer in layers]
            w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
            s = smoothing_scales(act_max, w_max, opts.alpha)
            users = [layer.node for layer in layers]
            where = _fold_into_producer(graph, x, users, (1.0 / s).astype(np.float32), namer)
            how = f"1/s folded into {where}"
            if not where:
                if not opts.insert_mul:
                    self.context.layers.extend(
                        LayerRecord(ly.name, ly.op_type, self.name, "not smoothed", note="1/s not foldable")
                        for ly in layers
                    )
                    continue
                how = f"1/s applied by inserted Mul {_insert_mul(graph, x, users, (1.0 / s).astype(np.float32), namer)}"
            for layer, w in zip(layers, weights):
                n = w.nbytes
                _replace_const(graph, layer.node, layer.weight_index, (w * s[:, None]).astype(w.dtype), namer)
                self.context.layers.append(
                    LayerRecord(layer.name, layer.op_type, self.name, f"smoothed (alpha={opts.alpha:g})",
                                bytes_before=n, bytes_after=n, note=how)
                )  # fmt: skip
            changed = True
        return ir.passes.PassResult(model, changed)
