"""TVM lowering of quantized models: Q/DQ ops, integer GEMM pattern matching, fallbacks, ARM / CUDA builds."""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import pytest
import tvm
from onnx import TensorProto, helper

from backends.tvm.lowering.qmatmul import integer_kernels
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.runtime import build
from backends.tvm.schedules.qgemm import (
    LANES_ATTR,
    QKERNEL_ATTR,
    has_vnni,
    plan_qgemm,
    row_block_tiles,
    schedule_qgemm,
    u8s8_pairing,
)
from backends.tvm.schedules.quantize import QUANTIZE_KIND
from backends.tvm.target import host_target
from compiler.errors import BackendError
from compiler.ir import infer_shapes, run
from tests.helpers import arm_unavailable, make_model, tensor, to_ir

U8, I8, F = TensorProto.UINT8, TensorProto.INT8, TensorProto.FLOAT
#: The kernel choices below are the AVX2 ones (s16 where vpmaddubsw could saturate): pinned to an AVX2 CPU without
#: VNNI so that they hold on any x86 host with AVX2 (a VNNI host would take the u8s8 kernels for every weight)
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
#: An AVX-VNNI CPU (256-bit vpdpbusd), for the VNNI kernel choices
VNNI = tvm.target.Target({"kind": "llvm", "mcpu": "alderlake", "num-cores": 2})
#: An AVX-512 CPU with VNNI (16 fp32 lanes: channel blocks of 16)
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
#: ISA extensions LLVM may use for those targets: code built for a target runs here only if the host has all of
#: its ones (an AMD Zen 4 has AVX-512 VNNI but not the VEX-encoded AVX-VNNI of alderlake / sapphirerapids code)
_ISA = (
    "avx2", "fma", "avxvnni", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni", "avx512bf16",
    "avx512fp16", "avx512vbmi", "avx512vbmi2", "avx512ifma", "gfni", "vaes", "vpclmulqdq", "amx-tile",
)  # fmt: skip


def _host_runs(target: tvm.target.Target) -> bool:
    """Whether this host has every ISA extension of ``target`` that code built for it may use."""
    host = host_target()
    has = tvm.target.codegen.target_has_features
    return all(bool(has(f, host)) or not bool(has(f, target)) for f in _ISA)


HOST_RUNS_VNNI = _host_runs(VNNI)
HOST_RUNS_AVX512 = _host_runs(AVX512)
#: This host has AVX-512 VNNI (its own target takes 512-bit vpdpbusd where allowed)
HOST_HAS_AVX512_VNNI = bool(tvm.target.codegen.target_has_features("avx512vnni", host_target())) and has_vnni(
    host_target()
)


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> ir.Model:
    return infer_shapes(to_ir(make_model(nodes, inputs, outputs, inits, opset=21, extra_opsets={"cacc": 1})))


def _check(
    model: ir.Model, feeds: dict[str, np.ndarray], rtol: float = 1e-5, target: tvm.target.Target = AVX2
) -> list[np.ndarray]:
    """Build for ``target`` (AVX2; run here), compare every output with the reference interpreter; returns the
    outputs."""
    got = build(model, target, num_threads=2).run(feeds)
    ref = run(model, feeds)
    for value, g in zip(model.graph.outputs, got, strict=True):
        r = ref[value.name or ""]
        assert g.shape == r.shape and g.dtype == r.dtype, value.name
        if r.dtype.kind in "iub":
            np.testing.assert_array_equal(g, r, err_msg=value.name)
        else:
            np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * float(np.abs(r).max()), err_msg=value.name)
    return got


def _qkernels(model: ir.Model, target: tvm.target.Target = AVX2) -> list[str]:
    """The integer GEMM kinds (and conv packing prologues) in the module emitted for ``target``, one per kernel."""
    return [k for k in _all_qkernels(model, target) if k != QUANTIZE_KIND]


def _all_qkernels(model: ir.Model, target: tvm.target.Target = AVX2) -> list[str]:
    with target:
        mod = emit_relax(model)
    return sorted(str(f.attrs[QKERNEL_ATTR]) for _, f in mod.functions_items() if f.attrs and QKERNEL_ATTR in f.attrs)


# ---------------------------------------------------------------- Q / DQ / DynamicQuantizeLinear / MatMulInteger


