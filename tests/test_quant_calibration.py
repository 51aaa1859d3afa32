"""Calibration observers and range methods on synthetic distributions whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from compiler.errors import PassError
from passes.quant.calibration import METHODS, TensorObserver, observe, quantization_mse
from tests.helpers import make_model, tensor, to_ir


def _observer(x: np.ndarray, chunks: int = 8) -> TensorObserver:
    obs = TensorObserver()
    for part in np.array_split(x, chunks):  # growing ranges: the histogram rescales as larger values arrive
        obs.update(part)
    return obs


def test_minmax_is_exact_and_histogram_keeps_every_value() -> None:
    x = np.random.default_rng(0).standard_normal(50_000).astype(np.float32) * 3
    obs = _observer(x[np.argsort(np.abs(x))])  # increasing magnitudes: many doublings
    assert obs.compute_range("minmax") == (float(x.min()), float(x.max()))
    assert obs.compute_range("minmax", symmetric=True) == (-float(np.abs(x).max()), float(np.abs(x).max()))
    assert obs.pos.sum() + obs.neg.sum() == x.size
    # The histogram's percentile agrees with numpy's to within one bin.
    lo, hi = obs.compute_range("percentile", percentile=99.0)
    width = obs.range / obs.bins
    assert abs(hi - np.percentile(x, 99.0)) <= 2 * width
    assert abs(lo - np.percentile(x, 1.0)) <= 2 * width


def test_outliers_are_clipped_by_percentile_mse_and_entropy_not_minmax() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[:3] = 40.0  # three outliers in a million
    obs = _observer(x)
    ranges = {m: obs.compute_range(m, symmetric=True) for m in METHODS}
    assert ranges["minmax"][1] == 40.0
    for method in ("percentile", "entropy", "mse"):
        hi = ranges[method][1]
        assert 3.0 < hi < 20.0, (method, hi)
    # Clipping the outliers pays off: lower error on the data than min/max.
    errors = {m: quantization_mse(x, *ranges[m], symmetric=True) for m in METHODS}
    for method in ("percentile", "entropy", "mse"):
        assert errors[method] < errors["minmax"], errors


def test_mse_range_has_the_lowest_error_on_heavy_tails() -> None:
    x = np.random.default_rng(2).standard_t(df=3, size=200_000).astype(np.float32)  # heavy tails
    obs = _observer(x)
    for symmetric in (True, False):
        ranges = {m: obs.compute_range(m, symmetric=symmetric) for m in METHODS}
        errors = {m: quantization_mse(x, *r, symmetric=symmetric) for m, r in ranges.items()}
        assert ranges["mse"][1] < ranges["minmax"][1]
        assert errors["mse"] < 0.8 * errors["minmax"], errors
        assert errors["mse"] == min(errors.values()), errors


def test_mse_keeps_the_range_when_outliers_are_a_large_share() -> None:
    # 1 % of the values at 40: clipping them costs far more than coarse steps, so mse keeps them.
    x = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    x[:1000] = 40.0
    _, hi = _observer(x).compute_range("mse", symmetric=True)
    assert hi > 35.0


def test_entropy_keeps_a_saturation_spike() -> None:
    # A ReLU6 output with many values piled at 6: KL would clip the spike; the range must keep it.
    y = np.clip(np.random.default_rng(4).standard_normal(100_000) * 2, 0, 6).astype(np.float32)
    y[:30_000] = 6.0
    lo, hi = _observer(y).compute_range("entropy")
    assert (lo, hi) == (0.0, 6.0)


def test_asymmetric_ranges_follow_each_tail() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-1, 0, 50_000), rng.exponential(2.0, 50_000)]).astype(np.float32)
    lo, hi = _observer(x).compute_range("percentile", percentile=99.9)
    assert lo == pytest.approx(np.percentile(x, 0.1), abs=0.02)
    assert hi == pytest.approx(np.percentile(x, 99.9), rel=0.02)


def test_bad_method_and_empty_observer() -> None:
    obs = TensorObserver()
    with pytest.raises(ValueError, match="saw no values"):
        obs.compute_range("minmax")
    obs.update(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        obs.compute_range("kl")


def test_observe_runs_the_interpreter_and_tracks_channels() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    model = to_ir(make_model(nodes, [tensor("x", [4, 3])], [tensor("y", [4, 3])]))
    rng = np.random.default_rng(6)
    feeds = [{"x": rng.standard_normal((4, 3)).astype(np.float32) * [1, 10, 100]} for _ in range(5)]
    feeds = [{"x": f["x"].astype(np.float32)} for f in feeds]
    stats = observe(model, ["x", "r"], feeds, channel_axes={"r": -1}, progress=False)
    allx = np.concatenate([f["x"] for f in feeds])
    assert stats["x"].min == allx.min() and stats["x"].max == allx.max()
    np.testing.assert_allclose(stats["r"].channel_absmax, np.maximum(allx, 0).max(axis=0))
    with pytest.raises(PassError, match="cannot observe nope"):
        observe(model, ["nope"], feeds, progress=False)
