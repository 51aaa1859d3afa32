"""Quantization diagnosis: per-layer error contributions and the accuracy guard, on toy models with
round-to-nearest weight quantization, checked against plain reference-interpreter runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

import passes.quant.diagnosis as diagnosis
from compiler.errors import PassError
from compiler.ir.interpreter import run
from compiler.ir.shapes import infer_shapes
from passes.quant import QuantLayer, find_layers, quantize_weight, quantize_weight_in_place
from passes.quant.diagnosis import (
    FloatReference,
    accuracy_guard,
    layer_errors,
    plan_quantization,
    quantized_copy,
    relative_error,
)
from tests.helpers import make_model, tensor, to_ir


def rtn(bits: int, group_size: int = 0) -> Callable[[ir.Model, QuantLayer], None]:
    """quantize_one: round-to-nearest symmetric weights (per channel, or per group)."""

    def quantize_one(model: ir.Model, layer: QuantLayer) -> None:
        q, p = quantize_weight(layer.weight_array(), layer.out_axis, layer.reduce_axis, bits, group_size=group_size)
        quantize_weight_in_place(model.graph, layer, q, p, block_size=group_size)

    return quantize_one


def _mlp(seed: int = 0) -> ir.Model:
    """x[4,16] -> MatMul(mm1) -> Relu -> MatMul(mm2) -> Relu -> Gemm(transB) -> y[4,8].

    mm2 has a huge weight on a dead input unit (large RTN error); gemm's weight is a multiple of its
    per-channel scale (int4 RTN reproduces it exactly)."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {
        "mm1": rng.standard_normal((16, 32)).astype(np.float32) / 4,
        "mm2": rng.standard_normal((32, 32)).astype(np.float32) / 6,
        "gemm": rng.standard_normal((8, 32)).astype(np.float32) / 6,
    }
    # An outlier on an input unit that is always 0 (w1[:, 0] = 0): no effect on the float output, but
    # the per-channel scale becomes 40/7 and RTN rounds every other weight of mm2 to 0.
    w["mm1"][:, 0] = 0.0
    w["mm2"][0] = 40.0
    grid = rng.integers(-7, 8, size=(8, 32)).astype(np.float32)
    grid[:, 0] = 7.0  # every output channel's max is 7 * 0.05
    w["gemm"] = grid * 0.05
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3"], ["y"], name="gemm", transB=1),
    ]
    inits: list[np.ndarray | tuple[str, np.ndarray]] = [("w1", w["mm1"]), ("w2", w["mm2"]), ("w3", w["gemm"])]
    return to_ir(make_model(nodes, [tensor("x", [4, 16])], [tensor("y", [4, 8])], inits))


def _feeds(n: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(n)]


def test_relative_error_is_pooled_norm_ratio_and_max_over_outputs() -> None:
    ref = [{"a": np.array([3.0, 4.0], np.float32), "i": np.array([1])}]
    out = [{"a": np.array([3.3, 4.4], np.float32), "i": np.array([7])}]  # integer outputs are ignored
    assert relative_error(ref, out) == pytest.approx(0.1, rel=1e-6)
    # Two samples pool: sqrt((0.25 + 0) / (25 + 25)).
    ref2 = [{"a": np.array([3.0, 4.0])}, {"a": np.array([4.0, 3.0])}]
    out2 = [{"a": np.array([3.0, 4.5])}, {"a": np.array([4.0, 3.0])}]
    assert relative_error(ref2, out2) == pytest.approx(np.sqrt(0.25 / 50))
    # The model's error is the worst output's.
    ref3 = [{"a": np.ones(4), "b": np.ones(4)}]
    out3 = [{"a": np.ones(4) * 1.01, "b": np.ones(4) * 1.2}]
    assert relative_error(ref3, out3) == pytest.approx(0.2)


