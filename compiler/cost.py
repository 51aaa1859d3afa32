"""An analytical cost model of the weighted layers (MatMul / Gemm / Conv, depthwise included), per target.

Quantization passes use it to keep a layer in float where the integer kernel would not be faster
(:func:`integer_kernel_pays_off`): "no quantized layer may run slower than its fp32 version".

The model is a roofline with a few overheads (all in :class:`TargetCosts`):

- kernel time = ``max(flops / throughput, bytes / bandwidth) + call_overhead``, the FLOPs counted on
  dimensions padded to the kernel's register tile (tiny layers waste most of a tile);
- int8 (W8A8) adds the activation quantize pass (an extra elementwise kernel reading fp32, writing
  int8) and the requantize epilogue (int32 -> fp32 per output element);
- weight-only low-bit (W4A32 etc.) computes in fp32 but reads fewer weight bytes and unpacks the
  weight once per call;
- depthwise convs have no reduction over channels, so integer dot-product instructions do not
  help them: their own (much lower) throughputs.

Numbers are per target as a whole (all threads the benchmark uses: 2 on x86). Where a number was
not measured it says so (the x86 GEMM / conv throughputs and bandwidth are measured). A
:class:`CostCorrection` fitted to measured kernel timings (least squares on log time, or xgboost when
installed) refines the estimate; it is stored as JSON, never pickled.
"""

from __future__ import annotations

import functools
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import onnx_ir as ir

from compiler.errors import CompilerError
from compiler.ir.ops.registry import attr

LayerKind = Literal["gemm", "conv", "depthwise"]

#: How :func:`integer_kernel_pays_off`'s reasons for keeping a layer in float start (the report counts them).
COST_NOTE = "cost model"

#: int8 x int8 -> int32 GEMM / 1x1-conv throughput of cacc's TVM kernels on this machine's AVX2 (no VNNI),
#: 2 threads. Measured with tools/profile_kernels.py (1 thread, doubled): MiniLM's u8s8 GEMMs 180 GOP/s,
#: EfficientNet-Lite0's channel-blocked u8s8 1x1 convs 110-171 GOP/s (vpmaddubsw + vpmaddwd).
X86_INT8_GOPS = 300.0


@dataclass(frozen=True)
class TargetCosts:
    """Throughputs and overheads of one target (all threads together)."""

    name: str
    fp32_gflops: float  #: dense fp32 GEMM / conv
    int8_gops: float  #: int8 x int8 -> int32 GEMM / conv (multiply-adds count 2 ops)
    depthwise_fp32_gflops: float
    depthwise_int8_gops: float
    bandwidth_gbs: float  #: memory bandwidth (streaming read + write)
    call_overhead_s: float  #: fixed cost of one kernel call
    unpack_gelems: float  #: low-bit weight elements unpacked per second (weight-only kernels)
    epilogue_gelems: float  #: int32 -> fp32 requantized output elements per second
    tile_fp32: tuple[int, int, int] = (6, 16, 1)  #: register tile (m, n, k) of the fp32 kernel
    tile_int8: tuple[int, int, int] = (4, 16, 4)  #: the int8 kernel's (k: values per dot-product lane)
    source: str = ""  #: where the numbers come from
    #: whether convs with a kernel larger than 1x1 have an integer kernel; without one a quantized conv runs
    #: dequantized in fp32 and only pays the quantize steps around it
    int8_spatial_conv: bool = True
    #: int8 throughput with full-range 8-bit weights where the fast kernel needs 7-bit ones (``None``: the same
    #: as ``int8_gops``); on x86 AVX2 without VNNI those run the exact s16 ``vpmaddwd`` kernel on activations
    #: widened to int16, instead of ``vpmaddubsw`` whose int16 pair sums they could saturate
    int8_full_gops: float | None = None
    #: activations per second of the standalone per-tensor quantize kernel (fp32 in, int8 out); ``None``: a
    #: stream of 5 bytes per element at ``bandwidth_gbs``
    quantize_gelems: float | None = None


