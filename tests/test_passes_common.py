"""Helpers shared by the pass tests (graph building, onnxruntime comparison), and tests of passes._utils."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from backends.onnx import ort_session
from compiler.ir import infer_shapes, op_histogram
from compiler.ir import run as run_reference
from passes import decompose_cacc_ops
from passes._utils import Namer, can_replace, replace_value

_ELEM = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64}


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, tuple[type, Sequence[int]]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 20,
) -> ir.Model:
    """An IR model from ONNX nodes, with shapes inferred."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, _ELEM[np.dtype(t)], list(s)) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in outputs],
        [onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model = ir.from_proto(proto)
    infer_shapes(model)
    return model


def feeds_for(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the model's (static) input signature."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in model.graph.inputs:
        shape = [int(d) for d in v.shape]  # type: ignore[union-attr, arg-type]
        out[v.name or ""] = rng.standard_normal(shape).astype(v.dtype.numpy())  # type: ignore[union-attr]
    return out


def ort_run(model: ir.Model | bytes, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model (IR or serialized) in onnxruntime; outputs by name."""
    data = model if isinstance(model, bytes) else ir.to_proto(model).SerializeToString()
    sess: Any = ort_session(data)  # weight-only int8 MatMuls in fp32, as the model says
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, dict(feeds)), strict=True))


def snapshot(model: ir.Model) -> bytes:
    """The model serialized (to compare against after an in-place pass)."""
    return ir.to_proto(model).SerializeToString()


def max_scaled_error(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> float:
    """max |ref - got| / max(1, max |ref|) over outputs (same names required)."""
    assert set(ref) == set(got), (sorted(ref), sorted(got))
    err = 0.0
    for name, r in ref.items():
        g = got[name]
        assert g.shape == r.shape, (name, g.shape, r.shape)
        diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
        err = max(err, float(diff.max(initial=0.0)) / max(1.0, float(np.abs(r).max(initial=0.0))))
    return err


def assert_same_numerics(before: bytes, after: ir.Model, feeds: Mapping[str, np.ndarray], tol: float = 1e-5) -> None:
    """Outputs of ``after`` equal onnxruntime's on ``before``; cacc ops are checked both with the
    reference interpreter and by decomposing them (on a copy) and running onnxruntime."""
    ref = ort_run(before, feeds)
    if any(n.domain == "cacc" for n in after.graph):
        got = run_reference(after, feeds)
        assert max_scaled_error(ref, got) <= tol
        after = ir.from_proto(ir.to_proto(after))
        decompose_cacc_ops(after)
        assert not any(n.domain == "cacc" for n in after.graph)
    assert max_scaled_error(ref, ort_run(after, feeds)) <= tol


def ops(model: ir.Model) -> dict[str, int]:
    """Op histogram as a plain dict."""
    return dict(op_histogram(model))


# ----------------------------------------------------------------------------- tests of passes._utils


def test_replace_value_keeps_graph_output_name() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
        {"x": (np.float32, [2, 3])},
        ["y"],
    )
    relu, neg = list(model.graph)
    replace_value(neg.outputs[0], relu.outputs[0])
    model.graph.remove(neg, safe=True)
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0] is relu.outputs[0]


def test_can_replace_refuses_to_rename_a_graph_input() -> None:
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], {"x": (np.float32, [2])}, ["y"])
    (node,) = list(model.graph)
    reason = can_replace(node.outputs[0], model.graph.inputs[0])
    assert "graph output 'y' would be renamed" in reason


def test_namer_avoids_existing_names() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (np.float32, [2])}, ["y"])
    namer = Namer(model.graph)
    assert namer("y") == "y_1"
    assert namer("y") == "y_2"
    assert namer("fresh") == "fresh"
