"""Per-kernel time profile of a model compiled by cacc's TVM backend.

TVM 0.27's Relax VM has no built-in profiler, so this tool runs cacc's CPU pipeline up to the
scheduled IRModule, builds every PrimFunc on its own, times it with random arguments, and
multiplies by the number of calls the model makes. Measured on EfficientNet-Lite0, the model's latency
lies between the total with warm caches (the default: each kernel's weights stay in cache between
runs) and with ``--cold`` caches.

``--in-model`` also times every kernel inside the compiled model's own runs (the VM's instrument hook,
less the hook's cost measured on a trivial kernel): there a kernel finds its weights and the maps
its producer wrote wherever the previous kernels left them (L3 or the other core), which is what
the model pays. The times are upper bounds: in a large model the hook's Python path is itself out
of cache (EfficientNet-Lite0 int8: the in-model times sum to ~9% more than a run without the hook).
The VM's own work between kernels is small (~0.3 us a call, ~0.2 us a reshape).

``--peak`` adds each kernel's rate as a share of the machine's peak on the threads used (``tools/cpu_peak.py``:
an 8-bit integer kernel against ``vpdpbusd``, a 16-bit one against ``vpdpwssd``, any other against the fp32 FMA).

    python tools/profile_kernels.py efficientnet_lite0 [--quant int8|int4] [--top 25] [--in-model] [--peak]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import time
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


#: Name parts of the kernels that compute on 8-bit integers (their operation counts are integer multiply-adds), and
#: of those whose operands are 16-bit.
INT8_KERNELS = ("_u8s8", "_s8u8", "qgemm", "qconv")
INT16_KERNELS = ("_s16",)


def peak_share(row: KernelTime, peaks: dict[str, float], threads: int) -> float | None:
    """``row``'s rate as a share of ``threads`` cores' peak (:func:`cpu_peak.measure_peaks` rates by probe name):
    16-bit integer kernels against the best ``vpdpwssd``, other integer kernels against the best ``vpdpbusd``, the
    rest against the best fp32 FMA; ``None`` without a probe of that kind or an operation count."""
    if any(part in row.name for part in INT16_KERNELS):
        kind = "int16"
    elif any(part in row.name for part in INT8_KERNELS):
        kind = "int8"
    else:
        kind = "fp32"
    rates = [r for name, r in peaks.items() if name.startswith(kind + " ")]
    if not rates or row.flops <= 0:
        return None
    return row.gflops / (max(rates) * threads)


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


def _hook_cost_per_call(runs: int = 200) -> float:
    """Seconds the :func:`in_model_times` hook adds to each kernel's interval: its in-model time of a kernel that
    adds 1 to 64 floats (which itself takes a few nanoseconds)."""
    from tvm import relax, te

    a = te.placeholder((64,), "float32", name="A")
    func = te.create_prim_func([a, te.compute((64,), lambda i: a[i] + 1.0, name="B")])
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((64,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(func.with_attr("global_symbol", "tiny_kernel"), "tiny_kernel")
            y: relax.Expr = x
            for _ in range(32):
                y = bb.emit(relax.call_tir(gv, [y], relax.TensorType((64,), "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu(0))
    return _instrumented(vm, [tvm.runtime.tensor(np.zeros(64, "float32"))], runs)["tiny_kernel"] / 32


def _instrumented(vm: object, args: list[object], runs: int) -> dict[str, float]:
    """Seconds per run spent inside each kernel (by name) over ``runs`` instrumented runs of ``vm``'s ``main``
    after warm-up runs."""
    sums: dict[str, float] = collections.defaultdict(float)
    clock = time.perf_counter
    started = [0.0]

    def hook(_func: object, symbol: str, before: bool, _ret: object, *_args: object) -> int:
        if symbol.startswith(("vm.builtin.", "runtime.")):
            return 0  # VMInstrumentReturnKind.NoOp
        if before:
            started[0] = clock()
        else:
            sums[symbol] += clock() - started[0]
        return 0

    vm.set_instrument(hook)  # type: ignore[attr-defined]
    main = vm["main"]  # type: ignore[index]
    for _ in range(max(3, runs // 10)):
        main(*args)
    sums.clear()
    for _ in range(runs):
        main(*args)
    return {name: total / runs for name, total in sums.items()}


@dataclass
class InModelProfile:
    """Kernel times measured inside the model's own runs."""

    seconds: dict[str, float]  #: per model run, by kernel name, the hook's cost taken off
    model_ms: float  #: one run without the hook
    hook_us: float  #: the hook's cost per kernel call that was taken off


