"""fold_batchnorm, fuse_bias_activation and decompose_cacc_ops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.ir.ops.registry import attr
from passes.batchnorm_folding import FoldBatchNormPass
from passes.decompose import DecomposeCaccOpsPass
from passes.fusion import FuseBiasActivationPass
from tests.test_passes_common import assert_same_numerics, feeds_for, make_model, ops, snapshot

F = np.float32


def _arr(*shape: int, seed: int = 1, positive: bool = False) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal(shape).astype(F)
    return np.abs(a) + F(0.5) if positive else a


def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {
        "scale": _arr(c, seed=2),
        "bnb": _arr(c, seed=3),
        "mean": _arr(c, seed=4),
        "var": _arr(c, seed=5, positive=True),
    }


def _bn(x: str, y: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, "scale", "bnb", "mean", "var"], [y], epsilon=1e-3)


# ----------------------------------------------------------------------------- fold_batchnorm


@pytest.mark.parametrize(
    ("op", "wshape", "group", "bias"),
    [
        ("Conv", (4, 3, 3, 3), 1, True),
        ("Conv", (4, 1, 3, 3), 2, False),  # grouped, 2 in / 2 out channels per group
        ("ConvTranspose", (2, 2, 3, 3), 2, True),  # weight [C, M/group, k, k]: 4 output channels
    ],
)
def test_fold_batchnorm_into_conv(op: str, wshape: tuple[int, ...], group: int, bias: bool) -> None:
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    model = make_model(
        [helper.make_node(op, inputs, ["c"], group=group, pads=[1, 1, 1, 1]), _bn("c", "y")],
        {"x": (F, [1, 3 if group == 1 else 2, 5, 5])},
        ["y"],
        {"w": _arr(*wshape), "b": _arr(4, seed=9), **_bn_params(4)},
    )
    before = snapshot(model)
    assert FoldBatchNormPass()(model).modified
    assert ops(model) == {op: 1}
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert_same_numerics(before, model, feeds_for(model))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_batchnorm_into_gemm(trans_b: int) -> None:
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "c0"], ["g"], transB=trans_b, alpha=0.5, beta=2.0), _bn("g", "y")],
        {"x": (F, [3, 5])},
        ["y"],
        {"w": _arr(4, 5) if trans_b else _arr(5, 4), "c0": _arr(4, seed=7), **_bn_params(4)},
    )
    before = snapshot(model)
    assert FoldBatchNormPass()(model).modified
    assert ops(model) == {"Gemm": 1}
    assert_same_numerics(before, model, feeds_for(model))


@pytest.mark.parametrize("with_add", [True, False])
def test_fold_batchnorm_into_matmul(with_add: bool) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"])]
    if with_add:
        nodes.append(helper.make_node("Add", ["bias", "m"], ["a"]))
    nodes.append(_bn("a" if with_add else "m", "y"))
    model = make_model(nodes, {"x": (F, [3, 5])}, ["y"], {"w": _arr(5, 4), "bias": _arr(4, seed=8), **_bn_params(4)})
    before = snapshot(model)
    assert FoldBatchNormPass()(model).modified
    assert ops(model) == {"MatMul": 1, "Add": 1}
    assert_same_numerics(before, model, feeds_for(model))


def test_batchnorm_after_conv_with_two_users_is_not_folded() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            _bn("c", "y"),
            helper.make_node("Relu", ["c"], ["z"]),
        ],
        {"x": (F, [1, 3, 4, 4])},
        ["y", "z"],
        {"w": _arr(4, 3, 1, 1), **_bn_params(4)},
    )
    p = FoldBatchNormPass()
    assert not p(model).modified
    assert ops(model)["BatchNormalization"] == 1
    assert any("'c' has 2 users" in r.reason for r in p.last_rejections)


# ----------------------------------------------------------------------------- fuse_bias_activation


def _activation_nodes(kind: str, x: str, y: str) -> list[onnx.NodeProto]:
    if kind == "Silu":
        return [helper.make_node("Sigmoid", [x], ["sig"]), helper.make_node("Mul", ["sig", x], [y])]
    if kind == "Clip":
        return [helper.make_node("Clip", [x, "lo", "hi"], [y])]
    if kind == "ClipMax":
        return [helper.make_node("Clip", [x, "", "hi"], [y])]
    if kind == "GeluTanh":
        return [helper.make_node("Gelu", [x], [y], approximate="tanh")]
    if kind == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=0.1)]
    if kind == "HardSigmoid":
        return [helper.make_node("HardSigmoid", [x], [y], alpha=0.3, beta=0.4)]
    return [helper.make_node(kind, [x], [y])]


def _matmul_add() -> list[onnx.NodeProto]:
    return [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["a"])]


ACTIVATIONS = ["Relu", "Clip", "ClipMax", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu"]
ACTIVATIONS += ["GeluTanh", "Silu"]
_CLIP = {"lo": np.array(0.0, F), "hi": np.array(6.0, F)}


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_fuse_matmul_bias_activation(kind: str) -> None:
    model = make_model(
        [*_matmul_add(), *_activation_nodes(kind, "a", "y")],
        {"x": (F, [2, 3, 5])},
        ["y"],
        {"w": _arr(5, 4), "bias": _arr(1, 4, seed=3), **_CLIP},
    )
    before = snapshot(model)
    p = FuseBiasActivationPass()
    assert p(model).modified
    assert ops(model) == {"cacc::FusedMatMul": 1}
    (node,) = list(model.graph)
    expected = {"ClipMax": "Clip"}.get(kind, kind)
    assert attr(node, "activation") == expected
    assert model.opset_imports["cacc"] == 1
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert list(model.graph.outputs[0].shape or []) == [2, 3, 4]
    assert_same_numerics(before, model, feeds_for(model))


@pytest.mark.parametrize("with_bias", [True, False])
def test_fuse_conv_bias_activation(with_bias: bool) -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"] if with_bias else ["x", "w"], ["c"], group=2),
            helper.make_node("Add", ["cb", "c"], ["a"]),
            helper.make_node("Clip", ["a", "lo", "hi"], ["y"]),
        ],
        {"x": (F, [1, 4, 5, 5])},
        ["y"],
        {"w": _arr(6, 2, 3, 3), "b": _arr(6, seed=4), "cb": _arr(6, 1, 1, seed=5) * 3, **_CLIP},
    )
    before = snapshot(model)
    assert FuseBiasActivationPass()(model).modified
    assert ops(model) == {"cacc::FusedConv": 1}
    (node,) = list(model.graph)
    assert attr(node, "activation") == "Clip" and attr(node, "group") == 2
    assert_same_numerics(before, model, feeds_for(model))


def test_fuse_gemm_trans_b_activation() -> None:
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "c0"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])],
        {"x": (F, [3, 5])},
        ["y"],
        {"w": _arr(4, 5), "c0": _arr(4, seed=2)},
    )
    before = snapshot(model)
    assert FuseBiasActivationPass()(model).modified
    assert ops(model) == {"cacc::FusedMatMul": 1}
    assert_same_numerics(before, model, feeds_for(model))


def test_second_user_blocks_fusion_and_is_reported() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["y"]),
            helper.make_node("Sigmoid", ["c"], ["z"]),
            helper.make_node("MatMul", ["v", "w2"], ["m"]),
            helper.make_node("Add", ["m", "bias"], ["a"]),
            helper.make_node("Tanh", ["a"], ["t"]),
        ],
        {"x": (F, [1, 3, 4, 4]), "v": (F, [2, 5])},
        ["y", "z", "a", "t"],
        {"w": _arr(4, 3, 1, 1), "w2": _arr(5, 4), "bias": _arr(4, seed=6)},
    )
    before = snapshot(model)
    p = FuseBiasActivationPass()
    p(model)
    # the Conv is blocked; the MatMul fuses its bias but not the Tanh, because 'a' is a graph output
    assert ops(model) == {"Conv": 1, "Relu": 1, "Sigmoid": 1, "cacc::FusedMatMul": 1, "Tanh": 1}
    reasons = [str(r) for r in p.last_rejections]
    assert any("'c' has 2 users" in r for r in reasons), reasons
    assert any("'a' is a graph output" in r for r in reasons), reasons
    assert [v.name for v in model.graph.outputs] == ["y", "z", "a", "t"]
    assert_same_numerics(before, model, feeds_for(model))


def test_decompose_restores_standard_ops() -> None:
    model = make_model(
        [*_matmul_add(), *_activation_nodes("Silu", "a", "y")],
        {"x": (F, [2, 5])},
        ["y"],
        {"w": _arr(5, 4), "bias": _arr(4, seed=3)},
    )
    before = snapshot(model)
    FuseBiasActivationPass()(model)
    assert DecomposeCaccOpsPass()(model).modified
    assert ops(model) == {"MatMul": 1, "Add": 1, "Sigmoid": 1, "Mul": 1}
    assert "cacc" not in model.opset_imports
    assert_same_numerics(before, model, feeds_for(model))


def test_fuse_quantized_matmul_bias_activation_keeps_the_dequantized_weight() -> None:
    """A quantized layer's MatMul (weight = DequantizeLinear of an int8 constant) fuses its bias and activation
    like a float one, with the DequantizeLinear left in front of it; decomposing restores the standard ops."""
    q = np.random.default_rng(4).integers(-127, 128, (5, 4)).astype(np.int8)
    model = make_model(
        [
            helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
            *_matmul_add(),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        {"x": (F, [2, 3, 5])},
        ["y"],
        {"wq": q, "ws": np.linspace(0.01, 0.04, 4).astype(F), "bias": _arr(4, seed=3)},
    )
    before = snapshot(model)
    assert FuseBiasActivationPass()(model).modified
    assert ops(model) == {"DequantizeLinear": 1, "cacc::FusedMatMul": 1}
    fused = next(n for n in model.graph if n.op_type == "FusedMatMul")
    assert fused.inputs[1] is not None and fused.inputs[1].name == "w" and attr(fused, "activation") == "Relu"
    assert_same_numerics(before, model, feeds_for(model))
    assert DecomposeCaccOpsPass()(model).modified
    assert ops(model) == {"DequantizeLinear": 1, "MatMul": 1, "Add": 1, "Relu": 1}
    assert_same_numerics(before, model, feeds_for(model))


def test_decomposed_quantized_matmul_keeps_ort_integer_kernels(tmp_path) -> None:
    """After fusion and decomposition a quantized MatMul's bias is stored at the output's rank, so ONNX Runtime's
    QDQ fusion still makes an integer kernel of DQ -> MatMul -> Add (a 1-D bias lets its MatMul + Add -> Gemm
    fusion run first, and the Gemm computes in fp32)."""
    import onnxruntime as ort

    from compiler.ir import infer_shapes

    rng = np.random.default_rng(6)
    inits = {"xs": np.array(0.05, F), "xz": np.array(128, np.uint8), "ws": np.full(8, 0.02, F)}
    inits |= {"wq": rng.integers(-127, 128, (16, 8)).astype(np.int8), "bias": _arr(8, seed=7)}
    model = make_model(
        [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
            helper.make_node("MatMul", ["xd", "w"], ["m"]),
            helper.make_node("Add", ["m", "bias"], ["y"]),
        ],
        {"x": (F, [1, 6, 16])},
        ["y"],
        inits,
    )
    before = snapshot(model)
    FuseBiasActivationPass()(model)
    assert ops(model)["cacc::FusedMatMul"] == 1
    DecomposeCaccOpsPass()(model)
    infer_shapes(model)
    add = next(n for n in model.graph if n.op_type == "Add")
    assert add.inputs[1] is not None and list(add.inputs[1].shape or []) == [1, 1, 8]
    assert "bias" not in model.graph.initializers  # the 1-D original, replaced
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(snapshot(model), so, providers=["CPUExecutionProvider"])
    optimized = {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    assert "Gemm" not in optimized and "MatMul" not in optimized, optimized
    assert_same_numerics(before, model, feeds_for(model))
