"""Bias correction and GPTQ rounding for int8 weights: conv patches against the reference Conv, output
error reductions against round-to-nearest on synthetic layers, pass wiring and option errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quant.bias_correction import bias_sites, correct_biases, float_channel_means
from passes.quant.conv_gptq import conv_patches, gptq_weight
from passes.quant.layers import find_layers, quantize_weight_in_place
from passes.quant.scheme import dequantize, quantize_weight
from passes.quantize_int8 import QuantizeInt8Pass
from tests.helpers import make_model, tensor, to_ir


def _conv_model(w: np.ndarray, b: np.ndarray, x_shape: list[int], **attrs: object) -> ir.Model:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    return to_ir(make_model([node], [tensor("x", x_shape)], [tensor("y", None)], [("w", w), ("b", b)]))


@pytest.mark.parametrize(
    ("ci", "co", "kernel", "attrs"),
    [
        (6, 4, (3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}),
        (6, 6, (3, 3), {"pads": [1, 1, 1, 1], "group": 6}),  # depthwise
        (8, 4, (1, 1), {"group": 2, "strides": [2, 2]}),
    ],
)
def test_conv_patches_reproduce_the_conv(ci: int, co: int, kernel: tuple[int, int], attrs: dict) -> None:
    rng = np.random.default_rng(0)
    group = int(attrs.get("group", 1))
    w = rng.standard_normal((co, ci // group, *kernel)).astype(np.float32)
    x = rng.standard_normal((2, ci, 9, 10)).astype(np.float32)
    model = _conv_model(w, np.zeros(co, np.float32), [2, ci, 9, 10], **attrs)
    y = run(model, {"x": x})["y"]  # [N, Co, Ho, Wo]
    node = next(iter(model.graph))
    patches = conv_patches(x, node, w.shape)  # [G, N*P, K]
    per = co // group
    for g in range(group):
        wg = w[g * per : (g + 1) * per].reshape(per, -1)
        got = (patches[g] @ wg.T.astype(np.float64)).reshape(2, -1, per)
        want = y[:, g * per : (g + 1) * per].reshape(2, per, -1).transpose(0, 2, 1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _cancelling_depthwise(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A depthwise 3x3 whose taps nearly cancel (like BN-folded mobile convs): large weights, small sums."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 1, 3, 3)) * 4.0
    w -= w.mean(axis=(2, 3), keepdims=True) * 0.97
    return w.astype(np.float32), rng.standard_normal(16).astype(np.float32) * 0.1


def _inputs(n: int, seed: int, c: int = 16) -> list[dict[str, np.ndarray]]:
    base = np.random.default_rng(100).uniform(0.5, 2.0, (1, c, 1, 1)).astype(np.float32)  # nonzero channel means
    rng = np.random.default_rng(seed)
    return [{"x": (base + 0.2 * rng.standard_normal((1, c, 12, 12))).astype(np.float32)} for _ in range(n)]


def _quantize_all(model: ir.Model, bits: int, weights: dict | None = None) -> None:
    for layer in find_layers(model):
        if weights and layer.name in weights:
            q, p = weights[layer.name]
        else:
            q, p = quantize_weight(layer.weight_array(), layer.out_axis, layer.reduce_axis, bits)
        quantize_weight_in_place(model.graph, layer, q, p)


def _mean_shift_and_error(ref: ir.Model, model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    diffs = np.stack([run(model, f)["y"] - run(ref, f)["y"] for f in feeds])
    return float(np.abs(diffs.mean(axis=(0, 1, 3, 4))).mean()), float(np.sqrt(np.mean(diffs**2)))


def test_bias_correction_removes_the_mean_output_shift() -> None:
    w, b = _cancelling_depthwise()
    float_model = _conv_model(w, b, [1, 16, 12, 12], pads=[1, 1, 1, 1], group=16)
    model = _conv_model(w, b, [1, 16, 12, 12], pads=[1, 1, 1, 1], group=16)
    calib, held_out = _inputs(16, 1), _inputs(16, 2)
    layers = find_layers(model)
    sites = bias_sites(layers)
    means = float_channel_means(model, sites, calib)
    _quantize_all(model, bits=4)  # coarse weights: a visible shift
    shift_before, err_before = _mean_shift_and_error(float_model, model, held_out)
    shifts = correct_biases(model, sites, means, calib, min_positions=1)
    shift_after, err_after = _mean_shift_and_error(float_model, model, held_out)
    assert set(shifts) == {"conv"} and shifts["conv"] > 0
    assert shift_after < 0.3 * shift_before, (shift_before, shift_after)
    assert err_after < err_before
    # The correction lives in the Conv's bias: the weights are still the quantized ones.
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.inputs[1].producer().op_type == "DequantizeLinear"  # type: ignore[union-attr]
    bias = conv.inputs[2].const_value.numpy()  # type: ignore[union-attr]
    assert not np.allclose(bias, b)


def test_bias_correction_skips_layers_with_too_few_positions() -> None:
    w, b = _cancelling_depthwise()
    model = _conv_model(w, b, [1, 16, 12, 12], pads=[1, 1, 1, 1], group=16)
    calib = _inputs(2, 1)
    sites = bias_sites(find_layers(model))
    means = float_channel_means(model, sites, calib)
    _quantize_all(model, bits=4)
    assert correct_biases(model, sites, means, calib, min_positions=2 * 144 + 1) == {}
    with pytest.raises(PassError, match="at least one calibration sample"):
        correct_biases(model, sites, means, [])


@pytest.mark.parametrize("bits", [4, 7])
def test_gptq_conv_rounding_beats_round_to_nearest(bits: int) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    model = _conv_model(w, np.zeros(8, np.float32), [1, 6, 12, 12], pads=[1, 1, 1, 1])
    calib, held_out = _inputs(8, 4, c=6), _inputs(8, 5, c=6)
    layer = find_layers(model)[0]
    node = layer.node
    x = np.concatenate([f["x"] for f in calib])
    patches = conv_patches(x, node, w.shape)
    h = 2 * np.einsum("gpk,gpl->gkl", patches, patches) / patches.shape[1]
    q_g, p_g = gptq_weight(layer, h, bits)
    q_r, p_r = quantize_weight(w, 0, 1, bits)
    assert q_g.shape == w.shape and np.abs(q_g).max() <= 2 ** (bits - 1)
    np.testing.assert_array_equal(p_g.scale.reshape(-1), p_r.scale.reshape(-1))  # same grid, other rounding
    xs = np.concatenate([f["x"] for f in held_out])
    held = conv_patches(xs, node, w.shape)[0]
    ref = held @ w.reshape(8, -1).T.astype(np.float64)

    def err(q: np.ndarray, p) -> float:
        return float(np.linalg.norm(held @ dequantize(q, p).reshape(8, -1).T - ref))

    assert err(q_g, p_g) < 0.9 * err(q_r, p_r)


def test_pass_options_wire_gptq_and_bias_correction() -> None:
    w, b = _cancelling_depthwise()
    rng = np.random.default_rng(9)
    w2 = (rng.standard_normal((8, 16, 1, 1)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], name="dw", pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="pw"),
    ]
    inits = [("w", w), ("b", b), ("w2", w2)]
    proto = make_model(nodes, [tensor("x", [1, 16, 12, 12])], [tensor("y", None)], inits)
    calib = _inputs(8, 1)
    errors = {}
    for rounding, correct in (("nearest", False), ("gptq", True)):
        model = to_ir(proto)
        options = {"weight_rounding": rounding, "bias_correction": correct, "cost_check": False}
        options["min_weight_elements"] = 1
        ctx = PassContext(options={"quantize_int8": options}, calibration=calib, target="reference")
        QuantizeInt8Pass(ctx)(model)
        records = {r.node: r for r in ctx.layers}
        assert set(records) == {"dw", "pw"}
        if correct:
            assert "GPTQ" in records["dw"].action and "bias corrected" in records["dw"].note, records["dw"]
            pw = next(n for n in model.graph if n.name == "pw")
            assert pw.inputs[2] is not None  # a bias was created for the bias-less conv
        float_model = to_ir(proto)
        held = _inputs(8, 2)
        errors[rounding] = np.sqrt(np.mean([(run(model, f)["y"] - run(float_model, f)["y"]) ** 2 for f in held]))
    assert errors["gptq"] < errors["nearest"], errors


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight_rounding": "adaround"}, "unknown weight_rounding 'adaround'; known: nearest, gptq"),
        ({"gptq_damp": 0.0}, "gptq_damp must be > 0"),
        ({"bias_correction_min_positions": 0}, "bias_correction_min_positions must be >= 1"),
        ({"guard_scope": "int8"}, "guard_scope must be one of all, weight_only, got 'int8'"),
    ],
)
def test_option_errors(options: dict, message: str) -> None:
    model = to_ir(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])], [tensor("y", [1, 4])]))
    ctx = PassContext(options={"quantize_int8": options}, calibration=[{"x": np.ones((1, 4), np.float32)}])
    with pytest.raises(PassError, match=message):
        QuantizeInt8Pass(ctx)(model)


def test_onnx_target_quantizes_float_convs_that_ort_would_quantize_per_tensor() -> None:
    """A depthwise conv between two quantized pointwise convs: the cost model keeps it in float, but its input is
    dequantized, so ORT's WeightBiasQuantization would give it a per-tensor weight; the pass quantizes it itself
    on the onnx target (per-channel) and says why; on x86 the float conv stays float."""
    rng = np.random.default_rng(0)
    c, s = 64, 28
    pw = (rng.standard_normal((c, c, 1, 1)) * 0.2).astype(np.float32)
    dw = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "pw"], ["a"], name="pw1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "dw"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "pw"], ["y"], name="pw2"),
    ]
    proto = make_model(nodes, [tensor("x", [1, c, s, s])], [tensor("y", [1, c, s, s])], [("pw", pw), ("dw", dw)])
    calib = [{"x": rng.standard_normal((1, c, s, s)).astype(np.float32)} for _ in range(2)]
    records = {}
    for target, kept_weights in (("onnx", "fp32"), ("x86", "fp32"), ("onnx", "int8"), ("x86", "int8")):
        ctx = PassContext(calibration=calib, target=target, options={"quantize_int8": {"kept_weights": kept_weights}})
        QuantizeInt8Pass(ctx)(to_ir(proto))
        records[target, kept_weights] = {r.node: r for r in ctx.layers}
    for kept_weights in ("fp32", "int8"):  # with kept_weights="int8" too, where it would otherwise be weight-only
        assert records["onnx", kept_weights]["pw1"].weight_bits == 8
        dw_onnx = records["onnx", kept_weights]["dw"]
        assert (dw_onnx.weight_bits, dw_onnx.activation_bits) == (8, 8), dw_onnx
        assert "WeightBiasQuantization" in dw_onnx.note, dw_onnx
    assert records["x86", "fp32"]["dw"].action == "kept fp32" and "depthwise" in records["x86", "fp32"]["dw"].note
    assert records["x86", "int8"]["dw"].action.startswith("int8 weight-only"), records["x86", "int8"]["dw"]
