"""``quantize_int8``: static post-training int8 quantization.

Weights: per-output-channel symmetric int8 (``DequantizeLinear`` of an int8 initializer).
Activations: per-tensor ``QuantizeLinear -> DequantizeLinear`` on each layer's data input (uint8
asymmetric by default, int8 symmetric with ``activation_symmetric``), with ranges calibrated over the
calibration set (:mod:`passes.quant.calibration`: minmax, percentile, entropy, mse).

Where ONNX Runtime's integer kernels need it, the layer's *output* is quantized too, so that its QDQ
fusion sees a complete ``DQ -> op -> Q`` group (not for the TVM targets, whose integer kernels write
float):

- ``Conv``: ONNX Runtime only forms ``QLinearConv`` with a ``QuantizeLinear`` after the Conv (or after
  its ``Relu`` / ``Clip``, which then becomes redundant), so the Conv's (activated) output is quantized.
- ``MatMul`` with a 2-D output followed by a bias ``Add``: ORT would merge MatMul + Add into a float
  ``Gemm``; quantizing the MatMul output makes it a ``QLinearMatMul``.

Exact preparatory rewrites (:func:`prepare_model`) come first: a ``Gemm`` layer becomes ``MatMul``
(+ ``Add``), since ORT has no QDQ ``Gemm`` fusion on CPU; and the bias of a MatMul with a rank >= 3
output is given the output's rank, which stops ORT from merging it into a float ``Gemm`` (the MatMul
then runs as ``MatMulIntegerToFloat``).

Layers whose weight is tiny, or whose data input is a constant, stay in float with a note. For a
diagnosis / accuracy-guard helper: :func:`calibrate` once, then :func:`quantize_layers` on any subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_ir as ir

from compiler.cost import COST_NOTE, host_has_vnni
from compiler.errors import PassError
from compiler.ir.ops.registry import attr
from compiler.ir.shapes import infer_shapes
from passes._utils import Namer, add_initializer, constant, is_onnx_op, node_label, rank, take_over
from passes.base import LayerRecord, Pass, register_pass
from passes.quant.bias_correction import MIN_POSITIONS, ChannelMeans, bias_sites, correct_biases
from passes.quant.calibration import METHODS, Observation, TensorObserver
from passes.quant.conv_gptq import LayerHessians, gptq_weight
from passes.quant.diagnosis import DIAGNOSIS_SAMPLES, GUARD_SCOPES, QuantPlan, plan_quantization
from passes.quant.layers import (
    QUANTIZABLE_OPS,
    QuantLayer,
    bias_add,
    find_layers,
    insert_activation_qdq,
    matches_any,
    quantize_weight_in_place,
    weight_bytes,
)
from passes.quant.sampling import run_samples
from passes.quant.scheme import QuantParams, quantize_weight, scale_zero_point

_OVERRIDE_KEYS = ("method", "percentile", "activation_symmetric", "reduce_range")

#: Values of ``Int8Options.weight_rounding``.
WEIGHT_ROUNDINGS = ("nearest", "gptq")
#: Values of ``Int8Options.kept_weights``.
KEPT_WEIGHTS = ("fp32", "int8")
#: Per-layer overrides (``Int8Options.layers``) that keep a layer's compute in float.
FLOAT_OVERRIDES = ("fp32", "weight_only")
#: Record note of a layer with int8 weights and float compute by a per-layer override.
WEIGHT_ONLY_OVERRIDE_NOTE = "int8 weights, fp32 compute by a per-layer override"

#: Targets on which the cost check is on by default (``cost_check=None``).
COST_CHECK_TARGETS = ("x86", "arm", "onnx")


#: Targets compiled by the TVM backend: integer kernels with float epilogues, no output Q/DQ needed.
TVM_TARGETS = ("x86", "arm", "cuda")


@dataclass
class Int8Options:
    """Options of ``quantize_int8`` (``pass_options={"quantize_int8": {...}}``).

    ``layers`` maps a node-name glob to ``"fp32"`` (keep the layer in float), to ``"weight_only"`` (int8
    weights, float compute) or to a dict overriding ``method`` / ``percentile`` / ``activation_symmetric`` /
    ``reduce_range`` for matching layers (e.g. full 8-bit weights for the few layers that are sensitive to 7-bit
    ones); the first matching pattern wins.
    """

    method: str = "percentile"
    percentile: float = 99.999
    activation_symmetric: bool = False
    skip: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=lambda: list(QUANTIZABLE_OPS))
    layers: dict[str, Any] = field(default_factory=dict)
    num_samples: int | None = None  #: calibrate on the first N samples (None: all)
    min_weight_elements: int = 128  #: smaller weights stay in float (no gain from int8)
    #: output Q/DQ where ONNX Runtime's QDQ fusion needs it (see module doc). None: on except for the TVM targets
    #: (x86, arm, cuda), whose integer kernels write float and never need it; there an output Q/DQ in front of a
    #: float consumer (a depthwise conv) would only add a quantize / dequantize pass and its rounding error
    quantize_outputs: bool | None = None
    progress: bool | None = None  #: calibration progress bar (None: only on a terminal)
    embeddings: bool = True  #: int8 per-row tables for Gather of a constant 2-D table (weight-only)
    #: 7-bit weights ([-64, 63], stored as int8): ONNX Runtime's u8s8 kernels on x86 without VNNI add pairs of
    #: uint8 x int8 products in int16 with saturation, which full-range weights overflow; cacc's x86 u8s8 kernel is
    #: exact but applies only where no pair can overflow (always with 7-bit weights), full-range weights run its
    #: exact s16 kernel instead (EfficientNet-Lite0: ~15% slower, 1 point more top-1 agreement). None: on for
    #: onnx, and for x86 where the host CPU has no VNNI (whose ``vpdpbusd`` sums in int32: full-range weights run
    #: the fast kernel, see :func:`default_reduce_range`). Per layer through ``layers``.
    reduce_range: bool | None = None
    #: measure each quantized layer's own output error (``LayerRecord.error``; :mod:`passes.quant.diagnosis`)
    diagnose: bool = False
    #: accuracy guard: keep the worst layers in fp32 until the model's relative output error (as
    #: :func:`passes.quant.diagnosis.relative_error` defines it, on ``diagnosis_samples``) is within this bound
    tolerance: float | None = None
    #: which layers the guard may return to fp32: "all", or "weight_only" (only layers that compute in float
    #: anyway: their fp32 weights cost bytes, never speed)
    guard_scope: str = "all"
    #: keep in fp32 the layers whose integer kernel :mod:`compiler.cost` estimates not faster on the target.
    #: None: on for the CPU targets (x86, arm, onnx), off for cuda (see :func:`cost_check_enabled`).
    cost_check: bool | None = None
    diagnosis_samples: int = DIAGNOSIS_SAMPLES  #: calibration samples the diagnosis and the guard run
    #: empirical bias correction (:mod:`passes.quant.bias_correction`): move each quantized layer's mean output
    #: shift, measured sequentially on the calibration set against the float model, into its bias
    bias_correction: bool = False
    #: weight rounding: "nearest", or "gptq" (:mod:`passes.quant.conv_gptq`: error-compensating rounding with
    #: calibration Hessians, per-channel scales unchanged; conv Hessians over input patches)
    weight_rounding: str = "nearest"
    gptq_damp: float = 0.01  #: GPTQ dampening, as a fraction of mean(diag H)
    #: fewest samples x positions a channel mean needs for bias correction (fewer: that layer is left alone)
    bias_correction_min_positions: int = MIN_POSITIONS
    #: how layers the cost check keeps in float compute store their weights: "fp32", or "int8" (weight-only:
    #: full-range per-channel int8 codes, rounded like the quantized layers' and dequantized in front of the
    #: float op; a quarter of the weight bytes plus one scale per channel, the weight's rounding error added, the
    #: same float kernel at run time since the backends fold a constant dequantization at compile time)
    kept_weights: str = "fp32"

    def __post_init__(self) -> None:
        _check_method(self.method, self.percentile)
        if self.tolerance is not None and not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.guard_scope not in GUARD_SCOPES:
            raise ValueError(f"guard_scope must be one of {', '.join(GUARD_SCOPES)}, got {self.guard_scope!r}")
        if self.kept_weights not in KEPT_WEIGHTS:
            raise ValueError(f"unknown kept_weights '{self.kept_weights}'; known: {', '.join(KEPT_WEIGHTS)}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(f"unknown weight_rounding '{self.weight_rounding}'; known: {', '.join(WEIGHT_ROUNDINGS)}")
        if not self.gptq_damp > 0:
            raise ValueError(f"gptq_damp must be > 0, got {self.gptq_damp}")
        if self.bias_correction_min_positions < 1:
            raise ValueError(f"bias_correction_min_positions must be >= 1, got {self.bias_correction_min_positions}")
        if self.diagnosis_samples < 1:
            raise ValueError(f"diagnosis_samples must be >= 1, got {self.diagnosis_samples}")
        unknown = sorted(set(self.op_types) - set(QUANTIZABLE_OPS))
        if unknown:
            raise ValueError(f"op_types {unknown} are not quantizable; known: {list(QUANTIZABLE_OPS)}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        for pattern, override in self.layers.items():
            if override in FLOAT_OVERRIDES:
                continue
            if not isinstance(override, dict):
                raise ValueError(f"layers['{pattern}'] must be 'fp32', 'weight_only' or a dict, got {override!r}")
            bad = sorted(set(override) - set(_OVERRIDE_KEYS))
            if bad:
                raise ValueError(f"layers['{pattern}'] has unknown keys {bad}; known: {list(_OVERRIDE_KEYS)}")
            for key in ("activation_symmetric", "reduce_range"):
                if key in override and not isinstance(override[key], bool):
                    raise ValueError(f"layers['{pattern}']['{key}'] must be true or false, got {override[key]!r}")
            _check_method(override.get("method", self.method), override.get("percentile", self.percentile))


def _check_method(method: str, percentile: float) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")


@dataclass(frozen=True)
class ActivationSettings:
    """How one layer's activation tensor is calibrated and quantized (and whether its weights are 7-bit)."""

    method: str
    percentile: float
    symmetric: bool
    reduce_range: bool = False

    @property
    def weight_bits(self) -> int:
        """The layer's weight range in bits (stored as int8 either way)."""
        return 7 if self.reduce_range else 8

    def params(self, observer: TensorObserver) -> QuantParams:
        """The tensor's per-tensor quantization parameters from its statistics."""
        lo, hi = observer.compute_range(self.method, percentile=self.percentile, symmetric=self.symmetric, bits=8)
        return scale_zero_point(lo, hi, 8, symmetric=self.symmetric)


