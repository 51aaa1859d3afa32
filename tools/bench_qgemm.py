"""Integer GEMM micro-benchmark: cacc's int8 kernel vs cacc fp32 vs ORT fp32 / int8, same run, same threads.

For each ``MxKxN`` shape it times, interleaved round by round (so load from other processes hits
every contender alike), the median of:

- ``cacc int8``: uint8 activations -> DequantizeLinear, int8 per-column weights -> MatMul (the
  integer GEMM, prologue included);
- ``cacc int8+Q``: the same fed by a float input through QuantizeLinear (a full quantized layer);
- ``cacc fp32``: the same MatMul in fp32 (cacc's packed fp32 kernel);
- ``ORT fp32`` MatMul, ``ORT MatMulInteger`` (uint8 x int8) and ``ORT QLinearMatMul``.

With ``--convs`` it times pointwise convs (QDQ + bias + Clip) instead: cacc's integer conv, cacc /
ORT fp32 and ORT's QLinearConv (the same QDQ model).

Usage: ``python tools/bench_qgemm.py [--threads 2] [--shapes 128x384x384,128x384x1536] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: A MiniLM-L6 layer's GEMM shapes at sequence length 128 (QKV / attention output, FFN up, FFN down).
MINILM_SHAPES = "128x384x384,128x384x1536,128x1536x384"
#: EfficientNet-Lite0 pointwise convs (expand / project at 112, 56, 28, 14 and 7 pixels square).
EFFNET_CONVS = "16x112x112x96,144x56x56x24,240x28x28x40,480x14x14x80,1152x7x7x192"


def _model(nodes: list, inputs: list, output_shape: list[int], inits: list[tuple[str, np.ndarray]]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT if nodes[-1].op_type != "MatMulInteger" else 6, output_shape
            )
        ],
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def models(
    m: int, k: int, n: int, rng: np.random.Generator, weight_bits: int = 8
) -> dict[str, tuple[onnx.ModelProto, dict]]:
    """The benchmarked models with their feeds (``weight_bits`` 7: weights in [-63, 63], ORT's reduce_range)."""
    w = rng.standard_normal((k, n)).astype(np.float32)
    qmax = (1 << (weight_bits - 1)) - 1
    ws = (np.abs(w).max(axis=0) / qmax).astype(np.float32)
    wq = np.clip(np.rint(w / ws), -qmax - 1, qmax).astype(np.int8)
    x = rng.standard_normal((m, k)).astype(np.float32)
    xs, xz = np.float32(6.0 / 255), np.uint8(128)
    xq = np.clip(np.rint(x / xs) + 128, 0, 255).astype(np.uint8)
    xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    qin = helper.make_tensor_value_info("xq", TensorProto.UINT8, [m, k])
    winits = [("wq", wq), ("ws", ws), ("xs", np.array(xs)), ("xz", np.array(xz))]
    dq_w = helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1)
    out = {
        "cacc int8": (
            _model(
                [
                    dq_w,
                    helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                    helper.make_node("MatMul", ["xd", "w"], ["y"]),
                ],
                [qin],
                [m, n],
                winits,
            ),
            {"xq": xq},
        ),
        "cacc int8+Q": (
            _model(
                [
                    dq_w,
                    helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"]),
                    helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["xd"]),
                    helper.make_node("MatMul", ["xd", "w"], ["y"]),
                ],
                [xin],
                [m, n],
                winits,
            ),
            {"x": x},
        ),
        "fp32": (_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [xin], [m, n], [("w", w)]), {"x": x}),
        "MatMulInteger": (
            _model(
                [helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["y"])],
                [qin],
                [m, n],
                [("wq", wq), ("xz", np.array(xz))],
            ),
            {"xq": xq},
        ),
        "QLinearMatMul": (
            _model(
                [
                    helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"]),
                    helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
                ],
                [qin],
                [m, n],
                [
                    ("xs", np.array(xs)),
                    ("xz", np.array(xz)),
                    ("wq", wq),
                    ("ws", ws),
                    ("wz", np.zeros(n, np.int8)),
                    ("ys", np.array(np.float32(0.05))),
                    ("yz", np.array(np.uint8(128))),
                ],
            ),
            {"xq": xq},
        ),
    }
    return out


