"""``compact_storage``: store a quantized model's float32 side tensors (weight scales, biases) as float16.

Once a layer's weights are 8- or 4-bit, its per-channel (or per-group) scales and its bias are a few percent
of its bytes (EfficientNet-Lite0 int8: 176 KB of 4.79 MB). Each such float32 initializer becomes a float16 one read
through a *storage cast*, ``Cast(to=FLOAT)`` marked in its node metadata (:data:`passes._utils.STORAGE_MARK`;
a model's own float16 weights behind an unmarked cast fold as usual): every op still computes in float32, and the
exported ONNX stays standard (ONNX Runtime folds the cast when it loads the model, before its QDQ fusions;
the TVM backends fold it when they emit the model). Passes see the float32 value through the cast
(:func:`passes._utils.constant`) and ``fold_constants`` leaves it alone.

What it rewrites, only for quantized layers (a weight read through a ``DequantizeLinear`` of a constant):

- the scale input of that ``DequantizeLinear`` (``scales``): a scale in float16's normal range moves by at
  most 2^-11 of itself (half a float16 ulp), so its weights move by at most 2^-11 of themselves, well under
  the int8 rounding; the tiny scales of near-dead channels (BN-folded weights ~1e-8, scales below 6.1e-5)
  move by at most 2^-11 of the tensor's largest scale and never become zero;
- the bias of the ``Conv`` / ``Gemm`` / ``cacc::FusedConv`` / ``cacc::FusedMatMul`` reading that weight, or the
  ``Add`` of a bias to a ``MatMul`` reading it (directly or through the output's ``QuantizeLinear`` /
  ``DequantizeLinear``, as the onnx target exports a quantized dense layer) (``biases``): each bias value moves
  by at most 2^-11 of itself (plus 2^-25 for values below float16's normal range); a bias beyond float16's range
  stays float32.

Opt-in (``float_weights``), for the layers a quantizer left in float with float32 weights (kept by an override,
the accuracy guard or the cost model): their weights, and their biases, as float16 under the same bound as the
scales (2^-11 of the tensor's largest magnitude; a normal float16 value moves by at most 2^-11 of itself), some
twenty times below an 8-bit rounding, for half the bytes. Off by default: a layer kept "fp32" keeps its exact
weights unless the user asks for this. Their layer records count the saved bytes and say so
(``LayerRecord.weight_storage``; the report's weight bits read ``fp16``).

Tensors of fewer than :data:`MIN_ELEMENTS` values, initializers with any other reader and initializers that are
graph inputs or outputs are left alone.
The compression pipelines run this pass last (:func:`passes.manager.expand_pipeline`); options ``scales``
and ``biases`` (both on) turn either part off. Like the quantizers, it is exempt from debug mode's numerics
check (see :attr:`CompactStoragePass.numerics_tolerance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from compiler.ir.ops.registry import CACC_DOMAIN
from passes._utils import ONNX_DOMAINS, Namer, add_initializer, constant, is_constant, is_onnx_op, storage_cast
from passes.base import Pass, register_pass

#: Smaller tensors stay float32: a cast node is not worth saving a few bytes.
MIN_ELEMENTS = 16
#: Largest change of a stored scale, relative to the largest scale of its tensor (half a float16 ulp).
MAX_SCALE_CHANGE = 2.0**-11
#: Largest finite float16, and its smallest positive (subnormal) value.
FLOAT16_MAX = 65504.0
SMALLEST_SUBNORMAL = 2.0**-24

#: (domain, op type) of the layers whose bias input (index 2) is compacted; their weight is input 1.
_BIAS_LAYERS = {("", "Conv"), ("", "Gemm"), (CACC_DOMAIN, "FusedConv"), (CACC_DOMAIN, "FusedMatMul")}
#: (domain, op type) of the float layers whose constant weight (input 1) ``float_weights`` stores as float16.
_WEIGHT_LAYERS = _BIAS_LAYERS | {("", "MatMul")}


@dataclass
class CompactStorageOptions:
    """Options of :class:`CompactStoragePass` (see the module docstring)."""

    scales: bool = True
    biases: bool = True
    float_weights: bool = False  #: float layers' float32 weights (and biases) as float16

    def __post_init__(self) -> None:
        for name in ("scales", "biases", "float_weights"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")


def _weight_dequantize(value: ir.Value | None) -> ir.Node | None:
    """The ``DequantizeLinear`` of constant integer weights that produces ``value``, else ``None``."""
    node = value.producer() if value is not None else None
    if node is None or not is_onnx_op(node, "DequantizeLinear") or not node.inputs:
        return None
    q = node.inputs[0]  # int8, or int4 / uint4 (whose numpy dtypes are not np.integer)
    if q is None or q.const_value is None or q.is_graph_input():
        return None
    return node if q.const_value.dtype.is_integer() else None


def _op(node: ir.Node) -> tuple[str, str]:
    return ("" if node.domain in ONNX_DOMAINS else node.domain, node.op_type)


def _is_scale_site(node: ir.Node, index: int) -> bool:
    return index == 1 and _weight_dequantize(node.outputs[0]) is node


def _is_float_weight(value: ir.Value | None) -> bool:
    """Whether ``value`` is a float layer's constant float32 weight (an initializer, or one already stored as
    float16 behind a storage cast), not a dequantized one."""
    return value is not None and value.dtype == ir.DataType.FLOAT and is_constant(value)


def _quantized_matmul(value: ir.Value | None) -> ir.Node | None:
    """The ``MatMul`` of a dequantized constant weight that produces ``value``, directly or through its output's
    ``QuantizeLinear`` -> ``DequantizeLinear`` pair, else ``None``."""
    node = value.producer() if value is not None else None
    if node is not None and is_onnx_op(node, "DequantizeLinear") and node.inputs:
        q = node.inputs[0].producer() if node.inputs[0] is not None else None
        node = q.inputs[0].producer() if q is not None and is_onnx_op(q, "QuantizeLinear") and q.inputs[0] else None
    if node is None or not is_onnx_op(node, "MatMul") or len(node.inputs) != 2:
        return None
    return node if _weight_dequantize(node.inputs[1]) is not None else None


def _is_matmul_bias(node: ir.Node, index: int) -> bool:
    """Whether input ``index`` of the ``Add`` ``node`` is a quantized ``MatMul``'s bias: a constant ``[N]`` (or
    ``[1, ..., 1, N]``) added to that ``MatMul``'s output, ``N`` its weight's columns (the form the onnx target
    exports a quantized ``Gemm`` / ``FusedMatMul`` in)."""
    if not is_onnx_op(node, "Add") or len(node.inputs) != 2 or index not in (0, 1):
        return False
    matmul = _quantized_matmul(node.inputs[1 - index])
    bias, weight = node.inputs[index], matmul.inputs[1] if matmul is not None else None
    if bias is None or weight is None or bias.shape is None or weight.shape is None:
        return False
    dims, wdims = list(bias.shape), list(weight.shape)
    return bool(dims) and len(wdims) == 2 and dims[-1] == wdims[-1] and all(d == 1 for d in dims[:-1])


def _is_bias_site(node: ir.Node, index: int, quantized: bool, float_weights: bool) -> bool:
    """Whether input ``index`` of ``node`` is the bias of a quantized layer (``quantized``) or of a float layer
    with a float32 weight (``float_weights``)."""
    if quantized and _is_matmul_bias(node, index):
        return True
    if index != 2 or _op(node) not in _BIAS_LAYERS or len(node.inputs) < 2:
        return False
    if _weight_dequantize(node.inputs[1]) is not None:
        return quantized
    return float_weights and _is_float_weight(node.inputs[1])


def _is_weight_site(node: ir.Node, index: int) -> bool:
    return index == 1 and _op(node) in _WEIGHT_LAYERS


def float16_scales(scale: np.ndarray) -> np.ndarray | None:
    """``scale`` as float16 when no value moves by more than :data:`MAX_SCALE_CHANGE` of the tensor's largest
    magnitude, else ``None``. A nonzero scale never becomes zero (it takes float16's smallest subnormal)."""
    if not np.all(np.isfinite(scale)) or np.any(np.abs(scale) > FLOAT16_MAX):
        return None
    half = scale.astype(np.float16)
    flushed = (half == 0) & (scale != 0)
    half[flushed] = np.copysign(np.float16(SMALLEST_SUBNORMAL), scale[flushed])
    change = np.abs(half.astype(np.float64) - scale.astype(np.float64))
    return half if np.all(change <= MAX_SCALE_CHANGE * float(np.max(np.abs(scale)))) else None


def float16_biases(bias: np.ndarray) -> np.ndarray | None:
    """``bias`` as float16 when every value is finite and within float16's range, else ``None``."""
    if not np.all(np.isfinite(bias)) or np.any(np.abs(bias) > FLOAT16_MAX):
        return None
    return bias.astype(np.float16)


@register_pass
class CompactStoragePass(Pass):
    """Stores quantized layers' float32 weight scales and biases as float16 behind a storage cast."""

    name = "compact_storage"
    description = "store quantized layers' weight scales and biases as float16 (read through a Cast to float32)"
    #: exempt from debug mode's numerics check, like the quantizers: with quantized activations its half-ulp
    #: nudges carry values across rounding boundaries, whole quantization steps that no fixed tolerance tells
    #: from a bug (fmnist_cnn on the onnx target: 1.5% of the output's range); its bounds are tested directly
    numerics_tolerance = None
    stage = "storage"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite in place; modified when any initializer was stored as float16."""
        opts = self.parse_options(CompactStorageOptions)
        graph = model.graph
        namer = Namer(graph)
        saved_by_node: dict[str, int] = {}
        half_weights: set[str] = set()  # layers whose float weights were stored as float16
        changed = False
        for value in list(graph.initializers.values()):
            arr = constant(value)
            if arr is None or arr.dtype != np.float32 or arr.size < MIN_ELEMENTS:
                continue
            if value.is_graph_output() or value.is_graph_input():  # part of the interface: left as it is
                continue
            uses = list(value.uses())
            if not uses:
                continue
            scales = opts.scales and all(_is_scale_site(n, i) for n, i in uses)
            weights = not scales and opts.float_weights and all(_is_weight_site(n, i) for n, i in uses)
            if scales or weights:  # a weight scale or a float weight: the same bound
                half = float16_scales(arr)
            elif all(_is_bias_site(n, i, opts.biases, opts.float_weights) for n, i in uses):
                half = float16_biases(arr)
            else:
                continue
            if half is None:
                continue
            self._store_half(graph, namer, value, half, uses)
            changed = True
            # the layer records count their weights' bytes (scales included, biases not)
            users = [user for dq, _ in uses for user, _j in dq.outputs[0].uses()] if scales else []
            for user in users + ([node for node, _ in uses] if weights else []):
                saved_by_node[user.name or ""] = saved_by_node.get(user.name or "", 0) + arr.nbytes // 2
            half_weights.update(node.name or "" for node, _ in uses if weights)
        for record in self.context.layers:
            record.bytes_after -= saved_by_node.pop(record.node, 0)
            if record.node in half_weights:
                record.weight_storage = "float16"
        return ir.passes.PassResult(model, modified=changed)

    @staticmethod
    def _store_half(
        graph: ir.Graph, namer: Namer, value: ir.Value, half: np.ndarray, uses: Sequence[tuple[ir.Node, int]]
    ) -> None:
        """Replace every use of ``value`` by a storage cast of a new float16 initializer holding ``half``."""
        src = add_initializer(graph, namer(f"{value.name or 'const'}_f16"), half, ir.DataType.FLOAT16)
        out = storage_cast(graph, namer, src)
        for node, index in uses:
            node.replace_input_with(index, out)
        graph.initializers.pop(value.name or "")
