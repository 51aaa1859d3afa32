"""quantize_int8: IR rewrites, options and records, ONNX export that ORT turns into integer kernels,
and exported numerics against the reference interpreter on the quantized IR."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper

import compiler
from backends.onnx import to_standard_onnx
from compiler.cost import COST_NOTE
from compiler.errors import PassError
from compiler.ir.interpreter import run
from passes import quantize_int8
from passes.base import LayerRecord, PassContext
from passes.quant.diagnosis import GUARD_NOTE, relative_error
from passes.quantize_int8 import Int8Options, QuantizeInt8Pass, calibrate, prepare_model, quantize_layers, select_layers
from tests.helpers import make_model, tensor, to_ir


def _cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32) * 0.1
    wg = (rng.standard_normal((10, 16)) * 0.5).astype(np.float32)
    bg = rng.standard_normal(10).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b1"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="residual"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [("w1", w1), ("w2", w2), ("b1", b), ("wg", wg), ("bg", bg)]
    return make_model(nodes, [tensor("x", [1, 8, 12, 12])], [tensor("y", [1, 10])], inits)


def _mlp3d() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((32, 64)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((64, 32)) * 0.2).astype(np.float32)
    b1 = rng.standard_normal(64).astype(np.float32) * 0.1
    b2 = rng.standard_normal(32).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="fc2_bias"),
    ]
    inits = [("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)]
    return make_model(nodes, [tensor("x", [1, 16, 32])], [tensor("y", [1, 16, 32])], inits)


def _samples(shape: tuple[int, ...], n: int, seed: int = 2) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape).astype(np.float32),) for _ in range(n)]


def _optimized_ops(proto: onnx.ModelProto, tmp_path: Path) -> Counter[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def _largest_step(model: compiler.CompiledModel) -> float:
    """The largest activation quantization step in the model (one rounding-tie difference)."""
    scales = [
        float(v.const_value.numpy().max())  # type: ignore[union-attr]
        for n in model.ir.graph
        if n.op_type == "QuantizeLinear"
        for v in n.inputs[1:2]
        if v is not None and v.const_value is not None
    ]
    return max(scales)


@pytest.mark.parametrize(
    ("builder", "shape", "integer_ops"),
    [(_cnn, (1, 8, 12, 12), {"QLinearConv", "QLinearMatMul"}), (_mlp3d, (1, 16, 32), {"MatMulIntegerToFloat"})],
)
def test_onnx_export_runs_integer_kernels_and_matches_reference(builder, shape, integer_ops, tmp_path) -> None:
    calibration = _samples(shape, 16)
    options = {"quantize_int8": {"cost_check": False}}  # every layer integer, even where it does not pay off
    cm = compiler.compile(
        builder(), target="onnx", passes=["quantize_int8"], calibration=calibration, pass_options=options, measure=False
    )
    proto = to_standard_onnx(cm.ir)
    ops = _optimized_ops(proto, tmp_path)
    for op in integer_ops:
        assert ops[op] >= 1, ops
    assert not ops["Conv"] and not ops["Gemm"] and not ops["MatMul"], ops  # every layer runs integer
    # Numerics: ORT's integer kernels vs the reference interpreter on the quantized IR.
    name = cm.input_names[0]
    step = _largest_step(cm)
    for (x,) in _samples(shape, 4, seed=7):
        got = cm(x)
        ref = run(cm.ir, {name: x})[cm.output_names[0]]
        assert np.max(np.abs(got - ref)) <= 1.5 * step, (np.max(np.abs(got - ref)), step)
    # And the quantized model is close to the float one.
    assert cm.report.max_abs_error is not None and cm.report.max_abs_error < 0.1 * np.abs(ref).max() + 4 * step
    records = {r.node: r for r in cm.report.layers}
    assert all(r.weight_bits == 8 and r.bytes_after < r.bytes_before / 3 for r in records.values()), records


def test_ir_form_per_channel_weights_and_output_qdq_after_relu() -> None:
    model = to_ir(_cnn())
    pass_ = QuantizeInt8Pass(PassContext(calibration=[{"x": s[0]} for s in _samples((1, 8, 12, 12), 4)]))
    pass_(model)
    g = model.graph
    conv1 = next(n for n in g if n.name == "conv1")
    w_dq = conv1.inputs[1].producer()  # type: ignore[union-attr]
    assert w_dq is not None and w_dq.op_type == "DequantizeLinear"
    assert w_dq.inputs[0].dtype.name == "INT8" and w_dq.inputs[1].shape.dims == (16,)  # type: ignore[union-attr]
    # relu1's output is quantized (Conv -> Relu -> Q: ORT's QLinearConv), and conv2 and the residual read it.
    relu_out = next(n for n in g if n.name == "relu1").outputs[0]
    assert {u.node.op_type for u in relu_out.uses()} == {"QuantizeLinear"}
    # Gemm became MatMul + Add; its 2-D output is quantized before the bias.
    fc = next(n for n in g if n.name == "fc")
    assert fc.op_type == "MatMul"
    assert [u.node.op_type for u in fc.outputs[0].uses()] == ["QuantizeLinear"]
    assert [r.node for r in pass_.context.layers] == ["conv1", "conv2", "fc"]


@pytest.mark.parametrize("target", ["x86", "arm", "cuda"])
def test_tvm_targets_get_no_output_qdq(target: str) -> None:
    """The TVM backends' integer kernels write float: only layer inputs are quantized, so the residual Add
    reads relu1's float output and the Gemm's bias Add reads the MatMul's (with ORT's QDQ both read a DQ)."""
    model = to_ir(_cnn())
    feeds = [{"x": s[0]} for s in _samples((1, 8, 12, 12), 4)]
    options = {"quantize_int8": {"cost_check": False}}
    QuantizeInt8Pass(PassContext(calibration=feeds, target=target, options=options))(model)
    g = model.graph
    relu_out = next(n for n in g if n.name == "relu1").outputs[0]
    assert sorted(u.node.op_type for u in relu_out.uses()) == ["Add", "QuantizeLinear"]  # conv2's input Q
    fc = next(n for n in g if n.name == "fc")
    assert [u.node.op_type for u in fc.outputs[0].uses()] == ["Add"]
    assert sum(n.op_type == "QuantizeLinear" for n in g) == 3  # the data inputs of conv1, conv2, fc


def test_prepare_model_is_exact() -> None:
    for builder, shape in ((_cnn, (1, 8, 12, 12)), (_mlp3d, (1, 16, 32))):
        model = to_ir(builder())
        (x,) = _samples(shape, 1)[0]
        before = run(model, {"x": x})["y"]
        assert prepare_model(model)
        np.testing.assert_allclose(run(model, {"x": x})["y"], before, rtol=1e-5, atol=1e-5)
        assert not any(n.op_type == "Gemm" for n in model.graph)


def test_prepare_model_rewrites_a_gemm_with_beta_and_a_run_time_c_exactly() -> None:
    """``beta * C`` of a run-time C becomes its own Mul before the bias Add: the same products and sums as the
    Gemm, so the rewrite is bit-exact (it used to be refused with a PassError)."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1, beta=0.5)]
    inputs = [tensor("x", [4, 16]), tensor("c", [4, 8])]
    w = rng.standard_normal((8, 16)).astype(np.float32)
    model = to_ir(make_model(nodes, inputs, [tensor("y", [4, 8])], [("w", w)]))
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32), "c": rng.standard_normal((4, 8)).astype(np.float32)}
    before = run(model, feeds)["y"]
    assert prepare_model(model)
    assert [n.op_type for n in model.graph] == ["MatMul", "Mul", "Add"]
    np.testing.assert_array_equal(run(model, feeds)["y"], before)


