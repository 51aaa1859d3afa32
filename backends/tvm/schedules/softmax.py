"""Softmax / LogSoftmax over the last axis as a vectorised row kernel.

Relax's softmax legalises to ``exp`` (a libm call per element) inside loops that DLight's CPU rules
do not vectorise; on MiniLM's 12x128x128 attention scores that took 12 % of the fp32 model. Here each
row is reduced in vector-wide partial maxima / sums (``lanes`` accumulators, then a short scalar
reduction), ``exp`` is a polynomial (:func:`fast_exp`, Cephes' expf, ~1 ulp) and rows run in parallel.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

ROWWISE_ATTR = "cacc.rowwise"
"""PrimFunc attribute marking a :func:`softmax_func` kernel (value: the vector width)."""

# Cephes expf: ln 2 split in two for an exact range reduction, and the polynomial for e^r on [-ln2/2, ln2/2]
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32 without a libm call (so it vectorises); other dtypes keep ``tirx.exp``."""
    dt = str(x.ty)
    if dt != "float32":
        return tirx.exp(x)
    c = lambda v: tirx.const(v, dt)  # noqa: E731
    xc = tirx.max(tirx.min(x, c(88.3762626647949)), c(-87.3365447504))
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    r = xc - n * c(_LN2_HI) - n * c(_LN2_LO)
    p = c(_EXP_P[0])
    for coef in _EXP_P[1:]:
        p = p * r + c(coef)
    er = p * r * r + r + c(1.0)
    two_n = tirx.reinterpret("float32", (n.astype("int32") + 127) << 23)
    return er * two_n


def softmax_func(rows: int, n: int, lanes: int, *, log: bool = False) -> tirx.PrimFunc:
    """PrimFunc ``(X[rows, n], out[rows, n])``: (log-)softmax of every row; ``n`` a multiple of ``lanes``."""
    x = te.placeholder((rows, n), "float32", name="X")
    chunks = n // lanes
    c = te.reduce_axis((0, chunks), name="c")
    part_max = te.compute((rows, lanes), lambda r, v: te.max(x[r, c * lanes + v], axis=c), name="part_max")
    vl = te.reduce_axis((0, lanes), name="vl")
    row_max = te.compute((rows,), lambda r: te.max(part_max[r, vl], axis=vl), name="row_max")
    e = te.compute((rows, n), lambda r, j: fast_exp(x[r, j] - row_max[r]), name="e")
    c2 = te.reduce_axis((0, chunks), name="c2")
    part_sum = te.compute((rows, lanes), lambda r, v: te.sum(e[r, c2 * lanes + v], axis=c2), name="part_sum")
    vs = te.reduce_axis((0, lanes), name="vs")
    row_sum = te.compute((rows,), lambda r: te.sum(part_sum[r, vs], axis=vs), name="row_sum")
    if log:
        out = te.compute((rows, n), lambda r, j: x[r, j] - row_max[r] - tirx.log(row_sum[r]), name="out")
    else:
        out = te.compute((rows, n), lambda r, j: e[r, j] / row_sum[r], name="out")
    func = te.create_prim_func([x, out])
    return func.with_attr(ROWWISE_ATTR, lanes).with_attr("op_pattern", 8)


def schedule_softmax(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Rows in parallel; per row, every stage computed in place and vectorised ``lanes`` wide."""
    lanes = int(func.attrs[ROWWISE_ATTR])
    sch = s_tir.Schedule(func)
    out = sch.get_sblock("out")
    r, _j = sch.get_loops(out)
    sch.parallel(r)
    for name in ("row_sum", "part_sum", "e", "row_max", "part_max"):
        sch.compute_at(sch.get_sblock(name), r, preserve_unit_loops=True)
    for name in ("part_max", "part_sum"):
        blk = sch.get_sblock(name)
        v, cc = sch.get_loops(blk)[-2:]
        sch.reorder(cc, v)
        sch.vectorize(v)
        sch.decompose_reduction(blk, cc)
    for blk in (sch.get_sblock("e"), out):
        _jo, ji = sch.split(sch.get_loops(blk)[-1], factors=[None, lanes])
        sch.vectorize(ji)
    return sch
