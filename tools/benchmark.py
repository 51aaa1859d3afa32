"""Side-by-side benchmark of the shipped models: torch, ONNX Runtime (fp32, int8), plain TVM, cacc
(fp32 untuned and tuned; int8 and GPTQ int4, as exported ONNX run by ORT and compiled for x86; a round-to-nearest
int4 row beside GPTQ's, the baseline it must beat).

    python tools/benchmark.py [--models fmnist_cnn ...] [--threads 2] [--repeat 20] [--limit 200] [--out DIR]

Every engine runs in the same process with the same thread count (torch intra-op threads, ORT
intra-op threads, TVM's pool). For each model and engine it reports the median latency of one
batch-1 inference (after ``--warmup`` runs lasting ``--settle`` seconds at least; slow engines get fewer
repetitions, within ``--time-budget`` seconds; engines are timed round-robin in ``--rounds`` rounds after all are
built, so that a slow phase of the machine does not land on one row), the ratio to ORT fp32 (the median of the
ratios within each round), the model size, and the model's accuracy metric
(``spec.evaluate(predict, limit)``; fidelity to the fp32 model where the model reports it: EfficientNet's
``top1_agreement``, MiniLM's ``cos_fp32``). A row that fails is kept with its reason, never aborting the
run. Writes ``benchmark.json`` and ``benchmark.png`` under ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Engines in table order.
ENGINES = (
    "torch eager",
    "ORT fp32",
    "ORT int8 dynamic",
    "ORT int8 static QDQ",
    "TVM untuned",
    "cacc x86",
    "cacc x86 tuned",
    "cacc int8 ONNX->ORT",
    "cacc x86 int8",
    "cacc int4 RTN ONNX->ORT",
    "cacc int4 ONNX->ORT",
    "cacc x86 int4",
)
#: Calibration samples GPTQ's Hessians are collected from (the int4 rows; int8 static uses ``--calib``).
GPTQ_SAMPLES = 320
#: Quantization recipes of the cacc rows: (passes, pass options), per model where a model needs its own.
QUANT_RECIPES: dict[str, dict[str, tuple[list[str], dict[str, dict[str, Any]]]]] = {
    "int8": {
        "default": (["quantize_int8"], {}),
        # BN-folded depthwise / stem convs nearly cancel: round their weights with GPTQ and correct the biases;
        # the layers left with float32 weights store them as float16 (x86: the 8 the accuracy guard keeps, 3.92x
        # -> 3.94x smaller than cacc's fp32 parameters; onnx: the 5 the cost check keeps, file 4.815 -> 4.799 MB)
        "efficientnet_lite0": (
            ["quantize_int8"],
            {
                "quantize_int8": {"weight_rounding": "gptq", "bias_correction": True},
                "compact_storage": {"float_weights": True},
            },
        ),
        # its 3x3 convs stay in float compute (no integer kernel pays off there), with int8 weights: 3.9x smaller
        # instead of 2.9x, test accuracy 0.9100 against 0.9103 (fp32: 0.9103)
        "fmnist_cnn": (["quantize_int8"], {"quantize_int8": {"kept_weights": "int8"}}),
    },
    # GPTQ (act-order, group 128) from the first ``samples`` calibration samples of the model's whole set
    # (MiniLM: 320 glosses and nouns, about 3,300 tokens, so the K = 1,536 FFN Hessians have full rank)
    "int4": {
        "default": (
            ["quantize_weight_only"],
            {"quantize_weight_only": {"method": "gptq", "act_order": True, "samples": GPTQ_SAMPLES}},
        )
    },
    # round-to-nearest at the same bits and group size: the baseline GPTQ must beat
    "int4 RTN": {"default": (["quantize_weight_only"], {"quantize_weight_only": {"method": "rtn"}})},
}


#: EfficientNet-Lite0's 1x1 convs on its 112x112 to 28x28 maps (its first four stages), by ONNX node name.
_EFFNET_EARLY_POINTWISE = [f"node_Conv_{i}" for i in (799, 801, 804, 806, 809, 811, 814, 816, 819, 821, 824)]

#: Additions to a recipe's pass options for one (kind, model, target).
TARGET_OPTIONS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    # Full 8-bit weights where cacc's kernels stay exact with them (x86: the s16 kernel, ~15% slower than 7-bit
    # u8s8), not for ORT, whose u8s8 kernels would saturate: top-1 agreement 0.987-0.991 over repeated runs
    # against 0.969-0.982 with 7-bit weights (all 224 crops). The early 1x1 convs compute in float: as int8 they
    # measured no faster in the whole model (10.63 vs 10.69 ms on one thread; their maps are large, so the
    # quantize and layout passes eat the kernel's gain) and cost a crop of agreement (0.987 vs 0.991).
    # Every float layer stores int8 weights (3.40x -> 3.90x smaller) but for those the accuracy guard returns
    # to fp32 weights; it may pick only such weight-only layers (float compute either way, so fp32 weights cost
    # bytes, not speed): at 0.027 on its 4 samples it keeps 8 (the stem conv, the first three depthwise convs,
    # the 32->16, 16->96, 96->24 and 24->144 1x1 convs; 33 KB more than int8). Over all 224 crops the
    # mean relative logit error goes 0.0321 -> 0.0286 and agreement 0.973 -> 0.982, at 3.92x instead of 3.94x
    # (float16 scales and biases, compact_storage). Those 8 layers store float16 weights (float_weights): 3.94x;
    # equivalent builds (float16 or float32 kept weights or biases) measured 0.0286-0.0297 and 0.973-0.987,
    # each a new draw of the activations' rounding noise.
    ("int8", "efficientnet_lite0", "x86"): {
        "quantize_int8": {
            "reduce_range": False,
            "kept_weights": "int8",
            "tolerance": 0.027,
            "guard_scope": "weight_only",
            "layers": dict.fromkeys(_EFFNET_EARLY_POINTWISE, "weight_only"),
        }
    },
}


def quant_recipe(kind: str, model: str, target: str = "x86") -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The passes and options of the ``kind`` ("int8" / "int4" / "int4 RTN") rows for ``model`` compiled for
    ``target``."""
    recipes = QUANT_RECIPES[kind]
    passes, options = recipes.get(model, recipes["default"])
    extra = TARGET_OPTIONS.get((kind, model, target), {})
    return passes, {name: {**options.get(name, {}), **extra.get(name, {})} for name in {*options, *extra}}


