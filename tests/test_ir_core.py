"""IR layer: verifier (every problem at once), printer, shape inference of cacc ops, interpreter errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

import compiler
from compiler.ir import find_problems, format_graph, infer_shapes, op_histogram, run, verify
from compiler.ir.interpreter import check_feeds
from tests.helpers import make_model, mlp_proto, tensor, to_ir


def test_valid_model_has_no_problems():
    model = infer_shapes(to_ir(mlp_proto()))
    assert find_problems(model) == []
    verify(model)


def test_verifier_reports_every_problem():
    model = infer_shapes(to_ir(mlp_proto()))
    nodes = list(model.graph)
    # 1. out of order: move the first node to the end.
    model.graph.remove(nodes[0])
    model.graph.append(nodes[0])
    # 2. a recorded shape that disagrees with what the node computes.
    relu = next(n for n in model.graph if n.op_type == "Relu")
    relu.outputs[0].shape = ir.Shape([7, 7])
    # 3. an unsupported op.
    odd = ir.node("Frobnicate", [model.graph.inputs[0]], domain="example", name="frob")
    model.graph.append(odd)
    with pytest.raises(compiler.VerificationError) as info:
        verify(model)
    problems = info.value.problems
    assert any("used before it is produced" in p for p in problems), problems
    assert any("relu1" in p and "shape" in p for p in problems), problems
    assert any("frob" in p and "unsupported op example::Frobnicate" in p for p in problems), problems


def test_verifier_finds_dangling_and_missing_output():
    model = to_ir(mlp_proto())
    stray = ir.Value(name="stray")
    relu = next(n for n in model.graph if n.op_type == "Relu")
    relu.replace_input_with(0, stray)
    model.graph.outputs.append(ir.Value(name="ghost"))
    problems = find_problems(model, check_types=False)
    assert any("'stray') is dangling" in p for p in problems), problems
    assert any("'ghost') is never produced" in p for p in problems), problems


def test_printer_shows_signature_nodes_and_outputs():
    model = infer_shapes(to_ir(mlp_proto()))
    text = format_graph(model)
    assert "%x: float32[2,8]" in text
    assert "%h1: float32[2,16] = Add(%h0, %b1)  # add1" in text
    assert text.rstrip().endswith("return %y\n}") or "return %y" in text
    assert op_histogram(model) == {"MatMul": 2, "Add": 2, "Relu": 1, "Identity": 1}


def test_cacc_fused_ops_infer_shapes():
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 3, 10, 10]))
    w = ir.Value(name="w", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([8, 3, 3, 3]))
    conv = ir.node("FusedConv", [x, w], {"strides": [2, 2], "pads": [1, 1, 1, 1], "activation": "Relu"}, domain="cacc")
    a = ir.Value(name="a", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([4, 1, 5, 6]))
    b = ir.Value(name="b", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([3, 6, 2]))
    mm = ir.node("FusedMatMul", [a, b], {"activation": ""}, domain="cacc")
    graph = ir.Graph([x, w, a, b], [conv.outputs[0], mm.outputs[0]], nodes=[conv, mm], opset_imports={"": 20})
    infer_shapes(ir.Model(graph, ir_version=10))
    assert list(conv.outputs[0].shape) == [1, 8, 5, 5]
    assert list(mm.outputs[0].shape) == [4, 3, 5, 2]


def test_interpreter_names_failing_node():
    proto = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")],
        [tensor("x", [2, 3]), tensor("shape", [1], 7)],
        [tensor("y", [-1])],
    )
    model = to_ir(proto)
    with pytest.raises(compiler.InterpreterError) as info:
        run(model, {"x": np.zeros((2, 3), np.float32), "shape": np.array([5], np.int64)})
    assert info.value.node == "bad_reshape"


def test_check_feeds_names_the_signature():
    model = infer_shapes(to_ir(mlp_proto()))
    with pytest.raises(compiler.InputSignatureError, match=r"expected inputs \(x: float32\[2,8\]\)"):
        check_feeds(model.graph, {"z": np.zeros((2, 8), np.float32)})
    with pytest.raises(compiler.InputSignatureError, match="dtype float64"):
        check_feeds(model.graph, {"x": np.zeros((2, 8))})
    with pytest.raises(compiler.InputSignatureError, match=r"shape \[3, 8\]"):
        check_feeds(model.graph, {"x": np.zeros((3, 8), np.float32)})
