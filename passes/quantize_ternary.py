"""``quantize_ternary``: ternary or binary weights, ``alpha * {-1, 0, +1}`` per output channel.

Ternary (TWN, Li & Liu 2016): per output channel, threshold ``delta = 0.7 * mean|W|``; weights
with ``|w| > delta`` become ``sign(w)``, the rest 0, and ``alpha`` is the mean ``|w|`` above the
threshold (the least-squares scale for that pattern). Binary (``mode="binary"``, BWN):
``sign(w)`` (0 -> +1) with ``alpha = mean|W|``.

Stored as int2 codes (ONNX opset 25; the model's default opset is raised to 25) or as int4
(opset 21), with a per-channel ``DequantizeLinear`` (axis = output channel). ``storage="auto"``
(default) uses int2 for Conv weights and int4 for MatMul / Gemm weights: onnxruntime 1.32 fuses
``DequantizeLinear(int2) -> MatMul`` into its 2-bit ``MatMulNBits`` and computes wrong results
(checked in the tests), while int2 Conv weights run correctly.

Options: ``mode`` ("ternary" | "binary"), ``threshold`` (0.7), ``storage``, ``skip``
(node name globs; keeping the first and last layers in float is usual), ``op_types``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from passes._utils import Namer
from passes.base import LayerRecord, Pass, register_pass
from passes.quant.layers import find_layers, quantize_weight_in_place, require_opset, weight_bytes
from passes.quant.scheme import QuantParams


@dataclass
class TernaryOptions:
    """Options of :class:`QuantizeTernary` (see the module docstring)."""

    mode: str = "ternary"
    threshold: float = 0.7
    storage: str = "auto"
    skip: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm", "Conv"])

    def __post_init__(self) -> None:
        if self.mode not in ("ternary", "binary"):
            raise ValueError(f"mode must be 'ternary' or 'binary', got {self.mode!r}")
        if self.storage not in ("auto", "int2", "int4"):
            raise ValueError(f"storage must be 'auto', 'int2' or 'int4', got {self.storage!r}")
        if not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be in (0, 2), got {self.threshold}")


def ternarize(
    w: np.ndarray, out_axis: int, *, mode: str = "ternary", threshold: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes in {-1, 0, 1} (int64, w's shape), alpha per output channel (float32))``."""
    moved = np.moveaxis(w.astype(np.float64), out_axis, 0).reshape(w.shape[out_axis], -1)
    mag = np.abs(moved)
    if mode == "binary":
        codes = np.where(moved >= 0, 1, -1)
        alpha = mag.mean(axis=1)
    else:
        delta = threshold * mag.mean(axis=1, keepdims=True)
        keep = mag > delta
        codes = np.sign(moved) * keep
        alpha = np.where(keep.any(axis=1), (mag * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1), 0.0)
    shape = [w.shape[out_axis], *[d for i, d in enumerate(w.shape) if i != out_axis]]
    q = np.moveaxis(codes.reshape(shape), 0, out_axis).astype(np.int64)
    return q, np.maximum(alpha, 1e-12).astype(np.float32)


@register_pass
class QuantizeTernary(Pass):
    """Ternary / binary weights (alpha * sign with threshold), per-channel scale, int2 storage."""

    name = "quantize_ternary"
    description = "ternary (TWN) or binary (BWN) weights with a per-channel scale, stored as int2"
    stage = "compression"
    numerics_tolerance: ClassVar[float | None] = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Ternarize every eligible layer's weight."""
        opts = self.parse_options(TernaryOptions)
        namer = Namer(model.graph)
        modified = False
        for layer in find_layers(model, opts.op_types, opts.skip):
            w = layer.weight_array()
            before = weight_bytes(layer.weight)
            storage = opts.storage if opts.storage != "auto" else "int2" if layer.op_type == "Conv" else "int4"
            bits = 2 if storage == "int2" else 4
            q, alpha = ternarize(w, layer.out_axis, mode=opts.mode, threshold=opts.threshold)
            params = QuantParams(alpha, np.zeros(alpha.shape, np.int64), bits, True)
            dq = quantize_weight_in_place(model.graph, layer, q, params, namer=namer)
            if bits == 2:
                require_opset(model.graph, 25)  # int2 in DequantizeLinear
            after = sum(weight_bytes(v) for v in dq.inputs)
            zeros = float(np.mean(q == 0))
            note = f"{zeros:.0%} zeros" if opts.mode == "ternary" else ""
            self.context.layers.append(
                LayerRecord(layer.name, layer.op_type, self.name, f"{opts.mode} ({storage})", 2 if opts.mode ==
                            "ternary" else 1, None, before, after, note=note)
            )  # fmt: skip
            modified = True
        return ir.passes.PassResult(model, modified)