#: Reference engine for the ratio column.
BASELINE = "ORT fp32"

Predict = Callable[..., Any]


@dataclass
class Row:
    """One engine on one model."""

    model: str
    engine: str
    status: str = "ok"  #: "ok" or "skipped"
    reason: str = ""
    latency_ms: float | None = None
    #: the median over timing rounds of (this row's latency / ORT fp32's latency in the same round); lower is faster
    ratio_to_ort_fp32: float | None = None
    round_ms: list[float] = field(default_factory=list)  #: the median latency of each timing round
    size_bytes: int | None = None
    metric: dict[str, float] = field(default_factory=dict)
    repeat: int = 0
    eval_limit: int = 0
    build_seconds: float | None = None


@dataclass
class Engine:
    """What a row needs: a predict callable (numpy in, output out), a timed callable, and a size."""

    predict: Predict
    timed: Callable[[], Any]  #: one inference on the example inputs (inputs prepared once)
    size_bytes: int
    sync: Callable[[], None] = lambda: None


def set_threads(threads: int) -> None:
    """Give torch and TVM ``threads`` threads (ORT sessions get them through their options)."""
    import torch

    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    from backends.tvm import set_num_threads

    set_num_threads(threads)


#: Seconds an engine runs untimed before its timed runs (at least ``warmup`` runs): right after another engine
#: the first runs are slow while that engine's worker threads still spin. Measured on EfficientNet, 2 threads:
#: ORT's static int8 took 7-8 ms a run for its first 5-14 runs (50-100 ms) after ORT's dynamic int8 session, 2.3-3.0
#: after; ORT fp32 up to 20 ms for its first 1-7. Three warm-up runs left most of that in the timed runs.
SETTLE_S = 0.25


