"""GPTQ (error-compensating rounding) for per-channel int8 weights of Conv and MatMul layers.

Round-to-nearest rounds every weight on its own; GPTQ (:func:`passes.quant.gptq.gptq`) rounds one
input column at a time and moves each column's rounding error onto the columns not yet rounded,
weighted by the inverse of the layer's calibration Hessian ``H = 2 X^T X / n``, which minimizes the
layer's output error ``||X (W_q - W)^T||`` rather than the weight error. For weights whose terms
nearly cancel (BN-folded depthwise and stem convs) that matters far more than for large matrices.

A convolution is a matrix product over its input *patches*: with ``G`` groups, the rows of ``X`` for
group ``g`` are the ``Ci/G * kh * kw`` values under the kernel at every output position (padding,
strides and dilations as the Conv has them), and the output channels of that group use that group's
Hessian. A depthwise conv therefore has one small ``kh*kw`` Hessian per channel. Per-channel
(not grouped) quantization is GPTQ with one group spanning all columns.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from compiler.ir.ops.registry import attr
from passes.quant.gptq import gptq, gptq_grouped
from passes.quant.hessian import MatMulHessians
from passes.quant.layers import QuantLayer
from passes.quant.sampling import run_samples
from passes.quant.scheme import QuantParams


def conv_geometry(node: ir.Node, w_shape: Sequence[int]) -> tuple[int, list[int], list[int], list[int], list[int]]:
    """``(groups, strides, dilations, pads_begin, pads_end)`` of a Conv with weight shape ``w_shape``."""
    spatial = len(w_shape) - 2
    group = int(attr(node, "group", 1))
    strides = [int(s) for s in attr(node, "strides", [1] * spatial)]
    dilations = [int(d) for d in attr(node, "dilations", [1] * spatial)]
    pads = [int(p) for p in attr(node, "pads", [0] * (2 * spatial))]
    if str(attr(node, "auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise PassError("Conv GPTQ needs explicit pads (auto_pad SAME_* is not supported)", node=node.name)
    return group, strides, dilations, pads[:spatial], pads[spatial:]


def conv_patches(x: np.ndarray, node: ir.Node, w_shape: Sequence[int]) -> np.ndarray:
    """Input patches of a Conv, ``[G, positions, Ci/G * prod(kernel)]`` (float64), in the weight's
    ``[Ci/G, k1, k2, ...]`` order, so that ``patches[g] @ W_g.reshape(Co/G, -1).T`` is the conv output."""
    group, strides, dilations, begin, end = conv_geometry(node, w_shape)
    kernel = list(w_shape[2:])
    n, c = x.shape[:2]
    spatial = len(kernel)
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0), *zip(begin, end)])
    if all(k == 1 for k in kernel):
        sl = tuple(slice(None, None, s) for s in strides)
        cols = xp[(slice(None), slice(None), *sl)]  # [N, C, *out]
        cols = cols.reshape(n, group, c // group, -1).transpose(1, 0, 3, 2)
        return cols.reshape(group, -1, c // group)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + spatial)))
    # win: [N, C, *out_full, *span]; take strides on the output axes, dilations on the window axes
    out_sl = tuple(slice(None, None, s) for s in strides)
    win_sl = tuple(slice(None, None, d) for d in dilations)
    win = win[(slice(None), slice(None), *out_sl, *win_sl)]
    positions = int(np.prod(win.shape[2 : 2 + spatial]))
    k = int(np.prod(kernel))
    win = win.reshape(n, group, c // group, positions, k)
    win = win.transpose(1, 0, 3, 2, 4)  # [G, N, P, Cg, K]
    return np.ascontiguousarray(win).reshape(group, n * positions, (c // group) * k)


class ConvHessians:
    """A :class:`~passes.quant.sampling.SampleConsumer` accumulating ``H_g = 2 X_g^T X_g / n`` over the input
    patches of the Conv ``layers`` (other layers are skipped)."""

    def __init__(self, layers: Sequence[QuantLayer]) -> None:
        self.by_value: dict[ir.Value, list[QuantLayer]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for layer in layers:
            if layer.op_type == "Conv" and layer.activation is not None:
                self.by_value.setdefault(layer.activation, []).append(layer)
                self.shapes[layer.name] = layer.weight_array().shape
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def wanted(self) -> Collection[ir.Value]:
        """The convs' inputs."""
        return self.by_value.keys()

    def consume(self, value: ir.Value, array: np.ndarray, sample: Mapping[str, np.ndarray]) -> None:
        """Add the patches of ``array`` for every conv reading it."""
        for layer in self.by_value[value]:
            patches = conv_patches(array, layer.node, self.shapes[layer.name])
            h = np.einsum("gpk,gpl->gkl", patches, patches, optimize=True)
            self.sums[layer.name] = self.sums.get(layer.name, 0) + h
            self.rows[layer.name] = self.rows.get(layer.name, 0) + patches.shape[1]

    @property
    def hessians(self) -> dict[str, np.ndarray]:
        """``{layer name: H [G, K, K]}``."""
        return {name: 2.0 * self.sums[name] / max(self.rows[name], 1) for name in self.sums}


