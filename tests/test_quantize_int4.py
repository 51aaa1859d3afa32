"""quantize_weight_only: blocked int4/int3 weights (RTN, GPTQ, outliers), checked against the
reference interpreter, ONNX Runtime and the float model."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quantize_int4 import QuantizeWeightOnly, effective_group
from tests.helpers import make_model, ort_run, tensor, to_ir

K, H, N = 64, 96, 32


def _model(seed: int = 0) -> ir.Model:
    """x[4,K] -> MatMul(w1 [K,H]) -> Relu -> Gemm(w2 [N,H], transB) -> y, plus an embedding Gather."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((K, H)).astype(np.float32)
    w2 = rng.standard_normal((N, H)).astype(np.float32)
    table = rng.standard_normal((1024, K)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("Add", ["x", "e"], ["xe"], name="add"),
        helper.make_node("MatMul", ["xe", "w1"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="gemm", transB=1),
    ]
    inputs = [tensor("x", [4, K]), tensor("ids", [4], TensorProto.INT64)]
    return to_ir(make_model(nodes, inputs, [tensor("y", [4, N])], [("w1", w1), ("w2", w2), ("table", table)]))


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((4, K)).astype(np.float32), "ids": rng.integers(0, 1024, 4).astype(np.int64)}


def _quantize(model: ir.Model, calibration: list[dict[str, np.ndarray]] | None = None, **options: Any) -> PassContext:
    ctx = PassContext(options={"quantize_weight_only": options}, calibration=calibration or [])
    QuantizeWeightOnly(ctx)(model)
    return ctx