def time_samples(
    fn: Callable[[], Any],
    *,
    repeat: int,
    warmup: int,
    budget_s: float,
    sync: Callable[[], None] = lambda: None,
    settle_s: float = SETTLE_S,
) -> list[float]:
    """Milliseconds of each timed run of ``fn`` after ``warmup`` untimed runs that last ``settle_s`` seconds at least;
    repetitions capped so the timing fits ``budget_s`` (>= 3)."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    done = 1
    while done < warmup or time.perf_counter() - t0 < settle_s:
        fn()
        sync()
        done += 1
    n = max(3, min(repeat, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return times


# ---------------------------------------------------------------------------------------------- engines


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    from backends.onnx import FP32_DQ_MATMUL

    so.add_session_config_entry(*FP32_DQ_MATMUL)  # weight-only layers keep fp32 activations, as cacc's backend
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_engine(path: Path, names: Sequence[str], example: Sequence[np.ndarray], threads: int) -> Engine:
    sess = _ort_session(path, threads)
    feeds = dict(zip(names, example))
    return Engine(
        predict=lambda *a: sess.run(None, dict(zip(names, a)))[0],
        timed=lambda: sess.run(None, feeds),
        size_bytes=path.stat().st_size,
    )


def _executable_engine(exe: Any, names: Sequence[str], example: Sequence[np.ndarray], size: int) -> Engine:
    feeds = dict(zip(names, example))
    # TVM executables time with inputs already on the device (what Executable.benchmark does)
    args = exe._args(feeds) if hasattr(exe, "_args") and hasattr(exe, "_call") else None
    timed = (lambda: exe._call(args)) if args is not None else (lambda: exe.run(feeds))
    device = getattr(exe, "device", None)
    return Engine(
        predict=lambda *a: exe.run(dict(zip(names, a)))[0],
        timed=timed,
        size_bytes=size,
        sync=(lambda: device.sync()) if device is not None else (lambda: None),
    )


class _Calibration:
    """An ORT CalibrationDataReader over a model's calibration samples."""

    def __init__(self, names: Sequence[str], samples: Sequence[tuple[np.ndarray, ...]]) -> None:
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # not needed by MinMax calibration
        pass


def _preprocessed(src: Path, work: Path) -> Path:
    """ORT's recommended pre-processing (shape inference, optimisation) before quantization."""
    from onnxruntime.quantization import quant_pre_process

    dst = work / f"{src.stem}.pre.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception:
        return src


def _quantize_dynamic(src: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = work / f"{src.stem}.int8dyn.onnx"
    quantize_dynamic(str(_preprocessed(src, work)), str(dst), weight_type=QuantType.QInt8)
    return dst


def _quantize_static(src: Path, work: Path, names: Sequence[str], calib: Sequence[tuple[np.ndarray, ...]]) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    dst = work / f"{src.stem}.int8qdq.onnx"
    quantize_static(
        str(_preprocessed(src, work)),
        str(dst),
        _Calibration(names, calib),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return dst


def _export_onnx(spec: Any, work: Path) -> Path:
    import torch

    path = work / f"{spec.name}.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        program = torch.onnx.export(spec.module, spec.example_inputs, dynamo=True, input_names=list(spec.input_names))
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned nothing for {spec.name}")
    program.save(str(path))
    return path


def _torch_size(module: Any) -> int:
    return int(sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]))


