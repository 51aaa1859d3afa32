"""Shared pieces of the Relax lowerings: the emit context, the lowering registry, attribute helpers.

A lowering is ``fn(ctx, node) -> list[Out]`` where each output is either a Relax expression
or a numpy array (a value known at emit time, e.g. the result of a shape computation or of an
op on constant weights). Known values are bound as Relax constants only when an expression
needs them, so shape-only subgraphs never reach TVM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import onnx_ir as ir
from tvm import relax, tirx

from compiler.errors import BackendError


@dataclass(frozen=True)
class Blocked:
    """A 4-D NCHW value held channel-blocked: ``expr`` is ``[N, C/block, H, W, block]`` (see
    :mod:`backends.tvm.lowering.blocked`). Lowerings that do not read blocked values get the NCHW
    form from :meth:`EmitContext.expr`, converted once on first use."""

    expr: relax.Expr
    block: int


#: What a lowering produces for one output: an expression, a value known at emit time, or a blocked value.
Out: TypeAlias = "relax.Expr | np.ndarray | Blocked"
Lowering: TypeAlias = Callable[["EmitContext", ir.Node], Sequence[Out]]

CACC_DOMAIN = "cacc"
_LOWERINGS: dict[tuple[str, str], Lowering] = {}


def _canonical_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def lowering(*op_types: str, domain: str = "") -> Callable[[Lowering], Lowering]:
    """Decorator registering ``fn`` as the Relax lowering of ``domain::op_type`` for each op type."""

    def deco(fn: Lowering) -> Lowering:
        for op_type in op_types:
            key = (_canonical_domain(domain), op_type)
            if key in _LOWERINGS:
                raise ValueError(f"lowering for {domain}::{op_type} registered twice")
            _LOWERINGS[key] = fn
        return fn

    return deco


def find_lowering(domain: str, op_type: str) -> Lowering | None:
    """The lowering of ``domain::op_type``, or ``None`` when the TVM backend does not support it."""
    return _LOWERINGS.get((_canonical_domain(domain), op_type))


def supported_ops() -> list[tuple[str, str]]:
    """All ``(domain, op_type)`` pairs with a Relax lowering, sorted."""
    return sorted(_LOWERINGS)


# --------------------------------------------------------------------------- attributes


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """The Python value of attribute ``name`` of ``node`` (lists for repeated fields)."""
    a = node.attributes.get(name)
    if a is None:
        return default
    if a.is_ref():
        raise BackendError(f"reference attribute '{name}' is not supported", node=node.name)
    if a.type == ir.AttributeType.TENSOR:
        return a.value.numpy()
    if a.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(a.value)
    return a.value


def np_dtype(dtype: ir.DataType | None, node: ir.Node) -> np.dtype:
    """The numpy dtype for an IR dtype; BackendError when unknown."""
    if dtype is None:
        raise BackendError("value of unknown dtype", node=node.name)
    try:
        return np.dtype(dtype.numpy())
    except Exception as exc:
        raise BackendError(f"dtype {dtype} is not supported by the TVM backend", node=node.name) from exc


def relax_dtype(dtype: np.dtype) -> str:
    """The Relax dtype string of a numpy dtype."""
    return "bool" if dtype == np.bool_ else str(dtype)


# --------------------------------------------------------------------------- context


#: A dimension: an int, or a TIR expression for a symbolic dim.
Dim = Any


class EmitContext:
    """The state of one emission: the block builder and what each IR value is bound to."""

    def __init__(self, bb: relax.BlockBuilder) -> None:
        self.bb = bb
        self.exprs: dict[str, relax.Expr] = {}
        self.known: dict[str, np.ndarray] = {}
        self.blocked: dict[str, Blocked] = {}
        #: values whose producer should write them channel-blocked (their consumers read that layout)
        self.prefer_blocked: set[str] = set()
        #: values a fused kernel computed from their producer's input (the producer's own call is dead)
        self.fused_values: set[str] = set()
        self._const_cache: dict[str, relax.Expr] = {}

    # -- binding
    def bind(self, value: ir.Value, out: Out) -> None:
        """Record what ``value`` is: a known array or an (emitted) Relax expression."""
        name = value.name or ""
        if isinstance(out, np.ndarray):
            self.known[name] = out
        elif isinstance(out, Blocked):
            self.blocked[name] = out
        else:
            self.exprs[name] = out

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The value of ``value`` when it is known at emit time, else ``None``."""
        if value is None:
            return None
        if value.name in self.known:
            return self.known[value.name]
        return None

    def arr(self, value: ir.Value | None) -> np.ndarray:
        """The known array of ``value``; BackendError when it is only known at run time."""
        known = self.const(value)
        if known is None:
            raise BackendError(f"value '{None if value is None else value.name}' is not known at compile time")
        return known

    def is_const(self, value: ir.Value | None) -> bool:
        """Whether ``value`` is known at emit time."""
        return value is not None and value.name in self.known

    def is_runtime(self, value: ir.Value | None) -> bool:
        """Whether ``value`` is computed at run time (an emitted expression, plain or blocked)."""
        return value is not None and (value.name in self.exprs or value.name in self.blocked)

    def blocked_form(self, value: ir.Value | None) -> Blocked | None:
        """The channel-blocked form of ``value`` when its producer wrote one, else ``None``."""
        return None if value is None else self.blocked.get(value.name or "")

    def expr(self, value: ir.Value) -> relax.Expr:
        """The Relax expression for ``value`` (a known value becomes a Relax constant, a blocked one is
        converted to NCHW once)."""
        if value.name in self.exprs:
            return self.exprs[value.name]
        held = self.blocked.get(value.name or "")
        if held is not None:
            n, cb, h, w, b = self.shape(held.expr)
            plain = self.emit(relax.op.reshape(relax.op.permute_dims(held.expr, [0, 1, 4, 2, 3]), [n, cb * b, h, w]))
            self.exprs[value.name or ""] = plain
            return plain
        if value.name in self.known:
            cached = self._const_cache.get(value.name)
            if cached is None:
                arr = self.known[value.name]
                cached = relax.const(arr, relax_dtype(arr.dtype))
                self._const_cache[value.name] = cached
            return cached
        raise BackendError(f"value '{value.name}' is used before it is defined")

    def emit(self, expr: relax.Expr) -> relax.Expr:
        """Emit ``expr`` into the current dataflow block; returns the bound variable."""
        return self.bb.emit(expr)

    # -- shapes and dtypes
    def shape(self, value: ir.Value | relax.Expr) -> list[Dim]:
        """The static shape of a value or expression (ints, or tir expressions for symbolic dims)."""
        if isinstance(value, ir.Value):
            if value.name in self.known:
                return [int(d) for d in self.known[value.name].shape]
            held = self.blocked.get(value.name or "")
            if held is not None and value.name not in self.exprs:
                n, cb, h, w, b = self.shape(held.expr)
                return [n, cb * b, h, w]
            value = self.expr(value)
        ty = value.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise BackendError(f"expression of unknown shape: {ty}")
        return [int(d) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]

    def rank(self, value: ir.Value | relax.Expr) -> int:
        """The rank of a value or expression."""
        return len(self.shape(value))

    def dtype(self, value: ir.Value | relax.Expr) -> str:
        """The Relax dtype string of a value or expression."""
        if isinstance(value, ir.Value):
            if value.name in self.known:
                return relax_dtype(self.known[value.name].dtype)
            held = self.blocked.get(value.name or "")
            value = held.expr if held is not None else self.expr(value)
        ty = value.ty
        if not isinstance(ty, relax.TensorType):
            raise BackendError(f"expression is not a tensor: {ty}")
        return str(ty.dtype)


