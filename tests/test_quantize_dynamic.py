"""quantize_dynamic: per-tensor (ORT DynamicQuantizeMatMul) and per-token, numerics vs the reference."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import compiler
from backends.onnx import to_standard_onnx
from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quantize_dynamic import QuantizeDynamicPass
from tests.helpers import to_ir
from tests.test_quantize_int8 import _mlp3d


def _x(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((1, 16, 32)).astype(np.float32)
    x[0, 3] *= 20  # one token with a much larger range than the others
    return x


def test_per_tensor_runs_dynamic_integer_kernels_in_ort(tmp_path) -> None:
    cm = compiler.compile(_mlp3d(), target="onnx", passes=["quantize_dynamic"], measure=False)
    ops = Counter(n.op_type for n in cm.ir.graph)
    assert ops["DynamicQuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(to_standard_onnx(cm.ir).SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert optimized["DynamicQuantizeMatMul"] == 2 and not optimized["MatMul"], optimized
    x = _x(0)
    ref = run(cm.ir, {"x": x})["y"]
    got = cm(x)
    # One step of the dynamic activation scale (ties may round differently) times the weights' row sums.
    step = (x.max() - min(x.min(), 0)) / 255
    assert np.max(np.abs(got - ref)) <= 2 * step
    layers = [r for r in cm.report.layers if r.pass_name == "quantize_dynamic"]
    assert [r.action for r in layers] == ["int8 dynamic (per-tensor)"] * 2


def test_per_token_is_more_accurate_with_an_outlier_token() -> None:
    x = _x(1)
    model = to_ir(_mlp3d())
    fp32 = run(model, {"x": x})["y"]
    errors = {}
    for per_token in (False, True):
        m = to_ir(_mlp3d())
        QuantizeDynamicPass(PassContext(options={"quantize_dynamic": {"per_token": per_token}}))(m)
        errors[per_token] = float(np.abs(run(m, {"x": x})["y"] - fp32)[0, [0, 1, 2, 4, 5]].max())
    assert any(n.op_type == "ReduceMax" for n in m.graph)
    assert errors[True] < 0.5 * errors[False], errors
    # The exported per-token model runs in ORT and matches the reference.
    got = compiler.compile(m, target="onnx", measure=False)(x)
    np.testing.assert_allclose(got, run(m, {"x": x})["y"], atol=1e-3 * np.abs(fp32).max())


def test_options() -> None:
    with pytest.raises(PassError, match="cannot be dynamically quantized"):
        QuantizeDynamicPass(PassContext(options={"quantize_dynamic": {"op_types": ["Conv"]}}))(to_ir(_mlp3d()))
    p = QuantizeDynamicPass(PassContext(options={"quantize_dynamic": {"layers": {"fc2": "fp32"}}}))
    p(to_ir(_mlp3d()))
    actions = [(r.node, r.action) for r in p.context.layers]
    assert actions == [("fc1", "int8 dynamic (per-tensor)"), ("fc2", "kept fp32")]