def _tuned_kwargs(spec_name: str, tuning_db: str | None) -> dict[str, Any]:
    """``compiler.compile`` arguments for the tuned row: ``--tuning-db`` if given, else the user cache
    and the records shipped in ``models/tuning`` (the row is skipped when neither has any)."""
    from backends.tvm.database import default_cache_dir, shipped_files

    if tuning_db is not None:
        if not Path(tuning_db).exists():
            raise RuntimeError(f"tuning database {tuning_db} does not exist")
        return {"tuning_db": tuning_db}
    shipped = [p for p in shipped_files() if p.name.startswith(f"{spec_name}_")]
    if not shipped and not any(default_cache_dir().glob("*.jsonl")):
        raise RuntimeError(f"no tuning records for {spec_name} (run `cacc tune {spec_name}` or pass --tuning-db)")
    return {}


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class Settings:
    """Command-line settings."""

    threads: int = 2
    repeat: int = 20
    warmup: int = 3
    limit: int = 200
    time_budget: float = 10.0  #: seconds of timed runs per row at most (>= 3 runs per round)
    rounds: int = 3  #: round-robin timing rounds (see :func:`time_rows`)
    settle: float = SETTLE_S  #: seconds of untimed runs before each engine's timed runs in a round
    eval_budget: float = 60.0  #: seconds of accuracy evaluation per row at most (>= 8 items)
    calib: int = 32
    engines: tuple[str, ...] = ENGINES
    tuning_db: str | None = None


def _builders(spec: Any, onnx_path: Path, work: Path, s: Settings) -> dict[str, Callable[[], Engine]]:
    names = list(spec.input_names)
    example = [t.numpy() for t in spec.example_inputs]

    def torch_eager() -> Engine:
        import torch

        from models import torch_predict

        predict = torch_predict(spec.module)
        tensors = list(spec.example_inputs)

        def timed() -> Any:
            with torch.inference_mode():
                return spec.module(*tensors)

        return Engine(predict, timed, _torch_size(spec.module))

    def tvm_untuned() -> Engine:
        from backends.tvm import build, host_target
        from compiler.frontends import import_model
        from compiler.ir.printer import parameter_count

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = import_model(spec.module, spec.example_inputs, input_names=names)
        exe = build(model, host_target(s.threads), num_threads=s.threads, schedule=False)
        return _executable_engine(exe, names, example, parameter_count(model)[1])

    def compiled(target: str, extra: dict[str, Any]) -> Any:
        import compiler

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return compiler.compile(
                spec.module,
                spec.example_inputs,
                target=target,
                num_threads=s.threads,
                measure=False,
                input_names=names,
                **extra,
            )

    def cacc(extra: dict[str, Any]) -> Engine:
        from compiler.ir.printer import parameter_count

        cm = compiled("x86", extra)
        return _executable_engine(cm.executable, names, example, parameter_count(cm.ir)[1])

    def quantized(kind: str, target: str = "x86") -> dict[str, Any]:
        passes, options = quant_recipe(kind, spec.name, target)
        # int8 static calibrates on the first --calib samples; the int4 recipes pick theirs (GPTQ's ``samples``)
        samples = calib if kind == "int8" else list(spec.calibration_data)
        return {"passes": passes, "pass_options": options, "calibration": samples}

    def cacc_onnx(kind: str) -> Engine:
        cm = compiled("onnx", quantized(kind, "onnx"))
        path = work / f"{spec.name}.cacc-{kind.replace(' ', '-')}.onnx"
        return _ort_engine(cm.export_onnx(path), names, example, s.threads)

    calib = list(spec.calibration_data)[: s.calib]
    return {
        "torch eager": torch_eager,
        "ORT fp32": lambda: _ort_engine(onnx_path, names, example, s.threads),
        "ORT int8 dynamic": lambda: _ort_engine(_quantize_dynamic(onnx_path, work), names, example, s.threads),
        "ORT int8 static QDQ": lambda: _ort_engine(
            _quantize_static(onnx_path, work, names, calib), names, example, s.threads
        ),
        "TVM untuned": tvm_untuned,
        "cacc x86": lambda: cacc({"use_tuning_records": False}),
        "cacc x86 tuned": lambda: cacc(_tuned_kwargs(spec.name, s.tuning_db)),
        "cacc int8 ONNX->ORT": lambda: cacc_onnx("int8"),
        "cacc x86 int8": lambda: cacc(quantized("int8")),
        "cacc int4 RTN ONNX->ORT": lambda: cacc_onnx("int4 RTN"),
        "cacc int4 ONNX->ORT": lambda: cacc_onnx("int4"),
        "cacc x86 int4": lambda: cacc(quantized("int4")),
    }


