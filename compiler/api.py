"""The public entry points: ``compile`` and ``load``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from backends import BuildOptions, Executable, get_backend
from compiler.compiled_model import CompiledModel
from compiler.config import CompileConfig
from compiler.errors import BackendError, CompilerError, InputSignatureError
from compiler.frontends import import_model, is_torch_module
from compiler.ir.interpreter import check_feeds
from compiler.ir.interpreter import run as run_reference
from compiler.ir.printer import op_histogram, parameter_count
from compiler.ir.shapes import infer_shapes
from compiler.report import Report
from passes.base import PassContext
from passes.manager import PassManager, expand_pipeline
from passes.quant.diagnosis import relative_error


def _model_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return Path(model).name
    if isinstance(model, bytes):
        return "<onnx bytes>"
    return type(model).__name__


def _example_arrays(example_inputs: Any) -> list[np.ndarray] | None:
    if example_inputs is None:
        return None
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    out = []
    for x in items:
        out.append(x.detach().cpu().numpy() if type(x).__module__.startswith("torch") else np.asarray(x))
    return out


def synthesize_inputs(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs matching the model's signature: small random floats, zeros for integer inputs
    (safe as indices), symbolic dimensions set to 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        dtype = v.dtype.numpy() if v.dtype is not None else np.dtype(np.float32)
        shape = [d if isinstance(d, int) else 1 for d in (v.shape or [])]
        if np.issubdtype(dtype, np.floating):
            feeds[v.name or ""] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[v.name or ""] = np.ones(shape, dtype=dtype)
        else:
            feeds[v.name or ""] = np.zeros(shape, dtype=dtype)
    return feeds


def calibration_feeds(model: ir.Model, calibration: Any) -> list[dict[str, np.ndarray]]:
    """Normalize a calibration set to one feeds dict per sample.

    A sample is a tuple/list of arrays or tensors in input order (like ``example_inputs``), a single
    array/tensor for a one-input model, or a dict by input name. Each is checked against the model's
    signature; :class:`InputSignatureError` names the first bad sample.
    """
    if calibration is None:
        return []
    if isinstance(calibration, (np.ndarray, dict)) or type(calibration).__module__.startswith("torch"):
        raise InputSignatureError(
            "calibration must be a sequence of samples (e.g. a list of input tuples), not a single "
            f"{type(calibration).__name__}"
        )
    names = [v.name or "" for v in model.graph.inputs]
    feeds: list[dict[str, np.ndarray]] = []
    for i, sample in enumerate(calibration):
        if isinstance(sample, dict):
            arrays = dict(zip(sample, _example_arrays(tuple(sample.values())) or []))
        else:
            items = _example_arrays(sample) or []
            if len(items) != len(names):
                raise InputSignatureError(
                    f"calibration sample {i} has {len(items)} input(s); "
                    f"the model takes {len(names)} ({', '.join(names)})"
                )
            arrays = dict(zip(names, items))
        try:
            feeds.append(check_feeds(model.graph, arrays))
        except InputSignatureError as exc:
            raise InputSignatureError(f"calibration sample {i}: {exc}") from exc
    return feeds


def _torch_reference(module: Any, example_inputs: Any) -> list[np.ndarray]:
    import torch
    from torch.utils._pytree import tree_flatten

    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    with torch.no_grad():
        leaves, _ = tree_flatten(module(*args))
    return [t.detach().cpu().numpy() for t in leaves if isinstance(t, torch.Tensor)]


def _output_errors(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> tuple[float, float | None]:
    """``(max abs error, relative error)`` of the compiled outputs ``got`` against ``ref``; the relative error is
    the largest, over the float outputs, of ``||got - ref|| / ||ref||`` (as the quantizers' diagnosis measures
    it, :func:`passes.quant.diagnosis.relative_error`), None without float outputs."""
    if len(ref) != len(got):
        raise CompilerError(f"compiled model has {len(got)} outputs, the original {len(ref)}")
    err = 0.0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            raise CompilerError(f"compiled output shape {list(g.shape)} differs from the original {list(r.shape)}")
        if r.size:
            err = max(err, float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))))
    if not any(r.dtype.kind == "f" for r in ref):
        return err, None
    by_index = [{str(i): r for i, r in enumerate(ref)}], [{str(i): g for i, g in enumerate(got)}]
    return err, relative_error(*by_index)


def build_for_target(model: ir.Model, config: CompileConfig) -> tuple[Executable, float]:
    """Build ``model`` for ``config.target``; returns (executable, seconds)."""
    start = time.perf_counter()
    backend = get_backend(config.target)
    try:
        options = BuildOptions(
            num_threads=config.num_threads,
            tune_trials=config.tune_trials,
            tune_minutes=config.tune_minutes,
            tuning_db=config.tuning_db,
            use_tuning_records=config.use_tuning_records,
        )
        executable = backend.build(model, options)
    except CompilerError:
        raise
    except Exception as exc:
        raise BackendError(f"building for target '{config.target}' failed: {type(exc).__name__}: {exc}") from exc
    return executable, time.perf_counter() - start


def compile(
    model: Any,
    example_inputs: Any = None,
    *,
    target: str = "x86",
    passes: Sequence[str] | None = None,
    num_threads: int | None = None,
    dynamic_batch: bool = False,
    debug: bool = False,
    measure: bool = True,
    input_names: Sequence[str] | None = None,
    name: str | None = None,
    tune_trials: int = 0,
    tune_minutes: float | None = None,
    tuning_db: str | os.PathLike[str] | None = None,
    use_tuning_records: bool = True,
    calibration: Any = None,
    pass_options: dict[str, dict[str, Any]] | None = None,
) -> CompiledModel:
    """Compile ``model`` for ``target`` and return a :class:`CompiledModel`.

    ``model`` is a ``torch.nn.Module`` / ``torch.fx.GraphModule`` (with ``example_inputs``),
    or an ONNX model (path, bytes, ``onnx.ModelProto``, ``onnx_ir.Model``). ``passes``
    defaults to :data:`compiler.config.DEFAULT_PASSES`; ``debug`` verifies the IR and checks
    numerics after every pass; ``measure`` times the result and ONNX Runtime for the report.
    ``name`` labels the model in the report (default: the class or file name).
    ``tune_trials`` / ``tune_minutes`` auto-tune the kernels (TVM targets) within that budget, recording
    into ``tuning_db`` (a directory; default: the user cache dir); existing records (that directory plus the
    records shipped in ``models/tuning``) are reused unless ``use_tuning_records=False``.

    Compression: ``passes`` made only of compression passes (e.g. ``["quantize_int8"]``) run inside the
    default pipeline, after cleanup and before fusion (see :func:`passes.manager.expand_pipeline`).
    ``calibration`` is a sequence of input samples (tuples like ``example_inputs``, or dicts by input
    name) for passes that calibrate; ``pass_options`` maps a pass name to its options, e.g.
    ``{"quantize_int8": {"method": "percentile"}}``.
    """
    start = time.perf_counter()
    config = CompileConfig(
        target=target,
        num_threads=num_threads or os.cpu_count() or 1,
        dynamic_batch=dynamic_batch,
        debug=debug,
        measure=measure,
        tune_trials=tune_trials,
        tune_minutes=tune_minutes,
        tuning_db=os.fspath(tuning_db) if tuning_db is not None else None,
        use_tuning_records=use_tuning_records,
        pass_options={k: dict(v) for k, v in (pass_options or {}).items()},
    )
    if passes is not None:
        config.passes = expand_pipeline(list(passes), config.passes)
    get_backend(target)  # an unknown target fails before any expensive work
    module = model
    model_ir = import_model(model, example_inputs, dynamic_batch=dynamic_batch, input_names=input_names)
    nodes_before = len(model_ir.graph)
    original_bytes = parameter_count(model_ir)[1]
    original_proto = ir.to_proto(model_ir) if measure else None

    feeds = synthesize_inputs(model_ir)
    arrays = _example_arrays(example_inputs)
    if arrays is not None and len(arrays) == len(model_ir.graph.inputs):
        feeds = {v.name or "": a for v, a in zip(model_ir.graph.inputs, arrays)}
    if is_torch_module(module) and example_inputs is not None:
        reference, error_reference = _torch_reference(module, example_inputs), "torch fp32"
    else:
        result = run_reference(model_ir, feeds)
        reference = [result[v.name or ""] for v in model_ir.graph.outputs]
        error_reference = "reference interpreter on the input model"

    context = PassContext(
        options=config.pass_options, calibration=calibration_feeds(model_ir, calibration), target=target
    )
    manager = PassManager(config.passes, debug=debug, reference_inputs=feeds if debug else None, context=context)
    pipeline = manager.run(model_ir)
    model_ir = infer_shapes(pipeline.model)  # backends need every value typed; rewrites may leave new values bare
    executable, build_seconds = build_for_target(model_ir, config)
    outputs = executable.run(feeds)
    max_abs, relative = _output_errors(reference, outputs)

    report = Report(
        model=name or _model_name(module),
        target=target,
        target_description=executable.description,
        parameters=parameter_count(model_ir)[0],
        size_bytes=parameter_count(model_ir)[1],
        original_size_bytes=original_bytes,
        nodes_before=nodes_before,
        nodes_after=len(model_ir.graph),
        op_counts=dict(op_histogram(model_ir)),
        passes=list(pipeline.records),
        layers=list(pipeline.layers),
        findings=list(pipeline.findings),
        max_abs_error=max_abs,
        relative_error=relative,
        error_reference=error_reference,
        num_threads=config.num_threads,
        build_seconds=build_seconds,
    )
    if measure and original_proto is not None:
        from backends.onnx import OrtExecutable

        report.latency_ms = executable.benchmark(feeds)
        report.ort_latency_ms = OrtExecutable(original_proto, config.num_threads).benchmark(feeds)
    report.compile_seconds = time.perf_counter() - start
    return CompiledModel(model_ir, executable, config, report)


def load(path: str | os.PathLike[str]) -> CompiledModel:
    """Load a model saved with :meth:`CompiledModel.save` and rebuild it for its target."""
    from compiler.serialization import load_compiled

    return load_compiled(path)
