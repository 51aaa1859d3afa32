"""``pack_matmulnbits``: blocked int4 ``DequantizeLinear -> MatMul`` into ORT's ``com.microsoft::MatMulNBits``.

Matches a MatMul whose weight input (``[K, N]``) is the only use of a ``DequantizeLinear`` of
constant int4 / uint4 codes blocked along K (``axis = 0``, ``block_size`` a power of two >= 16)
and rewrites it to ``MatMulNBits(A, B, scales[, zero_points])`` with ORT's packed layout: ``B``
uint8 ``[N, K / block, block / 2]`` (two codes a byte, low nibble first), ``scales``
``[N * K / block]``, zero points packed two a byte per row (omitted when they are all 8, the
default). Signed codes are stored shifted by +8, so the dequantized weight is bit-identical and
the rewrite is exact against the reference interpreter.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.contrib import MS_DOMAIN, pack_codes
from passes._utils import (
    Namer,
    Rejection,
    add_initializer,
    constant,
    drop_unused_initializers,
    drop_unused_storage_casts,
    int_attr,
    is_onnx_op,
    node_label,
)
from passes.base import Pass, register_pass

_INT4 = (ir.DataType.INT4, ir.DataType.UINT4)


def _reason(dq: ir.Node, matmul: ir.Node) -> str:
    """Why ``dq -> matmul`` cannot become MatMulNBits ("" when it can)."""
    q = dq.inputs[0]
    if q is None or q.dtype not in _INT4 or constant(q) is None:
        return "weight codes are not a constant int4/uint4 tensor"
    if any(constant(v) is None for v in dq.inputs[1:] if v is not None):
        return "scale / zero point are not constants"
    block = int_attr(dq, "block_size", 0)
    if block < 16 or block & (block - 1):
        return f"block_size {block} is not a power of two >= 16"
    if len(q.shape or ()) != 2 or int_attr(dq, "axis", 1) % 2 != 0:
        return "weight is not a 2-D [K, N] tensor blocked along K"
    if len(dq.outputs[0].uses()) != 1 or dq.outputs[0].is_graph_output():
        return "dequantized weight has other users"
    a = matmul.inputs[0]
    if a is None or a.shape is None or len(a.shape) < 2:
        return "A's rank is unknown or < 2"
    return ""


def to_matmulnbits_inputs(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ORT's ``(B, scales, zero_points)`` for int4 codes ``q [K, N]`` with blocked ``scale``
    (and ``zero_point``) ``[ceil(K / block), N]``; ``zero_points`` is ``None`` when all are 8."""
    k, n = q.shape
    blocks = -(-k // block)
    signed = q.dtype.name == "int4"
    codes = q.astype(np.int64) + (8 if signed else 0)
    if zero_point is None:
        zp = np.full((blocks, n), 8 if signed else 0, np.int64)
    else:
        zp = zero_point.astype(np.int64) + (8 if signed else 0)
    padded = np.zeros((blocks * block, n), np.int64)
    padded[:k] = codes
    b = pack_codes(padded.T.reshape(n, blocks, block), 4)
    scales = np.ascontiguousarray(scale.astype(np.float32).T).reshape(-1)
    zps = None if np.all(zp == 8) else pack_codes(zp.T, 4).reshape(-1)
    return b, scales, zps


@register_pass
class PackMatMulNBits(Pass):
    """Blocked int4 DequantizeLinear -> MatMul into com.microsoft::MatMulNBits (ORT's packed layout)."""

    name = "pack_matmulnbits"
    description = "blocked int4 DequantizeLinear -> MatMul into ORT's com.microsoft::MatMulNBits"
    stage = "lowering"
    numerics_tolerance: ClassVar[float | None] = 1e-5

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite every eligible pair."""
        graph = model.graph
        namer = Namer(graph)
        self.last_rejections = []
        modified = False
        for matmul in list(graph):
            if not is_onnx_op(matmul, "MatMul") or len(matmul.inputs) != 2 or matmul.inputs[1] is None:
                continue
            dq = matmul.inputs[1].producer()
            if dq is None or not is_onnx_op(dq, "DequantizeLinear"):
                continue
            reason = _reason(dq, matmul)
            if reason:
                self.last_rejections.append(Rejection(node_label(matmul), reason))
                continue
            arrays = [constant(v) if v is not None else None for v in dq.inputs]
            q, scale = arrays[0], arrays[1]
            if q is None or scale is None:  # checked by _reason
                continue
            zero = arrays[2] if len(arrays) > 2 else None
            block = int_attr(dq, "block_size", 0)
            b, scales, zps = to_matmulnbits_inputs(q, scale, zero, block)
            k, n = q.shape
            base = dq.inputs[0].name if dq.inputs[0] is not None and dq.inputs[0].name else node_label(matmul)
            inputs: list[ir.Value | None] = [
                matmul.inputs[0],
                add_initializer(graph, namer(f"{base}_nbits"), b),
                add_initializer(graph, namer(f"{base}_nbits_scales"), scales),
            ]
            if zps is not None:
                inputs.append(add_initializer(graph, namer(f"{base}_nbits_zero_points"), zps))
            attrs = [
                ir.AttrInt64("K", int(k)),
                ir.AttrInt64("N", int(n)),
                ir.AttrInt64("bits", 4),
                ir.AttrInt64("block_size", block),
                ir.AttrInt64("accuracy_level", 0),
            ]
            node = ir.Node(MS_DOMAIN, "MatMulNBits", inputs, attrs, name=namer(f"{node_label(matmul)}/nbits"))
            out = node.outputs[0]
            out.type = matmul.outputs[0].type
            out.shape = matmul.outputs[0].shape.copy() if matmul.outputs[0].shape is not None else None
            graph.insert_before(matmul, node)
            ir.convenience.replace_all_uses_with(matmul.outputs[0], out, replace_graph_outputs=True)
            name = matmul.outputs[0].name
            matmul.outputs[0].name = None
            out.name = name
            old_inputs = [v for v in dq.inputs if v is not None]
            graph.remove([matmul, dq], safe=True)
            drop_unused_initializers(graph, old_inputs)
            modified = True
        if modified:
            drop_unused_storage_casts(graph)  # float16-stored scales: MatMulNBits takes them as float32
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        return ir.passes.PassResult(model, modified)