def test_skip_overrides_and_tiny_layers_are_recorded() -> None:
    model = to_ir(_cnn())
    feeds = [{"x": s[0]} for s in _samples((1, 8, 12, 12), 4)]
    options = {"skip": ["conv2"], "layers": {"fc": "fp32", "conv*": {"method": "mse"}}, "min_weight_elements": 100}
    pass_ = QuantizeInt8Pass(PassContext(options={"quantize_int8": options}, calibration=feeds))
    pass_(model)
    records = {r.node: r for r in pass_.context.layers}
    assert records["conv2"].action == "kept fp32" and "skip" in records["conv2"].note
    assert records["fc"].action == "kept fp32" and "override" in records["fc"].note
    assert records["conv1"].weight_bits == 8 and "mse" in records["conv1"].action
    conv2 = next(n for n in model.graph if n.name == "conv2")
    assert conv2.inputs[1].const_value is not None  # still the float weight

    tiny = QuantizeInt8Pass(PassContext(options={"quantize_int8": {"min_weight_elements": 10_000}}, calibration=feeds))
    tiny(to_ir(_cnn()))
    assert all("fewer than 10000 elements" in r.note for r in tiny.context.layers)


@pytest.mark.parametrize(("target", "vnni", "seven_bit"), [("x86", False, True), ("x86", True, False),
                                                           ("onnx", True, True), ("arm", False, False)])  # fmt: skip
