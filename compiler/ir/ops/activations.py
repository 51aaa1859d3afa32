"""Numpy activation functions shared by the ONNX kernels and cacc's fused ops."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import special


def _f(x: np.ndarray, value: float) -> np.generic:
    return x.dtype.type(value)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, _f(x, 0))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return special.expit(x).astype(x.dtype, copy=False)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def clip(x: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    out = x
    if lo is not None:
        out = np.maximum(out, _f(x, lo))
    if hi is not None:
        out = np.minimum(out, _f(x, hi))
    return out


def leaky_relu(x: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    return np.where(x >= 0, x, x * _f(x, alpha))


def hard_sigmoid(x: np.ndarray, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    return np.clip(x * _f(x, alpha) + _f(x, beta), _f(x, 0), _f(x, 1))


def hard_swish(x: np.ndarray) -> np.ndarray:
    return x * hard_sigmoid(x, 1.0 / 6.0, 0.5)


def erf(x: np.ndarray) -> np.ndarray:
    return special.erf(x).astype(x.dtype, copy=False)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    half, one = _f(x, 0.5), _f(x, 1.0)
    if approximate == "tanh":
        inner = _f(x, np.sqrt(2.0 / np.pi)) * (x + _f(x, 0.044715) * x * x * x)
        return half * x * (one + np.tanh(inner))
    return half * x * (one + erf(x * _f(x, 1.0 / np.sqrt(2.0))))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


#: Activations a fused op can apply, by name. Each takes ``(x, params)`` where ``params``
#: are the activation's float parameters in ONNX attribute order.
FUSABLE: dict[str, Callable[[np.ndarray, Sequence[float]], np.ndarray]] = {
    "Relu": lambda x, p: relu(x),
    "Sigmoid": lambda x, p: sigmoid(x),
    "Tanh": lambda x, p: tanh(x),
    "Clip": lambda x, p: clip(x, p[0], p[1]),
    "LeakyRelu": lambda x, p: leaky_relu(x, *p),
    "HardSigmoid": lambda x, p: hard_sigmoid(x, *p),
    "HardSwish": lambda x, p: hard_swish(x),
    "Gelu": lambda x, p: gelu(x),
    "GeluTanh": lambda x, p: gelu(x, "tanh"),
    "Silu": lambda x, p: silu(x),
}


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """ELU: ``x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    return np.where(x > 0, x, _f(x, alpha) * np.expm1(np.minimum(x, _f(x, 0))))


def softplus(x: np.ndarray) -> np.ndarray:
    """Numerically stable ``log(1 + exp(x))``."""
    return np.logaddexp(_f(x, 0), x)


def mish(x: np.ndarray) -> np.ndarray:
    """Mish: ``x * tanh(softplus(x))``."""
    return x * np.tanh(softplus(x))
