"""quantize_mixed: sensitivity-ranked bit widths under a size budget."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper

from backends.onnx import to_standard_onnx
from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quantize_mixed import QuantizeMixed, assign_bits
from tests.helpers import make_model, tensor, to_ir


def _model() -> ir.Model:
    """Three 64x64 MatMuls; the outer ones are +-1/8 (exact in int4), the middle one heavy-tailed."""
    rng = np.random.default_rng(0)
    ws = [np.sign(rng.standard_normal((64, 64))).astype(np.float32) / 8 for _ in range(3)]
    ws[1] = (rng.standard_t(2, (64, 64)) / 16).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
        helper.make_node("Tanh", ["h0"], ["t0"], name="t0"),
        helper.make_node("MatMul", ["t0", "w1"], ["h1"], name="mm1"),
        helper.make_node("Tanh", ["h1"], ["t1"], name="t1"),
        helper.make_node("MatMul", ["t1", "w2"], ["y"], name="mm2"),
    ]
    inits = [(f"w{i}", w) for i, w in enumerate(ws)]
    return to_ir(make_model(nodes, [tensor("x", [4, 64])], [tensor("y", [4, 64])], inits))


def _calibration(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(n)]


def _apply(model: ir.Model, **options: Any) -> PassContext:
    ctx = PassContext(options={"quantize_mixed": options}, calibration=_calibration())
    QuantizeMixed(ctx)(model)
    return ctx


@pytest.mark.parametrize("sensitivity", ["output", "hessian"])
def test_most_sensitive_layer_keeps_higher_precision(sensitivity: str) -> None:
    model = _model()
    fp32 = 3 * 64 * 64 * 4
    int4 = 64 * 64 // 2 + 64 * 4  # one group of 64 per column
    budget = 2 * int4 + 64 * 64 + 64 * 4  # room for exactly one int8 layer
    ctx = _apply(model, target_bytes=budget, group_size=128, sensitivity=sensitivity)
    rec = {r.node: r for r in ctx.layers}
    assert rec["mm1"].error is not None and rec["mm1"].error > max(rec["mm0"].error or 0, rec["mm2"].error or 0)
    assert rec["mm1"].weight_bits == 8 and rec["mm0"].weight_bits == rec["mm2"].weight_bits == 4
    assert sum(r.bytes_after for r in ctx.layers) <= budget
    assert sum(r.bytes_before for r in ctx.layers) == fp32
    assert "sensitivity rank 1/3" in rec["mm1"].note
    x = _calibration(1)[0]
    # int4 packed as MatMulNBits (accuracy_level 0: fp32 compute). ORT's own fusions of DQ -> MatMul (int4 and
    # int8 per-channel weights into MatMulNBits) quantize activations to int8, so compare at basic optimization.
    proto = to_standard_onnx(model, pack_int4=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, x)[0], run(model, x)["y"], rtol=1e-4, atol=1e-4)


def test_bigger_budget_keeps_fp32_and_too_small_budget_fails() -> None:
    model = _model()
    ctx = _apply(model, target_ratio=0.5)
    bits = {r.node: r.weight_bits for r in ctx.layers}
    assert bits["mm1"] is None  # fp32 (kept), the others fill what is left
    assert sum(r.bytes_after for r in ctx.layers) <= 0.5 * 3 * 64 * 64 * 4
    with pytest.raises(PassError, match="below the all-4-bit size"):
        _apply(_model(), target_bytes=100)


def test_assign_bits_greedy() -> None:
    sizes = {n: {4: 10, 8: 20, 32: 80} for n in "abc"}
    assert assign_bits({"a": 1.0, "b": 3.0, "c": 2.0}, sizes, 30 + 70 + 10, [4, 8, 32]) == {"a": 4, "b": 32, "c": 8}
