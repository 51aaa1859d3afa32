"""Frontends: ONNX (paths, bytes, protos, old opsets, bad input) and torch (modules, fx, dynamic batch)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import compiler
from compiler.frontends import import_model, import_onnx, import_torch
from compiler.ir import run
from tests.helpers import make_model, mlp_proto, ort_run, tensor


def test_onnx_from_path_bytes_and_proto_agree(tmp_path):
    proto = mlp_proto()
    path = tmp_path / "mlp.onnx"
    onnx.save(proto, str(path))
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    expected = ort_run(proto, {"x": x})[0]
    for source in (path, str(path), proto.SerializeToString(), proto):
        model = import_onnx(source)
        np.testing.assert_allclose(run(model, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5)
        assert [v.name for v in model.graph.inputs] == ["x"]
        assert list(model.graph.outputs[0].shape) == [2, 4]


def test_malformed_bytes_raise_frontend_error():
    with pytest.raises(compiler.FrontendError, match="not a valid ONNX model"):
        import_onnx(b"\x08\x07garbage that is not protobuf \xff\xff\xff")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(compiler.FrontendError) as info:
        import_onnx(missing)
    assert info.value.path == str(missing)
    assert "not found" in str(info.value)


def test_truncated_onnx_file(tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(mlp_proto().SerializeToString()[:100])
    with pytest.raises(compiler.FrontendError) as info:
        import_onnx(path)
    assert info.value.path == str(path)


def test_dangling_input_is_malformed():
    proto = make_model(
        [helper.make_node("Relu", ["missing"], ["y"], name="r")],
        [tensor("x", [2])],
        [tensor("y", [2])],
    )
    with pytest.raises(compiler.FrontendError, match="malformed"):
        import_onnx(proto)


def test_all_unsupported_ops_reported_at_once():
    proto = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu"),
            helper.make_node("Frobnicate", ["a"], ["b"], name="frob1", domain="example.custom"),
            helper.make_node("Frobnicate", ["b"], ["c"], name="frob2", domain="example.custom"),
            helper.make_node("Wibble", ["c"], ["y"], name="wib", domain="example.custom"),
        ],
        [tensor("x", [2])],
        [tensor("y", [2])],
        extra_opsets={"example.custom": 1},
    )
    with pytest.raises(compiler.UnsupportedOpError) as info:
        import_onnx(proto)
    err = info.value
    assert sorted(op.op_type for op in err.ops) == ["Frobnicate", "Wibble"]
    frob = next(op for op in err.ops if op.op_type == "Frobnicate")
    assert frob.nodes == ("frob1", "frob2")
    assert "example.custom::Wibble" in str(err) and "wib" in str(err)


def test_old_opset_is_upgraded():
    # opset 11 Clip takes min/max as inputs already; Squeeze takes axes as an attribute (an input from 13).
    proto = make_model(
        [
            helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0], name="unsq"),
            helper.make_node("Squeeze", ["u"], ["s"], axes=[0], name="sq"),
            helper.make_node("Softmax", ["s"], ["y"], axis=1, name="sm"),
        ],
        [tensor("x", [3, 4])],
        [tensor("y", [3, 4])],
        opset=11,
    )
    model = import_onnx(proto)
    assert model.opset_imports[""] >= 13
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"x": x})["y"], ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-6)


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def _eval_cnn() -> SmallCNN:
    torch.manual_seed(0)
    m = SmallCNN().eval()
    with torch.no_grad():  # non-trivial BN statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def test_torch_module_matches_torch():
    m = _eval_cnn()
    x = torch.randn(1, 1, 8, 8)
    model = import_torch(m, (x,))
    got = run(model, {model.graph.inputs[0].name: x.numpy()})
    (out,) = got.values()
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_fx_graph_module_is_accepted():
    m = _eval_cnn()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(1, 1, 8, 8)
    model = import_model(gm, x)
    (out,) = run(model, {model.graph.inputs[0].name: x.numpy()}).values()
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_dynamic_batch_makes_dim0_symbolic():
    m = _eval_cnn()
    model = import_torch(m, (torch.randn(2, 1, 8, 8),), dynamic_batch=True)
    dim0 = model.graph.inputs[0].shape[0]
    assert not isinstance(dim0, int)
    x = torch.randn(3, 1, 8, 8)
    (out,) = run(model, {model.graph.inputs[0].name: x.numpy()}).values()
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_torch_without_example_inputs():
    with pytest.raises(compiler.FrontendError, match="example_inputs"):
        import_torch(_eval_cnn(), None)


def test_unsupported_model_type():
    with pytest.raises(compiler.FrontendError, match="cannot import a list"):
        import_model([1, 2, 3])
