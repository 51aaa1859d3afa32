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
from backends.tvm.schedules.choice import KernelWorkload, Tile, tile_json, tile_source
from backends.tvm.schedules.tiled import schedule_tiled
from backends.tvm.schedules.tiling import target_lanes
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
    """The distinct hand kernels ``model`` lowers to for ``target`` (most frequent first)."""
    from backends.tvm.relax_emitter import emit_relax

    collector = KernelCollector()
    with target, tile_source(collector):
        emit_relax(model)
    return sorted(collector.workloads.values(), key=lambda wl: -collector.counts[wl.key])


def measure_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, *, min_ms: float = 20.0) -> float:
    """Seconds one run of the scheduled ``func`` takes (best of 5 timings of >= ``min_ms`` each, random inputs)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from backends.tvm.runtime import set_num_threads

    cores = target.attrs.get("num-cores")
    set_num_threads(int(cores) if cores else None)
    with target:
        sch = schedule_tiled(func, target_lanes(target).lanes)
    rt_mod = tvm.tirx.build(sch.mod, target=target)
    dev = tvm.cpu(0)
    rng = np.random.default_rng(0)
    args = []
    for info in ArgInfo.from_prim_func(func):
        shape = [int(d) for d in info.shape]
        args.append(tvm.runtime.tensor(rng.standard_normal(shape).astype(str(info.dtype)), dev))
    evaluator = rt_mod.time_evaluator(rt_mod.entry_name, dev, number=1, repeat=5, min_repeat_ms=int(min_ms))
    return float(min(evaluator(*args).results))


def _unmeasured(db: TuningDatabase, wl: KernelWorkload, key: str) -> list[Tile]:
    have = {tile_json(r.tile) for r in db.for_workload(wl.workload, key) if r.tile is not None}
    return [t for t in wl.candidates if tile_json(t) not in have]


def _fastest(db: TuningDatabase, wl: KernelWorkload, key: str, count: int) -> list[Tile]:
    best: dict[str, float] = {}
    for r in db.for_workload(wl.workload, key):
        if r.tile is not None and r.run_secs:
            k = tile_json(r.tile)
            best[k] = min(best.get(k, math.inf), r.latency)
    known = {tile_json(t): t for t in wl.candidates}
    return [known[k] for k in sorted(best, key=lambda k: best[k]) if k in known][:count]


def _measure_into(db: TuningDatabase, wl: KernelWorkload, tile: Tile, target: tvm.target.Target, key: str) -> None:
    """Time ``wl`` with ``tile`` and append the record (``run_secs`` None when it does not build or run)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            secs: float | None = measure_kernel(wl.make(tile), target)
    except BackendError:
        raise
    except Exception:  # a candidate that does not build counts as a failed trial
        secs = None
    db.append(Record(wl.workload, wl.key, key, (secs,) if secs is not None else None, _NO_TRACE, [], tile=tile))


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
    recheck: int = 2,
) -> KernelTuneSummary:
    """Time every candidate tile of every hand kernel of ``model`` not yet measured in ``db``, then
    the ``recheck`` fastest tiles of each such kernel once more.

    ``deadline`` (``time.monotonic()`` seconds) stops the search early; what was measured is kept.
    """
    start = time.monotonic()
    key = target_key(target)
    workloads = collect_kernels(model, target)
    summary = KernelTuneSummary(kernels=len(workloads))
    todo = [wl for wl in workloads if _unmeasured(db, wl, key)]
    if not todo:
        return summary
    from tqdm.auto import tqdm

    total = sum(len(_unmeasured(db, wl, key)) + min(recheck, len(wl.candidates)) for wl in todo)
    bar = tqdm(total=total, desc="tuning kernel tiles", unit="trial", disable=not progress, leave=True)
    try:
        for wl in todo:
            # every candidate once, then the fastest few again: timings on a shared machine are noisy,
            # and a tile's best (minimum) time is what counts
            for rnd in range(2):
                tiles = _unmeasured(db, wl, key) if rnd == 0 else _fastest(db, wl, key, recheck)
                for tile in tiles:
                    if time.monotonic() > deadline:
                        summary.stopped_early = True
                        return summary
                    _measure_into(db, wl, tile, target, key)
                    summary.trials += 1
                    bar.update(1)
                    bar.set_postfix_str(wl.key[:40])
            summary.tuned.append(wl.key)
    finally:
        bar.close()
        summary.seconds = time.monotonic() - start
    return summary
