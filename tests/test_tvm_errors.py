"""TVM backend: error reporting and the executable's input checks."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from backends.tvm import build, emit_relax, host_target
from compiler.errors import BackendError, InputSignatureError
from tests.test_tvm_helpers import make_model, rand, to_ir


def test_all_unsupported_ops_reported_at_once() -> None:
    x = rand(3, 3)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="ok_relu"),
        helper.make_node("Hardmax", ["r"], ["h"], name="hm"),
        helper.make_node("Det", ["h"], ["d"], name="det_1"),
        helper.make_node("Hardmax", ["r"], ["y"], name="hm_2"),
    ]
    model = to_ir(make_model(nodes, {"x": x}, ["y", "d"]))
    with pytest.raises(BackendError) as info:
        emit_relax(model)
    msg = str(info.value)
    assert "2 unsupported operator type(s)" in msg
    assert "Hardmax (nodes: hm, hm_2)" in msg
    assert "Det (nodes: det_1)" in msg
    assert "Relu" not in msg


def test_runtime_computed_reshape_shape_is_a_backend_error() -> None:
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="dyn_reshape")]
    model = to_ir(make_model(nodes, {"x": rand(2, 3), "s": np.array([3, 2], np.int64)}, ["y"]))
    with pytest.raises(BackendError, match="dyn_reshape"):
        emit_relax(model)


def test_wrong_inputs_are_rejected() -> None:
    model = to_ir(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": rand(2, 3)}, ["y"]))
    exe = build(model, host_target(1), num_threads=1)
    with pytest.raises(InputSignatureError, match="missing"):
        exe.run({})
    with pytest.raises(InputSignatureError, match="shape"):
        exe.run({"x": rand(3, 2)})
    with pytest.raises(InputSignatureError, match="dtype"):
        exe.run({"x": rand(2, 3).astype(np.float64)})


def test_symbolic_batch_dim() -> None:
    """A dynamic batch dim becomes a tir.Var: one build runs several batch sizes."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    w = rand(4, 3, seed=1)
    proto = make_model(nodes, {"x": rand(2, 4)}, ["y"], {"w": w}, input_shapes={"x": ["N", 4]})
    exe = build(to_ir(proto), host_target(1), num_threads=1)
    for n in (1, 5):
        x = rand(n, 4, seed=n)
        (got,) = exe.run({"x": x})
        np.testing.assert_allclose(got, np.maximum(x @ w, 0), atol=1e-5)


def test_reused_input_tensors_keep_each_run_separate() -> None:
    """``run`` copies inputs into the previous run's device tensors: outputs already returned, outputs that
    alias an input (Identity), non-contiguous inputs and a change of batch size must all stay correct."""
    nodes = [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Relu", ["x"], ["y"])]
    proto = make_model(nodes, {"x": rand(2, 4)}, ["same", "y"], input_shapes={"x": ["N", 4]})
    exe = build(to_ir(proto), host_target(1), num_threads=1)
    a, b = rand(2, 4, seed=1), rand(4, 2, seed=2).T  # b is a transposed (Fortran-order) view
    same_a, y_a = exe.run({"x": a})
    same_b, y_b = exe.run({"x": b})
    np.testing.assert_array_equal(same_a, a)  # not overwritten by the second run's copy
    np.testing.assert_array_equal(y_a, np.maximum(a, 0))
    np.testing.assert_array_equal(same_b, b)
    np.testing.assert_array_equal(y_b, np.maximum(b, 0))
    c = rand(3, 4, seed=3)
    same_c, y_c = exe.run({"x": c})
    np.testing.assert_array_equal(same_c, c)
    np.testing.assert_array_equal(y_c, np.maximum(c, 0))
    np.testing.assert_array_equal(exe.run({"x": a})[1], np.maximum(a, 0))
