"""Target ``cuda``: NVIDIA GPUs through TVM (Relax -> TIR with DLight GPU schedules -> CUDA C).

``compile_cuda(model, arch)`` builds without a GPU: the result holds the Relax VM executable
and the generated CUDA source (compiled to a cubin by the installed ``nvcc`` with
:meth:`CudaLibrary.compile_device_code`, which is how build-only checks prove the kernels are
valid device code). TVM compiles the CUDA source itself when the module is first loaded on a
GPU. :class:`CudaBackend` builds and wraps the library in a :class:`CudaExecutable`, which runs
on ``tvm.cuda(0)`` and raises :class:`BackendError` when no CUDA device exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax, tirx
from tvm.relax.backend.cuda import pipeline as cuda_generic
from tvm.s_tir import dlight as dl

from backends.base import Backend, BuildOptions, Executable, median_ms
from backends.tvm.relax_emitter import emit_relax
from backends.tvm.schedule import apply_first_rule, map_unscheduled
from backends.tvm.signature import InputSignature, check_inputs, input_signatures
from compiler.errors import BackendError

#: The architecture used when none is given and no GPU can be asked (A100).
DEFAULT_ARCH = "sm_80"

_KERNEL_RE = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(')


def gpu_rules() -> list[dl.ScheduleRule]:
    """DLight's GPU rules, tried in order on every fused function (Fallback matches anything left)."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def _schedule_one(func: tirx.PrimFunc, target: tvm.target.Target, rules: Sequence[dl.ScheduleRule]) -> tirx.PrimFunc:
    errors: list[str] = []
    scheduled = apply_first_rule(func, target, rules, errors)
    if scheduled is not None:
        return scheduled
    name = func.attrs.get("global_symbol", "?") if func.attrs is not None else "?"
    detail = "; ".join(errors) if errors else "no rule matched"
    raise BackendError(f"no GPU schedule for TIR function '{name}' ({detail})")


def gpu_schedule(target: tvm.target.Target, rules: Sequence[dl.ScheduleRule] | None = None) -> tvm.transform.Pass:
    """A module pass giving every unscheduled PrimFunc the first ``rules`` schedule that applies.

    Unlike DLight's ``ApplyDefaultSchedule``, a rule that raises is skipped, and a function no rule
    schedules is a :class:`BackendError` naming it (a GPU kernel needs thread bindings).
    """
    chosen = list(rules) if rules is not None else gpu_rules()

    @tvm.transform.module_pass(opt_level=0, name="CaccGPUSchedule")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return map_unscheduled(mod, lambda func: _schedule_one(func, target, chosen))

    return _pass


def cuda_pipeline(target: tvm.target.Target, rules: Sequence[dl.ScheduleRule] | None = None) -> tvm.transform.Pass:
    """The Relax pipeline for CUDA: legalize -> fuse -> GPU schedules -> lower (TVM's CUDA passes otherwise)."""

    @tvm.transform.module_pass(opt_level=0, name="CaccCUDAPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [
                    *cuda_generic.library_dispatch_passes(target),
                    relax.transform.LegalizeOps(),
                    relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FoldConstant(),
                    relax.transform.FuseOps(),
                    relax.transform.FuseTIR(),
                    gpu_schedule(target, rules),
                    *cuda_generic.dataflow_lower_passes(target),
                    *cuda_generic.finalize_passes(target),
                ]
            )
            return seq(mod)

    return _pipeline


