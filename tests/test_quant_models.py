"""Quantized shipped models: accuracy against fp32 on real data, size, and ORT integer kernels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import compiler
import models
from backends.onnx import ort_session, to_standard_onnx
from compiler.ir.interpreter import run
from passes.base import PassContext
from passes.quantize_int4 import QuantizeWeightOnly

pytestmark = pytest.mark.models


# ----------------------------------------------------------------------------- low-bit weights


def _initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def test_minilm_int4_weight_only_size_and_outputs(real_onnx) -> None:
    path, feeds = real_onnx("minilm")
    fp32 = ir.load(str(path))
    model = ir.load(str(path))
    ctx = PassContext(options={"quantize_weight_only": {"group_size": 128}})
    QuantizeWeightOnly(ctx)(model)
    ratio = _initializer_bytes(fp32) / _initializer_bytes(model)
    assert ratio >= 7.0, ratio  # MatMul weights and the word/position embedding tables in int4 g128
    kinds = {r.op_type for r in ctx.layers}
    assert kinds == {"MatMul", "Gather"}
    ref = ort_session(ir.to_proto(fp32), 2).run(None, feeds)[0]  # type: ignore[attr-defined]
    packed = ort_session(to_standard_onnx(model, pack_int4=True), 2).run(None, feeds)[0]  # type: ignore[attr-defined]
    reference = run(model, feeds)[model.graph.outputs[0].name or ""]
    np.testing.assert_allclose(packed, reference, rtol=1e-3, atol=1e-3)
    cos = float(np.sum(ref * packed) / np.linalg.norm(ref) / np.linalg.norm(packed))
    assert cos > 0.9, cos  # int4 RTN everywhere; retrieval top-1 stays within ~0.5 pt (slow test)


def _fmnist_accuracy(passes: list[str], options: dict, limit: int) -> tuple[float, list]:
    spec = models.get("fmnist_cnn")
    cm = compiler.compile(
        spec.module, spec.example_inputs, target="onnx", measure=False, passes=passes, pass_options=options
    )
    return spec.evaluate(cm, limit=limit)["accuracy"], cm.report.layers


def _first_last() -> list[str]:
    _, layers = _fmnist_accuracy(["quantize_ternary"], {}, 10)
    return [layers[0].node, layers[-1].node]


def test_fmnist_ternary_accuracy() -> None:
    """Ternary without retraining, first and last layers kept in float (measured on 2000 test images:
    fp32 0.920, ternary 0.82; with every layer ternary 0.60)."""
    limit = 500
    spec = models.get("fmnist_cnn")
    fp32 = spec.evaluate(models.torch_predict(spec.module), limit=limit)["accuracy"]
    options = {"quantize_ternary": {"skip": _first_last()}}
    ternary, layers = _fmnist_accuracy(["quantize_ternary"], options, limit)
    assert [r.weight_bits for r in layers] == [2, 2]
    assert sum(r.bytes_after for r in layers) * 8 < sum(r.bytes_before for r in layers)
    assert 0.75 <= ternary < fp32


@pytest.mark.slow
def test_fmnist_binary_and_int4_accuracy() -> None:
    """Measured on 2000 test images: fp32 0.920, int4 g32 RTN 0.914, binary (first/last float) 0.43."""
    limit = 1000
    spec = models.get("fmnist_cnn")
    fp32 = spec.evaluate(models.torch_predict(spec.module), limit=limit)["accuracy"]
    int4, _ = _fmnist_accuracy(["quantize_weight_only"], {"quantize_weight_only": {"group_size": 32}}, limit)
    assert int4 >= fp32 - 0.015
    opts = {"quantize_ternary": {"skip": _first_last(), "mode": "binary"}}
    binary, _ = _fmnist_accuracy(["quantize_ternary"], opts, limit)
    assert 0.3 <= binary < fp32 - 0.2  # far above chance (0.1), far below float: binary needs retraining


@pytest.mark.slow
def test_minilm_gptq_int4_beats_rtn_on_retrieval() -> None:
    limit = 300
    spec = models.get("minilm")
    scores = {}
    for label, options in (
        ("fp32", None),
        ("rtn", {"method": "rtn"}),
        ("gptq", {"method": "gptq", "act_order": True}),
    ):
        cm = compiler.compile(
            spec.module,
            spec.example_inputs,
            target="onnx",
            measure=False,
            input_names=list(spec.input_names),
            passes=None if options is None else ["quantize_weight_only"],
            pass_options=None if options is None else {"quantize_weight_only": options},
            calibration=None if options is None else spec.calibration_data,
        )
        scores[label] = spec.evaluate(cm, limit=limit)["top1"]
    assert scores["gptq"] >= scores["fp32"] - 0.02, scores
    assert scores["gptq"] >= scores["rtn"], scores


def _compile_int8(
    name: str, passes: list[str], options: dict | None = None
) -> tuple[models.ModelSpec, compiler.CompiledModel]:
    spec = models.get(name)
    cm = compiler.compile(
        spec.module,
        spec.example_inputs,
        target="onnx",
        passes=passes,
        calibration=spec.calibration_data[:32],  # as the benchmark's int8 rows (--calib 32)
        pass_options=options or {},
        measure=False,
    )
    return spec, cm


def _optimized_ops(cm, tmp_path) -> Counter[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(to_standard_onnx(cm.ir).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_fmnist_int8_static_accuracy_size_and_integer_kernels(tmp_path) -> None:
    # Every layer quantized (cost_check off): with it on, the cost model keeps fmnist's tiny layers in float.
    spec, cm = _compile_int8("fmnist_cnn", ["quantize_int8"], {"quantize_int8": {"cost_check": False}})
    limit = 1000
    ours = spec.evaluate(cm, limit=limit)["accuracy"]
    fp32 = spec.evaluate(models.torch_predict(spec.module), limit=limit)["accuracy"]
    assert ours >= fp32 - 0.005, (ours, fp32)
    assert cm.report.original_size_bytes / cm.report.size_bytes >= 3.9
    ops = _optimized_ops(cm, tmp_path)
    assert ops["QLinearConv"] >= 2 and ops["QLinearMatMul"] >= 1 and not ops["Conv"], ops


@pytest.mark.slow
def test_efficientnet_int8_static_agreement(tmp_path) -> None:
    spec, cm = _compile_int8("efficientnet_lite0", ["quantize_int8"], {"quantize_int8": {"cost_check": False}})
    assert cm.report.original_size_bytes / cm.report.size_bytes >= 3.8
    ops = _optimized_ops(cm, tmp_path)
    assert ops["QLinearConv"] >= 40 and not ops["Conv"], ops
    agreement = spec.evaluate(cm, limit=100)["top1_agreement"]
    assert agreement >= 0.55, agreement  # measured 0.64 on 200 crops, 0.77 on 100; the 0.99 target is not reached yet


@pytest.mark.slow
def test_minilm_int8_static_retrieval_and_size(tmp_path) -> None:
    spec, cm = _compile_int8("minilm", ["quantize_int8"])
    ops = _optimized_ops(cm, tmp_path)
    assert ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] >= 36 and not ops["Gemm"], ops
    assert cm.report.original_size_bytes / cm.report.size_bytes >= 3.8
    limit = 300
    ours = spec.evaluate(cm, limit=limit)
    fp32 = spec.evaluate(models.torch_predict(spec.module), limit=limit)
    metric = next(k for k in fp32 if k != "n")
    assert ours[metric] >= fp32[metric] - 0.005, (ours, fp32)
