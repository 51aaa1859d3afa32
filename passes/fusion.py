"""``fuse_bias_activation``: fold a bias ``Add`` and an activation into ``cacc::FusedConv`` /
``cacc::FusedMatMul`` (semantics in :mod:`compiler.ir.ops.cacc`).

Patterns (each step optional, at least one must be present):

- ``Conv`` → ``Add`` of a per-channel constant → activation  ⇒  ``cacc::FusedConv``
- ``MatMul`` by a constant 2-D weight (or the ``DequantizeLinear`` of one) → ``Add`` of a constant bias
  over the last axis → activation  ⇒  ``cacc::FusedMatMul``
- ``Gemm`` (``alpha = beta = 1``, ``transA = 0``, constant 2-D ``B``; ``transB`` is folded into
  a transposed copy of ``B``) → activation  ⇒  ``cacc::FusedMatMul``

Activations: see :data:`ACTIVATION_OPS` plus the SiLU pattern ``x * Sigmoid(x)``. Every
intermediate value must have a single user (SiLU: exactly the Sigmoid and the Mul) and must
not be a graph output. A pattern that matched but failed a check is recorded in
``last_rejections`` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import CACC_DOMAIN, CACC_OPSET_VERSION, attr
from passes._utils import (
    Namer,
    Rejection,
    add_initializer,
    constant,
    drop_unused_initializers,
    is_onnx_op,
    node_label,
    rank,
    scalar_constant,
    take_over,
    users_reason,
)
from passes.base import Pass, Property, register_pass

#: ONNX activation ops that fuse, by op type (Gelu maps to "Gelu" or "GeluTanh").
ACTIVATION_OPS = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu"})
#: Ops that could extend a pattern: a multi-user value feeding one of these is worth reporting.
_EXTENDERS = ACTIVATION_OPS | {"Add", "Mul"}


def _weight_shape(b: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of a MatMul weight known at compile time: a constant, or the ``DequantizeLinear`` of one (a
    quantized layer's weight, whose bias and activation then fuse the same way), else ``None``."""
    weight = constant(b)
    if weight is not None:
        return tuple(weight.shape)
    dq = b.producer() if b is not None else None
    if dq is None or not is_onnx_op(dq, "DequantizeLinear") or not dq.inputs:
        return None
    q = constant(dq.inputs[0])
    return None if q is None else tuple(q.shape)


@dataclass
class Activation:
    """A matched activation: its cacc name and parameters, the nodes it replaces and its output."""

    name: str
    params: list[float]
    nodes: list[ir.Node]
    output: ir.Value


@dataclass
class Match:
    """A matched pattern under construction."""

    anchor: ir.Node
    inputs: list[ir.Value | None]
    nodes: list[ir.Node]
    tail: ir.Value
    attributes: list[ir.Attr] = field(default_factory=list)
    fused_something: bool = False
    activation: Activation | None = None


def _activation_from_node(node: ir.Node) -> Activation | str:
    """The activation computed by a single ONNX node (``str``: why it cannot fuse)."""
    op, out = node.op_type, node.outputs[0]
    if op in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return Activation(op, [], [node], out)
    if op == "LeakyRelu":
        return Activation(op, [float(attr(node, "alpha", 0.01))], [node], out)
    if op == "HardSigmoid":
        return Activation(op, [float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))], [node], out)
    if op == "Gelu":
        approximate = attr(node, "approximate", "none")
        if approximate not in ("none", "tanh"):
            return f"Gelu approximate='{approximate}' is unknown"
        return Activation("Gelu" if approximate == "none" else "GeluTanh", [], [node], out)
    if op == "Clip":
        bounds: list[float] = []
        for i, default in ((1, -math.inf), (2, math.inf)):
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None:
                legacy = attr(node, "min" if i == 1 else "max", None)  # opset < 11 attributes
                bounds.append(default if legacy is None else float(legacy))
                continue
            c = scalar_constant(v)
            if c is None:
                return "Clip bounds are not constant scalars"
            bounds.append(c)
        return Activation("Clip", bounds, [node], out)
    return f"{op} is not a fusable activation"


