"""Measured tile search for cacc's hand-written kernels, recorded in a :class:`TuningDatabase`.

MetaSchedule does not tune the register-tiled kernels (their hand schedule beats what a generic
search finds in a practical budget); their knobs — register tile and loop order — are chosen here
instead, tinygrad-style: every kernel a model emits offers a few candidate tiles
(:mod:`backends.tvm.schedules.choice`), each candidate is built and timed on its own, and each
measurement is appended to the database (so an interrupted run resumes). At compile time
:func:`database_tiles` makes the lowering use the fastest recorded tile of each kernel.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import tvm

from backends.tvm.database import Record, TuningDatabase, target_key
from backends.tvm.schedules.choice import WORKLOAD_ATTR, KernelWorkload, Tile, tile_json, tile_source
from backends.tvm.schedules.tiled import schedule_tiled
from backends.tvm.schedules.tiling import target_lanes
from backends.tvm.target import target_cores
from compiler.errors import BackendError

_NO_TRACE: list[Any] = [[], []]


class DatabaseTiles:
    """A tile source reading the fastest measured tile of each kernel from a database."""

    def __init__(self, db: TuningDatabase, target: tvm.target.Target) -> None:
        self.db, self.key = db, target_key(target)

    def lookup(self, wl: KernelWorkload) -> Tile | None:
        """The fastest recorded tile of ``wl`` on this target, or None."""
        ok = [r for r in self.db.for_workload(wl.workload, self.key) if r.tile is not None and r.run_secs]
        return dict(min(ok, key=lambda r: r.latency).tile or {}) if ok else None


class KernelCollector:
    """A tile source that remembers every kernel it is asked about (and lets them use their defaults)."""

    def __init__(self) -> None:
        self.workloads: dict[str, KernelWorkload] = {}
        self.counts: dict[str, int] = {}

    def lookup(self, wl: KernelWorkload) -> Tile | None:
        """Record ``wl``; always None."""
        self.workloads.setdefault(wl.key, wl)
        self.counts[wl.key] = self.counts.get(wl.key, 0) + 1
        return None


@contextlib.contextmanager
def database_tiles(db: TuningDatabase | None, target: tvm.target.Target) -> Iterator[None]:
    """Kernels emitted in this block use ``db``'s fastest tiles for ``target`` (defaults without ``db``)."""
    with tile_source(DatabaseTiles(db, target) if db is not None else None):
        yield


def collect_kernels(model: ir.Model, target: tvm.target.Target) -> list[KernelWorkload]:
    """The distinct hand kernels ``model`` runs for ``target`` (most frequent first): those emitted and still in
    the module after its dead-code elimination (a fused pair's kernel makes its producers' own kernels dead)."""
    from backends.tvm.relax_emitter import emit_relax

    collector = KernelCollector()
    with target, tile_source(collector):
        mod = emit_relax(model)
    live = {
        str(func.attrs[WORKLOAD_ATTR])
        for _, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and WORKLOAD_ATTR in func.attrs
    }
    workloads = [wl for key, wl in collector.workloads.items() if key in live]
    return sorted(workloads, key=lambda wl: -collector.counts[wl.key])


class BuiltKernel:
    """A scheduled, compiled kernel with random arguments, ready to be timed."""

    def __init__(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> None:
        from tvm.s_tir.meta_schedule.arg_info import ArgInfo

        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:  # a kernel written scheduled, in TIR
            mod = tvm.IRModule({"main": func})
        else:
            with target:
                mod = schedule_tiled(func, target_lanes(target).lanes).mod
        self.rt_mod = tvm.tirx.build(mod, target=target)
        self.dev = tvm.cpu(0)
        rng = np.random.default_rng(0)
        self.args = [
            tvm.runtime.tensor(rng.standard_normal([int(d) for d in a.shape]).astype(str(a.dtype)), self.dev)
            for a in ArgInfo.from_prim_func(func)
        ]

    def time(self, runs: int = 15) -> float:
        """The fastest of ``runs`` single runs, in seconds (single runs: on a shared machine the
        fastest is the one no other process interrupted)."""
        evaluator = self.rt_mod.time_evaluator(self.rt_mod.entry_name, self.dev, number=1, repeat=runs)
        return float(min(evaluator(*self.args).results))


def measure_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, *, rounds: int = 3) -> float:
    """Seconds one run of the scheduled ``func`` takes on ``target`` (best of ``rounds`` timings)."""
    _pool_for(target)
    kernel = BuiltKernel(func, target)
    return min(kernel.time() for _ in range(rounds))