def test_default_weight_range_follows_the_target_and_the_hosts_vnni(
    monkeypatch: pytest.MonkeyPatch, target: str, vnni: bool, seven_bit: bool
) -> None:
    """7-bit weights by default where a u8s8 kernel could saturate full-range ones: ONNX Runtime, and x86 on a host
    without VNNI (the x86 target compiles for the host; vpdpbusd is exact for any weight)."""
    monkeypatch.setattr(quantize_int8, "host_has_vnni", lambda: vnni)
    model = to_ir(_cnn())
    feeds = [{"x": s[0]} for s in _samples((1, 8, 12, 12), 4)]
    options = {"quantize_int8": {"cost_check": False}}
    QuantizeInt8Pass(PassContext(options=options, calibration=feeds, target=target))(model)
    amax = max(
        int(np.abs(n.inputs[1].producer().inputs[0].const_value.numpy()).max())  # type: ignore[union-attr]
        for n in model.graph
        if n.name in ("conv1", "conv2", "fc")
    )
    assert amax == (63 if seven_bit else 127)


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_per_layer_reduce_range_override(rounding: str) -> None:
    """7-bit weights everywhere but the layers overridden to full 8-bit ones (rounded either way)."""
    model = to_ir(_cnn())
    feeds = [{"x": s[0]} for s in _samples((1, 8, 12, 12), 4)]
    options = {
        "reduce_range": True,
        "weight_rounding": rounding,
        "cost_check": False,
        "layers": {"fc": {"reduce_range": False}},
    }
    pass_ = QuantizeInt8Pass(PassContext(options={"quantize_int8": options}, calibration=feeds, target="x86"))
    pass_(model)
    codes = {}
    for node in model.graph:
        if node.name in ("conv1", "conv2", "fc"):
            dq = node.inputs[1].producer()
            codes[node.name] = dq.inputs[0].const_value.numpy()  # type: ignore[union-attr]
    for name in ("conv1", "conv2"):
        assert codes[name].min() >= -64 and codes[name].max() <= 63 and np.abs(codes[name]).max() >= 63, name
    assert np.abs(codes["fc"]).max() == 127
    actions = {r.node: r.action for r in pass_.context.layers}
    assert "7-bit w" in actions["conv1"] and "7-bit w" not in actions["fc"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "kl"}, "unknown method 'kl'"),
        ({"colour": 1}, "unknown option"),
        ({"layers": {"fc": {"bits": 4}}}, "unknown keys"),
        ({"layers": {"fc": {"reduce_range": "no"}}}, r"\['reduce_range'\] must be true or false, got 'no'"),
        ({"op_types": ["Relu"]}, "not quantizable"),
        ({"kept_weights": "int4"}, "unknown kept_weights 'int4'; known: fp32, int8"),
        ({"layers": {"fc": "int8"}}, "must be 'fp32', 'weight_only' or a dict, got 'int8'"),
    ],
)
def test_bad_options(options, message) -> None:
    pass_ = QuantizeInt8Pass(PassContext(options={"quantize_int8": options}, calibration=[{"x": np.zeros(1)}]))
    with pytest.raises(PassError, match=message):
        pass_(to_ir(_cnn()))