def _match_activation(value: ir.Value) -> Activation | str | None:
    """The activation applied to ``value`` (``None``: none follows; ``str``: one follows but cannot fuse)."""
    if value.is_graph_output():
        users = {u.node.op_type for u in value.uses()}
        return f"'{value.name}' is a graph output" if users & _EXTENDERS else None
    uses = value.uses()
    if len(uses) == 1:
        node = next(iter(uses)).node
        if not is_onnx_op(node, *ACTIVATION_OPS):
            return None
        return _activation_from_node(node)
    nodes = {u.node for u in uses}
    if len(uses) == 2 and len(nodes) == 2:
        silu = _match_silu(value, nodes)
        if silu is not None:
            return silu
    if any(is_onnx_op(n, *ACTIVATION_OPS) for n in nodes):
        return f"'{value.name}' has {len(uses)} users"
    return None


def _match_silu(value: ir.Value, nodes: set[ir.Node]) -> Activation | str | None:
    """``Mul(value, Sigmoid(value))`` (either operand order)."""
    sig = next((n for n in nodes if is_onnx_op(n, "Sigmoid")), None)
    mul = next((n for n in nodes if is_onnx_op(n, "Mul")), None)
    if sig is None or mul is None:
        return None
    s = sig.outputs[0]
    if set(mul.inputs) != {value, s}:
        return None
    reason = users_reason(s)
    if reason:
        return f"SiLU pattern: {reason}"
    return Activation("Silu", [], [sig, mul], mul.outputs[0])


def _per_channel(c: np.ndarray, out_rank: int, channels: int, axis: int) -> np.ndarray | None:
    """``c`` as a ``[channels]`` vector if adding it to a rank-``out_rank`` tensor adds per ``axis`` only."""
    if c.ndim > out_rank:
        return None
    dims = [1] * (out_rank - c.ndim) + list(c.shape)
    for i, d in enumerate(dims):
        if i == axis % out_rank:
            if d not in (1, channels):
                return None
        elif d != 1:
            return None
    return np.broadcast_to(c.reshape(-1), (channels,)).copy()