def collect_conv_hessians(
    model: ir.Model, layers: Sequence[QuantLayer], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``{layer name: H [G, K, K]}`` (``H_g = 2 X_g^T X_g / n``) for the Conv ``layers`` over ``feeds``,
    with one forward pass of the float ``model`` per sample."""
    consumer = ConvHessians(layers)
    run_samples(model, feeds, [consumer])
    return consumer.hessians


def gptq_weight(
    layer: QuantLayer, hessian: np.ndarray, bits: int, *, damp: float = 0.01
) -> tuple[np.ndarray, QuantParams]:
    """GPTQ per-output-channel symmetric quantization of ``layer``'s float weight with ``hessian``
    (``[K, K]`` for MatMul / Gemm, ``[G, K, K]`` for Conv). Returns ``(q, params)`` like
    :func:`passes.quant.scheme.quantize_weight`: codes in the weight's layout, per-channel scales."""
    w = layer.weight_array()
    rows = np.moveaxis(w, layer.out_axis, 0).reshape(w.shape[layer.out_axis], -1)  # [N, K]
    if layer.op_type == "Conv":
        group = hessian.shape[0]
        if rows.shape[0] % group or hessian.shape[1:] != (rows.shape[1], rows.shape[1]):
            raise PassError(f"Hessian shape {list(hessian.shape)} does not fit weight {list(w.shape)}", node=layer.name)
        result = gptq_grouped(rows, hessian, bits, damp=damp)
        q_rows, scale = result.q, result.scale[:, 0]
    else:
        if layer.reduce_axis == layer.out_axis or w.ndim != 2:
            raise PassError("GPTQ needs a 2-D MatMul / Gemm weight", node=layer.name)
        result = gptq(rows, hessian, bits, rows.shape[1], damp=damp)
        q_rows, scale = result.q, result.scale[:, 0]
    moved = [w.shape[layer.out_axis], *(s for i, s in enumerate(w.shape) if i != layer.out_axis)]
    q = np.moveaxis(q_rows.reshape(moved), 0, layer.out_axis)
    shape = [1] * w.ndim
    shape[layer.out_axis] = scale.size
    return q, QuantParams(scale.astype(np.float32).reshape(shape), np.zeros(shape, np.int64), bits, True)


class LayerHessians:
    """A :class:`~passes.quant.sampling.SampleConsumer` for the Hessians of every layer of ``layers``: ``[G, K, K]``
    over input patches for Conv, ``[K, K]`` for MatMul / Gemm; what :func:`gptq_weight` takes."""

    def __init__(self, layers: Sequence[QuantLayer]) -> None:
        self.convs = ConvHessians(layers)
        self.matmuls = MatMulHessians([la for la in layers if la.op_type != "Conv"])

    def wanted(self) -> Collection[ir.Value]:
        """Every layer's input."""
        return {*self.convs.wanted(), *self.matmuls.wanted()}

    def consume(self, value: ir.Value, array: np.ndarray, sample: Mapping[str, np.ndarray]) -> None:
        """Hand ``array`` to the conv and the matmul accumulators that read it."""
        if value in self.convs.by_value:
            self.convs.consume(value, array, sample)
        if value in self.matmuls.accumulators:
            self.matmuls.consume(value, array, sample)

    @property
    def hessians(self) -> dict[str, np.ndarray]:
        """``{layer name: Hessian}``."""
        return {**self.convs.hessians, **self.matmuls.hessians}


def layer_hessians(
    model: ir.Model, layers: Sequence[QuantLayer], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``{layer name: Hessian}`` of every layer of ``layers`` over ``feeds`` (float ``model``,
    :class:`LayerHessians`)."""
    consumer = LayerHessians(layers)
    run_samples(model, feeds, [consumer])
    return consumer.hessians
