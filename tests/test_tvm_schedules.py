"""TVM backend: cacc's register-tiled kernels (dense, batch matmul, conv, depthwise conv).

Numerics against onnxruntime on sizes that do not divide the register tiles, and a structural
check that the kernels really are scheduled (parallel outer loop, vectorised stores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tvm
from onnx import helper

from backends.tvm.relax_emitter import emit_relax
from backends.tvm.schedule import safe_default_schedule
from backends.tvm.schedules import KERNEL_ATTR
from backends.tvm.schedules.tiling import conv_block_config, pick_tile, target_lanes
from backends.tvm.target import host_target
from compiler.ir.ops.activations import FUSABLE
from tests.test_tvm_helpers import check_against_ort, make_model, rand, run_tvm, to_ir


@pytest.mark.parametrize(("m", "k", "n"), [(1, 37, 19), (7, 33, 21), (1, 64, 1000), (30, 40, 50)])
def test_dense_constant_weight(m: int, k: int, n: int) -> None:
    a, w = rand(m, k, seed=1), rand(k, n, seed=2)
    check_against_ort([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": a}, initializers={"w": w}, atol=1e-4)


def test_dense_3d_input() -> None:
    a, w = rand(2, 5, 9, seed=3), rand(9, 11, seed=4)
    check_against_ort([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": a}, initializers={"w": w})


def test_gemm_trans_b_alpha_beta() -> None:
    a, w, c = rand(3, 10, seed=5), rand(13, 10, seed=6), rand(13, seed=7)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)
    check_against_ort([node], {"a": a}, initializers={"w": w, "c": c})


@pytest.mark.parametrize(("act", "params"), [("Gelu", []), ("Clip", [0.0, 6.0]), ("HardSwish", [])])
def test_fused_dense_epilogue_odd_sizes(act: str, params: list[float]) -> None:
    a, w, bias = rand(13, 17, seed=8), rand(17, 29, seed=9), rand(29, seed=10)
    attrs: dict[str, Any] = {"activation": act, **({"activation_params": params} if params else {})}
    node = helper.make_node("FusedMatMul", ["a", "w", "bias"], ["y"], domain="cacc", **attrs)
    (got,) = run_tvm(to_ir(make_model([node], {"a": a}, ["y"], {"w": w, "bias": bias})), {"a": a})
    np.testing.assert_allclose(got, FUSABLE[act](a @ w + bias, params), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("sa", "sb"), [((2, 3, 13, 7), (2, 3, 7, 11)), ((1, 1, 9), (1, 9, 1)), ((4, 5, 6), (4, 6, 17))]
)
def test_batch_matmul_runtime_operands(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    a, b = rand(*sa, seed=11), rand(*sb, seed=12)
    check_against_ort([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a, "b": b}, atol=1e-4)


CONVS = [
    # (x shape, w shape, attrs)
    ((1, 5, 9, 11), (7, 5, 1, 1), {}),  # pointwise
    ((1, 3, 17, 15), (10, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # strided stem
    ((2, 4, 8, 8), (6, 4, 3, 2), {"pads": [0, 1, 2, 0], "dilations": [2, 1]}),  # asymmetric, dilated, batch 2
    ((1, 6, 13, 13), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}),  # depthwise 3x3
    ((1, 8, 15, 14), (8, 1, 5, 5), {"group": 8, "strides": [2, 2], "pads": [2, 2, 2, 2]}),  # depthwise 5x5 s2
    ((1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "dilations": [2, 2]}),  # depthwise dilated, no padding
]


@pytest.mark.parametrize(("xs", "ws", "attrs"), CONVS)
def test_conv_kernels(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict) -> None:
    x, w, b = rand(*xs, seed=13), rand(*ws, seed=14), rand(ws[0], seed=15)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    check_against_ort([node], {"x": x}, initializers={"w": w, "b": b}, atol=1e-4)


@pytest.mark.parametrize(("xs", "co", "act"), [((2, 13, 19, 29), 11, ""), ((1, 9, 24, 24), 20, "Clip")])
def test_pointwise_conv_as_gemm(xs: tuple[int, ...], co: int, act: str) -> None:
    """1x1 convs on maps with rows not a multiple of two vectors run as a flattened-pixel GEMM."""
    x, w, b = rand(*xs, seed=24), rand(co, xs[1], 1, 1, seed=25), rand(co, seed=26)
    attrs: dict[str, Any] = {"activation": act, "activation_params": [0.0, 6.0]} if act else {}
    node = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], domain="cacc", **attrs)
    model = to_ir(make_model([node], {"x": x}, ["y"], {"w": w, "b": b}))
    names = {gv.name_hint for gv, _ in emit_relax(model).functions_items()}
    assert "cacc_pointwise_conv2d" in names, sorted(names)
    (got,) = run_tvm(model, {"x": x})
    (ref,) = check_against_ort(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"])], {"x": x}, ["c"], {"w": w, "b": b}, atol=1e-4
    )
    np.testing.assert_allclose(got, np.clip(ref, 0.0, 6.0) if act else ref, atol=1e-4)


def test_fused_conv_clip_epilogue() -> None:
    x, w, b = rand(1, 6, 10, 9, seed=16), rand(6, 1, 3, 3, seed=17), rand(6, seed=18)
    node = helper.make_node(
        "FusedConv", ["x", "w", "b"], ["y"], domain="cacc", group=6, pads=[1, 1, 1, 1],
        activation="Clip", activation_params=[0.0, 6.0],
    )  # fmt: skip
    (got,) = run_tvm(to_ir(make_model([node], {"x": x}, ["y"], {"w": w, "b": b})), {"x": x})
    ref = check_against_ort(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=6, pads=[1, 1, 1, 1])],
        {"x": x}, ["c"], {"w": w, "b": b}, atol=1e-4,
    )[0]  # fmt: skip
    np.testing.assert_allclose(got, np.clip(ref, 0.0, 6.0), atol=1e-4)


def test_kernels_are_scheduled() -> None:
    a, w = rand(20, 24, seed=19), rand(24, 40, seed=20)
    x, cw, dw = rand(1, 4, 12, 12, seed=21), rand(8, 4, 3, 3, seed=22), rand(8, 1, 3, 3, seed=23)
    pw, xdw = rand(6, 8, 1, 1, seed=27), rand(4, 1, 3, 3, seed=28)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["y"]),
        # a conv chain: channel-blocked kernels, but the last conv (6 channels, not whole vectors) is NCHW
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "dw"], ["d"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "pw"], ["z"]),
        # convs whose outputs no conv reads: NCHW kernels
        helper.make_node("Conv", ["x", "cw"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "xdw"], ["d2"], group=4, pads=[1, 1, 1, 1]),
    ]
    inits = {"w": w, "cw": cw, "dw": dw, "pw": pw, "xdw": xdw}
    model = to_ir(make_model(nodes, {"a": a, "x": x}, ["y", "z", "c2", "d2"], inits))
    target = host_target(1)
    mod = safe_default_schedule(target)(emit_relax(model))
    kernels = {
        gv.name_hint: f
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and KERNEL_ATTR in f.attrs
    }
    expected = {"cacc_dense", "cacc_conv2d", "cacc_depthwise_conv2d", "cacc_pointwise_conv2d"}
    expected |= {"cacc_conv2d_nchwc", "cacc_depthwise_conv2d_nchwc"}
    assert expected <= set(kernels), sorted(kernels)
    for name, func in kernels.items():
        assert "tirx.is_scheduled" in func.attrs, name
        script = func.script()
        for loop in ("T.parallel(", "T.vectorized(", "T.unroll("):
            assert loop in script, (name, loop)
    # the accumulator tile is a stack array, not a workspace allocation per parallel tile (the dense kernel
    # has no padding buffer, so its code allocates nothing)
    dense = tvm.IRModule({"main": kernels["cacc_dense"].with_attr("global_symbol", "main")})
    llvm_ir = tvm.tirx.build(dense, target=target).inspect_source("ll")
    assert "fmul" in llvm_ir or "fmuladd" in llvm_ir
    assert "TVMBackendAllocWorkspace" not in llvm_ir.replace("@__TVMBackendAllocWorkspace = ", "")


def test_tile_choice_fits_registers() -> None:
    cfg = target_lanes(host_target(1))
    for rows, cols in [(128, 384), (1, 1000), (32, 12544), (24, 196), (7, 7)]:
        mr, nb = pick_tile(rows, cols, cfg)
        assert nb % cfg.lanes == 0
        assert mr * nb // cfg.lanes <= cfg.registers - 3


class _ForceTile:
    """A tile source choosing each kernel's ``index``-th candidate (wrapping around); records the kernels."""

    def __init__(self, index: int) -> None:
        self.index, self.seen = index, {}  # type: ignore[var-annotated]

    def lookup(self, wl: Any) -> Any:
        self.seen[wl.key] = len(wl.candidates)
        return wl.candidates[self.index % len(wl.candidates)]


