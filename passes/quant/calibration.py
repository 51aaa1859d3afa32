"""Activation calibration: observers that watch tensors while the reference interpreter runs the
calibration set, and the methods that turn what they saw into a quantization range.

Methods (:data:`METHODS`):

- ``minmax``: the observed minimum and maximum.
- ``percentile``: clip to the ``p``-th percentile (of ``|x|`` for symmetric ranges, of each tail for
  asymmetric ones).
- ``entropy``: TensorRT's KL-divergence calibration: the threshold whose 8-bit quantized histogram
  is closest (KL divergence) to the clipped reference histogram.
- ``mse``: the clip range minimizing the expected quantization mean squared error (rounding noise
  ``S^2 / 12`` inside the range plus clipping error outside), searched over the histogram.

An observer keeps the exact min/max, a histogram of ``|x|`` for each sign with a fixed number of bins
over ``[0, R]`` (``R`` doubles, merging bin pairs, when a larger value arrives: one pass over the data,
no stored samples) and, optionally, the per-channel ``max |x|`` (SmoothQuant's statistic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from passes.quant.sampling import run_samples
from passes.quant.scheme import dequantize, quantize, scale_zero_point

METHODS = ("minmax", "percentile", "entropy", "mse")


class TensorObserver:
    """Statistics of one tensor over the calibration set."""

    def __init__(self, bins: int = 2048, channel_axis: int | None = None) -> None:
        if bins < 256 or bins % 2:
            raise ValueError(f"bins must be an even number >= 256, got {bins}")
        self.bins = bins
        self.channel_axis = channel_axis
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.range = 0.0  #: the histograms cover |x| in [0, range]
        self.pos = np.zeros(bins, np.int64)  #: counts of x >= 0 by |x|
        self.neg = np.zeros(bins, np.int64)  #: counts of x < 0 by |x|
        self.channel_absmax: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        """Add one tensor's values."""
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        finite = x[np.isfinite(x)] if not np.all(np.isfinite(x)) else x.reshape(-1)
        if self.channel_axis is not None and x.ndim:
            axis = self.channel_axis % x.ndim
            others = tuple(i for i in range(x.ndim) if i != axis)
            cmax = np.abs(np.where(np.isfinite(x), x, 0)).max(axis=others) if others else np.abs(x)
            self.channel_absmax = cmax if self.channel_absmax is None else np.maximum(self.channel_absmax, cmax)
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(finite.size)
        amax = max(-lo, hi)
        if amax <= 0:
            self.pos[0] += finite.size
            return
        if self.range == 0.0:
            self.range = amax
        while amax > self.range:
            self._double()
        mag = np.abs(finite)
        idx = np.minimum((mag * (self.bins / self.range)).astype(np.int64), self.bins - 1)
        negative = finite < 0
        self.pos += np.bincount(idx[~negative], minlength=self.bins)
        self.neg += np.bincount(idx[negative], minlength=self.bins)

    def _double(self) -> None:
        half = self.bins // 2
        for h in (self.pos, self.neg):
            merged = h.reshape(half, 2).sum(axis=1)
            h[:half] = merged
            h[half:] = 0
        self.range *= 2

    # ------------------------------------------------------------------ ranges

    def signed_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, counts)`` over ``[-range, range]`` (``2 * bins`` bins)."""
        r = self.range if self.range > 0 else 1.0
        edges = np.linspace(-r, r, 2 * self.bins + 1)
        return edges, np.concatenate([self.neg[::-1], self.pos]).astype(np.float64)

    def compute_range(
        self, method: str, *, percentile: float = 99.99, symmetric: bool = False, bits: int = 8
    ) -> tuple[float, float]:
        """The ``(lo, hi)`` range ``method`` chooses for a ``bits``-bit (a)symmetric quantizer."""
        if self.count == 0:
            raise ValueError("observer saw no values")
        if method not in METHODS:
            raise ValueError(f"unknown calibration method '{method}'; known: {', '.join(METHODS)}")
        lo, hi = self.min, self.max
        if method == "minmax" or self.range == 0.0:
            return (-max(-lo, hi), max(-lo, hi)) if symmetric else (lo, hi)
        if method == "percentile":
            if not 0.0 < percentile <= 100.0:
                raise ValueError(f"percentile must be in (0, 100], got {percentile}")
            if symmetric:
                t = _quantile(self.pos + self.neg, self.range, percentile / 100.0)
                return -t, t
            edges, counts = self.signed_histogram()
            q_hi = _signed_quantile(edges, counts, percentile / 100.0)
            q_lo = _signed_quantile(edges, counts, 1.0 - percentile / 100.0)
            return max(lo, q_lo), min(hi, q_hi)
        if method == "entropy":
            unsigned = not symmetric and lo >= 0
            levels = (1 << bits) - 1 if unsigned else 1 << (bits - 1)
            t = _entropy_threshold(self.pos + self.neg, self.range, levels)
            if symmetric:
                return -t, t
            return max(lo, -t), min(hi, t)
        return self._mse_range(symmetric, bits)

    def _mse_range(self, symmetric: bool, bits: int) -> tuple[float, float]:
        edges, counts = self.signed_histogram()
        centers = (edges[:-1] + edges[1:]) / 2
        keep = counts > 0
        centers, counts = centers[keep], counts[keep]
        fractions = np.geomspace(1e-3, 1.0, 100 if symmetric else 40)  # heavy tails want small fractions
        if symmetric:
            amax = max(-self.min, self.max)
            his = amax * fractions
            los = -his
        else:
            grid_lo, grid_hi = np.meshgrid(min(self.min, 0.0) * fractions, max(self.max, 0.0) * fractions)
            los, his = grid_lo.reshape(-1), grid_hi.reshape(-1)
        best = int(np.argmin(expected_mse(centers, counts, los, his, bits, symmetric)))
        return float(los[best]), float(his[best])


def expected_mse(
    values: np.ndarray, counts: np.ndarray, los: np.ndarray, his: np.ndarray, bits: int, symmetric: bool
) -> np.ndarray:
    """Expected squared error, per candidate range ``(los[i], his[i])``, of quantizing ``values``
    (weighted by ``counts``): ``S^2 / 12`` inside the range, the clipping distance squared outside."""
    levels = (1 << bits) - 1 if not symmetric else (1 << bits) - 2
    lo, hi = np.minimum(los, 0.0)[:, None], np.maximum(his, 0.0)[:, None]
    step = np.maximum(hi - lo, 1e-30) / levels
    v = values[None, :]
    clipped = np.where(v > hi, v - hi, np.where(v < lo, lo - v, 0.0))
    inside = (v >= lo) & (v <= hi)
    err = np.where(inside, step**2 / 12.0, clipped**2)
    return (err * counts[None, :]).sum(axis=1) / max(float(counts.sum()), 1.0)


def _quantile(hist: np.ndarray, r: float, q: float) -> float:
    """The ``q`` quantile of a histogram over ``[0, r]`` (linear inside a bin)."""
    cdf = np.cumsum(hist, dtype=np.float64)
    total = cdf[-1]
    if total <= 0:
        return 0.0
    target = q * total
    i = int(np.searchsorted(cdf, target, side="left"))
    i = min(i, len(hist) - 1)
    before = cdf[i - 1] if i else 0.0
    frac = (target - before) / hist[i] if hist[i] else 1.0
    return float((i + min(max(frac, 0.0), 1.0)) * r / len(hist))


def _signed_quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    cdf = np.cumsum(counts)
    total = cdf[-1]
    target = q * total
    i = min(int(np.searchsorted(cdf, target, side="left")), len(counts) - 1)
    before = cdf[i - 1] if i else 0.0
    frac = (target - before) / counts[i] if counts[i] else 1.0
    return float(edges[i] + min(max(frac, 0.0), 1.0) * (edges[i + 1] - edges[i]))


def _entropy_threshold(
    hist: np.ndarray, r: float, levels: int, max_candidates: int = 512, max_clipped: float = 1e-3
) -> float:
    """TensorRT's KL-divergence threshold over a histogram of ``|x|`` on ``[0, r]``.

    Thresholds clipping more than ``max_clipped`` of the values are not considered: KL divergence
    happily clips a spike of saturated values (a ReLU6 output piling up at 6) that is a large part
    of the tensor."""
    n = len(hist)
    hist = hist.astype(np.float64)
    nonzero = np.nonzero(hist)[0]
    if nonzero.size == 0:
        return 0.0
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return last * r / n  # every value already fits in `levels` bins: no clipping
    tail = hist.sum() - np.cumsum(hist)  # tail[i - 1]: mass above bin i - 1
    first = max(levels, int(np.searchsorted(-tail, -max_clipped * hist.sum(), side="left")) + 1)
    step = max(1, (last - first) // max_candidates)
    best_i, best_kl = last, math.inf
    for i in range(min(first, last), last + 1, step):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        ref = hist[:i]
        bounds = np.linspace(0, i, levels + 1).astype(np.int64)
        starts = bounds[:-1]
        valid = bounds[1:] > starts
        sums = np.add.reduceat(ref, starts[valid])
        nnz = np.add.reduceat((ref > 0).astype(np.float64), starts[valid])
        per_bin = np.where(nnz > 0, sums / np.maximum(nnz, 1), 0.0)
        chunk_of = np.repeat(np.arange(valid.sum()), np.diff(np.append(starts[valid], i)))
        q = np.where(ref > 0, per_bin[chunk_of], 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * r / n if best_i < n else r


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs <= 0:
        return math.inf
    q = q / qs
    mask = p > 0
    q_m = np.where(q[mask] > 0, q[mask], 1e-12)  # mass the quantized histogram lost
    return float(np.sum(p[mask] * np.log(p[mask] / q_m)))


def quantization_mse(x: np.ndarray, lo: float, hi: float, bits: int = 8, *, symmetric: bool = False) -> float:
    """Mean squared error of fake-quantizing ``x`` with the range ``[lo, hi]`` (for tests and reports)."""
    p = scale_zero_point(lo, hi, bits, symmetric=symmetric)
    return float(np.mean((dequantize(quantize(x, p), p) - x.astype(np.float32)) ** 2))


class Observation:
    """A :class:`~passes.quant.sampling.SampleConsumer` that observes the values named ``names`` (graph inputs or
    node outputs of ``model``) into one :class:`TensorObserver` each; ``channel_axes`` asks for per-channel
    ``max |x|`` of some values. Raises :class:`PassError` for a name that no node produces and that is no graph
    input."""

    def __init__(
        self, model: ir.Model, names: Iterable[str], *, channel_axes: Mapping[str, int] | None = None, bins: int = 2048
    ) -> None:
        wanted = set(names)
        axes = dict(channel_axes or {})
        values = {v.name: v for v in model.graph.inputs}
        values.update({v.name: v for n in model.graph for v in n.outputs})
        missing = sorted(wanted - set(values))
        if missing:
            raise PassError(f"cannot observe {', '.join(missing)}: no such graph input or node output")
        self.observers = {name: TensorObserver(bins, axes.get(name)) for name in wanted}
        self._values = [values[name] for name in wanted]

    def wanted(self) -> list[ir.Value]:
        """The observed values."""
        return self._values

    def consume(self, value: ir.Value, array: np.ndarray, sample: Mapping[str, np.ndarray]) -> None:
        """Observe ``array``."""
        self.observers[value.name or ""].update(array)


def observe(
    model: ir.Model,
    names: Iterable[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    channel_axes: Mapping[str, int] | None = None,
    bins: int = 2048,
    progress: bool | None = None,
    desc: str = "calibrating",
) -> dict[str, TensorObserver]:
    """Run ``model`` on every calibration sample with the reference interpreter and observe the values
    named ``names`` (:class:`Observation`). ``progress`` shows a tqdm bar (``None``: only on a terminal)."""
    observation = Observation(model, names, channel_axes=channel_axes, bins=bins)
    run_samples(model, feeds, [observation], progress=progress, desc=desc)
    return observation.observers