def _dequantized(model: ir.Model, feeds: dict[str, np.ndarray], value: str) -> np.ndarray:
    return run(model, feeds, keep=[value])[value]


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (3, True), (3, False)])
def test_rtn_blocked_weights_match_reference_and_ort(bits: int, symmetric: bool) -> None:
    model = _model()
    w1 = model.graph.initializers["w1"].const_value.numpy().copy()  # type: ignore[union-attr]
    feeds = _feeds(np.random.default_rng(1))
    ctx = _quantize(model, bits=bits, symmetric=symmetric, group_size=32)
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 3  # w1, w2, the embedding table
    q = model.graph.initializers["w1_q"].const_value  # type: ignore[union-attr]
    assert q.dtype == (ir.DataType.INT4 if symmetric else ir.DataType.UINT4)
    codes = q.numpy().astype(np.int64)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    assert (codes.min() >= lo and codes.max() <= hi and codes.min() == lo) or codes.max() == hi
    assert model.graph.initializers["w1_scale"].const_value.shape == (K // 32, H)  # type: ignore[union-attr]
    # The dequantized weight is close to the float weight (error at most half a step, per group).
    w1_dq = _dequantized(model, feeds, "w1_dq")
    step = np.repeat(model.graph.initializers["w1_scale"].const_value.numpy(), 32, axis=0)  # type: ignore[union-attr]
    assert np.all(np.abs(w1_dq - w1) <= 0.5 * step + 1e-6)
    ref = run(model, feeds)["y"]
    got = ort_run(ir.to_proto(model), feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    records = {r.node: r for r in ctx.layers}
    assert records["mm"].weight_bits == bits and records["mm"].action.startswith(f"int{bits} g32")
    assert records["mm"].bytes_before == K * H * 4
    zero_points = 0 if symmetric else (K // 32) * H // 2  # uint4, stored only when asymmetric
    assert records["mm"].bytes_after == K * H // 2 + (K // 32) * H * 4 + zero_points


def test_outliers_are_kept_exactly_in_fp16() -> None:
    model = _model()
    w1 = model.graph.initializers["w1"].const_value.numpy().copy()  # type: ignore[union-attr]
    w1[3, 5], w1[40, 7] = 25.0, -30.0
    model.graph.initializers["w1"].const_value = ir.tensor(w1)
    feeds = _feeds(np.random.default_rng(2))
    plain = _model()
    plain.graph.initializers["w1"].const_value = ir.tensor(w1)
    _quantize(plain, group_size=32, embeddings=False)
    ctx = _quantize(model, group_size=32, embeddings=False, outlier_fraction=0.01)
    assert "ScatterElements" in [n.op_type for n in model.graph]
    weight = next(n for n in model.graph if n.name == "mm").inputs[1]
    assert weight is not None and weight.name is not None
    w_eff = _dequantized(model, feeds, weight.name)
    assert w_eff[3, 5] == 25.0 and w_eff[40, 7] == -30.0
    assert np.linalg.norm(w_eff - w1) < 0.7 * np.linalg.norm(_dequantized(plain, feeds, "w1_dq") - w1)
    count = round(0.01 * K * H)
    record = next(r for r in ctx.layers if r.node == "mm")
    assert f"{count} fp16 outliers" in record.note
    assert record.bytes_after == K * H // 2 + (K // 32) * H * 4 + 6 * count + 24  # + the two Reshape shapes
    np.testing.assert_allclose(ort_run(ir.to_proto(model), feeds)[0], run(model, feeds)["y"], rtol=1e-4, atol=1e-4)


def test_gptq_pass_beats_rtn_on_correlated_calibration() -> None:
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((K, K)) / 4 + np.eye(K)
    scales = np.exp(rng.standard_normal(K))

    def sample() -> dict[str, np.ndarray]:
        x = (rng.standard_normal((4, K)) @ mix * scales).astype(np.float32)
        return {"x": x, "ids": rng.integers(0, 1024, 4).astype(np.int64)}

    calibration = [sample() for _ in range(64)]
    test = [sample() for _ in range(16)]
    reference = _model()
    errors = {}
    for method in ("rtn", "gptq"):
        model = _model()
        ctx = _quantize(model, calibration, method=method, act_order=True, group_size=32, embeddings=False)
        errors[method] = sum(float(np.linalg.norm(run(model, f)["y"] - run(reference, f)["y"])) for f in test)
        assert {r.node: r.action for r in ctx.layers}["mm"].endswith("gptq+act_order" if method == "gptq" else "rtn")
    assert errors["gptq"] < 0.85 * errors["rtn"], errors


def test_gptq_without_calibration_and_bad_options() -> None:
    with pytest.raises(PassError, match="calibration"):
        _quantize(_model(), method="gptq")
    with pytest.raises(PassError, match="bits must be 4 or 3"):
        _quantize(_model(), bits=5)
    with pytest.raises(PassError, match="unknown option"):
        _quantize(_model(), bitz=4)
    with pytest.raises(PassError, match="unknown key"):
        _quantize(_model(), overrides={"mm": {"bitz": 3}})


def test_skip_and_overrides() -> None:
    model = _model()
    ctx = _quantize(model, skip=["embed"], overrides={"gemm": {"bits": 3, "group_size": 16}, "m*": {"skip": True}})
    records = {r.node: r for r in ctx.layers}
    assert "embed" not in records
    assert records["mm"].action == "kept fp32" and records["mm"].weight_bits is None
    assert records["gemm"].action.startswith("int3 g16")
    assert "w1" in model.graph.initializers and "table" in model.graph.initializers


def test_effective_group() -> None:
    assert effective_group(64, 128) == 64  # small K: one group per row
    assert effective_group(384, 128) == 128
    assert effective_group(384 + 96, 128) == 128  # 3 x 128 + 96: 4 groups, as with 4 x 120
    assert effective_group(1176, 128) == 128  # 9 x 128 + 24: 10 groups, not 12 x 98


def test_conv_weights_rtn_match_ort() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 32, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    model = to_ir(make_model([node], [tensor("x", [1, 32, 6, 6])], [tensor("y", [1, 8, 6, 6])], [("w", w)]))
    ctx = _quantize(model, group_size=16)
    assert ctx.layers[0].action == "int4 g16 sym rtn"
    x = rng.standard_normal((1, 32, 6, 6)).astype(np.float32)
    ref = run(model, {"x": x})["y"]
    np.testing.assert_allclose(ort_run(ir.to_proto(model), {"x": x})[0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 4])  # a conv on one input channel; a depthwise conv
def test_small_conv_kernels_take_one_group_per_output_channel(groups: int) -> None:
    """Groups along 1 input channel would store a scale per weight (bigger than fp32): a kernel that fits one
    group gets one scale per output channel instead, and still matches the reference and ORT."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], group=groups)
    model = to_ir(make_model([node], [tensor("x", [1, groups, 6, 6])], [tensor("y", [1, 4, 6, 6])], [("w", w)]))
    ctx = _quantize(model)
    assert ctx.layers[0].action == "int4 g9 sym rtn"
    (scale,) = [v.const_value.numpy() for name, v in model.graph.initializers.items() if name.endswith("_scale")]
    assert scale.shape == (4,)
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear")
    assert dq.attributes["axis"].value == 0 and "block_size" not in dq.attributes
    x = rng.standard_normal((1, groups, 6, 6)).astype(np.float32)
    steps = _dequantized(model, {"x": x}, dq.outputs[0].name) / scale[:, None, None, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)
    assert steps.min() >= -8 and steps.max() <= 7
    assert np.all(np.abs(steps * scale[:, None, None, None] - w) <= scale[:, None, None, None] / 2 + 1e-7)
    ref = run(model, {"x": x})["y"]
    np.testing.assert_allclose(ort_run(ir.to_proto(model), {"x": x})[0], ref, rtol=1e-4, atol=1e-4)


def test_gemm_layer_becomes_a_matmul_packable_into_matmulnbits() -> None:
    """A ``Gemm`` (transB) layer is rewritten to ``MatMul`` on the transposed weight before quantization, as
    quantize_int8 does: its 4-bit weight is blocked along K ([K, N], axis 0), so the onnx target packs it into
    MatMulNBits, and the result is the Gemm's (reference and ORT agree)."""
    from compiler.ir.shapes import infer_shapes
    from passes.pack_matmulnbits import PackMatMulNBits

    model = _model()
    feeds = _feeds(np.random.default_rng(2))
    fp32 = run(model, feeds)["y"]
    _quantize(model, group_size=32, embeddings=False)
    assert not any(n.op_type == "Gemm" for n in model.graph)
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.outputs[0].uses()[0].node.name == "gemm")
    assert dq.inputs[0] is not None and dq.inputs[0].shape == ir.Shape([H, N])  # [K, N], blocked along K
    ref = run(model, feeds)["y"]
    # 4-bit groups of 32 on both layers: 13% relative error here (a mixed-up transpose would be ~140%)
    assert np.linalg.norm(ref - fp32) < 0.25 * np.linalg.norm(fp32)
    infer_shapes(model)
    assert PackMatMulNBits()(model).modified
    assert sum(n.op_type == "MatMulNBits" for n in model.graph) == 2  # mm and the former Gemm
    np.testing.assert_allclose(ort_run(ir.to_proto(model), feeds)[0], ref, rtol=1e-4, atol=1e-4)
