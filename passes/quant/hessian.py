"""Calibration Hessians of layer inputs: ``H = 2 X^T X / n`` per layer, where the rows of ``X`` are
the layer's input vectors (every position of every calibration sample), collected with the
reference interpreter's node hook."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from compiler.ir.interpreter import Interpreter
from passes.quant.layers import QuantLayer


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


def collect_hessians(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    feeds: Sequence[Mapping[str, np.ndarray]],
    mask_input: str | None = None,
) -> dict[str, np.ndarray]:
    """``{layer name: H}`` for the MatMul / Gemm ``layers`` over the calibration ``feeds``.

    With ``mask_input`` (a graph input such as ``attention_mask [batch, seq]``), a layer input
    with one vector per token only contributes the vectors of unmasked tokens: padding tokens
    would otherwise dominate the Hessian of short, padded sequences.

    Conv layers are skipped (their input vectors would be im2col patches). The model is run
    once per sample by the reference interpreter; inputs shared by several layers are
    accumulated once.
    """
    by_value: dict[ir.Value, HessianAccumulator] = {}
    owner: dict[str, ir.Value] = {}
    for layer in layers:
        x = layer.activation
        if layer.op_type == "Conv" or x is None:
            continue
        if x not in by_value:
            by_value[x] = HessianAccumulator(_input_size(layer))
        owner[layer.name] = x
    if not by_value:
        return {}
    interpreter = Interpreter(model)
    graph_inputs = {v.name: v for v in model.graph.inputs if v in by_value}

    rows: list[np.ndarray | None] = [None]

    def hook(node: ir.Node, outputs: list[np.ndarray]) -> None:
        for value, arr in zip(node.outputs, outputs):
            acc = by_value.get(value)
            if acc is not None:
                acc.add(arr, rows[0])

    for sample in feeds:
        rows[0] = np.asarray(sample[mask_input]) if mask_input is not None else None
        for name, value in graph_inputs.items():
            by_value[value].add(np.asarray(sample[name or ""]), rows[0])
        interpreter.run(sample, hook=hook)
    return {name: by_value[value].hessian for name, value in owner.items()}
