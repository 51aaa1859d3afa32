"""Elementwise ONNX ops: arithmetic, math functions, activations, comparisons, logic, casts.

Every kernel keeps the input dtype (``float32`` in, ``float32`` out): scalar constants
are created in the input's dtype, and results that numpy would widen are cast back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce as _fold

import numpy as np
import onnx_ir as ir

from compiler.ir.ops import activations as act
from compiler.ir.ops.registry import Inputs, attr, register

Unary = Callable[[np.ndarray], np.ndarray]


def _req(inputs: Inputs, i: int, op: str) -> np.ndarray:
    """Input ``i``, which the op requires."""
    x = inputs[i] if i < len(inputs) else None
    if x is None:
        raise ValueError(f"{op} needs input {i}")
    return x


def _same(x: np.ndarray, y: np.ndarray | np.generic) -> np.ndarray:
    """``y`` as an array of ``x``'s dtype."""
    return np.asarray(y).astype(x.dtype, copy=False)


def _register_unary(op_type: str, fn: Unary) -> None:
    def kernel(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
        x = _req(inputs, 0, op_type)
        with np.errstate(all="ignore"):
            return [_same(x, fn(x))]

    kernel.__name__ = f"kernel_{op_type}"
    kernel.__doc__ = f"ONNX {op_type}."
    register(op_type)(kernel)


def _register_binary(op_type: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    def kernel(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
        a, b = _req(inputs, 0, op_type), _req(inputs, 1, op_type)
        with np.errstate(all="ignore"):
            return [np.asarray(fn(a, b))]

    kernel.__name__ = f"kernel_{op_type}"
    kernel.__doc__ = f"ONNX {op_type} (numpy broadcasting)."
    register(op_type)(kernel)


# ------------------------------------------------------------------ arithmetic


def int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics), as ONNX ``Div`` defines it."""
    q = np.floor_divide(a, b)
    r = a - q * b
    fix = (r != 0) & ((a < 0) != (b < 0))
    return np.where(fix, q + 1, q).astype(np.result_type(a, b), copy=False)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return int_div(a, b)
    return np.divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return np.power(a, b.astype(a.dtype, copy=False))
    if np.issubdtype(b.dtype, np.floating):
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    return np.power(a, b.astype(a.dtype, copy=False))


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
    "Pow": _pow,
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
}
for _name, _fn in _BINARY.items():
    _register_binary(_name, _fn)


@register("Mod")
def mod(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Mod: ``fmod=1`` → C ``fmod`` (sign of the dividend), else Python-style (sign of the divisor)."""
    a, b = _req(inputs, 0, "Mod"), _req(inputs, 1, "Mod")
    with np.errstate(all="ignore"):
        out = np.fmod(a, b) if attr(node, "fmod", 0) else np.mod(a, b)
    return [out]


@register("BitShift")
def bit_shift(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX BitShift on unsigned integers (``direction`` LEFT / RIGHT)."""
    a, b = _req(inputs, 0, "BitShift"), _req(inputs, 1, "BitShift")
    b = b.astype(a.dtype, copy=False)
    direction = attr(node, "direction", "")
    if direction == "LEFT":
        return [np.left_shift(a, b)]
    if direction == "RIGHT":
        return [np.right_shift(a, b)]
    raise ValueError(f"BitShift direction must be LEFT or RIGHT, got '{direction}'")


# ------------------------------------------------------------------ unary math


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return np.divide(x.dtype.type(1), x)


def _softplus(x: np.ndarray) -> np.ndarray:
    return act.softplus(x)


def _softsign(x: np.ndarray) -> np.ndarray:
    return x / (x.dtype.type(1) + np.abs(x))


_UNARY: dict[str, Unary] = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Reciprocal": _reciprocal,
    "Exp": np.exp,
    "Log": np.log,
    "Erf": act.erf,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.rint,  # half to even, like ONNX
    "Sign": np.sign,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "BitwiseNot": np.invert,
    "Relu": act.relu,
    "Sigmoid": act.sigmoid,
    "HardSwish": act.hard_swish,
    "Tanh": act.tanh,
    "Softplus": _softplus,
    "Softsign": _softsign,
    "Mish": act.mish,
}
for _name, _ufn in _UNARY.items():
    _register_unary(_name, _ufn)


@register("Not")
def logical_not(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Not."""
    return [np.logical_not(_req(inputs, 0, "Not"))]


@register("IsNaN")
def is_nan(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX IsNaN."""
    return [np.isnan(_req(inputs, 0, "IsNaN"))]


@register("IsInf")
def is_inf(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX IsInf with ``detect_negative`` / ``detect_positive``."""
    x = _req(inputs, 0, "IsInf")
    neg = bool(attr(node, "detect_negative", 1))
    pos = bool(attr(node, "detect_positive", 1))
    return [(np.isposinf(x) & pos) | (np.isneginf(x) & neg)]


# ------------------------------------------------------------------ activations with attributes


@register("LeakyRelu")
def leaky_relu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX LeakyRelu (``alpha`` = 0.01)."""
    return [act.leaky_relu(_req(inputs, 0, "LeakyRelu"), attr(node, "alpha", 0.01))]


@register("PRelu")
def prelu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX PRelu: ``slope`` broadcasts (unidirectionally) against ``X``."""
    x, slope = _req(inputs, 0, "PRelu"), _req(inputs, 1, "PRelu")
    return [np.where(x < 0, x * slope.astype(x.dtype, copy=False), x)]


@register("HardSigmoid")
def hard_sigmoid(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX HardSigmoid (``alpha`` = 0.2, ``beta`` = 0.5)."""
    x = _req(inputs, 0, "HardSigmoid")
    return [act.hard_sigmoid(x, attr(node, "alpha", 0.2), attr(node, "beta", 0.5))]


@register("Elu")
def elu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Elu (``alpha`` = 1)."""
    x = _req(inputs, 0, "Elu")
    return [act.elu(x, attr(node, "alpha", 1.0))]


@register("Celu")
def celu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Celu (``alpha`` = 1): ``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``."""
    x = _req(inputs, 0, "Celu")
    alpha = x.dtype.type(attr(node, "alpha", 1.0))
    return [np.maximum(x.dtype.type(0), x) + np.minimum(x.dtype.type(0), alpha * np.expm1(x / alpha))]


@register("Selu")
def selu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Selu with its default ``alpha`` / ``gamma``."""
    x = _req(inputs, 0, "Selu")
    alpha = attr(node, "alpha", 1.67326319217681884765625)
    gamma = x.dtype.type(attr(node, "gamma", 1.05070102214813232421875))
    return [gamma * act.elu(x, alpha)]


@register("ThresholdedRelu")
def thresholded_relu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX ThresholdedRelu (``alpha`` = 1)."""
    x = _req(inputs, 0, "ThresholdedRelu")
    return [np.where(x > x.dtype.type(attr(node, "alpha", 1.0)), x, x.dtype.type(0))]


@register("Gelu")
def gelu(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Gelu (opset 20), ``approximate`` = ``none`` | ``tanh``."""
    x = _req(inputs, 0, "Gelu")
    approximate = attr(node, "approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got '{approximate}'")
    return [act.gelu(x, approximate)]


@register("Shrink")
def shrink(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Shrink (``lambd`` = 0.5, ``bias`` = 0)."""
    x = _req(inputs, 0, "Shrink")
    lambd, bias = attr(node, "lambd", 0.5), attr(node, "bias", 0.0)
    out = np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))
    return [_same(x, out)]


@register("Clip")
def clip(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Clip: ``min`` / ``max`` as optional inputs (opset ≥ 11) or attributes (opset 6)."""
    x = _req(inputs, 0, "Clip")
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    lo_val = lo if lo is not None else attr(node, "min", None)
    hi_val = hi if hi is not None else attr(node, "max", None)
    out = x
    if lo_val is not None:
        out = np.maximum(out, _same(x, lo_val))
    if hi_val is not None:
        out = np.minimum(out, _same(x, hi_val))
    return [out]


# ------------------------------------------------------------------ variadic


def _variadic(op: str, inputs: Inputs) -> list[np.ndarray]:
    arrays = [x for x in inputs if x is not None]
    if not arrays:
        raise ValueError(f"{op} needs at least one input")
    return arrays


@register("Min")
def min_(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Min (variadic, broadcasting)."""
    return [np.asarray(_fold(np.minimum, _variadic("Min", inputs)))]


@register("Max")
def max_(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Max (variadic, broadcasting)."""
    return [np.asarray(_fold(np.maximum, _variadic("Max", inputs)))]


@register("Sum")
def sum_(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Sum (variadic, broadcasting)."""
    return [np.asarray(_fold(np.add, _variadic("Sum", inputs)))]


@register("Mean")
def mean(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Mean (variadic, broadcasting)."""
    arrays = _variadic("Mean", inputs)
    total = np.asarray(_fold(np.add, arrays))
    return [_same(total, total / total.dtype.type(len(arrays)))]


# ------------------------------------------------------------------ selection, casts, identity


@register("Where")
def where(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Where (broadcasting)."""
    cond, x, y = _req(inputs, 0, "Where"), _req(inputs, 1, "Where"), _req(inputs, 2, "Where")
    return [np.where(cond, x, y)]


def cast_array(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Cast like ONNX ``Cast``: float → int truncates, anything → bool is ``!= 0``."""
    if to == np.bool_:
        return x != 0 if x.dtype != np.bool_ else x
    with np.errstate(all="ignore"):
        return x.astype(to)


@register("Cast")
def cast(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Cast (attribute ``to``)."""
    to = attr(node, "to", None)
    if to is None:
        raise ValueError("Cast needs attribute 'to'")
    return [cast_array(_req(inputs, 0, "Cast"), ir.DataType(to).numpy())]


@register("CastLike")
def cast_like(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX CastLike: cast input 0 to input 1's dtype."""
    return [cast_array(_req(inputs, 0, "CastLike"), _req(inputs, 1, "CastLike").dtype)]


@register("Identity")
def identity(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Identity."""
    return [_req(inputs, 0, "Identity")]


@register("Dropout")
def dropout(node: ir.Node, inputs: Inputs) -> list[np.ndarray]:
    """ONNX Dropout in inference: identity; the mask output is all-true."""
    x = _req(inputs, 0, "Dropout")
    training = inputs[2] if len(inputs) > 2 else None
    if training is not None and bool(training):
        raise ValueError("Dropout with training_mode=true is not supported by the reference interpreter")
    return [x, np.ones(x.shape, dtype=np.bool_)]
