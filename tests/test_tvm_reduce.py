"""TVM backend: reductions against onnxruntime (axes as input, opset 18, and as attribute, opset 13)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.test_tvm_helpers import check_against_ort, rand

OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceLogSumExp"]


@pytest.mark.parametrize("op", OPS)
def test_reduce_axes_input(op: str) -> None:
    x = rand(2, 3, 4, low=0.5, high=1.5)
    nodes = [
        helper.make_node(op, ["x", "axes"], ["keep"]),
        helper.make_node(op, ["x", "axes"], ["drop"], keepdims=0),
        helper.make_node(op, ["x"], ["all"], keepdims=0),
    ]
    check_against_ort(
        nodes, {"x": x}, outputs=("keep", "drop", "all"), initializers={"axes": np.array([0, -1], np.int64)}
    )


def test_reduce_axes_attribute_opset13_and_argmax() -> None:
    x = rand(3, 5, 2)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
        helper.make_node("ArgMax", ["x"], ["am"], axis=1),
        helper.make_node("ArgMin", ["x"], ["an"], axis=-1, keepdims=0),
    ]
    check_against_ort(
        nodes, {"x": x}, outputs=("m", "s", "am", "an"), initializers={"axes": np.array([2], np.int64)}, opset=13
    )
