"""Public API: compile, CompiledModel (call, export, save/load), report, typed errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
import torch

import compiler
from tests.helpers import mlp_proto, ort_run


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu6(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 16, 16)
    return net, x


@pytest.fixture(scope="module")
def tiny_onnx_target(tiny):
    net, x = tiny
    return compiler.compile(net, (x,), target="onnx", measure=False)


def test_compile_torch_matches_torch(tiny, tiny_onnx_target):
    net, x = tiny
    cm = tiny_onnx_target
    expected = net(x).detach().numpy()
    np.testing.assert_allclose(cm(x.numpy()), expected, rtol=1e-4, atol=1e-5)
    out = cm(x)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert cm.report.max_abs_error is not None and cm.report.max_abs_error < 1e-4
    assert cm.report.relative_error is not None and cm.report.relative_error < 1e-5
    assert cm.report.error_reference == "torch fp32"


def test_report_lists_passes_and_prints_a_table(tiny_onnx_target):
    report = tiny_onnx_target.report
    assert [p.name for p in report.passes] == list(compiler.DEFAULT_PASSES)
    inits = [v.const_value for v in tiny_onnx_target.ir.graph.initializers.values()]
    assert report.parameters == sum(t.size for t in inits)
    assert report.size_bytes == sum(t.nbytes for t in inits)
    # BatchNorm is folded away: the conv and linear weights remain, plus a few scalar constants.
    conv_fc = sum(p.numel() for name, p in TinyNet().named_parameters() if not name.startswith("bn"))
    assert conv_fc <= report.parameters < conv_fc + 16
    text = str(report)
    assert "cacc report: TinyNet" in text
    assert "max abs error" in text
    for name in compiler.DEFAULT_PASSES:
        assert name in text
    json.dumps(report.to_dict())  # JSON-ready


def test_report_gives_the_relative_output_error(tiny):
    """The report's relative error is ||y - y_ref|| / ||y_ref|| on the example inputs (here a ternary model, far
    from fp32), printed beside the max abs error."""
    net, x = tiny
    cm = compiler.compile(net, (x,), target="reference", passes=["quantize_ternary"], measure=False)
    assert any(r.weight_bits == 2 for r in cm.report.layers), cm.report.layers
    expected = net(x).detach().numpy().astype(np.float64)
    got = np.asarray(cm(x.numpy()), np.float64)
    relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert relative > 0.01  # the check below is not one of two zeros
    assert cm.report.relative_error == pytest.approx(relative, rel=1e-5)
    assert cm.report.max_abs_error == pytest.approx(np.abs(got - expected).max(), rel=1e-5)
    assert f"relative {relative:.3g} vs torch fp32" in str(cm.report)


def test_reference_target_and_debug_mode(tiny):
    net, x = tiny
    cm = compiler.compile(net, (x,), target="reference", debug=True, measure=False)
    np.testing.assert_allclose(cm(x.numpy()), net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_wrong_inputs_name_the_signature(tiny_onnx_target):
    cm = tiny_onnx_target
    name = cm.input_names[0]
    with pytest.raises(compiler.InputSignatureError, match=rf"{name}: float32\[1,3,16,16\]"):
        cm(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(compiler.InputSignatureError, match="dtype float64"):
        cm(np.zeros((1, 3, 16, 16)))
    with pytest.raises(compiler.InputSignatureError, match="expected 1 input"):
        cm(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1, np.float32))
    with pytest.raises(compiler.InputSignatureError, match="missing"):
        cm()


def test_export_onnx_passes_checker_and_matches(tmp_path, tiny, tiny_onnx_target):
    net, x = tiny
    path = tiny_onnx_target.export_onnx(tmp_path / "tiny.opt.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    (out,) = ort_run(proto, {proto.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_export_onnx_leaves_out_debug_info_unless_asked(tmp_path, tiny, tiny_onnx_target):
    """By default the file drops intermediate shapes and torch.export's node metadata (stack traces): smaller,
    the same graph, the same outputs in ORT; ``debug_info=True`` keeps both."""
    _net, x = tiny
    lean = tiny_onnx_target.export_onnx(tmp_path / "lean.onnx")
    full = tiny_onnx_target.export_onnx(tmp_path / "full.onnx", debug_info=True)
    lean_p, full_p = onnx.load(str(lean)), onnx.load(str(full))

    def keys(m: onnx.ModelProto) -> set[str]:
        return {p.key for n in m.graph.node for p in n.metadata_props}

    assert full_p.graph.value_info and not lean_p.graph.value_info
    assert "pkg.torch.onnx.stack_trace" in keys(full_p) and not keys(lean_p)
    assert {p.key for p in full_p.graph.metadata_props} and not lean_p.graph.metadata_props  # torch.export's
    assert lean.stat().st_size < full.stat().st_size
    assert [(n.op_type, list(n.input)) for n in lean_p.graph.node] == [
        (n.op_type, list(n.input)) for n in full_p.graph.node
    ]
    feed = {lean_p.graph.input[0].name: x.numpy()}
    np.testing.assert_array_equal(ort_run(lean_p, feed)[0], ort_run(full_p, feed)[0])


def test_strip_debug_info_keeps_cacc_marks_and_visits_subgraphs():
    from onnx import TensorProto, helper

    from backends.onnx import strip_debug_info

    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node("Identity", ["x"], [f"{name}_out"], name=f"{name}_id")
        helper.set_metadata_props(node, {"pkg.torch.onnx.stack_trace": "file.py:1"})
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])
        g = helper.make_graph([node], name, [], [out])
        g.value_info.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]))
        return g

    cast = helper.make_node("Cast", ["x"], ["c"], name="cast", to=TensorProto.FLOAT, doc_string="why")
    helper.set_metadata_props(cast, {"cacc.storage": "float16", "namespace": "m.cast"})
    cond = helper.make_node("If", ["b"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else"))

    def info(name: str, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, [2] if dtype == TensorProto.FLOAT else [])

    graph = helper.make_graph(
        [cast, cond], "g", [info("x"), info("b", TensorProto.BOOL)], [info("y"), info("c")], value_info=[info("c")]
    )
    helper.set_metadata_props(graph, {"pkg.torch.export.ExportedProgram.graph_signature": "# inputs", "cacc.x": "1"})
    proto = helper.make_model(graph)
    helper.set_metadata_props(proto, {"license": "MIT"})
    strip_debug_info(proto)
    assert not proto.graph.value_info and not proto.graph.node[0].doc_string
    assert {p.key for p in proto.graph.metadata_props} == {"cacc.x"}  # the source program's signature: dropped
    assert {p.key: p.value for p in proto.metadata_props} == {"license": "MIT"}  # the model's own: kept
    assert {p.key: p.value for p in proto.graph.node[0].metadata_props} == {"cacc.storage": "float16"}
    for attr in proto.graph.node[1].attribute:
        assert not attr.g.value_info and not attr.g.node[0].metadata_props, attr.name
    assert [o.name for o in proto.graph.output] == ["y", "c"]  # graph inputs / outputs keep their types
    onnx.checker.check_model(proto, full_check=True)


def test_save_load_round_trip(tmp_path, tiny, tiny_onnx_target):
    _net, x = tiny
    path = tiny_onnx_target.save(tmp_path / "tiny.cacc")
    loaded = compiler.load(path)
    np.testing.assert_allclose(loaded(x.numpy()), tiny_onnx_target(x.numpy()), rtol=0, atol=0)
    assert loaded.report.passes_applied == tiny_onnx_target.report.passes_applied
    assert loaded.config.target == "onnx"


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "wrong_format", "future_version", "bad_graph", "missing"],
)
def test_corrupt_saved_files_raise_serialization_error(tmp_path, tiny_onnx_target, damage):
    good = tiny_onnx_target.save(tmp_path / "good.cacc")
    bad = tmp_path / "bad.cacc"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"this is not a zip file at all")
    elif damage in ("wrong_format", "future_version", "bad_graph"):
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
            manifest = json.loads(src.read("manifest.json"))
            model = src.read("model.onnx")
            if damage == "wrong_format":
                manifest["format"] = "something-else"
            if damage == "future_version":
                manifest["version"] = 99
            if damage == "bad_graph":
                model = b"\xff" * 64
            dst.writestr("manifest.json", json.dumps(manifest))
            dst.writestr("model.onnx", model)
    with pytest.raises(compiler.SerializationError) as info:
        compiler.load(bad)
    assert info.value.path == str(bad)


def test_compile_onnx_without_example_inputs():
    proto = mlp_proto()
    cm = compiler.compile(proto, target="onnx", measure=False)
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(cm(x), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert cm.report.error_reference == "reference interpreter on the input model"
    assert cm.report.nodes_after < cm.report.nodes_before  # Identity removed, bias/activation fused


def test_unknown_target_and_pass():
    with pytest.raises(compiler.BackendError, match=r"unknown target 'tpu'.*x86"):
        compiler.compile(mlp_proto(), target="tpu")
    with pytest.raises(compiler.PassError, match=r"unknown pass 'magic'.*fold_constants"):
        compiler.compile(mlp_proto(), target="onnx", passes=["magic"])