@pytest.mark.parametrize("dtype", [U8, I8])
def test_quantize_dequantize_per_tensor_rounds_half_to_even(dtype: int) -> None:
    zp = np.array(3, np.uint8 if dtype == U8 else np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    model = _model(nodes, [tensor("x", [2, 8])], [tensor("q", [2, 8], dtype), tensor("y", [2, 8])],
                   [("s", np.array(0.5, np.float32)), ("z", zp)])  # fmt: skip
    # x / 0.5 hits .5 exactly (ties), and values beyond the range saturate
    x = np.array([[0.25, 0.75, 1.25, -0.25, -0.75, 2.25, 300.0, -300.0]] * 2, np.float32)
    x[1] += 0.1
    q, _ = _check(model, {"x": x})
    assert q[0, 0] == 3 and q[0, 1] == 5  # 0.5 -> 0, 1.5 -> 2 (+ zp 3)


@pytest.mark.parametrize("shape", [[3, 5, 7, 11], [2, 64, 9, 13], [1, 96, 20, 20]])
@pytest.mark.parametrize("dtype", [U8, I8])
def test_per_tensor_quantize_is_one_flat_kernel_exact_to_the_reference(shape: list[int], dtype: int) -> None:
    """Per-tensor QuantizeLinear with constant parameters runs as the flat CPU kernel (scalar steps, 8 lanes,
    32 lanes in parallel chunks by size) and matches the reference bit for bit, ties and saturation included."""
    zp = np.array(-5 if dtype == I8 else 131, np.uint8 if dtype == U8 else np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
    model = _model(nodes, [tensor("x", shape)], [tensor("q", shape, dtype)],
                   [("s", np.array(0.0625, np.float32)), ("z", zp)])  # fmt: skip
    assert _all_qkernels(model) == [QUANTIZE_KIND]
    rng = np.random.default_rng(len(shape) + dtype)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.reshape(-1)[::3] = (rng.integers(-300, 300, x.size)[::3] + 0.5) * np.float32(0.0625)  # exact ties
    (q,) = _check(model, {"x": x})
    info = np.iinfo(q.dtype)
    assert (q == info.min).any() and (q == info.max).any()


def test_quantize_dequantize_per_axis_and_blocked() -> None:
    rng = np.random.default_rng(0)
    s_axis = rng.uniform(0.01, 0.1, 4).astype(np.float32)
    z_axis = rng.integers(0, 20, 4).astype(np.uint8)
    s_block = rng.uniform(0.01, 0.1, (3, 2)).astype(np.float32)  # x [3, 8] blocked by 4 along axis 1
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["qa"], axis=0),
        helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["ya"], axis=0),
        helper.make_node("QuantizeLinear", ["x3", "sb"], ["qb"], axis=1, block_size=4, output_dtype=I8),
        helper.make_node("DequantizeLinear", ["qb", "sb"], ["yb"], axis=1, block_size=4),
    ]
    model = _model(
        nodes,
        [tensor("x", [4, 5]), tensor("x3", [3, 8])],
        [tensor("ya", [4, 5]), tensor("qb", [3, 8], I8), tensor("yb", [3, 8])],
        [("sa", s_axis), ("za", z_axis), ("sb", s_block)],
    )
    _check(
        model,
        {"x": rng.standard_normal((4, 5)).astype(np.float32), "x3": rng.standard_normal((3, 8)).astype(np.float32)},
    )


def test_dynamic_quantize_linear_and_matmul_integer() -> None:
    rng = np.random.default_rng(1)
    b = rng.integers(-128, 128, (6, 5)).astype(np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
        helper.make_node("MatMulInteger", ["q", "b", "z", "bz"], ["y"]),
    ]
    model = _model(
        nodes,
        [tensor("x", [3, 6])],
        [tensor("q", [3, 6], U8), tensor("s", [], F), tensor("z", [], U8), tensor("y", [3, 5], TensorProto.INT32)],
        [("b", b), ("bz", np.array(2, np.int8))],
    )
    _check(model, {"x": rng.standard_normal((3, 6)).astype(np.float32) * 3})
    _check(model, {"x": np.zeros((3, 6), np.float32)})  # scale 0: y = zp = 0
    _check(model, {"x": np.abs(rng.standard_normal((3, 6))).astype(np.float32)})  # range [0, max]


