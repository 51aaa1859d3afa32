"""Frontends: turn a user's model (torch module, fx.GraphModule, ONNX file/bytes/proto) into cacc IR."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import onnx
import onnx_ir as ir

from compiler.errors import FrontendError
from compiler.frontends.common import unsupported_ops
from compiler.frontends.onnx_frontend import import_onnx
from compiler.frontends.torch_frontend import import_torch

__all__ = ["import_model", "import_onnx", "import_torch", "is_torch_module", "unsupported_ops"]


def is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch if it is not installed)."""
    try:
        import torch
    except ImportError:
        return False
    return isinstance(model, torch.nn.Module)


def import_model(
    model: Any,
    example_inputs: Any = None,
    *,
    dynamic_batch: bool = False,
    input_names: Sequence[str] | None = None,
) -> ir.Model:
    """Import any supported model into normalized cacc IR (dispatching on its type)."""
    if isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto, ir.Model)):
        if dynamic_batch:
            raise FrontendError("dynamic_batch applies to torch models; an ONNX model keeps its own input shapes")
        return import_onnx(model)
    if is_torch_module(model):
        return import_torch(model, example_inputs, dynamic_batch=dynamic_batch, input_names=input_names)
    raise FrontendError(
        f"cannot import a {type(model).__name__}: expected a torch.nn.Module, torch.fx.GraphModule, "
        "an ONNX path, bytes, onnx.ModelProto or onnx_ir.Model"
    )
