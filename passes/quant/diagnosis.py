"""Quantization diagnosis: each layer's contribution to the output error, and the accuracy guard.

Both are generic over *how* a layer is quantized: a ``quantize_one(model, layer)`` callable
rewrites one :class:`~passes.quant.layers.QuantLayer` of ``model`` in place (RTN weights, static
int8, GPTQ, ...). The functions here only ever call it on copies of the model.

Error metric (:func:`relative_error`): for every floating-point graph output ``y``, over all
samples, ``||y_q - y_f||_2 / ||y_f||_2`` (the norms taken over every element of every sample);
the model's error is the largest over its outputs. ``0.01`` thus means "outputs move by 1 % of
their magnitude". The float outputs are the reference interpreter's.

Speed: the float model runs once per sample (:class:`FloatReference`) and every intermediate
value is cached; a quantized copy then recomputes only the nodes that differ from the float
model or depend on a value that does, so quantizing a layer late in the graph costs only the
rest of the graph. A few samples (2-4) are enough to rank layers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from compiler.errors import InterpreterError, PassError
from compiler.ir.interpreter import check_feeds, run
from compiler.ir.ops.registry import lookup
from passes.quant.layers import QuantLayer

#: How the notes of layers the accuracy guard kept in float start (the report counts them).
GUARD_NOTE = "accuracy guard"
#: Which layers the accuracy guard may keep in fp32: any, or only weight-only ones (whose compute is float anyway).
GUARD_SCOPES = ("all", "weight_only")

#: Samples a pass uses for diagnosis by default: enough to rank layers, few enough to be quick.
DIAGNOSIS_SAMPLES = 4

#: Rewrites one layer of the given model in place (the layer belongs to that model).
QuantizeOne = Callable[[ir.Model, QuantLayer], None]


def _node_key(node: ir.Node) -> tuple[object, ...]:
    """What makes two nodes compute the same thing from same-named inputs."""
    attrs = tuple(sorted((name, repr(a.value)) for name, a in node.attributes.items()))
    inputs = tuple(v.name if v is not None else None for v in node.inputs)
    return (node.domain or "", node.op_type, inputs, attrs)


def relative_error(reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Largest, over the float outputs, of ``||y - y_ref||_2 / ||y_ref||_2`` pooled over samples.

    ``reference`` and ``outputs`` hold one ``{output name: array}`` dict per sample. An output
    whose reference is all zeros contributes its absolute error norm.
    """
    if len(reference) != len(outputs):
        raise ValueError(f"{len(reference)} reference samples but {len(outputs)} outputs")
    worst = 0.0
    for name in reference[0] if reference else ():
        if reference[0][name].dtype.kind != "f":
            continue
        num = den = 0.0
        for ref, out in zip(reference, outputs):
            r = ref[name].astype(np.float64)
            d = out[name].astype(np.float64) - r
            num += float(np.sum(d * d))
            den += float(np.sum(r * r))
        err = float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))
        worst = max(worst, err)
    return worst


