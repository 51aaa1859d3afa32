"""PassManager with the default pipeline, the pass registry, and the real models."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from compiler.errors import NumericsError, PassError
from compiler.ir import op_histogram
from passes import Pass, PassManager, Property, available_passes, decompose_cacc_ops, get_pass, register_pass
from tests.test_passes_common import assert_same_numerics, feeds_for, make_model, max_scaled_error, ort_run, snapshot

F = np.float32
DEFAULT_PIPELINE = [
    "fold_constants",
    "remove_identity",
    "eliminate_dead_code",
    "fold_batchnorm",
    "fuse_bias_activation",
]


def _arr(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F)


def _small_cnn() -> ir.Model:
    """Conv -> BN -> Relu -> Identity -> Reshape(Shape-derived) -> MatMul(W + 0) -> Add -> Gelu."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
            helper.make_node("Relu", ["bn"], ["r"]),
            helper.make_node("Identity", ["r"], ["i"]),
            helper.make_node("Shape", ["i"], ["shp"]),
            helper.make_node("Gather", ["shp", "zero_idx"], ["batch"]),
            helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
            helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["i", "target"], ["flat"]),
            helper.make_node("Add", ["w2", "zeros"], ["w2z"]),
            helper.make_node("MatMul", ["flat", "w2z"], ["mm"]),
            helper.make_node("Add", ["mm", "bias"], ["a"]),
            helper.make_node("Gelu", ["a"], ["y"]),
        ],
        {"x": (F, [2, 3, 4, 4])},
        ["y"],
        {
            "w": _arr(4, 3, 3, 3),
            "s": _arr(4, seed=2),
            "b": _arr(4, seed=3),
            "m": _arr(4, seed=4),
            "v": np.abs(_arr(4, seed=5)) + F(0.5),
            "zero_idx": np.array(0, np.int64),
            "axes": np.array([0], np.int64),
            "minus1": np.array([-1], np.int64),
            "w2": _arr(64, 10, seed=6),
            "zeros": np.zeros((64, 10), F),
            "bias": _arr(10, seed=7),
        },
    )


def test_default_pipeline_in_debug_mode() -> None:
    model = _small_cnn()
    before = snapshot(model)
    feeds = feeds_for(model)
    result = PassManager(DEFAULT_PIPELINE, debug=True, reference_inputs=feeds).run(model)
    assert [r.name for r in result.records] == DEFAULT_PIPELINE
    assert result.applied == ["fold_constants", "remove_identity", "fold_batchnorm", "fuse_bias_activation"]
    assert dict(op_histogram(result.model)) == {"cacc::FusedConv": 1, "Reshape": 1, "cacc::FusedMatMul": 1}
    # max_error is absolute: within float rounding of the outputs' magnitude (BLAS kernels differ between CPUs)
    scale = max(1.0, *(float(np.abs(o).max()) for o in ort_run(before, feeds).values()))
    for r in result.records:
        assert r.max_error is None or r.max_error <= 1e-6 * scale
    assert result.records[-1].nodes_after == 3
    assert_same_numerics(before, result.model, feeds)


def test_registry_rejects_duplicate_names() -> None:
    class Impostor(Pass):
        name = "fold_constants"

        def call(self, model: ir.Model) -> ir.passes.PassResult:
            return ir.passes.PassResult(model, False)

    with pytest.raises(PassError, match="a pass named 'fold_constants' is already registered"):
        register_pass(Impostor)
    assert available_passes()["fold_constants"] is not Impostor


def test_every_builtin_pass_is_registered() -> None:
    names = set(available_passes())
    assert set(DEFAULT_PIPELINE) | {"infer_shapes", "decompose_cacc_ops"} <= names
    with pytest.raises(PassError, match=r"unknown pass .fuse_everything.*fold_constants"):
        get_pass("fuse_everything")


class _NeedsShapes(Pass):
    name = "needs_shapes_test_only"
    required: ClassVar[frozenset[Property]] = frozenset({Property.SHAPES_INFERRED})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


