"""TVM backend: pairs of convs computed by one kernel.

A 1x1 expansion conv fused with the depthwise conv reading it (rolling buffer of rows), and a depthwise conv
fused with the 1x1 projection reading it (one row at a time): each kernel against torch's two convs for every
plan the tuner may pick (strided, asymmetrically padded, row bands and columns that do not divide the tiles,
each activation), the lowering's choice of which pairs to fuse, and the fused graphs against onnxruntime.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from onnx import helper

import backends.tvm.schedules.depthwise_project as dp
import backends.tvm.schedules.expand_depthwise as ed
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.schedules.tiling import TileConfig
from backends.tvm.target import host_target
from tests.test_tvm_helpers import check_against_ort, make_model, rand, to_ir

_ACTS = {"": lambda t: t, "Relu": torch.relu, "Clip": lambda t: t.clamp(0.0, 6.0)}
_PARAMS = {"": (), "Relu": (), "Clip": (0.0, 6.0)}


def _reference(
    x: np.ndarray, w1: np.ndarray, b1: np.ndarray, act1: str, w2: np.ndarray, b2: np.ndarray, act2: str,
    stride: Sequence[int], pads: Sequence[int],
) -> np.ndarray:  # fmt: skip
    t = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b1))
    t = torch.nn.functional.pad(_ACTS[act1](t), (pads[1], pads[3], pads[0], pads[2]))
    t = torch.nn.functional.conv2d(t, torch.from_numpy(w2), torch.from_numpy(b2), stride=stride, groups=w2.shape[0])
    return _ACTS[act2](t).numpy()


def _blocked(a: np.ndarray, b: int) -> np.ndarray:
    n, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2))


def _run_kernel(func: tvm.tirx.PrimFunc, args: list[np.ndarray], out_shape: Sequence[int]) -> np.ndarray:
    """Build ``func`` for the host and run it on ``args``; its output starts as NaN, so an element it never
    writes fails the comparison."""
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=host_target(2))
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32), dev)
    lib[lib.entry_name](*[tvm.runtime.tensor(a, dev) for a in args], out)
    return out.numpy()


def _run_plan(p: ed.ExpandDepthwisePlan, act1: str, act2: str, bias: bool, seed: int = 0) -> None:
    x = rand(1, p.c, p.h, p.w, seed=seed)
    w1, w2 = rand(p.ce, p.c, 1, 1, seed=seed + 1) * 0.3, rand(p.ce, 1, p.kh, p.kw, seed=seed + 2) * 0.3
    b1, b2 = (rand(p.ce, seed=seed + 3), rand(p.ce, seed=seed + 4)) if bias else (None, None)
    func = ed.expand_depthwise_func(p, (act1, _PARAMS[act1]), (act2, _PARAMS[act2]))
    args = [
        _blocked(x, p.block),
        ed.pack_expand_weight(w1, p),
        ed.pack_group_bias(b1, p),
        ed.pack_depthwise_weight(w2, p),
        ed.pack_group_bias(b2, p),
    ]
    out = _run_kernel(func, args, ed.output_shape(p))
    zeros = np.zeros(p.ce, np.float32)
    want = _reference(x, w1, zeros if b1 is None else b1, act1, w2, zeros if b2 is None else b2, act2, p.stride, p.pad)
    np.testing.assert_allclose(out, _blocked(want, p.block), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg", [TileConfig(16, 32), TileConfig(8, 16)], ids=["avx512", "avx2"])
def test_every_candidate_plan_computes_the_two_convs(cfg: TileConfig) -> None:
    # 13 x 11 map, 5x5 taps, stride 2, asymmetric padding: 6 output rows in 2 or 4 bands, 5 columns in 7-wide tiles
    plans = ed.plan_candidates(16, 13, 11, 96, 5, 5, (2, 2), (2, 1, 1, 2), 8, cfg)
    assert len({(p.group, p.mr_e, p.bands) for p in plans}) == len(plans) >= 6
    assert {p.group for p in plans} == ({2, 4, 6} if cfg.lanes == 16 else {1, 2, 3})
    for i, p in enumerate(plans):
        _run_plan(p, "Clip", "Clip", bias=True, seed=i)


@pytest.mark.parametrize(
    ("shape", "k", "stride", "pads", "acts", "bias"),
    [
        ((8, 9, 17), 3, (1, 1), (1, 1, 1, 1), ("Relu", ""), True),  # stride 1: one new ring row per output row
        ((16, 12, 12), 3, (2, 2), (0, 0, 1, 1), ("", "Clip"), False),  # TF-style "same" padding, no biases
        ((8, 7, 20), 5, (1, 2), (2, 2, 2, 2), ("Clip", "Relu"), True),  # different row and column strides
        ((8, 10, 5), 3, (1, 1), (1, 1, 1, 1), ("Relu", "Relu"), True),  # 4-pixel tiles, the second overlapping
    ],
)
def test_kernel_matches_torch(shape: tuple, k: int, stride: tuple, pads: tuple, acts: tuple, bias: bool) -> None:
    c, h, w = shape
    (p,) = ed.plan_candidates(c, h, w, 32, k, k, stride, pads, 8, TileConfig(16, 32))[:1]
    _run_plan(p, *acts, bias=bias)


def test_only_maps_larger_than_the_cache_are_fused() -> None:
    # EfficientNet-Lite0: the 112 x 112 x 96 and 56 x 56 x 144 expansions (4.8, 1.8 MB) fuse; 28 x 28 x 240 does not
    assert ed.fusable(16, 96, 112, 112, 3, (2, 2), (1, 1), 8)
    assert ed.fusable(24, 144, 56, 56, 3, (1, 1), (1, 1), 8)
    assert not ed.fusable(40, 240, 28, 28, 5, (1, 1), (1, 1), 8)
    # whole channel blocks, no dilation, a stride the ring can follow
    assert not ed.fusable(12, 96, 112, 112, 3, (2, 2), (1, 1), 8)
    assert not ed.fusable(16, 96, 112, 112, 3, (1, 1), (2, 2), 8)
    assert not ed.fusable(16, 96, 112, 112, 3, (4, 4), (1, 1), 8)


def _block_nodes(extra_reader: bool = False) -> tuple[list, dict, list[str]]:
    """1x1 expansion (16 -> 48) -> Clip -> 3x3 depthwise stride 2 -> Clip -> 1x1 projection (-> 16)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["e"]),
        helper.make_node("Conv", ["e", "wd", "bd"], ["d"], group=48, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["d", "w2"], ["y"]),
    ]
    outputs = ["y"]
    if extra_reader:  # the expanded map is read by a second conv too: it must be written out
        nodes.append(helper.make_node("Conv", ["e", "w3"], ["z"]))
        outputs.append("z")
    inits = {
        "w1": rand(48, 16, 1, 1, seed=1) * 0.3,
        "b1": rand(48, seed=2),
        "wd": rand(48, 1, 3, 3, seed=3) * 0.3,
        "bd": rand(48, seed=4),
        "w2": rand(16, 48, 1, 1, seed=5) * 0.3,
        "w3": rand(8, 48, 1, 1, seed=6) * 0.3,
    }
    return nodes, inits, outputs


