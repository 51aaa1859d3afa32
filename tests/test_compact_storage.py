"""compact_storage: quantized layers' scales and biases stored as float16 behind a storage cast, the bounds on
what it changes, and every consumer of the result (passes, the reference, ONNX export + ORT's integer kernels,
the TVM integer kernels, the report)."""

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
from compiler.ir import infer_shapes, run
from compiler.ir.printer import parameter_count
from passes._utils import Namer, add_initializer, constant, storage_cast, storage_source
from passes.compact_storage import (
    MAX_SCALE_CHANGE,
    MIN_ELEMENTS,
    CompactStoragePass,
    float16_biases,
    float16_scales,
)
from passes.constant_folding import FoldConstantsPass
from tests.helpers import make_model, tensor, to_ir


def _convnet() -> onnx.ModelProto:
    """conv (24 channels, bias) -> relu -> 1x1 conv (32, bias) -> pool -> MatMul + Add (20 outputs)."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((24, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((32, 24, 1, 1)) * 0.3).astype(np.float32)
    wm = (rng.standard_normal((32, 20)) * 0.4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wm"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "bm"], ["y"], name="fc_bias"),
    ]
    inits = [
        ("w1", w1),
        ("b1", rng.standard_normal(24).astype(np.float32) * 0.1),
        ("w2", w2),
        ("b2", rng.standard_normal(32).astype(np.float32) * 0.1),
        ("wm", wm),
        ("bm", rng.standard_normal(20).astype(np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 8, 10, 10])], [tensor("y", [1, 20])], inits)


def _samples(n: int, seed: int) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((1, 8, 10, 10)).astype(np.float32),) for _ in range(n)]


def _compile(
    target: str, compact: bool, kept: str | None = None, storage: dict | None = None
) -> compiler.CompiledModel:
    """_convnet with every layer integer (but ``kept``, left fp32 by an override)."""
    options: dict[str, dict] = {"quantize_int8": {"cost_check": False}}
    if kept:
        options["quantize_int8"]["layers"] = {kept: "fp32"}
    if not compact:
        options["compact_storage"] = {"scales": False, "biases": False}
    if storage is not None:
        options["compact_storage"] = storage
    return compiler.compile(
        _convnet(), target=target, passes=["quantize_int8"], calibration=_samples(8, 1), pass_options=options,
        measure=False,
    )  # fmt: skip


def _side_tensors(model: ir.Model) -> dict[str, ir.Value]:
    """Every weight DequantizeLinear's scale and every layer bias: the value read, by "layer name/role"."""
    found = {}
    for node in model.graph:
        if node.op_type == "DequantizeLinear" and constant(node.inputs[0]) is not None:
            users = [u.name for u, _ in node.outputs[0].uses()]
            found[f"{users[0]}/scale"] = node.inputs[1]
        if node.op_type in ("FusedConv", "FusedMatMul", "Conv") and len(node.inputs) > 2 and node.inputs[2] is not None:
            found[f"{node.name}/bias"] = node.inputs[2]
    return found


def _largest_activation_step(model: ir.Model) -> float:
    """The largest activation quantization step (ORT and the reference may round a tie differently)."""
    return max(float(np.max(constant(n.inputs[1]))) for n in model.graph if n.op_type == "QuantizeLinear")  # type: ignore[arg-type]


def test_float16_scales_move_by_at_most_half_an_ulp_and_never_to_zero() -> None:
    rng = np.random.default_rng(0)
    scales = (10.0 ** rng.uniform(-4, 1, 500)).astype(np.float32)
    half = float16_scales(scales)
    assert half is not None and half.dtype == np.float16
    change = np.abs(half.astype(np.float64) - scales) / scales
    assert change.max() <= MAX_SCALE_CHANGE and change.max() > MAX_SCALE_CHANGE / 4  # rounding, not copying
    # near-dead channels (BN-folded weights ~1e-8): below float16's range, kept nonzero, bounded by the largest
    tiny = np.array([1e-3, 2e-3, 1e-10, 3e-12, 5e-6], np.float32)
    half = float16_scales(tiny)
    assert half is not None and np.all(half > 0)
    assert np.abs(half.astype(np.float64) - tiny).max() <= MAX_SCALE_CHANGE * 2e-3
    # a tensor whose smallest scale cannot be held within the bound stays float32
    assert float16_scales(np.array([1e-6, 1e-5], np.float32)) is None
    assert float16_scales(np.array([1.0, 7e4], np.float32)) is None
    assert float16_scales(np.array([1.0, np.nan], np.float32)) is None
    assert float16_biases(np.array([-3.5, 7e4], np.float32)) is None
    assert float16_biases(np.array([-3.5, 1e-9], np.float32)) is not None