#: int8 throughput on x86 CPUs with VNNI (``vpdpbusd``: four u8 x s8 products summed in int32, exact for any
#: weight, so full-range weights need no slower kernel). Measured on a 2-core Xeon with AVX-512 VNNI
#: (tools/profile_kernels.py, 2 threads): EfficientNet-Lite0's channel-blocked 1x1 convs 570-770 GOP/s against
#: 360-410 for the s16 kernel and 155-210 GFLOP/s fp32 on the same machine; scaled to this table's fp32 figure.
X86_VNNI_INT8_GOPS = 450.0


TARGETS: dict[str, TargetCosts] = {
    "x86": TargetCosts(
        "x86",
        # measured (tools/profile_kernels.py, 1 thread doubled): MiniLM's packed GEMMs 80-90 GFLOP/s, EfficientNet's
        # channel-blocked 1x1 convs 70-85 (2 threads together: 140-175)
        fp32_gflops=150.0,
        int8_gops=X86_INT8_GOPS,
        depthwise_fp32_gflops=12.0,  # estimate: the direct depthwise kernel is load/store bound
        depthwise_int8_gops=8.0,  # estimate: int8 needs widening to int16/int32, no dot product
        # An effective figure, below the raw one: a vectorised TVM stream over L3-resident activations of 1.2-4.8 MB
        # (EfficientNet-Lite0's) moves 42-52 GB/s on one thread (18 GB/s beyond the 32 MB L3). With 40 GB/s the model
        # makes EfficientNet's first eleven 1x1 convs integer, which measured no faster in the whole model (10.48 vs
        # 10.43 ms, 1 thread: the extra quantize and layout passes eat the kernel's gain) and lost 2.5 points of
        # top-1 agreement; 10 GB/s keeps the decisions those timings support.
        bandwidth_gbs=10.0,
        call_overhead_s=2e-6,
        unpack_gelems=16.0,  # in-register shifts and converts, 8 lanes
        epilogue_gelems=16.0,  # in-register int32 -> fp32 multiply-add, 8 lanes
        source="fp32 and int8 GEMM / 1x1 conv kernels and bandwidth measured on this machine",
        int8_spatial_conv=False,  # cacc's x86 integer kernels: GEMMs and 1x1 convs
        # measured: EfficientNet-Lite0's channel-blocked s16 1x1 convs 80-143 GOP/s on 1 thread
        int8_full_gops=220.0,
        # measured: cacc's flat quantize kernel, 1.2M activations in 190-260 us on 1 thread (vdivps-bound)
        quantize_gelems=10.0,
    ),
    "onnx": TargetCosts(
        "onnx",
        # Measured (ORT 1.32 CPU, 2 threads, this machine under load, medians): MatMul 128x384x384 and
        # 128x1536x384 fp32 77 GFLOP/s, QDQ int8 148-173 GOP/s; 3x3 / 5x5 depthwise Conv fp32 14-33 GFLOP/s,
        # int8 2.6 GOP/s (5-12x slower than fp32); 2x8x4 MatMul int8 1.3x slower than fp32.
        fp32_gflops=77.0,
        int8_gops=155.0,
        depthwise_fp32_gflops=20.0,
        depthwise_int8_gops=3.0,
        bandwidth_gbs=10.0,
        call_overhead_s=3e-6,
        unpack_gelems=16.0,
        epilogue_gelems=16.0,
        tile_fp32=(6, 16, 1),
        tile_int8=(4, 16, 4),
        source="ONNX Runtime CPU on this machine: GEMM and depthwise throughputs measured",
    ),
    "arm": TargetCosts(
        "arm",
        fp32_gflops=30.0,  # estimate: 2 Cortex-A7x/Neoverse cores, NEON FMA
        int8_gops=90.0,  # estimate: armv8.2 sdot, 4 int8 multiply-adds per lane
        depthwise_fp32_gflops=6.0,
        depthwise_int8_gops=5.0,
        bandwidth_gbs=15.0,
        call_overhead_s=3e-6,
        unpack_gelems=8.0,
        epilogue_gelems=8.0,
        tile_fp32=(8, 12, 1),
        tile_int8=(8, 12, 4),
        source="spec-sheet estimates (the emulator is no timing reference)",
        int8_spatial_conv=False,  # the same TVM lowering as x86
    ),
    "cuda": TargetCosts(
        "cuda",
        fp32_gflops=20_000.0,  # estimate: TVM fp32 CUDA-core GEMM on an H100-class GPU
        int8_gops=80_000.0,  # estimate: dp4a (4 int8 multiply-adds per instruction)
        depthwise_fp32_gflops=2_000.0,
        depthwise_int8_gops=2_000.0,
        bandwidth_gbs=2_500.0,
        call_overhead_s=5e-6,  # kernel launch
        unpack_gelems=2_000.0,
        epilogue_gelems=2_000.0,
        tile_fp32=(64, 64, 1),
        tile_int8=(64, 64, 4),
        source="spec-sheet estimates",
    ),
}