class _NudgeOutputs(Pass):
    """Test-only: scales the bias of the final Add by 1.01 (not an exact rewrite, against the default tolerance)."""

    name = "nudge_outputs_test_only"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            if any(u.op_type == "Add" for u, _ in value.uses()) and value.const_value is not None:
                value.const_value = ir.tensor(value.const_value.numpy() * F(1.01), name=value.name)
                return ir.passes.PassResult(model, modified=True)
        return ir.passes.PassResult(model, modified=False)


def test_debug_mode_judges_each_pass_by_its_own_change() -> None:
    """After a compression pass (exempt from the check), the exact passes that follow are compared with the
    model they were given, not with the float original; each record's max_error is still against the original."""
    from passes import PassContext
    from passes.quantize_int8 import QuantizeInt8Pass

    model = _small_cnn()
    feeds = feeds_for(model)
    context = PassContext(calibration=[feeds_for(model, seed=s) for s in range(4)], options={})
    context.options["quantize_int8"] = {"cost_check": False}
    steps = ["fold_constants", "fold_batchnorm", QuantizeInt8Pass(context), "fuse_bias_activation"]
    result = PassManager(steps, debug=True, reference_inputs=feeds, context=context).run(model)
    errors = {r.name: r.max_error for r in result.records}
    assert errors["quantize_int8"] is not None and errors["quantize_int8"] > 1e-3
    assert errors["fuse_bias_activation"] == pytest.approx(errors["quantize_int8"], rel=1e-3)
    # a pass that does change the outputs is still named, compression before it or not
    model = _small_cnn()
    steps = ["fold_constants", QuantizeInt8Pass(context), _NudgeOutputs()]
    with pytest.raises(NumericsError, match="in this pass") as info:
        PassManager(steps, debug=True, reference_inputs=feeds, context=context).run(model)
    assert info.value.pass_name == "nudge_outputs_test_only"


def test_requirement_order_is_checked_before_running() -> None:
    with pytest.raises(PassError, match="'shapes_inferred' is established by infer_shapes") as info:
        PassManager(["fold_constants", _NeedsShapes()])
    assert info.value.pass_name == "needs_shapes_test_only"
    PassManager(["infer_shapes", "fold_constants", _NeedsShapes()])  # the right order is accepted


# ----------------------------------------------------------------------------- real models


@pytest.mark.models
@pytest.mark.parametrize("name", ["fmnist_cnn", "efficientnet_lite0", "minilm"])
def test_default_pipeline_on_real_model(name: str, real_onnx) -> None:
    path, feeds = real_onnx(name)
    model = ir.load(path)
    before_bytes = snapshot(model)
    before_ops = dict(op_histogram(model))
    result = PassManager(DEFAULT_PIPELINE, debug=True, reference_inputs=feeds).run(model)
    fused_ops = dict(op_histogram(result.model))
    print(f"\n{name}: before {sorted(before_ops.items())}\n{name}: after  {sorted(fused_ops.items())}")
    assert sum(fused_ops.values()) < sum(before_ops.values())
    assert fused_ops.get("cacc::FusedConv", 0) + fused_ops.get("cacc::FusedMatMul", 0) > 0
    assert [v.name for v in result.model.graph.outputs] == [v.name for v in ir.load(path).graph.outputs]
    decompose_cacc_ops(result.model)
    ref, got = ort_run(before_bytes, feeds), ort_run(result.model, feeds)
    assert max_scaled_error(ref, got) <= 1e-5


def test_importing_passes_registers_every_pass_module() -> None:
    """Each passes/*.py that registers a pass is imported by the package (a fresh process sees it)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    declared = set()
    for path in (root / "passes").glob("*.py"):
        text = path.read_text()
        if "@register_pass" in text:
            declared.update(re.findall(r'^    name = "(\w+)"', text, flags=re.MULTILINE))
    code = "import passes; print(' '.join(passes.available_passes()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert declared and declared <= set(out.split()), sorted(declared - set(out.split()))