def test_pipeline_ends_with_compact_storage_and_halves_the_side_tensors() -> None:
    full, half = _compile("x86", compact=False), _compile("x86", compact=True)
    assert half.config.passes[-1] == "compact_storage"
    sides_full, sides_half = _side_tensors(full.ir), _side_tensors(half.ir)
    assert sorted(sides_full) == sorted(sides_half)
    assert len([k for k in sides_half if k.endswith("/bias")]) == 3 and len(sides_half) == 6, sorted(sides_half)
    saved = 0
    for key, value in sides_half.items():
        before = constant(sides_full[key])
        src = storage_source(value)
        assert before is not None and src is not None and src.dtype == ir.DataType.FLOAT16, key
        after = constant(value)
        assert after is not None and after.dtype == np.float32 and after.shape == before.shape, key
        np.testing.assert_allclose(after, before, rtol=MAX_SCALE_CHANGE, atol=2.0**-25, err_msg=key)
        saved += before.nbytes // 2
    assert parameter_count(full.ir)[1] - parameter_count(half.ir)[1] == saved
    # the report's per-layer sizes count the float16 scales
    records_full = {r.node: r for r in full.report.layers}
    for record in half.report.layers:
        scale = constant(sides_full[f"{record.node}/scale"])
        assert scale is not None
        assert records_full[record.node].bytes_after - record.bytes_after == scale.nbytes // 2, record.node


def test_storage_casts_survive_fold_constants_and_read_as_constants() -> None:
    model = infer_shapes(to_ir(_convnet()))
    graph = model.graph
    b1 = graph.initializers["b1"]
    stored = add_initializer(graph, "b1_f16", b1.const_value.numpy().astype(np.float16))
    stored_f32 = storage_cast(graph, Namer(graph), stored)
    cast = stored_f32.producer()
    assert cast is not None
    conv1 = next(n for n in graph if n.name == "conv1")
    conv1.replace_input_with(2, stored_f32)
    # a node that reads only constants through the storage cast folds; the cast feeding the conv stays
    two = ir.Value(name="two", const_value=ir.tensor(np.float32(2.0), name="two"))
    graph.register_initializer(two)
    mul = ir.Node("", "Mul", [stored_f32, two], name="doubled")
    mul.outputs[0].name, mul.outputs[0].dtype, mul.outputs[0].shape = "b1x2", ir.DataType.FLOAT, ir.Shape([24])
    graph.insert_after(cast, [mul])
    graph.outputs.append(mul.outputs[0])
    FoldConstantsPass()(model)
    ops = Counter(n.op_type for n in graph)
    assert ops["Cast"] == 1 and ops["Mul"] == 0, ops
    doubled = graph.outputs[-1]
    assert doubled.name == "b1x2" and doubled.const_value is not None
    rounded = b1.const_value.numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(doubled.const_value.numpy(), rounded * 2)
    assert storage_source(conv1.inputs[2]) is stored
    np.testing.assert_array_equal(constant(conv1.inputs[2]), stored.const_value.numpy().astype(np.float32))


def test_export_of_a_fused_matmul_reshapes_its_float16_bias() -> None:
    cm = _compile("x86", compact=True)  # fc is a FusedMatMul here (the onnx target keeps its output Q/DQ)
    proto = to_standard_onnx(cm.ir)
    casts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Cast"}
    assert len(casts) == 6 and {i for n in proto.graph.node for i in n.input} >= set(casts)  # none left dead
    add = next(n for n in proto.graph.node if n.op_type == "Add" and any(i in casts for i in n.input))
    halves = {t.name: t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    bias = halves[casts[next(i for i in add.input if i in casts)].input[0]]
    assert list(bias.dims) == [1, 20]  # at the output's rank, so ORT keeps MatMul + Add apart from Gemm
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    step = _largest_activation_step(cm.ir)
    for (x,) in _samples(2, seed=5):
        ref = run(cm.ir, {"x": x})["y"]
        assert np.max(np.abs(sess.run(None, {"x": x})[0] - ref)) <= 1.5 * step


def test_onnx_export_keeps_integer_kernels_and_matches_the_reference(tmp_path: Path) -> None:
    cm = _compile("onnx", compact=True)
    proto = to_standard_onnx(cm.ir)
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) == 6  # 3 scales, 3 biases: fc's is an Add after its MatMul's output Q/DQ here
    fc_bias = next(n for n in proto.graph.node if n.name == "fc_bias")
    assert fc_bias.input[1] in {c.output[0] for c in casts}, list(fc_bias.input)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 2 and not ops["Conv"] and not ops["Cast"], ops  # ORT folded the casts
    assert not ops["MatMul"] and not ops["Gemm"], ops
    step = _largest_activation_step(cm.ir)
    for (x,) in _samples(3, seed=9):
        got = sess.run(None, {"x": x})[0]
        ref = run(cm.ir, {"x": x})["y"]
        assert np.max(np.abs(got - ref)) <= 1.5 * step, (np.max(np.abs(got - ref)), step)


