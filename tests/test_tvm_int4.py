"""TVM x86: 4-bit weight-only layers keep their weights 4-bit and unpack them in the kernel (but for weights small
enough to stay in cache, which run dequantized on the fp32 kernel)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.tvm import build, host_target
from backends.tvm.lowering import qweight
from backends.tvm.relax_emitter import emit_relax
from compiler.ir import run
from tests.test_tvm_helpers import to_ir

M, K, N = 13, 70, 40  # odd row count, K not a multiple of the group


def _int4(name: str, values: np.ndarray, unsigned: bool) -> object:
    kind = TensorProto.UINT4 if unsigned else TensorProto.INT4
    return helper.make_tensor(name, kind, list(values.shape), values.reshape(-1).tolist())


def _model(layout: str, unsigned: bool, zero_point: bool, op: str) -> tuple[object, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    lo, hi = (0, 16) if unsigned else (-8, 8)
    trans = op == "Gemm"
    shape = (N, K) if trans else (K, N)
    q = rng.integers(lo, hi, shape).astype(np.int8)
    k_axis = 1 if trans else 0
    if layout == "blocked":
        g = 16
        pshape = (N, -(-K // g)) if trans else (-(-K // g), N)
        dq_attrs = {"axis": k_axis, "block_size": g}
    elif layout == "per_column":
        pshape, dq_attrs = (N,), {"axis": 1 - k_axis}
    else:
        pshape, dq_attrs = (), {}
    s = (rng.random(pshape) * 0.1 + 0.01).astype(np.float32)
    inits = [_int4("q", q, unsigned), numpy_helper.from_array(s, "s")]
    dq_inputs = ["q", "s"]
    if zero_point:
        inits.append(_int4("z", rng.integers(lo + 6, lo + 10, pshape).astype(np.int8), unsigned))
        dq_inputs.append("z")
    nodes = [helper.make_node("DequantizeLinear", dq_inputs, ["w"], **dq_attrs)]
    x = rng.standard_normal((M, K)).astype(np.float32)
    if op == "Gemm":
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias"))
        nodes.append(helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1))
    elif op == "FusedMatMul":
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias"))
        nodes.append(helper.make_node("FusedMatMul", ["x", "w", "bias"], ["y"], domain="cacc", activation="Gelu"))
    else:
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "int4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("cacc", 1)]
    return helper.make_model(graph, opset_imports=opsets), {"x": x}


@pytest.mark.parametrize(
    ("layout", "unsigned", "zero_point", "op"),
    [
        ("blocked", False, False, "MatMul"),
        ("blocked", False, True, "MatMul"),
        ("blocked", True, True, "Gemm"),
        ("per_column", False, True, "FusedMatMul"),
        ("per_tensor", True, False, "MatMul"),
    ],
)
def test_int4_weight_only_kernel_matches_reference(
    layout: str, unsigned: bool, zero_point: bool, op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qweight, "RESIDENT_FP32_BYTES", 0)  # every 4-bit weight on the 4-bit kernel
    proto, feeds = _model(layout, unsigned, zero_point, op)
    model = to_ir(proto)
    mod = emit_relax(model)
    assert [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.startswith("cacc_")] == ["cacc_dense_int4"]
    # the weight is a 4-bit constant in the module (two values a byte), not a dequantized fp32 copy
    consts = [c.value.numpy() for c in _constants(mod) if hasattr(c.value, "numpy")]
    assert any(c.dtype == np.uint8 and c.size >= K * N // 2 for c in consts)
    assert not any(c.dtype == np.float32 and c.size >= K * N for c in consts)
    (y,) = build(model, host_target(2), num_threads=2).run(feeds)
    np.testing.assert_allclose(y, run(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def _constants(mod: object) -> list:
    import tvm
    from tvm import relax

    found: list = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(e, tvm.ir.Constant) else None)
    return found


@pytest.mark.parametrize("resident", [True, False])
def test_cache_resident_int4_weight_runs_on_the_fp32_kernel(resident: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4-bit weight whose fp32 copy fits :data:`qweight.RESIDENT_FP32_BYTES` is dequantized at compile time and
    runs on the fp32 kernel (unpacking it every call would cost more than it saves); a larger one keeps the 4-bit
    kernel. Both compute the reference's ``x @ dequantize(w)``."""
    monkeypatch.setattr(qweight, "RESIDENT_FP32_BYTES", K * N * 4 if resident else K * N * 4 - 1)
    proto, feeds = _model("blocked", False, True, "MatMul")
    model = to_ir(proto)
    kernels = [gv.name_hint for gv in emit_relax(model).get_global_vars() if gv.name_hint.startswith("cacc_")]
    assert kernels == (["cacc_dense"] if resident else ["cacc_dense_int4"]), kernels
    (y,) = build(model, host_target(2), num_threads=2).run(feeds)
    np.testing.assert_allclose(y, run(model, feeds)["y"], rtol=1e-5, atol=1e-5)
