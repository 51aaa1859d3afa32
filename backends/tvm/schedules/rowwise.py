"""Row kernels: Softmax / LogSoftmax and LayerNormalization over the last axis, vectorised.

Relax's softmax legalises to ``exp`` (a libm call per element) inside loops that DLight's CPU rules
do not vectorise; on MiniLM's 12x128x128 attention scores that took 12 % of the fp32 model, and its
layer norm ran at ~2.4 ns an element. Here each row is reduced in vector-wide partial maxima / sums
(``lanes`` accumulators, blocks named ``part_*``, then a short scalar reduction ``row_*``), ``exp``
is a polynomial (:func:`fast_exp`, Cephes' expf, ~1 ulp), the elementwise stages are vectorised
and rows run in parallel.

Softmax writes no subnormal floats: probabilities below the smallest normal float32 (~1.2e-38, where
the reference has at most that much more) are 0. Masked attention positions otherwise came out
subnormal, and on Intel CPUs every multiply with a subnormal operand takes a microcode assist: the
attention-probabilities x V product of MiniLM int8 ran ~200x slower than on random inputs (100 ms a
model against 7.5 ms of kernels, on a Xeon; AMD Zen 3 showed no penalty).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import s_tir, te, tirx

from backends.tvm.schedules.epilogue import horner

ROWWISE_ATTR = "cacc.rowwise"
"""PrimFunc attribute marking a row kernel (:func:`softmax_func`, :func:`layer_norm_func`; value: the vector width)."""

# Cephes expf: ln 2 split in two for an exact range reduction, and the polynomial for e^r on [-ln2/2, ln2/2]
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


#: The smallest normal float32: softmax flushes probabilities below it to 0 (no subnormal outputs).
FLT_MIN = 1.17549435e-38
_EXP_LO = -87.3365447504  # log(FLT_MIN)


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32 without a libm call (so it vectorises); 0 below log(FLT_MIN) (where exp is subnormal or
    0, never a subnormal result); other dtypes keep ``tirx.exp``."""
    dt = str(x.ty)
    if dt != "float32":
        return tirx.exp(x)
    c = lambda v: tirx.const(v, dt)  # noqa: E731
    xc = tirx.max(tirx.min(x, c(88.3762626647949)), c(_EXP_LO))
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    r = xc - n * c(_LN2_HI) - n * c(_LN2_LO)
    er = horner(_EXP_P, r) * r * r + r + c(1.0)
    two_n = tirx.reinterpret("float32", (n.astype("int32") + 127) << 23)
    return tirx.Select(x < c(_EXP_LO), c(0.0), er * two_n)


def _flush_subnormal(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """``v``, or 0 where ``|v|`` is below the smallest normal float32."""
    return tirx.Select(tirx.abs(v) < tirx.const(FLT_MIN, str(v.ty)), tirx.const(0.0, str(v.ty)), v)


def _row_reduce(
    value: Callable[[Any, Any], tirx.PrimExpr], rows: int, n: int, lanes: int, name: str, op: str = "sum"
) -> te.Tensor:
    """``sum_j value(r, j)`` (or ``max``) as ``lanes`` partial results (vectorised) reduced to one scalar per row."""
    red = te.sum if op == "sum" else te.max
    c = te.reduce_axis((0, n // lanes), name=f"c_{name}")
    part = te.compute((rows, lanes), lambda r, v: red(value(r, c * lanes + v), axis=c), name=f"part_{name}")
    vl = te.reduce_axis((0, lanes), name=f"v_{name}")
    return te.compute((rows,), lambda r: red(part[r, vl], axis=vl), name=f"row_{name}")


def softmax_func(rows: int, n: int, lanes: int, *, log: bool = False) -> tirx.PrimFunc:
    """PrimFunc ``(X[rows, n], out[rows, n])``: (log-)softmax of every row; ``n`` a multiple of ``lanes``."""
    x = te.placeholder((rows, n), "float32", name="X")
    row_max = _row_reduce(lambda r, j: x[r, j], rows, n, lanes, "max", op="max")
    e = te.compute((rows, n), lambda r, j: fast_exp(x[r, j] - row_max[r]), name="e")
    row_sum = _row_reduce(lambda r, j: e[r, j], rows, n, lanes, "sum")
    if log:
        out = te.compute((rows, n), lambda r, j: x[r, j] - row_max[r] - tirx.log(row_sum[r]), name="out")
    else:
        out = te.compute((rows, n), lambda r, j: _flush_subnormal(e[r, j] / row_sum[r]), name="out")
    func = te.create_prim_func([x, out])
    return func.with_attr(ROWWISE_ATTR, lanes).with_attr("op_pattern", 8)


def layer_norm_func(rows: int, n: int, lanes: int, eps: float) -> tirx.PrimFunc:
    """PrimFunc ``(X[rows, n], gamma[n], beta[n], out[rows, n])``: LayerNormalization of every row
    (two passes: mean, then the variance of the centred values); ``n`` a multiple of ``lanes``."""
    x = te.placeholder((rows, n), "float32", name="X")
    gamma = te.placeholder((n,), "float32", name="gamma")
    beta = te.placeholder((n,), "float32", name="beta")
    inv_n = tirx.const(1.0 / n, "float32")
    total = _row_reduce(lambda r, j: x[r, j], rows, n, lanes, "sum")
    d = te.compute((rows, n), lambda r, j: x[r, j] - total[r] * inv_n, name="d")
    var = _row_reduce(lambda r, j: d[r, j] * d[r, j], rows, n, lanes, "sq")
    rstd = te.compute((rows,), lambda r: tirx.rsqrt(var[r] * inv_n + tirx.const(eps, "float32")), name="row_rstd")
    out = te.compute((rows, n), lambda r, j: d[r, j] * rstd[r] * gamma[j] + beta[j], name="out")
    func = te.create_prim_func([x, gamma, beta, out])
    return func.with_attr(ROWWISE_ATTR, lanes).with_attr("op_pattern", 8)


def schedule_rowwise(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Rows in parallel; per row, every stage computed in place: ``part_*`` reductions and elementwise
    stages vectorised ``lanes`` wide, ``row_*`` scalars left as they are."""
    lanes = int(func.attrs[ROWWISE_ATTR])
    sch = s_tir.Schedule(func)
    out = sch.get_sblock("out")
    r, _j = sch.get_loops(out)
    sch.parallel(r)
    stages = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint != "out"]
    for blk in reversed(stages):
        sch.compute_at(blk, r, preserve_unit_loops=True)
    for blk in [*stages, out]:
        name = sch.get(blk).name_hint
        if name.startswith("part_"):
            v, cc = sch.get_loops(blk)[-2:]
            sch.reorder(cc, v)
            sch.vectorize(v)
            sch.decompose_reduction(blk, cc)
        elif not name.startswith("row_"):
            _jo, ji = sch.split(sch.get_loops(blk)[-1], factors=[None, lanes])
            sch.vectorize(ji)
    return sch