def _kernels(nodes: Sequence, inits: dict, outputs: list[str], feeds: dict) -> list[str]:
    model = to_ir(make_model(nodes, feeds, outputs, inits))
    with host_target(2):
        script = emit_relax(model)["main"].script()
    return re.findall(r"call_tir\((cacc_\w+?)\d*,", script)


@pytest.fixture
def fuse_small_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fuse whatever the kernels take (the test maps are far smaller than the real thresholds)."""
    monkeypatch.setattr(ed, "MIN_EXPANDED_BYTES", 0)
    monkeypatch.setattr(dp, "MIN_DEPTHWISE_BYTES", 0)


@pytest.mark.usefixtures("fuse_small_maps")
def test_expansion_read_only_by_the_depthwise_conv_is_fused() -> None:
    nodes, inits, outputs = _block_nodes()
    feeds = {"x": rand(1, 16, 15, 14, seed=7)}
    # the projection stays its own kernel: the depthwise conv it reads is already fused with the expansion
    assert _kernels(nodes, inits, outputs, feeds) == ["cacc_expand_depthwise", "cacc_conv2d_nchwc"]
    check_against_ort(nodes, feeds, outputs, inits, atol=1e-4, rtol=1e-5)


@pytest.mark.usefixtures("fuse_small_maps")
def test_expansion_with_another_reader_is_not_fused() -> None:
    nodes, inits, outputs = _block_nodes(extra_reader=True)
    feeds = {"x": rand(1, 16, 15, 14, seed=8)}
    kernels = _kernels(nodes, inits, outputs, feeds)
    # the depthwise conv then pairs with the projection instead
    assert kernels == ["cacc_conv2d_nchwc", "cacc_depthwise_project", "cacc_conv2d_nchwc"]
    check_against_ort(nodes, feeds, outputs, inits, atol=1e-4, rtol=1e-5)


@pytest.mark.usefixtures("fuse_small_maps")
def test_expansion_of_quantized_activations_keeps_its_integer_kernel() -> None:
    nodes, inits, outputs = _block_nodes()
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1q", "ws"], ["w1d"], axis=0),
        helper.make_node("Conv", ["xd", "w1d", "b1"], ["e"]),
        *nodes[1:],
    ]
    ws = np.abs(inits["w1"]).reshape(48, -1).max(axis=1) / 127
    w1q = np.round(inits["w1"] / ws.reshape(48, 1, 1, 1)).astype(np.int8)
    inits = {**inits, "s": np.array(0.05, np.float32), "z": np.array(128, np.uint8), "w1q": w1q, "ws": ws}
    feeds = {"x": rand(1, 16, 15, 14, seed=12)}
    kernels = _kernels(nodes, inits, outputs, feeds)
    assert "cacc_expand_depthwise" not in kernels and any(k.startswith("cacc_qconv") for k in kernels), kernels
    check_against_ort(nodes, feeds, outputs, inits, atol=1e-3, rtol=1e-4)


@pytest.mark.usefixtures("fuse_small_maps")
def test_fused_graph_after_fusing_activations_matches_ort() -> None:
    """Through the compiler: Conv + Clip pairs become FusedConv nodes, whose activations the kernel applies."""
    import compiler
    from tests.test_tvm_helpers import run_ort

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["e0"]),
        helper.make_node("Clip", ["e0", "lo", "hi"], ["e"]),
        helper.make_node("Conv", ["e", "wd", "bd"], ["d0"], group=48, pads=[2, 2, 2, 2], strides=[2, 2]),
        helper.make_node("Clip", ["d0", "lo", "hi"], ["y"]),
    ]
    inits = {
        "w1": rand(48, 16, 1, 1, seed=1) * 0.3,
        "b1": rand(48, seed=2),
        "wd": rand(48, 1, 5, 5, seed=3) * 0.3,
        "bd": rand(48, seed=4),
        "lo": np.array(0.0, np.float32),
        "hi": np.array(6.0, np.float32),
    }
    feeds = {"x": rand(1, 16, 17, 16, seed=9)}
    proto = make_model(nodes, feeds, ["y"], inits)
    cm = compiler.compile(to_ir(proto), target="x86", num_threads=2, measure=False)
    ops = [n.op_type for n in cm.ir.graph]
    assert ops == ["FusedConv", "FusedConv"], ops
    with host_target(2):
        assert "cacc_expand_depthwise" in emit_relax(cm.ir)["main"].script()
    np.testing.assert_allclose(cm.run(feeds)["y"], run_ort(proto, feeds)[0], rtol=1e-5, atol=1e-4)


@pytest.mark.usefixtures("fuse_small_maps")
def test_tile_search_builds_and_times_every_fused_candidate(tmp_path: Path) -> None:
    from backends.tvm.database import TuningDatabase, read_records
    from backends.tvm.kernel_tuning import KernelCollector, collect_kernels, tune_kernels
    from backends.tvm.schedules.choice import WORKLOAD_ATTR, tile_json, tile_source

    nodes, inits, outputs = _block_nodes(extra_reader=True)  # a depthwise + projection pair instead
    nodes = [
        *nodes,
        helper.make_node("Conv", ["x", "w4"], ["e4"]),
        helper.make_node("Conv", ["e4", "wd4"], ["d4"], group=32),
    ]
    inits = {**inits, "w4": rand(32, 16, 1, 1, seed=10), "wd4": rand(32, 1, 3, 3, seed=11)}
    model = to_ir(make_model(nodes, {"x": rand(1, 16, 15, 14)}, [*outputs, "d4"], inits))
    target = host_target(2)
    fused_kinds = ("depthwise_project", "expand_depthwise")
    collected = collect_kernels(model, target)
    workloads = [wl for wl in collected if wl.key.startswith(fused_kinds)]
    assert sorted(wl.key.split(":")[0] for wl in workloads) == ["depthwise_project", "expand_depthwise"]
    # the producers' own kernels, emitted before the fused ones made them dead, are not tuned
    everything = KernelCollector()
    with target, tile_source(everything):
        mod = emit_relax(model)
    live = {str(f.attrs[WORKLOAD_ATTR]) for _, f in mod.functions_items() if f.attrs and WORKLOAD_ATTR in f.attrs}
    assert {wl.key for wl in collected} == live
    dead = sorted(k.split(":")[0] for k in set(everything.workloads) - live)
    assert dead == ["conv2d_nchwc", "depthwise_conv2d_nchwc"], dead
    tune_kernels(model, target, TuningDatabase(tmp_path), progress=False)
    for fused in workloads:
        records = [r for r in read_records(tmp_path / "records.jsonl") if r.workload == fused.workload]
        assert {tile_json(r.tile) for r in records if r.tile} == {tile_json(t) for t in fused.candidates}
        assert all(r.run_secs for r in records), f"a candidate of {fused.key} failed to build or run"


# -- depthwise conv + projection


def _run_dp_plan(p: dp.DepthwiseProjectPlan, act1: str, act2: str, bias: bool, seed: int = 0) -> None:
    x = rand(1, p.c, p.h, p.w, seed=seed)
    wd, wp = rand(p.c, 1, p.kh, p.kw, seed=seed + 1) * 0.3, rand(p.co, p.c, 1, 1, seed=seed + 2) * 0.3
    bd, bp = (rand(p.c, seed=seed + 3), rand(p.co, seed=seed + 4)) if bias else (None, None)
    func = dp.depthwise_project_func(p, (act1, _PARAMS[act1]), (act2, _PARAMS[act2]))
    args = [
        _blocked(x, p.block),
        dp.pack_depthwise_weight(wd, p),
        dp.pack_bias(bd, p.c, p),
        dp.pack_project_weight(wp, p),
        dp.pack_bias(bp, p.co, p),
    ]
    out = _run_kernel(func, args, dp.output_shape(p))
    t = torch.nn.functional.pad(torch.from_numpy(x), (p.pad[1], p.pad[3], p.pad[0], p.pad[2]))
    bd_t = None if bd is None else torch.from_numpy(bd)
    t = _ACTS[act1](torch.nn.functional.conv2d(t, torch.from_numpy(wd), bd_t, stride=p.stride, groups=p.c))
    want = _ACTS[act2](
        torch.nn.functional.conv2d(t, torch.from_numpy(wp), None if bp is None else torch.from_numpy(bp))
    )
    np.testing.assert_allclose(out, _blocked(want.numpy(), p.block), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg", [TileConfig(16, 32), TileConfig(8, 16)], ids=["avx512", "avx2"])
def test_every_depthwise_project_plan_computes_the_two_convs(cfg: TileConfig) -> None:
    # 5x5 taps, stride 2, asymmetric padding: 7 x 5 outputs, in 2 to 8 row bands (one empty)
    plans = dp.plan_candidates(24, 13, 11, 32, 5, 5, (2, 2), (2, 1, 2, 2), 8, cfg, threads=2)
    assert len({(p.mr_p, p.bands) for p in plans}) == len(plans) >= 6
    for i, p in enumerate(plans):
        _run_dp_plan(p, "Clip", "", bias=True, seed=i)


@pytest.mark.parametrize(
    ("shape", "co", "k", "stride", "pads", "acts", "bias"),
    [
        ((16, 9, 17), 24, 3, (1, 1), (1, 1, 1, 1), ("Relu", "Relu"), True),  # 24 outputs: 8-lane vectors
        ((8, 12, 12), 16, 3, (2, 2), (0, 0, 1, 1), ("", "Clip"), False),  # TF-style "same" padding, no biases
        ((16, 7, 20), 48, 5, (1, 2), (2, 2, 2, 2), ("Clip", ""), True),  # different row and column strides
    ],
)
def test_depthwise_project_kernel_matches_torch(
    shape: tuple, co: int, k: int, stride: tuple, pads: tuple, acts: tuple, bias: bool
) -> None:
    c, h, w = shape
    p = dp.plan_candidates(c, h, w, co, k, k, stride, pads, 8, TileConfig(16, 32), threads=2)[0]
    _run_dp_plan(p, *acts, bias=bias)


def test_no_depthwise_project_plan_when_the_output_channels_spill_the_registers() -> None:
    # one pixel of 256 channels: 16 zmm accumulators + 16 weight vectors + a broadcast > 32 registers; 240 fit
    assert dp.plan_candidates(32, 56, 56, 256, 3, 3, (1, 1), (1, 1, 1, 1), 8, TileConfig(16, 32), threads=2) == []
    assert dp.plan_candidates(32, 56, 56, 240, 3, 3, (1, 1), (1, 1, 1, 1), 8, TileConfig(16, 32), threads=2)


def test_only_depthwise_outputs_larger_than_the_cache_are_fused() -> None:
    # EfficientNet-Lite0's first depthwise conv (112 x 112 x 32 out, 1.6 MB) fuses; 28 x 28 x 144 does not
    assert dp.fusable(32, 16, 112, 112, (1, 1), 8)
    assert not dp.fusable(144, 40, 28, 28, (1, 1), 8)
    assert not dp.fusable(36, 16, 112, 112, (1, 1), 8)  # channels in whole blocks only
    assert not dp.fusable(32, 16, 112, 112, (2, 2), 8)


@pytest.mark.usefixtures("fuse_small_maps")
def test_projection_of_a_depthwise_conv_is_fused() -> None:
    """A depthwise conv on the (NCHW) graph input, its projection the only reader."""
    nodes = [
        helper.make_node("Conv", ["x", "wd", "bd"], ["d"], group=16, pads=[1, 2, 1, 0], strides=[2, 1]),
        helper.make_node("Conv", ["d", "w2", "b2"], ["y"]),
    ]
    inits = {"wd": rand(16, 1, 3, 3, seed=1), "bd": rand(16, seed=2), "w2": rand(24, 16, 1, 1, seed=3), "b2": rand(24)}
    feeds = {"x": rand(1, 16, 15, 14, seed=4)}
    assert _kernels(nodes, inits, ["y"], feeds) == ["cacc_depthwise_project"]
    check_against_ort(nodes, feeds, ["y"], inits, atol=1e-4, rtol=1e-5)
    # read twice, the depthwise output is written out and each conv runs alone
    nodes.append(helper.make_node("Conv", ["d", "w2"], ["z"]))
    assert _kernels(nodes, inits, ["y", "z"], feeds) == ["cacc_depthwise_conv2d_nchwc", *["cacc_conv2d_nchwc"] * 2]
    check_against_ort(nodes, feeds, ["y", "z"], inits, atol=1e-4, rtol=1e-5)