@dataclass(frozen=True)
class LayerShape:
    """The sizes that decide a weighted layer's cost: an ``m x k`` by ``k x n`` product per group
    (a conv's ``m`` is batch x output pixels, ``k`` input channels per group x kernel area)."""

    kind: LayerKind
    m: int
    n: int  #: output channels per group
    k: int  #: reduction length
    groups: int = 1
    input_elems: int = 0  #: elements of the data input (0: ``m * k * groups``, a plain GEMM)
    kernel_area: int = 1  #: a conv's kernel elements per channel (``kh * kw``); 1 for GEMMs and 1x1 convs

    @property
    def flops(self) -> int:
        """Multiply-adds x 2."""
        return 2 * self.m * self.n * self.k * self.groups

    @property
    def weight_elems(self) -> int:
        """Elements of the weight."""
        return self.n * self.k * self.groups

    @property
    def output_elems(self) -> int:
        """Elements of the output."""
        return self.m * self.n * self.groups

    @property
    def activation_elems(self) -> int:
        """Elements of the data input."""
        return self.input_elems or self.m * self.k * self.groups

    @staticmethod
    def gemm(m: int, k: int, n: int) -> LayerShape:
        """``[m, k] x [k, n]``."""
        return LayerShape("gemm", m, n, k)

    @staticmethod
    def conv(
        batch: int,
        in_channels: int,
        out_channels: int,
        out_hw: tuple[int, int],
        kernel: tuple[int, int],
        groups: int = 1,
        in_hw: tuple[int, int] | None = None,
    ) -> LayerShape:
        """A 2-D conv (depthwise when ``groups == in_channels == out_channels``)."""
        in_hw = in_hw or out_hw
        m = batch * out_hw[0] * out_hw[1]
        kind: LayerKind = "depthwise" if groups > 1 and groups == in_channels == out_channels else "conv"
        return LayerShape(
            kind,
            m,
            out_channels // groups,
            in_channels // groups * kernel[0] * kernel[1],
            groups,
            batch * in_channels * in_hw[0] * in_hw[1],
            kernel[0] * kernel[1],
        )


class _HasNode(Protocol):
    node: ir.Node


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return dims if len(dims) == len(value.shape) else None


