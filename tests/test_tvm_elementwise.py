"""TVM backend: elementwise ops against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.test_tvm_helpers import check_against_ort, rand

BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"]
COMPARE = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]
UNARY = ["Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Erf", "Floor", "Ceil", "Reciprocal", "Softplus", "Sign"]


@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcast(op: str) -> None:
    a = rand(2, 3, 4, seed=1, low=0.5, high=2.0)
    b = rand(3, 1, seed=2, low=0.5, high=2.0)
    check_against_ort([helper.make_node(op, ["a", "b"], ["y"])], {"a": a, "b": b})


@pytest.mark.parametrize("op", COMPARE)
def test_compare(op: str) -> None:
    a = np.round(rand(4, 5, seed=3))
    b = np.round(rand(5, seed=4))
    check_against_ort([helper.make_node(op, ["a", "b"], ["y"])], {"a": a, "b": b})


def test_integer_div_truncates() -> None:
    a = np.array([[7, -7, 9, -9]], dtype=np.int64)
    b = np.array([2, 2, -4, -4], dtype=np.int64)
    check_against_ort([helper.make_node("Div", ["a", "b"], ["y"])], {"a": a, "b": b})


def test_logic_chain() -> None:
    a = rand(3, 4, seed=5) > 0
    b = rand(3, 4, seed=6) > 0
    nodes = [
        helper.make_node("And", ["a", "b"], ["t"]),
        helper.make_node("Or", ["t", "a"], ["u"]),
        helper.make_node("Xor", ["u", "b"], ["v"]),
        helper.make_node("Not", ["v"], ["y"]),
    ]
    check_against_ort(nodes, {"a": a, "b": b})


@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str) -> None:
    x = rand(2, 3, 8, seed=7, low=-3.0, high=3.0) + 0.05
    check_against_ort([helper.make_node(op, ["x"], ["y"])], {"x": x})


def test_log_sqrt_isnan() -> None:
    x = rand(4, 6, seed=8, low=0.1, high=4.0)
    nodes = [
        helper.make_node("Log", ["x"], ["l"]),
        helper.make_node("Sqrt", ["x"], ["s"]),
        helper.make_node("Div", ["l", "l"], ["nan_at_one"]),
        helper.make_node("IsNaN", ["nan_at_one"], ["y"]),
    ]
    x[0, 0] = 1.0  # log(1) / log(1) = 0 / 0
    got = check_against_ort(nodes, {"x": x}, outputs=("l", "s", "y"))
    assert got[2][0, 0]


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("LeakyRelu", {"alpha": 0.2}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
        ("HardSwish", {}),
        ("Elu", {"alpha": 0.7}),
        ("Selu", {}),
        ("Gelu", {}),
        ("Gelu", {"approximate": "tanh"}),
    ],
)
def test_activation(op: str, attrs: dict) -> None:
    x = rand(2, 16, seed=9, low=-4.0, high=4.0)
    check_against_ort([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, opset=20)


def test_clip_with_constant_and_runtime_bounds() -> None:
    x = rand(3, 7, seed=10, low=-8, high=8)
    lo = np.array(-1.5, dtype=np.float32)
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["a"]),
        helper.make_node("Clip", ["x", "", "hi"], ["b"]),
        helper.make_node("Clip", ["x", "lo_rt"], ["c"]),
    ]
    feeds = {"x": x, "lo_rt": np.array(-0.5, dtype=np.float32)}
    check_against_ort(nodes, feeds, outputs=("a", "b", "c"), initializers={"lo": lo, "hi": np.array(6.0, np.float32)})


def test_where_and_cast() -> None:
    x = rand(4, 5, seed=11, low=-3, high=3)
    m = np.array([0, 3, 0, -2, 1], dtype=np.int64)
    nodes = [
        helper.make_node("Cast", ["m"], ["mb"], to=TensorProto.BOOL),  # nonzero -> True, even for 3 / -2
        helper.make_node("Where", ["mb", "x", "zero"], ["w"]),
        helper.make_node("Cast", ["w"], ["y"], to=TensorProto.INT64),
        helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BOOL),
    ]
    check_against_ort(
        nodes, {"x": x, "m": m}, outputs=("mb", "y", "xb"), initializers={"zero": np.array(0.0, np.float32)}
    )
