"""tools/profile_kernels.py: call counts and operation counts of a model's kernels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from backends.tvm import host_target
from tests.test_tvm_helpers import make_model, rand, to_ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import profile_kernels


def _two_layers() -> tuple[ir.Model, np.ndarray]:
    """MatMul -> Softmax -> MatMul -> Softmax on a [16, 64] input, and that input."""
    x = rand(16, 64)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["s1"], axis=-1),
        helper.make_node("MatMul", ["s1", "w2"], ["h2"]),
        helper.make_node("Softmax", ["h2"], ["y"], axis=-1),
    ]
    return to_ir(make_model(nodes, {"x": x}, ["y"], {"w": rand(64, 32, seed=1), "w2": rand(32, 32, seed=2)})), x


def test_profile_counts_calls_and_flops_of_each_kernel() -> None:
    model, _x = _two_layers()
    target = host_target(2)
    mod, flops = profile_kernels.scheduled_module(model, target)
    rows = {r.name: r for r in profile_kernels.profile_module(mod, target, flops, runs=3)}
    softmax = [r for name, r in rows.items() if name.startswith("cacc_softmax")]
    assert len(softmax) == 1 and softmax[0].calls == 2  # one [16, 32] row kernel, called twice
    dense = sorted((r for name, r in rows.items() if name.startswith("cacc_dense")), key=lambda r: -r.flops)
    assert [r.calls for r in dense] == [1, 1]
    # the 16x64 @ 64x32 GEMM: 2 * M * K * N operations (its row tile pads M, so allow the padding)
    assert 2 * 16 * 64 * 32 <= dense[0].flops <= 2 * 18 * 64 * 32
    assert all(r.seconds > 0 and r.total_ms == r.calls * r.seconds * 1e3 for r in rows.values())


def test_in_model_times_cover_every_kernel_call() -> None:
    from backends.tvm import build

    model, x = _two_layers()
    target = host_target(1)
    mod, _ = profile_kernels.scheduled_module(model, target)
    calls = {r.name: r.calls for r in profile_kernels.profile_module(mod, target, runs=3)}
    exe = build(model, target, num_threads=1)
    inside = profile_kernels.in_model_times(exe, [x], calls, runs=20)
    # the hook sees exactly the kernels the module calls (names as built), each measured, none of the VM's builtins
    assert set(inside.seconds) == set(calls)
    assert all(t >= 0 for t in inside.seconds.values()) and sum(inside.seconds.values()) > 0
    assert 0 < inside.hook_us < 50 and inside.model_ms > 0


def test_peak_share_holds_integer_kernels_to_the_dot_product_peak() -> None:
    peaks = {"fp32 FMA ymm": 100.0, "fp32 FMA zmm": 110.0, "int8 vpdpbusd ymm": 400.0, "int16 vpdpwssd ymm": 200.0}
    # 2 GFLOP in 10 ms = 200 GFLOP/s on 2 threads
    qconv = profile_kernels.KernelTime("cacc_qconv1x1_blocked_u8s83", 1, 0.01, 2e9)
    conv = profile_kernels.KernelTime("cacc_conv2d_nchwc4", 1, 0.01, 2e9)
    assert profile_kernels.peak_share(qconv, peaks, threads=2) == pytest.approx(200 / 800)
    assert profile_kernels.peak_share(conv, peaks, threads=2) == pytest.approx(200 / 220)
    s16 = profile_kernels.KernelTime("cacc_qconv1x1_blocked_s16", 1, 0.01, 2e9)
    assert profile_kernels.peak_share(s16, peaks, threads=2) == pytest.approx(200 / 400)
    # no operation count (a copy), or no integer probe on this CPU: no share
    assert (
        profile_kernels.peak_share(profile_kernels.KernelTime("cacc_quantize_operand", 1, 0.01, 0.0), peaks, 2) is None
    )
    assert profile_kernels.peak_share(qconv, {"fp32 FMA ymm": 100.0}, threads=2) is None
