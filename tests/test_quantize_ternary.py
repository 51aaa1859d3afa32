"""quantize_ternary: TWN / BWN weights stored as int2, against the formula, the interpreter and ORT."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quantize_ternary import QuantizeTernary, ternarize
from tests.helpers import make_model, ort_run, tensor, to_ir


def test_ternary_formula_on_a_row() -> None:
    # mean|w| = (0.1 + 0.5 + 1.0 + 0.2 + 0.7 + 0.9) / 6 = 0.5667; delta = 0.7 * 0.5667 = 0.3967:
    # kept: -0.5, 1.0, -0.7, 0.9 -> alpha = 3.1 / 4 = 0.775.
    w = np.array([[0.1, -0.5, 1.0, 0.2, -0.7, 0.9]], np.float32).T  # MatMul weight [K=6, N=1]
    q, alpha = ternarize(w, out_axis=1)
    np.testing.assert_array_equal(q[:, 0], [0, -1, 1, 0, -1, 1])
    assert alpha[0] == pytest.approx(0.775)
    qb, ab = ternarize(w, out_axis=1, mode="binary")
    np.testing.assert_array_equal(qb[:, 0], [1, -1, 1, 1, -1, 1])
    assert ab[0] == pytest.approx(3.4 / 6)


def _model() -> ir.Model:
    rng = np.random.default_rng(0)
    wc = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    wm = rng.standard_normal((6 * 4 * 4, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wm"], ["y"], name="fc"),
    ]
    return to_ir(make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 5])], [("wc", wc), ("wm", wm)]))


def _apply(model: ir.Model, **options: Any) -> PassContext:
    ctx = PassContext(options={"quantize_ternary": options})
    QuantizeTernary(ctx)(model)
    return ctx


@pytest.mark.parametrize(("mode", "storage"), [("ternary", "auto"), ("binary", "auto"), ("ternary", "int4")])
def test_ternary_model_matches_formula_and_ort(mode: str, storage: str) -> None:
    model = _model()
    w = {n: model.graph.initializers[n].const_value.numpy().copy() for n in ("wc", "wm")}  # type: ignore[union-attr]
    ctx = _apply(model, mode=mode, storage=storage)
    codes = model.graph.initializers["wc_q"].const_value  # type: ignore[union-attr]
    assert codes.dtype == (ir.DataType.INT2 if storage == "auto" else ir.DataType.INT4)  # auto: int2 for Conv
    assert model.graph.initializers["wm_q"].const_value.dtype == ir.DataType.INT4  # type: ignore[union-attr]
    assert model.graph.opset_imports[""] == (25 if storage == "auto" else 21)
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    out = run(model, {"x": x}, keep=["wc_dq", "wm_dq"])
    q, alpha = ternarize(w["wc"], 0, mode=mode)
    np.testing.assert_allclose(out["wc_dq"], q * alpha[:, None, None, None], rtol=1e-6)
    assert set(np.unique(np.sign(out["wm_dq"]))) <= ({-1.0, 0.0, 1.0} if mode == "ternary" else {-1.0, 1.0})
    # ORT fuses DQ(int4) -> MatMul into MatMulNBits computing with int8-quantized activations: ~1% of the range.
    got = ort_run(ir.to_proto(model), {"x": x})[0]
    assert np.max(np.abs(got - out["y"])) <= 0.01 * np.max(np.abs(out["y"]))
    rec = {r.node: r for r in ctx.layers}
    assert rec["fc"].weight_bits == (2 if mode == "ternary" else 1)
    assert rec["fc"].bytes_after == 96 * 5 // 2 + 5 * 4  # int4 codes + per-channel fp32 scales
    per_byte = 4 if storage == "auto" else 2  # packed codes, rounded up to whole bytes
    assert rec["conv"].bytes_after == -(-6 * 27 // per_byte) + 6 * 4
    assert rec["conv"].action == f"{mode} ({'int2' if storage == 'auto' else 'int4'})"


def test_ort_miscomputes_int2_matmul_weights() -> None:
    """Why storage="auto" keeps MatMul weights in int4: ORT's own int2 DQ -> MatMul fusion is wrong."""
    model = _model()
    _apply(model, storage="int2")
    x = np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)
    ref = run(model, {"x": x})["y"]
    got = ort_run(ir.to_proto(model), {"x": x})[0]
    assert np.max(np.abs(got - ref)) > 0.1 * np.max(np.abs(ref))  # if this fails, ORT was fixed: use int2


def test_skip_and_bad_mode() -> None:
    model = _model()
    ctx = _apply(model, skip=["conv"])
    assert [r.node for r in ctx.layers] == ["fc"]
    assert "wc" in model.graph.initializers
    with pytest.raises(PassError, match="mode must be"):
        _apply(_model(), mode="quaternary")
