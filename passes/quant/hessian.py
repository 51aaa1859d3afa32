"""Calibration Hessians of layer inputs: ``H = 2 X^T X / n`` per layer, where the rows of ``X`` are
the layer's input vectors (every position of every calibration sample), collected with the
reference interpreter's node hook."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from passes.quant.layers import QuantLayer
from passes.quant.sampling import run_samples


class HessianAccumulator:
    """Running ``2 X^T X / n`` of the input vectors of one layer (last axis = K)."""

    def __init__(self, k: int) -> None:
        self.sum = np.zeros((k, k))
        self.rows = 0

    def add(self, x: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Add the vectors of ``x`` (any leading shape, last axis K); only those where ``rows``
        (a mask with one entry per vector) is nonzero, when it has that many entries."""
        flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        if rows is not None and rows.size == flat.shape[0]:
            flat = flat[rows.reshape(-1) != 0]
        self.sum += flat.T @ flat
        self.rows += flat.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        """``2 X^T X / n`` (zeros before any data)."""
        return 2.0 * self.sum / max(self.rows, 1)


def _input_size(layer: QuantLayer) -> int:
    return int(layer.weight_array().shape[layer.reduce_axis])


def token_mask_input(model: ir.Model) -> str | None:
    """The graph input that masks padding tokens (an integer/bool input whose name contains
    "mask", e.g. a transformer's ``attention_mask``), if any."""
    for v in model.graph.inputs:
        if v.name and "mask" in v.name.lower() and v.dtype is not None and v.dtype.numpy().kind in "iub":
            return v.name
    return None


class MatMulHessians:
    """A :class:`~passes.quant.sampling.SampleConsumer` accumulating ``2 X^T X / n`` for the MatMul / Gemm
    ``layers`` (Conv layers are skipped: their input vectors are im2col patches, :mod:`passes.quant.conv_gptq`).
    With ``mask_input`` (a graph input such as ``attention_mask [batch, seq]``), a layer input with one vector per
    token only contributes the vectors of unmasked tokens: padding tokens would otherwise dominate the Hessian of
    short, padded sequences. Inputs shared by several layers are accumulated once."""

    def __init__(self, layers: Sequence[QuantLayer], mask_input: str | None = None) -> None:
        self.accumulators: dict[ir.Value, HessianAccumulator] = {}
        self.owner: dict[str, ir.Value] = {}
        self.mask_input = mask_input
        for layer in layers:
            x = layer.activation
            if layer.op_type == "Conv" or x is None:
                continue
            if x not in self.accumulators:
                self.accumulators[x] = HessianAccumulator(_input_size(layer))
            self.owner[layer.name] = x

    def wanted(self) -> Collection[ir.Value]:
        """The layers' inputs."""
        return self.accumulators.keys()

    def consume(self, value: ir.Value, array: np.ndarray, sample: Mapping[str, np.ndarray]) -> None:
        """Add ``array``'s vectors (the unmasked ones)."""
        rows = np.asarray(sample[self.mask_input]) if self.mask_input is not None else None
        self.accumulators[value].add(array, rows)

    @property
    def hessians(self) -> dict[str, np.ndarray]:
        """``{layer name: H}``."""
        return {name: self.accumulators[value].hessian for name, value in self.owner.items()}


def collect_hessians(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    feeds: Sequence[Mapping[str, np.ndarray]],
    mask_input: str | None = None,
) -> dict[str, np.ndarray]:
    """``{layer name: H}`` for the MatMul / Gemm ``layers`` over the calibration ``feeds``
    (:class:`MatMulHessians`), one reference-interpreter run per sample."""
    consumer = MatMulHessians(layers, mask_input)
    run_samples(model, feeds, [consumer])
    return consumer.hessians