def _pool_for(target: tvm.target.Target) -> None:
    from backends.tvm.runtime import set_num_threads

    set_num_threads(target_cores(target))


def _unmeasured(db: TuningDatabase, wl: KernelWorkload, key: str) -> list[Tile]:
    have = {tile_json(r.tile) for r in db.for_workload(wl.workload, key) if r.tile is not None}
    return [t for t in wl.candidates if tile_json(t) not in have]


def _measure_workload(
    db: TuningDatabase, wl: KernelWorkload, tiles: list[Tile], target: tvm.target.Target, key: str, rounds: int
) -> None:
    """Build every tile of ``wl``, time them in ``rounds`` interleaved rounds (a load burst from other
    processes then hits all tiles alike) and append one record per tile with its best time."""
    built: list[tuple[Tile, BuiltKernel | None]] = []
    for tile in tiles:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                built.append((tile, BuiltKernel(wl.make(tile), target)))
        except BackendError:
            raise
        except Exception:  # a candidate that does not build counts as a failed trial
            built.append((tile, None))
    best = [math.inf] * len(built)
    for _ in range(rounds):
        for i, (_tile, kernel) in enumerate(built):
            if kernel is not None:
                try:
                    best[i] = min(best[i], kernel.time())
                except Exception:
                    built[i] = (built[i][0], None)
    for (tile, kernel), secs in zip(built, best, strict=True):
        run_secs = (secs,) if kernel is not None and math.isfinite(secs) else None
        db.append(Record(wl.workload, wl.key, key, run_secs, _NO_TRACE, [], tile=tile))


@dataclass
class KernelTuneSummary:
    """What a hand-kernel tile search did."""

    kernels: int = 0
    tuned: list[str] = field(default_factory=list)  #: kernels that got new measurements
    trials: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def tune_kernels(
    model: ir.Model,
    target: tvm.target.Target,
    db: TuningDatabase,
    *,
    deadline: float = math.inf,
    progress: bool = True,
    rounds: int = 3,
) -> KernelTuneSummary:
    """Time every candidate tile of every hand kernel of ``model`` not yet measured in ``db``
    (``rounds`` interleaved timing rounds per kernel, see :func:`_measure_workload`).

    ``deadline`` (``time.monotonic()`` seconds) stops the search between kernels; what was measured is kept.
    """
    start = time.monotonic()
    key = target_key(target)
    workloads = collect_kernels(model, target)
    summary = KernelTuneSummary(kernels=len(workloads))
    todo = [(wl, _unmeasured(db, wl, key)) for wl in workloads]
    todo = [(wl, tiles) for wl, tiles in todo if tiles]
    if not todo:
        return summary
    from tqdm.auto import tqdm

    _pool_for(target)
    bar = tqdm(total=sum(len(t) for _, t in todo), desc="tuning kernel tiles", unit="trial", disable=not progress)
    try:
        for wl, tiles in todo:
            if time.monotonic() > deadline:
                summary.stopped_early = True
                break
            _measure_workload(db, wl, tiles, target, key, rounds)
            summary.trials += len(tiles)
            summary.tuned.append(wl.key)
            bar.update(len(tiles))
            bar.set_postfix_str(wl.key[:40])
    finally:
        bar.close()
        summary.seconds = time.monotonic() - start
    return summary
