"""Default (untuned) TIR schedules for CPU targets.

DLight's CPU rules (GEMV, Reduction) are applied function by function; a rule that
does not match — or that fails on an unusual function, as DLight's GEMV analysis does
on a full reduction — leaves the function unscheduled instead of failing the build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target

from backends.tvm.schedules.qgemm import QKERNEL_ATTR, schedule_qgemm
from backends.tvm.schedules.rowwise import ROWWISE_ATTR, schedule_rowwise
from backends.tvm.schedules.tiled import KERNEL_ATTR, schedule_tiled
from backends.tvm.schedules.tiling import target_lanes


class ParallelSpatial(dl.ScheduleRule):
    """A simple fallback: parallelise the outer spatial loops, vectorise the inner one.

    Injective blocks are flattened, split into vector-width chunks and run in parallel.
    Reduction blocks (matmul, conv) run their leading spatial loops (all but the last)
    in parallel and move the reduction loops outside the innermost spatial loop, which
    is vectorised after the reduction's init is split off.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func`` or return ``None`` when it does not fit."""
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = dl.try_inline_contiguous_spatial(sch, infos)
        if infos is None:
            return None
        lanes = 8
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            kinds = info.dom_kind()
            if len(loops) != len(kinds) or not kinds:
                return None
            if info.is_injective():
                fused = sch.fuse(*loops)
                outer, inner = sch.split(fused, factors=[None, lanes])
                sch.parallel(outer)
                sch.vectorize(inner)
                continue
            n_s = len(kinds) - len(kinds.lstrip("S"))
            if "S" in kinds[n_s:] or n_s == 0:
                return None  # spatial loops after a reduction loop: leave to TVM's default
            spatial, reduction = loops[:n_s], loops[n_s:]
            if n_s >= 2:
                sch.parallel(sch.fuse(*spatial[:-1]))
            jo, ji = sch.split(spatial[-1], factors=[None, lanes])
            sch.reorder(jo, *reduction, ji)
            sch.decompose_reduction(info.block_rv, reduction[0])
            sch.vectorize(ji)
        return sch


def default_cpu_rules() -> list[dl.ScheduleRule]:
    """The schedule rules tried, in order, on every fused CPU function."""
    return [dl.cpu.GEMV(), dl.cpu.Reduction(), ParallelSpatial()]


def apply_first_rule(
    func: tirx.PrimFunc, target: Target, rules: Sequence[dl.ScheduleRule], errors: list[str] | None = None
) -> tirx.PrimFunc | None:
    """``func`` scheduled by the first of ``rules`` that yields one schedule, else ``None``.

    A rule that raises is skipped (its analysis may fail on functions it was not written for);
    its message is appended to ``errors`` when given.
    """
    for rule in rules:
        try:
            sch = rule.apply(func, target, False)
        except Exception as exc:
            if errors is not None:
                errors.append(f"{type(rule).__name__}: {exc}")
            continue
        if isinstance(sch, list):
            sch = sch[0] if len(sch) == 1 else None
        if isinstance(sch, s_tir.Schedule):
            return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return None


def map_unscheduled(mod: tvm.IRModule, fn: Callable[[tirx.PrimFunc], tirx.PrimFunc | None]) -> tvm.IRModule:
    """Replace every PrimFunc not yet marked ``tirx.is_scheduled`` by ``fn(func)`` (kept when ``None``)."""
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            continue
        scheduled = fn(func)
        if scheduled is not None:
            updates[gvar] = scheduled
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def safe_default_schedule(target: Target, rules: Sequence[dl.ScheduleRule] | None = None) -> tvm.transform.Pass:
    """A module pass applying ``rules`` (default: :func:`default_cpu_rules`) to unscheduled PrimFuncs."""
    chosen = list(rules) if rules is not None else default_cpu_rules()

    def _schedule(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        if func.attrs is not None and QKERNEL_ATTR in func.attrs:
            return schedule_qgemm(func, target).mod["main"].with_attr("tirx.is_scheduled", True)
        if func.attrs is not None and ROWWISE_ATTR in func.attrs:
            return schedule_rowwise(func).mod["main"].with_attr("tirx.is_scheduled", True)
        if func.attrs is not None and KERNEL_ATTR in func.attrs:
            lanes = target_lanes(target).lanes
            return schedule_tiled(func, lanes).mod["main"].with_attr("tirx.is_scheduled", True)
        return apply_first_rule(func, target, chosen)

    @tvm.transform.module_pass(opt_level=0, name="CaccSafeDefaultSchedule")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return map_unscheduled(mod, _schedule)

    return _pass
