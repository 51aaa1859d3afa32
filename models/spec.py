"""The ModelSpec record every shipped model is described by, plus small shared helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: A predictor: takes numpy arrays shaped like ``ModelSpec.example_inputs`` (batch 1), returns the output.
Predict = Callable[..., Any]


@dataclass
class ModelSpec:
    """A real model with a real evaluation task.

    Attributes:
        name: registry name (``models.get(name)``).
        module: the fp32 torch module, in eval mode.
        example_inputs: one batch-1 input tuple for tracing/export.
        input_names: names for the inputs, in order.
        calibration_data: >= 32 real samples, each a tuple shaped/typed like ``example_inputs``.
        evaluate: ``evaluate(predict, limit=None) -> {metric: value}``; ``predict`` takes numpy arrays
            shaped like ``example_inputs`` and returns the output (numpy array, or a list whose first
            element is the output, as onnxruntime returns it).
    """

    name: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    calibration_data: list[tuple[np.ndarray, ...]]
    evaluate: Callable[..., dict[str, float]]
    description: str = field(default="")


def output_array(result: Any) -> np.ndarray:
    """Normalize what a predict callable returned into one numpy array (first output if several)."""
    if isinstance(result, (list, tuple)):
        if not result:
            raise ValueError("predict returned an empty sequence")
        result = result[0]
    if isinstance(result, dict):
        result = next(iter(result.values()))
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().numpy()
    return np.asarray(result)


def torch_predict(module: torch.nn.Module) -> Predict:
    """Wrap a torch module into a predict callable (numpy in, numpy out, no autograd)."""

    def predict(*arrays: np.ndarray) -> np.ndarray:
        tensors = [torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else a.copy()) for a in arrays]
        with torch.inference_mode():
            out = module(*tensors)
        return output_array(out)

    return predict


def check_limit(limit: int | None, total: int) -> int:
    """Return how many items to evaluate: ``total`` when ``limit`` is None, else ``limit`` checked in range."""
    if limit is None:
        return total
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return min(limit, total)