def test_needs_calibration() -> None:
    with pytest.raises(PassError, match="calibration"):
        QuantizeInt8Pass(PassContext())(to_ir(_cnn()))


def test_quantize_layers_on_a_subset_reuses_statistics() -> None:
    model = to_ir(_mlp3d())
    opts = Int8Options(method="minmax")
    prepare_model(model, opts)
    layers, _ = select_layers(model, opts)
    feeds = [{"x": s[0]} for s in _samples((1, 16, 32), 8)]
    stats = calibrate(model, layers, feeds, opts)
    (x,) = _samples((1, 16, 32), 1, seed=9)[0]
    full = run(model, {"x": x})["y"]
    errors = []
    for keep in ("fc1", "fc2"):
        clone = model.clone()
        subset = [ly for ly in select_layers(clone, opts)[0] if ly.name == keep]
        records = quantize_layers(clone, subset, stats, opts)
        assert [r.node for r in records] == [keep]
        quantized = {n.name for n in clone.graph if n.op_type == "MatMul" and n.inputs[1].producer() is not None}
        assert quantized == {keep}
        errors.append(float(np.abs(run(clone, {"x": x})["y"] - full).max()))
    assert all(0 < e < 0.05 * np.abs(full).max() for e in errors), errors


def test_embedding_tables_become_int8_rows() -> None:
    rng = np.random.default_rng(3)
    table = rng.standard_normal((500, 64)).astype(np.float32)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["y"], name="proj"),
    ]
    proto = make_model(
        nodes, [tensor("ids", [1, 6], onnx.TensorProto.INT64)], [tensor("y", [1, 6, 8])], [("table", table), ("w", w)]
    )
    ids = np.array([[0, 5, 499, 17, 5, 42]], np.int64)
    cm = compiler.compile(proto, target="onnx", passes=["quantize_int8"], calibration=[(ids,)], measure=False)
    record = next(r for r in cm.report.layers if r.node == "embed")
    assert record.action == "int8 weight-only (per-row table)" and record.bytes_after < record.bytes_before / 3.5
    rows = run(cm.ir, {"ids": ids}, keep=["table_rows"])
    scale = np.abs(table).max(axis=1, keepdims=True) / 127
    expected = np.rint(table / scale)[ids[0]] * scale[ids[0]]
    np.testing.assert_allclose(rows["table_rows"].reshape(6, 64) * scale[ids[0]], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cm(ids), rows["y"], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------- diagnosis, guard, cost


def _sensitive_mlp(rows: int = 8, width: int = 64, out: int = 32) -> onnx.ModelProto:
    """x[rows,width] -> fc1 -> Relu -> fc2 -> Relu -> fc3 -> y[rows,out]. fc2 has a huge weight on an input unit that
    fc1 never activates (no effect in float), so its per-channel int8 scale rounds every other weight to 0:
    fc2 is by far the most sensitive layer."""
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w1[:, 0] = 0.0
    w2 = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w2[0] = 60.0
    w3 = (rng.standard_normal((width, out)) / np.sqrt(width)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3"),
    ]
    inits = [("w1", w1), ("w2", w2), ("w3", w3)]
    return make_model(nodes, [tensor("x", [rows, width])], [tensor("y", [rows, out])], inits)


def _guarded(options: dict, target: str | None = None) -> tuple[ir.Model, dict[str, LayerRecord], list[dict]]:
    feeds = [{"x": s[0]} for s in _samples((8, 64), 8)]
    model = to_ir(_sensitive_mlp())
    pass_ = QuantizeInt8Pass(PassContext(options={"quantize_int8": options}, calibration=feeds, target=target))
    pass_(model)
    return model, {r.node: r for r in pass_.context.layers}, feeds


def _model_error(model: ir.Model, feeds: list[dict]) -> float:
    """relative_error of ``model`` against the float model, with plain reference-interpreter runs."""
    float_model = to_ir(_sensitive_mlp())
    return relative_error([run(float_model, f) for f in feeds], [run(model, f) for f in feeds])


def test_diagnose_fills_every_layer_error_and_finds_the_sensitive_layer() -> None:
    _, records, feeds = _guarded({"diagnose": True, "diagnosis_samples": 3})
    assert all(r.weight_bits == 8 for r in records.values()), records  # diagnosis alone keeps nothing
    errors = {name: r.error for name, r in records.items()}
    assert all(e is not None and e > 0 for e in errors.values()), errors
    assert max(errors, key=lambda n: errors[n] or 0.0) == "fc2", errors
    assert errors["fc2"] > 10 * max(errors["fc1"], errors["fc3"]), errors  # type: ignore[operator]
    # fc2's error is what quantizing fc2 alone does (plain interpreter runs on the 3 diagnosis samples).
    only = to_ir(_sensitive_mlp())
    opts = Int8Options()
    layers, _ = select_layers(only, opts)
    stats = calibrate(only, layers, feeds, opts)
    quantize_layers(only, [ly for ly in layers if ly.name == "fc2"], stats, opts)
    assert _model_error(only, feeds[:3]) == pytest.approx(errors["fc2"], rel=1e-4)


def test_tolerance_keeps_the_worst_layer_in_fp32_and_meets_the_bound() -> None:
    tolerance = 0.03
    unguarded, _, feeds = _guarded({})
    assert _model_error(unguarded, feeds[:4]) > tolerance  # without the guard the bound is missed
    model, records, _ = _guarded({"tolerance": tolerance})
    assert records["fc2"].action == "kept fp32" and records["fc2"].note.startswith(GUARD_NOTE), records["fc2"]
    assert records["fc2"].error is not None and records["fc2"].error > tolerance
    assert records["fc1"].weight_bits == 8 and records["fc3"].weight_bits == 8
    fc2 = next(n for n in model.graph if n.name == "fc2")
    assert fc2.inputs[1].const_value is not None and fc2.inputs[0].producer().op_type == "Relu"  # type: ignore[union-attr]
    assert _model_error(model, feeds[:4]) <= tolerance  # measured on the diagnosis samples
    assert _model_error(model, feeds[4:]) <= 2 * tolerance  # and close on held-out ones


def _cost_model() -> onnx.ModelProto:
    """A 3x3 depthwise conv (kept on CPU targets), then a big [128,256]x[256,256] MatMul (quantized) and a
    tiny [128,256]x[256,4] one (kept: quantize/dequantize overhead dominates)."""
    rng = np.random.default_rng(6)
    wd = (rng.standard_normal((64, 1, 3, 3)) * 0.3).astype(np.float32)
    wb = (rng.standard_normal((256, 256)) * 0.06).astype(np.float32)
    wt = (rng.standard_normal((256, 4)) * 0.06).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["img", "wd"], ["c"], name="dw", group=64, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["img_out"], name="relu0"),
        helper.make_node("MatMul", ["x", "wb"], ["h"], name="big"),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("MatMul", ["r", "wt"], ["y"], name="tiny"),
    ]
    return make_model(
        nodes,
        [tensor("img", [1, 64, 56, 56]), tensor("x", [16, 256])],
        [tensor("img_out", [1, 64, 56, 56]), tensor("y", [16, 4])],
        [("wd", wd), ("wb", wb), ("wt", wt)],
    )


