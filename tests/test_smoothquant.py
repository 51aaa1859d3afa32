"""smooth_quant: exact in float (reference interpreter), folds 1/s where it can, and makes int8 better."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quantize_int8 import QuantizeInt8Pass
from passes.smoothquant import SmoothQuantPass, smoothing_scales
from tests.helpers import make_model, tensor, to_ir

K = 64


def _model() -> onnx.ModelProto:
    """LayerNorm (outlier channels in gamma) -> two MatMuls; MatMul+bias -> MatMul; Gelu -> MatMul."""
    rng = np.random.default_rng(0)
    gamma = np.ones(K, np.float32)
    gamma[[3, 17, 40]] = 40.0  # outlier channels, as in transformer LayerNorm outputs
    beta = (rng.standard_normal(K) * 0.1).astype(np.float32)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="k_proj"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="sum"),
        helper.make_node("MatMul", ["qk", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("MatMul", ["hb", "w2"], ["g"], name="fc2"),
        helper.make_node("Gelu", ["g"], ["ga"], name="gelu"),
        helper.make_node("MatMul", ["ga", "w3"], ["y"], name="fc3"),
    ]
    inits = [
        ("gamma", gamma),
        ("beta", beta),
        ("wq", w(K, K)),
        ("wk", w(K, K)),
        ("w1", w(K, K)),
        ("b1", (rng.standard_normal(K) * 0.1).astype(np.float32)),
        ("w2", w(K, K)),
        ("w3", w(K, K)),
    ]
    return make_model(nodes, [tensor("x", [1, 8, K])], [tensor("y", [1, 8, K])], inits, opset=20)


def _feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8, K)).astype(np.float32)} for _ in range(n)]


def test_smoothing_is_exact_in_float_and_folds_where_it_can() -> None:
    model = to_ir(_model())
    feeds = _feeds(8)
    x = _feeds(1, seed=5)[0]
    before = run(model, x)["y"]
    ln_gamma = model.graph.initializers["gamma"].const_value.numpy().copy()  # type: ignore[union-attr]
    p = SmoothQuantPass(PassContext(calibration=feeds))
    assert p(model).modified
    after = run(model, x)["y"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    notes = {r.node: r.note for r in p.context.layers}
    assert notes["q_proj"] == notes["k_proj"] == "1/s folded into ln"
    assert notes["fc2"] == "1/s folded into fc1"  # MatMul + bias Add producer
    assert "inserted Mul" in notes["fc3"]  # Gelu: not foldable
    assert "inserted Mul" in notes["fc1"]  # Add of two activations: not foldable
    ln = next(n for n in model.graph if n.name == "ln")
    gamma = ln.inputs[1].const_value.numpy()  # type: ignore[union-attr]
    assert gamma[3] < 0.5 * ln_gamma[3]  # the outlier channel was scaled down


def test_int8_error_drops_after_smoothing() -> None:
    feeds = _feeds(16)
    x = _feeds(1, seed=5)[0]
    reference = run(to_ir(_model()), x)["y"]
    errors = {}
    for smooth in (False, True):
        model = to_ir(_model())
        context = PassContext(calibration=feeds, options={"quantize_int8": {"method": "minmax"}})
        if smooth:
            SmoothQuantPass(context)(model)
        QuantizeInt8Pass(context)(model)
        errors[smooth] = float(np.sqrt(np.mean((run(model, x)["y"] - reference) ** 2)))
    assert errors[True] < 0.7 * errors[False], errors


def test_scales_and_options() -> None:
    s = smoothing_scales(np.array([4.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.0]), 0.5)
    np.testing.assert_allclose(s, [2.0, 1.0, 1.0])
    np.testing.assert_allclose(smoothing_scales(np.array([9.0]), np.array([4.0]), 1.0), [9.0])
    with pytest.raises(PassError, match="alpha must be in"):
        SmoothQuantPass(PassContext(options={"smooth_quant": {"alpha": 1.5}}, calibration=_feeds(1)))(to_ir(_model()))
    p = SmoothQuantPass(PassContext(options={"smooth_quant": {"insert_mul": False}}, calibration=_feeds(2)))
    model = to_ir(_model())
    p(model)
    assert not any(n.op_type == "Mul" for n in model.graph)
    assert {r.node for r in p.context.layers if r.action == "not smoothed"} == {"fc1", "fc3"}
