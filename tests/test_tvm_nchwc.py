"""TVM backend: channel-blocked (NCHW8c) conv chains.

Which values are written blocked, that a chain of convs and residual adds runs without layout
changes between them, and the blocked kernels' numerics against onnxruntime on strided, dilated,
asymmetrically padded convs whose sizes do not divide the register tiles.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from onnx import helper

from backends.tvm.lowering.blocked import plan_blocked_values
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.schedules.nchwc import BlockedConvPlan, blocked_conv_applies, blocked_conv_func, plan_blocked_conv
from backends.tvm.schedules.tiling import TileConfig
from backends.tvm.target import host_target
from compiler.ir.shapes import infer_shapes
from tests.test_tvm_helpers import check_against_ort, make_model, rand, to_ir


def _chain_nodes() -> tuple[list, dict]:
    """stem conv -> depthwise -> 1x1 -> residual add -> 1x1 -> (MaxPool, graph output)."""
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "wd"], ["b"], group=16, pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["b", "w1"], ["c"]),
        helper.make_node("Add", ["c", "ar"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
        helper.make_node("MaxPool", ["y"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits = {
        "w0": rand(16, 3, 3, 3, seed=1),
        "wd": rand(16, 1, 5, 5, seed=2),
        "w1": rand(16, 16, 1, 1, seed=3),
        "w2": rand(24, 16, 1, 1, seed=4),
    }
    return nodes, inits


def test_plan_blocks_values_that_convs_read() -> None:
    nodes, inits = _chain_nodes()
    model = to_ir(make_model(nodes, {"x": rand(1, 3, 19, 17)}, ["y", "m"], inits))
    infer_shapes(model)
    # "y" is read by MaxPool only: its conv writes NCHW unless its own input is blocked
    assert plan_blocked_values(model.graph) == {"a", "ar", "b", "c", "s"}


def test_chain_with_a_batch_of_two_matches_ort() -> None:
    nodes, inits = _chain_nodes()
    check_against_ort(nodes, {"x": rand(2, 3, 11, 13, seed=6)}, ["y", "m"], inits, atol=1e-3, rtol=1e-4)


def test_chain_runs_without_layout_changes_between_convs() -> None:
    nodes, inits = _chain_nodes()
    feeds = {"x": rand(1, 3, 19, 17)}
    model = to_ir(make_model(nodes, feeds, ["y", "m"], inits))
    infer_shapes(model)
    script = emit_relax(model)["main"].script()
    # the only layout change is the last conv's blocked output going back to NCHW (for MaxPool and the output)
    assert len(re.findall(r"R\.permute_dims", script)) == 1, script
    assert re.search(r"R\.add\(\w+, \w+\)", script) and "R.Tensor((1, 2, 10, 9, 8)" in script
    assert re.search(r"R\.nn\.relu\(\w+\)", script)
    assert len(re.findall(r"call_tir\(cacc_(?:depthwise_)?conv2d_nchwc", script)) == 4
    check_against_ort(nodes, feeds, ["y", "m"], inits, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    ("c", "co", "hw", "kernel", "group", "attrs"),
    [
        (8, 8, (13, 11), 3, 8, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
        (16, 16, (9, 14), 5, 16, {"strides": [2, 1], "pads": [2, 1, 2, 3]}),
        (8, 8, (12, 12), 3, 8, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
        (8, 24, (7, 7), 3, 1, {"pads": [1, 1, 1, 1]}),
        (8, 16, (10, 9), 3, 1, {"strides": [2, 2]}),
        (16, 40, (5, 6), 1, 1, {}),
    ],
)
def test_blocked_conv_reading_a_blocked_input(c: int, co: int, hw: tuple, kernel: int, group: int, attrs: dict) -> None:
    """A 1x1 conv writes the blocked input of the conv under test (and a MaxPool reads its output as NCHW)."""
    nodes = [
        helper.make_node("Conv", ["x", "wi"], ["t"]),
        helper.make_node("Conv", ["t", "w"], ["y"], group=group, **attrs),
    ]
    inits = {"wi": rand(c, 3, 1, 1, seed=7), "w": rand(co, c // group, kernel, kernel, seed=8)}
    feeds = {"x": rand(1, 3, *hw, seed=9)}
    model = to_ir(make_model(nodes, feeds, ["y"], inits))
    infer_shapes(model)
    assert plan_blocked_values(model.graph) == {"t"}
    assert "_nchwc" in emit_relax(model)["main"].script()
    check_against_ort(nodes, feeds, ["y"], inits, atol=1e-4, rtol=1e-4)


def _depthwise_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray, p: BlockedConvPlan) -> np.ndarray:
    """Blocked depthwise conv by definition: ``x [1, C/b, H, W, b]``, ``w [C/b, KH, KW, b]``, ``bias [C/b, b]``."""
    (sh, sw), (dh, dw), (pt, pl) = p.stride, p.dilation, p.pad
    xp = np.zeros((x.shape[1], p.h + 2 * p.kh * dh, p.w + 2 * p.kw * dw, x.shape[4]), np.float64)
    xp[:, pt : pt + p.h, pl : pl + p.w] = x[0]
    out = np.zeros((x.shape[1], p.oh, p.ow, x.shape[4]))
    for ky in range(p.kh):
        for kx in range(p.kw):
            rows = xp[:, ky * dh : ky * dh + sh * (p.oh - 1) + 1 : sh, kx * dw : kx * dw + sw * (p.ow - 1) + 1 : sw]
            out += rows * w[:, ky, kx][:, None, None, :]
    return (out + bias[:, None, None, :])[None]


@pytest.mark.parametrize("mode", ["inline", "one pass", "per row", "per channel block"])
@pytest.mark.parametrize(
    ("hw", "kernel", "stride", "dilation", "pads"),
    [((13, 11), 3, 2, 1, [1, 1, 1, 1]), ((9, 14), 5, 1, 1, [2, 1, 2, 3]), ((12, 12), 3, 1, 2, [2, 2, 2, 2])],
)
def test_depthwise_padding_modes(mode: str, hw: tuple, kernel: int, stride: int, dilation: int, pads: list) -> None:
    """Every padding mode the tile search tries computes the conv (output tiles wider than the map included);
    the default reads the padding in place, with no padded copy in the kernel."""
    from backends.tvm.kernel_tuning import BuiltKernel

    cfg = TileConfig(8, 16)
    flags = {"inline": (0, 0, 1), "one pass": (0, 0, 0), "per row": (1, 0, 0), "per channel block": (1, 1, 0)}[mode]
    tile = dict(zip(("local_pad", "plane_pad", "inline_pad"), flags), mr=4)
    shape = [1, 16, *hw]
    p = plan_blocked_conv(shape, [16, 1, kernel, kernel], [stride] * 2, [dilation] * 2, pads, cfg, depthwise=True,
                          in_blocked=True, tile=tile)  # fmt: skip
    assert (p.inline_pad, p.local_pad, p.plane_pad) == (flags[2] == 1, flags[0] == 1, flags[1] == 1)
    func = blocked_conv_func(p, "float32", bias=True)
    kernel_ = BuiltKernel(func, host_target(1))
    kernel_.rt_mod(*kernel_.args)
    x, w, bias, out = (a.numpy() for a in kernel_.args)
    np.testing.assert_allclose(out, _depthwise_reference(x, w, bias, p), rtol=1e-5, atol=1e-5)
    default = plan_blocked_conv(shape, [16, 1, kernel, kernel], [stride] * 2, [dilation] * 2, pads, cfg,
                                depthwise=True, in_blocked=True)  # fmt: skip
    assert default.inline_pad and not default.local_pad
    assert "X_pad" not in blocked_conv_func(default, "float32", bias=True).script()


def test_channels_not_in_whole_vectors_stay_nchw() -> None:
    assert not blocked_conv_applies(12, 12, 12, 1, 8, in_blocked=False)  # depthwise, 12 channels
    assert not blocked_conv_applies(8, 6, 1, 8, 8, in_blocked=True)  # 6 output channels
    assert not blocked_conv_applies(8, 8, 2, 4, 8, in_blocked=True)  # grouped, not depthwise
    assert blocked_conv_applies(3, 16, 1, 3, 8, in_blocked=False)  # the stem conv of an image
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["t"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["t", "w1"], ["y"], group=12, pads=[1, 1, 1, 1]),
    ]
    inits = {"w0": rand(12, 3, 3, 3, seed=10), "w1": rand(12, 1, 3, 3, seed=11)}
    feeds = {"x": rand(1, 3, 9, 9, seed=12)}
    model = to_ir(make_model(nodes, feeds, ["y"], inits))
    infer_shapes(model)
    assert "_nchwc" not in emit_relax(model)["main"].script()
    check_against_ort(nodes, feeds, ["y"], inits, atol=1e-4, rtol=1e-4)


def test_cuda_emission_keeps_nchw() -> None:
    nodes, inits = _chain_nodes()
    model = to_ir(make_model(nodes, {"x": rand(1, 3, 19, 17)}, ["y", "m"], inits))
    infer_shapes(model)
    with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):
        assert "_nchwc" not in emit_relax(model)["main"].script()


# ---------------------------------------------------------------- wide tiles (two blocks to a register)

AVX512_REGS = TileConfig(16, 32)


def _dense_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray, p: BlockedConvPlan) -> np.ndarray:
    """Dense conv by definition on NCHW ``x`` and ``w [Co, C, KH, KW]``, as NCHW."""
    (sh, sw), (dh, dw), (pt, pl) = p.stride, p.dilation, p.pad
    xp = np.zeros((p.c, p.h + 2 * p.kh * dh, p.w + 2 * p.kw * dw), np.float64)
    xp[:, pt : pt + p.h, pl : pl + p.w] = x[0]
    out = np.zeros((p.co, p.oh, p.ow))
    for ky in range(p.kh):
        for kx in range(p.kw):
            rows = xp[:, ky * dh : ky * dh + sh * (p.oh - 1) + 1 : sh, kx * dw : kx * dw + sw * (p.ow - 1) + 1 : sw]
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], rows)
    return out + bias[:, None, None]


@pytest.mark.parametrize(
    ("c", "co", "hw", "kernel", "stride", "pads", "in_blocked", "tile"),
    [
        (16, 32, (7, 7), 1, 1, [0, 0, 0, 0], True, (7, 4, 1)),  # a 7x7 map: one tile per row
        (8, 48, (9, 10), 1, 1, [0, 0, 0, 0], True, (4, 6, 0)),  # 90 pixels, the last tile padded
        (24, 16, (5, 6), 3, 2, [1, 1, 1, 1], True, (14, 2, 0)),  # tiles wider than the map
        (3, 32, (11, 13), 3, 2, [0, 0, 1, 1], False, (6, 4, 0)),  # the stem conv of an image (NCHW input)
        (8, 64, (6, 6), 1, 1, [0, 0, 0, 0], True, (4, 8, 1)),
    ],
)
def test_wide_dense_tiles_compute_the_conv(
    c: int, co: int, hw: tuple, kernel: int, stride: int, pads: list, in_blocked: bool, tile: tuple
) -> None:
    """A register of two 8-channel blocks (16 lanes: AVX-512; LLVM splits them on narrower CPUs) computes the conv
    exactly like its definition, on maps the pixel tiles do not divide and on padded, strided convs."""
    from backends.tvm.kernel_tuning import BuiltKernel
    from backends.tvm.schedules.nchwc import pack_blocked_bias, pack_blocked_weight

    mr, vecs, outer = tile
    shape = [1, c, *hw]
    p = plan_blocked_conv(shape, [co, c, kernel, kernel], [stride] * 2, [1, 1], pads, TileConfig(8, 16),
                          depthwise=False, in_blocked=in_blocked,
                          tile={"mr": mr, "vecs": vecs, "channels_outer": outer, "wide": 1})  # fmt: skip
    assert p.wide and (p.mr, p.vecs) == (mr, vecs)
    func = blocked_conv_func(p, "float32", bias=True)
    assert ",lanes16" in str(func.attrs["cacc.kernel"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, *hw)).astype(np.float32)
    w = rng.standard_normal((co, c, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    kernel_ = BuiltKernel(func, host_target(1))
    xb = x.reshape(1, c // 8, 8, *hw).transpose(0, 1, 3, 4, 2) if in_blocked else x
    args = [np.ascontiguousarray(xb), pack_blocked_weight(w, p), pack_blocked_bias(bias, p)]
    kernel_.args[:3] = [tvm.runtime.tensor(a, kernel_.dev) for a in args]
    kernel_.rt_mod(*kernel_.args)
    out = kernel_.args[3].numpy().reshape(co // 8, p.oh, p.ow, 8).transpose(0, 3, 1, 2).reshape(co, p.oh, p.ow)
    np.testing.assert_allclose(out, _dense_reference(x, w, bias, p), rtol=1e-4, atol=1e-4)


def test_default_dense_tiles_are_wide_where_registers_hold_two_blocks() -> None:
    """On AVX-512 a dense conv whose output channels make whole block pairs takes a wide tile (a 7x4 one on a 7x7
    map, one that pads a 4x4 map by at most 5% there), others keep 8-lane tiles; an odd-vector wide tile is an
    error."""
    narrow = TileConfig(8, 16)

    def plan(co: int, hw: int, wide: TileConfig | None, tile: dict | None = None) -> BlockedConvPlan:
        return plan_blocked_conv([1, 16, 1, hw], [co, 16, 1, 1], [1, 1], [1, 1], [0] * 4, narrow, depthwise=False,
                                 in_blocked=True, tile=tile, wide=wide)  # fmt: skip

    p = plan(32, 49, AVX512_REGS)
    assert (p.wide, p.mr, p.vecs, p.channels_outer) == (True, 7, 4, True)
    p = plan(48, 16, AVX512_REGS)
    assert p.wide and 16 % p.mr == 0
    assert not plan(24, 49, AVX512_REGS).wide  # three blocks: no pair
    assert not plan(32, 49, None).wide  # AVX2
    assert not plan(32, 49, TileConfig(4, 32)).wide  # NEON: 4 lanes, not two 8-channel blocks
    with pytest.raises(ValueError, match="even number of vectors"):
        plan(24, 49, AVX512_REGS, {"mr": 4, "vecs": 3, "wide": 1})


def test_avx512_target_writes_the_chain_with_zmm_fmas() -> None:
    """Emitted for an AVX-512 CPU, the blocked convs of whole block pairs run 512-bit FMAs (on this host's
    numerics too, where it has AVX-512)."""
    from backends.tvm.runtime import cpu_pipeline
    from backends.tvm.schedules.tiling import has_feature

    nodes, inits = _chain_nodes()
    feeds = {"x": rand(1, 3, 19, 17)}
    model = to_ir(make_model(nodes, feeds, ["y", "m"], inits))
    infer_shapes(model)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
    with target:
        mod = emit_relax(model)
    assert ",lanes16" in mod.script()
    ex = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))
    asm = "\n".join(m.inspect_source("s") for m in ex.mod.imports if m.kind == "llvm")
    assert re.search(r"vfmadd\w+ps\s+[^\n]*%zmm", asm)
    if has_feature(host_target(), "avx512f"):
        check_against_ort(nodes, feeds, ["y", "m"], inits, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(("op", "keepdims"), [("ReduceMean", 1), ("ReduceMax", 0), ("ReduceSum", 1)])
def test_global_pool_of_a_blocked_map_reduces_it_blocked(op: str, keepdims: int) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w1"], ["c"]),  # reads "ar" blocked, so writes "c" blocked
        helper.make_node(op, ["c", "axes"], ["y"], keepdims=keepdims),
    ]
    inits = {"w0": rand(16, 3, 3, 3, seed=1), "w1": rand(24, 16, 1, 1, seed=2), "axes": np.array([2, 3], np.int64)}
    feeds = {"x": rand(2, 3, 7, 9, seed=3)}
    model = to_ir(make_model(nodes, feeds, ["y"], inits))
    infer_shapes(model)
    script = emit_relax(model)["main"].script()
    # the map stays blocked: only the pooled [2, 3, 1, 1, 8] result is transposed to NCHW
    assert "R.Tensor((2, 3, 1, 1, 8)" in script, script
    assert "R.Tensor((2, 24, 7, 9)" not in script, script
    check_against_ort(nodes, feeds, ["y"], inits, atol=1e-3, rtol=1e-4)
