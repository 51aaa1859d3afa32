"""TVM backend: cacc::FusedConv / cacc::FusedMatMul against numpy formulas."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from compiler.ir.ops.activations import FUSABLE
from tests.test_tvm_helpers import make_model, rand, run_ort, run_tvm, to_ir

CASES = [("", []), ("Relu", []), ("Clip", [0.0, 6.0]), ("LeakyRelu", [0.1]), ("HardSwish", []), ("Gelu", [])]


def _act_attrs(act: str, params: list[float]) -> dict[str, Any]:
    # onnx.helper cannot type an empty list attribute: leave activation_params out when empty
    return {"activation": act, **({"activation_params": params} if params else {})}


def _act(x: np.ndarray, name: str, params: list[float]) -> np.ndarray:
    return x if not name else FUSABLE[name](x, params)


@pytest.mark.parametrize(("act", "params"), CASES)
def test_fused_matmul(act: str, params: list[float]) -> None:
    a, b, bias = rand(2, 3, 8, seed=1), rand(8, 5, seed=2), rand(5, seed=3)
    node = helper.make_node("FusedMatMul", ["a", "b", "bias"], ["y"], domain="cacc", **_act_attrs(act, params))
    model = to_ir(make_model([node], {"a": a}, ["y"], {"b": b, "bias": bias}))
    (got,) = run_tvm(model, {"a": a})
    np.testing.assert_allclose(got, _act(np.matmul(a, b) + bias, act, params), atol=1e-5, rtol=1e-5)


def test_fused_matmul_without_bias() -> None:
    a, b = rand(4, 6, seed=4), rand(6, 3, seed=5)
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="cacc", activation="Sigmoid")
    (got,) = run_tvm(to_ir(make_model([node], {"a": a, "b": b}, ["y"])), {"a": a, "b": b})
    np.testing.assert_allclose(got, FUSABLE["Sigmoid"](a @ b, []), atol=1e-6)


@pytest.mark.parametrize(("act", "params"), CASES[:4])
def test_fused_conv(act: str, params: list[float]) -> None:
    x, w, b = rand(1, 4, 7, 7, seed=6), rand(6, 2, 3, 3, seed=7), rand(6, seed=8)
    conv_attrs: dict[str, Any] = {"pads": [1, 0, 1, 2], "strides": [2, 1], "group": 2}
    fused = helper.make_node(
        "FusedConv", ["x", "w", "b"], ["y"], domain="cacc", **_act_attrs(act, params), **conv_attrs
    )
    (got,) = run_tvm(to_ir(make_model([fused], {"x": x}, ["y"], {"w": w, "b": b})), {"x": x})
    # reference: onnxruntime's Conv, then the numpy activation that defines the fused op
    (conv,) = run_ort(
        make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv_attrs)], {"x": x}, ["y"], {"w": w, "b": b}),
        {"x": x},
    )
    np.testing.assert_allclose(got, _act(conv, act, params), atol=1e-5, rtol=1e-5)
