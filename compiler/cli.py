"""The ``cacc`` command line: compile, export-onnx, inspect, bench, passes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compiler.errors import CompilerError


def _resolve(model: str) -> tuple[Any, Any, Any]:
    """(model, example_inputs, calibration samples or None) for an ONNX file or a shipped model's name."""
    path = Path(model)
    if path.suffix == ".onnx" or path.exists():
        return str(path), None, None
    import models

    if model in models.available():
        spec = models.get(model)
        return spec.module, spec.example_inputs, spec.calibration_data
    raise CompilerError(f"'{model}' is neither an ONNX file nor a shipped model ({', '.join(models.available())})")


def _passes(arg: str | None) -> list[str] | None:
    if arg is None:
        return None
    return [p for p in (s.strip() for s in arg.split(",")) if p]


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a string


def _pass_options(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["quantize_int8.method=mse", "quantize_int8.skip=[\"/fc\"]"]`` -> ``{"quantize_int8": {...}}``."""
    options: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        pass_name, dot, option = key.partition(".")
        if not sep or not dot or not pass_name or not option:
            raise CompilerError(f"--option '{item}' is not PASS.KEY=VALUE (VALUE is JSON or a bare word)")
        options.setdefault(pass_name, {})[option] = _option_value(value)
    return options


def _calibration(args: argparse.Namespace, shipped: Any) -> Any:
    """Calibration samples: an .npz file (one array per input, samples along axis 0) or the shipped model's."""
    source = getattr(args, "calibration", None)
    if source is None:
        return shipped
    if source.endswith(".npz"):
        import numpy as np

        try:
            with np.load(source, allow_pickle=False) as data:
                arrays = [data[k] for k in data.files]
        except (OSError, ValueError) as exc:
            raise CompilerError(f"cannot read calibration file {source}: {exc}") from exc
        if not arrays or any(len(a) != len(arrays[0]) for a in arrays):
            raise CompilerError(f"calibration file {source}: needs arrays with the same number of samples (axis 0)")
        return [tuple(a[i : i + 1] for a in arrays) for i in range(len(arrays[0]))]
    if shipped is None:
        raise CompilerError(f"--calibration {source}: expected an .npz file (this model ships no calibration set)")
    try:
        return shipped[: int(source)]
    except ValueError as exc:
        raise CompilerError(f"--calibration must be an .npz file or a sample count, got '{source}'") from exc


def _compile(args: argparse.Namespace, target: str, measure: bool) -> Any:
    import compiler

    model, example, shipped_calibration = _resolve(args.model)
    return compiler.compile(
        model,
        example,
        target=target,
        passes=_passes(args.passes),
        num_threads=args.num_threads,
        debug=args.debug,
        measure=measure,
        name=Path(args.model).name,
        tune_trials=getattr(args, "tune_trials", 0),
        tune_minutes=getattr(args, "tune_minutes", None),
        tuning_db=getattr(args, "tuning_db", None),
        calibration=_calibration(args, shipped_calibration),
        pass_options=_pass_options(getattr(args, "option", None)),
    )


def cmd_compile(args: argparse.Namespace) -> int:
    """``cacc compile MODEL``: compile, print the report, optionally save."""
    cm = _compile(args, args.target, measure=not args.no_measure)
    print(cm.report)
    if args.json:
        Path(args.json).write_text(json.dumps(cm.report.to_dict(), indent=1))
    if args.output:
        print(f"saved {cm.save(args.output)}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """``cacc export-onnx MODEL -o out.onnx``: optimize and write standard ONNX."""
    cm = _compile(args, "onnx", measure=False)
    path = cm.export_onnx(args.output, debug_info=args.debug_info)
    print(f"wrote {path} (max abs error {cm.report.max_abs_error:.3g})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``cacc inspect MODEL``: print the IR and op statistics (ONNX, .cacc, or shipped model)."""
    from compiler.frontends import import_model
    from compiler.ir import format_graph, op_histogram, parameter_count

    if args.model.endswith(".cacc"):
        from compiler.serialization import read_compiled

        _, model = read_compiled(args.model)
    else:
        source, example, _ = _resolve(args.model)
        model = import_model(source, example)
    print(format_graph(model, max_nodes=args.max_nodes))
    count, nbytes = parameter_count(model)
    print(f"\n{len(model.graph)} nodes, {count:,} parameters ({nbytes / 1e6:.2f} MB)")
    for op, n in op_histogram(model).most_common():
        print(f"  {op:<28} {n}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``cacc bench MODEL``: latency of the compiled model next to ONNX Runtime."""
    cm = _compile(args, args.target, measure=True)
    r = cm.report
    print(f"{r.model} on {r.target} ({r.target_description}), {r.num_threads} threads")
    print(f"  cacc          {r.latency_ms:8.2f} ms")
    if r.ort_latency_ms:
        print(f"  onnxruntime   {r.ort_latency_ms:8.2f} ms   (cacc / ORT = {r.latency_ms / r.ort_latency_ms:.2f}x)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """``cacc tune MODEL``: tune the kernels into the database; optionally export the records."""
    if not args.tune_trials and not args.tune_minutes:
        raise CompilerError("cacc tune needs a budget: --tune-trials N and/or --tune-minutes M")
    cm = _compile(args, "x86", measure=not args.no_measure)
    r = cm.report
    if r.latency_ms:
        print(
            f"{r.model}: {r.latency_ms:.2f} ms tuned"
            + (f", onnxruntime {r.ort_latency_ms:.2f} ms" if r.ort_latency_ms else "")
        )
    if args.export:
        from backends.tvm.database import open_database, target_key
        from backends.tvm.target import host_target

        db = open_database(args.tuning_db)
        print(f"exported {db.export(args.export, target_key(host_target()), best_only=args.keep)}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    """``cacc passes``: list registered passes."""
    from passes import available_passes

    for name, cls in available_passes().items():
        print(f"{name:<24} {cls.stage:<12} {cls.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="cacc", description="cacc: a compression-aware neural network compiler")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, target: bool = True) -> None:
        p.add_argument("model", help="an .onnx file or a shipped model name (minilm, efficientnet_lite0, fmnist_cnn)")
        if target:
            p.add_argument("--target", default="x86", help="x86, arm, cuda, onnx or reference (default x86)")
        p.add_argument("--passes", help="comma-separated pass names (default: the standard pipeline)")
        p.add_argument("--num-threads", type=int, default=None, help="threads for the compiled model and ORT")
        p.add_argument("--debug", action="store_true", help="verify IR and check numerics after every pass")
        p.add_argument(
            "--option",
            action="append",
            metavar="PASS.KEY=VALUE",
            help="a pass option (VALUE as JSON), e.g. quantize_int8.method=percentile; repeatable",
        )
        p.add_argument(
            "--calibration",
            help="calibration set: an .npz file (one array per input, samples on axis 0), or for a shipped "
            "model the number of its calibration samples to use (default: all of them)",
        )

    def tuning(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tune-trials", type=int, default=0, help="auto-tune the kernels with N trials in all")
        p.add_argument("--tune-minutes", type=float, default=None, help="auto-tuning time budget in minutes")
        p.add_argument("--tuning-db", default=None, help="tuning database directory (default: ~/.cache/cacc/tuning)")

    p = sub.add_parser("compile", help="compile a model and print its report")
    common(p)
    p.add_argument("-o", "--output", help="save the compiled model (.cacc)")
    p.add_argument("--json", help="also write the report as JSON")
    p.add_argument("--no-measure", action="store_true", help="skip latency measurement")
    tuning(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("export-onnx", help="optimize a model and write standard ONNX")
    common(p, target=False)
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument(
        "--debug-info", action="store_true", help="keep intermediate shapes and the source exporter's node metadata"
    )
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("inspect", help="print the IR and op statistics")
    p.add_argument("model", help="an .onnx or .cacc file, or a shipped model name")
    p.add_argument("--max-nodes", type=int, default=None, help="print at most this many nodes")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="time the compiled model against ONNX Runtime")
    common(p)
    tuning(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="auto-tune a model's kernels for the host CPU (records are reused by compile)")
    common(p, target=False)
    tuning(p)
    p.add_argument("--export", help="also write this target's best records to one shippable .jsonl file")
    p.add_argument("--keep", type=int, default=4, help="with --export: records kept per kernel (0: all)")
    p.add_argument("--no-measure", action="store_true", help="skip latency measurement")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("passes", help="list the available passes")
    p.set_defaults(func=cmd_passes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cacc`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CompilerError as exc:
        print(f"cacc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