def test_matmul_bias_adds_are_compacted_only_after_a_quantized_matmul() -> None:
    """An ``Add`` of a ``[N]`` / ``[1, N]`` constant to a quantized MatMul's output (directly or through its
    output Q/DQ) is that layer's bias; a full ``[M, N]`` addend, or a bias after a float MatMul, is not."""
    rng = np.random.default_rng(5)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=1),
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b_vec"], ["a1"], name="direct"),
        helper.make_node("QuantizeLinear", ["m", "s", "zp"], ["mq"], name="q"),
        helper.make_node("DequantizeLinear", ["mq", "s", "zp"], ["md"], name="dq_out"),
        helper.make_node("Add", ["b_row", "md"], ["a2"], name="through_qdq"),
        helper.make_node("Add", ["m", "b_full"], ["a3"], name="full"),
        helper.make_node("MatMul", ["x", "wf"], ["f"], name="float_mm"),
        helper.make_node("Add", ["f", "b_float"], ["a4"], name="float_bias"),
    ]
    inits = [
        ("wq", rng.integers(-127, 128, (32, 24)).astype(np.int8)),
        ("ws", np.full(24, 2.0**-7, np.float32)),  # exact in float16: only the biases move
        ("b_vec", f32(24)),
        ("b_row", f32(1, 24)),
        ("b_full", f32(4, 24)),
        ("wf", f32(32, 24)),
        ("b_float", f32(24)),
        ("s", np.float32(0.05)),
        ("zp", np.uint8(128)),
    ]
    outputs = [tensor(name, [4, 24]) for name in ("a1", "a2", "a3", "a4")]
    model = infer_shapes(to_ir(make_model(nodes, [tensor("x", [4, 32])], outputs, inits)))
    x = f32(4, 32)
    before = run(model, {"x": x})
    CompactStoragePass()(model)
    adds = {n.name: n for n in model.graph if n.op_type == "Add"}
    assert storage_source(adds["direct"].inputs[1]) is not None
    assert storage_source(adds["through_qdq"].inputs[0]) is not None
    assert storage_source(adds["full"].inputs[1]) is None and storage_source(adds["float_bias"].inputs[1]) is None
    after = run(model, {"x": x})
    bias, original = constant(adds["direct"].inputs[1]), inits[2][1]
    assert bias is not None and np.all(np.abs(bias - original) <= 2.0**-11 * np.abs(original))
    np.testing.assert_allclose(after["a1"] - before["a1"], np.broadcast_to(bias - original, (4, 24)), atol=1e-6)
    np.testing.assert_array_equal(after["a3"], before["a3"])