def in_model_times(exe: object, inputs: list[np.ndarray], calls: dict[str, int], runs: int = 100) -> InModelProfile:
    """Each kernel's time inside the runs of ``exe`` (a :class:`backends.tvm.runtime.TVMExecutable`) on
    ``inputs``; ``calls`` (kernel name -> calls per run) takes the hook's cost off each call."""
    from tvm import relax

    vm = relax.VirtualMachine(exe.executable, exe.device)  # type: ignore[attr-defined]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), exe.device) for a in inputs]  # type: ignore[attr-defined]
    main = vm["main"]
    for _ in range(10):
        main(*args)
    t0 = time.perf_counter()
    for _ in range(runs):
        main(*args)
    model_ms = (time.perf_counter() - t0) / runs * 1e3
    hook = _hook_cost_per_call()
    raw = _instrumented(vm, args, runs)
    seconds = {name: max(t - hook * calls.get(name, 1), 0.0) for name, t in raw.items()}
    return InModelProfile(seconds, model_ms, hook * 1e6)


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
    ap.add_argument("--in-model", action="store_true", help="also time each kernel inside the model's own runs")
    ap.add_argument("--peak", action="store_true", help="each kernel's share of the CPU's peak (tools/cpu_peak.py)")
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
    inside = None
    if args.in_model:
        inputs = [np.asarray(a) for a in spec.example_inputs]  # torch tensors share their memory
        inside = in_model_times(cm.executable, inputs, {r.name: r.calls for r in rows})
        rows.sort(key=lambda r: -inside.seconds.get(r.name, 0.0))
    peaks = None
    if args.peak:
        from cpu_peak import measure_peaks  # tools/cpu_peak.py, beside this script

        peaks = measure_peaks()
    head = f"{'kernel':<30} {'first two arguments':<24} {'calls':>5} {'us/call':>9} {'GFLOP/s':>8} {'ms total':>9}"
    print(f"{head} {'share':>6}" + (f" {'in model':>9}" if inside else "") + (f" {'of peak':>7}" if peaks else ""))
    for r in rows[: args.top]:
        line = (
            f"{r.name[:30]:<30} {r.shapes[:24]:<24} {r.calls:>5} {r.seconds * 1e6:>9.1f} {r.gflops:>8.1f}"
            f" {r.total_ms:>9.3f} {r.total_ms / total:>6.1%}"
        )
        line += f" {inside.seconds.get(r.name, 0.0) * 1e3:>9.3f}" if inside else ""
        if peaks:
            share = peak_share(r, peaks, args.threads)
            line += f" {share:>7.0%}" if share is not None else f" {'-':>7}"
        print(line)
    line = f"{'sum of kernels':<55} {sum(r.calls for r in rows):>5} {'':>9} {'':>8} {total:>9.3f}"
    print(line + (f" {'':>6} {sum(inside.seconds.values()) * 1e3:>9.3f}" if inside else ""))
    if inside:
        hook = f"hook cost {inside.hook_us:.1f} us a call taken off"
        print(f"model {inside.model_ms:.3f} ms a run (in-model times: {hook})")
    if peaks:
        print("peak a core: " + ", ".join(f"{name} {rate:.0f} Gop/s" for name, rate in peaks.items()))


if __name__ == "__main__":
    main()