@pytest.mark.parametrize(("bits", "group_size"), [(4, 0), (4, 8), (8, 0)])
def test_layer_errors_match_full_interpreter_runs(bits: int, group_size: int) -> None:
    model = _mlp()
    feeds = _feeds()
    layers = find_layers(model)
    before = ir.serde.serialize_model(model).SerializeToString()
    errors = layer_errors(model, layers, rtn(bits, group_size), feeds)
    assert ir.serde.serialize_model(model).SerializeToString() == before  # the model is untouched
    ref = [run(model, f) for f in feeds]
    for layer, err in zip(layers, errors):
        copy = quantized_copy(model, [layer], rtn(bits, group_size))
        assert [n.op_type for n in copy.graph].count("DequantizeLinear") == 1
        brute = relative_error(ref, [run(copy, f) for f in feeds])
        assert err == pytest.approx(brute, rel=1e-6, abs=1e-9)
    by_name = dict(zip([ly.name for ly in layers], errors))
    if bits == 4 and group_size == 0:
        assert by_name["mm2"] > 5 * by_name["mm1"]  # the outlier layer dominates
        assert by_name["gemm"] < 1e-6  # exactly representable weights
    assert by_name["mm2"] > 0


def test_cached_runs_recompute_only_what_depends_on_the_change(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp()
    ref = FloatReference(model, _feeds(2))
    calls: list[str] = []
    real = diagnosis._run_node

    def counting(node: ir.Node, env: dict[ir.Value, np.ndarray]) -> list[np.ndarray]:
        calls.append(node.op_type)
        return real(node, env)

    monkeypatch.setattr(diagnosis, "_run_node", counting)
    last = find_layers(model)[-1]
    ref.error(quantized_copy(model, [last], rtn(4)))
    assert calls == ["DequantizeLinear", "Gemm"] * 2  # per sample: the weight DQ and the layer only
    calls.clear()
    assert ref.error(model.clone()) == 0.0
    assert calls == []


def test_accuracy_guard_keeps_the_worst_layers_until_within_tolerance() -> None:
    model = _mlp()
    feeds = _feeds()
    layers = find_layers(model)
    errors = layer_errors(model, layers, rtn(4), feeds)
    result = accuracy_guard(model, layers, rtn(4), feeds, tolerance=0.5 * max(errors), errors=errors)
    assert result.full_error > result.tolerance
    assert result.kept_names == ["mm2"]
    assert result.error <= result.tolerance and result.within_tolerance
    # The reported error is that of the model with everything but the kept layers quantized.
    rest = [ly for ly in layers if ly.name not in result.kept_names]
    ref = [run(model, f) for f in feeds]
    copy = quantized_copy(model, rest, rtn(4))
    assert result.error == pytest.approx(relative_error(ref, [run(copy, f) for f in feeds]), rel=1e-6)
    assert "kept 1 layer(s) in fp32" in result.summary()


def test_accuracy_guard_extremes() -> None:
    model = _mlp()
    feeds = _feeds(2)
    layers = find_layers(model)
    loose = accuracy_guard(model, layers, rtn(8), feeds, tolerance=1.0)
    assert loose.kept == [] and loose.error == loose.full_error <= 1.0
    assert loose.evaluations == 1
    # Tolerance 0: only the exactly representable layer may be quantized.
    strict = accuracy_guard(model, layers, rtn(4), feeds, tolerance=0.0)
    assert sorted(strict.kept_names) == ["mm1", "mm2"]
    assert strict.error < 1e-6
    with pytest.raises(PassError, match="tolerance must be >= 0"):
        accuracy_guard(model, layers, rtn(4), feeds, tolerance=-1.0)


def test_layers_of_another_model_and_missing_samples_are_rejected() -> None:
    model, other = _mlp(), _mlp()
    with pytest.raises(PassError, match="mm1 is not a node of the model"):
        layer_errors(model, find_layers(other)[:1], rtn(4), _feeds(1))
    with pytest.raises(PassError, match="at least one calibration sample"):
        layer_errors(model, find_layers(model), rtn(4), [])


def test_conv_layers() -> None:
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    model = to_ir(make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], [("w1", w1), ("w2", w2)]))
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(2)]
    layers = find_layers(model)
    errs4 = layer_errors(model, layers, rtn(4), feeds)
    errs8 = layer_errors(model, layers, rtn(8), feeds)
    assert all(0 < e8 < e4 for e4, e8 in zip(errs4, errs8))  # int8 is closer than int4 on every layer