def _cost_feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(8)
    return [
        {"img": rng.standard_normal((1, 64, 56, 56)).astype(np.float32), "x": rng.standard_normal((16, 256))}
        for _ in range(n)
    ]


@pytest.mark.parametrize("target", ["onnx", "x86"])
def test_cost_check_keeps_depthwise_and_tiny_layers_in_float(target) -> None:
    feeds = [{k: v.astype(np.float32) for k, v in f.items()} for f in _cost_feeds(2)]
    model = to_ir(_cost_model())
    pass_ = QuantizeInt8Pass(PassContext(calibration=feeds, target=target))
    pass_(model)
    records = {r.node: r for r in pass_.context.layers}
    assert records["big"].weight_bits == 8, records["big"]
    # "tiny" reads an intermediate value: without shape inference the cost model could not see its size.
    assert records["tiny"].action == "kept fp32" and "overhead dominates" in records["tiny"].note, records["tiny"]
    assert records["dw"].action == "kept fp32" and "depthwise" in records["dw"].note, records["dw"]
    assert all(records[n].note.startswith(COST_NOTE) and f"on {target}" in records[n].note for n in ("dw", "tiny"))
    kept_inputs = [n.inputs[1].const_value for n in model.graph if n.name in ("dw", "tiny")]
    assert all(v is not None for v in kept_inputs)  # still float weights
    # The check is off by default on cuda (it would keep nearly every layer) and when disabled.
    for context in (
        PassContext(calibration=feeds, target="cuda"),
        PassContext(calibration=feeds, target=target, options={"quantize_int8": {"cost_check": False}}),
    ):
        other = QuantizeInt8Pass(context)
        other(to_ir(_cost_model()))
        assert all(r.weight_bits == 8 for r in other.context.layers), other.context.layers