def _override(name: str, opts: Int8Options) -> Any:
    """The first per-layer override whose pattern matches ``name`` (``None``: none)."""
    return next((o for pattern, o in opts.layers.items() if matches_any(name, [pattern])), None)


def weight_only_override(name: str, opts: Int8Options) -> bool:
    """Whether layer ``name`` is overridden to int8 weights with float compute (``"weight_only"``)."""
    return _override(name, opts) == "weight_only"


def layer_settings(name: str, opts: Int8Options) -> ActivationSettings | None:
    """The activation settings for layer ``name`` after per-layer overrides; ``None``: float compute."""
    base = ActivationSettings(opts.method, opts.percentile, opts.activation_symmetric, bool(opts.reduce_range))
    for pattern, override in opts.layers.items():
        if matches_any(name, [pattern]):
            if override in FLOAT_OVERRIDES:
                return None
            return replace(
                base,
                method=override.get("method", base.method),
                percentile=float(override.get("percentile", base.percentile)),
                symmetric=bool(override.get("activation_symmetric", base.symmetric)),
                reduce_range=bool(override.get("reduce_range", base.reduce_range)),
            )
    return base


def _weight_bits(layer: QuantLayer, opts: Int8Options) -> int:
    settings = layer_settings(layer.name, opts)
    return 8 if settings is None else settings.weight_bits


