"""Per-kernel time profile of a model compiled by cacc's TVM backend.

TVM 0.27's Relax VM has no built-in profiler, so this tool runs cacc's CPU pipeline up to the
scheduled IRModule, builds every PrimFunc on its own, times it with random arguments, and
multiplies by the number of calls the model makes. Measured on EfficientNet-Lite0, the model's latency
lies between the total with warm caches (the default: each kernel's weights stay in cache between
runs) and with ``--cold`` caches; the VM's own overhead is small.

    python tools/profile_kernels.py efficientnet_lite0 [--quant int8|int4] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
from dataclasses import dataclass

import numpy as np
import tvm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class KernelTime:
    """One PrimFunc's measured time per call and the number of calls the model makes."""

    name: str
    calls: int
    seconds: float
    flops: float
    shapes: str = ""

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s (TVM's estimate of the function's floating-point and integer operations)."""
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def total_ms(self) -> float:
        """Milliseconds the model spends in this kernel per run."""
        return self.calls * self.seconds * 1e3


def reduction_flops(func: tvm.tirx.PrimFunc) -> float:
    """2 x the iteration count of ``func``'s reduction blocks (multiply-adds count twice), 0 if it has none."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    try:
        infos = normalize_prim_func(s_tir.Schedule(func)) or []
    except Exception:  # functions the analysis does not understand count as 0
        return 0.0
    total = 0.0
    for info in infos:
        if "R" in info.dom_kind():
            total += 2.0 * float(np.prod([int(it.dom) for it in info.iters]))
    return total


def profile_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    flops: dict[str, float] | None = None,
    runs: int = 20,
    cold: bool = False,
) -> list[KernelTime]:
    """Time every scheduled PrimFunc of ``mod`` (the output of cacc's schedule passes), slowest total first.

    ``flops`` (by function name) gives each kernel's operation count for the GFLOP/s column. ``cold`` flushes
    the CPU caches of every argument but the first before each run (weights then come from memory).
    """
    flops = flops or {}
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    calls = collections.Counter(re.findall(r"call_tir\((\w+),", mod["main"].script()))
    rng = np.random.default_rng(0)
    dev = tvm.cpu(0)
    out: list[KernelTime] = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint not in calls:
            continue
        rt = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        args = []
        infos = ArgInfo.from_prim_func(func)
        shapes = " ".join("x".join(str(int(d)) for d in a.shape) for a in infos[:2])
        for a in infos:
            shape, dtype = [int(d) for d in a.shape], str(a.dtype)
            data = rng.standard_normal(shape) if dtype.startswith("float") else rng.integers(0, 4, shape)
            args.append(tvm.runtime.tensor(np.asarray(data).astype(dtype), dev))
        preproc = "cache_flush_cpu_non_first_arg" if cold else ""
        if not out:  # the first kernel timed after the compile ran ~2.5x slow for its first ~10 ms of runs
            rt.time_evaluator(rt.entry_name, dev, number=1, repeat=1, min_repeat_ms=200)(*args)
        timer = rt.time_evaluator(rt.entry_name, dev, number=1, repeat=runs, f_preproc=preproc)
        seconds = float(np.median(timer(*args).results))
        out.append(KernelTime(gv.name_hint, calls[gv.name_hint], seconds, flops.get(gv.name_hint, 0.0), shapes))
    return sorted(out, key=lambda k: -k.total_ms)


def scheduled_module(model: object, target: tvm.target.Target) -> tuple[tvm.IRModule, dict[str, float]]:
    """``model`` (an ir.Model) emitted to Relax, fused and scheduled the way :func:`backends.tvm.build` does,
    and each function's :func:`reduction_flops`."""
    from tvm import relax

    from backends.tvm.relax_emitter import emit_relax
    from backends.tvm.runtime import fusion_passes
    from backends.tvm.schedule import safe_default_schedule

    mod = emit_relax(model)  # type: ignore[arg-type]
    with target:
        fused = tvm.transform.Sequential(fusion_passes(target))(mod)
        flops = {
            gv.name_hint: reduction_flops(f) for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
        }
        seq = [safe_default_schedule(target), relax.transform.RewriteDataflowReshape()]
        return tvm.transform.Sequential(seq)(fused), flops


def main() -> None:
    """Print the per-kernel profile of a shipped model."""
    import compiler
    import models
    from backends.tvm.runtime import set_num_threads
    from backends.tvm.target import host_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="shipped model name")
    ap.add_argument("--quant", choices=("int8", "int4"), default=None, help="the benchmark's quantization recipe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cold", action="store_true", help="flush caches (but the first argument's) before each run")
    args = ap.parse_args()

    spec = models.get(args.model)
    kwargs: dict[str, object] = {}
    if args.quant:
        from benchmark import quant_recipe  # tools/benchmark.py, beside this script

        passes, options = quant_recipe(args.quant, spec.name)
        kwargs = {"passes": passes, "pass_options": options, "calibration": spec.calibration_data[:32]}
    cm = compiler.compile(spec.module, spec.example_inputs, target="x86", num_threads=args.threads, **kwargs)  # type: ignore[arg-type]
    target = host_target(args.threads)
    set_num_threads(args.threads)
    mod, flops = scheduled_module(cm.ir, target)
    rows = profile_module(mod, target, flops, cold=args.cold)
    total = sum(r.total_ms for r in rows)
    head = f"{'kernel':<30} {'first two arguments':<24} {'calls':>5} {'us/call':>9} {'GFLOP/s':>8} {'ms total':>9}"
    print(f"{head} {'share':>6}")
    for r in rows[: args.top]:
        print(
            f"{r.name[:30]:<30} {r.shapes[:24]:<24} {r.calls:>5} {r.seconds * 1e6:>9.1f} {r.gflops:>8.1f}"
            f" {r.total_ms:>9.3f} {r.total_ms / total:>6.1%}"
        )
    print(f"{'sum of kernels':<55} {sum(r.calls for r in rows):>5} {'':>9} {'':>8} {total:>9.3f}")


if __name__ == "__main__":
    main()
