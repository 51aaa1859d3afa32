"""Target ``x86``: the host x86-64 CPU through TVM (Relax -> TIR -> LLVM)."""

from __future__ import annotations

import onnx_ir as ir

from backends.base import Backend, BuildOptions, Executable
from backends.tvm.runtime import build
from backends.tvm.target import host_target


class X86Backend(Backend):
    """Builds for the host CPU, detecting its LLVM ``mcpu`` (e.g. ``znver3``)."""

    name = "x86"

    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Emit Relax, apply the CPU schedules, compile with LLVM, load into the Relax VM."""
        return build(model, host_target(options.num_threads), num_threads=options.num_threads)