# ---------------------------------------------------------------------------------------------- preparation


def prepare_model(model: ir.Model, opts: Int8Options | None = None) -> bool:
    """Exact rewrites before calibration (see the module doc): quantizable ``Gemm`` -> ``MatMul`` (+ ``Add``),
    rank-matched biases after MatMuls with rank >= 3 outputs. Returns whether anything changed."""
    opts = opts or Int8Options()
    graph = model.graph
    namer = Namer(graph)
    changed = False
    for layer in find_layers(model, opts.op_types, skip=opts.skip):
        if layer.op_type == "Gemm":
            _gemm_to_matmul(graph, layer, namer)
            changed = True
    for layer in find_layers(model, ("MatMul",), skip=opts.skip):
        changed |= _rank_bias(graph, layer, namer)
    return changed


def _gemm_to_matmul(graph: ir.Graph, layer: QuantLayer, namer: Namer) -> None:
    gemm = layer.node
    w = layer.weight_array()
    if int(attr(gemm, "transB", 0)):
        w = w.T
    alpha, beta = float(attr(gemm, "alpha", 1.0)), float(attr(gemm, "beta", 1.0))
    if alpha != 1.0:
        w = w * np.float32(alpha)
    label = node_label(gemm)
    weight = add_initializer(graph, namer(f"{layer.weight.name or label}_mm"), np.ascontiguousarray(w, np.float32))
    matmul = ir.Node("", "MatMul", [gemm.inputs[0], weight], name=label, num_outputs=1)
    matmul.outputs[0].name = namer(f"{label}_mm")
    nodes = [matmul]
    tail = matmul.outputs[0]
    c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    if c is not None:
        bias = constant(c)
        if bias is not None and beta != 1.0:
            c = add_initializer(graph, namer(f"{c.name or label}_beta"), (bias * np.float32(beta)).astype(np.float32))
        elif beta != 1.0:  # a run-time C: beta * C as its own Mul, the product the Gemm adds
            factor = add_initializer(graph, namer(f"{label}_beta"), np.array(beta, np.float32))
            mul = ir.Node("", "Mul", [c, factor], name=namer(f"{label}/beta"), num_outputs=1)
            mul.outputs[0].name = namer(f"{label}_beta_c")
            mul.outputs[0].dtype = ir.DataType.FLOAT
            mul.outputs[0].shape = c.shape.copy() if c.shape is not None else None
            nodes.append(mul)
            c = mul.outputs[0]
        add = ir.Node("", "Add", [tail, c], name=namer(f"{label}/bias"), num_outputs=1)
        add.outputs[0].name = namer(f"{label}_biased")
        nodes.append(add)
        tail = add.outputs[0]
    graph.insert_before(gemm, nodes)
    old_inputs = [v for v in gemm.inputs if v is not None]
    take_over(gemm.outputs[0], tail, namer)
    tail.dtype = ir.DataType.FLOAT
    if tail is not matmul.outputs[0]:
        matmul.outputs[0].dtype = ir.DataType.FLOAT
        matmul.outputs[0].shape = tail.shape.copy() if tail.shape is not None else None
    graph.remove(gemm, safe=True)
    for v in old_inputs:
        if v.is_initializer() and not v.uses() and v.name in graph.initializers and not v.is_graph_output():
            del graph.initializers[v.name]  # type: ignore[arg-type]


