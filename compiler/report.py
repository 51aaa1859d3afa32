"""The compile report: what was done to the model and what it cost or gained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from passes.base import LayerRecord
from passes.manager import PassRecord


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def _bits(b: int | None) -> str:
    return "fp32" if b is None else str(b)


def _weight_bits(r: LayerRecord) -> str:
    return "fp16" if r.weight_bits is None and r.weight_storage == "float16" else _bits(r.weight_bits)


def _layer_table(layers: list[LayerRecord]) -> list[str]:
    """Per-layer compression table: bits, size and (when diagnosed) each layer's error contribution."""
    name_w = min(max(len(r.node) for r in layers), 48)
    has_error = any(r.error is not None for r in layers)
    act_w = max(20, *(len(r.action) for r in layers))
    lines = [f"  layers ({len(layers)}):"]
    header = f"    {'layer'.ljust(name_w)}  {'op':<10} {'action':<{act_w}} {'w bits':>6} {'a bits':>6}  {'size':>17}"
    lines.append(header + ("  error" if has_error else ""))
    for r in layers:
        name = r.node if len(r.node) <= name_w else "..." + r.node[-(name_w - 3) :]
        size = f"{r.bytes_before / 1e3:.0f}->{r.bytes_after / 1e3:.0f} KB"
        line = (
            f"    {name.ljust(name_w)}  {r.op_type:<10} {r.action:<{act_w}} {_weight_bits(r):>6} "
            f"{_bits(r.activation_bits):>6}  {size:>17}"
        )
        if has_error:
            line += f"  {r.error:.3g}" if r.error is not None else "  -"
        if r.note:
            line += f"  ({r.note})"
        lines.append(line)
    return lines + _layer_summary(layers)


def _layer_summary(layers: list[LayerRecord]) -> list[str]:
    """Lines on why layers stayed in float (accuracy guard, cost model) and the worst diagnosed layer."""
    lines = []
    guarded = [r for r in layers if r.note.startswith("accuracy guard")]  # passes.quant.diagnosis.GUARD_NOTE
    if guarded:
        detail = guarded[0].note[len("accuracy guard") :].strip()
        lines.append(f"    accuracy guard kept {len(guarded)} layer(s) in fp32 {detail}")
    costly = [r for r in layers if r.note.startswith("cost model")]  # compiler.cost.COST_NOTE
    if costly:
        stored = sum(1 for r in costly if r.weight_bits is not None)  # weight-only: float compute, low-bit weights
        weights = f"; {stored} of them with quantized weights" if stored else ""
        why = f"integer kernel estimated not faster{weights}"
        lines.append(f"    cost model kept {len(costly)} layer(s) in float compute ({why})")
    diagnosed = [r for r in layers if r.error is not None]
    if diagnosed:
        worst = max(diagnosed, key=lambda r: r.error or 0.0)
        lines.append(f"    largest single-layer error: {worst.node} {worst.error:.3g} (relative output error)")
    return lines


@dataclass
class Report:
    """What ``compile`` did; ``print(report)`` shows it as a table, ``to_dict()`` as JSON."""

    model: str
    target: str
    target_description: str = ""
    parameters: int = 0
    size_bytes: int = 0
    original_size_bytes: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)
    layers: list[LayerRecord] = field(default_factory=list)  #: compression decisions per layer
    findings: list[str] = field(default_factory=list)  #: the passes' model-level findings (e.g. a diagnosis)
    max_abs_error: float | None = None
    #: ``||y - y_ref|| / ||y_ref||`` on the example inputs (largest over the float outputs)
    relative_error: float | None = None
    error_reference: str = ""  #: what the errors were measured against
    latency_ms: float | None = None
    ort_latency_ms: float | None = None
    num_threads: int | None = None
    compile_seconds: float = 0.0
    build_seconds: float = 0.0

    @property
    def passes_applied(self) -> list[str]:
        """Names of the passes that changed the model."""
        return [p.name for p in self.passes if p.modified]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict`."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["passes"] = [PassRecord(**p) for p in fields.get("passes", [])]
        fields["layers"] = [LayerRecord(**r) for r in fields.get("layers", [])]
        return cls(**fields)

    def __str__(self) -> str:
        rows: list[tuple[str, str]] = [
            ("target", f"{self.target} ({self.target_description})" if self.target_description else self.target),
            ("parameters", f"{self.parameters:,}"),
            ("size", f"{_mb(self.size_bytes)} (input model {_mb(self.original_size_bytes)})"),
            ("nodes", f"{self.nodes_before} -> {self.nodes_after}"),
        ]
        if self.max_abs_error is not None:
            relative = "" if self.relative_error is None else f", relative {self.relative_error:.3g}"
            rows.append(("max abs error", f"{self.max_abs_error:.3g}{relative} vs {self.error_reference}"))
        if self.latency_ms is not None:
            threads = f", {self.num_threads} threads" if self.num_threads else ""
            latency = f"{self.latency_ms:.2f} ms{threads}"
            if self.ort_latency_ms:
                ratio = self.latency_ms / self.ort_latency_ms
                latency += f" (ONNX Runtime fp32 {self.ort_latency_ms:.2f} ms, ratio {ratio:.2f}x)"
            rows.append(("latency", latency))
        rows.append(("compile time", f"{self.compile_seconds:.1f} s (target build {self.build_seconds:.1f} s)"))
        width = max(len(k) for k, _ in rows)
        lines = [f"cacc report: {self.model}"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        if self.passes:
            lines.append("  passes:")
            name_w = max(len(p.name) for p in self.passes)
            checked = any(p.max_error is not None for p in self.passes)
            header = f"    {'pass'.ljust(name_w)}  changed   time(s)  nodes        weights"
            lines.append(header + ("     max error" if checked else ""))
            for p in self.passes:
                line = (
                    f"    {p.name.ljust(name_w)}  {'yes' if p.modified else 'no ':<8} {p.seconds:8.3f}  "
                    f"{f'{p.nodes_before}->{p.nodes_after}':<12} {_mb(p.bytes_after)}"
                )
                if checked:
                    line += f"  {p.max_error:10.3g}" if p.max_error is not None else f"  {'-':>10}"
                lines.append(line)
        if self.layers:
            lines += _layer_table(self.layers)
        if self.findings:
            lines.append("  findings:")
            lines += [f"    {finding}" for finding in self.findings]
        if self.op_counts:
            ops = ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"  ops: {ops}")
        return "\n".join(lines)