def conv_models(
    ci: int, h: int, w_: int, co: int, rng: np.random.Generator, weight_bits: int = 7
) -> dict[str, tuple[onnx.ModelProto, dict]]:
    """A pointwise (1x1) conv ``[1, ci, h, w] -> [1, co, h, w]`` with bias and Clip(0, 6) (EfficientNet's):
    the QDQ form (cacc's integer kernel; ORT fuses it into QLinearConv) and fp32."""
    w = rng.standard_normal((co, ci, 1, 1)).astype(np.float32)
    qmax = (1 << (weight_bits - 1)) - 1
    ws = (np.abs(w).reshape(co, -1).max(axis=1) / qmax).astype(np.float32)
    wq = np.clip(np.rint(w / ws.reshape(-1, 1, 1, 1)), -qmax - 1, qmax).astype(np.int8)
    b = rng.standard_normal(co).astype(np.float32)
    x = np.abs(rng.standard_normal((1, ci, h, w_))).astype(np.float32)
    xs, xz = np.float32(6.0 / 255), np.uint8(0)
    xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, h, w_])
    clip = [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    bounds = [("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32))]
    qdq = _model(
        [
            helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["xd"]),
            helper.make_node("Conv", ["xd", "w", "b"], ["c"]),
            *clip,
        ],
        [xin],
        [1, co, h, w_],
        [("wq", wq), ("ws", ws), ("xs", np.array(xs)), ("xz", np.array(xz)), ("b", b), *bounds],
    )
    fp32 = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"]), *clip], [xin], [1, co, h, w_], [("w", w), ("b", b), *bounds]
    )
    # cacc runs what its pipeline makes of the QDQ model: Conv + bias + Clip as one cacc::FusedConv
    fused = onnx.ModelProto()
    fused.CopyFrom(qdq)
    nodes = fused.graph.node
    conv = nodes[3]
    conv.op_type, conv.domain, conv.output[0] = "FusedConv", "cacc", "y"
    conv.attribute.extend(
        [helper.make_attribute("activation", "Clip"), helper.make_attribute("activation_params", [0.0, 6.0])]
    )
    del nodes[4]
    fused.opset_import.append(helper.make_opsetid("cacc", 1))
    return {"cacc int8+Q": (fused, {"x": x}), "fp32": (fp32, {"x": x}), "QDQ (QLinearConv)": (qdq, {"x": x})}


def _ort(proto: onnx.ModelProto, threads: int) -> Callable[[dict], object]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into the next contender
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)


def _cacc(proto: onnx.ModelProto, threads: int) -> Callable[[dict], object]:
    import onnx_ir as ir
    import tvm

    from backends.tvm.relax_emitter import emit_relax
    from backends.tvm.runtime import build, set_num_threads
    from backends.tvm.schedules.qgemm import QKERNEL_ATTR
    from compiler.ir.shapes import infer_shapes

    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    funcs = [f for _, f in emit_relax(model).functions_items()]
    kinds = [str(f.attrs[QKERNEL_ATTR]) for f in funcs if f.attrs is not None and QKERNEL_ATTR in f.attrs]
    if kinds:
        print(f"  integer kernel: {', '.join(kinds)}")
    ex = build(model, num_threads=threads)
    set_num_threads(threads)

    def call(feeds: dict) -> object:
        args = [tvm.runtime.tensor(feeds[s.name], ex.device) for s in ex.inputs]
        return lambda: ex.vm["main"](*args)

    return call


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default=MINILM_SHAPES)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", type=int, default=20, help="calls per timed sample")
    ap.add_argument("--weight-bits", type=int, default=8, choices=(7, 8), help="7: the u8s8 kernel always applies")
    ap.add_argument("--convs", default="", help="pointwise convs CixHxWxCo instead of GEMMs, e.g. " + EFFNET_CONVS)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'shape':>16} {'contender':>14} {'ms':>8} {'GOP/s':>7}")
    for shape in (args.convs or args.shapes).split(","):
        dims = [int(v) for v in shape.split("x")]
        if args.convs:
            ci, h, w, n = dims
            m, k = h * w, ci
            cases = conv_models(ci, h, w, n, rng, args.weight_bits)
        else:
            m, k, n = dims
            cases = models(m, k, n, rng, args.weight_bits)
        runners: dict[str, Callable[[], object]] = {}
        for name, (proto, feeds) in cases.items():
            if name.startswith("cacc"):
                runners[name] = _cacc(proto, args.threads)(feeds)  # type: ignore[assignment]
            if name == "fp32":
                runners["cacc fp32"] = _cacc(proto, args.threads)(feeds)  # type: ignore[assignment]
            if not name.startswith("cacc"):
                ort_fn = _ort(proto, args.threads)
                runners[f"ORT {name}"] = functools.partial(ort_fn, feeds)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for fn in runners.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                for _ in range(args.inner):
                    fn()
                times[name].append((time.perf_counter() - t0) * 1e3 / args.inner)
        for name, ts in times.items():
            ms = float(np.median(ts))
            print(f"{shape:>16} {name:>14} {ms:8.4f} {2 * m * k * n / ms / 1e6:7.1f}")


if __name__ == "__main__":
    main()