def _rank_bias(graph: ir.Graph, layer: QuantLayer, namer: Namer) -> bool:
    r = rank(layer.node.outputs[0]) or rank(layer.activation)
    found = bias_add(layer)
    if r is None or r < 3 or found is None:
        return False
    add, index, c = found
    if c.ndim == 0 or c.ndim >= r or c.size != c.shape[-1]:
        return False
    reshaped = c.reshape([1] * (r - 1) + [c.shape[-1]])
    old = add.inputs[index]
    value = add_initializer(graph, namer(f"{(old.name if old else None) or 'bias'}_r{r}"), reshaped)
    add.replace_input_with(index, value)
    if old is not None and old.is_initializer() and not old.uses() and old.name in graph.initializers:
        del graph.initializers[old.name]  # type: ignore[arg-type]
    return True


# ---------------------------------------------------------------------------------------------- decisions


def float_reason(layer: QuantLayer, opts: Int8Options) -> str:
    """Why ``layer`` stays in float ("" if it is quantized); :data:`WEIGHT_ONLY_OVERRIDE_NOTE` for a layer that
    keeps float compute with int8 weights."""
    if _override(layer.name, opts) == "fp32":
        return "kept fp32 by a per-layer override"
    if layer.weight_array().size < opts.min_weight_elements:
        return f"weight has fewer than {opts.min_weight_elements} elements: int8 would not pay off"
    if weight_only_override(layer.name, opts):
        return WEIGHT_ONLY_OVERRIDE_NOTE
    if constant(layer.activation) is not None:
        return "data input is a constant: nothing to gain at run time"
    return ""


def output_site(layer: QuantLayer, opts: Int8Options) -> ir.Value | None:
    """The value after ``layer`` that gets an output Q/DQ (``None``: none needed), see the module doc."""
    if not opts.quantize_outputs:
        return None
    out = layer.node.outputs[0]
    if layer.op_type == "Conv":
        uses = list(out.uses())
        if len(uses) == 1 and not out.is_graph_output() and is_onnx_op(uses[0].node, "Relu", "Clip"):
            act = uses[0].node
            if all(constant(v) is not None for v in act.inputs[1:] if v is not None):
                out = act.outputs[0]
        return None if out.is_graph_output() else out
    if layer.op_type == "MatMul" and rank(out) == 2 and bias_add(layer) is not None:
        return out
    return None


@dataclass
class Site:
    """An activation that gets a Q/DQ pair: its value, settings, and which nodes read the quantized copy."""

    value: ir.Value
    settings: ActivationSettings
    users: list[ir.Node] = field(default_factory=list)
    all_users: bool = False  #: an output site: every user reads the quantized copy


