"""com.microsoft::MatMulNBits: the reference kernel against ONNX Runtime, and pack_matmulnbits
exact against the blocked DequantizeLinear -> MatMul it replaces."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from backends.base import BuildOptions
from backends.onnx import OnnxBackend, to_standard_onnx
from compiler.ir.interpreter import run
from compiler.ir.ops.contrib import pack_codes, unpack_codes
from compiler.ir.shapes import infer_shapes
from passes.base import PassContext
from passes.pack_matmulnbits import PackMatMulNBits
from passes.quantize_int4 import QuantizeWeightOnly
from tests.helpers import make_model, ort_run, tensor, to_ir


def test_pack_unpack_roundtrip() -> None:
    codes = np.random.default_rng(0).integers(0, 16, (3, 5, 9))
    packed = pack_codes(codes, 4)
    assert packed.shape == (3, 5, 5) and packed.dtype == np.uint8
    assert packed[0, 0, 0] == codes[0, 0, 0] | (codes[0, 0, 1] << 4)  # low nibble first
    np.testing.assert_array_equal(unpack_codes(packed, 4, 9), codes)


CASES = [(64, 16, "none", False), (96, 32, "packed", True), (80, 32, "float", False), (128, 128, "packed", False)]


@pytest.mark.parametrize(("k", "block", "zero_points", "bias"), CASES)
def test_reference_kernel_matches_ort(k: int, block: int, zero_points: str, bias: bool) -> None:
    rng = np.random.default_rng(1)
    n, blocks = 24, -(-k // block)
    b = rng.integers(0, 256, (n, blocks, block // 2)).astype(np.uint8)
    scales = (rng.random(n * blocks) * 0.1 + 0.01).astype(np.float32)
    inits = [("B", b), ("scales", scales)]
    names = ["a", "B", "scales"]
    if zero_points == "packed":
        inits.append(("zp", rng.integers(0, 256, n * -(-blocks // 2)).astype(np.uint8)))
        names.append("zp")
    elif zero_points == "float":
        inits.append(("zp", rng.integers(0, 16, n * blocks).astype(np.float32)))
        names.append("zp")
    if bias:
        names += [""] * (5 - len(names)) + ["bias"]
        inits.append(("bias", rng.standard_normal(n).astype(np.float32)))
    node = helper.make_node(
        "MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block, name="mm"
    )
    proto = make_model(
        [node],
        [tensor("a", [2, 3, k])],
        [tensor("y", [2, 3, n])],
        inits,
        opset=21,
        extra_opsets={"com.microsoft": 1},
    )
    a = rng.standard_normal((2, 3, k)).astype(np.float32)
    model = to_ir(proto)
    ref = run(model, {"a": a})["y"]
    np.testing.assert_allclose(ort_run(proto, {"a": a})[0], ref, rtol=1e-4, atol=1e-4)
    infer_shapes(model)
    assert list(model.graph.node(0).outputs[0].shape or ()) == [2, 3, n]


def _quantized_mlp(symmetric: bool, k: int = 128, group: int = 32) -> ir.Model:
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((k, 64)).astype(np.float32)
    w2 = rng.standard_normal((64, 16)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    model = to_ir(make_model(nodes, [tensor("x", [1, 5, k])], [tensor("y", [1, 5, 16])], [("w1", w1), ("w2", w2)]))
    opts = {"quantize_weight_only": {"group_size": group, "symmetric": symmetric}}
    QuantizeWeightOnly(PassContext(options=opts))(model)
    infer_shapes(model)
    return model


@pytest.mark.parametrize(("symmetric", "k"), [(True, 128), (False, 128), (True, 80)])
def test_pack_is_exact_and_runs_in_ort(symmetric: bool, k: int) -> None:
    model = _quantized_mlp(symmetric, k=k)  # K = 80: groups of 32, 32 and a partial 16
    x = np.random.default_rng(3).standard_normal((1, 5, k)).astype(np.float32)
    before = run(model, {"x": x})["y"]
    p = PackMatMulNBits()
    assert p(model).modified
    ops = [n.op_type for n in model.graph]
    assert ops == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert model.opset_imports["com.microsoft"] == 1
    nbits = model.graph.node(0)
    assert len(nbits.inputs) == (3 if symmetric else 4)  # zero points only when not all 8
    assert nbits.inputs[1].const_value.shape == (64, -(-k // 32), 16)  # type: ignore[union-attr]
    np.testing.assert_array_equal(run(model, {"x": x})["y"], before)
    proto = to_standard_onnx(model)
    np.testing.assert_allclose(ort_run(proto, {"x": x})[0], before, rtol=1e-4, atol=1e-4)
    # The onnx target packs blocked int4 itself: same result from a model that still has DQ -> MatMul.
    unpacked = _quantized_mlp(symmetric, k=k)
    exe = OnnxBackend().build(unpacked, BuildOptions())
    np.testing.assert_allclose(exe.run({"x": x})[0], before, rtol=1e-4, atol=1e-4)


def test_rejections() -> None:
    model = _quantized_mlp(True, k=40, group=40)  # mm1: one block of 40; mm2: K=64 in blocks of 40 and 24
    p = PackMatMulNBits()
    p(model)
    assert [n.op_type for n in model.graph] == ["DequantizeLinear", "MatMul", "Relu", "DequantizeLinear", "MatMul"]
    reason = "block_size 40 is not a power of two >= 16"
    assert [(r.node, r.reason) for r in p.last_rejections] == [("mm1", reason), ("mm2", reason)]
    other = to_ir(
        make_model(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
            [tensor("x", [2, 4])],
            [tensor("y", [2, 3])],
            [("w", np.ones((4, 3), np.float32))],
        )
    )
    assert not PackMatMulNBits()(other).modified


def test_weight_only_int8_matmul_keeps_fp32_activations_in_ort() -> None:
    """ORT rewrites DequantizeLinear(int8 weight) -> MatMul into its own MatMulNBits and by default quantizes the
    activations for it; cacc's onnx backend asks for fp32 activations, so the layer computes what the model says."""
    rng = np.random.default_rng(5)
    q = rng.integers(-127, 128, (64, 16)).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    inits = [("wq", q), ("ws", rng.uniform(0.01, 0.03, 16).astype(np.float32))]
    model = to_ir(make_model(nodes, [tensor("x", [1, 5, 64])], [tensor("y", [1, 5, 16])], inits, opset=21))
    x = rng.standard_normal((1, 5, 64)).astype(np.float32)
    ref = run(model, {"x": x})["y"]
    got = OnnxBackend().build(model, BuildOptions()).run({"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
