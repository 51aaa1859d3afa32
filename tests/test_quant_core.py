"""The quantizer formula and the shared Q/DQ rewrites, checked against the reference interpreter and ORT."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from compiler.ir.interpreter import run
from passes._utils import Namer
from passes.quant import (
    dequantize,
    find_layers,
    insert_activation_qdq,
    quantize,
    quantize_weight,
    quantize_weight_in_place,
    scale_zero_point,
)
from tests.helpers import make_model, ort_run, tensor, to_ir


def test_symmetric_int8_worked_example() -> None:
    # The row [-1.0, -0.5, 0.0, 0.25, 0.8, 1.27]: max |x| = 1.27, S = 1.27 / 127 = 0.01.
    row = np.array([-1.0, -0.5, 0.0, 0.25, 0.8, 1.27], np.float32)
    p = scale_zero_point(row.min(), row.max(), 8, symmetric=True)
    assert p.scale == pytest.approx(0.01)
    assert int(p.zero_point) == 0
    np.testing.assert_array_equal(quantize(row, p), [-100, -50, 0, 25, 80, 127])
    np.testing.assert_allclose(dequantize(quantize(row, p), p), row, atol=0.005)
    # Values beyond the range clamp to [-128, 127] before rounding.
    np.testing.assert_array_equal(quantize(np.array([5.0, -5.0], np.float32), p), [127, -128])


def test_asymmetric_uint8_worked_example() -> None:
    # [0, 2.55]: S = 2.55 / 255 = 0.01, Z = 0; [-1.0, 1.55]: S = 0.01, Z = round(0 - (-1.0) / 0.01) = 100.
    row = np.array([-1.0, -0.5, 0.0, 0.25, 0.8, 1.55], np.float32)
    p = scale_zero_point(row.min(), row.max(), 8, symmetric=False)
    assert p.scale == pytest.approx(0.01)
    assert int(p.zero_point) == 100
    np.testing.assert_array_equal(quantize(row, p), [0, 50, 100, 125, 180, 255])
    assert dequantize(quantize(np.zeros(1, np.float32), p), p)[0] == 0.0  # zero is exact


def test_group_parameters_cover_their_groups() -> None:
    w = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)  # [K=10, N=3], groups of 4 along K
    q, p = quantize_weight(w, out_axis=1, reduce_axis=0, bits=4, group_size=4)
    assert p.scale.shape == (3, 3)  # ceil(10 / 4) groups x N
    assert q.min() >= -8 and q.max() <= 7
    for g in range(3):
        block = w[4 * g : 4 * g + 4]
        np.testing.assert_allclose(p.scale[g], np.abs(block).max(axis=0) / 7, rtol=1e-6)


def _mlp() -> ir.Model:
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w2 = rng.standard_normal((4, 16)).astype(np.float32)  # Gemm transB=1: [N, K]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="gemm", transB=1),
    ]
    return to_ir(make_model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 4])], [("w1", w1), ("w2", w2)]))


@pytest.mark.parametrize("group_size", [0, 4])
def test_weight_and_activation_rewrites_compute_the_fake_quantized_model(group_size: int) -> None:
    model = _mlp()
    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    layers = find_layers(model)
    assert [(ly.name, ly.out_axis, ly.reduce_axis) for ly in layers] == [("mm", 1, 0), ("gemm", 0, 1)]
    bits = 4 if group_size else 8
    expected_w = {}
    namer = Namer(model.graph)
    for layer in layers:
        w = layer.weight_array()
        q, p = quantize_weight(w, layer.out_axis, layer.reduce_axis, bits, group_size=group_size)
        expected_w[layer.name] = q
        quantize_weight_in_place(model.graph, layer, q, p, block_size=group_size, namer=namer)
    act = scale_zero_point(x.min(), x.max(), 8, symmetric=False)
    insert_activation_qdq(model.graph, model.graph.inputs[0], act, [layers[0].node], namer=namer)
    ops = [n.op_type for n in model.graph]
    weight_dq, q, dq = "DequantizeLinear", "QuantizeLinear", "DequantizeLinear"
    assert ops == [weight_dq, q, dq, "MatMul", "Relu", weight_dq, "Gemm"]
    assert sorted(model.graph.initializers) == sorted(
        ["w1_q", "w1_scale", "w2_q", "w2_scale", "x_scale", "x_zero_point"]
    )
    # Numerics: the rewritten model computes exactly the fake-quantized float model.
    y = run(model, {"x": x})["y"]
    xq = dequantize(quantize(x, act), act)
    w1 = model.graph.initializers["w1_q"].const_value.numpy().astype(np.float32)  # type: ignore[union-attr]
    assert np.array_equal(w1, expected_w["mm"].astype(np.float32))
    got_ref = ir.serde.serialize_model(model)
    np.testing.assert_allclose(ort_run(got_ref, {"x": x})[0], y, rtol=1e-5, atol=1e-5)
    h = np.maximum(xq @ run(model, {"x": x}, keep=["w1_dq"])["w1_dq"], 0)
    np.testing.assert_allclose(y, h @ run(model, {"x": x}, keep=["w2_dq"])["w2_dq"].T, rtol=1e-5, atol=1e-5)


def test_skip_patterns_and_non_constant_weights() -> None:
    model = _mlp()
    assert [ly.name for ly in find_layers(model, skip=["gem*"])] == ["mm"]
    assert [ly.name for ly in find_layers(model, op_types=["Gemm"])] == ["gemm"]
    model.graph.inputs.append(model.graph.initializers.pop("w1"))  # a graph input can change: not a weight
    assert [ly.name for ly in find_layers(model)] == ["gemm"]
