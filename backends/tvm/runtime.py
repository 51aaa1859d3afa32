"""Build a cacc model with TVM (Relax -> LLVM) and run it on the Relax VM.

``build(model, target)`` emits Relax (:func:`emit_relax`), runs TVM's CPU pipeline
(legalize -> fuse -> [tuned schedules from a database] -> DLight CPU schedules -> lower) and links
a VM executable.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from backends.base import Executable, median_ms
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.schedule import safe_default_schedule
from backends.tvm.signature import InputSignature, check_inputs, input_signatures
from backends.tvm.target import resolve_target
from compiler.errors import BackendError

if TYPE_CHECKING:
    from backends.tvm.database import TuningDatabase


#: The thread count TVM's pool was last sized to: resizing restarts the pool's threads, which costs
#: far more than running a small model, so it is done only when the count changes.
_configured_threads: int | None = None


def set_num_threads(num_threads: int | None) -> None:
    """Size TVM's runtime thread pool (``None`` keeps TVM's default: TVM_NUM_THREADS or half the cores).

    TVM creates its pool once, with ``TVM_NUM_THREADS`` workers, and a later ``config_threadpool`` can only
    use fewer: a process whose first model ran on 1 thread ran every later model on 1 thread too. So the
    pool is created with room for every core (or the request, if larger) and then set to ``num_threads``.
    """
    global _configured_threads
    if num_threads is None or num_threads == _configured_threads:
        return
    if num_threads < 1:
        raise BackendError(f"num_threads must be >= 1, got {num_threads}")
    if _configured_threads is None:
        room = max(num_threads, os.cpu_count() or 1, _env_threads())
        os.environ["TVM_NUM_THREADS"] = str(room)
    try:
        tvm.get_global_func("runtime.config_threadpool")(1, int(num_threads))  # 1: "big" cores
        got = int(tvm.get_global_func("runtime.NumThreads")())
    except Exception as exc:
        raise BackendError(f"cannot configure TVM's thread pool: {exc}") from exc
    _configured_threads = num_threads
    if got < num_threads:
        warnings.warn(
            f"TVM's thread pool runs {got} thread(s), not the {num_threads} asked for: it was created before "
            f"cacc sized it (set TVM_NUM_THREADS >= {num_threads} before the first TVM run)",
            RuntimeWarning,
            stacklevel=2,
        )


def _env_threads() -> int:
    try:
        return int(os.environ.get("TVM_NUM_THREADS", "0"))
    except ValueError:
        return 0


def fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Library dispatch, legalization and fusion: their output's PrimFuncs are what gets scheduled (and tuned)."""
    return cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)


