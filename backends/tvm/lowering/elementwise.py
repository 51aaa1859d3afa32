"""Elementwise ops: arithmetic, comparisons, logic, activations, Where, Cast, Clip.

Every op here also folds at emit time (numpy) when all its inputs are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir
from scipy import special
from tvm import relax, te, tirx

from backends.tvm.lowering.common import (
    EmitContext,
    Out,
    all_inputs_known,
    attr,
    input_at,
    lowering,
    np_dtype,
    relax_dtype,
    scalar,
)
from backends.tvm.schedules.epilogue import activation_expr, fast_erf
from compiler.errors import BackendError

R = relax.op


def emit_pointwise_te(
    ctx: EmitContext, x: relax.Expr, fn: Callable[[tirx.PrimExpr], tirx.PrimExpr], name: str
) -> relax.Expr:
    """``fn`` applied to every element of ``x`` as a TE compute: unlike Relax's ``erf`` / ``gelu`` (libm calls,
    one element at a time) the expression vectorises, and it still fuses with neighbouring elementwise ops."""
    return ctx.bb.emit_te(lambda t: te.compute(t.shape, lambda *i: fn(t(*i)), name=name), x, primfunc_name_hint=name)


# ------------------------------------------------------------------ binary / variadic

_BINARY: dict[str, tuple[Callable[[relax.Expr, relax.Expr], relax.Expr], Callable[..., np.ndarray]]] = {
    "Add": (R.add, np.add),
    "Sub": (R.subtract, np.subtract),
    "Mul": (R.multiply, np.multiply),
    "Equal": (R.equal, np.equal),
    "Less": (R.less, np.less),
    "LessOrEqual": (R.less_equal, np.less_equal),
    "Greater": (R.greater, np.greater),
    "GreaterOrEqual": (R.greater_equal, np.greater_equal),
    "And": (R.logical_and, np.logical_and),
    "Or": (R.logical_or, np.logical_or),
    "Xor": (R.logical_xor, np.logical_xor),
    "BitwiseAnd": (R.bitwise_and, np.bitwise_and),
    "BitwiseOr": (R.bitwise_or, np.bitwise_or),
    "BitwiseXor": (R.bitwise_xor, np.bitwise_xor),
}


def _np_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)  # ONNX integer Div truncates toward zero
    return np.divide(a, b).astype(a.dtype, copy=False)


def _out_dtype(node: ir.Node) -> np.dtype:
    return np_dtype(node.outputs[0].dtype, node)


@lowering(*_BINARY)
def lower_binary(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Binary broadcasting ops that map one to one onto Relax."""
    rfn, nfn = _BINARY[node.op_type]
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError(f"{node.op_type} needs two inputs", node=node.name)
    if all_inputs_known(ctx, node):
        return [np.asarray(nfn(ctx.arr(a), ctx.arr(b))).astype(_out_dtype(node), copy=False)]
    return [ctx.emit(rfn(ctx.expr(a), ctx.expr(b)))]


