"""PassManager: runs passes in order, checks their declared requirements, instruments them,
and in debug mode verifies the IR and checks numerics against the reference interpreter
after every pass."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from compiler.errors import CompilerError, NumericsError, PassError
from compiler.ir.interpreter import run as run_reference
from compiler.ir.printer import parameter_count
from compiler.ir.verifier import verify
from passes.base import LayerRecord, Pass, PassContext, Property, available_passes, get_pass


@dataclass
class PassRecord:
    """What one pass did: whether it changed the model, how long it took, IR size around it."""

    name: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    max_error: float | None = None  #: debug mode: max |output - original output| after this pass


@dataclass
class PipelineResult:
    """The optimized model and one record per pass that ran."""

    model: ir.Model
    records: list[PassRecord] = field(default_factory=list)
    layers: list[LayerRecord] = field(default_factory=list)  #: compression decisions per layer
    findings: list[str] = field(default_factory=list)  #: the passes' model-level findings

    @property
    def applied(self) -> list[str]:
        """Names of the passes that changed the model."""
        return [r.name for r in self.records if r.modified]


def _max_relative_error(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|) over all outputs."""
    abs_err, rel_err = 0.0, 0.0
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            return float("inf"), float("inf")
        if r.size == 0:
            continue
        rf, gf = r.astype(np.float64), g.astype(np.float64)
        err = float(np.max(np.abs(rf - gf)))
        scale = max(float(np.max(np.abs(rf))), 1e-6)
        abs_err, rel_err = max(abs_err, err), max(rel_err, err / scale)
    return abs_err, rel_err


#: Passes that end a compression pipeline (after fusion, which still reads float32 constants).
STORAGE_PASSES: tuple[str, ...] = ("compact_storage",)


def expand_pipeline(names: Sequence[str], default: Sequence[str]) -> list[str]:
    """The pipeline to run for a user's pass list.

    A list made only of compression passes (``stage == "compression"``, e.g. ``["quantize_int8"]``) is
    placed inside ``default``: after its cleanup passes and before its fusion passes, so the model
    is cleaned before it is compressed and fused after; :data:`STORAGE_PASSES` (``compact_storage``: the
    quantized layers' scales and biases in float16) end it. Any other list runs exactly as given.
    """
    classes = [get_pass(n) for n in names]
    if not classes or any(c.stage != "compression" for c in classes):
        return list(names)
    default_stages = [get_pass(n).stage for n in default]
    cut = next((i for i, st in enumerate(default_stages) if st != "cleanup"), len(default))
    return [*default[:cut], *names, *default[cut:], *STORAGE_PASSES]


class PassManager:
    """Runs a sequence of passes (instances or registered names).

    ``debug=True`` runs :func:`compiler.ir.verify` after every pass, and when
    ``reference_inputs`` are given, runs the reference interpreter after every pass that
    changed the model and raises :class:`NumericsError` naming the first pass that changed the
    outputs (against the model it was given) by more than its ``numerics_tolerance``; each record's
    ``max_error`` is measured against the original model. So a compression pass's error (exempt, or
    allowed by its own tolerance) is not charged to the exact passes after it.
    ``context`` (options per pass name, calibration feeds, target) is shared by every pass.
    """

    def __init__(
        self,
        passes: Sequence[Pass | str],
        *,
        debug: bool = False,
        reference_inputs: Mapping[str, np.ndarray] | None = None,
        initial_properties: Sequence[Property] = (),
        context: PassContext | None = None,
    ) -> None:
        self.context = context if context is not None else PassContext()
        self.passes: list[Pass] = [get_pass(p)(self.context) if isinstance(p, str) else p for p in passes]
        stray = sorted(set(self.context.options) - {p.name for p in self.passes})
        if stray:
            raise PassError(
                f"options given for pass(es) not in the pipeline: {', '.join(stray)} "
                f"(pipeline: {', '.join(p.name for p in self.passes)})"
            )
        self.debug = debug
        self.reference_inputs = dict(reference_inputs) if reference_inputs is not None else None
        self.initial_properties = set(initial_properties)
        self._check_order()

    def _check_order(self) -> None:
        """Fail early, before running anything, if a pass's requirements cannot hold when it runs."""
        providers: dict[Property, list[str]] = {}
        for name, cls in available_passes().items():
            for prop in cls.guarantees:
                providers.setdefault(prop, []).append(name)
        have = set(self.initial_properties)
        for p in self.passes:
            missing = p.required - have
            if missing:
                hints = "; ".join(
                    f"'{m.value}' is established by {', '.join(providers.get(m, [])) or 'no registered pass'}"
                    for m in sorted(missing, key=lambda m: m.value)
                )
                raise PassError(f"requirements not met: {hints}. Run such a pass before it.", pass_name=p.name)
            have = (have - p.invalidates) | p.guarantees

    def run(self, model: ir.Model) -> PipelineResult:
        """Run every pass in place on ``model``; returns it with per-pass records."""
        result = PipelineResult(model)
        reference = previous = None
        if self.debug:
            verify(model, pass_name="<input>")
            if self.reference_inputs is not None:
                reference = previous = run_reference(model, self.reference_inputs)
        for p in self.passes:
            nodes_before, (_, bytes_before) = len(model.graph), parameter_count(model)
            start = time.perf_counter()
            try:
                pass_result = p(model)
            except CompilerError as exc:
                if exc.pass_name is None:
                    exc.pass_name = p.name
                    exc.args = (exc._format(),)
                raise
            except Exception as exc:
                raise PassError(f"pass crashed: {type(exc).__name__}: {exc}", pass_name=p.name) from exc
            seconds = time.perf_counter() - start
            model = pass_result.model
            record = PassRecord(
                p.name,
                pass_result.modified,
                seconds,
                nodes_before,
                len(model.graph),
                bytes_before,
                parameter_count(model)[1],
            )
            result.records.append(record)
            if self.debug:
                verify(model, pass_name=p.name)
                if pass_result.modified and reference is not None and previous is not None:
                    previous = self._check_numerics(p, model, self.reference_inputs or {}, reference, previous, record)
        result.model = model
        result.layers = list(self.context.layers)
        result.findings = list(self.context.findings)
        return result

    @staticmethod
    def _check_numerics(
        p: Pass,
        model: ir.Model,
        inputs: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray],
        previous: Mapping[str, np.ndarray],
        record: PassRecord,
    ) -> dict[str, np.ndarray]:
        """Check ``p``'s change of the outputs against ``previous`` (the outputs before it); record the error
        against the original ``reference``; return the new outputs."""
        got = run_reference(model, inputs)
        record.max_error = _max_relative_error(reference, got)[0]
        abs_err, rel_err = _max_relative_error(previous, got)
        if p.numerics_tolerance is not None and rel_err > p.numerics_tolerance:
            raise NumericsError(
                f"outputs changed by {abs_err:.3g} (relative {rel_err:.3g}) in this pass; "
                f"allowed relative change is {p.numerics_tolerance:g}",
                pass_name=p.name,
            )
        return got
