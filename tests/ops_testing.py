"""Helpers for op tests: build a one-node ONNX model, run it in cacc's interpreter and in onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper

DEFAULT_OPSET = 21


def _value_info(name: str, arr: np.ndarray) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
    return helper.make_tensor_value_info(name, elem, list(arr.shape))


def make_model(
    op_type: str,
    inputs: Sequence[np.ndarray | None],
    attrs: Mapping[str, Any] | None = None,
    *,
    n_outputs: int = 1,
    opset: int = DEFAULT_OPSET,
    const: Sequence[int] = (),
    domain: str = "",
) -> onnx.ModelProto:
    """A model with one ``op_type`` node. ``inputs[i]`` is a graph input unless ``i`` is in ``const``
    (then an initializer); ``None`` is an omitted optional input. Output types come from ONNX inference."""
    in_names, graph_inputs, inits = [], [], []
    for i, arr in enumerate(inputs):
        if arr is None:
            in_names.append("")
            continue
        name = f"in{i}"
        in_names.append(name)
        if i in const:
            inits.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
        else:
            graph_inputs.append(_value_info(name, np.asarray(arr)))
    out_names = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(
        op_type, in_names, out_names, name=f"{op_type.lower()}_node", domain=domain, **(attrs or {})
    )
    outputs = [helper.make_value_info(n, onnx.TypeProto()) for n in out_names]
    graph = helper.make_graph([node], "g", graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    typed = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    del model.graph.output[:]
    for n in out_names:
        vi = typed.get(n)
        if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            elem = vi.type.tensor_type.elem_type
        elif graph_inputs:  # function ops (e.g. GroupNormalization) are not inferred: same type as input 0
            elem = graph_inputs[0].type.tensor_type.elem_type
        else:
            raise RuntimeError(f"ONNX could not infer the type of {op_type} output {n}")
        model.graph.output.append(helper.make_tensor_value_info(n, elem, None))
    return model


def feeds_of(model: onnx.ModelProto, inputs: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """The runtime feeds (graph inputs only) for ``inputs``."""
    names = {vi.name for vi in model.graph.input}
    return {f"in{i}": np.asarray(a) for i, a in enumerate(inputs) if a is not None and f"in{i}" in names}


def run_ours(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of cacc's reference interpreter, in graph-output order."""
    from compiler.ir import run

    irm = ir.from_proto(model)
    result = run(irm, feeds)
    return [result[o.name] for o in model.graph.output]


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of onnxruntime (CPU, no graph optimizations), in graph-output order."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(sess.run(None, dict(feeds)))


def assert_same(ours: np.ndarray, ref: np.ndarray, *, rtol: float = 1e-5, atol: float = 1e-6, what: str = "") -> None:
    """Same dtype and shape; exact for integers/bools, ``allclose`` (NaNs equal) for floats."""
    ours = np.asarray(ours)
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != onnxruntime {ref.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != onnxruntime {ref.shape}"
    if ref.dtype.kind in "fc":
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)
    else:
        np.testing.assert_array_equal(ours, ref, err_msg=what)


def check_op(
    op_type: str,
    inputs: Sequence[np.ndarray | None],
    attrs: Mapping[str, Any] | None = None,
    *,
    n_outputs: int = 1,
    opset: int = DEFAULT_OPSET,
    const: Sequence[int] = (),
    rtol: float = 1e-5,
    atol: float = 1e-6,
    domain: str = "",
) -> list[np.ndarray]:
    """Run one node in both runtimes and assert the outputs agree; returns our outputs."""
    model = make_model(op_type, inputs, attrs, n_outputs=n_outputs, opset=opset, const=const, domain=domain)
    feeds = feeds_of(model, inputs)
    ours, ref = run_ours(model, feeds), run_ort(model, feeds)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert_same(a, b, rtol=rtol, atol=atol, what=f"{op_type} output {i} (opset {opset}, attrs {attrs})")
    return ours


def rand(*shape: int, dtype: Any = np.float32, lo: float = -3.0, hi: float = 3.0, seed: int = 0) -> np.ndarray:
    """Deterministic random array (uniform in ``[lo, hi)``; integers are rounded)."""
    rng = np.random.default_rng(seed + 7919 * len(shape) + sum(shape))
    x = rng.uniform(lo, hi, size=shape)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        return np.round(x).astype(dt)
    if dt.kind == "b":
        return x > (lo + hi) / 2
    return x.astype(dt)
