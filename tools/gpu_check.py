"""GPU check of the ``cuda`` target: numerics and latency of cacc cuda vs torch CUDA / ORT CUDA.

    python tools/gpu_check.py [--models ...] [--repeat 50] [--json out.json]

Kernels are built for the visible GPU's architecture.

For each shipped model: cacc (``compiler.compile(..., target="cuda")``) is compared with the fp32
torch model on CPU (max abs error of the outputs); then the median latency of cacc cuda, torch on
CUDA and ONNX Runtime's CUDAExecutionProvider are printed, each skipped with its reason where
unavailable (a CPU-only torch wheel, an onnxruntime without CUDA). Without a GPU it says so and
exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _median_ms(fn: Any, sync: Any, repeat: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _torch_cuda(spec: Any, repeat: int) -> tuple[float | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA device"
    module = spec.module.to("cuda")
    inputs = [t.to("cuda") for t in spec.example_inputs]

    def fn() -> Any:
        with torch.inference_mode():
            return module(*inputs)

    try:
        return _median_ms(fn, torch.cuda.synchronize, repeat), ""
    finally:
        spec.module.to("cpu")


def _ort_cuda(spec: Any, feeds: dict[str, np.ndarray], repeat: int, work: Path) -> tuple[float | None, str]:
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider"
    path = work / f"{spec.name}.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(spec.module, spec.example_inputs, dynamo=True, input_names=list(spec.input_names))
    if program is None:
        return None, "torch.onnx.export returned nothing"
    program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    if "CUDAExecutionProvider" not in sess.get_providers():
        return None, "ORT fell back to the CPU provider"
    binding = sess.io_binding()
    for name, arr in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda")
    return _median_ms(lambda: sess.run_with_iobinding(binding), binding.synchronize_outputs, repeat), ""


def check_model(name: str, repeat: int, work: Path) -> dict[str, Any]:
    """Numerics and latencies for one shipped model."""
    import compiler
    import models

    spec = models.get(name)
    feeds = {n: t.numpy() for n, t in zip(spec.input_names, spec.example_inputs)}
    result: dict[str, Any] = {"model": name}
    with contextlib.redirect_stdout(io.StringIO()):
        cm = compiler.compile(
            spec.module, spec.example_inputs, target="cuda", measure=False, input_names=list(spec.input_names)
        )
    result["max_abs_error_vs_torch_cpu"] = cm.report.max_abs_error
    result["build_seconds"] = cm.report.build_seconds
    result["description"] = cm.executable.description
    result["cacc_cuda_ms"] = cm.executable.benchmark(feeds, repeat=repeat, warmup=5)
    result["torch_cuda_ms"], result["torch_cuda_skipped"] = _torch_cuda(spec, repeat)
    result["ort_cuda_ms"], result["ort_cuda_skipped"] = _ort_cuda(spec, feeds, repeat, work)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check from the command line."""
    import models
    from backends.tvm.cuda import cuda_available, device_arch

    p = argparse.ArgumentParser(description="cacc cuda vs torch CUDA / ORT CUDA: numerics and latency")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if not cuda_available():
        print("gpu_check: no CUDA device (tvm.cuda(0) does not exist); nothing to check", file=sys.stderr)
        return 2
    print(f"GPU arch {device_arch()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="cacc-gpu-") as tmp:
        for name in args.models or models.available():
            try:
                r = check_model(name, args.repeat, Path(tmp))
            except Exception as exc:
                r = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:400]}
            results.append(r)
            if "error" in r:
                print(f"{name:<20} FAILED {r['error']}")
                continue

            def fmt(v: float | None, why: str) -> str:
                return f"{v:9.3f} ms" if v is not None else f"skipped ({why})"

            print(
                f"{name:<20} err={r['max_abs_error_vs_torch_cpu']:.2e}  cacc cuda {r['cacc_cuda_ms']:9.3f} ms  "
                f"torch cuda {fmt(r['torch_cuda_ms'], r['torch_cuda_skipped'])}  "
                f"ORT cuda {fmt(r['ort_cuda_ms'], r['ort_cuda_skipped'])}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