def plan_sites(layers: Sequence[QuantLayer], opts: Int8Options) -> dict[str, Site]:
    """The activation Q/DQ sites of ``layers`` (quantized ones only), by value name."""
    sites: dict[str, Site] = {}
    for layer in layers:
        settings = layer_settings(layer.name, opts)
        if settings is None:
            continue
        x = layer.activation
        if x is None or x.name is None:
            raise PassError("layer input has no name", node=layer.name)
        site = sites.setdefault(x.name, Site(x, settings))
        site.users.append(layer.node)
    for layer in layers:
        settings = layer_settings(layer.name, opts)
        out = output_site(layer, opts) if settings is not None else None
        if out is not None and out.name is not None:
            sites.setdefault(out.name, Site(out, settings)).all_users = True  # type: ignore[arg-type]
    return sites


# ---------------------------------------------------------------------------------------------- API


def _kept(layer: QuantLayer, pass_name: str, nbytes: int, note: str) -> LayerRecord:
    return LayerRecord(layer.name, layer.op_type, pass_name, "kept fp32", None, None, nbytes, nbytes, None, note)


def select_layers(model: ir.Model, opts: Int8Options) -> tuple[list[QuantLayer], list[LayerRecord]]:
    """The layers to quantize, and records for those kept in float (skipped, overridden, tiny)."""
    kept: list[LayerRecord] = []
    chosen: list[QuantLayer] = []
    for layer in find_layers(model, opts.op_types):
        reason = "in the skip list" if matches_any(layer.name, opts.skip) else float_reason(layer, opts)
        if reason:
            n = weight_bytes(layer.weight)
            kept.append(_kept(layer, "quantize_int8", n, reason))
        else:
            chosen.append(layer)
    return chosen, kept


def calibrate(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    feeds: Sequence[Mapping[str, np.ndarray]],
    opts: Int8Options | None = None,
) -> dict[str, TensorObserver]:
    """Observe every activation that :func:`quantize_layers` would quantize for ``layers`` (on the
    prepared, still-float model), over ``feeds`` (the first ``num_samples``)."""
    opts = opts or Int8Options()
    observation = _observation(model, layers, opts)
    run_samples(model, _samples(feeds, opts), [observation], progress=opts.progress, desc=_CALIBRATION)
    return observation.observers


#: Progress-bar label of the calibration run.
_CALIBRATION = "quantize_int8 calibration"


def _observation(model: ir.Model, layers: Sequence[QuantLayer], opts: Int8Options) -> Observation:
    """The consumer of a calibration run that observes the activations :func:`quantize_layers` quantizes."""
    return Observation(model, list(plan_sites(layers, opts)))


def _samples(feeds: Sequence[Mapping[str, np.ndarray]], opts: Int8Options) -> Sequence[Mapping[str, np.ndarray]]:
    """The calibration samples the pass measures on: the first ``num_samples``."""
    return feeds[: opts.num_samples] if opts.num_samples is not None else feeds


def quantize_layers(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    stats: Mapping[str, TensorObserver],
    opts: Int8Options | None = None,
    *,
    pass_name: str = "quantize_int8",
    weights: Mapping[str, tuple[np.ndarray, QuantParams]] | None = None,
) -> list[LayerRecord]:
    """Quantize ``layers`` of ``model`` in place (int8 per-channel weights, Q/DQ activations with
    parameters from ``stats``, by value name, as :func:`calibrate` returns them). One record per layer.

    ``layers`` must come from ``find_layers`` on this ``model`` (after :func:`prepare_model`); a layer
    overridden to ``"fp32"`` is recorded as kept. ``weights`` holds precomputed ``(codes, params)`` by layer
    name (GPTQ rounding); other layers are rounded to nearest."""
    opts = opts or Int8Options()
    graph = model.graph
    namer = Namer(graph)
    records = []
    for layer in layers:
        settings = layer_settings(layer.name, opts)
        before = weight_bytes(layer.weight)
        if settings is None:
            records.append(_kept(layer, pass_name, before, "kept fp32 by a per-layer override"))
            continue
        q, params = _layer_codes(layer, settings.weight_bits, weights)
        dq = quantize_weight_in_place(graph, layer, q, replace(params, bits=8), namer=namer)
        after = sum(weight_bytes(v) for v in dq.inputs)
        sym = "s8" if settings.symmetric else "u8"
        records.append(
            LayerRecord(
                layer.name,
                layer.op_type,
                pass_name,
                f"int8 static ({settings.method}, {sym} act{', 7-bit w' if settings.reduce_range else ''}"
                f"{', GPTQ w' if weights is not None and layer.name in weights else ''})",
                8,
                8,
                bytes_before=before,
                bytes_after=after,
            )
        )
    for name, site in plan_sites(layers, opts).items():
        if site.value.producer() is not None and site.value.producer().op_type == "DequantizeLinear":  # type: ignore[union-attr]
            continue  # already quantized
        observer = stats.get(name)
        if observer is None:
            raise PassError(f"no calibration statistics for activation '{name}'", pass_name=pass_name)
        users = [u.node for u in site.value.uses()] if site.all_users else site.users
        users = list(dict.fromkeys(users))
        if users:
            insert_activation_qdq(graph, site.value, site.settings.params(observer), users, namer=namer)
    return records


