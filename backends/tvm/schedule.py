"""Default (untuned) TIR schedules for CPU targets.

DLight's CPU rules (GEMV, Reduction) are applied function by function; a rule that
does not match — or that fails on an unusual function, as DLight's GEMV analysis does
on a full reduction — leaves the function unscheduled instead of failing the build.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target


def default_cpu_rules() -> list[dl.ScheduleRule]:
    """The schedule rules tried, in order, on every fused CPU function."""
    return [dl.cpu.GEMV(), dl.cpu.Reduction()]


def _try_rules(func: tirx.PrimFunc, target: Target, rules: Sequence[dl.ScheduleRule]) -> tirx.PrimFunc | None:
    for rule in rules:
        try:
            sch = rule.apply(func, target, False)
        except Exception:  # a rule's analysis failing on a function it was not written for
            continue
        if sch is None:
            continue
        if isinstance(sch, list):
            if len(sch) != 1:
                continue
            sch = sch[0]
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return None


def safe_default_schedule(target: Target, rules: Sequence[dl.ScheduleRule] | None = None) -> tvm.transform.Pass:
    """A module pass applying ``rules`` (default: :func:`default_cpu_rules`) to unscheduled PrimFuncs."""
    chosen = list(rules) if rules is not None else default_cpu_rules()

    @tvm.transform.module_pass(opt_level=0, name="CaccSafeDefaultSchedule")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            scheduled = _try_rules(func, target, chosen)
            if scheduled is not None:
                updates[gvar] = scheduled
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass
