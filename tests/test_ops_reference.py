"""The numpy reference kernels agree with onnxruntime, op by op (opsets 13–21)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from compiler.errors import InterpreterError
from compiler.ir import infer_shapes, run, supported_ops
from tests.ops_testing import check_op, feeds_of, make_model, rand, run_ort, run_ours

F = np.float32
I64 = np.int64


def case(op: str, inputs: list[Any], attrs: dict[str, Any] | None = None, **kw: Any) -> Any:
    """A pytest param for :func:`check_op` with a readable id."""
    tag = kw.pop("id", "")
    return pytest.param(op, inputs, attrs or {}, kw, id=f"{op}-{tag}" if tag else op)


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=I64)


X = rand(2, 3, 4)
Y = rand(2, 3, 4, seed=1)
POS = rand(2, 3, 4, lo=0.1, hi=4.0)
UNIT = rand(2, 3, 4, lo=-0.9, hi=0.9)
INTS = rand(3, 4, dtype=np.int32, lo=-20, hi=20)
INTS_NZ = np.where(
    rand(3, 4, dtype=np.int32, lo=-7, hi=7, seed=3) == 0, 3, rand(3, 4, dtype=np.int32, lo=-7, hi=7, seed=3)
)
SPECIAL = np.array([0.5, 1.5, 2.5, -0.5, -2.5, np.nan, np.inf, -np.inf, 0.0, -3.7], dtype=F)

ELEMENTWISE = [
    *(case(op, [X, Y]) for op in ("Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean")),
    case("Add", [X, rand(4, seed=5)], id="broadcast"),
    case("Div", [X, POS]),
    case("Div", [INTS, INTS_NZ], id="int-trunc"),
    case("Div", [i64(7, -7, 7, -7), i64(2, 2, -2, -2)], id="int64-trunc"),
    case("Pow", [POS, Y]),
    case("Pow", [X, np.array(2, dtype=I64)], id="int-exponent"),
    case("Mod", [INTS, INTS_NZ], id="int"),
    case("Mod", [X, POS], {"fmod": 1}, id="fmod"),
    case("Mod", [INTS, INTS_NZ], {"fmod": 1}, id="int-fmod"),
    *(
        case(op, [X])
        for op in [
            "Neg",
            "Abs",
            "Exp",
            "Erf",
            "Floor",
            "Ceil",
            "Sign",
            "Sin",
            "Cos",
            "Tan",
            "Atan",
            "Sinh",
            "Cosh",
            "Asinh",
            "Relu",
            "Sigmoid",
            "HardSwish",
            "Tanh",
            "Softplus",
            "Softsign",
            "Mish",
            "Identity",
        ]
    ),
    *(case(op, [POS], id="pos") for op in ("Sqrt", "Log", "Reciprocal", "Acosh")),
    *(case(op, [UNIT], id="unit") for op in ("Asin", "Acos", "Atanh")),
    case("Round", [SPECIAL], id="half-even"),
    case("Abs", [INTS], id="int"),
    case("Neg", [INTS], id="int"),
    case("Sign", [INTS], id="int"),
    case("LeakyRelu", [X]),
    case("LeakyRelu", [X], {"alpha": 0.3}, id="alpha"),
    case("PRelu", [X, rand(3, 1, seed=2)]),
    case("PRelu", [X, rand(4, seed=2)], id="last-axis"),
    case("HardSigmoid", [X]),
    case("HardSigmoid", [X], {"alpha": 0.3, "beta": 0.4}, id="attrs"),
    case("Elu", [X]),
    case("Elu", [X], {"alpha": 0.5}, id="alpha"),
    case("Celu", [X], {"alpha": 2.0}),
    case("Selu", [X]),
    case("ThresholdedRelu", [X], {"alpha": 0.5}),
    case("Shrink", [X], {"lambd": 1.0, "bias": 0.5}),
    case("Gelu", [X], opset=20),
    case("Gelu", [X], {"approximate": "tanh"}, opset=20, id="tanh"),
    case("Clip", [X, np.array(-1.0, F), np.array(0.5, F)]),
    case("Clip", [X, None, np.array(0.5, F)], id="max-only"),
    case("Clip", [X, np.array(0.0, F)], id="min-only"),
    case("Clip", [X], id="none"),
    case("Clip", [INTS, np.array(-5, np.int32), np.array(5, np.int32)], id="int"),
    *(case(op, [X, Y]) for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")),
    case("Equal", [INTS, INTS_NZ], id="int"),
    *(case(op, [X > 0, Y > 0]) for op in ("And", "Or", "Xor")),
    case("Not", [X > 0]),
    case("Where", [X > 0, X, Y]),
    case("Where", [rand(3, 1, seed=4) > 0, np.array(1.0, F), Y], id="broadcast"),
    case("IsNaN", [SPECIAL]),
    case("IsInf", [SPECIAL]),
    case("IsInf", [SPECIAL], {"detect_negative": 0}, id="pos-only"),
    case("IsInf", [SPECIAL], {"detect_positive": 0}, id="neg-only"),
    case("Cast", [X * 10], {"to": TensorProto.INT32}, id="f2i"),
    case("Cast", [INTS], {"to": TensorProto.FLOAT}, id="i2f"),
    case("Cast", [X], {"to": TensorProto.BOOL}, id="f2b"),
    case("Cast", [X], {"to": TensorProto.FLOAT16}, id="f2h"),
    case("Cast", [X], {"to": TensorProto.DOUBLE}, id="f2d"),
    case("CastLike", [INTS, X], id="i2f"),
    case("Max", [X, Y, rand(4, seed=9)], id="variadic"),
    case("Mean", [X, Y, rand(4, seed=9)], id="variadic"),
    case("BitwiseAnd", [INTS, INTS_NZ]),
    case("BitwiseNot", [INTS]),
    case("BitShift", [np.array([1, 4, 16], np.uint8), np.array([1, 2, 3], np.uint8)], {"direction": "LEFT"}),
    case("BitShift", [np.array([1, 4, 16], np.uint32), np.array([1, 2, 3], np.uint32)], {"direction": "RIGHT"}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "kw"), ELEMENTWISE)
def test_elementwise(op: str, inputs: list[Any], attrs: dict[str, Any], kw: dict[str, Any]) -> None:
    check_op(op, inputs, attrs, **kw)


HALF = rand(2, 3, 4).astype(np.float16)


@pytest.mark.parametrize("op", ["Add", "Relu", "Sigmoid", "Tanh", "Exp", "Erf", "HardSwish", "Gelu", "LeakyRelu"])
def test_float16_stays_float16(op: str) -> None:
    (out,) = check_op(op, [HALF, HALF] if op == "Add" else [HALF], rtol=2e-3, atol=2e-3)
    assert out.dtype == np.float16


def test_dropout_inference_is_identity_with_true_mask() -> None:
    ours = check_op("Dropout", [X, np.array(0.5, F)], n_outputs=2, const=[1])
    assert ours[1].all()


def test_float32_stays_float32_with_python_scalar_attrs() -> None:
    for op, attrs in [("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("HardSigmoid", {}), ("Selu", {})]:
        (out,) = check_op(op, [X], attrs)
        assert out.dtype == np.float32


# ------------------------------------------------------------------ nn

IMG = rand(1, 4, 9, 9, lo=-1, hi=1)
IMG2 = rand(2, 4, 8, 7, lo=-1, hi=1, seed=3)
W3 = rand(6, 4, 3, 3, lo=-0.5, hi=0.5, seed=1)
WG = rand(6, 2, 3, 3, lo=-0.5, hi=0.5, seed=1)
WDW = rand(4, 1, 3, 3, lo=-0.5, hi=0.5, seed=2)
WDW2 = rand(8, 1, 3, 3, lo=-0.5, hi=0.5, seed=2)
B6 = rand(6, seed=7)

NN = [
    case("Conv", [IMG, W3, B6], id="basic"),
    case("Conv", [IMG, W3], {"pads": [1, 1, 1, 1]}, id="pad"),
    case("Conv", [IMG, W3, B6], {"strides": [2, 2], "pads": [0, 0, 1, 1]}, id="stride-asym-pad"),
    case("Conv", [IMG, W3], {"dilations": [2, 2]}, id="dilation"),
    case("Conv", [IMG2, W3], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, id="same-upper"),
    case("Conv", [IMG2, W3], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, id="same-lower"),
    case("Conv", [IMG2, W3], {"auto_pad": "VALID", "strides": [2, 1]}, id="valid"),
    case("Conv", [IMG, WG, B6], {"group": 2, "pads": [1, 1, 1, 1]}, id="group"),
    case("Conv", [IMG, WDW], {"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}, id="depthwise"),
    case("Conv", [IMG, WDW2], {"group": 4, "pads": [1, 1, 1, 1]}, id="depthwise-mult2"),
    case("Conv", [IMG, rand(5, 4, 1, 1, seed=4)], id="pointwise"),
    case("Conv", [rand(2, 3, 11), rand(4, 3, 3, seed=1)], {"pads": [1, 2], "strides": [2]}, id="1d"),
    case("Conv", [rand(1, 2, 5, 4, 4), rand(3, 2, 2, 3, 3, seed=1)], {"pads": [0, 1, 1, 1, 0, 1]}, id="3d"),
    case("ConvTranspose", [IMG, rand(4, 3, 3, 3, seed=1)], id="basic"),
    case("ConvTranspose", [IMG, rand(4, 3, 3, 3, seed=1), rand(3)], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, id="s2"),
    case(
        "ConvTranspose",
        [IMG, rand(4, 3, 4, 4, seed=1)],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        id="outpad",
    ),
    case("ConvTranspose", [IMG, rand(4, 2, 3, 3, seed=1)], {"group": 2, "dilations": [2, 2]}, id="group-dil"),
    case("ConvTranspose", [IMG, rand(4, 3, 3, 3, seed=1)], {"strides": [2, 2], "output_shape": [19, 19]}, id="oshape"),
    case("ConvTranspose", [IMG, rand(4, 3, 3, 3, seed=1)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, id="same-u"),
    case("ConvTranspose", [IMG, rand(4, 3, 3, 3, seed=1)], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, id="same-l"),
    case("ConvTranspose", [IMG, rand(4, 3, 3, 3, seed=1)], {"strides": [3, 2], "pads": [0, 1, 2, 0]}, id="asym"),
    case("MatMul", [rand(3, 4), rand(4, 5, seed=1)]),
    case("MatMul", [rand(2, 3, 4), rand(4, 5, seed=1)], id="batched"),
    case("MatMul", [rand(2, 1, 3, 4), rand(3, 4, 2, seed=1)], id="bcast"),
    case("MatMul", [rand(4), rand(2, 4, 3, seed=1)], id="vec"),
    case("Gemm", [rand(3, 4), rand(4, 5, seed=1), rand(5, seed=2)]),
    case("Gemm", [rand(4, 3), rand(5, 4, seed=1), rand(3, 5, seed=2)], {"transA": 1, "transB": 1}, id="trans"),
    case("Gemm", [rand(3, 4), rand(4, 5, seed=1), rand(1, 5, seed=2)], {"alpha": 0.5, "beta": 2.0}, id="ab"),
    case("Gemm", [rand(3, 4), rand(4, 5, seed=1)], id="noc"),
    case("MaxPool", [IMG], {"kernel_shape": [3, 3]}, id="basic"),
    case("MaxPool", [IMG], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, id="pad"),
    case("MaxPool", [IMG2], {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}, id="ceil"),
    case("MaxPool", [IMG], {"kernel_shape": [2, 2], "dilations": [2, 2]}, id="dil"),
    case("MaxPool", [IMG2], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, id="same"),
    case("MaxPool", [rand(1, 2, 10)], {"kernel_shape": [3], "strides": [2]}, id="1d"),
    case(
        "MaxPool",
        [rand(1, 2, 6, 6, dtype=np.int8, lo=-100, hi=100)],
        {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]},
        id="int8",
    ),
    case("MaxPool", [IMG], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, n_outputs=2, id="idx"),
    case("MaxPool", [IMG2], {"kernel_shape": [2, 3], "storage_order": 1}, n_outputs=2, id="idx-colmajor"),
    case("MaxPool", [IMG2], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, n_outputs=2, id="idx-ceil"),
    case("AveragePool", [IMG], {"kernel_shape": [3, 3]}, id="basic"),
    case("AveragePool", [IMG], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, id="pad"),
    case(
        "AveragePool",
        [IMG],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        id="incl-pad",
    ),
    case("AveragePool", [IMG2], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, id="ceil"),
    case(
        "AveragePool",
        [IMG2],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "pads": [1, 1, 1, 1], "count_include_pad": 1},
        id="ceil-incl",
    ),
    case("AveragePool", [IMG2], {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER"}, id="same"),
    case("LpPool", [IMG], {"kernel_shape": [2, 2], "p": 2}),
    case("GlobalAveragePool", [IMG2]),
    case("GlobalMaxPool", [IMG2]),
    case("Flatten", [IMG2]),
    case("Flatten", [IMG2], {"axis": 0}, id="axis0"),
    case("Flatten", [IMG2], {"axis": -1}, id="neg"),
    case("BatchNormalization", [IMG, rand(4), rand(4, seed=1), rand(4, seed=2), rand(4, lo=0.5, hi=2, seed=3)]),
    case("LayerNormalization", [X, rand(4), rand(4, seed=1)], n_outputs=3),
    case("LayerNormalization", [X, rand(3, 4)], {"axis": 1, "epsilon": 1e-3}, n_outputs=3, id="axis1"),
    case("LayerNormalization", [X, rand(4)], {"axis": -1}, id="nobias"),
    case("InstanceNormalization", [IMG2, rand(4), rand(4, seed=1)]),
    case("GroupNormalization", [IMG2, rand(4), rand(4, seed=1)], {"num_groups": 2}, opset=21, id="per-channel"),
    case("GroupNormalization", [IMG2, rand(2), rand(2, seed=1)], {"num_groups": 2}, opset=18, id="per-group"),
    case("Softmax", [X]),
    case("Softmax", [X], {"axis": 1}, id="axis1"),
    case("Softmax", [X * 100], id="large"),
    case("LogSoftmax", [X]),
    case("LogSoftmax", [X], {"axis": 0}, id="axis0"),
    case("Hardmax", [X], {"axis": 1}),
    case("LpNormalization", [X], {"axis": 1, "p": 2}),
    case("LpNormalization", [X], {"p": 1}, id="p1"),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "kw"), NN)
def test_nn(op: str, inputs: list[Any], attrs: dict[str, Any], kw: dict[str, Any]) -> None:
    kw.setdefault("rtol", 1e-4)
    kw.setdefault("atol", 1e-5)
    check_op(op, inputs, attrs, **kw)


RESIZE_IMG = rand(1, 2, 5, 6, lo=-1, hi=1)
SCALES_UP = np.array([1, 1, 2.0, 1.5], F)
SCALES_DOWN = np.array([1, 1, 0.6, 0.5], F)


@pytest.mark.parametrize(
    "attrs",
    [
        {"mode": "nearest"},
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        {"mode": "nearest", "coordinate_transformation_mode": "align_corners", "nearest_mode": "round_prefer_ceil"},
        {"mode": "nearest", "nearest_mode": "ceil"},
        {"mode": "linear"},
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
        {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
        {"mode": "cubic"},
        {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5},
    ],
    ids=lambda a: "-".join(str(v) for v in a.values()),
)
@pytest.mark.parametrize("scales", [SCALES_UP, SCALES_DOWN], ids=["up", "down"])
def test_resize_scales(attrs: dict[str, Any], scales: np.ndarray) -> None:
    check_op("Resize", [RESIZE_IMG, None, scales], attrs, const=[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("sizes", "attrs"),
    [
        (i64(1, 2, 8, 9), {"mode": "linear"}),
        (i64(1, 2, 3, 4), {"mode": "nearest"}),
        (i64(7, 4), {"mode": "linear", "axes": [2, 3]}),
        (i64(10, 10), {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
    ],
    ids=["linear", "nearest", "axes", "not-larger"],
)
def test_resize_sizes(sizes: np.ndarray, attrs: dict[str, Any]) -> None:
    check_op("Resize", [RESIZE_IMG, None, None, sizes], attrs, const=[3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_resize_tf_crop_and_resize(mode: str) -> None:
    roi = np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.2], F)
    attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -1.0}
    check_op("Resize", [RESIZE_IMG, roi, None, i64(1, 2, 4, 7)], attrs, const=[1, 3], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ reductions

R = rand(3, 4, 5, lo=0.1, hi=2.0)
REDUCE_OPS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize(
    ("axes", "attrs"),
    [
        (i64(1), {}),
        (i64(0, -1), {"keepdims": 0}),
        (None, {}),
        (None, {"keepdims": 0}),
        (np.zeros(0, I64), {"noop_with_empty_axes": 1}),
    ],
    ids=["ax1", "ax0-1-nokeep", "all", "all-nokeep", "noop"],
)
def test_reduce_axes_input(op: str, axes: np.ndarray | None, attrs: dict[str, Any]) -> None:
    inputs = [R] if axes is None else [R, axes]
    check_op(op, inputs, attrs, opset=18, const=[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", [o for o in REDUCE_OPS if o != "ReduceSum"])
def test_reduce_axes_attribute_opset13(op: str) -> None:
    check_op(op, [R], {"axes": [0, 2]}, opset=13, rtol=1e-5, atol=1e-5)
    check_op(op, [R], {"axes": [-2], "keepdims": 0}, opset=13, rtol=1e-5, atol=1e-5)


def test_reduce_integer() -> None:
    check_op("ReduceSum", [INTS, i64(1)], const=[1])
    check_op("ReduceMax", [INTS, i64(0)], {"keepdims": 0}, const=[1])


TIES = np.array([[1, 3, 3, 0], [2, 2, 1, 2], [0, 0, 0, 0]], dtype=F)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize(
    "attrs",
    [{}, {"axis": 1}, {"axis": -1, "keepdims": 0}, {"axis": 1, "select_last_index": 1}, {"select_last_index": 1}],
)
def test_arg(op: str, attrs: dict[str, Any]) -> None:
    check_op(op, [TIES], attrs)


# ------------------------------------------------------------------ tensor ops

T = rand(2, 3, 4, 5)

TENSOR = [
    case("Shape", [T]),
    case("Shape", [T], {"start": 1, "end": -1}, id="slice"),
    case("Shape", [T], {"start": -10, "end": 10}, id="clamp"),
    case("Size", [T]),
    case("Reshape", [T, i64(6, -1)], const=[1]),
    case("Reshape", [T, i64(0, 0, -1)], const=[1], id="zero-copy"),
    case("Reshape", [T, i64(2, 3, 20)], {"allowzero": 1}, const=[1], id="allowzero"),
    case("Transpose", [T]),
    case("Transpose", [T], {"perm": [0, 2, 3, 1]}, id="perm"),
    case("Squeeze", [rand(1, 3, 1, 4), i64(0, -2)], const=[1]),
    case("Squeeze", [rand(1, 3, 1, 4)], id="all"),
    case("Squeeze", [rand(1, 3, 1, 4)], {"axes": [2]}, opset=11, id="attr"),
    case("Unsqueeze", [rand(3, 4), i64(0, -1)], const=[1]),
    case("Unsqueeze", [rand(3, 4), i64(1, 3)], const=[1], id="middle"),
    case("Unsqueeze", [rand(3, 4)], {"axes": [0]}, opset=11, id="attr"),
    case("Concat", [rand(2, 3), rand(2, 5, seed=1), rand(2, 1, seed=2)], {"axis": 1}),
    case("Concat", [rand(2, 3), rand(1, 3, seed=1)], {"axis": -2}, id="neg"),
    case("Split", [rand(7, 4), i64(2, 5)], {"axis": 0}, n_outputs=2, const=[1]),
    case("Split", [rand(6, 4)], {"axis": 0}, n_outputs=3, opset=13, id="equal"),
    case("Split", [rand(7, 4)], {"axis": 0, "num_outputs": 3}, n_outputs=3, opset=18, id="num-outputs-uneven"),
    case("Split", [rand(3, 6)], {"axis": -1, "split": [1, 5]}, n_outputs=2, opset=11, id="attr"),
    case("Slice", [T, i64(0, 1), i64(2, 3), i64(1, 3), i64(1, 2)], const=[1, 2, 3, 4]),
    case("Slice", [T, i64(-1), i64(-(2**63)), i64(2), i64(-1)], const=[1, 2, 3, 4], id="reverse"),
    case("Slice", [T, i64(3, 1), i64(0, 100), i64(-1, 1), i64(-2, 1)], const=[1, 2, 3, 4], id="neg-step"),
    case("Slice", [T, i64(-100), i64(2**62)], const=[1, 2], id="clamp-noaxes"),
    case("Slice", [T, i64(3), i64(1), i64(2)], const=[1, 2, 3], id="empty"),
    case("Gather", [T, i64(1, 0, -1)], {"axis": 1}),
    case("Gather", [T, np.array([[0, 3], [-2, 1]], I64)], {"axis": -1}, id="2d-idx"),
    case("Gather", [rand(5, 3), np.array(2, I64)], id="scalar"),
    case("GatherElements", [rand(3, 4), np.array([[0, 2], [1, -1], [3, 0]], I64)], {"axis": 1}),
    case("GatherElements", [rand(3, 4), np.array([[0, 2, 1, 1]], I64)], {"axis": 0}, id="axis0"),
    case("GatherND", [rand(3, 4, 5), np.array([[0, 1], [2, -1]], I64)]),
    case("GatherND", [rand(3, 4, 5), np.array([[1], [0]], I64)], id="slices"),
    case("GatherND", [rand(3, 4, 5), np.array([[1], [3], [0]], I64)], {"batch_dims": 1}, id="batch1"),
    case("GatherND", [rand(2, 3, 4, 5), np.array([[[1, 2]], [[0, 0]]], I64)], {"batch_dims": 1}, id="batch1-k2"),
    case("ScatterND", [rand(4, 3), np.array([[1], [3]], I64), rand(2, 3, seed=1)]),
    case("ScatterND", [rand(4, 3), np.array([[1, 2], [0, 0]], I64), rand(2, seed=1)], id="elements"),
    case(
        "ScatterND",
        [rand(4, 3), np.array([[1], [1]], I64), rand(2, 3, seed=1)],
        {"reduction": "add"},
        id="add",
    ),
    case(
        "ScatterElements",
        [rand(3, 4), np.array([[1, 0], [2, 3]], I64), rand(2, 2, seed=1)],
        {"axis": 1},
    ),
    case(
        "ScatterElements",
        [rand(3, 4), np.array([[1, 1], [2, 2]], I64), rand(2, 2, seed=1)],
        {"axis": 0, "reduction": "max"},
        id="max",
    ),
    case("Expand", [rand(3, 1), i64(2, 3, 4)], const=[1]),
    case("Expand", [rand(3, 4), i64(1, 1)], const=[1], id="ones"),
    case("Tile", [rand(2, 3), i64(2, 3)], const=[1]),
    case("Pad", [rand(3, 4), i64(1, 2, 0, 1)], const=[1]),
    case("Pad", [rand(3, 4), i64(1, 2, 2, 1), np.array(1.5, F)], const=[1, 2], id="value"),
    case("Pad", [rand(3, 4), i64(2, 1, 1, 2)], {"mode": "reflect"}, const=[1], id="reflect"),
    case("Pad", [rand(3, 4), i64(2, 1, 1, 2)], {"mode": "edge"}, const=[1], id="edge"),
    case("Pad", [rand(3, 4), i64(2, 1, 1, 2)], {"mode": "wrap"}, const=[1], opset=19, id="wrap"),
    case("Pad", [rand(2, 3, 4), i64(1, 2), None, i64(-1)], const=[1, 3], opset=18, id="axes"),
    case("Pad", [rand(3, 4), i64(-1, 1, 0, -2)], const=[1], id="negative"),
    case("ConstantOfShape", [i64(2, 3)], const=[0]),
    case(
        "ConstantOfShape",
        [i64(2, 3)],
        {"value": helper.make_tensor("v", TensorProto.INT32, [1], [7])},
        const=[0],
        id="int",
    ),
    case("Range", [np.array(1, I64), np.array(10, I64), np.array(3, I64)]),
    case("Range", [np.array(1.0, F), np.array(-2.0, F), np.array(-0.7, F)], id="float-neg"),
    case("Range", [np.array(5, np.int32), np.array(2, np.int32), np.array(1, np.int32)], id="empty"),
    case("Trilu", [rand(2, 4, 5)]),
    case("Trilu", [rand(2, 4, 5), np.array(1, I64)], {"upper": 0}, const=[1], id="lower-k1"),
    case("Trilu", [rand(4, 5), np.array(-2, I64)], const=[1], id="upper-kneg"),
    case("OneHot", [np.array([0, 2, -1, 5], I64), np.array(4, I64), np.array([0, 1], F)]),
    case("OneHot", [np.array([[0, 2], [1, 3]], I64), np.array(4, I64), np.array([-1, 5], I64)], {"axis": 0}, id="ax0"),
    case("TopK", [TIES, i64(2)], n_outputs=2, const=[1]),
    case("TopK", [TIES, i64(3)], {"largest": 0}, n_outputs=2, const=[1], id="smallest"),
    case("TopK", [TIES, i64(2)], {"axis": 0}, n_outputs=2, const=[1], id="axis0"),
    case("NonZero", [np.array([[1, 0, 2], [0, 0, 3]], np.int32)]),
    case("NonZero", [TIES], id="float"),
    case("Einsum", [rand(2, 3, 4), rand(2, 4, 5, seed=1)], {"equation": "bij,bjk->bik"}),
    case("Einsum", [rand(3, 4)], {"equation": "ij->ji"}, id="transpose"),
    case("Einsum", [rand(3, 3)], {"equation": "ii"}, id="trace"),
    case("DepthToSpace", [rand(1, 8, 2, 3)], {"blocksize": 2}),
    case("DepthToSpace", [rand(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, id="crd"),
    case("SpaceToDepth", [rand(1, 2, 4, 6)], {"blocksize": 2}),
    case("CumSum", [rand(3, 4), np.array(1, I64)], const=[1]),
    case("CumSum", [rand(3, 4), np.array(0, I64)], {"exclusive": 1, "reverse": 1}, const=[1], id="excl-rev"),
    case("Compress", [rand(3, 4), np.array([True, False, True])], {"axis": 0}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "kw"), TENSOR)
def test_tensor(op: str, inputs: list[Any], attrs: dict[str, Any], kw: dict[str, Any]) -> None:
    check_op(op, inputs, attrs, **kw)


@pytest.mark.parametrize(
    "attrs",
    [
        {"value": helper.make_tensor("v", TensorProto.FLOAT, [2, 2], [1, 2, 3, 4])},
        {"value_float": 2.5},
        {"value_floats": [1.0, 2.0]},
        {"value_int": 3},
        {"value_ints": [4, 5, 6]},
    ],
    ids=lambda a: next(iter(a)),
)
def test_constant(attrs: dict[str, Any]) -> None:
    check_op("Constant", [], attrs)


# ------------------------------------------------------------------ quantization

QX = rand(2, 3, 4, lo=-2, hi=2)


@pytest.mark.parametrize(
    ("inputs", "attrs", "opset"),
    [
        ([QX, np.array(0.02, F), np.array(128, np.uint8)], {}, 13),
        ([QX, np.array(0.01, F), np.array(-3, np.int8)], {}, 13),
        ([QX, np.array(0.05, F)], {}, 13),
        ([QX, rand(3, lo=0.01, hi=0.03), np.array([0, 10, -10], np.int8)], {"axis": 1}, 13),
        ([QX, rand(2, 3, 2, lo=0.01, hi=0.05), np.zeros((2, 3, 2), np.int8)], {"axis": 2, "block_size": 2}, 21),
        ([QX, np.array(0.3, F)], {"output_dtype": TensorProto.INT8}, 21),
    ],
    ids=["u8", "i8", "nozp", "per-axis", "blocked", "output-dtype"],
)
def test_quantize_linear(inputs: list[Any], attrs: dict[str, Any], opset: int) -> None:
    check_op("QuantizeLinear", inputs, attrs, opset=opset, const=[1, 2])


def test_quantize_int4_saturates_like_clipped_int8() -> None:
    # onnxruntime's Python API cannot return int4 arrays; int4 = int8 result clipped to [-8, 7]
    int4 = ir.DataType.INT4.numpy()
    model = make_model("QuantizeLinear", [QX, np.array(0.3, F), np.array(1, int4)], const=[1, 2])
    (ours,) = run_ours(model, feeds_of(model, [QX]))
    (ref8,) = check_op("QuantizeLinear", [QX, np.array(0.3, F), np.array(1, np.int8)], const=[1, 2])
    assert ours.dtype == int4
    np.testing.assert_array_equal(ours.astype(np.int8), np.clip(ref8, -8, 7))


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], F)
    (y,) = check_op("QuantizeLinear", [x, np.array(1.0, F), np.array(0, np.int8)], const=[1, 2])
    np.testing.assert_array_equal(y, np.rint(np.clip(x, -128, 127)).astype(np.int8))


@pytest.mark.parametrize(
    ("inputs", "attrs", "opset"),
    [
        ([rand(2, 3, dtype=np.uint8, lo=0, hi=255), np.array(0.02, F), np.array(128, np.uint8)], {}, 13),
        ([rand(2, 3, dtype=np.int8, lo=-128, hi=127), rand(3, lo=0.01, hi=0.1), np.zeros(3, np.int8)], {}, 13),
        ([rand(4, 3, dtype=np.int32, lo=-999, hi=999), np.array(0.001, F)], {}, 13),
        (
            [rand(2, 4, dtype=np.int8, lo=-128, hi=127), rand(2, 2, lo=0.01, hi=0.1), np.ones((2, 2), np.int8)],
            {"axis": 1, "block_size": 2},
            21,
        ),
    ],
    ids=["u8", "per-axis", "int32", "blocked"],
)
def test_dequantize_linear(inputs: list[Any], attrs: dict[str, Any], opset: int) -> None:
    check_op("DequantizeLinear", inputs, attrs, opset=opset, const=[1, 2])


def test_dynamic_quantize_linear() -> None:
    check_op("DynamicQuantizeLinear", [QX], n_outputs=3)
    check_op("DynamicQuantizeLinear", [np.abs(QX)], n_outputs=3)


A8 = rand(3, 4, dtype=np.uint8, lo=0, hi=255)
B8 = rand(4, 5, dtype=np.uint8, lo=0, hi=255, seed=1)
# 7-bit signed weights: onnxruntime's u8s8 kernels can saturate int16 pair sums with full-range int8
S8 = rand(4, 5, dtype=np.int8, lo=-64, hi=63, seed=2)


def test_matmul_integer() -> None:
    check_op("MatMulInteger", [A8, B8, np.array(12, np.uint8), np.array(130, np.uint8)])
    check_op("MatMulInteger", [A8, S8, np.array(1, np.uint8), np.arange(5).astype(np.int8)])
    check_op("MatMulInteger", [A8, B8])


def test_qlinear_matmul() -> None:
    f = lambda v: np.array(v, F)  # noqa: E731
    check_op(
        "QLinearMatMul",
        [A8, f(0.02), np.array(100, np.uint8), B8, f(0.01), np.array(120, np.uint8), f(0.3), np.array(5, np.uint8)],
    )


def test_conv_integer_and_qlinear_conv() -> None:
    x = rand(1, 2, 6, 6, dtype=np.uint8, lo=0, hi=255)
    w = rand(3, 2, 3, 3, dtype=np.uint8, lo=0, hi=255, seed=1)
    check_op("ConvInteger", [x, w, np.array(100, np.uint8), np.array(120, np.uint8)], {"pads": [1, 1, 1, 1]})
    check_op("ConvInteger", [x, w], {"strides": [2, 2]})
    ws = rand(3, 2, 3, 3, dtype=np.int8, lo=-64, hi=63, seed=1)
    f = lambda v: np.array(v, F)  # noqa: E731
    check_op(
        "QLinearConv",
        [
            x,
            f(0.02),
            np.array(100, np.uint8),
            ws,
            rand(3, lo=0.005, hi=0.02),
            np.zeros(3, np.int8),
            f(0.2),
            np.array(10, np.uint8),
            rand(3, dtype=np.int32, lo=-500, hi=500),
        ],
        {"pads": [1, 1, 1, 1]},
    )


# ------------------------------------------------------------------ cross-cutting properties


def test_every_tested_op_is_registered() -> None:
    tested = {p.values[0] for p in ELEMENTWISE + NN + TENSOR} | set(REDUCE_OPS) | {"ArgMax", "ArgMin", "Resize"}
    registered = {op for dom, op in supported_ops() if dom == ""}
    assert tested <= registered


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "const", "n_outputs"),
    [
        ("Conv", [IMG2, W3], {"strides": [2, 2], "pads": [1, 0, 1, 2]}, [1], 1),
        ("Reshape", [T, i64(0, -1, 5)], {}, [1], 1),
        ("ReduceMean", [R, i64(1)], {"keepdims": 0}, [1], 1),
        ("Gather", [T, np.array([[0, 1]], I64)], {"axis": 2}, [1], 1),
        ("Split", [rand(7, 4)], {"num_outputs": 2}, [], 2),
        ("MaxPool", [IMG2], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [], 1),
        ("Slice", [T, i64(-1), i64(-(2**63)), i64(3), i64(-2)], {}, [1, 2, 3, 4], 1),
        ("LayerNormalization", [X, rand(4)], {}, [1], 3),
    ],
)
def test_infer_shapes_matches_onnxruntime(
    op: str, inputs: list[Any], attrs: dict[str, Any], const: list[int], n_outputs: int
) -> None:
    model = make_model(op, inputs, attrs, const=const, n_outputs=n_outputs)
    irm = ir.from_proto(model)
    for out in irm.graph.outputs:
        out.shape = None
    infer_shapes(irm)
    ref = run_ort(model, feeds_of(model, inputs))
    for value, arr in zip(irm.graph.outputs, ref, strict=True):
        assert value.shape is not None and list(value.shape) == list(arr.shape), (value.name, value.shape, arr.shape)
        assert value.dtype is not None and value.dtype.numpy() == arr.dtype


def test_unknown_op_raises_interpreter_error_naming_node() -> None:
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery_node", domain="example.domain")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("example.domain", 1)]
    )
    with pytest.raises(InterpreterError, match="mystery_node") as info:
        run(ir.from_proto(model), {"x": np.zeros(2, F)})
    assert "NoSuchOp" in str(info.value)
    assert info.value.node == "mystery_node"


def test_kernel_failure_is_reported_against_its_node() -> None:
    model = make_model("Reshape", [T, i64(7, -1)], const=[])
    with pytest.raises(InterpreterError, match="reshape_node"):
        run(ir.from_proto(model), feeds_of(model, [T, i64(7, -1)]))


# ------------------------------------------------------------------ real models


@pytest.mark.models
@pytest.mark.parametrize("name", ["fmnist_cnn", "efficientnet_lite0", "minilm"])
def test_real_model_matches_onnxruntime(name: str, real_onnx) -> None:
    path, feeds = real_onnx(name)
    model = ir.load(path)
    start = time.perf_counter()
    ours = run(model, feeds)
    elapsed = time.perf_counter() - start
    proto = onnx.load(str(path))
    ref = run_ort(proto, feeds)
    names = [o.name for o in proto.graph.output]
    for out_name, r in zip(names, ref, strict=True):
        err = float(np.max(np.abs(ours[out_name].astype(np.float64) - r)))
        assert err <= 1e-4, f"{name} output {out_name}: max abs error {err}"
    print(f"{name}: interpreter {elapsed:.2f}s")
