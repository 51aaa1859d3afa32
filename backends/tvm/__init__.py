"""The TVM backend: cacc IR -> Relax (emitted by cacc, not TVM's ONNX importer) -> LLVM -> Relax VM."""

from backends.tvm.relax_emitter import check_supported, emit_relax
from backends.tvm.runtime import TVMExecutable, build, cpu_pipeline, set_num_threads
from backends.tvm.target import host_cpu, host_target

__all__ = [
    "TVMExecutable",
    "build",
    "check_supported",
    "cpu_pipeline",
    "emit_relax",
    "host_cpu",
    "host_target",
    "set_num_threads",
]
