"""What every backend provides: build an IR model into something that runs it."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


@dataclass(frozen=True)
class BuildOptions:
    """Options every backend understands."""

    num_threads: int | None = None  #: intra-op threads; None = the engine's default
    tune_trials: int = 0  #: auto-tuning trials (all kernels together); 0 = no tuning
    tune_minutes: float | None = None  #: auto-tuning wall-time budget
    tuning_db: str | None = None  #: tuning database directory (None: the cache dir + shipped records)
    use_tuning_records: bool = True  #: False: build with the default schedules only


class Executable(ABC):
    """A built model. ``run`` takes inputs by name and returns outputs in graph order."""

    #: A short description of where it runs (e.g. ``llvm -mcpu=znver3``), for reports.
    description: str = ""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once on ``feeds``; returns one array per graph output."""

    def benchmark(self, feeds: Mapping[str, np.ndarray], *, repeat: int = 20, warmup: int = 3) -> float:
        """Median wall time of ``run`` in milliseconds after ``warmup`` runs."""
        return median_ms(lambda: self.run(feeds), repeat=repeat, warmup=warmup)


def median_ms(fn: Callable[[], object], *, repeat: int = 20, warmup: int = 3, budget_s: float = 10.0) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    Runs ``warmup`` untimed calls, then ``repeat`` timed ones — fewer (at least 3) when the
    first warm-up call shows that ``repeat`` calls would take longer than ``budget_s``.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    if first > 0:
        repeat = max(3, min(repeat, int(budget_s / first)))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


class Backend(ABC):
    """A compilation target."""

    name: str = ""

    @abstractmethod
    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Build ``model`` (not modified) into an :class:`Executable`."""