def _weight_only_checks(model: ir.Model, records: dict[str, LayerRecord], names: tuple[str, ...]) -> None:
    """``names`` keep float compute on an int8 per-channel weight: a DequantizeLinear of int8 codes (axis = the
    output channels), a float data input, a weight-only record counting the codes and scales."""
    for node in model.graph:
        if node.name not in names:
            continue
        dq = node.inputs[1].producer()
        assert dq is not None and dq.op_type == "DequantizeLinear", node.name
        codes = dq.inputs[0].const_value.numpy()  # type: ignore[union-attr]
        assert codes.dtype == np.int8 and np.abs(codes.astype(np.int32)).max() >= 127, node.name  # full 8 bits
        scale = dq.inputs[1].const_value.numpy()  # type: ignore[union-attr]
        out_axis = 0 if node.op_type == "Conv" else 1
        assert scale.size == codes.shape[out_axis], node.name
        x = node.inputs[0].producer()
        assert x is None or x.op_type != "DequantizeLinear", node.name  # float activations
        r = records[node.name]
        assert r.action.startswith("int8 weight-only") and (r.weight_bits, r.activation_bits) == (8, None), r
        stored = sum(v.const_value.nbytes for v in dq.inputs if v is not None and v.const_value is not None)
        assert r.bytes_after == stored < r.bytes_before / 2, r  # a 3x3 depthwise: 9 codes + a 4-byte scale


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_kept_weights_int8_stores_cost_kept_layers_weight_only(rounding: str) -> None:
    """kept_weights="int8": the layers the cost check keeps in float compute store int8 weights; the model then
    computes the float layers with the dequantized weights (reference interpreter and the x86 build agree)."""
    feeds = [{k: v.astype(np.float32) for k, v in f.items()} for f in _cost_feeds(2)]
    model = to_ir(_cost_model())
    options = {"quantize_int8": {"kept_weights": "int8", "weight_rounding": rounding}}
    pass_ = QuantizeInt8Pass(PassContext(calibration=feeds, target="x86", options=options))
    pass_(model)
    records = {r.node: r for r in pass_.context.layers}
    assert records["big"].activation_bits == 8, records["big"]
    assert all(records[n].note.startswith(COST_NOTE) for n in ("dw", "tiny")), records
    _weight_only_checks(model, records, ("dw", "tiny"))
    ref = run(to_ir(_cost_model()), feeds[0])
    got = run(model, feeds[0])
    rel = np.linalg.norm(got["img_out"] - ref["img_out"]) / np.linalg.norm(ref["img_out"])
    assert 0 < rel < 0.01, rel  # the depthwise conv's weights were rounded, nothing else changed there

    samples = [(f["img"], f["x"].astype(np.float32)) for f in feeds]
    cm = compiler.compile(
        _cost_model(), target="x86", passes=["quantize_int8"], calibration=samples, pass_options=options,
        num_threads=1, measure=False,
    )  # fmt: skip
    expected = run(cm.ir, {"img": samples[0][0], "x": samples[0][1]})
    for name, value in zip(("img_out", "y"), cm(*samples[0])):
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-4)


