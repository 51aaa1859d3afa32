"""Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019, the empirical variant).

Rounding a layer's weights shifts the *expected* value of its outputs: ``E[y_q - y] = (W_q - W) E[x]``,
per output channel. For BN-folded convolutions whose weights nearly cancel (depthwise and early
convs of mobile CNNs) that shift is a sizeable fraction of the output and it accumulates through the
network. The fix moves the measured shift into the layer's bias.

:func:`correct_biases` does it sequentially over calibration data: the quantized model runs on every
sample in lock step, node by node; after each corrected layer the per-channel mean of its output over
all samples and positions is compared with the float model's, the difference is subtracted from the
layer's bias (a ``Conv`` bias input, or the constant of the ``Add`` after a ``MatMul``), and from the
outputs being propagated, so that later layers are corrected for everything upstream (weight
*and* activation rounding) as the deployed model will see it.

Channel means are averaged over ``samples x positions`` values; a layer where that count is below
``min_positions`` (e.g. a classifier head on 32 samples) is left alone, since its estimate would
mostly fit calibration noise.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from compiler.ir.interpreter import Interpreter, check_feeds, constant_value
from passes._utils import Namer, add_initializer, constant
from passes.quant.layers import QuantLayer, bias_add
from passes.quant.sampling import run_samples

#: Fewest ``samples x positions`` values a channel mean needs before it is trusted.
MIN_POSITIONS = 256


@dataclass
class BiasSite:
    """Where a layer's bias lives: the node holding it, which input, and the output it shifts."""

    node: ir.Node  #: the Conv itself, or the bias Add after a MatMul
    index: int  #: input index of the bias constant in ``node`` (for a Conv without bias: 2, not there yet)
    output: ir.Value  #: the biased output (channel axis: 1 for Conv, last for MatMul)
    channel_axis: int


def bias_site(layer: QuantLayer) -> BiasSite | None:
    """The bias of ``layer`` (``None``: a MatMul without a constant bias ``Add``, or a Gemm, not corrected).
    ``layer``'s weight must still be a float constant."""
    node = layer.node
    if layer.op_type == "Conv":
        return BiasSite(node, 2, node.outputs[0], 1)
    if layer.op_type != "MatMul":
        return None
    found = bias_add(layer)
    if found is None:
        return None
    add, index, c = found
    n = layer.weight_array().shape[layer.out_axis]
    if c.size != n or (c.ndim and c.shape[-1] != n):
        return None
    return BiasSite(add, index, add.outputs[0], -1)


def bias_sites(layers: Sequence[QuantLayer]) -> dict[str, BiasSite]:
    """:func:`bias_site` of every layer that has one, by layer name (call it while the weights are float)."""
    sites = {}
    for layer in layers:
        site = bias_site(layer)
        if site is not None:
            sites[layer.name] = site
    return sites