def layer_shape(layer: ir.Node | _HasNode) -> LayerShape | None:
    """The :class:`LayerShape` of a MatMul / Gemm / Conv node (or a ``QuantLayer``) from its input
    shapes, or ``None`` when they are not all known."""
    node = layer if isinstance(layer, ir.Node) else layer.node
    if len(node.inputs) < 2:
        return None
    a, w = _dims(node.inputs[0]), _dims(node.inputs[1])
    if a is None or w is None or not a:
        return None
    if node.op_type == "MatMul" and len(w) == 2:
        return LayerShape.gemm(math.prod(a[:-1]), a[-1], w[1])
    if node.op_type == "Gemm" and len(a) == 2 and len(w) == 2:
        m, k = (a[1], a[0]) if attr(node, "transA", 0) else (a[0], a[1])
        return LayerShape.gemm(m, k, w[0] if attr(node, "transB", 0) else w[1])
    if node.op_type == "Conv" and len(a) == len(w) >= 3:
        spatial = a[2:]
        kernel = w[2:]
        nd = len(spatial)
        strides = attr(node, "strides", None) or [1] * nd
        dilations = attr(node, "dilations", None) or [1] * nd
        pads = attr(node, "pads", None) or [0] * (2 * nd)
        if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
            out = [-(-s // st) for s, st in zip(spatial, strides)]  # SAME_*: ceil(size / stride)
        else:
            out = [
                (s + pads[i] + pads[i + nd] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                for i, s in enumerate(spatial)
            ]
        groups = int(attr(node, "group", 1))
        pixels, area, in_pixels = math.prod(out), math.prod(kernel), math.prod(spatial)
        depthwise = groups > 1 and groups == a[1] == w[0]
        return LayerShape(
            "depthwise" if depthwise else "conv",
            a[0] * pixels,
            w[0] // groups,
            w[1] * area,
            groups,
            a[0] * a[1] * in_pixels,
            area,
        )
    return None


@functools.cache
def host_has_vnni() -> bool:
    """Whether this machine is x86 with AVX-VNNI or AVX-512 VNNI + VL (Linux ``/proc/cpuinfo``; False elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx_vnni" in flags or ("avx512_vnni" in flags and "avx512vl" in flags)


def host_costs(target: str) -> TargetCosts:
    """``target``'s costs on this machine: the table's, with the VNNI int8 throughput for x86 on a VNNI CPU (the x86
    target compiles for the host)."""
    t = TARGETS[target]
    if target == "x86" and host_has_vnni():
        return replace(t, int8_gops=X86_VNNI_INT8_GOPS, int8_full_gops=None, source=t.source + "; VNNI int8 kernel")
    return t


def _target(target: str | TargetCosts) -> TargetCosts:
    if isinstance(target, TargetCosts):
        return target
    if target not in TARGETS:
        raise CompilerError(f"no cost model for target '{target}'; known: {', '.join(sorted(TARGETS))}")
    return host_costs(target)


def _padded_flops(shape: LayerShape, tile: tuple[int, int, int]) -> float:
    def up(x: int, t: int) -> int:
        return -(-x // t) * t

    if shape.kind == "depthwise":  # vectorized over channels, no tile over m / n / k
        return float(shape.flops)
    m = shape.m if shape.m <= 2 else up(shape.m, tile[0])  # m <= 2: a matrix-vector kernel
    return 2.0 * m * up(shape.n, tile[1]) * up(shape.k, tile[2]) * shape.groups


@dataclass(frozen=True)
class CostBreakdown:
    """One estimate and its parts (seconds)."""

    compute: float
    memory: float
    overhead: float  #: call overheads, activation quantize pass, requantize epilogue, weight unpacking
    total: float


def _quantize_seconds(shape: LayerShape, activation_bits: int | None, t: TargetCosts) -> float:
    """The activation quantize pass in front of an integer kernel: read fp32, write the integer copy."""
    if t.quantize_gelems is not None:
        return shape.activation_elems / (t.quantize_gelems * 1e9)
    return shape.activation_elems * (4 + (activation_bits or 8) / 8) / (t.bandwidth_gbs * 1e9)


def layer_cost_breakdown(
    shape: LayerShape, weight_bits: int | None, activation_bits: int | None, target: str | TargetCosts
) -> CostBreakdown:
    """:func:`layer_cost` with its parts."""
    t = _target(target)
    integer = weight_bits is not None and activation_bits is not None
    w_bytes = shape.weight_elems * (weight_bits if weight_bits is not None else 32) / 8
    out_bytes = shape.output_elems * 4
    overhead = t.call_overhead_s
    if integer and shape.kind == "conv" and shape.kernel_area > 1 and not t.int8_spatial_conv:
        # no integer kernel: the conv computes in fp32 (weights dequantized at compile time)
        compute = _padded_flops(shape, t.tile_fp32) / (t.fp32_gflops * 1e9)
        in_bytes: float = shape.activation_elems * 4
        overhead += t.call_overhead_s + _quantize_seconds(shape, activation_bits, t)
    elif integer:
        full_rate = t.int8_full_gops if weight_bits is not None and weight_bits >= 8 else None
        full = full_rate is not None
        rate = t.depthwise_int8_gops if shape.kind == "depthwise" else (full_rate or t.int8_gops)
        compute = _padded_flops(shape, t.tile_int8) / (rate * 1e9)
        in_bytes = shape.activation_elems * (activation_bits or 8) / 8 * (2 if full else 1)  # s16: widened copy
        overhead += t.call_overhead_s + _quantize_seconds(shape, activation_bits, t)  # the activation's own pass
        overhead += shape.output_elems / (t.epilogue_gelems * 1e9)  # int32 -> fp32 requantize
    else:
        rate = t.depthwise_fp32_gflops if shape.kind == "depthwise" else t.fp32_gflops
        compute = _padded_flops(shape, t.tile_fp32) / (rate * 1e9)
        in_bytes = shape.activation_elems * 4
        if weight_bits is not None and weight_bits < 32:  # weight-only: unpack once per call
            overhead += shape.weight_elems / (t.unpack_gelems * 1e9)
    memory = (w_bytes + in_bytes + out_bytes) / (t.bandwidth_gbs * 1e9)
    return CostBreakdown(compute, memory, overhead, max(compute, memory) + overhead)


def layer_cost(
    shape: LayerShape | ir.Node | _HasNode,
    weight_bits: int | None,
    activation_bits: int | None,
    target: str | TargetCosts,
    *,
    correction: CostCorrection | None = None,
) -> float:
    """Estimated seconds of one call of the layer. ``weight_bits`` / ``activation_bits`` ``None``:
    fp32; both set: an integer kernel; only ``weight_bits``: weight-only (fp32 compute).
    A fitted ``correction`` for the same target rescales the analytical estimate."""
    s = shape if isinstance(shape, LayerShape) else layer_shape(shape)
    if s is None:
        raise CompilerError("layer cost needs the layer's input shapes (run shape inference first)")
    base = layer_cost_breakdown(s, weight_bits, activation_bits, target).total
    return correction.apply(s, weight_bits, activation_bits, base) if correction is not None else base


def integer_kernel_pays_off(
    layer: LayerShape | ir.Node | _HasNode,
    target: str | TargetCosts | None,
    *,
    weight_bits: int = 8,
    activation_bits: int | None = 8,
    correction: CostCorrection | None = None,
) -> tuple[bool, str]:
    """Whether the quantized layer is estimated to run faster than its fp32 version on ``target``,
    and why (a line for the report). Unknown targets ("reference", ``None``) and layers of
    unknown shape are quantized (``True``): there is nothing to compare."""
    if target is None or (isinstance(target, str) and target not in TARGETS):
        return True, f"no speed model for target {target!r}"
    shape = layer if isinstance(layer, LayerShape) else layer_shape(layer)
    if shape is None:
        return True, "input shapes unknown, no cost estimate"
    t = _target(target)
    fp32 = layer_cost(shape, None, None, t, correction=correction)
    quant = layer_cost(shape, weight_bits, activation_bits, t, correction=correction)
    label = f"w{weight_bits}a{activation_bits}" if activation_bits else f"w{weight_bits}-only"
    est = f"{label} est. {quant * 1e6:.1f} us vs fp32 {fp32 * 1e6:.1f} us on {t.name}"
    if quant < fp32:
        return True, est
    parts = layer_cost_breakdown(shape, weight_bits, activation_bits, t)
    if shape.kind == "depthwise" and activation_bits:
        why = "depthwise conv: no integer dot-product speedup"
    elif shape.kind == "conv" and shape.kernel_area > 1 and activation_bits and not t.int8_spatial_conv:
        why = f"no integer kernel for a {shape.kernel_area}-tap conv on {t.name}: it would run dequantized"
    elif parts.overhead > max(parts.compute, parts.memory):
        why = "quantize/dequantize overhead dominates a small layer"
    else:
        why = "the integer kernel is not faster"
    return False, f"{COST_NOTE}: {why} ({est})"


# --- learned correction ----------------------------------------------------------------------


def _features(shape: LayerShape, weight_bits: int | None, activation_bits: int | None, base: float) -> list[float]:
    integer = weight_bits is not None and activation_bits is not None
    return [
        1.0,
        math.log(base),
        math.log(max(shape.flops, 1)),
        math.log(max(shape.m, 1)),
        float(integer),
        float(weight_bits is not None and not integer),
        float(shape.kind == "depthwise"),
    ]


@dataclass
class Measurement:
    """One measured kernel call: the layer, its bits and the measured seconds."""

    shape: LayerShape
    weight_bits: int | None
    activation_bits: int | None
    seconds: float


@dataclass
class CostCorrection:
    """A correction of the analytical estimate fitted to measured kernel timings of one target:
    ``log(measured) ~ f(features)`` with features (log estimate, log FLOPs, log m, integer,
    weight-only, depthwise). ``kind`` "least_squares" (a linear ``f``, always available) or
    "xgboost" (gradient-boosted trees, when the ``xgboost`` module is installed). JSON only."""

    target: str
    kind: Literal["least_squares", "xgboost"] = "least_squares"
    coef: list[float] = field(default_factory=list)  #: least squares
    booster_json: str = ""  #: xgboost's own JSON model
    samples: int = 0
    fit_rmse_log: float = 0.0  #: root-mean-square error of log(time) on the fitted data
    _booster: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(
        cls,
        measurements: Sequence[Measurement],
        target: str | TargetCosts,
        kind: Literal["least_squares", "xgboost"] = "least_squares",
    ) -> CostCorrection:
        """Fit to ``measurements`` (at least 2; a handful per kind of layer is enough for least squares)."""
        import numpy as np

        t = _target(target)
        if len(measurements) < 2:
            raise CompilerError(f"a cost correction needs at least 2 measurements, got {len(measurements)}")
        base = [layer_cost_breakdown(m.shape, m.weight_bits, m.activation_bits, t).total for m in measurements]
        x = np.array([_features(m.shape, m.weight_bits, m.activation_bits, b) for m, b in zip(measurements, base)])
        y = np.log([m.seconds for m in measurements])
        result = cls(t.name, kind, samples=len(measurements))
        if kind == "least_squares":
            # Ridge-regularized towards "the analytical estimate is right" (coef of log estimate 1).
            prior = np.zeros(x.shape[1])
            prior[1] = 1.0
            lam = 1e-3 * len(measurements)
            coef = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y + lam * prior)
            result.coef = [float(c) for c in coef]
        else:
            try:
                import xgboost
            except ImportError as exc:
                raise CompilerError("kind='xgboost' needs the xgboost module") from exc
            booster = xgboost.train(
                {"max_depth": 3, "eta": 0.3, "objective": "reg:squarederror", "nthread": 1},
                xgboost.DMatrix(x, label=y - x[:, 1]),  # learn the residual of the log estimate
                num_boost_round=50,
            )
            result.booster_json = bytes(booster.save_raw("json")).decode()
        pred = np.log([result.apply(m.shape, m.weight_bits, m.activation_bits, b) for m, b in zip(measurements, base)])
        result.fit_rmse_log = float(np.sqrt(np.mean((pred - y) ** 2)))
        return result

    def apply(self, shape: LayerShape, weight_bits: int | None, activation_bits: int | None, base: float) -> float:
        """The corrected estimate (seconds) of a layer whose analytical estimate is ``base``."""
        import numpy as np

        f = np.array(_features(shape, weight_bits, activation_bits, base))
        if self.kind == "least_squares":
            return float(np.exp(f @ np.array(self.coef)))
        import xgboost

        if self._booster is None:
            self._booster = xgboost.Booster()
            self._booster.load_model(bytearray(self.booster_json.encode()))
        return float(np.exp(f[1] + self._booster.inplace_predict(f[None, :])[0]))

    def to_json(self) -> str:
        """The correction as JSON text."""
        return json.dumps({k: v for k, v in vars(self).items() if not k.startswith("_")})

    @classmethod
    def from_json(cls, text: str) -> CostCorrection:
        """Inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> CostCorrection:
        """Read a correction written by :meth:`save`."""
        return cls.from_json(Path(path).read_text())


def with_int8_throughput(target: str, gops: float) -> TargetCosts:
    """``target``'s costs with a measured int8 throughput (e.g. once the TVM int8 kernel is timed)."""
    return replace(_target(target), int8_gops=gops)