def scalar(value: float | int | bool, dtype: str) -> relax.Expr:
    """A Relax scalar constant."""
    return relax.const(value, dtype)


def int_list(arr: np.ndarray | None) -> list[int] | None:
    """A 1-D integer array as a list of Python ints (``None`` stays ``None``)."""
    return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]


def norm_axis(axis: int, rank: int, node: ir.Node) -> int:
    """``axis`` made non-negative; BackendError when out of range."""
    if not -rank <= axis < max(rank, 1):
        raise BackendError(f"axis {axis} out of range for rank {rank}", node=node.name)
    return axis + rank if axis < 0 else axis


def input_at(node: ir.Node, i: int) -> ir.Value | None:
    """Input ``i`` of ``node``, ``None`` when omitted."""
    if i >= len(node.inputs):
        return None
    return node.inputs[i]


def require_const(ctx: EmitContext, node: ir.Node, i: int, what: str) -> np.ndarray:
    """Input ``i`` as a known array; BackendError when it is computed at run time."""
    v = input_at(node, i)
    arr = ctx.const(v)
    if arr is None:
        raise BackendError(f"{node.op_type}: {what} (input {i}) must be known at compile time", node=node.name)
    return arr


def all_inputs_known(ctx: EmitContext, node: ir.Node) -> bool:
    """Whether every present input of ``node`` is known at emit time."""
    return all(v is None or ctx.is_const(v) for v in node.inputs)
