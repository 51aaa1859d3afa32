"""The numpy reference interpreter: runs any IR graph, one registered kernel per node.

It is deliberately simple (no memory planning, no fusion) because it is the
*definition* of what a model computes; every pass and backend is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from compiler.errors import InputSignatureError, InterpreterError
from compiler.ir.ops.registry import lookup

#: Called after each node with the node and its output arrays (for calibration, debugging).
NodeHook = Callable[[ir.Node, list[np.ndarray]], None]


def _as_graph(model: ir.Model | ir.Graph) -> ir.Graph:
    return model.graph if isinstance(model, ir.Model) else model


def constant_value(value: ir.Value) -> np.ndarray | None:
    """The value's array if it is a constant (an initializer with data), else ``None``."""
    if value.const_value is None:
        return None
    return value.const_value.numpy()


def check_feeds(graph: ir.Graph, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate ``feeds`` against the graph inputs (names, dtypes, static dims); return arrays."""
    expected = {v.name or "": v for v in graph.inputs}
    missing = [n for n in expected if n not in feeds]
    unknown = [n for n in feeds if n not in expected]
    if missing or unknown:
        raise InputSignatureError(
            f"expected inputs {signature(graph)}; missing {missing or 'none'}, unexpected {unknown or 'none'}"
        )
    out: dict[str, np.ndarray] = {}
    for name, v in expected.items():
        arr = np.asarray(feeds[name])
        if v.dtype is not None and arr.dtype != v.dtype.numpy():
            raise InputSignatureError(
                f"input '{name}' has dtype {arr.dtype}, expected {v.dtype.numpy()}; signature {signature(graph)}"
            )
        if v.shape is not None:
            dims = list(v.shape)
            ok = len(dims) == arr.ndim and all(not isinstance(d, int) or d == s for d, s in zip(dims, arr.shape))
            if not ok:
                raise InputSignatureError(
                    f"input '{name}' has shape {list(arr.shape)}, expected {format_shape(v.shape)}; "
                    f"signature {signature(graph)}"
                )
        out[name] = arr
    return out


def format_shape(shape: ir.Shape | None) -> str:
    """``[1,128]`` / ``[batch,3,224,224]`` / ``?`` for unknown rank."""
    if shape is None:
        return "?"
    return "[" + ",".join(str(d) if isinstance(d, int) else str(d.value or "?") for d in shape) + "]"


def signature(graph: ir.Graph) -> str:
    """A readable input signature such as ``(input_ids: int64[1,128], mask: int64[1,128])``."""
    parts = []
    for v in graph.inputs:
        dt = v.dtype.numpy().name if v.dtype is not None else "?"
        parts.append(f"{v.name}: {dt}{format_shape(v.shape)}")
    return "(" + ", ".join(parts) + ")"


class Interpreter:
    """Runs a graph node by node with the registered numpy kernels."""

    def __init__(self, model: ir.Model | ir.Graph) -> None:
        self.graph = _as_graph(model)

    def run(
        self,
        feeds: Mapping[str, Any],
        *,
        hook: NodeHook | None = None,
        keep: Iterable[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run the graph; returns the graph outputs (plus any value named in ``keep``) by name."""
        arrays = check_feeds(self.graph, feeds)
        env: dict[ir.Value, np.ndarray] = {}
        for v in self.graph.inputs:
            env[v] = arrays[v.name or ""]
        for v in self.graph.initializers.values():
            if v not in env:
                c = constant_value(v)
                if c is not None:
                    env[v] = c
        keep_names = set(keep)
        kept: dict[str, np.ndarray] = {}
        for node in self.graph:
            outputs = self._run_node(node, env)
            for value, arr in zip(node.outputs, outputs):
                env[value] = arr
                if value.name in keep_names:
                    kept[value.name] = arr
            if hook is not None:
                hook(node, outputs)
        result: dict[str, np.ndarray] = {}
        for v in self.graph.outputs:
            if v not in env:
                raise InterpreterError(f"graph output '{v.name}' was never computed")
            result[v.name or ""] = env[v]
        result.update(kept)
        return result

    @staticmethod
    def _run_node(node: ir.Node, env: Mapping[ir.Value, np.ndarray]) -> list[np.ndarray]:
        opdef = lookup(node.domain, node.op_type)
        if opdef is None:
            raise InterpreterError(
                f"no reference kernel for {node.domain or 'ai.onnx'}::{node.op_type}", node=node.name
            )
        inputs: list[np.ndarray | None] = []
        for value in node.inputs:
            if value is None or value.name == "":
                inputs.append(None)
            elif value in env:
                inputs.append(env[value])
            else:
                raise InterpreterError(
                    f"input '{value.name}' is not available (graph not in topological order?)", node=node.name
                )
        try:
            outputs = [np.asarray(o) for o in opdef.kernel(node, inputs)]
        except InterpreterError:
            raise
        except Exception as exc:  # a kernel failing is reported against its node
            raise InterpreterError(f"{node.op_type} failed: {type(exc).__name__}: {exc}", node=node.name) from exc
        if len(outputs) < len(node.outputs):
            raise InterpreterError(
                f"{node.op_type} kernel returned {len(outputs)} outputs, node has {len(node.outputs)}", node=node.name
            )
        return outputs[: len(node.outputs)]


def run(model: ir.Model | ir.Graph, feeds: Mapping[str, Any], **kwargs: Any) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds`` with the reference interpreter; returns outputs by name."""
    return Interpreter(model).run(feeds, **kwargs)
