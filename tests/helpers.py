"""Small model builders shared by tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[np.ndarray | tuple[str, np.ndarray]] | None = None,
    opset: int = 20,
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """An ONNX ModelProto from nodes/inputs/outputs and named numpy initializers."""
    inits = [numpy_helper.from_array(a, name) for name, a in (initializers or [])]  # type: ignore[misc]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def tensor(name: str, shape: list[int | str], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A tensor value info."""
    return helper.make_tensor_value_info(name, dtype, shape)


def mlp_proto(seed: int = 0) -> onnx.ModelProto:
    """x[2,8] -> MatMul+Add+Relu -> MatMul+Add -> y[2,4], with an Identity on the way."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("Identity", ["h2"], ["h3"], name="id1"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="mm2"),
        helper.make_node("Add", ["h4", "b2"], ["y"], name="add2"),
    ]
    return make_model(
        nodes,
        [tensor("x", [2, 8])],
        [tensor("y", [2, 4])],
        [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)],
    )


def ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a ModelProto in onnxruntime (CPU), weight-only int8 / int4 MatMuls with fp32 activations as the model
    says (see :data:`backends.onnx.FP32_DQ_MATMUL`)."""
    from backends.onnx import ort_session

    sess: Any = ort_session(proto)
    return list(sess.run(None, feeds))


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    """Deserialize without any normalization."""
    return ir.serde.deserialize_model(proto)


def arm_unavailable() -> str | None:
    """None when the ARM cross toolchain, qemu, the aarch64 libraries and the runner are set up; else why not."""
    from backends.tvm import arm_setup
    from compiler.errors import BackendError

    try:
        tc = arm_setup.toolchain()
        arm_setup.runner_path(tc.cxx, tc.lib_dir)
    except BackendError as exc:
        return str(exc)
    return None