def prepare_row(
    name: str, engine: str, make: Callable[[], Engine], spec: Any, s: Settings
) -> tuple[Row, Engine | None]:
    """Build ``engine`` and evaluate its accuracy; a failure becomes a skipped row (and no engine) with the reason."""
    row = Row(model=name, engine=engine)
    try:
        t0 = time.perf_counter()
        eng = make()
        row.build_seconds = round(time.perf_counter() - t0, 3)
        row.size_bytes = int(eng.size_bytes)
        first = time_samples(eng.timed, repeat=1, warmup=1, budget_s=0.0, sync=eng.sync, settle_s=0.0)
        per_item_s = statistics.median(first) / 1e3 * (2 if name == "minilm" else 1)  # MiniLM embeds two texts
        row.eval_limit = max(1, min(s.limit, max(8, int(s.eval_budget / max(per_item_s, 1e-6)))))
        if s.limit > 0:
            with contextlib.redirect_stdout(io.StringIO()):
                row.metric = {k: float(v) for k, v in spec.evaluate(eng.predict, limit=row.eval_limit).items()}
    except Exception as exc:
        return _skipped(row, exc), None
    return row, eng


def _skipped(row: Row, exc: Exception) -> Row:
    row.status = "skipped"
    row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    if os.environ.get("CACC_BENCH_DEBUG"):
        traceback.print_exc()
    return row


