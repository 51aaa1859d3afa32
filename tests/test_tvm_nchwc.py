"""TVM backend: channel-blocked (NCHW8c) conv chains.

Which values are written blocked, that a chain of convs and residual adds runs without layout
changes between them, and the blocked kernels' numerics against onnxruntime on strided, dilated,
asymmetrically padded convs whose sizes do not divide the register tiles.
"""

from __future__ import annotations

import re

import pytest
import tvm
from onnx import helper

from backends.tvm.lowering.blocked import plan_blocked_values
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.schedules.nchwc import PLANE_PAD_BYTES, blocked_conv_applies, blocked_conv_func, plan_blocked_conv
from backends.tvm.schedules.tiled import KERNEL_ATTR
from backends.tvm.schedules.tiling import TileConfig
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


@pytest.mark.parametrize(("h", "stride"), [(56, 1), (112, 2), (7, 1)])
def test_depthwise_pads_per_channel_block_when_the_plane_fits(h: int, stride: int) -> None:
    """Per-plane padding (parallel over channel blocks) when one padded channel block fits the budget, else
    per output row; the kernel's parallel loop follows."""
    cfg = TileConfig(8, 16)
    p = plan_blocked_conv(
        [1, 32, h, h], [32, 1, 3, 3], [stride] * 2, [1, 1], [1] * 4, cfg, depthwise=True, in_blocked=True
    )
    rows, cols = p.input_extent(*p.padded_output)
    assert p.local_pad and p.plane_pad == (rows * cols * 8 * 4 <= PLANE_PAD_BYTES)
    spec = str(blocked_conv_func(p, "float32", bias=False).attrs[KERNEL_ATTR])
    assert spec.endswith(",par2") == p.plane_pad


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
