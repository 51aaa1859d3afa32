"""Pass options, calibration plumbing, pipeline expansion and per-layer records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

import compiler
from compiler.api import calibration_feeds
from compiler.config import DEFAULT_PASSES
from compiler.errors import InputSignatureError, PassError
from compiler.report import Report
from passes import LayerRecord, Pass, PassContext, PassManager, expand_pipeline, register_pass
from tests.helpers import make_model, tensor, to_ir


@dataclass
class _Opts:
    factor: float = 2.0


@register_pass
class _ScaleWeightsPass(Pass):
    """Test-only compression pass: multiplies every float initializer by ``factor``."""

    name = "test_scale_weights"
    description = "test only"
    stage: ClassVar = "compression"
    numerics_tolerance = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.parse_options(_Opts)
        n = len(self.calibration_feeds(minimum=1))
        for v in model.graph.initializers.values():
            if v.const_value is not None:
                arr = v.const_value.numpy()
                v.const_value = ir.tensor(arr * opts.factor)
                self.context.layers.append(
                    LayerRecord(v.name or "", "MatMul", self.name, f"x{opts.factor}", note=f"{n} samples")
                )
        return ir.passes.PassResult(model, True)


def _matmul_model() -> ir.Model:
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return to_ir(make_model(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 2])], [("w", w)]))


def test_compression_passes_run_between_cleanup_and_fusion() -> None:
    pipeline = expand_pipeline(["test_scale_weights"], DEFAULT_PASSES)
    i = pipeline.index("test_scale_weights")
    assert pipeline[:i] == [p for p in DEFAULT_PASSES if p != "fuse_bias_activation"][:i]
    assert "fuse_bias_activation" in pipeline[i + 1 :]
    # A list with any non-compression pass runs exactly as given.
    assert expand_pipeline(["fold_constants", "test_scale_weights"], DEFAULT_PASSES) == [
        "fold_constants",
        "test_scale_weights",
    ]


def test_options_and_calibration_reach_the_pass() -> None:
    model = _matmul_model()
    ctx = PassContext(options={"test_scale_weights": {"factor": 3.0}}, calibration=[{"x": np.ones((1, 3), "f")}] * 2)
    result = PassManager(["test_scale_weights"], context=ctx).run(model)
    w = result.model.graph.initializers["w"].const_value
    assert w is not None
    np.testing.assert_array_equal(w.numpy(), 3.0 * np.arange(6, dtype=np.float32).reshape(3, 2))
    assert [(r.action, r.note) for r in result.layers] == [("x3.0", "2 samples")]


def test_bad_options_are_named() -> None:
    ctx = PassContext(options={"test_scale_weights": {"factr": 3.0}}, calibration=[{}])
    with pytest.raises(PassError, match=r"unknown option\(s\) factr; known: factor \[pass .test_scale_weights.\]"):
        PassManager(["test_scale_weights"], context=ctx).run(_matmul_model())
    with pytest.raises(PassError, match="not in the pipeline: quantize_nothing"):
        PassManager(["fold_constants"], context=PassContext(options={"quantize_nothing": {}}))


def test_missing_calibration_is_named() -> None:
    with pytest.raises(PassError, match=r"at least 1 calibration sample.*test_scale_weights"):
        PassManager(["test_scale_weights"]).run(_matmul_model())


def test_calibration_feeds_normalizes_and_checks_samples() -> None:
    model = _matmul_model()
    x = np.ones((1, 3), np.float32)
    assert [list(f) for f in calibration_feeds(model, [(x,), [x], {"x": x}])] == [["x"]] * 3
    with pytest.raises(InputSignatureError, match="calibration sample 1"):
        calibration_feeds(model, [(x,), (np.ones((1, 4), np.float32),)])
    with pytest.raises(InputSignatureError, match="sequence of samples"):
        calibration_feeds(model, x)


def test_compile_records_layers_in_the_report() -> None:
    x = np.ones((1, 3), np.float32)
    cm = compiler.compile(
        _matmul_model(),
        target="reference",
        passes=["test_scale_weights"],
        calibration=[(x,)],
        pass_options={"test_scale_weights": {"factor": 0.5}},
        measure=False,
    )
    np.testing.assert_allclose(cm(x), 0.5 * x @ np.arange(6, dtype=np.float32).reshape(3, 2))
    assert cm.config.passes.index("test_scale_weights") < cm.config.passes.index("fuse_bias_activation")
    assert "x0.5" in str(cm.report)
    again = Report.from_dict(cm.report.to_dict())
    assert again.layers == cm.report.layers
