"""Backends: one target per module. They never change a model's meaning."""

from __future__ import annotations

from backends.base import Backend, BuildOptions, Executable

__all__ = ["TARGETS", "Backend", "BuildOptions", "Executable", "get_backend"]

#: Target names accepted by ``compiler.compile(..., target=...)``.
TARGETS = ("x86", "arm", "cuda", "onnx", "reference")


def get_backend(target: str) -> Backend:
    """The backend for ``target``; :class:`BackendError` listing the known targets otherwise."""
    from compiler.errors import BackendError  # (lazy: compiler imports backends)

    if target == "onnx":
        from backends.onnx import OnnxBackend

        return OnnxBackend()
    if target == "reference":
        from backends.reference import ReferenceBackend

        return ReferenceBackend()
    if target == "x86":
        from backends.tvm.x86 import X86Backend

        return X86Backend()
    if target == "arm":
        from backends.tvm.arm import ArmBackend

        return ArmBackend()
    if target == "cuda":
        from backends.tvm.cuda import CudaBackend

        return CudaBackend()
    raise BackendError(f"unknown target '{target}'; available targets: {', '.join(TARGETS)}")