def test_tvm_build_folds_the_casts_into_its_integer_kernels() -> None:
    cm = _compile("x86", compact=True)
    for (x,) in _samples(3, seed=11):
        ref = run(cm.ir, {"x": x})["y"]
        np.testing.assert_allclose(cm(x), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_tensors_with_other_readers_stay_float32() -> None:
    model = _compile("x86", compact=False).ir
    graph = model.graph
    conv2 = next(n for n in graph if n.name == "conv2")
    bias = conv2.inputs[2]
    assert bias is not None and bias.const_value is not None
    probe = ir.Node("", "Identity", [bias], name="probe")  # a reader that is not a layer's bias
    probe.outputs[0].name = "probe_out"
    graph.append(probe)
    graph.outputs.append(probe.outputs[0])
    CompactStoragePass()(model)
    assert conv2.inputs[2] is bias and bias.const_value.dtype == ir.DataType.FLOAT
    conv1 = next(n for n in graph if n.name == "conv1")
    assert storage_source(conv1.inputs[2]) is not None  # the other biases were stored as float16
    for node in graph:
        if node.op_type == "QuantizeLinear":  # activation scales (read by Q at run time too)
            assert node.inputs[1] is not None and storage_source(node.inputs[1]) is None


def test_tensors_under_min_elements_stay_float32() -> None:
    from passes.base import PassContext
    from passes.quantize_int4 import QuantizeWeightOnly

    for n, compacted in ((MIN_ELEMENTS - 1, False), (MIN_ELEMENTS, True)):  # one group: n scales
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
        w = np.random.default_rng(n).standard_normal((32, n)).astype(np.float32)
        model = to_ir(make_model(nodes, [tensor("x", [2, 32])], [tensor("y", [2, n])], [("w", w)], 21))
        QuantizeWeightOnly(PassContext(options={"quantize_weight_only": {"group_size": 32}}))(model)
        assert CompactStoragePass()(model).modified == compacted, n
        dq = next(node for node in model.graph if node.op_type == "DequantizeLinear")
        assert (storage_source(dq.inputs[1]) is not None) == compacted, n


def test_int4_group_scales_are_stored_half_and_packed_float32_for_ort() -> None:
    """Blocked int4 weights (int4 numpy dtypes are not np.integer): their group scales go float16; the onnx
    target's MatMulNBits, whose scales must match its float32 input, gets them back as float32, no cast left."""
    from backends.base import BuildOptions
    from backends.onnx import OnnxBackend
    from passes.base import PassContext
    from passes.pack_matmulnbits import PackMatMulNBits
    from passes.quantize_int4 import QuantizeWeightOnly

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    w = (rng.standard_normal((128, 32)) * 0.3).astype(np.float32)
    model = infer_shapes(to_ir(make_model(nodes, [tensor("x", [2, 128])], [tensor("y", [2, 32])], [("w", w)], 21)))
    QuantizeWeightOnly(PassContext(options={"quantize_weight_only": {"group_size": 32}}))(model)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    before = run(model, {"x": x})["y"]
    scale_before = constant(next(n for n in model.graph if n.op_type == "DequantizeLinear").inputs[1])
    assert CompactStoragePass()(model).modified
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear")
    src = storage_source(dq.inputs[1])
    assert src is not None and src.const_value is not None and src.const_value.dtype == ir.DataType.FLOAT16
    np.testing.assert_allclose(constant(dq.inputs[1]), scale_before, rtol=MAX_SCALE_CHANGE)
    after = run(model, {"x": x})["y"]
    np.testing.assert_allclose(after, before, rtol=0, atol=4 * MAX_SCALE_CHANGE * float(np.abs(before).max()))
    exe = OnnxBackend().build(model.clone(), BuildOptions())  # packs MatMulNBits
    np.testing.assert_allclose(exe.run({"x": x})[0], after, rtol=1e-4, atol=1e-4)
    PackMatMulNBits()(model)
    assert [n.op_type for n in model.graph] == ["MatMulNBits"]
    assert model.graph.node(0).inputs[2].const_value.dtype == ir.DataType.FLOAT  # type: ignore[union-attr]
    assert not any(v.const_value.dtype == ir.DataType.FLOAT16 for v in model.graph.initializers.values())


def test_debug_mode_measures_the_pass_without_bounding_it() -> None:
    """Exempt from the numerics check like the quantizers (its nudges move quantized activations by whole steps),
    but debug mode still records its distance to the float model."""
    cm = compiler.compile(
        _convnet(), target="onnx", passes=["quantize_int8"], calibration=_samples(8, 1), measure=False, debug=True,
        pass_options={"quantize_int8": {"cost_check": False}},
    )  # fmt: skip
    records = {r.name: r for r in cm.report.passes}
    assert CompactStoragePass.numerics_tolerance is None
    assert records["compact_storage"].modified and records["compact_storage"].max_error is not None


def test_a_models_own_float16_weights_still_fold() -> None:
    """An unmarked Cast of a float16 initializer (a model exported with float16 weights) is an ordinary node:
    fold_constants folds it, so the passes after see a float32 initializer they can rewrite."""
    nodes = [
        helper.make_node("Cast", ["w16"], ["w"], to=onnx.TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    w16 = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float16)
    model = to_ir(make_model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 4])], [("w16", w16)]))
    assert storage_source(model.graph.node(0).outputs[0]) is None
    FoldConstantsPass()(model)
    assert [n.op_type for n in model.graph] == ["MatMul"]
    w = model.graph.node(0).inputs[1]
    assert w is not None and w.is_initializer() and w.const_value is not None
    np.testing.assert_array_equal(w.const_value.numpy(), w16.astype(np.float32))