def quantize_embeddings(model: ir.Model, opts: Int8Options, pass_name: str = "quantize_int8") -> list[LayerRecord]:
    """Weight-only int8 for embedding tables: ``Gather(table, ids)`` with a constant float 2-D table becomes
    ``Gather(table_int8, ids) -> Cast -> Mul(Gather(row_scales, ids))`` (per-row symmetric scales), which
    reads only the gathered rows at run time (a ``DequantizeLinear`` of the table would expand all of it)."""
    graph = model.graph
    namer = Namer(graph)
    records = []
    for node in list(graph):
        if not is_onnx_op(node, "Gather") or int(attr(node, "axis", 0)) != 0 or len(node.inputs) != 2:
            continue
        table, ids = constant(node.inputs[0]), node.inputs[1]
        label = node_label(node)
        if table is None or table.ndim != 2 or table.dtype != np.float32 or ids is None:
            continue
        if matches_any(label, opts.skip) or _override(label, opts) == "fp32":
            continue
        if table.size < opts.min_weight_elements:
            continue
        q, params = quantize_weight(table, 0, 1, 8, symmetric=True)
        base = node.inputs[0].name or label  # type: ignore[union-attr]
        q_value = add_initializer(graph, namer(f"{base}_q"), q.astype(np.int8))
        s_value = add_initializer(graph, namer(f"{base}_row_scale"), params.scale.reshape(-1, 1).astype(np.float32))
        gq = ir.Node("", "Gather", [q_value, ids], [ir.AttrInt64("axis", 0)], name=label, num_outputs=1)
        gq.outputs[0].name = namer(f"{base}_rows_q")
        cast = ir.Node("", "Cast", gq.outputs, [ir.AttrInt64("to", ir.DataType.FLOAT)], name=namer(f"{label}/cast"))
        cast.outputs[0].name = namer(f"{base}_rows")
        gs = ir.Node("", "Gather", [s_value, ids], [ir.AttrInt64("axis", 0)], name=namer(f"{label}/scales"))
        gs.outputs[0].name = namer(f"{base}_rows_scale")
        mul = ir.Node("", "Mul", [cast.outputs[0], gs.outputs[0]], name=namer(f"{label}/dequantize"))
        graph.insert_before(node, [gq, cast, gs, mul])
        old = node.inputs[0]
        take_over(node.outputs[0], mul.outputs[0], namer)
        graph.remove(node, safe=True)
        if old is not None and not old.uses() and old.name in graph.initializers and not old.is_graph_output():
            del graph.initializers[old.name]  # type: ignore[arg-type]
        records.append(
            LayerRecord(label, "Gather", pass_name, "int8 weight-only (per-row table)", 8, None,
                        bytes_before=table.nbytes, bytes_after=q.size + params.scale.nbytes)
        )  # fmt: skip
    return records


def _all_layers(model: ir.Model, opts: Int8Options) -> list[QuantLayer]:
    return [la for la in find_layers(model, opts.op_types) if not matches_any(la.name, opts.skip)]


def _layer_codes(
    layer: QuantLayer, bits: int, weights: Mapping[str, tuple[np.ndarray, QuantParams]] | None
) -> tuple[np.ndarray, QuantParams]:
    """The weight codes :func:`quantize_layers` stores for ``layer``: the precomputed (GPTQ) ones in ``weights``,
    else symmetric round-to-nearest at ``bits``."""
    if weights is not None and layer.name in weights:
        return weights[layer.name]
    return quantize_weight(layer.weight_array(), layer.out_axis, layer.reduce_axis, bits, symmetric=True)


