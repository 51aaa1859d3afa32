"""The analytical layer cost model: ordering properties, shapes read from nodes, and the fitted
correction's JSON round trip."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from compiler import cost
from compiler.cost import (
    TARGETS,
    CostCorrection,
    LayerShape,
    Measurement,
    integer_kernel_pays_off,
    layer_cost,
    layer_shape,
    with_int8_throughput,
)
from compiler.errors import CompilerError
from compiler.ir.shapes import infer_shapes
from tests.helpers import make_model, tensor, to_ir

CPU_TARGETS = ("x86", "arm", "onnx")
MINILM_FFN = LayerShape.gemm(128, 384, 1536)
DEPTHWISE = LayerShape.conv(1, 32, 32, (112, 112), (3, 3), groups=32)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bigger_layers_cost_more(target: str) -> None:
    for w, a in [(None, None), (8, 8), (4, None)]:
        base = layer_cost(LayerShape.gemm(64, 256, 256), w, a, target)
        for bigger in [LayerShape.gemm(512, 256, 256), LayerShape.gemm(64, 2048, 256), LayerShape.gemm(64, 256, 2048)]:
            assert layer_cost(bigger, w, a, target) > base
        small = LayerShape.conv(1, 32, 64, (14, 14), (3, 3))
        large = LayerShape.conv(1, 32, 64, (56, 56), (3, 3))
        assert layer_cost(large, w, a, target) > layer_cost(small, w, a, target)


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_int8_pays_off_for_big_gemms_and_weight_bound_gemv(target: str) -> None:
    assert layer_cost(MINILM_FFN, 8, 8, target) < layer_cost(MINILM_FFN, None, None, target)
    ok, reason = integer_kernel_pays_off(MINILM_FFN, target)
    assert ok and "w8a8 est." in reason
    gemv = LayerShape.gemm(1, 384, 1536)  # reading the weight dominates: fewer weight bytes win
    assert layer_cost(gemv, 8, 8, target) < layer_cost(gemv, None, None, target)
    assert layer_cost(gemv, 4, None, target) < layer_cost(gemv, 8, None, target) < layer_cost(gemv, None, None, target)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_depthwise_and_tiny_layers_stay_in_float(target: str) -> None:
    ok, reason = integer_kernel_pays_off(DEPTHWISE, target)
    assert not ok and "depthwise" in reason and f"on {target}" in reason
    ok, reason = integer_kernel_pays_off(LayerShape.gemm(2, 8, 4), target)
    assert not ok and "overhead dominates" in reason


def test_spatial_convs_without_an_integer_kernel_stay_in_float() -> None:
    """cacc's x86 / arm integer kernels cover GEMMs and 1x1 convs: a 3x3 conv would run dequantized and only
    pay the quantize step, so it stays in float there; ORT has QLinearConv for it, and 1x1 convs pay off."""
    conv3 = LayerShape.conv(1, 64, 128, (28, 28), (3, 3))
    conv1 = LayerShape.conv(1, 64, 128, (28, 28), (1, 1))
    for target in ("x86", "arm"):
        ok, reason = integer_kernel_pays_off(conv3, target)
        assert not ok and "no integer kernel for a 9-tap conv" in reason, reason
        assert layer_cost(conv3, 8, 8, target) > layer_cost(conv3, None, None, target)
        assert integer_kernel_pays_off(conv1, target, weight_bits=7)[0]
    assert integer_kernel_pays_off(conv3, "onnx")[0]


def test_faster_int8_kernels_make_more_layers_pay_off() -> None:
    pointwise = LayerShape.conv(1, 192, 32, (28, 28), (1, 1))
    slow = with_int8_throughput("x86", 50.0)
    fast = with_int8_throughput("x86", 400.0)
    assert layer_cost(pointwise, 7, 8, fast) < layer_cost(pointwise, 7, 8, slow)
    assert not integer_kernel_pays_off(MINILM_FFN, slow, weight_bits=7)[0]
    assert integer_kernel_pays_off(MINILM_FFN, fast, weight_bits=7)[0]


def test_full_range_8bit_weights_cost_the_slower_kernel_only_where_the_target_has_one() -> None:
    """x86 AVX2 runs 7-bit weights on vpmaddubsw and full-range 8-bit ones on the s16 kernel (lower
    throughput, an int16 activation copy); ORT's cost does not depend on the weight range."""
    x86 = TARGETS["x86"]  # the AVX2 table (a VNNI host's "x86" costs differ, see below)
    assert x86.int8_full_gops is not None and x86.int8_full_gops < x86.int8_gops
    assert layer_cost(MINILM_FFN, 8, 8, x86) > layer_cost(MINILM_FFN, 7, 8, x86)
    assert layer_cost(MINILM_FFN, 8, 8, "onnx") == layer_cost(MINILM_FFN, 7, 8, "onnx")
    assert "w7a8 est." in integer_kernel_pays_off(MINILM_FFN, x86, weight_bits=7)[1]


