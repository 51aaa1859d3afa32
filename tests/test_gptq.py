"""GPTQ against round-to-nearest on layers with correlated inputs, and the Hessian collector."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from passes.quant import find_layers
from passes.quant.gptq import gptq, gptq_grouped, rtn, select_outliers
from passes.quant.hessian import collect_hessians, token_mask_input
from tests.helpers import make_model, tensor, to_ir


def _correlated(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """Inputs with strongly correlated features and uneven scales (like real activations)."""
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    scales = np.exp(rng.standard_normal(k))
    return (rng.standard_normal((rows, k)) @ mix * scales).astype(np.float32)


def _output_error(x: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    return float(np.linalg.norm(x @ w.T - x @ wq.T) / np.linalg.norm(x @ w.T))


@pytest.mark.parametrize(
    ("bits", "group", "act_order"), [(4, 32, False), (4, 32, True), (3, 64, True), (4, 128, False)]
)
def test_gptq_output_error_below_rtn(bits: int, group: int, act_order: bool) -> None:
    rng = np.random.default_rng(0)
    n, k = 48, 128
    x = _correlated(rng, 512, k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    h = 2.0 * x.astype(np.float64).T @ x / len(x)
    base = rtn(w, bits, group)
    ours = gptq(w, h, bits, group, act_order=act_order, block=32)
    e_rtn, e_gptq = _output_error(x, w, base.dequantized), _output_error(x, w, ours.dequantized)
    # Act-order (largest diag(H) first) is much better; plain order still beats RTN.
    assert e_gptq < (0.7 if act_order else 0.9) * e_rtn, (e_gptq, e_rtn)
    # The codes lie in the b-bit range and dequantize with the blocked parameters to what is reported.
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    assert ours.q.min() >= lo and ours.q.max() <= hi
    cols = np.arange(k) // group
    np.testing.assert_array_equal(ours.dequantized, (ours.q * ours.scale[:, cols]).astype(np.float32))


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (3, False)])
def test_act_order_uses_rtn_grid_and_static_groups(bits: int, symmetric: bool) -> None:
    """With act-order GPTQ rounds onto exactly RTN's per-group grid (static groups from the original
    weights), and every code stays in its own original column's group."""
    rng = np.random.default_rng(7)
    k, group = 96, 32
    x = _correlated(rng, 256, k)
    w = rng.standard_normal((24, k)).astype(np.float32)
    h = 2.0 * x.astype(np.float64).T @ x / len(x)
    a = rtn(w, bits, group, symmetric=symmetric)
    b = gptq(w, h, bits, group, symmetric=symmetric, act_order=True, block=16)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.zero_point, b.zero_point)
    cols = np.arange(k) // group
    np.testing.assert_array_equal(b.dequantized, ((b.q - b.zero_point[:, cols]) * b.scale[:, cols]).astype(np.float32))
    assert _output_error(x, w, b.dequantized) < _output_error(x, w, a.dequantized)


def test_gptq_with_identity_hessian_is_rtn() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    a = rtn(w, 4, 16, symmetric=False)
    b = gptq(w, np.eye(64), 4, 16, symmetric=False, damp=0.0)
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.zero_point, b.zero_point)
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-6)


@pytest.mark.parametrize(("groups", "per", "k", "bits"), [(96, 1, 9, 8), (24, 1, 25, 7), (6, 3, 18, 4), (3, 2, 140, 8)])
def test_grouped_gptq_is_the_per_group_gptq(groups: int, per: int, k: int, bits: int) -> None:
    """A grouped conv's GPTQ in one pass over the columns gives the codes, scales and dequantized weights of one
    GPTQ call per group, bit for bit: with an input no sample reaches in every group, a group no sample reaches at
    all, and K past the lazy block (the per-group fallback)."""
    rng = np.random.default_rng(groups * k)
    w = (rng.standard_normal((groups * per, k)) * 3).astype(np.float32)
    x = rng.standard_normal((groups, 200, k)) * rng.uniform(0.1, 5.0, (groups, 1, k))
    x[:, :, 0] = 0.0
    h = 2.0 * np.einsum("gpk,gpl->gkl", x, x) / 200
    h[1] = 0.0
    got = gptq_grouped(w, h, bits, damp=0.01)
    parts = [gptq(w[g * per : (g + 1) * per], h[g], bits, k, damp=0.01) for g in range(groups)]
    np.testing.assert_array_equal(got.q, np.concatenate([p.q for p in parts]))
    np.testing.assert_array_equal(got.scale, np.concatenate([p.scale for p in parts]))
    np.testing.assert_array_equal(got.dequantized, np.concatenate([p.dequantized for p in parts]))
    assert got.group_size == k and got.bits == bits and got.signed


def test_outliers_are_exact_and_reduce_error() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    w[rng.integers(0, 32, 20), rng.integers(0, 128, 20)] *= 12.0  # a few large weights widen their groups
    mask = select_outliers(w, 0.01, 4, 64)
    assert mask.sum() == round(0.01 * w.size)
    plain, kept = rtn(w, 4, 64), rtn(w, 4, 64, outliers=mask)
    np.testing.assert_array_equal(kept.dequantized[mask], w[mask].astype(np.float16).astype(np.float32))
    assert np.linalg.norm(w - kept.dequantized) < 0.7 * np.linalg.norm(w - plain.dequantized)


def test_collect_hessians_matches_inputs() -> None:
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    w2 = rng.standard_normal((4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="gemm", transB=1),
    ]
    model = to_ir(make_model(nodes, [tensor("x", [3, 8])], [tensor("y", [3, 4])], [("w1", w1), ("w2", w2)]))
    xs = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(4)]
    hs = collect_hessians(model, find_layers(model), [{"x": x} for x in xs])
    x_all = np.concatenate(xs).astype(np.float64)
    r_all = np.maximum(x_all @ w1, 0)
    np.testing.assert_allclose(hs["mm"], 2 * x_all.T @ x_all / 12, rtol=1e-5)
    np.testing.assert_allclose(hs["gemm"], 2 * r_all.T @ r_all / 12, rtol=1e-4, atol=1e-6)


def test_hessian_skips_masked_tokens() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    inputs = [tensor("x", [1, 5, 8]), tensor("attention_mask", [1, 5], TensorProto.INT64)]
    model = to_ir(make_model(nodes, inputs, [tensor("y", [1, 5, 4])], [("w", w)]))
    assert token_mask_input(model) == "attention_mask"
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0]])
    h = collect_hessians(model, find_layers(model), [{"x": x, "attention_mask": mask}], "attention_mask")["mm"]
    real = x[0, :3].astype(np.float64)
    np.testing.assert_allclose(h, 2 * real.T @ real / 3, rtol=1e-5)


def test_gptq_vs_rtn_mcnemar_matches_binomial_test() -> None:
    import sys
    from pathlib import Path

    from scipy.stats import binomtest

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from gptq_vs_rtn import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)
    for wins, losses in ((27, 25), (22, 32), (40, 64), (3, 11)):
        expected = binomtest(wins, wins + losses, 0.5).pvalue
        assert mcnemar_p(wins, losses) == pytest.approx(expected, rel=1e-9)
        assert mcnemar_p(losses, wins) == mcnemar_p(wins, losses)
