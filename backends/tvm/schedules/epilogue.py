"""Activations as TE/TIR expressions, for fusing into a kernel's epilogue."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tvm import tirx

# Eigen's rational approximation of erf on [-4, 4] (max error ~4e-7 in fp32), vectorisable unlike libm erf
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def horner(coefs: Sequence[float], x: tirx.PrimExpr) -> tirx.PrimExpr:
    """The polynomial ``coefs[0] * x^(n-1) + ... + coefs[-1]`` evaluated by Horner's rule in ``x``'s dtype."""
    dt = str(x.ty)
    p = tirx.const(coefs[0], dt)
    for coef in coefs[1:]:
        p = p * x + tirx.const(coef, dt)
    return p


def fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """erf(x) as a polynomial ratio (fp32 accurate); libm's erf stays for other dtypes."""
    dt = str(x.ty)
    if dt != "float32":
        return tirx.erf(x)
    c = lambda v: tirx.const(v, dt)  # noqa: E731
    xc = tirx.max(tirx.min(x, c(4.0)), c(-4.0))
    x2 = xc * xc
    return xc * horner(_ERF_P, x2) / horner(_ERF_Q, x2)


SUPPORTED = frozenset(
    {"", "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "GeluTanh", "Silu"}
)


def activation_expr(x: tirx.PrimExpr, name: str, params: Sequence[float]) -> tirx.PrimExpr:
    """``name(x)`` (cacc activation names) as a TIR expression; ValueError for unknown names."""
    dt = str(x.ty)
    c = lambda v: tirx.const(v, dt)  # noqa: E731
    if name == "":
        return x
    if name == "Relu":
        return tirx.max(x, c(0.0))
    if name == "Clip":
        lo, hi = ([*list(params), None, None])[:2]
        y = x
        if lo is not None:
            y = tirx.max(y, c(lo))
        if hi is not None:
            y = tirx.min(y, c(hi))
        return y
    if name == "Sigmoid":
        return tirx.sigmoid(x)
    if name == "Tanh":
        return tirx.tanh(x)
    if name == "LeakyRelu":
        alpha = params[0] if params else 0.01
        return tirx.Select(x >= c(0.0), x, x * c(alpha))
    if name in ("HardSigmoid", "HardSwish"):
        alpha, beta = (1.0 / 6.0, 0.5) if name == "HardSwish" else ((list(params) + [0.2, 0.5][len(params) :])[:2])
        hs = tirx.min(tirx.max(x * c(alpha) + c(beta), c(0.0)), c(1.0))
        return hs if name == "HardSigmoid" else x * hs
    if name == "Gelu":
        return x * (c(0.5) + fast_erf(x * c(0.5**0.5)) * c(0.5))
    if name == "GeluTanh":
        inner = c(math.sqrt(2.0 / math.pi)) * (x + c(0.044715) * x * x * x)
        return c(0.5) * x * (c(1.0) + tirx.tanh(inner))
    if name == "Silu":
        return x * tirx.sigmoid(x)
    raise ValueError(f"activation '{name}' has no TIR epilogue")