def time_rows(prepared: Sequence[tuple[Row, Engine | None]], s: Settings) -> None:
    """Fill in each row's median latency, timing the engines in ``s.rounds`` round-robin rounds.

    Each round times every engine for its share of ``s.repeat`` runs (after ``s.warmup`` untimed runs lasting
    ``s.settle`` seconds at least),
    starting one engine later than the round before; the median is over all rounds' runs, so a slow
    phase of a shared machine hits every engine alike instead of whichever row ran during it. Each round's
    own median is kept too (``Row.round_ms``), for ratios between rows measured in the same rounds
    (:func:`paired_ratio`).
    """
    live = [(row, eng) for row, eng in prepared if eng is not None]
    if not live:
        return
    samples: dict[int, list[float]] = {id(row): [] for row, _ in live}
    rounds = max(1, s.rounds)
    per_round = max(3, -(-s.repeat // rounds))
    for r in range(rounds):
        start = r % len(live)
        for row, eng in live[start:] + live[:start]:
            if row.status != "ok":
                continue
            try:
                got = time_samples(
                    eng.timed,
                    repeat=per_round,
                    warmup=s.warmup,
                    budget_s=s.time_budget / rounds,
                    sync=eng.sync,
                    settle_s=s.settle,
                )
            except Exception as exc:
                _skipped(row, exc)
                continue
            samples[id(row)] += got
            row.round_ms.append(float(statistics.median(got)))
    for row, _ in live:
        if row.status == "ok" and samples[id(row)]:
            row.latency_ms, row.repeat = float(statistics.median(samples[id(row)])), len(samples[id(row)])


def paired_ratio(row: Row, base: Row) -> float | None:
    """The median over the timing rounds both rows ran of ``row``'s round latency over ``base``'s: each ratio
    compares two engines timed seconds apart, so a machine whose speed shifts between phases (this project's
    2-core VMs: +30-70% for minutes at a time, differently for each engine) does not bias it the way a ratio of
    overall medians can be biased. ``None`` without a common round."""
    pairs = [a / b for a, b in zip(row.round_ms, base.round_ms, strict=False) if b > 0]
    return float(statistics.median(pairs)) if pairs else None


#: Speed targets the footer reports as paired ratios: (cacc row, ORT row).
PAIRED = [
    (cacc, ort)
    for cacc in ("cacc x86 int8", "cacc int8 ONNX->ORT")
    for ort in ("ORT int8 static QDQ", "ORT int8 dynamic")
]


def run_benchmark(model_names: Sequence[str], s: Settings, work: Path) -> list[Row]:
    """All rows for ``model_names`` (ratios filled in against ORT fp32)."""
    import models

    set_threads(s.threads)
    rows: list[Row] = []
    for name in model_names:
        try:
            spec = models.get(name)
            onnx_path = _export_onnx(spec, work)
        except Exception as exc:
            rows += [Row(name, e, "skipped", f"model unavailable: {type(exc).__name__}: {exc}") for e in s.engines]
            continue
        builders = _builders(spec, onnx_path, work, s)
        prepared = []
        for engine in s.engines:
            row, eng = prepare_row(name, engine, builders[engine], spec, s)
            print(f"  {name:<20} {engine:<22} {_fmt_status(row)}", file=sys.stderr, flush=True)
            prepared.append((row, eng))
        time_rows(prepared, s)
        model_rows = [row for row, _ in prepared]
        for row in model_rows:
            print(f"  {name:<20} {row.engine:<22} {_fmt_latency(row)}", file=sys.stderr, flush=True)
        del prepared  # the engines (compiled models, sessions) of this model
        base = next((r for r in model_rows if r.engine == BASELINE and r.latency_ms), None)
        for r in model_rows:
            ratio = paired_ratio(r, base) if base is not None and r.latency_ms is not None else None
            r.ratio_to_ort_fp32 = round(ratio, 3) if ratio is not None else None
        rows += model_rows
    return rows


# ---------------------------------------------------------------------------------------------- output


def _fmt_status(row: Row) -> str:
    if row.status != "ok":
        return f"skipped ({row.reason})"
    return f"built in {row.build_seconds:.1f} s" + (f", {_fmt_metric(row.metric)}" if row.metric else "")


def _fmt_latency(row: Row) -> str:
    return f"{row.latency_ms:10.3f} ms" if row.latency_ms is not None else f"skipped ({row.reason})"


def _fmt_metric(metric: dict[str, float]) -> str:
    # fidelity to fp32 (MiniLM's cos_fp32, EfficientNet's logit_err) needs four decimals: int4 RTN vs GPTQ, or
    # int8 variants whose agreement moves by a crop
    precise = ("cos", "logit_err")
    return " ".join(f"{k}={v:.4f}" if k.startswith(precise) else f"{k}={v:.3f}" for k, v in metric.items() if k != "n")


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of ``rows``."""
    header = f"{'model':<19} {'engine':<20} {'latency ms':>11} {'x ORT':>7} {'size MB':>8} {'n':>5}  accuracy"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.model:<19} {r.engine:<20} {'—':>11} {'':>7} {'':>8} {'':>5}  skipped: {r.reason}")
            continue
        ratio = f"{r.ratio_to_ort_fp32:.2f}" if r.ratio_to_ort_fp32 is not None else "—"
        size = f"{r.size_bytes / 1e6:.2f}" if r.size_bytes is not None else "—"
        lines.append(
            f"{r.model:<19} {r.engine:<20} {r.latency_ms:>11.3f} {ratio:>7} {size:>8} {r.eval_limit:>5}  "
            f"{_fmt_metric(r.metric)}"
        )
    notes = []
    for model in dict.fromkeys(r.model for r in rows):
        by_engine = {r.engine: r for r in rows if r.model == model and r.status == "ok" and r.round_ms}
        for cacc, ort in PAIRED:
            if cacc in by_engine and ort in by_engine:
                ratio = paired_ratio(by_engine[cacc], by_engine[ort])
                notes.append(f"{model}: {cacc} = {ratio:.2f}x {ort}")
    if notes:
        lines += ["", "paired ratios (median over timing rounds of the ratio within a round):", *notes]
    return "\n".join(lines)


def write_chart(rows: Sequence[Row], path: Path, threads: int) -> None:
    """A PNG with one horizontal bar chart (latency, log scale) per model (skipped, with a note, without
    matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print(f"no chart: matplotlib is not installed (pip install matplotlib), {path} not written")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_names = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(len(model_names), 1, figsize=(9, 2.6 * max(len(model_names), 1)), squeeze=False)
    for ax, name in zip(axes[:, 0], model_names):
        mrows = [r for r in rows if r.model == name]
        labels = [r.engine for r in mrows]
        values = [r.latency_ms if r.latency_ms is not None else 0.0 for r in mrows]
        colors = ["tab:green" if r.engine.startswith("cacc") else "tab:blue" for r in mrows]
        ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        if any(v > 0 for v in values):
            ax.set_xscale("log")
        for i, r in enumerate(mrows):
            text = (
                f"{r.latency_ms:.2f} ms ({r.ratio_to_ort_fp32:.2f}x ORT)"
                if r.latency_ms is not None and r.ratio_to_ort_fp32 is not None
                else ("skipped" if r.latency_ms is None else f"{r.latency_ms:.2f} ms")
            )
            ax.text(max(values[i], min((v for v in values if v > 0), default=1.0)), i, " " + text, va="center")
        ax.set_title(f"{name}: median batch-1 latency, {threads} threads (lower is better)")
        ax.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "onnxruntime", "tvm", "onnx"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:
            out[mod] = "unavailable"
    return out


def write_outputs(rows: Sequence[Row], s: Settings, out: Path) -> dict[str, Any]:
    """Write ``benchmark.json`` and ``benchmark.png`` under ``out``; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": "cacc-benchmark/1",
        "settings": {k: v for k, v in asdict(s).items() if k != "engines"} | {"engines": list(s.engines)},
        "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "processor": platform.processor()},
        "versions": _versions(),
        "baseline": BASELINE,
        "rows": [asdict(r) for r in rows],
    }
    (out / "benchmark.json").write_text(json.dumps(doc, indent=2))
    write_chart(rows, out / "benchmark.png", s.threads)
    return doc


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", nargs="+", default=None, help="shipped model names (default: all)")
    p.add_argument("--engines", nargs="+", default=None, choices=ENGINES, metavar="ENGINE", help="rows to run")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per row at most (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--limit", type=int, default=200, help="items for the accuracy metric at most (0: skip)")
    p.add_argument("--time-budget", type=float, default=10.0, help="seconds of timed runs per row at most")
    p.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds over the engines (default 3)")
    p.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help=f"seconds of untimed runs per engine and round (default {SETTLE_S})",
    )
    p.add_argument("--eval-budget", type=float, default=60.0, help="seconds of accuracy evaluation per row at most")
    p.add_argument("--calib", type=int, default=32, help="calibration samples for static int8 (default 32)")
    p.add_argument("--tuning-db", default=None, help="tuning database for the 'cacc x86 tuned' row")
    p.add_argument("--out", default="benchmark_out", help="output directory for JSON and PNG")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    import models

    args = build_parser().parse_args(argv)
    s = Settings(
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        limit=args.limit,
        time_budget=args.time_budget,
        rounds=args.rounds,
        settle=args.settle,
        eval_budget=args.eval_budget,
        calib=args.calib,
        engines=tuple(args.engines or ENGINES),
        tuning_db=args.tuning_db,
    )
    names = args.models or models.available()
    with tempfile.TemporaryDirectory(prefix="cacc-bench-") as tmp:
        rows = run_benchmark(names, s, Path(tmp))
    out = Path(args.out)
    write_outputs(rows, s, out)
    paired = "x ORT = latency / ORT fp32 latency, the median of the ratios within each timing round"
    print(f"threads={s.threads} repeat<={s.repeat} limit<={s.limit}  ({paired})")
    print(format_table(rows))
    print(f"\nwrote {out / 'benchmark.json'} and {out / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