def _cost_model() -> tuple[ir.Model, list[dict[str, np.ndarray]]]:
    """A 3x3 depthwise conv (kept in float by the x86 cost check), then two 1x1 convs; and 6 feeds."""
    rng = np.random.default_rng(5)
    inits: list[np.ndarray | tuple[str, np.ndarray]] = [
        ("w_dw", rng.standard_normal((256, 1, 3, 3)).astype(np.float32)),
        ("w_pw", rng.standard_normal((256, 256, 1, 1)).astype(np.float32) / 16),
        ("w_pw2", rng.standard_normal((256, 256, 1, 1)).astype(np.float32) / 16),
    ]
    inits[2][1][:, 0] = 30.0  # a dead input unit (w_pw[0] = 0) with outlier weights: large int4 error
    inits[1][1][0] = 0.0
    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["a"], name="dw", group=256, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_pw"], ["b"], name="pw"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w_pw2"], ["y"], name="pw2"),
    ]
    model = to_ir(make_model(nodes, [tensor("x", [1, 256, 14, 14])], [tensor("y", [1, 256, 14, 14])], inits))
    infer_shapes(model)
    feeds = [{"x": rng.standard_normal((1, 256, 14, 14)).astype(np.float32)} for _ in range(6)]
    return model, feeds


def test_plan_quantization_combines_cost_check_diagnosis_and_guard() -> None:
    model, feeds = _cost_model()
    layers = find_layers(model)
    plain = plan_quantization(model, layers, rtn(4), feeds, target="x86")
    assert [ly.name for ly in plain.quantize] == ["pw", "pw2"]
    assert [(ly.name, note.split(":")[0]) for ly, note in plain.kept] == [("dw", "cost model")]
    assert plain.errors == {} and plain.guard is None
    assert len(plan_quantization(model, layers, rtn(4), feeds, target="reference").quantize) == 3
    diagnosed = plan_quantization(model, layers, rtn(4), feeds, target="x86", diagnose=True, samples=2)
    assert sorted(diagnosed.errors) == ["pw", "pw2"] and diagnosed.errors["pw2"] > diagnosed.errors["pw"] > 0
    guarded = plan_quantization(model, layers, rtn(4), feeds, target="x86", tolerance=diagnosed.errors["pw2"] / 2)
    assert [ly.name for ly in guarded.quantize] == ["pw"]
    assert [ly.name for ly, _ in guarded.kept] == ["dw", "pw2"]
    assert guarded.guard is not None and guarded.kept[1][1] == guarded.guard.note
    assert guarded.guard.error <= guarded.guard.tolerance < guarded.guard.full_error


def test_plan_quantization_diagnoses_and_guards_weight_only_layers() -> None:
    """cost_kept_weight_only: the layer the cost check keeps in float compute becomes weight-only; its error is
    measured with its weights rounded (weight_only_one), and the guard can return it to fp32 like any other."""
    model, feeds = _cost_model()
    layers = find_layers(model)
    with pytest.raises(PassError, match="weight-only layers need a weight_only_one rewrite"):
        plan_quantization(model, layers, rtn(8), feeds, target="x86", cost_kept_weight_only=True)
    plain = plan_quantization(
        model, layers, rtn(8), feeds, target="x86", weight_only_one=rtn(2), cost_kept_weight_only=True
    )
    assert [(ly.name, note.split(":")[0]) for ly, note in plain.weight_only] == [("dw", "cost model")]
    assert plain.kept == [] and [ly.name for ly in plain.quantize] == ["pw", "pw2"]

    kw = {"target": "x86", "weight_only_one": rtn(2), "cost_kept_weight_only": True, "samples": 2}
    diagnosed = plan_quantization(model, layers, rtn(8), feeds, diagnose=True, **kw)
    assert sorted(diagnosed.errors) == ["dw", "pw", "pw2"]
    # dw's error is that of its 2-bit weights (the weight-only rewrite), not of the 8-bit quantize_one
    [dw] = [ly for ly in layers if ly.name == "dw"]
    assert diagnosed.errors["dw"] == pytest.approx(layer_errors(model, [dw], rtn(2), feeds[:2])[0])
    assert diagnosed.errors["dw"] > 10 * layer_errors(model, [dw], rtn(8), feeds[:2])[0]
    assert diagnosed.errors["pw2"] > diagnosed.errors["dw"] > 10 * diagnosed.errors["pw"]  # pw2: outlier weights

    tolerance = 3 * diagnosed.errors["pw"]  # met once pw2 and the weight-only dw keep fp32 weights
    guarded = plan_quantization(model, layers, rtn(8), feeds, tolerance=tolerance, **kw)
    assert guarded.guard is not None and guarded.guard.kept_names == ["pw2", "dw"]
    assert guarded.weight_only == [] and [ly.name for ly in guarded.quantize] == ["pw"]
    assert [(ly.name, note) for ly, note in guarded.kept] == [("pw2", guarded.guard.note), ("dw", guarded.guard.note)]
    assert guarded.guard.error <= tolerance