def _weight_only(
    model: ir.Model, layer: QuantLayer, codes: tuple[np.ndarray, QuantParams], pass_name: str, note: str, *, gptq: bool
) -> LayerRecord:
    """Replace ``layer``'s float weight by a ``DequantizeLinear`` of its int8 ``codes`` (float compute stays)."""
    before = weight_bytes(layer.weight)
    q, params = codes
    dq = quantize_weight_in_place(model.graph, layer, q, replace(params, bits=8), namer=Namer(model.graph))
    after = sum(weight_bytes(v) for v in dq.inputs)
    action = f"int8 weight-only{' (GPTQ w)' if gptq else ''}"
    return LayerRecord(layer.name, layer.op_type, pass_name, action, 8, None, before, after, note=note)


def default_reduce_range(target: str | None) -> bool:
    """7-bit weights by default: for ONNX Runtime (whose u8s8 kernels without VNNI saturate pairs of full-range
    products, and an exported model may run on any CPU), and for x86 unless this host has VNNI (the x86 target
    compiles for the host; ``vpdpbusd`` is exact for any weight, so full 8-bit weights cost nothing there)."""
    return target == "onnx" or (target == "x86" and not host_has_vnni())


@register_pass
class QuantizeInt8Pass(Pass):
    """Static int8 PTQ: per-channel int8 weights, calibrated per-tensor activations."""

    name = "quantize_int8"
    description = "static int8 post-training quantization (per-channel weights, calibrated activations)"
    stage = "compression"
    numerics_tolerance = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.parse_options(Int8Options)
        target = self.context.target
        if opts.reduce_range is None:
            opts.reduce_range = default_reduce_range(target)
        if opts.quantize_outputs is None:
            opts.quantize_outputs = target not in TVM_TARGETS
        feeds = self.calibration_feeds(minimum=1)
        prepare_model(model, opts)
        layers, kept = select_layers(model, opts)
        override_wo = [la for la in _all_layers(model, opts) if float_reason(la, opts) == WEIGHT_ONLY_OVERRIDE_NOTE]
        order = {layer.name: i for i, layer in enumerate(find_layers(model, opts.op_types))}
        cost_check = cost_check_enabled(opts, target)
        if cost_check:
            infer_shapes(model)  # the cost model needs every layer's input shape

        # one run of the float model per sample for everything measured on it: activation ranges, GPTQ's input
        # Hessians, and (for bias correction) the output means of every layer the plan below may quantize
        bc_feeds = _samples(feeds, opts)
        observation = _observation(model, layers, opts)
        layer_hessians = LayerHessians([*layers, *override_wo]) if opts.weight_rounding == "gptq" else None
        channel_means = ChannelMeans(bias_sites([*layers, *override_wo])) if opts.bias_correction else None
        consumers = [c for c in (observation, layer_hessians, channel_means) if c is not None]
        run_samples(model, bc_feeds, consumers, progress=opts.progress, desc=_CALIBRATION)
        stats = observation.observers

        bits = {layer.name: _weight_bits(layer, opts) for layer in layers}
        weights: dict[str, tuple[np.ndarray, QuantParams]] | None = None
        hessians: dict[str, np.ndarray] = {}
        if layer_hessians is not None:
            hessians = layer_hessians.hessians
            damp = opts.gptq_damp
            weights = {la.name: gptq_weight(la, hessians[la.name], bits[la.name], damp=damp) for la in layers}

        def quantize_one(m: ir.Model, layer: QuantLayer) -> None:
            quantize_layers(m, [layer], stats, opts, pass_name=self.name, weights=weights)

        codes: dict[str, tuple[np.ndarray, QuantParams]] = {}

        def weight_codes(layer: QuantLayer) -> tuple[np.ndarray, QuantParams]:
            if layer.name not in codes:
                if layer.name in hessians:  # GPTQ at full 8 bits (float compute has no range limit)
                    if weights is not None and bits.get(layer.name) == 8:
                        codes[layer.name] = weights[layer.name]
                    else:
                        codes[layer.name] = gptq_weight(layer, hessians[layer.name], 8, damp=opts.gptq_damp)
                else:
                    codes[layer.name] = _layer_codes(layer, 8, None)
            return codes[layer.name]

        def weight_only_one(m: ir.Model, layer: QuantLayer) -> None:
            _weight_only(m, layer, weight_codes(layer), self.name, "", gptq=layer.name in hessians)

        def weights_alone_one(m: ir.Model, layer: QuantLayer) -> None:  # quantize_one's weights, float compute
            codes = _layer_codes(layer, bits[layer.name], weights)
            _weight_only(m, layer, codes, self.name, "", gptq=weights is not None)

        # float compute with int8 weights: per-layer overrides, and (kept_weights="int8") the cost check's layers
        plan = plan_quantization(
            model,
            layers,
            quantize_one,
            feeds,
            target=target,
            weight_bits=bits,
            cost_check=cost_check,
            diagnose=opts.diagnose,
            tolerance=opts.tolerance,
            samples=opts.diagnosis_samples,
            weight_only_one=weight_only_one,
            weight_only=[(la, WEIGHT_ONLY_OVERRIDE_NOTE) for la in override_wo],
            cost_kept_weight_only=opts.kept_weights == "int8",
            guard_scope=opts.guard_scope,
            weights_alone_one=weights_alone_one,
        )
        moved = _requantize_for_ort(plan, opts) if target == "onnx" and opts.quantize_outputs else set()
        overridden = {la.name for la in override_wo}
        kept = [r for r in kept if r.node not in overridden]  # recorded from the plan
        sites = bias_sites([*plan.quantize, *(la for la, _ in plan.weight_only)]) if opts.bias_correction else {}
        means = {name: m for name, m in channel_means.means.items() if name in sites} if channel_means else {}

        records = [
            _weight_only(model, layer, weight_codes(layer), self.name, note, gptq=layer.name in hessians)
            for layer, note in plan.weight_only
        ]
        records += quantize_layers(model, plan.quantize, stats, opts, pass_name=self.name, weights=weights)
        for record in records:
            if record.node in moved:
                record.note = ORT_WEIGHT_NOTE
        if sites:
            shifts = correct_biases(model, sites, means, bc_feeds, min_positions=opts.bias_correction_min_positions)
            for record in records:
                if record.node in shifts:
                    note = f"bias corrected ({100 * shifts[record.node]:.2g}% of the mean output)"
                    record.note = f"{record.note}; {note}" if record.note else note
        for layer, note in plan.kept:
            record = _kept(layer, self.name, weight_bytes(layer.weight), note)
            record.error = plan.errors.get(layer.name)
            records.append(record)
        for record in records:
            if record.error is None:
                record.error = plan.errors.get(record.node)
        if opts.embeddings:
            records += quantize_embeddings(model, opts, self.name)
        self.context.layers.extend(sorted(kept + records, key=lambda r: order.get(r.node, len(order))))
        if plan.summary():
            self.context.findings.append(f"{self.name}: {plan.summary()}")
        return ir.passes.PassResult(model, any(r.weight_bits is not None for r in records))


