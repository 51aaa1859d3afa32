"""The operator registry: what cacc supports, and what each op *means*.

Every supported op has an :class:`OpDef` whose ``kernel`` is a numpy implementation.
That kernel is the definition of the op for the whole compiler: passes are checked
against it and backends are tested against it.

Standard ONNX ops get their shape/dtype inference from ONNX's own op schemas; ops in
cacc's own domain (``CACC_DOMAIN``) bring an ``infer`` function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

CACC_DOMAIN = "cacc"
CACC_OPSET_VERSION = 1

#: A kernel gets the node (for attributes) and its inputs (``None`` for an omitted
#: optional input) and returns one array per output.
Kernel = Callable[[ir.Node, Sequence["np.ndarray | None"]], Sequence[np.ndarray]]

#: Shape inference for ops outside the ONNX domain: given the node, returns
#: ``(dtype, shape)`` for each output. Input types/shapes are read from ``node.inputs``.
InferFn = Callable[[ir.Node], Sequence[tuple[ir.DataType, ir.Shape | None]]]


@dataclass(frozen=True)
class OpDef:
    """A supported operator: its numpy reference kernel and, for custom ops, shape inference."""

    domain: str
    op_type: str
    kernel: Kernel
    infer: InferFn | None = None


_REGISTRY: dict[tuple[str, str], OpDef] = {}


def _canonical_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(op_type: str, domain: str = "", infer: InferFn | None = None) -> Callable[[Kernel], Kernel]:
    """Decorator registering ``kernel`` as the reference implementation of ``domain::op_type``."""

    def deco(kernel: Kernel) -> Kernel:
        key = (_canonical_domain(domain), op_type)
        if key in _REGISTRY:
            raise ValueError(f"op {domain}::{op_type} is registered twice")
        if key[0] != "" and infer is None:
            raise ValueError(f"custom op {domain}::{op_type} needs an infer function")
        _REGISTRY[key] = OpDef(key[0], op_type, kernel, infer)
        return kernel

    return deco


def lookup(domain: str, op_type: str) -> OpDef | None:
    """The definition of ``domain::op_type``, or ``None`` when cacc does not support it."""
    _ensure_loaded()
    return _REGISTRY.get((_canonical_domain(domain), op_type))


def supported_ops() -> list[tuple[str, str]]:
    """All supported ``(domain, op_type)`` pairs, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def _ensure_loaded() -> None:
    # Importing the package registers every kernel module (idempotent).
    from compiler.ir import ops  # noqa: F401


# --------------------------------------------------------------------------- kernel helpers

#: A kernel's inputs: ``None`` where an optional input is omitted.
Inputs = Sequence["np.ndarray | None"]


def required_input(inputs: Inputs, i: int, op: str) -> np.ndarray:
    """Input ``i``, or a ``ValueError`` naming the op when it is missing."""
    x = inputs[i] if i < len(inputs) else None
    if x is None:
        raise ValueError(f"{op} needs input {i}")
    return x


def optional_input(inputs: Inputs, i: int) -> np.ndarray | None:
    """Input ``i``, or ``None`` when omitted."""
    return inputs[i] if i < len(inputs) else None


# --------------------------------------------------------------------------- attributes


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """The Python value of attribute ``name`` (ints, floats, strings, lists, numpy for tensors)."""
    a = node.attributes.get(name)
    if a is None:
        return default
    if a.is_ref():
        raise ValueError(f"attribute '{name}' of node '{node.name}' is a reference attribute")
    value = a.value
    if a.type == ir.AttributeType.TENSOR:
        return value.numpy()
    if a.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(value)
    return value


def np_dtype(dtype: ir.DataType) -> np.dtype:
    """The numpy dtype for an IR dtype."""
    return dtype.numpy()