@pytest.mark.parametrize("vnni", [False, True])
def test_x86_costs_follow_the_hosts_vnni(monkeypatch: pytest.MonkeyPatch, vnni: bool) -> None:
    """On a VNNI CPU (vpdpbusd, exact for any weight) the x86 target's int8 kernels are faster and full-range
    weights cost what 7-bit ones do; without VNNI the AVX2 table applies."""
    monkeypatch.setattr(cost, "host_has_vnni", lambda: vnni)
    costs = cost.host_costs("x86")
    assert (costs == TARGETS["x86"]) is not vnni
    full, seven = layer_cost(MINILM_FFN, 8, 8, "x86"), layer_cost(MINILM_FFN, 7, 8, "x86")
    assert (full == seven) is vnni and full >= seven
    if vnni:
        assert costs.int8_full_gops is None and costs.int8_gops > TARGETS["x86"].int8_gops
        assert layer_cost(MINILM_FFN, 8, 8, "x86") < layer_cost(MINILM_FFN, 8, 8, TARGETS["x86"])


def test_targets_without_a_model_and_unknown_shapes() -> None:
    assert integer_kernel_pays_off(DEPTHWISE, "reference") == (True, "no speed model for target 'reference'")
    assert integer_kernel_pays_off(DEPTHWISE, None)[0]
    with pytest.raises(CompilerError, match="no cost model for target 'tpu'"):
        layer_cost(MINILM_FFN, None, None, "tpu")
    node = ir.Node("", "MatMul", [ir.Value(name="a"), ir.Value(name="b")], num_outputs=1)
    assert layer_shape(node) is None
    assert integer_kernel_pays_off(node, "x86") == (True, "input shapes unknown, no cost estimate")
    with pytest.raises(CompilerError, match="run shape inference first"):
        layer_cost(node, 8, 8, "x86")