#: Note of a layer the cost model would keep in float but that ONNX Runtime would quantize anyway.
ORT_WEIGHT_NOTE = (
    "quantized although the cost model would keep it in float: its input is dequantized, so ONNX Runtime's "
    "WeightBiasQuantization would quantize its float weight per-tensor"
)


def _requantize_for_ort(plan: QuantPlan, opts: Int8Options) -> set[str]:
    """On the onnx target, move to ``plan.quantize`` the Conv / Gemm layers kept in float (or weight-only) by
    the cost model whose data input is a quantized activation: ONNX Runtime's ``WeightBiasQuantization`` turns
    a float-weight Conv / Gemm fed by a per-tensor ``DequantizeLinear`` into an integer one with a *per-tensor*
    int8 weight, which is much worse than this pass's per-channel weights (BN-folded depthwise convs in
    particular)."""
    dequantized = set(plan_sites(plan.quantize, opts))

    def moves(layer: QuantLayer, note: str) -> bool:
        x = layer.activation
        return (
            note.startswith(COST_NOTE)
            and layer.op_type in ("Conv", "Gemm")
            and x is not None
            and x.name in dequantized
            and layer_settings(layer.name, opts) is not None
        )

    moved = [layer for layer, note in [*plan.kept, *plan.weight_only] if moves(layer, note)]
    if moved:
        plan.kept = [(layer, note) for layer, note in plan.kept if layer not in moved]
        plan.weight_only = [(layer, note) for layer, note in plan.weight_only if layer not in moved]
        plan.quantize = [*plan.quantize, *moved]
    return {layer.name for layer in moved}


def cost_check_enabled(opts: Int8Options, target: str | None) -> bool:
    """Whether the cost check runs: ``opts.cost_check`` if set, else only on CPU targets
    (:data:`COST_CHECK_TARGETS`). On x86 / onnx / arm the cost model keeps depthwise convs and tiny
    layers in float (their integer kernels are slower there); on cuda its spec-sheet estimates would
    keep nearly every layer of the shipped models in float, which defeats the pass."""
    if opts.cost_check is not None:
        return opts.cost_check
    return target in COST_CHECK_TARGETS
