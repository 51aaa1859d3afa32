"""Batched GEMM kernels ``act(L @ R + bias)`` with constant operands packed at emit time.

A constant right operand ``[K, N]`` is packed as ``[N/nb, K, nb]`` (each column tile is one
contiguous ``K x nb`` panel); a constant left operand ``[M, K]`` as ``[M/mr, K, mr]``.
Data operands are used as they are, padded by a copy only when a tile does not divide them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from backends.tvm.schedules.epilogue import activation_expr
from backends.tvm.schedules.tiled import KERNEL_ATTR, tile_attr
from backends.tvm.schedules.tiling import TileConfig, ceil_to, pick_tile


def pack_rhs(w: np.ndarray, nb: int) -> np.ndarray:
    """``[K, N]`` -> ``[ceil(N/nb), K, nb]`` (zero padded)."""
    k, n = w.shape
    padded = np.zeros((k, ceil_to(n, nb)), dtype=w.dtype)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, -1, nb).transpose(1, 0, 2))


def pack_lhs(w: np.ndarray, mr: int) -> np.ndarray:
    """``[M, K]`` -> ``[ceil(M/mr), K, mr]`` (zero padded)."""
    m, k = w.shape
    padded = np.zeros((ceil_to(m, mr), k), dtype=w.dtype)
    padded[:m] = w
    return np.ascontiguousarray(padded.reshape(-1, mr, k).transpose(0, 2, 1))


@dataclass(frozen=True)
class GemmPlan:
    """Shapes and tile of one batched GEMM ``[B, M, K] @ [B, K, N]``."""

    batch: int
    m: int
    k: int
    n: int
    mr: int
    nb: int

    @property
    def mp(self) -> int:
        """M padded to the row tile."""
        return ceil_to(self.m, self.mr)

    @property
    def np_(self) -> int:
        """N padded to the column tile."""
        return ceil_to(self.n, self.nb)


def pack_rhs_nibbles(u: np.ndarray, nb: int) -> np.ndarray:
    """4-bit values ``u`` ``[K, N]`` (0..15) -> ``[ceil(N/nb), ceil(K/2), nb]`` bytes, rows ``2i`` / ``2i+1`` in
    the low / high nibble (zero padded): unpacking a panel row shifts every byte by the same amount."""
    k, n = u.shape
    padded = np.zeros((ceil_to(k, 2), ceil_to(n, nb)), dtype=np.uint8)
    padded[:k, :n] = u
    pairs = padded[0::2] | (padded[1::2] << 4)
    return np.ascontiguousarray(pairs.reshape(pairs.shape[0], -1, nb).transpose(1, 0, 2))


def plan_gemm(batch: int, m: int, k: int, n: int, cfg: TileConfig, tile: tuple[int, int] | None = None) -> GemmPlan:
    """Choose the register tile for a GEMM (``tile``: an explicit ``(mr, nb)``)."""
    mr, nb = tile if tile is not None else pick_tile(m, n, cfg)
    return GemmPlan(batch, m, k, n, mr, nb)


def _pad2(t: te.Tensor, rows: int, cols: int, name: str) -> te.Tensor:
    b, r, c = (int(s) for s in t.shape)
    if (r, c) == (rows, cols):
        return t
    zero = tirx.const(0, t.dtype)
    return te.compute(
        (b, rows, cols),
        lambda i, j, k: tirx.if_then_else(tirx.all(j < r, k < c), t[i, j, k], zero),
        name=name,
    )


def gemm_func(
    plan: GemmPlan,
    dtype: str,
    *,
    lhs_packed: bool,
    rhs_packed: bool,
    bias: str = "",
    activation: str = "",
    activation_params: Sequence[float] = (),
    rows_outer: bool | None = None,
    pack_rhs_panels: bool = False,
    rhs_int4_group: int = 0,
) -> tirx.PrimFunc:
    """PrimFunc ``(L, R[, bias], out)``: ``out[b] = act(L[b] @ R[b] + bias)``.

    ``L`` is ``[B, M, K]`` or packed ``[Mp/mr, K, mr]``; ``R`` is ``[B, K, N]`` or packed
    ``[Np/nb, K, nb]`` (packed operands are shared by the batch). ``bias`` is ``""``,
    ``"col"`` (shape ``[N]``) or ``"row"`` (shape ``[M]``). ``rows_outer`` picks the tile loop
    order (row tiles outside column tiles); by default column tiles are outside when ``R`` is packed.
    ``pack_rhs_panels`` copies a run-time ``R`` into contiguous ``K x nb`` column panels first (its
    rows are then read as one stream instead of ``K`` strided cache lines per tile).

    ``rhs_int4_group`` (> 0) makes ``R`` a constant 4-bit weight: bytes ``[Np/nb, ceil(K/2), nb]``
    (:func:`pack_rhs_nibbles`) followed by two ``[Np/nb, G, nb]`` fp32 arguments ``S`` and ``C``
    (groups of ``rhs_int4_group`` rows), ``R[k, j] = nibble(k, j) * S[k // g, j] + C[k // g, j]``. Each
    column panel is unpacked to fp32 once per parallel task (``R_unpack``, vectorised) and reused by
    every row tile, so the kernel runs at fp32 GEMM speed with 4-bit weights in memory.
    """
    p = plan
    mr, nb = p.mr, p.nb
    if lhs_packed:
        lhs = te.placeholder((p.mp // mr, p.k, mr), dtype, name="L")
        lval = lambda b, io, ii, k: lhs[io, k, ii]  # noqa: E731
    else:
        lhs = te.placeholder((p.batch, p.m, p.k), dtype, name="L")
        lp = _pad2(lhs, p.mp, p.k, "L_pad")
        lval = lambda b, io, ii, k: lp[b, io * mr + ii, k]  # noqa: E731
    extra: list[te.Tensor] = []
    if rhs_int4_group:
        g = rhs_int4_group
        groups = -(-p.k // g)
        rhs = te.placeholder((p.np_ // nb, -(-p.k // 2), nb), "uint8", name="R")
        scale = te.placeholder((p.np_ // nb, groups, nb), dtype, name="S")
        offset = te.placeholder((p.np_ // nb, groups, nb), dtype, name="C")
        extra = [scale, offset]

        def unpack(jo: tirx.Var, k: tirx.Var, ji: tirx.Var) -> tirx.PrimExpr:
            shift = (k % 2 * 4).astype("uint8")
            nibble = tirx.bitwise_and(tirx.shift_right(rhs[jo, k // 2, ji], shift), tirx.const(15, "uint8"))
            return nibble.astype(dtype) * scale[jo, k // g, ji] + offset[jo, k // g, ji]

        unpacked = te.compute((p.np_ // nb, p.k, nb), unpack, name="R_unpack")
        rval = lambda b, k, jo, ji: unpacked[jo, k, ji]  # noqa: E731
        rows_outer = False  # column panels outside: each is unpacked once per parallel task
    elif rhs_packed:
        rhs = te.placeholder((p.np_ // nb, p.k, nb), dtype, name="R")
        rval = lambda b, k, jo, ji: rhs[jo, k, ji]  # noqa: E731
    elif pack_rhs_panels:
        rhs = te.placeholder((p.batch, p.k, p.n), dtype, name="R")
        zero = tirx.const(0, dtype)
        panels = te.compute(
            (p.batch, p.np_ // nb, p.k, nb),
            lambda b, jo, k, ji: tirx.if_then_else(jo * nb + ji < p.n, rhs[b, k, jo * nb + ji], zero),
            name="R_pack",
        )
        rval = lambda b, k, jo, ji: panels[b, jo, k, ji]  # noqa: E731
    else:
        rhs = te.placeholder((p.batch, p.k, p.n), dtype, name="R")
        rp = _pad2(rhs, p.k, p.np_, "R_pad")
        rval = lambda b, k, jo, ji: rp[b, k, jo * nb + ji]  # noqa: E731
    rk = te.reduce_axis((0, p.k), name="k")
    acc = te.compute(
        (p.batch, p.mp // mr, mr, p.np_ // nb, nb),
        lambda b, io, ii, jo, ji: te.sum(lval(b, io, ii, rk) * rval(b, rk, jo, ji), axis=rk),
        name="acc",
    )
    args = [lhs, rhs, *extra]
    bias_t = None
    if bias:
        bias_t = te.placeholder((p.n,) if bias == "col" else (p.m,), dtype, name="bias")
        args.append(bias_t)

    def epi(b: tirx.Var, i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        v = acc(b, i // mr, i % mr, j // nb, j % nb)
        if bias_t is not None:
            v = v + bias_t[j if bias == "col" else i]
        return activation_expr(v, activation, activation_params)

    out = te.compute((p.batch, p.m, p.n), epi, name="out")
    func = te.create_prim_func([*args, out])
    # batch loop first, then column tiles outside row tiles when R is a packed panel (reused from cache)
    if rows_outer is None:
        rows_outer = not rhs_packed
    order = "0.1.3" if rows_outer else "0.3.1"
    return func.with_attr(KERNEL_ATTR, tile_attr(2, 4, order)).with_attr("op_pattern", 8)