def _channel_sums(x: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    axis %= x.ndim
    others = tuple(i for i in range(x.ndim) if i != axis)
    return x.astype(np.float64).sum(axis=others), int(x.size // x.shape[axis])


class ChannelMeans:
    """A :class:`~passes.quant.sampling.SampleConsumer` for the per-channel means of every site's output (the
    float model's, by layer name)."""

    def __init__(self, sites: Mapping[str, BiasSite]) -> None:
        self.sites = sites
        self.by_value = {site.output: name for name, site in sites.items()}
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def wanted(self) -> Collection[ir.Value]:
        """The sites' outputs."""
        return self.by_value.keys()

    def consume(self, value: ir.Value, array: np.ndarray, sample: Mapping[str, np.ndarray]) -> None:
        """Add ``array``'s channel sums."""
        name = self.by_value[value]
        s, n = _channel_sums(array, self.sites[name].channel_axis)
        self.sums[name] = self.sums.get(name, 0) + s
        self.counts[name] = self.counts.get(name, 0) + n

    @property
    def means(self) -> dict[str, np.ndarray]:
        """``{layer name: per-channel mean}``."""
        return {name: self.sums[name] / self.counts[name] for name in self.sums}


def float_channel_means(
    model: ir.Model, sites: Mapping[str, BiasSite], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel means of every site's output on the (float) ``model``, by layer name; the sites must
    belong to ``model``."""
    consumer = ChannelMeans(sites)
    run_samples(model, feeds, [consumer])
    return consumer.means


def _set_bias(graph: ir.Graph, site: BiasSite, delta: np.ndarray, namer: Namer, label: str) -> None:
    """Subtract ``delta`` (per channel) from the site's bias constant, creating a Conv bias if absent."""
    old = site.node.inputs[site.index] if site.index < len(site.node.inputs) else None
    current = constant(old)
    if current is None:
        if old is not None:
            raise PassError("bias input is not a constant", node=label)
        current = np.zeros(delta.shape, np.float32)
    shape = current.shape
    new = (current.astype(np.float64).reshape(-1) - delta).astype(np.float32).reshape(shape)
    value = add_initializer(graph, namer(f"{(old.name if old is not None else None) or label}_bc"), new)
    if old is None:
        while len(site.node.inputs) < site.index:
            site.node.resize_inputs(len(site.node.inputs) + 1)
        site.node.resize_inputs(site.index + 1)
    site.node.replace_input_with(site.index, value)
    if old is not None and old.is_initializer() and not old.uses() and old.name in graph.initializers:
        del graph.initializers[old.name]  # type: ignore[arg-type]


def correct_biases(
    model: ir.Model,
    sites: Mapping[str, BiasSite],
    float_means: Mapping[str, np.ndarray],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    min_positions: int = MIN_POSITIONS,
) -> dict[str, float]:
    """Correct the biases at ``sites`` (of quantized layers of ``model``, by layer name, from :func:`bias_sites`)
    in place, sequentially (module doc).

    ``float_means`` are :func:`float_channel_means` of the float model on the same ``feeds``.
    Returns ``{layer name: relative size of the correction}`` (``||delta|| / ||float mean||``, 0 when
    the float mean is 0) for the corrected layers.
    """
    if not feeds:
        raise PassError("bias correction needs at least one calibration sample")
    graph = model.graph
    namer = Namer(graph)
    by_output = {site.output: (name, site) for name, site in sites.items() if name in float_means}
    last_use: dict[ir.Value, int] = {}
    nodes = list(graph)
    for i, node in enumerate(nodes):
        for v in node.inputs:
            if v is not None:
                last_use[v] = i
    outputs = set(graph.outputs)
    envs: list[dict[ir.Value, np.ndarray]] = []
    for sample in feeds:
        given = check_feeds(graph, sample)
        env = {v: given[v.name or ""] for v in graph.inputs}
        envs.append(env)
    initializers: dict[ir.Value, np.ndarray] = {}
    for v in graph.initializers.values():
        c = constant_value(v)
        if c is not None:
            initializers[v] = c
    corrected: dict[str, float] = {}
    for i, node in enumerate(nodes):
        results = [Interpreter._run_node(node, ChainMap(env, initializers)) for env in envs]
        for env, outs in zip(envs, results):
            for value, arr in zip(node.outputs, outs):
                env[value] = arr
        for value in node.outputs:
            entry = by_output.get(value)
            if entry is None:
                continue
            name, site = entry
            total = np.zeros_like(float_means[name])
            count = 0
            for env in envs:
                s, n = _channel_sums(env[value], site.channel_axis)
                total = total + s
                count += n
            if count < min_positions:
                continue
            delta = total / count - float_means[name]
            _set_bias(graph, site, delta, namer, name)
            shape = [1] * envs[0][value].ndim
            shape[site.channel_axis] = -1
            for env in envs:
                env[value] = (env[value] - delta.reshape(shape)).astype(env[value].dtype)
            ref = float(np.linalg.norm(float_means[name]))
            corrected[name] = float(np.linalg.norm(delta)) / ref if ref > 0 else 0.0
        for v in node.inputs:
            if v is not None and last_use.get(v) == i and v not in outputs and v not in initializers:
                for env in envs:
                    env.pop(v, None)
    return corrected