def _conv_model() -> ir.Model:
    rng = np.random.default_rng(0)
    inits: list[np.ndarray | tuple[str, np.ndarray]] = [
        ("w_stem", rng.standard_normal((32, 3, 3, 3)).astype(np.float32)),
        ("w_dw", rng.standard_normal((32, 1, 5, 5)).astype(np.float32)),
        ("w_pw", rng.standard_normal((16, 32, 1, 1)).astype(np.float32)),
        ("w_fc", rng.standard_normal((10, 16)).astype(np.float32)),
        ("w_mm", rng.standard_normal((16, 24)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["a"], name="stem", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_dw"], ["b"], name="dw", group=32, pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["b", "w_pw"], ["c"], name="pw"),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "w_mm"], ["m"], name="mm"),
        helper.make_node("ReduceMean", ["c"], ["p"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["p", "w_fc"], ["y"], name="fc", transB=1),
    ]
    outputs = [tensor("y", [2, 10]), tensor("m", [2, 16, 16, 24])]
    model = to_ir(make_model(nodes, [tensor("x", [2, 3, 32, 32])], outputs, inits, opset=17))
    infer_shapes(model)
    return model


def test_layer_shapes_from_nodes() -> None:
    nodes = {n.name: n for n in _conv_model().graph}
    assert layer_shape(nodes["stem"]) == LayerShape.conv(2, 3, 32, (16, 16), (3, 3), in_hw=(32, 32))
    dw = layer_shape(nodes["dw"])
    assert dw == LayerShape.conv(2, 32, 32, (16, 16), (5, 5), groups=32)
    assert dw is not None and dw.kind == "depthwise" and dw.flops == 2 * 2 * 16 * 16 * 32 * 25
    pw = layer_shape(nodes["pw"])
    assert pw is not None and pw.kind == "conv" and pw.flops == 2 * 2 * 16 * 16 * 32 * 16
    assert layer_shape(nodes["mm"]) == LayerShape.gemm(2 * 16 * 16, 16, 24)  # batch dims fold into m
    assert layer_shape(nodes["fc"]) == LayerShape.gemm(2, 16, 10)  # transB
    # Every layer's estimate is positive and finite on every target.
    for name in ("stem", "dw", "pw", "mm", "fc"):
        for target in TARGETS:
            assert 0 < layer_cost(nodes[name], 8, 8, target) < math.inf


def _synthetic(target: str) -> list[Measurement]:
    """'Measured' times: the analytical model off by kind-dependent factors plus a little noise."""
    rng = np.random.default_rng(0)
    out = []
    for m in (1, 16, 128, 512):
        for k, n in ((64, 64), (384, 384), (384, 1536), (1024, 256)):
            shape = LayerShape.gemm(m, k, n)
            for w, a, factor in ((None, None, 1.3), (8, 8, 2.5), (4, None, 0.8)):
                t = layer_cost(shape, w, a, target) * factor * math.exp(rng.normal(0, 0.02))
                out.append(Measurement(shape, w, a, t))
    return out


@pytest.mark.parametrize("kind", ["least_squares", "xgboost"])
def test_fitted_correction_improves_estimates_and_round_trips_json(kind: str, tmp_path: object) -> None:
    if kind == "xgboost":
        pytest.importorskip("xgboost")
    data = _synthetic("x86")
    train, test = data[::2], data[1::2]
    corr = CostCorrection.fit(train, "x86", kind=kind)  # type: ignore[arg-type]

    def rmse(c: CostCorrection | None) -> float:
        errs = [
            math.log(layer_cost(m.shape, m.weight_bits, m.activation_bits, "x86", correction=c) / m.seconds)
            for m in test
        ]
        return math.sqrt(sum(e * e for e in errs) / len(errs))

    assert rmse(corr) < 0.5 * rmse(None)
    assert corr.samples == len(train) and corr.fit_rmse_log < 0.3
    again = CostCorrection.from_json(corr.to_json())
    assert again == corr and '"_booster"' not in corr.to_json()
    path = tmp_path / "corr.json"  # type: ignore[operator]
    corr.save(path)
    loaded = CostCorrection.load(path)
    for m in test[:5]:
        assert layer_cost(m.shape, m.weight_bits, m.activation_bits, "x86", correction=loaded) == pytest.approx(
            layer_cost(m.shape, m.weight_bits, m.activation_bits, "x86", correction=corr), rel=1e-9
        )
    with pytest.raises(CompilerError, match="at least 2 measurements"):
        CostCorrection.fit(train[:1], "x86")


def test_quantize_pass_costs_its_measured_rate_where_known() -> None:
    """x86 times the activation quantize pass at its kernel's measured rate, other targets as a 5-byte stream."""
    shape = LayerShape.conv(1, 480, 80, (14, 14), (1, 1))
    x86 = TARGETS["x86"]
    assert x86.quantize_gelems is not None
    slower = replace(x86, quantize_gelems=x86.quantize_gelems / 10)
    quantize_time = shape.activation_elems / (x86.quantize_gelems * 1e9)
    extra = layer_cost(shape, 8, 8, slower) - layer_cost(shape, 8, 8, x86)
    assert extra == pytest.approx(9 * quantize_time)
    assert layer_cost(shape, None, None, slower) == layer_cost(shape, None, None, x86)  # fp32 has no such pass