def test_runtime_quantize_to_int4_is_a_typed_error_naming_the_node() -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="to_int4", output_dtype=TensorProto.INT4)]
    model = _model(
        nodes, [tensor("x", [2, 4])], [tensor("q", [2, 4], TensorProto.INT4)], [("s", np.array(0.1, np.float32))]
    )
    with pytest.raises(BackendError, match="int4") as info:
        emit_relax(model)
    assert info.value.node == "to_int4"


# ---------------------------------------------------------------- integer GEMM pattern


def _weight_q(rng: np.random.Generator, k: int, n: int, amax: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.clip(np.rint(rng.standard_normal((k, n)) * amax / 3), -amax, amax).astype(np.int8)
    return w, rng.uniform(0.005, 0.02, n).astype(np.float32)


def _quant_mlp(amax: int, act_dtype: int = U8, m: int = 7, k: int = 37, h: int = 24, n: int = 10) -> ir.Model:
    """x -> Q/DQ -> MatMul(DQ w1) -> Relu -> Q/DQ -> Gemm(DQ w2, transB, bias) and -> FusedMatMul(DQ w3, Gelu)."""
    rng = np.random.default_rng(amax)
    w1, s1 = _weight_q(rng, k, h, amax)
    w2, s2 = _weight_q(rng, h, n, amax)
    w3, s3 = _weight_q(rng, h, n, amax)
    zdt = np.uint8 if act_dtype == U8 else np.int8
    z1, z2 = (np.array(v, zdt) for v in ((120, 3) if act_dtype == U8 else (0, 0)))
    nodes = [
        helper.make_node("DequantizeLinear", ["w1q", "s1"], ["w1"], axis=1),
        helper.make_node("DequantizeLinear", ["w2q", "s2"], ["w2"], axis=0),
        helper.make_node("DequantizeLinear", ["w3q", "s3"], ["w3"], axis=1),
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("MatMul", ["xd", "w1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("QuantizeLinear", ["h", "hs", "hz"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "hs", "hz"], ["hd"]),
        helper.make_node("Gemm", ["hd", "w2", "b2"], ["y"], transB=1, alpha=0.5),
        helper.make_node("FusedMatMul", ["hd", "w3", "b3"], ["z"], domain="cacc", activation="Gelu"),
    ]
    inits = [
        ("w1q", w1), ("s1", s1), ("w2q", np.ascontiguousarray(w2.T)), ("s2", s2), ("w3q", w3), ("s3", s3),
        ("xs", np.array(0.03, np.float32)), ("xz", z1), ("hs", np.array(0.05, np.float32)), ("hz", z2),
        ("b2", rng.standard_normal(n).astype(np.float32)), ("b3", rng.standard_normal(n).astype(np.float32)),
    ]  # fmt: skip
    outputs = [tensor("y", [m, n]), tensor("z", [m, n])]
    return _model(nodes, [tensor("x", [m, k])], outputs, inits)  # fmt: skip


@pytest.mark.parametrize(
    ("amax", "act_dtype", "kind"),
    [
        (63, U8, "u8s8"),  # 7-bit weights: vpmaddubsw pairs cannot saturate
        (127, U8, "s16"),  # full int8 weights: the int16 kernel where no exact u8s8 pairing exists
        (63, I8, "u8s8"),  # int8 activations shifted to uint8
    ],
)
def test_quantized_layers_run_as_integer_gemms(amax: int, act_dtype: int, kind: str) -> None:
    model = _quant_mlp(amax, act_dtype)
    kinds = _qkernels(model)
    assert len(kinds) == 3 and kind in kinds and set(kinds) <= {"u8s8", "s16"}
    x = np.random.default_rng(5).standard_normal((7, 37)).astype(np.float32) * 2
    _check(model, {"x": x}, rtol=2e-5)


@pytest.mark.parametrize(("tiles", "panels", "cores"), [(33, 5, 2), (33, 7, 2), (10, 12, 2), (131, 5, 2), (9, 3, 1)])
def test_row_blocks_are_whole_and_spread_the_parallel_loop_evenly(tiles: int, panels: int, cores: int) -> None:
    per = row_block_tiles(tiles, panels, 64, host_target(cores))
    work = tiles // per * panels
    assert tiles % per == 0 and per <= 64  # whole blocks, within the L2 budget
    assert -(-work // cores) * cores <= 1.05 * work  # no core idles for more than 5% of the loop
    if cores == 1:
        assert per == max(d for d in range(1, 65) if tiles % d == 0)  # one core: the largest blocks


def test_integer_gemm_split_into_row_blocks_matches_the_reference() -> None:
    # [64, 37] @ [37, 40] on 2 threads: 5 column panels, so the rows are split into blocks
    model = _quant_mlp(127, U8, m=64, h=40)
    plan = plan_qgemm(64, 37, 40, "s16")
    assert row_block_tiles(plan.mp // plan.mr, plan.np_ // plan.nb, 10**6, host_target(2)) < plan.mp // plan.mr
    x = np.random.default_rng(6).standard_normal((64, 37)).astype(np.float32) * 2
    _check(model, {"x": x}, rtol=2e-5)


def test_integer_and_dequantize_fallback_paths_agree() -> None:
    model = _quant_mlp(127)
    x = np.random.default_rng(6).standard_normal((7, 37)).astype(np.float32)
    with integer_kernels(False):
        assert _qkernels(model) == []
        fallback = build(model, AVX2, num_threads=2).run({"x": x})
    integer = build(model, AVX2, num_threads=2).run({"x": x})
    for f, i in zip(fallback, integer, strict=True):
        np.testing.assert_allclose(i, f, rtol=2e-5, atol=2e-5 * float(np.abs(f).max()))


@pytest.mark.parametrize("per_token", [False, True])
def test_dynamic_activations_per_tensor_and_per_token(per_token: bool) -> None:
    rng = np.random.default_rng(7)
    w, s = _weight_q(rng, 16, 12, 63)
    inits = [("wq", w), ("ws", s)]
    if per_token:  # scale [M, 1] from standard ops, QuantizeLinear / DequantizeLinear blocked over K
        nodes = [
            helper.make_node("ReduceMax", ["xa", "axes"], ["amax"], keepdims=1),
            helper.make_node("Div", ["amax", "c127"], ["xs"]),
            helper.make_node("Abs", ["x"], ["xa"]),
            helper.make_node("QuantizeLinear", ["x", "xs"], ["q"], axis=1, block_size=16, output_dtype=I8),
            helper.make_node("DequantizeLinear", ["q", "xs"], ["xd"], axis=1, block_size=16),
        ]
        nodes = [nodes[2], nodes[0], nodes[1], nodes[3], nodes[4]]
        inits += [("axes", np.array([1], np.int64)), ("c127", np.array(127, np.float32))]
    else:
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "xs", "xz"]),
            helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["xd"]),
        ]
    nodes += [
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
        helper.make_node("MatMul", ["xd", "w"], ["y"]),
    ]
    model = _model(nodes, [tensor("x", [5, 16])], [tensor("y", [5, 12])], inits)
    assert _qkernels(model) == ["u8s8"]
    _check(model, {"x": rng.standard_normal((5, 16)).astype(np.float32)}, rtol=2e-5)


def test_blocked_int4_weights_fall_back_to_dequantize_then_fp32() -> None:
    rng = np.random.default_rng(8)
    w = rng.integers(-8, 8, (16, 6)).astype(np.int8)
    from ml_dtypes import int4

    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=8),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = _model(nodes, [tensor("x", [3, 16])], [tensor("y", [3, 6])],
                   [("wq", w.astype(int4)), ("ws", rng.uniform(0.01, 0.1, (2, 6)).astype(np.float32))])  # fmt: skip
    assert _qkernels(model) == []
    _check(model, {"x": rng.standard_normal((3, 16)).astype(np.float32)})


