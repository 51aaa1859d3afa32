"""``fold_batchnorm``: fold inference-mode ``BatchNormalization`` into the op producing its input.

``BN(y) = s * (y - mean) + beta`` with ``s = scale / sqrt(var + epsilon)`` is per channel
(axis 1), so when ``y`` comes from an op that is linear per output channel, BN becomes a
rescaling of that op's weights plus a new bias:

- ``Conv`` (any ``group``, with or without bias): ``W[m] *= s[m]``, ``b = (b - mean) * s + beta``;
- ``ConvTranspose``: the same, on the output-channel axis of ``W`` (``[C, M/group, ...]``);
- ``Gemm`` with a constant ``B``: columns of ``op(B)`` scaled, ``C`` rewritten (``beta`` must be non-zero);
- ``MatMul`` of a rank-2 input by a constant 2-D weight, optionally followed by ``Add`` of a
  constant bias (a new ``Add`` is created when there is none).

The producer's output (and the ``Add``'s) must have the BN as its only user and not be a graph
output; rescaled weights are new initializers, so weights shared with other nodes stay intact.
After the pass no *foldable* BN remains (that is what ``NO_BATCHNORM`` promises): a BN that
stays (non-constant statistics, training mode, shared producer, other producers) is listed in
``last_rejections`` with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import attr
from passes._utils import (
    Namer,
    Rejection,
    add_initializer,
    constant,
    copy_type,
    drop_unused_initializers,
    is_onnx_op,
    node_label,
    rank,
    remove_nodes,
    replace_value,
    users_reason,
)
from passes.base import Pass, Property, register_pass


def _bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """``(s, t)`` with ``BN(y) = s * y + t`` per channel, or why BN is not a constant affine map."""
    if int(attr(bn, "training_mode", 0)) != 0:
        return "training_mode=1"
    if any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return "running statistics outputs are used"
    params = [constant(v) for v in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return "scale/bias/mean/var are not all constants"
    scale, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)  # type: ignore[arg-type]
    eps = float(attr(bn, "epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    return s, beta - mean * s


def _channel_shape(s: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = s.size
    return s.reshape(shape)


class _Folder:
    """One pass run: folds BN nodes of ``graph``, recording rejections."""

    def __init__(self, graph: ir.Graph, rejections: list[Rejection]) -> None:
        self.graph = graph
        self.namer = Namer(graph)
        self.rejections = rejections

    def reject(self, node: ir.Node, reason: str) -> bool:
        self.rejections.append(Rejection(node_label(node), reason))
        return False

    def new_const(self, like: ir.Value, array: np.ndarray, suffix: str) -> ir.Value:
        dtype = like.dtype if like.dtype is not None else ir.DataType.FLOAT
        return add_initializer(self.graph, self.namer(f"{like.name or 'w'}_{suffix}"), array, dtype)

    def swap_input(self, node: ir.Node, index: int, new: ir.Value) -> None:
        """Point input ``index`` of ``node`` at ``new``; drop the old initializer if now unused."""
        old = node.inputs[index] if index < len(node.inputs) else None
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, new)
        if old is not None:
            drop_unused_initializers(self.graph, [old])

    def fold(self, bn: ir.Node) -> bool:
        """Fold ``bn`` into its producer; ``False`` (with a recorded reason) when it cannot."""
        x = bn.inputs[0]
        producer = x.producer() if x is not None else None
        if x is None or producer is None or not is_onnx_op(producer, "Conv", "ConvTranspose", "Gemm", "MatMul", "Add"):
            return False  # nothing to fold into: not a candidate
        affine = _bn_affine(bn)
        if isinstance(affine, str):
            return self.reject(bn, affine)
        reason = users_reason(x)
        if reason:
            return self.reject(bn, f"cannot fold into {producer.op_type}: {reason}")
        s, t = affine
        if producer.op_type in ("Conv", "ConvTranspose"):
            result = self._conv(producer, s, t)
        elif producer.op_type == "Gemm":
            result = self._gemm(producer, s, t)
        else:
            result = self._matmul(producer, s, t)
        if result:
            return self.reject(bn, result)
        folded = bn.inputs[0]  # a new bias Add may now sit between the producer and the BN
        if folded is None:
            return self.reject(bn, "lost its input")
        replace_value(bn.outputs[0], folded)
        remove_nodes(self.graph, [bn])
        return True

    def _conv(self, conv: ir.Node, s: np.ndarray, t: np.ndarray) -> str:
        w = constant(conv.inputs[1])
        if w is None:
            return f"{conv.op_type} weight is not a constant"
        b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = constant(b_value) if b_value is not None else np.zeros(s.size)
        if b is None:
            return f"{conv.op_type} bias is not a constant"
        w64 = w.astype(np.float64)
        if conv.op_type == "Conv":
            if w.shape[0] != s.size:
                return f"Conv has {w.shape[0]} output channels, BN {s.size}"
            new_w = w64 * _channel_shape(s, w.ndim, 0)
        else:
            group = int(attr(conv, "group", 1))
            out_per_group = w.shape[1]
            if group * out_per_group != s.size:
                return f"ConvTranspose has {group * out_per_group} output channels, BN {s.size}"
            grouped = w64.reshape(group, w.shape[0] // group, out_per_group, *w.shape[2:])
            scale = s.reshape(group, 1, out_per_group, *([1] * (w.ndim - 2)))
            new_w = (grouped * scale).reshape(w.shape)
        new_b = b.astype(np.float64) * s + t
        weight = conv.inputs[1]
        if weight is None:
            return f"{conv.op_type} has no weight"
        self.swap_input(conv, 2, self.new_const(weight, new_b, "bnbias"))
        self.swap_input(conv, 1, self.new_const(weight, new_w, "bnfold"))
        return ""

    def _gemm(self, gemm: ir.Node, s: np.ndarray, t: np.ndarray) -> str:
        b = constant(gemm.inputs[1])
        if b is None or b.ndim != 2:
            return "Gemm weight is not a constant 2-D tensor"
        trans_b = int(attr(gemm, "transB", 0))
        alpha, beta = float(attr(gemm, "alpha", 1.0)), float(attr(gemm, "beta", 1.0))
        n = b.shape[0] if trans_b else b.shape[1]
        if n != s.size:
            return f"Gemm has {n} output columns, BN {s.size}"
        new_b = b.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
        c_value = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if c_value is None:
            new_c, new_beta = t, 1.0
        else:
            c = constant(c_value)
            if c is None:
                return "Gemm C is not a constant"
            if beta == 0.0:
                return "Gemm has beta=0"
            new_c, new_beta = c.astype(np.float64) * s + t / beta, beta
        del alpha  # alpha scales A*B only, which the column scaling commutes with
        weight = gemm.inputs[1]
        if weight is None:
            return "Gemm has no B"
        self.swap_input(gemm, 2, self.new_const(weight, new_c, "bnbias"))
        self.swap_input(gemm, 1, self.new_const(weight, new_b, "bnfold"))
        gemm.attributes["beta"] = ir.AttrFloat32("beta", new_beta)
        return ""

    def _matmul(self, node: ir.Node, s: np.ndarray, t: np.ndarray) -> str:
        add_bias: tuple[ir.Node, ir.Value, np.ndarray] | None = None
        if node.op_type == "Add":
            mm_out = next((v for v in node.inputs if v is not None and constant(v) is None), None)
            matmul = mm_out.producer() if mm_out is not None else None
            if mm_out is None or matmul is None or not is_onnx_op(matmul, "MatMul"):
                return "the Add does not follow a MatMul"
            reason = users_reason(mm_out)
            if reason:
                return f"cannot fold into MatMul: {reason}"
            bias_value = next((v for v in node.inputs if v is not mm_out), None)
            bias = constant(bias_value)
            if bias is None or bias_value is None:
                return "the Add after the MatMul has no constant bias"
            add_bias = (node, bias_value, bias)
        else:
            matmul = node
        a, lhs, weight = constant(matmul.inputs[1]), matmul.inputs[0], matmul.inputs[1]
        if a is None or weight is None or a.ndim != 2:
            return "MatMul weight is not a constant 2-D tensor"
        if rank(lhs) != 2:
            return "MatMul input is not known to be rank 2 (BN would normalize another axis)"
        if a.shape[1] != s.size:
            return f"MatMul has {a.shape[1]} output columns, BN {s.size}"
        self.swap_input(matmul, 1, self.new_const(weight, a.astype(np.float64) * s[None, :], "bnfold"))
        if add_bias is not None:
            add, bias_value, bias = add_bias
            index = 1 if add.inputs[1] is bias_value else 0
            self.swap_input(add, index, self.new_const(bias_value, bias.astype(np.float64) * s + t, "bnfold"))
            return ""
        out = matmul.outputs[0]
        new_add = ir.Node("", "Add", [out, self.new_const(weight, t, "bnbias")], name=f"{node_label(matmul)}/bn_bias")
        new_add.outputs[0].name = self.namer(f"{out.name}_biased")
        copy_type(out, new_add.outputs[0])
        ir.convenience.replace_all_uses_with(out, new_add.outputs[0])
        new_add.replace_input_with(0, out)
        self.graph.insert_after(matmul, new_add)
        return ""


@register_pass
class FoldBatchNormPass(Pass):
    """Folds inference BatchNormalization into a preceding Conv/ConvTranspose/Gemm/MatMul(+Add)."""

    name = "fold_batchnorm"
    description = "fold inference BatchNormalization into the weights and bias of the Conv/Gemm/MatMul before it"
    guarantees = frozenset({Property.NO_BATCHNORM})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Fold in place; modified when any BN was folded."""
        self.last_rejections = []
        folder = _Folder(model.graph, self.last_rejections)
        modified = False
        for node in list(model.graph):
            if is_onnx_op(node, "BatchNormalization") and node.inputs:
                modified |= folder.fold(node)
        return ir.passes.PassResult(model, modified=modified)