def test_saved_models_keep_their_storage_casts(tmp_path: Path) -> None:
    cm = _compile("x86", compact=True)
    loaded = compiler.load(cm.save(tmp_path / "m.cacc"))
    marked = [n for n in loaded.ir.graph if n.op_type == "Cast" and storage_source(n.outputs[0]) is not None]
    assert len(marked) == 6
    proto = to_standard_onnx(loaded.ir)  # the export still keeps the FusedMatMul bias in float16
    assert any(t.data_type == onnx.TensorProto.FLOAT16 and list(t.dims) == [1, 20] for t in proto.graph.initializer)
    x = _samples(1, seed=3)[0][0]
    np.testing.assert_array_equal(loaded(x), cm(x))


def test_float_weights_store_kept_layers_half_within_the_bound() -> None:
    """Opt-in: a layer kept fp32 stores its weight and bias as float16 (each weight within 2^-11 of the tensor's
    largest), its record counts the bytes and says so; the quantized layers' biases follow ``biases`` alone."""
    exact = _compile("x86", compact=True, kept="conv2", storage={"biases": False})  # float_weights left default
    half = _compile("x86", compact=True, kept="conv2", storage={"float_weights": True, "biases": False})
    conv2 = {cm: next(n for n in cm.ir.graph if n.name == "conv2") for cm in (exact, half)}
    assert all(storage_source(conv2[exact].inputs[i]) is None for i in (1, 2))  # off by default: exact weights
    w, b = (constant(conv2[exact].inputs[i]) for i in (1, 2))
    assert w is not None and b is not None
    for i, before in ((1, w), (2, b)):
        src = storage_source(conv2[half].inputs[i])
        assert src is not None and src.dtype == ir.DataType.FLOAT16, i
        bound = MAX_SCALE_CHANGE * np.abs(before).max()
        np.testing.assert_allclose(constant(conv2[half].inputs[i]), before, rtol=0, atol=bound)
    for node in half.ir.graph:  # biases=False: the integer layers' biases stay float32
        if node.name != "conv2" and node.op_type in ("FusedConv", "FusedMatMul") and len(node.inputs) > 2:
            assert storage_source(node.inputs[2]) is None, node.name
    record = {r.node: r for r in half.report.layers}["conv2"]
    exact_record = {r.node: r for r in exact.report.layers}["conv2"]
    assert record.weight_bits is None and record.bytes_after == exact_record.bytes_after - w.nbytes // 2
    assert record.weight_storage == "float16" and exact_record.weight_storage == ""
    assert any(line.split()[:1] == ["conv2"] and " fp16 " in line for line in str(half.report).splitlines())
    assert parameter_count(exact.ir)[1] - parameter_count(half.ir)[1] == (w.nbytes + b.nbytes) // 2
    for (x,) in _samples(3, seed=13):  # TVM folds the casts into its packed float weights
        ref = run(half.ir, {"x": x})["y"]
        np.testing.assert_allclose(half(x), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_float_weights_export_runs_in_ort_like_the_reference() -> None:
    cm = _compile("onnx", compact=True, kept="conv1", storage={"float_weights": True})
    proto = to_standard_onnx(cm.ir)
    halves = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    casts = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Cast"}
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    (conv1,) = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] not in dequantized]
    assert casts.get(conv1.input[1]) in halves and casts.get(conv1.input[2]) in halves
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    step = _largest_activation_step(cm.ir)
    for (x,) in _samples(3, seed=17):
        assert np.max(np.abs(sess.run(None, {"x": x})[0] - run(cm.ir, {"x": x})["y"])) <= 1.5 * step


def test_float_weights_leave_initializers_that_are_graph_inputs() -> None:
    """An initializer listed as a graph input is a default the caller may override: never replaced."""
    from passes.base import PassContext

    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    w = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    for listed in (False, True):
        model = to_ir(make_model(nodes, [tensor("x", [2, 32])], [tensor("y", [2, 16])], [("w", w)]))
        weight = model.graph.initializers["w"]
        if listed:
            model.graph.inputs.append(weight)
        context = PassContext(options={"compact_storage": {"float_weights": True}})
        assert CompactStoragePass(context)(model).modified is not listed
        read = next(n for n in model.graph if n.op_type == "MatMul").inputs[1]
        src = storage_source(read)
        if listed:
            assert read is weight and src is None
        else:
            assert src is not None and src.dtype == ir.DataType.FLOAT16


def test_option_errors_name_the_pass() -> None:
    from compiler.errors import PassError
    from passes.base import PassContext

    model = to_ir(_convnet())
    for options, message in (
        ({"scale": False}, "unknown option"),
        ({"biases": "maybe"}, "biases must be true or false"),
        ({"float_weights": 1}, "float_weights must be true or false"),
    ):
        with pytest.raises(PassError, match=message) as info:
            CompactStoragePass(PassContext(options={"compact_storage": options}))(model)
        assert info.value.pass_name == "compact_storage"