def cpu_pipeline(
    target: tvm.target.Target, *, schedule: bool = True, tuned: object | None = None
) -> tvm.transform.Pass:
    """TVM's CPU Relax pipeline, with DLight's CPU rules applied after fusion when ``schedule``.

    ``tuned`` (a MetaSchedule database) is applied first; the default rules skip the functions it scheduled.
    """
    schedule_passes = [safe_default_schedule(target)] if schedule else []
    if tuned is not None:
        schedule_passes = [_apply_database(tuned), *schedule_passes]

    @tvm.transform.module_pass(opt_level=0, name="CaccCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                fusion_passes(target)
                + schedule_passes
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def _apply_database(tuned: object) -> tvm.transform.Pass:
    """relax.transform.MetaScheduleApplyDatabase with ``tuned`` as the current database."""

    @tvm.transform.module_pass(opt_level=0, name="CaccApplyTuningDatabase")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with tuned:  # type: ignore[attr-defined]
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    return _pass


@dataclass
class TVMExecutable(Executable):
    """A model compiled by TVM: ``run`` executes it on the Relax VM, ``benchmark`` times it."""

    executable: relax.VMExecutable
    device: tvm.runtime.Device
    inputs: list[InputSignature]
    output_names: list[str]
    target: tvm.target.Target
    num_threads: int | None = None
    build_seconds: float = 0.0
    _vm: relax.VirtualMachine | None = field(default=None, repr=False)
    #: device tensors ``run`` copies its inputs into, reused while the shapes and dtypes stay the same (a new
    #: 600 KB image tensor per call cost EfficientNet-Lite0 ~0.1 ms of its 3 ms: allocation and page faults)
    _staged: list[tvm.runtime.Tensor] = field(default_factory=list, repr=False)

    @property
    def description(self) -> str:  # type: ignore[override]
        """The TVM target, e.g. ``TVM llvm -mcpu=znver3``."""
        return f"TVM {tvm.__version__} {self.target.kind.name} -mcpu={self.target.attrs.get('mcpu', 'generic')}"

    @property
    def vm(self) -> relax.VirtualMachine:
        """The Relax VM (created on first use)."""
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return self._vm

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list[tvm.runtime.Tensor]:
        return [tvm.runtime.tensor(a, self.device) for a in check_inputs(self.inputs, feeds)]

    def _staged_args(self, feeds: Mapping[str, np.ndarray]) -> list[tvm.runtime.Tensor]:
        """The inputs copied into the tensors of the previous run where their shapes and dtypes match (the
        outputs are copied out before ``run`` returns, so one that aliases an input is never overwritten)."""
        arrays = check_inputs(self.inputs, feeds)
        if len(self._staged) != len(arrays):
            self._staged = [tvm.runtime.tensor(a, self.device) for a in arrays]
            return list(self._staged)
        for i, a in enumerate(arrays):
            held = self._staged[i]
            if tuple(held.shape) == a.shape and str(held.dtype) == str(a.dtype):
                held.copyfrom(np.ascontiguousarray(a))
            else:
                self._staged[i] = tvm.runtime.tensor(a, self.device)
        return list(self._staged)

    def _call(self, args: Sequence[tvm.runtime.Tensor]) -> object:
        try:
            return self.vm["main"](*args)
        except Exception as exc:
            raise BackendError(f"TVM run failed: {exc}") from exc

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; returns the outputs as numpy arrays in graph output order (not safe to call from two
        threads at once: the VM and the staged input tensors are shared)."""
        set_num_threads(self.num_threads)
        out = self._call(self._staged_args(feeds))
        if len(self.output_names) == 1:
            return [out.numpy()]  # type: ignore[attr-defined]
        return [o.numpy() for o in out]  # type: ignore[attr-defined]

    def benchmark(self, feeds: Mapping[str, np.ndarray], *, repeat: int = 20, warmup: int = 3) -> float:
        """Median wall time of one run in milliseconds (inputs already on the device)."""
        set_num_threads(self.num_threads)
        args = self._args(feeds)
        return median_ms(lambda: (self._call(args), self.device.sync()), repeat=repeat, warmup=warmup)


def build(
    model: ir.Model,
    target: tvm.target.Target | str | dict | None = None,
    *,
    num_threads: int | None = None,
    schedule: bool = True,
    database: TuningDatabase | None = None,
) -> TVMExecutable:
    """Compile ``model`` (shapes inferred) for ``target`` (default: the host CPU) into a TVMExecutable.

    With a ``database``, kernels that have tuning records for this target use the best one.
    """
    tgt = resolve_target(target, num_threads)
    t0 = time.perf_counter()
    with tgt:  # lowering choices that depend on the CPU (vector lanes, VNNI) follow the target built for
        mod = emit_relax(model)
    tuned = None
    if database is not None and schedule and len(database):
        from backends.tvm import tuning

        with tgt:
            fused = tvm.transform.Sequential(fusion_passes(tgt))(mod)
        tuned = tuning.tvm_database(database, tuning.extract_tasks(fused, tgt), tgt)
    try:
        ex = tvm.compile(mod, tgt, relax_pipeline=cpu_pipeline(tgt, schedule=schedule, tuned=tuned))
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"TVM build failed for target {tgt.kind.name}: {exc}") from exc
    seconds = time.perf_counter() - t0
    kind = tgt.kind.name
    if kind != "llvm":
        raise BackendError(f"running on target kind '{kind}' is not supported yet (built only)")
    inputs = input_signatures(model)
    set_num_threads(num_threads)
    return TVMExecutable(
        executable=ex,
        device=tvm.cpu(0),
        inputs=inputs,
        output_names=[v.name or "" for v in model.graph.outputs],
        target=tgt,
        num_threads=num_threads,
        build_seconds=seconds,
    )