def test_guard_scope_weight_only_keeps_only_weight_only_layers() -> None:
    """guard_scope="weight_only": the guard returns only float-compute (weight-only) layers to fp32 weights, never
    an integer layer, even one worse than them; the integer layers' error stays in every measurement."""
    model, feeds = _cost_model()
    layers = find_layers(model)
    kw = {"target": "x86", "weight_only_one": rtn(2), "cost_kept_weight_only": True, "samples": 2}
    diagnosed = plan_quantization(model, layers, rtn(8), feeds, diagnose=True, **kw)
    assert diagnosed.errors["pw2"] > diagnosed.errors["dw"]  # the all-layer guard would keep pw2 first
    tolerance = 3 * diagnosed.errors["pw"]
    scoped = plan_quantization(model, layers, rtn(8), feeds, tolerance=tolerance, guard_scope="weight_only", **kw)
    assert scoped.guard is not None and scoped.guard.kept_names == ["dw"]
    assert [ly.name for ly in scoped.quantize] == ["pw", "pw2"] and scoped.weight_only == []
    # pw2's error is still there: the guard cannot reach the tolerance and says so
    assert not scoped.guard.within_tolerance and scoped.guard.error > diagnosed.errors["pw2"] / 2
    assert ">" in scoped.guard.note
    with pytest.raises(PassError, match="guard_scope must be one of all, weight_only"):
        plan_quantization(model, layers, rtn(8), feeds, tolerance=tolerance, guard_scope="int8", **kw)


def test_plan_measures_the_whole_model_and_its_weights_alone() -> None:
    """Diagnosing measures the model with every candidate rewritten (weight-only ones by weight_only_one) and with
    only the weights rounded (weights_alone_one for the layers to be quantized); the guard's full error is the
    same measurement."""
    model, feeds = _cost_model()
    layers = find_layers(model)
    kw = {"target": "x86", "weight_only_one": rtn(2), "cost_kept_weight_only": True, "samples": 2}
    plain = plan_quantization(model, layers, rtn(8), feeds, **kw)
    assert plain.full_error is None and plain.weights_error is None and plain.summary() == ""
    plan = plan_quantization(model, layers, rtn(8), feeds, diagnose=True, weights_alone_one=rtn(4), **kw)

    def by_name(rewrites: dict[str, Callable]) -> Callable[[ir.Model, QuantLayer], None]:
        return lambda m, layer: rewrites[layer.name](m, layer)

    ref = FloatReference(model, feeds[:2])
    full = ref.error(quantized_copy(model, layers, by_name({"dw": rtn(2), "pw": rtn(8), "pw2": rtn(8)})))
    alone = ref.error(quantized_copy(model, layers, by_name({"dw": rtn(2), "pw": rtn(4), "pw2": rtn(4)})))
    assert plan.full_error == pytest.approx(full, rel=1e-9) and plan.weights_error == pytest.approx(alone, rel=1e-9)
    assert abs(full - alone) > 1e-3  # the two rewrites differ on pw / pw2, so the routing is checked
    assert plan.summary() == (
        f"output error {full:.3g} with every candidate layer rewritten as planned, "
        f"{alone:.3g} with their weights alone (activations in float)"
    )
    guarded = plan_quantization(model, layers, rtn(8), feeds, tolerance=2 * plan.errors["pw"], **kw)
    assert guarded.guard is not None and guarded.full_error == guarded.guard.full_error == pytest.approx(full)
    assert guarded.weights_error is None  # no weights_alone_one given
    assert guarded.summary().endswith(f", {guarded.guard.error:.3g} after the accuracy guard")