def test_u8s8_pairing_is_exact_or_refused() -> None:
    rng = np.random.default_rng(9)
    w = np.clip(np.rint(rng.standard_normal((40, 16)) * 24), -127, 127).astype(np.int8)
    perm = u8s8_pairing(w)
    assert perm is not None and sorted(perm.tolist()) == list(range(40))
    padded = np.zeros((40, 16), np.int32)
    padded[:40] = w
    pw = padded[perm]
    a, b = pw[0::2], pw[1::2]
    assert (np.maximum(a, 0) + np.maximum(b, 0)).max() * 255 <= 32767
    assert (np.maximum(-a, 0) + np.maximum(-b, 0)).max() * 255 <= 32768
    # every row is 100 in the same column: no pair can be exact
    assert u8s8_pairing(np.full((8, 3), 100, np.int8)) is None


# ---------------------------------------------------------------- integer pointwise conv


def _quant_convs(batch: int, act_dtype: int, amax: int = 63) -> ir.Model:
    """x -> Q/DQ -> FusedConv 1x1 (DQ w per channel, bias, Clip 0..6) -> Q/DQ -> Conv 1x1 stride 2 and Conv 3x3."""
    rng = np.random.default_rng(batch * 10 + act_dtype)
    ci, c1, c2, h, w = 13, 20, 9, 5, 7
    w1 = np.clip(np.rint(rng.standard_normal((c1, ci, 1, 1)) * amax / 3), -amax, amax).astype(np.int8)
    w2 = np.clip(np.rint(rng.standard_normal((c2, c1, 1, 1)) * amax / 3), -amax, amax).astype(np.int8)
    w3 = np.clip(np.rint(rng.standard_normal((c2, c1, 3, 3)) * amax / 3), -amax, amax).astype(np.int8)
    if amax > 100:  # one output channel whose every channel pair saturates vpmaddubsw's int16 sums
        w1[0], w2[0] = 101, -101
    zdt = np.uint8 if act_dtype == U8 else np.int8
    z1, z2 = (np.array(v, zdt) for v in ((118, 0) if act_dtype == U8 else (-3, 0)))
    nodes = [
        helper.make_node("DequantizeLinear", ["w1q", "s1"], ["w1"], axis=0),
        helper.make_node("DequantizeLinear", ["w2q", "s2"], ["w2"], axis=0),
        helper.make_node("DequantizeLinear", ["w3q", "s3"], ["w3"], axis=0),
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("FusedConv", ["xd", "w1", "b1"], ["h"], domain="cacc", activation="Clip",
                         activation_params=[0.0, 6.0]),
        helper.make_node("QuantizeLinear", ["h", "hs", "hz"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "hs", "hz"], ["hd"]),
        helper.make_node("Conv", ["hd", "w2"], ["y"], strides=[2, 2]),
        helper.make_node("Conv", ["hd", "w3"], ["z"], pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    inits = [
        ("w1q", w1), ("s1", rng.uniform(0.005, 0.02, c1).astype(np.float32)),
        ("w2q", w2), ("s2", rng.uniform(0.005, 0.02, c2).astype(np.float32)),
        ("w3q", w3), ("s3", rng.uniform(0.005, 0.02, c2).astype(np.float32)),
        ("xs", np.array(0.03, np.float32)), ("xz", z1), ("hs", np.array(0.025, np.float32)), ("hz", z2),
        ("b1", rng.standard_normal(c1).astype(np.float32)),
    ]  # fmt: skip
    outputs = [tensor("h", [batch, c1, h, w]), tensor("y", [batch, c2, 3, 4]), tensor("z", [batch, c2, h, w])]
    return _model(nodes, [tensor("x", [batch, ci, h, w])], outputs, inits)


@pytest.mark.parametrize(("batch", "act_dtype"), [(1, U8), (1, I8), (2, I8)])
def test_quantized_pointwise_convs_run_as_integer_gemms(batch: int, act_dtype: int) -> None:
    model = _quant_convs(batch, act_dtype)
    kinds = _qkernels(model)
    assert [k for k in kinds if k != "pack"] == ["s8u8", "s8u8"]  # the two 1x1 convs; the 3x3 conv stays float
    assert kinds.count("pack") == (batch == 1)  # quantize fused with the packing (batch 1, stride 1)
    x = np.random.default_rng(12).standard_normal((batch, 13, 5, 7)).astype(np.float32) * 2
    h, _, _ = _check(model, {"x": x}, rtol=2e-5)
    assert h.min() >= 0.0 and h.max() <= 6.0 and (h == 6.0).any()  # the fused Clip ran


def _blocked_quant_chain(act_dtype: int, amax: int = 63, co: int = 24) -> ir.Model:
    """float 3x3 conv -> Q/DQ -> int8 FusedConv 1x1 (Clip) -> Q/DQ -> depthwise conv: channel-blocked all along
    (``co`` channels after the 1x1 conv)."""
    rng = np.random.default_rng(act_dtype)
    wq = np.clip(np.rint(rng.standard_normal((co, 16, 1, 1)) * amax / 2), -amax, amax).astype(np.int8)
    zdt = np.uint8 if act_dtype == U8 else np.int8
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"]),
        helper.make_node("DequantizeLinear", ["aq", "as", "az"], ["ad"]),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w1"], axis=0),
        helper.make_node("FusedConv", ["ad", "w1", "b1"], ["h"], domain="cacc", activation="Clip",
                         activation_params=[0.0, 6.0]),
        helper.make_node("QuantizeLinear", ["h", "hs"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "hs"], ["hd"]),
        helper.make_node("Conv", ["hd", "wd"], ["y"], group=co, pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    inits = [
        ("w0", rng.standard_normal((16, 3, 3, 3)).astype(np.float32)),
        ("as", np.array(0.04, np.float32)), ("az", np.array(128 if act_dtype == U8 else 3, zdt)),
        ("wq", wq), ("ws", rng.uniform(0.005, 0.02, co).astype(np.float32)),
        ("b1", rng.standard_normal(co).astype(np.float32)),
        ("hs", np.array(0.025, np.float32)),
        ("wd", rng.standard_normal((co, 1, 3, 3)).astype(np.float32)),
    ]  # fmt: skip
    outputs = [tensor("h", [1, co, 6, 9]), tensor("y", [1, co, 6, 9])]
    return _model(nodes, [tensor("x", [1, 3, 6, 9])], outputs, inits)


@pytest.mark.parametrize(
    ("act_dtype", "amax", "kind"), [(U8, 63, "u8s8"), (I8, 63, "u8s8"), (U8, 127, "s16"), (I8, 127, "s16")]
)
def test_quantized_pointwise_conv_on_channel_blocked_activations(act_dtype: int, amax: int, kind: str) -> None:
    """Between channel-blocked float convs the integer 1x1 conv reads and writes the blocked layout (a
    GEMM over pixels, no layout change), and matches the reference: u8s8 for 7-bit weights, s16 for
    full-range 8-bit weights (which ``vpmaddubsw`` could saturate). Its operand is quantized in one pass from
    the float blocked tensor."""
    model = _blocked_quant_chain(act_dtype, amax)
    wq = next(v for v in model.graph.initializers.values() if v.name == "wq").const_value.numpy()
    assert np.abs(wq).max() == amax
    with AVX2:
        script = emit_relax(model)["main"].script()
    assert f"cacc_qconv1x1_blocked_{kind}" in script and "cacc_depthwise_conv2d_nchwc" in script
    kinds = _all_qkernels(model)
    assert [k for k in kinds if k not in ("pack", QUANTIZE_KIND)] == ["blocked_operand", kind]
    # "a" is quantized straight into the GEMM's operand: the one flat quantize left is h's, before the float conv
    assert kinds.count(QUANTIZE_KIND) == 1
    x = np.random.default_rng(14).standard_normal((1, 3, 6, 9)).astype(np.float32)
    h, _ = _check(model, {"x": x}, rtol=2e-5)
    assert h.min() >= 0.0 and h.max() <= 6.0 and (h == 6.0).any()


@pytest.mark.parametrize("target", ["avx2", "vnni", "avx512"])
def test_blocked_integer_conv_keeps_8_channel_blocks_on_every_x86(target: str) -> None:
    """Channel-blocked convs use 8-channel blocks on every x86 CPU, AVX-512 ones included (whose other kernels take
    16 lanes): the integer 1x1 conv writes blocks of its 8-lane accumulator vectors, and EfficientNet's 24- and
    40-channel convs could not take 16-channel blocks. Bit-exact to the reference where this host can run it."""
    tgt, runs = {"avx2": (AVX2, True), "vnni": (VNNI, HOST_RUNS_VNNI), "avx512": (AVX512, HOST_RUNS_AVX512)}[target]
    model = _blocked_quant_chain(U8, 127, co=32)
    with tgt:
        script = emit_relax(model)["main"].script()
    kind = "s16" if target == "avx2" else "u8s8"  # full-range weights: vpdpbusd where the CPU has VNNI
    assert f"cacc_qconv1x1_blocked_{kind}" in script and "cacc_depthwise_conv2d_nchwc" in script
    assert "(1, 4, 6, 9, 8)" in script  # the 32 channels blocked as 4 x 8
    if runs:
        x = np.random.default_rng(16).standard_normal((1, 3, 6, 9)).astype(np.float32)
        _check(model, {"x": x}, rtol=2e-5, target=tgt)


def test_pointwise_conv_without_exact_pairing_stays_float() -> None:
    model = _quant_convs(1, U8, amax=127)
    assert _qkernels(model) == []
    _check(model, {"x": np.random.default_rng(13).standard_normal((1, 13, 5, 7)).astype(np.float32)}, rtol=2e-5)


# ---------------------------------------------------------------- VNNI (vpdpbusd)


def _asm(model: ir.Model, target: tvm.target.Target) -> str:
    """The x86 assembly of ``model`` built for ``target`` (compiled here whatever the host CPU)."""
    from backends.tvm.runtime import cpu_pipeline

    with target:
        mod = emit_relax(model)
    ex = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))
    return "\n".join(m.inspect_source("s") for m in ex.mod.imports if m.kind == "llvm")


@pytest.mark.parametrize(
    ("model", "kinds"),
    [
        (lambda: _quant_mlp(127), ["u8s8", "u8s8", "u8s8"]),  # full-range weights: no s16 kernel
        (lambda: _quant_convs(1, U8, amax=127), ["pack", "s8u8", "s8u8"]),  # no saturating pair keeps them float
        (lambda: _blocked_quant_chain(I8, 127), ["blocked_operand", "u8s8"]),
    ],
)
def test_vnni_targets_run_full_range_int8_weights_on_vpdpbusd(model: object, kinds: list[str]) -> None:
    """On a CPU with VNNI every int8 weight takes the byte kernels (``vpdpbusd`` sums four u8 x s8 products in
    int32: exact where ``vpmaddubsw`` saturates) and the code holds ``vpdpbusd``, no ``vpmaddubsw``; on a VNNI
    host the results match the reference interpreter."""
    m = model()  # type: ignore[operator]
    assert [k for k in _qkernels(m, VNNI) if k != QUANTIZE_KIND] == kinds
    asm = _asm(m, VNNI)
    assert "vpdpbusd" in asm and "vpmaddubsw" not in asm
    if HOST_RUNS_VNNI:
        x_shape = [int(d) for d in m.graph.inputs[0].shape]  # type: ignore[union-attr]
        x = np.random.default_rng(15).standard_normal(x_shape).astype(np.float32) * 2
        _check(m, {"x": x}, rtol=2e-5, target=VNNI)


#: An AMD Zen 4 (AVX-512 VNNI, one of WIDE_VNNI_CPUS): its u8s8 matmuls take 512-bit vpdpbusd
ZEN4 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})