@lowering("Div")
def lower_div(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Div: true division for floats, truncating division for integers."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError("Div needs two inputs", node=node.name)
    if all_inputs_known(ctx, node):
        return [_np_div(ctx.arr(a), ctx.arr(b))]  # type: ignore[arg-type]
    if ctx.dtype(a).startswith(("int", "uint")):
        # relax.floor_divide floors; ONNX truncates: trunc(a / b) computed in float64 is exact for |x| < 2**53.
        q = R.trunc(R.divide(R.astype(ctx.expr(a), "float64"), R.astype(ctx.expr(b), "float64")))
        return [ctx.emit(R.astype(q, ctx.dtype(a)))]
    return [ctx.emit(R.divide(ctx.expr(a), ctx.expr(b)))]


@lowering("Pow")
def lower_pow(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Pow; the exponent is cast to the base's dtype, and x**2 / x**0.5 / x**1 are specialised."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError("Pow needs two inputs", node=node.name)
    if all_inputs_known(ctx, node):
        base = ctx.arr(a)
        return [np.power(base, ctx.arr(b).astype(base.dtype)).astype(base.dtype)]  # type: ignore[union-attr]
    x = ctx.expr(a)
    e = ctx.const(b)
    if e is not None and e.size == 1:
        ev = float(e.reshape(-1)[0])
        if ev == 1.0:
            return [x]
        if ev == 2.0:
            return [ctx.emit(R.multiply(x, x))]
        if ev == 0.5:
            return [ctx.emit(R.sqrt(x))]
    return [ctx.emit(R.power(x, R.astype(ctx.expr(b), ctx.dtype(a))))]


@lowering("Mod")
def lower_mod(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Mod: fmod=1 -> C fmod (sign of dividend), fmod=0 -> Python mod (sign of divisor)."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        raise BackendError("Mod needs two inputs", node=node.name)
    fmod = attr(node, "fmod", 0)
    if all_inputs_known(ctx, node):
        fn = np.fmod if fmod else np.mod
        return [fn(ctx.arr(a), ctx.arr(b))]
    fn_r = R.mod if fmod else R.floor_mod
    return [ctx.emit(fn_r(ctx.expr(a), ctx.expr(b)))]


_VARIADIC = {"Max": (R.maximum, np.maximum), "Min": (R.minimum, np.minimum), "Sum": (R.add, np.add)}


@lowering(*_VARIADIC, "Mean")
def lower_variadic(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Max / Min / Sum / Mean over any number of broadcasting inputs."""
    inputs = [v for v in node.inputs if v is not None]
    if not inputs:
        raise BackendError(f"{node.op_type} needs at least one input", node=node.name)
    rfn, nfn = _VARIADIC.get(node.op_type, (R.add, np.add))
    if all_inputs_known(ctx, node):
        acc: np.ndarray = ctx.arr(inputs[0])
        for v in inputs[1:]:
            acc = nfn(acc, ctx.arr(v))
        if node.op_type == "Mean":
            acc = np.asarray(acc / len(inputs))
        return [np.asarray(acc).astype(_out_dtype(node), copy=False)]
    expr = ctx.expr(inputs[0])
    for v in inputs[1:]:
        expr = ctx.emit(rfn(expr, ctx.expr(v)))
    if node.op_type == "Mean":
        expr = ctx.emit(R.divide(expr, scalar(len(inputs), ctx.dtype(inputs[0]))))
    return [expr]


# ------------------------------------------------------------------ unary


def _relu_np(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0).astype(x.dtype)


_UNARY: dict[str, tuple[Callable[[relax.Expr], relax.Expr], Callable[[np.ndarray], np.ndarray]]] = {
    "Relu": (R.nn.relu, _relu_np),
    "Sigmoid": (R.sigmoid, lambda x: special.expit(x).astype(x.dtype)),
    "Tanh": (R.tanh, np.tanh),
    "Exp": (R.exp, np.exp),
    "Log": (R.log, np.log),
    "Sqrt": (R.sqrt, np.sqrt),
    "Neg": (R.negative, np.negative),
    "Abs": (R.abs, np.abs),
    "Erf": (R.erf, lambda x: special.erf(x).astype(x.dtype)),
    "Floor": (R.floor, np.floor),
    "Ceil": (R.ceil, np.ceil),
    "Round": (R.round, np.round),
    "Sign": (R.sign, np.sign),
    "Sin": (R.sin, np.sin),
    "Cos": (R.cos, np.cos),
    "Tan": (R.tan, np.tan),
    "Not": (R.logical_not, np.logical_not),
    "IsNaN": (R.isnan, np.isnan),
    "Softsign": (lambda x: R.divide(x, R.add(R.abs(x), relax.const(1.0, x.ty.dtype))), lambda x: x / (1 + abs(x))),
}


@lowering(*_UNARY)
def lower_unary(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Unary ops that map one to one onto Relax."""
    rfn, nfn = _UNARY[node.op_type]
    x = node.inputs[0]
    if x is None:
        raise BackendError(f"{node.op_type} needs an input", node=node.name)
    if all_inputs_known(ctx, node):
        return [np.asarray(nfn(ctx.arr(x))).astype(_out_dtype(node), copy=False)]  # type: ignore[arg-type]
    if node.op_type == "Erf" and ctx.dtype(x) == "float32":
        return [emit_pointwise_te(ctx, ctx.expr(x), fast_erf, "erf")]
    return [ctx.emit(rfn(ctx.expr(x)))]


@lowering("Identity", "Dropout")
def lower_identity(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Identity, and Dropout in inference mode (its optional mask output is all ones)."""
    x = node.inputs[0]
    if x is None:
        raise BackendError(f"{node.op_type} needs an input", node=node.name)
    out: Out = ctx.const(x) if ctx.is_const(x) else ctx.expr(x)  # type: ignore[assignment]
    if node.op_type == "Dropout" and len(node.outputs) > 1:
        return [out, np.ones([int(d) for d in ctx.shape(x)], dtype=np.bool_)]
    return [out]


@lowering("Reciprocal")
def lower_reciprocal(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """1 / x."""
    x = node.inputs[0]
    if x is None:
        raise BackendError("Reciprocal needs an input", node=node.name)
    return [ctx.emit(R.divide(scalar(1.0, ctx.dtype(x)), ctx.expr(x)))]


@lowering("IsInf")
def lower_isinf(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """IsInf with detect_positive / detect_negative."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    pos, neg = attr(node, "detect_positive", 1), attr(node, "detect_negative", 1)
    inf = R.isinf(x)
    if pos and neg:
        return [ctx.emit(inf)]
    zero = scalar(0.0, ctx.dtype(x))
    side = R.greater(x, zero) if pos else R.less(x, zero)
    if not pos and not neg:
        return [ctx.emit(R.logical_and(inf, R.logical_not(inf)))]
    return [ctx.emit(R.logical_and(inf, side))]


# ------------------------------------------------------------------ activations (shared with fused ops)


def apply_activation(ctx: EmitContext, x: relax.Expr, name: str, params: Sequence[float], node: ir.Node) -> relax.Expr:
    """Emit activation ``name`` (cacc FUSABLE names / ONNX op types) with its float params on ``x``."""
    dt = str(x.ty.dtype)
    c = lambda v: scalar(v, dt)  # noqa: E731
    if name == "":
        return x
    if name == "Relu":
        return ctx.emit(R.nn.relu(x))
    if name == "Sigmoid":
        return ctx.emit(R.sigmoid(x))
    if name == "Tanh":
        return ctx.emit(R.tanh(x))
    if name == "Clip":
        lo, hi = ([*list(params), None, None])[:2]
        y = x
        if lo is not None:
            y = R.maximum(y, c(lo))
        if hi is not None:
            y = R.minimum(y, c(hi))
        return ctx.emit(y)
    if name == "LeakyRelu":
        alpha = params[0] if params else 0.01
        return ctx.emit(R.where(R.greater_equal(x, c(0.0)), x, R.multiply(x, c(alpha))))
    if name in ("HardSigmoid", "HardSwish"):
        if name == "HardSwish":
            alpha, beta = 1.0 / 6.0, 0.5
        else:
            alpha = params[0] if len(params) > 0 else 0.2
            beta = params[1] if len(params) > 1 else 0.5
        hs = R.clip(R.add(R.multiply(x, c(alpha)), c(beta)), 0.0, 1.0)
        return ctx.emit(hs if name == "HardSigmoid" else R.multiply(x, hs))
    if name == "Gelu":
        if dt == "float32":
            return emit_pointwise_te(ctx, x, lambda v: activation_expr(v, "Gelu", ()), "gelu")
        return ctx.emit(R.nn.gelu(x))
    if name == "GeluTanh":
        return ctx.emit(R.nn.gelu_tanh(x))
    if name == "Silu":
        return ctx.emit(R.multiply(x, R.sigmoid(x)))
    raise BackendError(f"activation '{name}' is not supported by the TVM backend", node=node.name)


@lowering("LeakyRelu", "HardSigmoid", "HardSwish", "Gelu")
def lower_activation(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Parametrised activations, via :func:`apply_activation`."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    name = node.op_type
    params: list[float] = []
    if name == "LeakyRelu":
        params = [attr(node, "alpha", 0.01)]
    elif name == "HardSigmoid":
        params = [attr(node, "alpha", 0.2), attr(node, "beta", 0.5)]
    elif name == "Gelu" and attr(node, "approximate", "none") == "tanh":
        name = "GeluTanh"
    return [apply_activation(ctx, x, name, params, node)]


@lowering("Elu", "Selu", "Softplus", "Mish", "ThresholdedRelu", "Celu")
def lower_exp_activation(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Exponential-family activations."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    dt = ctx.dtype(x)
    c = lambda v: scalar(v, dt)  # noqa: E731
    zero = c(0.0)
    op = node.op_type
    if op == "Softplus":
        return [ctx.emit(R.log(R.add(R.exp(x), c(1.0))))]
    if op == "Mish":
        return [ctx.emit(R.multiply(x, R.tanh(R.log(R.add(R.exp(x), c(1.0))))))]
    if op == "ThresholdedRelu":
        alpha = attr(node, "alpha", 1.0)
        return [ctx.emit(R.where(R.greater(x, c(alpha)), x, zero))]
    if op == "Celu":
        alpha = attr(node, "alpha", 1.0)
        neg = R.multiply(c(alpha), R.subtract(R.exp(R.divide(x, c(alpha))), c(1.0)))
        return [ctx.emit(R.add(R.maximum(x, zero), R.minimum(zero, neg)))]
    alpha = attr(node, "alpha", 1.0 if op == "Elu" else 1.67326319217681884765625)
    gamma = attr(node, "gamma", 1.0507010030746459960938) if op == "Selu" else 1.0
    neg = R.multiply(c(alpha), R.subtract(R.exp(x), c(1.0)))
    y = R.where(R.greater(x, zero), x, neg)
    if op == "Selu":
        y = R.multiply(c(gamma), y)
    return [ctx.emit(y)]


@lowering("PRelu")
def lower_prelu(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """PRelu: slope broadcasts against x."""
    x = ctx.expr(node.inputs[0])  # type: ignore[arg-type]
    slope = ctx.expr(node.inputs[1])  # type: ignore[arg-type]
    zero = scalar(0.0, ctx.dtype(x))
    return [ctx.emit(R.where(R.less(x, zero), R.multiply(x, slope), x))]


@lowering("Clip")
def lower_clip(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Clip with optional min / max inputs (opset >= 11)."""
    x = node.inputs[0]
    if x is None:
        raise BackendError("Clip needs an input", node=node.name)
    lo_v, hi_v = input_at(node, 1), input_at(node, 2)
    if all_inputs_known(ctx, node):
        y = ctx.arr(x)
        if lo_v is not None:
            y = np.maximum(y, ctx.arr(lo_v))
        if hi_v is not None:
            y = np.minimum(y, ctx.arr(hi_v))
        return [np.asarray(y)]
    expr = ctx.expr(x)
    lo_c, hi_c = ctx.const(lo_v), ctx.const(hi_v)
    if (lo_v is None or lo_c is not None) and (hi_v is None or hi_c is not None):
        params: list[float | None] = [
            None if lo_c is None else float(lo_c.reshape(-1)[0]),
            None if hi_c is None else float(hi_c.reshape(-1)[0]),
        ]
        return [apply_activation(ctx, expr, "Clip", params, node)]  # type: ignore[arg-type]
    if lo_v is not None:
        expr = ctx.emit(R.maximum(expr, ctx.expr(lo_v)))
    if hi_v is not None:
        expr = ctx.emit(R.minimum(expr, ctx.expr(hi_v)))
    return [expr]


# ------------------------------------------------------------------ Where / Cast


@lowering("Where")
def lower_where(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Where(cond, x, y) with broadcasting."""
    c, x, y = node.inputs[0], node.inputs[1], node.inputs[2]
    if c is None or x is None or y is None:
        raise BackendError("Where needs three inputs", node=node.name)
    if all_inputs_known(ctx, node):
        return [np.where(ctx.arr(c), ctx.arr(x), ctx.arr(y))]  # type: ignore[arg-type]
    return [ctx.emit(R.where(ctx.expr(c), ctx.expr(x), ctx.expr(y)))]


def cast_expr(ctx: EmitContext, x: relax.Expr, to: np.dtype) -> relax.Expr:
    """Cast ``x`` to ``to`` with ONNX semantics (casting to bool means ``x != 0``)."""
    src = str(x.ty.dtype)
    dst = relax_dtype(to)
    if src == dst:
        return x
    if dst == "bool":
        return ctx.emit(R.not_equal(x, scalar(0, src) if src != "bool" else scalar(False, "bool")))
    return ctx.emit(R.astype(x, dst))


@lowering("Cast", "CastLike")
def lower_cast(ctx: EmitContext, node: ir.Node) -> list[Out]:
    """Cast / CastLike."""
    x = node.inputs[0]
    if x is None:
        raise BackendError(f"{node.op_type} needs an input", node=node.name)
    to = _out_dtype(node)
    if ctx.is_const(x):
        return [ctx.const(x).astype(to)]  # type: ignore[union-attr]
    return [cast_expr(ctx, ctx.expr(x), to)]