@register_pass
class FuseBiasActivationPass(Pass):
    """Fuses Conv/MatMul/Gemm with a following bias Add and activation into cacc ops."""

    name = "fuse_bias_activation"
    description = "fuse Conv/MatMul/Gemm + bias Add + activation into cacc::FusedConv / cacc::FusedMatMul"
    invalidates = frozenset({Property.STANDARD_OPS_ONLY})
    stage = "fusion"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Fuse in place; modified when anything was fused (the cacc opset is imported then)."""
        self.last_rejections = []
        graph = model.graph
        self._namer = Namer(graph)
        fused = 0
        for node in list(graph):
            if node.graph is not graph or not is_onnx_op(node):
                continue
            match: Match | str | None = None
            if node.op_type == "Conv":
                match = self._match_conv(node)
            elif node.op_type == "MatMul":
                match = self._match_matmul(node)
            elif node.op_type == "Gemm":
                match = self._match_gemm(node)
            if isinstance(match, str):
                self._reject(node, match)
            elif match is not None and match.fused_something:
                self._rewrite(graph, match)
                fused += 1
        if fused:
            model.opset_imports.setdefault(CACC_DOMAIN, CACC_OPSET_VERSION)
        return ir.passes.PassResult(model, modified=fused > 0)

    # ------------------------------------------------------------------ matching

    def _reject(self, node: ir.Node, reason: str) -> None:
        self.last_rejections.append(Rejection(node_label(node), reason))

    def _extend_activation(self, match: Match) -> None:
        act = _match_activation(match.tail)
        if isinstance(act, str):
            self._reject(match.anchor, act)
        elif act is not None:
            match.activation = act
            match.nodes.extend(act.nodes)
            match.tail = act.output
            match.fused_something = True

    def _bias_add(self, match: Match) -> tuple[ir.Node, np.ndarray] | None:
        """The ``Add`` of a constant following the pattern's tail, if it is the tail's only user."""
        candidates = []
        for use in match.tail.uses():
            add = use.node
            if not is_onnx_op(add, "Add") or len(add.inputs) != 2:
                continue
            other = add.inputs[1] if add.inputs[0] is match.tail else add.inputs[0]
            c = constant(other)
            if c is not None and other is not None and other is not match.tail:
                candidates.append((add, other, c))
        if not candidates:
            return None  # no Add, or an ordinary one (e.g. a residual), not a bias
        reason = users_reason(match.tail)
        if reason:
            self._reject(match.anchor, f"bias Add not fused: {reason}")
            return None
        add, other, c = candidates[0]
        if other.dtype != match.tail.dtype:
            self._reject(match.anchor, "bias Add has a different dtype")
            return None
        return add, c

    def _match_conv(self, conv: ir.Node) -> Match | str | None:
        x, w = conv.inputs[0], conv.inputs[1]
        if x is None or w is None or w.shape is None or not isinstance(w.shape[0], int):
            return None
        channels, out_rank = int(w.shape[0]), len(w.shape)
        bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        match = Match(conv, [x, w, bias_value], [conv], conv.outputs[0])
        match.attributes = [a for a in conv.attributes.values() if not a.is_ref()]
        found = self._bias_add(match)
        if found is not None:
            add, c = found
            vector = _per_channel(c, out_rank, channels, 1)
            existing = constant(bias_value) if bias_value is not None else np.zeros(channels, c.dtype)
            if vector is None:
                self._reject(conv, f"Add of shape {list(c.shape)} is not a per-channel bias")
            elif existing is None:
                self._reject(conv, "Conv bias is not a constant, cannot merge the Add into it")
            else:
                dtype = w.dtype or ir.DataType.FLOAT
                name = self._namer(f"{node_label(conv)}_bias")
                match.inputs[2] = add_initializer(conv.graph, name, existing + vector, dtype)  # type: ignore[arg-type]
                match.nodes.append(add)
                match.tail = add.outputs[0]
                match.fused_something = True
        self._extend_activation(match)
        return match

    def _match_matmul(self, matmul: ir.Node) -> Match | str | None:
        a, b = matmul.inputs[0], matmul.inputs[1]
        weight = _weight_shape(b)
        if a is None or b is None or weight is None or len(weight) != 2:
            return None
        r = rank(a)
        if r is None or r < 2:
            extendable = any(is_onnx_op(u.node, *_EXTENDERS) for u in matmul.outputs[0].uses())
            return "MatMul input rank unknown or < 2" if extendable else None
        match = Match(matmul, [a, b, None], [matmul], matmul.outputs[0])
        found = self._bias_add(match)
        if found is not None:
            add, c = found
            vector = _per_channel(c, r, weight[1], -1)
            if vector is None:
                self._reject(matmul, f"Add of shape {list(c.shape)} is not a bias over the last axis")
            else:
                name = self._namer(f"{node_label(matmul)}_bias")
                match.inputs[2] = add_initializer(matmul.graph, name, vector, b.dtype)  # type: ignore[arg-type]
                match.nodes.append(add)
                match.tail = add.outputs[0]
                match.fused_something = True
        self._extend_activation(match)
        return match

    def _match_gemm(self, gemm: ir.Node) -> Match | str | None:
        a, b = gemm.inputs[0], gemm.inputs[1]
        c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        weight = constant(b)
        if a is None or b is None:
            return None
        match = Match(gemm, [a, b, c], [gemm], gemm.outputs[0])
        self._extend_activation(match)
        if not match.fused_something:
            return None
        if float(attr(gemm, "alpha", 1.0)) != 1.0 or float(attr(gemm, "beta", 1.0)) != 1.0:
            return "Gemm has alpha or beta != 1"
        if int(attr(gemm, "transA", 0)):
            return "Gemm has transA=1"
        if weight is None or weight.ndim != 2:
            return "Gemm B is not a constant 2-D tensor"
        if int(attr(gemm, "transB", 0)):
            name = self._namer(f"{b.name or 'B'}_T")
            match.inputs[1] = add_initializer(gemm.graph, name, weight.T, b.dtype)  # type: ignore[arg-type]
        return match

    # ------------------------------------------------------------------ rewriting

    def _rewrite(self, graph: ir.Graph, match: Match) -> None:
        act = match.activation
        attributes = [
            *match.attributes,
            ir.AttrString("activation", act.name if act else ""),
            ir.AttrFloat32s("activation_params", act.params if act else []),
        ]
        op_type = "FusedConv" if match.anchor.op_type == "Conv" else "FusedMatMul"
        inputs = list(match.inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        fused = ir.Node(
            CACC_DOMAIN,
            op_type,
            inputs,
            attributes=attributes,
            name=node_label(match.anchor),
            version=CACC_OPSET_VERSION,
        )
        graph.insert_before(match.nodes[-1], fused)
        take_over(match.tail, fused.outputs[0], self._namer)
        old_inputs = {v for n in match.nodes for v in n.inputs if v is not None}
        graph.remove(match.nodes, safe=True)
        drop_unused_initializers(graph, old_inputs)