def cuda_available() -> bool:
    """Whether a CUDA device is visible to TVM (``tvm.cuda(0)`` exists)."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def device_arch() -> str | None:
    """The ``sm_XY`` of ``tvm.cuda(0)``, or ``None`` without a GPU."""
    if not cuda_available():
        return None
    return "sm_" + str(tvm.cuda(0).compute_version).replace(".", "")


def cuda_target(arch: str | None = None) -> tvm.target.Target:
    """A CUDA target for ``arch`` (``sm_80``, ``sm_90``...; default: the GPU's, else :data:`DEFAULT_ARCH`)."""
    arch = arch or device_arch() or DEFAULT_ARCH
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise BackendError(f"invalid CUDA architecture {arch!r}: expected sm_XY, e.g. sm_80 or sm_90")
    try:
        return tvm.target.Target({"kind": "cuda", "arch": arch})
    except Exception as exc:
        raise BackendError(f"cannot create a CUDA target for {arch}: {exc}") from exc


def _use_nvcc_if_no_nvrtc() -> None:
    # TVM's CUDA JIT callback defaults to NVRTC through cuda-bindings; fall back to the nvcc on PATH.
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def _cuda_modules(mod: tvm.runtime.Module) -> list[tvm.runtime.Module]:
    found = [mod] if mod.kind == "cuda" else []
    for sub in mod.imports:
        found.extend(_cuda_modules(sub))
    return found


@dataclass
class CudaLibrary:
    """A model built for CUDA: the Relax VM executable plus its generated device code."""

    executable: relax.VMExecutable
    target: tvm.target.Target
    inputs: list[InputSignature]
    output_names: list[str]
    build_seconds: float = 0.0

    @property
    def arch(self) -> str:
        """The CUDA architecture built for (``sm_XY``)."""
        return str(self.target.attrs.get("arch", ""))

    def cuda_source(self) -> str:
        """The CUDA C source of all kernels (from TVM's ``cuda`` module)."""
        modules = _cuda_modules(self.executable.mod)
        if not modules:
            raise BackendError("the built library holds no CUDA module")
        return "\n".join(str(m.inspect_source()) for m in modules)

    def kernel_names(self) -> list[str]:
        """The distinct ``__global__`` kernels defined in :meth:`cuda_source` (declared and defined once each)."""
        return list(dict.fromkeys(_KERNEL_RE.findall(self.cuda_source())))

    def compile_device_code(self, fmt: str = "cubin") -> bytes:
        """Compile :meth:`cuda_source` with the installed ``nvcc`` for :attr:`arch`; returns the binary."""
        from tvm.support import nvcc

        try:
            with self.target:
                return bytes(nvcc.compile_cuda(self.cuda_source(), target_format=fmt, arch=None, compiler="nvcc"))
        except Exception as exc:
            raise BackendError(f"nvcc failed on the generated CUDA source for {self.arch}: {exc}") from exc

    def export(self, path: str | os.PathLike[str]) -> None:
        """Write the library (host code + CUDA source) as a shared object loadable by TVM."""
        try:
            self.executable.export_library(str(path))
        except Exception as exc:
            raise BackendError(f"exporting the CUDA library to {path} failed: {exc}") from exc


def compile_cuda(model: ir.Model, arch: str | None = None) -> CudaLibrary:
    """Build ``model`` (shapes inferred) for CUDA ``arch``; needs no GPU (see :class:`CudaLibrary`)."""
    target = cuda_target(arch)
    t0 = time.perf_counter()
    with target:  # CPU-only lowering choices (the channel-blocked conv layout) stay off
        mod = emit_relax(model)
    try:
        ex = tvm.compile(mod, target, relax_pipeline=cuda_pipeline(target))
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"TVM build failed for {target.attrs.get('arch')}: {exc}") from exc
    return CudaLibrary(
        executable=ex,
        target=target,
        inputs=input_signatures(model),
        output_names=[v.name or "" for v in model.graph.outputs],
        build_seconds=time.perf_counter() - t0,
    )


@dataclass
class CudaExecutable(Executable):
    """A CUDA library loaded on ``tvm.cuda(0)``: ``run`` copies inputs in and outputs back."""

    library: CudaLibrary
    _vm: relax.VirtualMachine | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not cuda_available():
            raise BackendError(f"no CUDA device: built for {self.library.arch}, but tvm.cuda(0) does not exist")
        _use_nvcc_if_no_nvrtc()
        self.device = tvm.cuda(0)

    @property
    def description(self) -> str:  # type: ignore[override]
        """E.g. ``TVM 0.27 cuda sm_90 (NVIDIA H100)``."""
        return f"TVM {tvm.__version__} cuda {self.library.arch} ({self.device.device_name})"

    @property
    def vm(self) -> relax.VirtualMachine:
        """The Relax VM on the GPU (created on first use; TVM JIT-compiles the kernels then)."""
        if self._vm is None:
            try:
                self._vm = relax.VirtualMachine(self.library.executable, self.device)
            except Exception as exc:
                raise BackendError(f"loading the CUDA module failed: {exc}") from exc
        return self._vm

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list[tvm.runtime.Tensor]:
        return [tvm.runtime.tensor(a, self.device) for a in check_inputs(self.library.inputs, feeds)]

    def _call(self, args: Sequence[tvm.runtime.Tensor]) -> object:
        try:
            return self.vm["main"](*args)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"CUDA run failed: {exc}") from exc

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; returns the outputs (copied to the host) in graph output order."""
        out = self._call(self._args(feeds))
        if len(self.library.output_names) == 1:
            return [out.numpy()]  # type: ignore[attr-defined]
        return [o.numpy() for o in out]  # type: ignore[attr-defined]

    def benchmark(self, feeds: Mapping[str, np.ndarray], *, repeat: int = 20, warmup: int = 3) -> float:
        """Median milliseconds of one run with inputs already on the GPU (synchronised after each run)."""
        args = self._args(feeds)
        return median_ms(lambda: (self._call(args), self.device.sync()), repeat=repeat, warmup=warmup)


class CudaBackend(Backend):
    """Builds for an NVIDIA GPU; ``arch`` defaults to the visible GPU's, else :data:`DEFAULT_ARCH`."""

    name = "cuda"

    def __init__(self, arch: str | None = None) -> None:
        self.arch = arch

    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Build with :func:`compile_cuda` and load on ``tvm.cuda(0)`` (BackendError without a GPU)."""
        if not cuda_available():
            raise BackendError("no CUDA device: target 'cuda' needs an NVIDIA GPU (use compile_cuda to build only)")
        return CudaExecutable(compile_cuda(model, self.arch))