def _u8s8_lanes(model: ir.Model, target: tvm.target.Target) -> list[int]:
    """The vector lanes of ``model``'s ``u8s8`` kernels emitted for ``target``."""
    with target:
        mod = emit_relax(model)
    return [
        int(f.attrs.get(LANES_ATTR, 8))
        for _, f in mod.functions_items()
        if f.attrs and f.attrs.get(QKERNEL_ATTR) == "u8s8"
    ]


def test_512_bit_vpdpbusd_only_on_the_wide_vnni_cpus() -> None:
    """The matmuls of the CPUs in WIDE_VNNI_CPUS take 16-lane vectors (512-bit vpdpbusd on zmm registers); other
    VNNI CPUs keep 8 lanes, and so does the blocked 1x1 conv everywhere (its output's 8-channel blocks)."""
    model = _quant_mlp(127)
    assert _u8s8_lanes(model, ZEN4) == [16, 16, 16]
    assert _u8s8_lanes(model, VNNI) == [8, 8, 8] and _u8s8_lanes(model, AVX512) == [8, 8, 8]
    assert re.search(r"vpdpbusd\s+[^\n]*%zmm", _asm(model, ZEN4))
    assert not re.search(r"vpdpbusd\s+[^\n]*%zmm", _asm(model, AVX512))
    assert _u8s8_lanes(_blocked_quant_chain(I8, 127), ZEN4) == [8]