def test_kept_weights_int8_layers_are_diagnosed_and_guarded() -> None:
    """With kept_weights="int8" the diagnosis measures each weight-only layer's error (its weights rounded, float
    compute), and the accuracy guard can return a weight-only layer to fp32 weights like a quantized one."""
    feeds = [{k: v.astype(np.float32) for k, v in f.items()} for f in _cost_feeds(2)]
    options = {"kept_weights": "int8", "diagnose": True}
    model = to_ir(_cost_model())
    pass_ = QuantizeInt8Pass(PassContext(calibration=feeds, target="x86", options={"quantize_int8": options}))
    pass_(model)
    records = {r.node: r for r in pass_.context.layers}
    _weight_only_checks(model, records, ("dw", "tiny"))
    # dw feeds only img_out: its diagnosed error is img_out's relative error in the finished model
    reference = [{"img_out": run(to_ir(_cost_model()), f)["img_out"]} for f in feeds]
    finished = [{"img_out": run(model, f)["img_out"]} for f in feeds]
    assert records["dw"].error == pytest.approx(relative_error(reference, finished), rel=1e-4)
    errors = {name: records[name].error or 0.0 for name in ("dw", "big", "tiny")}
    assert errors["big"] > errors["tiny"] > errors["dw"] > 0, errors

    # between dw's and tiny's errors: keeping big alone leaves tiny's, keeping big and tiny leaves dw's
    tolerance = (errors["dw"] + errors["tiny"]) / 2
    model = to_ir(_cost_model())
    options = {"kept_weights": "int8", "tolerance": tolerance}
    pass_ = QuantizeInt8Pass(PassContext(calibration=feeds, target="x86", options={"quantize_int8": options}))
    pass_(model)
    records = {r.node: r for r in pass_.context.layers}
    for name in ("big", "tiny"):
        assert records[name].action == "kept fp32" and records[name].note.startswith(GUARD_NOTE), records[name]
    [tiny] = [n for n in model.graph if n.name == "tiny"]
    assert tiny.inputs[1] is not None and tiny.inputs[1].const_value is not None  # fp32 weights again
    _weight_only_checks(model, records, ("dw",))


def test_weight_only_override() -> None:
    """A "weight_only" override: int8 weights and float compute for the matching layer, the rest as usual."""
    model = to_ir(_cnn())
    feeds = [{"x": s[0]} for s in _samples((1, 8, 12, 12), 4)]
    options = {"cost_check": False, "layers": {"conv2": "weight_only"}, "weight_rounding": "gptq"}
    pass_ = QuantizeInt8Pass(PassContext(options={"quantize_int8": options}, calibration=feeds, target="x86"))
    pass_(model)
    records = {r.node: r for r in pass_.context.layers}
    _weight_only_checks(model, records, ("conv2",))
    assert records["conv2"].note == "int8 weights, fp32 compute by a per-layer override"
    assert records["conv1"].activation_bits == 8 and records["fc"].activation_bits == 8, records


def test_report_shows_guard_cost_and_worst_layer_lines() -> None:
    # [128,256] x [256,256] layers pay off on onnx; fc3 ([256,4]) is kept by the cost model; fc2 by the guard.
    options = {"quantize_int8": {"tolerance": 0.03, "diagnose": True}}
    samples = [(s[0],) for s in _samples((128, 256), 6)]
    cm = compiler.compile(
        _sensitive_mlp(128, 256, 4), target="onnx", passes=["quantize_int8"], calibration=samples,
        pass_options=options, measure=False,
    )  # fmt: skip
    records = {r.node: r for r in cm.report.layers}
    assert records["fc1"].weight_bits == 8 and records["fc1"].error is not None
    assert records["fc2"].note.startswith(GUARD_NOTE) and records["fc3"].note.startswith(COST_NOTE), records
    text = str(cm.report)
    assert "accuracy guard kept 1 layer(s) in fp32 (model error" in text, text
    assert "cost model kept 1 layer(s) in float compute (integer kernel estimated not faster)" in text, text
    assert "largest single-layer error: fc2" in text, text


def test_bad_guard_options() -> None:
    for options, message in (({"tolerance": -1.0}, "tolerance"), ({"diagnosis_samples": 0}, "diagnosis_samples")):
        pass_ = QuantizeInt8Pass(PassContext(options={"quantize_int8": options}, calibration=[{"x": np.zeros(1)}]))
        with pytest.raises(PassError, match=message):
            pass_(to_ir(_cnn()))
