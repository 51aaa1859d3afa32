"""Target ``x86``: the host x86-64 CPU through TVM (Relax -> TIR -> LLVM)."""

from __future__ import annotations

import sys

import onnx_ir as ir

from backends.base import Backend, BuildOptions, Executable
from backends.tvm.runtime import build
from backends.tvm.target import host_target


class X86Backend(Backend):
    """Builds for the host CPU, detecting its LLVM ``mcpu`` (e.g. ``znver3``)."""

    name = "x86"

    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Emit Relax (hand kernels with recorded tiles), tune if asked, apply tuned then default CPU
        schedules, compile with LLVM, load."""
        from backends.tvm.database import open_database
        from backends.tvm.kernel_tuning import database_tiles

        target = host_target(options.num_threads)
        tuning = bool(options.tune_trials or options.tune_minutes)
        if not (tuning or options.use_tuning_records):
            return build(model, target, num_threads=options.num_threads)
        database = open_database(options.tuning_db)
        if tuning:
            from backends.tvm.tuning import tune_model

            print(
                tune_model(model, target, database, trials=options.tune_trials, minutes=options.tune_minutes),
                file=sys.stderr,
            )
        with database_tiles(database, target):  # hand kernels use their fastest recorded tiles
            return build(model, target, num_threads=options.num_threads, database=database)
