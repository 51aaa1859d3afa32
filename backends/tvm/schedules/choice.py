"""Tile choices of the hand-written kernels: defaults, candidates, and measured records.

Every hand kernel the lowering emits is described by a :class:`KernelWorkload` (its kind and
shapes, a default tile and a few candidate tiles). :func:`choose_tile` returns the tile to use:
the one the active :class:`TileSource` knows (a tuning database's fastest measured tile for this
workload and target), else the default. A tuner installs a collecting source to learn which
kernels a model emits, builds every candidate (``make(tile)``) and times it.

A tile is a small ``{knob: int}`` dict: ``mr`` / ``nb`` (register tile rows / columns) and, per
kind, ``rows_outer`` (GEMM tile loop order) or ``local_pad`` (conv padding built per parallel tile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from tvm import tirx

from backends.tvm.schedules.tiling import TileConfig, ceil_to, fits_registers

Tile = dict[str, int]


@dataclass
class KernelWorkload:
    """One hand kernel instance: ``key`` names it (kind + shapes), ``make`` builds it for a tile."""

    key: str
    default: Tile
    candidates: list[Tile]
    make: Callable[[Tile], tirx.PrimFunc] = field(repr=False)

    @property
    def workload(self) -> str:
        """The key as the digit string the tuning database names workloads by."""
        return workload_id(self.key)


def workload_id(key: str) -> str:
    """A stable digit string for a kernel key (64 bits of its SHA-256)."""
    return str(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def tile_json(tile: Tile) -> str:
    """Canonical JSON of a tile (for comparing tiles)."""
    return json.dumps(tile, sort_keys=True)


class TileSource(Protocol):
    """Where :func:`choose_tile` looks for a tile (and reports the kernels it was asked for)."""

    def lookup(self, wl: KernelWorkload) -> Tile | None:
        """The tile to use for ``wl``, or None for its default."""
        ...


#: PrimFunc attribute: the key of the tuning workload a hand kernel in an emitted module was built for.
WORKLOAD_ATTR = "cacc.workload"

_SOURCE: ContextVar[TileSource | None] = ContextVar("cacc_tile_source", default=None)


@contextlib.contextmanager
def tile_source(source: TileSource | None) -> Iterator[None]:
    """Make ``source`` the tile source of the kernels emitted in this block."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def choose_tile(wl: KernelWorkload) -> Tile:
    """The tile for ``wl``: the active source's choice when it is one of ``wl``'s candidates, else the default."""
    source = _SOURCE.get()
    tile = source.lookup(wl) if source is not None else None
    if tile is not None and any(tile_json(tile) == tile_json(c) for c in wl.candidates):
        return dict(tile)
    return dict(wl.default)


def _ranked_tiles(rows: int, cols: int, cfg: TileConfig, max_rows: int, count: int) -> list[tuple[int, int]]:
    """The ``count`` register tiles ``(mr, nb)`` that waste the least padding (bigger tiles first on ties)."""
    scored = []
    for vecs in (1, 2, 3, 4):
        for mr in range(1, max_rows + 1):
            if not fits_registers(mr, vecs, cfg):
                continue
            nb = vecs * cfg.lanes
            waste = (ceil_to(rows, mr) * ceil_to(cols, nb)) / (rows * cols)
            scored.append((waste * (1.0 + 1.0 / mr + 1.0 / vecs), mr, nb))
    scored.sort()
    return [(mr, nb) for _, mr, nb in scored[:count]]


def gemm_candidates(rows: int, cols: int, cfg: TileConfig, default: Tile, *, orders: bool = True) -> list[Tile]:
    """GEMM tiles: the default, the least-padding tiles, each in both tile-loop orders when ``orders``."""
    out = [dict(default)]
    for mr, nb in _ranked_tiles(rows, cols, cfg, 8, 5):
        for ro in (0, 1) if orders else (default.get("rows_outer", 0),):
            t = {"mr": mr, "nb": nb, "rows_outer": ro}
            if all(tile_json(t) != tile_json(o) for o in out):
                out.append(t)
    return out


def conv_candidates(
    rows: int,
    cols: int,
    cfg: TileConfig,
    default: Tile,
    max_rows: int,
    pads: bool,
    tiles: Sequence[tuple[int, int]] | None = None,
) -> list[Tile]:
    """Conv tiles: the default, then ``tiles`` (``(mr, nb)``; default: the least-padding tiles), each with and
    without per-tile padding when the conv pads."""
    out = [dict(default)]
    for mr, nb in tiles if tiles is not None else _ranked_tiles(rows, cols, cfg, max_rows, 4):
        for lp in (0, 1) if pads else (0,):
            t = {"mr": mr, "nb": nb, "local_pad": lp}
            if all(tile_json(t) != tile_json(o) for o in out):
                out.append(t)
    return out
