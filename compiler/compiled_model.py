"""CompiledModel: the result of ``compiler.compile`` — callable, exportable, saveable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from backends.base import Executable
from compiler.config import CompileConfig
from compiler.errors import InputSignatureError
from compiler.ir.interpreter import check_feeds, signature
from compiler.report import Report


def _to_numpy(x: Any) -> tuple[np.ndarray, bool]:
    """(array, was_torch)."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy(), True
    return np.asarray(x), False


class CompiledModel:
    """A compiled model for one target.

    Call it with the model's inputs (positionally, in signature order, or by name) as
    numpy arrays or torch tensors; it returns numpy arrays, or torch tensors when given
    torch tensors. One output is returned bare, several as a tuple.
    """

    def __init__(self, model: ir.Model, executable: Executable, config: CompileConfig, report: Report) -> None:
        self.ir = model
        self.executable = executable
        self.config = config
        self.report = report
        self.input_names = [v.name or "" for v in model.graph.inputs]
        self.output_names = [v.name or "" for v in model.graph.outputs]

    @property
    def signature(self) -> str:
        """The expected inputs, e.g. ``(ids: int64[1,128], mask: int64[1,128])``."""
        return signature(self.ir.graph)

    def _feeds(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
        if len(args) > len(self.input_names):
            raise InputSignatureError(f"expected {len(self.input_names)} input(s) {self.signature}, got {len(args)}")
        feeds: dict[str, Any] = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name in feeds:
                raise InputSignatureError(f"input '{name}' given twice; signature {self.signature}")
            feeds[name] = value
        arrays: dict[str, np.ndarray] = {}
        any_torch = False
        for name, value in feeds.items():
            arrays[name], was_torch = _to_numpy(value)
            any_torch |= was_torch
        return check_feeds(self.ir.graph, arrays), any_torch

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on inputs given by name; returns outputs by name."""
        arrays, _ = self._feeds((), feeds)
        return dict(zip(self.output_names, self.executable.run(arrays)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays, any_torch = self._feeds(args, kwargs)
        outputs: list[Any] = self.executable.run(arrays)
        if any_torch:
            import torch

            outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def export_onnx(self, path: str | os.PathLike[str], *, debug_info: bool = False) -> Path:
        """Write the optimized model as standard ONNX (runs in onnxruntime). ``debug_info`` keeps the
        intermediate shapes (``value_info``) and the source exporter's node metadata (stack traces)."""
        from backends.onnx import export_onnx

        return export_onnx(self.ir, path, debug_info=debug_info)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to a single ``.cacc`` file (ONNX protobuf + JSON; no pickle). Reload with ``compiler.load``."""
        from compiler.serialization import save_compiled

        return save_compiled(self, path)

    def __repr__(self) -> str:
        return f"<CompiledModel {self.report.model} target={self.config.target} {self.signature}>"