@pytest.mark.skipif(not HOST_HAS_AVX512_VNNI, reason="needs a host with AVX-512 VNNI")
def test_512_bit_vpdpbusd_kernels_match_the_256_bit_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run here (this host's CPU counted as a wide one): the 16-lane kernels match the reference interpreter and
    the 8-lane kernels bit for bit, on shapes whose columns are not a multiple of 16 (padded panels)."""
    from backends.tvm.schedules import qgemm as qgemm_module

    host = host_target(2)
    model = _quant_mlp(127, m=13, k=70, h=40, n=24)
    x = np.random.default_rng(21).standard_normal((13, 70)).astype(np.float32) * 2
    monkeypatch.setattr(qgemm_module, "WIDE_VNNI_CPUS", (str(host.attrs["mcpu"]),))
    assert _u8s8_lanes(model, host) == [16, 16, 16]
    wide = _check(model, {"x": x}, rtol=2e-5, target=host)
    monkeypatch.setattr(qgemm_module, "WIDE_VNNI_CPUS", ())
    assert _u8s8_lanes(model, host) == [8, 8, 8]
    narrow = build(model, host, num_threads=2).run({"x": x})
    for w, n in zip(wide, narrow, strict=True):
        np.testing.assert_array_equal(w, n)


def test_512_bit_kernel_refuses_a_target_without_avx512_vnni() -> None:
    with ZEN4:
        mod = emit_relax(_quant_mlp(127))
    funcs = [f for _, f in mod.functions_items() if f.attrs and f.attrs.get(LANES_ATTR) is not None]
    assert funcs
    with pytest.raises(BackendError, match="AVX-512 VNNI"):
        schedule_qgemm(funcs[0], VNNI)  # AVX-VNNI: 256-bit vpdpbusd only
    schedule_qgemm(funcs[0], ZEN4)


def test_kernel_emitted_for_vnni_refuses_a_target_without_it() -> None:
    """A byte kernel whose weight pairs rely on vpdpbusd, scheduled for an AVX2 CPU without VNNI, is a typed
    error (vpmaddubsw would saturate and silently change the result), not wrong output."""
    with VNNI:
        mod = emit_relax(_quant_mlp(127))
    funcs = [f for _, f in mod.functions_items() if f.attrs and f.attrs.get(QKERNEL_ATTR) == "u8s8"]
    assert funcs
    with pytest.raises(BackendError, match="VNNI"):
        schedule_qgemm(funcs[0], AVX2)
    schedule_qgemm(funcs[0], VNNI)  # its own target schedules it


# ---------------------------------------------------------------- other targets


def test_generic_x86_target_runs_the_integer_kernels_without_avx2_intrinsics() -> None:
    import tvm

    model = _quant_mlp(63)
    x = np.random.default_rng(10).standard_normal((7, 37)).astype(np.float32)
    got = build(model, tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}), num_threads=2).run({"x": x})
    ref = run(model, {"x": x})
    for g, name in zip(got, ("y", "z"), strict=True):
        np.testing.assert_allclose(g, ref[name], rtol=2e-5, atol=2e-5 * float(np.abs(ref[name]).max()))


def test_quantized_mlp_builds_for_cuda() -> None:
    from backends.tvm.cuda import compile_cuda

    lib = compile_cuda(_quant_mlp(127))
    assert any("qgemm" in name for name in lib.kernel_names())
    conv = compile_cuda(_quant_convs(1, U8))
    assert any("qconv_pack" in name for name in conv.kernel_names())


def test_generic_x86_target_runs_the_integer_pointwise_conv() -> None:
    import tvm

    model = _quant_convs(1, U8)
    x = np.random.default_rng(14).standard_normal((1, 13, 5, 7)).astype(np.float32)
    got = build(model, tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}), num_threads=2).run({"x": x})
    ref = run(model, {"x": x})
    for g, name in zip(got, ("h", "y", "z"), strict=True):
        np.testing.assert_allclose(g, ref[name], rtol=2e-5, atol=2e-5 * float(np.abs(ref[name]).max()))


def test_quantized_mlp_matches_reference_on_arm_under_qemu() -> None:
    why = arm_unavailable()
    if why is not None:
        pytest.skip(f"ARM toolchain not set up: {why}")
    from backends.base import BuildOptions
    from backends.tvm.arm import ArmBackend

    model = _quant_mlp(63)
    x = np.random.default_rng(11).standard_normal((7, 37)).astype(np.float32)
    got = ArmBackend().build(model, BuildOptions(num_threads=2)).run({"x": x})
    ref = run(model, {"x": x})
    for g, name in zip(got, ("y", "z"), strict=True):
        np.testing.assert_allclose(g, ref[name], rtol=2e-5, atol=2e-5 * float(np.abs(ref[name]).max()))
