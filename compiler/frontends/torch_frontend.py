"""torch frontend: an ``nn.Module`` (or ``fx.GraphModule``) plus example inputs becomes cacc IR.

Capture goes through ``torch.export`` and torch's ONNX exporter (``dynamo=True``), whose
result is already an onnx-ir model; then the common normalization runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import onnx_ir as ir

from compiler.errors import FrontendError
from compiler.frontends.common import normalize

# Loggers that report the exporter's internal progress and harmless fallbacks (e.g. "torchvision is not
# installed", constant-folding attempts that the exporter recovers from) as warnings.
_NOISY_LOGGERS = ("torch.onnx", "torch._export", "torch.export", "onnxscript")


@contextlib.contextmanager
def _quiet_export() -> Iterator[io.StringIO]:
    """Silence the exporter's progress prints and warnings; yields the captured stdout."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    log = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            yield log
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _as_tensors(example_inputs: Any) -> tuple[Any, ...]:
    import numpy as np
    import torch

    if example_inputs is None:
        raise FrontendError("a torch model needs example_inputs (a tensor or a tuple of tensors)")
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    out = []
    for i, x in enumerate(items):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise FrontendError(f"example input {i} is a {type(x).__name__}, expected a tensor or numpy array")
        out.append(x)
    return tuple(out)


def import_torch(
    module: Any,
    example_inputs: Any,
    *,
    dynamic_batch: bool = False,
    input_names: Sequence[str] | None = None,
) -> ir.Model:
    """Export ``module`` with ``example_inputs`` to normalized cacc IR.

    ``dynamic_batch=True`` makes dimension 0 of every input symbolic (``batch``).
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise FrontendError(f"expected a torch.nn.Module or torch.fx.GraphModule, got {type(module).__name__}")
    args = _as_tensors(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in args)
    was_training = module.training
    module.eval()
    try:
        with _quiet_export(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names) if input_names else None,
                verbose=False,
                optimize=True,
            )
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        raise FrontendError(
            f"torch export of {type(module).__name__} failed: {type(exc).__name__}: {detail[0] if detail else ''}"
        ) from exc
    finally:
        module.train(was_training)
    if program is None or program.model is None:
        raise FrontendError(f"torch export of {type(module).__name__} produced no model")
    model: ir.Model = program.model
    return normalize(model, source=type(module).__name__)