def test_every_candidate_tile_matches_the_reference() -> None:
    """Each kernel's candidate tiles (register tile, loop order, per-tile padding) compute the same values."""
    from backends.tvm.schedules.choice import tile_source
    from compiler.ir import run as reference

    a, w = rand(13, 24, seed=30), rand(24, 19, seed=31)
    b = rand(13, 7, seed=36)
    x = rand(1, 3, 15, 14, seed=32)
    cw, dw, dw2, pw = rand(8, 3, 3, 3, seed=33), rand(8, 1, 3, 3, seed=34), rand(8, 1, 5, 5, seed=37), rand(5, 8, 1, 1)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["y"]),
        helper.make_node("Transpose", ["b"], ["bt"]),
        helper.make_node("MatMul", ["bt", "a"], ["z"]),
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 0, 1, 1], strides=[2, 1]),
        helper.make_node("Conv", ["c", "dw"], ["d"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "dw2"], ["e"], group=8, pads=[2, 2, 2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["e", "pw"], ["p"]),
        # a channel-blocked 1x1 conv and residual add, read by a conv
        helper.make_node("Conv", ["d", "pw8"], ["q"]),
        helper.make_node("Add", ["q", "d"], ["r"]),
        helper.make_node("Conv", ["r", "pw"], ["p2"]),
        # convs whose outputs no conv reads (NCHW kernels)
        helper.make_node("Conv", ["x", "cw"], ["c2"], pads=[1, 0, 1, 1], strides=[2, 1]),
        helper.make_node("Conv", ["x", "dw3"], ["d2"], group=3, pads=[1, 1, 1, 1]),
    ]
    inits = {"w": w, "cw": cw, "dw": dw, "dw2": dw2, "pw": pw, "pw8": rand(8, 8, 1, 1, seed=38)}
    inits["dw3"] = rand(3, 1, 3, 3, seed=39)
    feeds = {"a": a, "b": b, "x": x}
    outputs = ["y", "z", "p", "p2", "c2", "d2"]
    model = to_ir(make_model(nodes, feeds, outputs, inits))
    expected = reference(model, feeds)
    first = _ForceTile(0)
    with tile_source(first):
        run_tvm(model, feeds)
    kinds = {k.split(":")[0] for k in first.seen}
    nchw = {"dense", "batch_matmul", "conv2d", "depthwise_conv2d", "pointwise_conv2d"}
    assert nchw | {"conv2d_nchwc", "depthwise_conv2d_nchwc"} <= kinds, kinds
    for index in range(1, max(first.seen.values())):
        with tile_source(_ForceTile(index)):
            got = run_tvm(model, feeds)
        for name, value in zip(outputs, got, strict=True):
            np.testing.assert_allclose(value, expected[name], atol=1e-4, rtol=1e-4, err_msg=f"{name} tile #{index}")


@pytest.mark.parametrize(
    ("target", "lanes", "block"),
    [
        ({"kind": "llvm", "mcpu": "haswell"}, 8, 8),
        ({"kind": "llvm", "mcpu": "sapphirerapids"}, 16, 8),
        ({"kind": "llvm", "mcpu": "rocketlake"}, 16, 8),  # AVX-512 known from LLVM's features, not the name
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 4, 4),
    ],
)
def test_vector_lanes_from_the_cpu_and_8_channel_conv_blocks_on_x86(target: dict, lanes: int, block: int) -> None:
    """fp32 lanes follow the CPU's widest vectors (AVX-512 by name or by LLVM's features); the channel-blocked convs
    keep 8-channel blocks on every x86 CPU."""
    tgt = tvm.target.Target(target)
    assert target_lanes(tgt).lanes == lanes
    assert conv_block_config(tgt).lanes == block