class FloatReference:
    """The float model's outputs and every intermediate value, per sample, and a runner that
    reuses them for the unchanged part of a modified copy of the model."""

    def __init__(self, model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        if not feeds:
            raise PassError("quantization diagnosis needs at least one calibration sample")
        self.feeds = [check_feeds(model.graph, f) for f in feeds]
        self.output_names = [v.name or "" for v in model.graph.outputs]
        self._keys: dict[str, tuple[object, ...]] = {}
        for node in model.graph:
            key = _node_key(node)
            for v in node.outputs:
                if v.name:
                    self._keys[v.name] = key
        self._initializers = {name: v.const_value for name, v in model.graph.initializers.items()}
        self.values: list[dict[str, np.ndarray]] = []
        self.outputs: list[dict[str, np.ndarray]] = []
        for f in self.feeds:
            cache: dict[str, np.ndarray] = {}

            def hook(node: ir.Node, arrays: list[np.ndarray], cache: dict[str, np.ndarray] = cache) -> None:
                for v, a in zip(node.outputs, arrays):
                    if v.name:
                        cache[v.name] = a

            self.outputs.append(run(model, f, hook=hook))
            self.values.append(cache)

    def _same_initializer(self, value: ir.Value) -> bool:
        old = self._initializers.get(value.name or "")
        if old is None or value.const_value is None:
            return False
        if old is value.const_value:  # ir.Model.clone shares tensors
            return True
        a, b = old.numpy(), value.const_value.numpy()
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))

    def run(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        """The outputs of ``model`` (a modified copy of the float model) on every sample.

        A node is recomputed only if it is not in the float model (same output name, op,
        attributes and input names) or one of its inputs was recomputed or is a changed
        initializer; otherwise its outputs come from the cache.
        """
        graph = model.graph
        clean: set[str] = {v.name or "" for v in graph.inputs}
        clean.update(name for name, v in graph.initializers.items() if self._same_initializer(v))
        plan: list[tuple[ir.Node, bool]] = []  # (node, reuse cached outputs)
        for node in graph:
            reuse = all(v is None or v.name in clean for v in node.inputs) and all(
                v.name and self._keys.get(v.name) == _node_key(node) for v in node.outputs
            )
            if reuse:
                clean.update(v.name or "" for v in node.outputs)
            plan.append((node, reuse))
        results = []
        for feeds, cache in zip(self.feeds, self.values):
            env: dict[ir.Value, np.ndarray] = {v: feeds[v.name or ""] for v in graph.inputs}
            for v in graph.initializers.values():
                if v.const_value is not None and v not in env:
                    env[v] = v.const_value.numpy()
            for node, reuse in plan:
                if reuse:
                    for v in node.outputs:
                        env[v] = cache[v.name or ""]
                else:
                    for v, a in zip(node.outputs, _run_node(node, env)):
                        env[v] = a
            try:
                results.append({v.name or "": env[v] for v in graph.outputs})
            except KeyError as exc:
                raise InterpreterError(f"graph output {exc} was never computed") from None
        return results

    def error(self, model: ir.Model) -> float:
        """:func:`relative_error` of ``model``'s outputs against the float outputs."""
        return relative_error(self.outputs, self.run(model))


def _run_node(node: ir.Node, env: Mapping[ir.Value, np.ndarray]) -> list[np.ndarray]:
    opdef = lookup(node.domain, node.op_type)
    if opdef is None:
        raise InterpreterError(f"no reference kernel for {node.domain or 'ai.onnx'}::{node.op_type}", node=node.name)
    inputs: list[np.ndarray | None] = []
    for v in node.inputs:
        if v is None or v.name == "":
            inputs.append(None)
        elif v in env:
            inputs.append(env[v])
        else:
            raise InterpreterError(f"input '{v.name}' is not available", node=node.name)
    try:
        return [np.asarray(o) for o in opdef.kernel(node, inputs)][: len(node.outputs)]
    except InterpreterError:
        raise
    except Exception as exc:  # a kernel failing is reported against its node
        raise InterpreterError(f"{node.op_type} failed: {type(exc).__name__}: {exc}", node=node.name) from exc


def quantized_copy(model: ir.Model, layers: Sequence[QuantLayer], quantize_one: QuantizeOne) -> ir.Model:
    """A copy of ``model`` (tensors shared, graph cloned) with ``layers`` (layers of ``model``)
    quantized by ``quantize_one``; ``model`` itself is not changed."""
    position = {id(node): i for i, node in enumerate(model.graph)}
    copy = model.clone()
    nodes = list(copy.graph)
    mapped = []
    for layer in layers:
        i = position.get(id(layer.node))
        if i is None:
            raise PassError(f"layer {layer.name} is not a node of the model being diagnosed", node=layer.name)
        mapped.append(QuantLayer(nodes[i], layer.weight_index, layer.out_axis, layer.reduce_axis))
    for layer in mapped:
        quantize_one(copy, layer)
    return copy


def layer_errors(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    quantize_one: QuantizeOne,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    reference: FloatReference | None = None,
) -> list[float]:
    """Each layer's contribution to the output error: :func:`relative_error` of the model with only
    that layer quantized, in the order of ``layers``. ``model`` is not changed."""
    ref = reference if reference is not None else FloatReference(model, feeds)
    return [ref.error(quantized_copy(model, [layer], quantize_one)) for layer in layers]


@dataclass
class GuardResult:
    """What :func:`accuracy_guard` decided."""

    kept: list[QuantLayer]  #: layers to keep in float, worst first
    error: float  #: output error with every other layer quantized
    full_error: float  #: output error with every layer quantized
    tolerance: float
    layer_errors: list[float] = field(default_factory=list)  #: per layer, in the order given
    evaluations: int = 0  #: quantized models run while searching

    @property
    def within_tolerance(self) -> bool:
        """Whether the final error is within the tolerance."""
        return self.error <= self.tolerance

    @property
    def kept_names(self) -> list[str]:
        """Names of the layers kept in float."""
        return [layer.name for layer in self.kept]

    @property
    def note(self) -> str:
        """The note of each kept layer's record: ``accuracy guard (model error E <= T, all quantized F)``."""
        op = "<=" if self.within_tolerance else ">"
        return (
            f"{GUARD_NOTE} (model error {self.error:.3g} {op} {self.tolerance:.3g}, "
            f"all quantized {self.full_error:.3g})"
        )

    def summary(self) -> str:
        """One line: how many layers were kept and the errors."""
        return f"{GUARD_NOTE} kept {len(self.kept)} layer(s) in fp32 " + self.note[len(GUARD_NOTE) + 1 :]


def accuracy_guard(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    quantize_one: QuantizeOne,
    feeds: Sequence[Mapping[str, np.ndarray]],
    tolerance: float,
    *,
    errors: Sequence[float] | None = None,
    reference: FloatReference | None = None,
    eligible: Collection[str] | None = None,
) -> GuardResult:
    """Keep the worst layers in float until quantizing the others leaves the output error within
    ``tolerance`` (:func:`relative_error`).

    Layers are ranked by their :func:`layer_errors` (given as ``errors`` or measured here); the
    number ``k`` of worst layers kept is the smallest for which the model is within tolerance,
    found by binary search (the error is assumed to shrink as more layers stay in float; the
    returned ``error`` is always measured for the returned set). Only layers named in ``eligible`` (all when
    ``None``) may be kept; the others are always quantized. ``model`` is not changed.
    """
    if tolerance < 0:
        raise PassError(f"accuracy tolerance must be >= 0, got {tolerance}")
    ref = reference if reference is not None else FloatReference(model, feeds)
    per_layer = list(errors) if errors is not None else layer_errors(model, layers, quantize_one, feeds, reference=ref)
    if len(per_layer) != len(layers):
        raise PassError(f"{len(per_layer)} layer errors for {len(layers)} layers")
    ranked = [i for i in range(len(layers)) if eligible is None or layers[i].name in eligible]
    order = sorted(ranked, key=lambda i: -per_layer[i])
    measured: dict[int, float] = {}

    def error_keeping(k: int) -> float:
        if k not in measured:
            kept = set(order[:k])
            rest = [layer for i, layer in enumerate(layers) if i not in kept]
            measured[k] = ref.error(quantized_copy(model, rest, quantize_one)) if rest else 0.0
        return measured[k]

    full = error_keeping(0)
    lo, hi = 0, len(order)  # error_keeping(lo) > tolerance (unless lo == 0 passes); hi passes (when it can)
    if full <= tolerance:
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if error_keeping(mid) <= tolerance:
            hi = mid
        else:
            lo = mid
    return GuardResult(
        kept=[layers[i] for i in order[:hi]],
        error=error_keeping(hi),
        full_error=full,
        tolerance=tolerance,
        layer_errors=per_layer,
        evaluations=sum(1 for k in measured if k < len(layers)),
    )


@dataclass
class QuantPlan:
    """Which layers a quantization pass should quantize, which get int8 weights with float compute
    (weight-only), which it keeps in float and why, and the diagnosed error of each (by layer name;
    empty unless diagnosis or the guard ran)."""

    quantize: list[QuantLayer]
    kept: list[tuple[QuantLayer, str]]  #: (layer, note for its LayerRecord)
    errors: dict[str, float] = field(default_factory=dict)
    guard: GuardResult | None = None
    weight_only: list[tuple[QuantLayer, str]] = field(default_factory=list)  #: (layer, note)
    #: output error with every candidate layer (quantized or weight-only) rewritten as planned, before the guard
    full_error: float | None = None
    #: the same with only the candidates' weights rounded (all of them weight-only: activations in float)
    weights_error: float | None = None

    def summary(self) -> str:
        """One line on where the diagnosed error comes from ("" when not diagnosed)."""
        if self.full_error is None:
            return ""
        line = f"output error {self.full_error:.3g} with every candidate layer rewritten as planned"
        if self.weights_error is not None:
            line += f", {self.weights_error:.3g} with their weights alone (activations in float)"
        if self.guard is not None:
            line += f", {self.guard.error:.3g} after the accuracy guard"
        return line


def plan_quantization(
    model: ir.Model,
    layers: Sequence[QuantLayer],
    quantize_one: QuantizeOne,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    target: str | None = None,
    weight_bits: int | Mapping[str, int] = 8,
    activation_bits: int | None = 8,
    cost_check: bool = True,
    diagnose: bool = False,
    tolerance: float | None = None,
    samples: int = DIAGNOSIS_SAMPLES,
    weight_only_one: QuantizeOne | None = None,
    weight_only: Sequence[tuple[QuantLayer, str]] = (),
    cost_kept_weight_only: bool = False,
    guard_scope: str = "all",
    weights_alone_one: QuantizeOne | None = None,
) -> QuantPlan:
    """The decisions a quantization pass takes before rewriting: (1) with ``cost_check``, layers whose
    integer kernel is not estimated faster on ``target`` stay in float
    (:func:`compiler.cost.integer_kernel_pays_off`), in fp32 or, with ``cost_kept_weight_only``, as
    weight-only layers (low-bit weights, float compute: ``weight_only_one`` rewrites one layer so); (2) with
    ``diagnose`` or a ``tolerance``, the :func:`layer_errors` of every layer to be quantized and of every
    weight-only one (those and the given ``weight_only`` layers, with their record notes); (3) with a
    ``tolerance``, :func:`accuracy_guard` keeps the worst layers, quantized or weight-only, in fp32; with
    ``guard_scope="weight_only"`` only weight-only layers (float compute either way: fp32 weights cost bytes, not
    speed). Diagnosing also measures the model with every candidate rewritten (``QuantPlan.full_error``) and, given
    ``weights_alone_one`` (rewrites a layer to be quantized with its weights rounded as ``quantize_one`` rounds them
    but float compute), with only the candidates' weights rounded (``QuantPlan.weights_error``).
    ``model`` is not changed."""
    from compiler.cost import integer_kernel_pays_off

    if (weight_only or cost_kept_weight_only) and weight_only_one is None:
        raise PassError("weight-only layers need a weight_only_one rewrite")
    if guard_scope not in GUARD_SCOPES:
        raise PassError(f"guard_scope must be one of {', '.join(GUARD_SCOPES)}, got {guard_scope!r}")
    quantize: list[QuantLayer] = []
    kept: list[tuple[QuantLayer, str]] = []
    for layer in layers:
        ok, reason = (
            integer_kernel_pays_off(
                layer,
                target,
                weight_bits=weight_bits if isinstance(weight_bits, int) else weight_bits.get(layer.name, 8),
                activation_bits=activation_bits,
            )
            if cost_check
            else (True, "")
        )
        if ok:
            quantize.append(layer)
        else:
            kept.append((layer, reason))
    plan = QuantPlan(quantize, kept, weight_only=list(weight_only))
    if cost_kept_weight_only:
        plan.weight_only += kept
        plan.kept = []
    candidates = [*plan.quantize, *(layer for layer, _ in plan.weight_only)]
    if not (diagnose or tolerance is not None) or not candidates:
        return plan
    if samples < 1:
        raise PassError(f"diagnosis needs at least 1 sample, got {samples}")
    feeds = list(feeds)[:samples]
    ref = FloatReference(model, feeds)
    weight_only_names = {layer.name for layer, _ in plan.weight_only}

    def rewrite_one(m: ir.Model, layer: QuantLayer) -> None:
        if layer.name in weight_only_names:
            weight_only_one(m, layer)  # type: ignore[misc]  # not None: weight_only_names is empty otherwise
        else:
            quantize_one(m, layer)

    errors = layer_errors(model, candidates, rewrite_one, feeds, reference=ref)
    plan.errors = {layer.name: e for layer, e in zip(candidates, errors)}
    if weights_alone_one is not None:  # how much of the error the weights alone make
        alone: QuantizeOne = weights_alone_one

        def weights_only(m: ir.Model, layer: QuantLayer) -> None:
            (rewrite_one if layer.name in weight_only_names else alone)(m, layer)

        plan.weights_error = ref.error(quantized_copy(model, candidates, weights_only))
    if tolerance is not None:
        eligible = weight_only_names if guard_scope == "weight_only" else None
        plan.guard = accuracy_guard(
            model, candidates, rewrite_one, feeds, tolerance, errors=errors, reference=ref, eligible=eligible
        )
        guarded = {layer.name for layer in plan.guard.kept}
        plan.quantize = [layer for layer in plan.quantize if layer.name not in guarded]
        plan.weight_only = [(layer, note) for layer, note in plan.weight_only if layer.name not in guarded]
        plan.kept += [(layer, plan.guard.note) for layer in plan.guard.kept]
        plan.full_error = plan.guard.full_error
    else:
        plan.full_error = ref.error(quantized_copy(model, candidates, rewrite_one))
    return plan
