"""TVM backend: Conv, pooling, normalisation, Softmax, MatMul, Gemm and a small CNN against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.test_tvm_helpers import check_against_ort, rand

ATOL = 1e-4


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"strides": [2, 2], "pads": [0, 1, 1, 0], "dilations": [1, 2]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"group": 4, "pads": [1, 1, 1, 1]},  # depthwise
    ],
)
def test_conv2d(attrs: dict) -> None:
    groups = attrs.get("group", 1)
    w = rand(4, 4 // groups, 3, 3, seed=1)
    b = rand(4, seed=2)
    check_against_ort(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)],
        {"x": rand(1, 4, 9, 8)},
        initializers={"w": w, "b": b},
        atol=ATOL,
    )


def test_conv1d_runtime_weight_no_bias() -> None:
    check_against_ort(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 1])],
        {"x": rand(2, 3, 10), "w": rand(5, 3, 4, seed=3)},
        atol=ATOL,
    )


def test_pools() -> None:
    x = rand(1, 3, 9, 9)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["x"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["x"], ["api"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
        helper.make_node("GlobalMaxPool", ["x"], ["gmp"]),
    ]
    check_against_ort(nodes, {"x": x}, outputs=("mp", "ap", "api", "gap", "gmp"), atol=ATOL)


def test_batch_norm_constant_and_runtime_stats() -> None:
    c = 3
    stats = {
        "g": rand(c, seed=1),
        "b": rand(c, seed=2),
        "m": rand(c, seed=3),
        "v": rand(c, seed=4, low=0.5, high=2.0),
    }
    nodes = [
        helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3),
        helper.make_node("BatchNormalization", ["x", "g", "b", "m", "vr"], ["z"], epsilon=1e-3),
    ]
    feeds = {"x": rand(2, c, 4, 5), "vr": rand(c, seed=5, low=0.5, high=2.0)}
    check_against_ort(nodes, feeds, outputs=("y", "z"), initializers=stats, atol=ATOL)


def test_layer_norm_softmax() -> None:
    x = rand(2, 5, 8, low=-4, high=4)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "s", "b"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("LayerNormalization", ["x", "s2"], ["ln2"], axis=1),
        helper.make_node("Softmax", ["x"], ["sm"], axis=1),
        helper.make_node("LogSoftmax", ["x"], ["lsm"]),
    ]
    inits = {"s": rand(8, seed=1), "b": rand(8, seed=2), "s2": rand(5, 8, seed=3)}
    check_against_ort(nodes, {"x": x}, outputs=("ln", "ln2", "sm", "lsm"), initializers=inits, atol=ATOL)


def test_last_axis_softmax_kernel_matches_numpy_with_masked_scores() -> None:
    """Last-axis (Log)Softmax runs as cacc's row kernel (polynomial exp); attention-style masked
    scores (-1e4) and large logits stay exact to fp32 rounding, with probabilities below the smallest normal
    float32 flushed to 0."""
    from backends.tvm import build, host_target
    from tests.test_tvm_helpers import make_model, to_ir

    x = rand(3, 4, 32, seed=7, low=-30.0, high=30.0)
    x[..., 20:] = -1e4  # masked positions
    x[:, :, 3] = x[..., :20].max(axis=-1) - 95.0  # unmasked, yet a probability below the smallest normal float32
    nodes = [helper.make_node("Softmax", ["x"], ["sm"], axis=-1), helper.make_node("LogSoftmax", ["x"], ["lsm"])]
    model = to_ir(make_model(nodes, {"x": x}, ["sm", "lsm"], {}))
    from backends.tvm.relax_emitter import emit_relax

    assert sum(gv.name_hint.startswith("cacc_softmax") for gv in emit_relax(model).get_global_vars()) == 2
    exe = build(model, host_target(2), num_threads=2)
    sm, lsm = exe.run({"x": x})
    shifted = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    log_ref = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(sm, np.exp(log_ref), rtol=4e-6, atol=1e-30)  # 8 or 16 partial sums
    np.testing.assert_allclose(lsm[..., :20], log_ref[..., :20], rtol=1e-6, atol=2e-6)
    assert (sm[..., 20:] == 0).all() and (lsm[..., 20:] < -9000).all()
    # no subnormal probabilities (a multiply with one costs ~100x on Intel CPUs): those of the reference are 0
    assert not ((sm != 0) & (np.abs(sm) < np.finfo(np.float32).tiny)).any()


def test_last_axis_layer_norm_kernel_matches_float64() -> None:
    """Last-axis LayerNormalization runs as cacc's row kernel (two-pass mean / variance): rows with a
    large common offset keep fp32 accuracy against a float64 reference."""
    from backends.tvm import build, host_target
    from backends.tvm.relax_emitter import emit_relax
    from tests.test_tvm_helpers import make_model, to_ir

    x = rand(2, 16, 64, seed=3) + np.float32(100.0)
    s, b = rand(64, seed=4), rand(64, seed=5)
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)]
    model = to_ir(make_model(nodes, {"x": x}, ["y"], {"s": s, "b": b}))
    assert any(gv.name_hint.startswith("cacc_layer_norm") for gv in emit_relax(model).get_global_vars())
    (y,) = build(model, host_target(2), num_threads=2).run({"x": x})
    x64 = x.astype(np.float64)
    mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5) * s + b, rtol=1e-4, atol=1e-4)


def test_matmul_broadcast_and_vector() -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["y"]),
        helper.make_node("MatMul", ["a", "v"], ["z"]),
    ]
    feeds = {"a": rand(2, 3, 4, 5, seed=1), "b": rand(3, 5, 6, seed=2)}
    check_against_ort(nodes, feeds, outputs=("y", "z"), initializers={"v": rand(5, seed=3)}, atol=ATOL)


@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "beta"), [(0, 1, 1.0, 1.0), (1, 0, 0.5, 2.0)])
def test_gemm(trans_a: int, trans_b: int, alpha: float, beta: float) -> None:
    a = rand(6, 4, seed=1) if trans_a else rand(4, 6, seed=1)
    w = rand(3, 6, seed=2) if trans_b else rand(6, 3, seed=2)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    check_against_ort([node], {"a": a}, initializers={"w": w, "c": rand(3, seed=3)}, atol=ATOL)


def test_gemm_transposed_weight_is_folded() -> None:
    """A constant transB weight is transposed at emit time: no permute_dims reaches Relax."""
    from backends.tvm import emit_relax
    from tests.test_tvm_helpers import make_model, to_ir

    node = helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)
    model = to_ir(make_model([node], {"a": rand(2, 6)}, ["y"], {"w": rand(3, 6)}))
    assert "permute_dims" not in emit_relax(model).script()


def test_small_cnn() -> None:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> Flatten -> Gemm -> Reshape."""
    inits = {
        "w1": rand(8, 3, 3, 3, seed=1) * 0.3,
        "b1": rand(8, seed=2),
        "w2": rand(16, 8, 3, 3, seed=3) * 0.2,
        "b2": rand(16, seed=4),
        "fc": rand(10, 16 * 4 * 4, seed=5) * 0.05,
        "fcb": rand(10, seed=6),
        "shape": np.array([2, 5, 2], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1),
        helper.make_node("Reshape", ["g", "shape"], ["y"]),
    ]
    check_against_ort(nodes, {"x": rand(2, 3, 16, 16)}, initializers=inits, atol=ATOL)
