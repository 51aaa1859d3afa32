"""The register-tiled schedule shared by GEMM, batch matmul, direct and depthwise conv kernels.

A tagged kernel has (optional) injective padding blocks, one reduction block ``acc`` whose
loops are its spatial axes then its reduction axes, and an injective epilogue block ``out``
reading ``acc``. The schedule splits a *row* axis by ``mr`` and a *column* axis by ``nb``,
orders ``outer spatial loops -> reductions -> (row tile, column tile)``, keeps the
``mr x nb`` accumulator tile a per-tile stack array (registers), unrolls its rows, vectorises its
columns, runs the outer loops in parallel (all but the tile loop, or the first ``parN``) and computes
the epilogue per tile. With the ``local_pad`` flag the padding blocks are computed per parallel
iteration too (no separate pass over the whole input); those and a block named ``*_unpack`` (a
low-bit weight panel decoded to fp32) are vectorised along their innermost axis.
"""

from __future__ import annotations

from tvm import s_tir, tirx

KERNEL_ATTR = "cacc.kernel"
"""PrimFunc attribute ``"row,col,order"``: ``acc``'s register-tile row and column axes and its
outer spatial axes in loop order (dotted, e.g. ``0.3.1``). The column may be adjacent axes joined
by ``+`` (``4+5``: vectors x lanes of a channel-blocked output), fused into one column loop."""


def tile_attr(
    row: int, col: int | str, order: str, *, local_pad: bool = False, parallel: int = 0, lanes: int = 0
) -> str:
    """Encode the tiling for :data:`KERNEL_ATTR` (``local_pad``: padding blocks computed per parallel tile;
    ``parallel``: how many leading outer loops run in parallel, default all but the last; ``lanes``: the vector
    width the kernel's layout is built for, default the target's)."""
    flags = (",local_pad" if local_pad else "") + (f",par{parallel}" if parallel else "")
    return f"{row},{col},{order}" + flags + (f",lanes{lanes}" if lanes else "")


def _vectorize_loop(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int) -> None:
    """Split ``loop`` into vectors of ``lanes``; a loop shorter than that which divides it (one 8-lane channel block
    where the kernel computes 16 lanes) becomes one vector."""
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and int(extent) < lanes and lanes % int(extent) == 0:
        sch.vectorize(loop)
        return
    _outer, inner = sch.split(loop, factors=[None, lanes])
    sch.vectorize(inner)


def _vectorize_injective(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Parallel outer loops; the innermost (contiguous) loop split into vectors."""
    loops = sch.get_loops(block)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    _vectorize_loop(sch, loops[-1], lanes)


def schedule_tiled(func: tirx.PrimFunc, lanes: int = 8) -> s_tir.Schedule:
    """Apply the register-tiled schedule described by ``func``'s :data:`KERNEL_ATTR` (vectors of ``lanes``, or of
    the width the attribute names)."""
    spec = str(func.attrs[KERNEL_ATTR])
    row_s, col_s, order_s, *flags = spec.split(",")
    local_pad = "local_pad" in flags
    n_par = next((int(f[3:]) for f in flags if f.startswith("par")), 0)
    lanes = next((int(f[5:]) for f in flags if f.startswith("lanes")), lanes)
    row = int(row_s)
    cols = [int(t) for t in col_s.split("+")]
    order = [int(t) for t in order_s.split(".")]
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    pads = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint not in ("acc", "out")]
    # per-tile blocks: the padding with ``local_pad``, and always a low-bit weight panel decoded to fp32
    local = [b for b in pads if local_pad or sch.get(b).name_hint.endswith("_unpack")]
    for blk in pads:
        if blk not in local:
            _vectorize_injective(sch, blk, lanes)
    loops = sch.get_loops(acc)
    n_spatial = len(sch.get(acc).iter_vars) - sum(
        1 for iv in sch.get(acc).iter_vars if iv.iter_type == tirx.IterVar.CommReduce
    )
    spatial, reduction = list(loops[:n_spatial]), list(loops[n_spatial:])
    r_in = spatial[row]
    outer = [spatial[t] for t in order]
    sch.reorder(*outer, *reduction, r_in, *(spatial[c] for c in cols))
    c_in = sch.fuse(*(spatial[c] for c in cols)) if len(cols) > 1 else spatial[cols[0]]
    nb = int(sch.get(c_in).extent)
    # parallel over all but the last outer loop (the tile loop the epilogue attaches to), or the first n_par
    n_par = n_par or len(outer) - 1
    par = sch.fuse(*outer[:n_par]) if n_par > 1 else outer[0]
    sch.parallel(par)
    for blk in reversed(local):
        # the padded input region of one parallel tile, built (in cache) right before it is read
        sch.compute_at(blk, par, preserve_unit_loops=True)
        # vectorised along its innermost axis (a padded tile's channel lanes, an unpacked panel's columns)
        inner = sch.get_loops(blk)[-1]
        extent = sch.get(inner).extent
        if isinstance(extent, tirx.IntImm) and int(extent) % lanes == 0:
            sch.vectorize(sch.split(inner, factors=[None, lanes])[1])
    sch.reverse_compute_at(out, outer[-1], preserve_unit_loops=True)
    if nb % lanes == 0:
        _vectorize_loop(sch, sch.get_loops(out)[-1], lanes)
    # the accumulator tile stays a "global" buffer: allocated inside the parallel loop, a small global
    # buffer becomes a stack array (which LLVM keeps in registers), while a "local" one is a
    # TVMBackendAllocWorkspace / FreeWorkspace call pair per parallel iteration
    if nb > lanes and nb % lanes == 0:
        c_v, c_l = sch.split(c_in, factors=[None, lanes])
        sch.unroll(c_v)
        sch.vectorize(c_l)
    else:
        sch.vectorize(c_in)
    sch.unroll(r_in)
    if reduction:
        sch.decompose_reduction(acc, reduction[0])
    return sch
