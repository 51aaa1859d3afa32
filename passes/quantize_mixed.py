"""``quantize_mixed``: per-layer bit widths from measured sensitivity under a size budget.

Sensitivity of a layer = the relative output error ``||y_q - y||^2 / ||y||^2`` (mean over the
first ``samples`` calibration samples, reference interpreter) when *only that layer's* weight is
quantized at the lowest bit width (int4 groups, round-to-nearest). ``sensitivity="hessian"``
uses ``tr(dW^T H dW) / tr(W^T H W)`` with the calibration Hessian ``H = 2 X^T X / n`` instead
(one interpreter pass; MatMul / Gemm only, Conv layers fall back to the plain weight error).

Assignment: every layer starts at the lowest width; the budget left (``target_bytes``, or
``target_ratio`` times the layers' fp32 bytes) is spent greedily on the most sensitive layers
first, each raised to the highest width in ``choices`` that still fits (fp32 = 32, int8 per
channel, int4 groups). Each layer gets a LayerRecord with its bits and sensitivity (``error``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from compiler.ir.interpreter import Interpreter
from passes._utils import Namer
from passes.base import LayerRecord, Pass, register_pass
from passes.quant.gptq import rtn
from passes.quant.hessian import collect_hessians
from passes.quant.layers import QuantLayer, find_layers, quantize_weight_in_place, weight_bytes
from passes.quant.scheme import quantize_weight
from passes.quantize_int4 import LayerSettings, effective_group, quantize_layer


@dataclass
class MixedOptions:
    """Options of :class:`QuantizeMixed` (see the module docstring)."""

    target_ratio: float = 0.25  #: budget as a fraction of the layers' fp32 bytes
    target_bytes: int = 0  #: absolute budget (overrides target_ratio when > 0)
    choices: list[int] = field(default_factory=lambda: [4, 8, 32])
    group_size: int = 128
    sensitivity: str = "output"
    samples: int = 4
    skip: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm", "Conv"])

    def __post_init__(self) -> None:
        if not self.choices or any(b not in (4, 8, 32) for b in self.choices):
            raise ValueError(f"choices must be a non-empty subset of [4, 8, 32], got {self.choices}")
        if self.sensitivity not in ("output", "hessian"):
            raise ValueError(f"sensitivity must be 'output' or 'hessian', got {self.sensitivity!r}")
        if self.target_bytes <= 0 and not 0.0 < self.target_ratio <= 1.0:
            raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio}")


def layer_bytes(layer: QuantLayer, bits: int, group_size: int) -> int:
    """Bytes of ``layer``'s weight stored at ``bits`` (codes + fp32 scales)."""
    w = layer.weight_array()
    if bits == 32:
        return int(w.nbytes)
    channels = int(w.shape[layer.out_axis])
    if bits == 8:
        return int(w.size) + 4 * channels
    k = int(w.shape[layer.reduce_axis])
    groups = -(-k // effective_group(k, group_size))
    return -(-int(w.size) // 2) + 4 * groups * (w.size // k)


def _fake_quantized(layer: QuantLayer, bits: int, group_size: int) -> np.ndarray:
    """The weight after ``bits``-bit RTN quantization (what the layer would compute with)."""
    w = layer.weight_array()
    if bits == 8 or layer.op_type == "Conv":
        q, p = quantize_weight(w, layer.out_axis, layer.reduce_axis, bits, group_size=0 if bits == 8 else group_size)
        scale = p.scale if bits == 8 else np.repeat(p.scale, group_size, axis=layer.reduce_axis)
        if bits != 8:
            scale = np.take(scale, np.arange(w.shape[layer.reduce_axis]), axis=layer.reduce_axis)
        return (q * scale).astype(np.float32)
    canon = w if layer.reduce_axis == 1 else w.T
    deq = rtn(canon, bits, effective_group(canon.shape[1], group_size)).dequantized
    return deq if layer.reduce_axis == 1 else np.ascontiguousarray(deq.T)


def output_sensitivity(
    model: ir.Model, layers: Sequence[QuantLayer], feeds: Sequence[Mapping[str, np.ndarray]], bits: int, group: int
) -> dict[str, float]:
    """Relative output error when only one layer at a time is quantized at ``bits``."""
    interp = Interpreter(model)
    outputs = [v.name or "" for v in model.graph.outputs]
    reference = [interp.run(f) for f in feeds]
    result = {}
    for layer in layers:
        value = layer.weight
        original = value.const_value
        value.const_value = ir.tensor(_fake_quantized(layer, bits, group))
        try:
            errs = []
            for f, ref in zip(feeds, reference):
                got = interp.run(f)
                num = sum(float(np.sum((got[o] - ref[o]) ** 2)) for o in outputs)
                den = sum(float(np.sum(ref[o] ** 2)) for o in outputs)
                errs.append(num / max(den, 1e-30))
        finally:
            value.const_value = original
        result[layer.name] = float(np.mean(errs))
    return result


def hessian_sensitivity(
    model: ir.Model, layers: Sequence[QuantLayer], feeds: Sequence[Mapping[str, np.ndarray]], bits: int, group: int
) -> dict[str, float]:
    """``tr(dW^T H dW) / tr(W^T H W)`` per layer (plain ``||dW||^2 / ||W||^2`` for Conv)."""
    hessians = collect_hessians(model, layers, feeds)
    result = {}
    for layer in layers:
        w = layer.weight_array().astype(np.float64)
        d = _fake_quantized(layer, bits, group).astype(np.float64) - w
        h = hessians.get(layer.name)
        if h is None:
            result[layer.name] = float(np.sum(d * d) / max(np.sum(w * w), 1e-30))
            continue
        wk, dk = (w, d) if layer.reduce_axis == 0 else (w.T, d.T)  # [K, N]
        result[layer.name] = float(np.sum((h @ dk) * dk) / max(np.sum((h @ wk) * wk), 1e-30))
    return result


def assign_bits(
    sensitivity: Mapping[str, float], sizes: Mapping[str, Mapping[int, int]], budget: int, choices: Sequence[int]
) -> dict[str, int]:
    """Greedy: all layers at the lowest width, then the most sensitive first get the widest width that fits."""
    low = min(choices)
    bits = dict.fromkeys(sensitivity, low)
    left = budget - sum(sizes[name][low] for name in sensitivity)
    if left < 0:
        raise ValueError(f"budget {budget} B is below the all-{low}-bit size {budget - left} B")
    for name in sorted(sensitivity, key=lambda n: -sensitivity[n]):
        for b in sorted(choices, reverse=True):
            extra = sizes[name][b] - sizes[name][low]
            if b > low and extra <= left:
                bits[name] = b
                left -= extra
                break
    return bits


@register_pass
class QuantizeMixed(Pass):
    """Mixed-precision weights (int4 / int8 / fp32 per layer) under a size budget, by sensitivity."""

    name = "quantize_mixed"
    description = "per-layer weight bits from {4, 8, fp32} under a size budget, most sensitive layers kept wider"
    stage = "compression"
    numerics_tolerance: ClassVar[float | None] = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Measure, assign, quantize."""
        opts = self.parse_options(MixedOptions)
        layers = find_layers(model, opts.op_types, opts.skip)
        if not layers:
            return ir.passes.PassResult(model, False)
        feeds = list(self.calibration_feeds(minimum=1))[: max(opts.samples, 1)]
        low = min(opts.choices)
        measure = output_sensitivity if opts.sensitivity == "output" else hessian_sensitivity
        sens = measure(model, layers, feeds, low, opts.group_size)
        sizes = {ly.name: {b: layer_bytes(ly, b, opts.group_size) for b in (4, 8, 32)} for ly in layers}
        fp32 = sum(s[32] for s in sizes.values())
        budget = opts.target_bytes if opts.target_bytes > 0 else int(opts.target_ratio * fp32)
        try:
            bits = assign_bits(sens, sizes, budget, opts.choices)
        except ValueError as exc:
            raise PassError(str(exc), pass_name=self.name) from exc
        namer = Namer(model.graph)
        rank = {n: i + 1 for i, n in enumerate(sorted(sens, key=lambda n: -sens[n]))}
        modified = False
        for layer in layers:
            b, before = bits[layer.name], weight_bytes(layer.weight)
            note = f"sensitivity rank {rank[layer.name]}/{len(layers)}"
            if b == 32:
                record = LayerRecord(layer.name, layer.op_type, self.name, "kept fp32", None, None, before, before)
            elif b == 8:
                w = layer.weight_array()
                q, p = quantize_weight(w, layer.out_axis, layer.reduce_axis, 8)
                dq = quantize_weight_in_place(model.graph, layer, q, p, namer=namer)
                after = sum(weight_bytes(v) for v in dq.inputs)
                record = LayerRecord(layer.name, layer.op_type, self.name, "int8 per-channel", 8, None, before, after)
            else:
                settings = LayerSettings(bits=4, group_size=opts.group_size)
                action, after, extra = quantize_layer(model.graph, layer, settings, None, damp=0.01, block=128,
                                                      namer=namer)  # fmt: skip
                record = LayerRecord(layer.name, layer.op_type, self.name, action, 4, None, before, after)
                note += f"; {extra}" if extra else ""
            record.error, record.note = sens[layer.name], note
            self.context.layers.append(record)
            modified = modified or b != 32
        return ir.passes.PassResult(model, modified)
