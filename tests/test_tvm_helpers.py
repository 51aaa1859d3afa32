"""Helpers shared by the TVM backend tests: build small ONNX graphs, run them on TVM and onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from compiler.ir import infer_shapes

OPSET = 18
NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = OPSET,
    input_shapes: Mapping[str, Sequence[int | str]] | None = None,
) -> onnx.ModelProto:
    """An ONNX model of ``nodes`` whose inputs are typed like the example arrays in ``inputs``."""
    vi_in = [
        helper.make_tensor_value_info(name, NP_TO_ONNX[arr.dtype], list((input_shapes or {}).get(name, arr.shape)))
        for name, arr in inputs.items()
    ]
    vi_out = [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs]
    inits = [onnx.numpy_helper.from_array(arr, name) for name, arr in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "g", vi_in, vi_out, inits)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("cacc", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    """The cacc IR of ``proto``, with shapes inferred."""
    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    return model


def run_ort(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Reference outputs from onnxruntime (outputs typed by ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(inferred.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, dict(feeds)))


def run_tvm(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` built by the TVM backend for the host CPU."""
    from backends.tvm import build, host_target

    return build(model, host_target(1), num_threads=1).run(feeds)


def check_against_ort(
    nodes: Sequence[onnx.NodeProto],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] = ("y",),
    initializers: Mapping[str, np.ndarray] | None = None,
    *,
    opset: int = OPSET,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> list[np.ndarray]:
    """Build the graph, run it on TVM and onnxruntime, and assert equal dtypes, shapes and values."""
    proto = make_model(nodes, feeds, outputs, initializers, opset)
    expected = run_ort(proto, feeds)
    got = run_tvm(to_ir(proto), feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, atol=atol, rtol=rtol)
    return got


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Fixed-seed uniform float32 data."""
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)