def test_quantize_int8_diagnosis_splits_weights_from_activations_in_the_report(tmp_path) -> None:
    """End to end, against two compiled models on the diagnosis samples: the full error is the quantized model's
    (every layer integer, nothing kept), the weights-alone error that of the model with every layer an int8
    weight-only layer (the same 8-bit round-to-nearest codes)."""
    import compiler
    from tests.helpers import mlp_proto

    proto = mlp_proto()
    rng = np.random.default_rng(5)
    name = proto.graph.input[0].name
    shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    samples = [(rng.standard_normal(shape).astype(np.float32),) for _ in range(8)]
    base = {"cost_check": False, "reduce_range": False}

    def build(**options: object) -> compiler.CompiledModel:
        return compiler.compile(
            proto, target="onnx", passes=["quantize_int8"], calibration=samples, measure=False,
            pass_options={"quantize_int8": {**base, **options}, "compact_storage": {"scales": False, "biases": False}},
        )  # fmt: skip

    diagnosed, weights_only = build(diagnose=True), build(layers={"*": "weight_only"})
    (finding,) = diagnosed.report.findings
    assert finding.startswith("quantize_int8: output error") and "with their weights alone" in finding
    assert "findings:" in str(diagnosed.report) and finding in str(diagnosed.report)
    assert compiler.load(diagnosed.save(tmp_path / "m.cacc")).report.findings == [finding]
    feeds = [{name: x} for (x,) in samples[: diagnosis.DIAGNOSIS_SAMPLES]]
    reference = [run(to_ir(proto), f) for f in feeds]
    full = relative_error(reference, [run(diagnosed.ir, f) for f in feeds])
    alone = relative_error(reference, [run(weights_only.ir, f) for f in feeds])
    assert 0 < alone < full
    assert finding == (
        f"quantize_int8: output error {full:.3g} with every candidate layer rewritten as planned, "
        f"{alone:.3g} with their weights alone (activations in float)"
    )


def test_report_summarizes_guard_cost_model_and_diagnosis() -> None:
    from compiler.cost import LayerShape, integer_kernel_pays_off
    from compiler.report import Report
    from passes.base import LayerRecord
    from passes.quant.diagnosis import GuardResult

    guard = GuardResult([], error=0.008, full_error=0.031, tolerance=0.01)
    ok, reason = integer_kernel_pays_off(LayerShape.conv(1, 32, 32, (112, 112), (3, 3), groups=32), "x86")
    assert not ok
    records = [
        LayerRecord("a", "MatMul", "quantize_int8", "int8 static", 8, 8, 400, 100, error=0.002),
        LayerRecord("b", "MatMul", "quantize_int8", "kept fp32", bytes_before=400, error=0.02, note=guard.note),
        LayerRecord("dw", "Conv", "quantize_int8", "kept fp32", bytes_before=40, note=reason),
        LayerRecord("dw2", "Conv", "quantize_int8", "int8 weight-only", 8, None, 40, 14, note=reason),
    ]
    text = str(Report(model="m", target="x86", layers=records))
    assert "accuracy guard kept 1 layer(s) in fp32 (model error 0.008 <= 0.01, all quantized 0.031)" in text
    assert "cost model kept 2 layer(s) in float compute (integer kernel estimated not faster; 1 of them with" in text
    assert "largest single-layer error: b 0.02" in text
    assert "depthwise conv: no integer dot-product speedup" in text  # the layer's own note


@pytest.mark.models
def test_guard_reaches_a_tolerance_full_int4_quantization_misses_on_fmnist(real_onnx: Callable) -> None:
    import onnx

    import models

    spec = models.get("fmnist_cnn")
    path, _ = real_onnx("fmnist_cnn")
    model = ir.serde.deserialize_model(onnx.load(str(path)))
    layers = find_layers(model)
    names = [v.name or "" for v in model.graph.inputs]
    calib = [dict(zip(names, s)) for s in spec.calibration_data[:4]]
    held_out = [dict(zip(names, s)) for s in spec.calibration_data[32:48]]
    tolerance = 0.05  # 5 % relative logit error
    result = accuracy_guard(model, layers, rtn(4), calib, tolerance)
    assert result.full_error > tolerance  # int4 RTN of every layer misses it
    assert result.within_tolerance and 0 < len(result.kept) < len(layers)
    # The layers kept are the worst ones, and the choice carries over to samples the guard did not see.
    worst = sorted(zip(result.layer_errors, [ly.name for ly in layers]), reverse=True)[: len(result.kept)]
    assert sorted(result.kept_names) == sorted(name for _, name in worst)
    held = FloatReference(model, held_out)
    guarded = held.error(quantized_copy(model, [ly for ly in layers if ly not in result.kept], rtn(4)))
    assert guarded < held.error(quantized_copy(model, layers, rtn(4)))
