"""Compilation targets for the TVM backend."""

from __future__ import annotations

import os

import tvm
from tvm.target import codegen

from compiler.errors import BackendError


def host_cpu() -> str:
    """The host's LLVM CPU name (e.g. ``znver3``), or ``generic`` when LLVM cannot tell."""
    try:
        cpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # an LLVM-less TVM build
        return "generic"
    return cpu if cpu and cpu != "generic" else "generic"


def target_cores(target: tvm.target.Target) -> int | None:
    """The cores an LLVM target's kernels run on (its ``num-cores``), ``None`` when it does not say."""
    cores = target.attrs.get("num-cores") if target.kind.name == "llvm" else None
    return int(cores) if cores else None


def host_target(num_threads: int | None = None) -> tvm.target.Target:
    """An LLVM target for the host x86 / arm CPU; ``num-cores`` is ``num_threads`` (default: all CPUs)."""
    cores = num_threads or os.cpu_count() or 1
    try:
        return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": int(cores)})
    except Exception as exc:
        raise BackendError(f"cannot create the host LLVM target: {exc}") from exc


def arm_target(mcpu: str = "cortex-a72", num_threads: int = 4) -> tvm.target.Target:
    """A cross-compilation LLVM target for 64-bit ARM (``aarch64-linux-gnu``)."""
    return tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "num-cores": num_threads})


def cuda_target(arch: str = "sm_80") -> tvm.target.Target:
    """A CUDA target (needs a CUDA-enabled TVM build to compile)."""
    return tvm.target.Target({"kind": "cuda", "arch": arch})


def resolve_target(target: tvm.target.Target | str | dict | None, num_threads: int | None = None) -> tvm.target.Target:
    """A Target from a Target, a name (``"host"``, ``"llvm"``, ``"cuda"``, ``"arm"``), a dict, or ``None`` (host)."""
    if target is None or target == "host":
        return host_target(num_threads)
    if isinstance(target, tvm.target.Target):
        return target
    if target == "arm":
        return arm_target()
    if target == "cuda":
        return cuda_target()
    try:
        return tvm.target.Target(target)
    except Exception as exc:
        raise BackendError(f"invalid TVM target {target!r}: {exc}") from exc
