"""The ``onnx`` target: export standard ONNX (cacc ops decomposed) and run it in ONNX Runtime."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableSequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from backends.base import Backend, BuildOptions, Executable
from compiler.errors import BackendError
from compiler.ir.ops.registry import CACC_DOMAIN

# Protobuf cannot serialize a message over 2 GiB; larger models need external data.
_PROTO_LIMIT = 2**31 - 1
#: ONNX Runtime's contrib-op domain (e.g. ``MatMulNBits``), which exported models may use.
ORT_DOMAIN = "com.microsoft"


def to_standard_onnx(model: ir.Model, *, pack_int4: bool = False) -> onnx.ModelProto:
    """A standard ONNX ``ModelProto`` for ``model`` (not modified): cacc ops are decomposed
    into standard ops, the cacc opset import is dropped, and the result passes
    ``onnx.checker`` with ``full_check=True``. ONNX Runtime's ``com.microsoft`` ops are kept;
    ``pack_int4`` rewrites blocked int4 ``DequantizeLinear -> MatMul`` into ORT's
    ``com.microsoft::MatMulNBits`` (the ``pack_matmulnbits`` pass)."""
    from passes.decompose import decompose_cacc_ops

    has_int4 = pack_int4 and any(n.op_type == "DequantizeLinear" for n in model.graph)
    work = model.clone() if has_int4 or any(n.domain == CACC_DOMAIN for n in model.graph) else model
    if work is not model:
        decompose_cacc_ops(work)
        work.opset_imports.pop(CACC_DOMAIN, None)
    if has_int4:
        from passes.pack_matmulnbits import PackMatMulNBits

        PackMatMulNBits()(work)
    leftover = sorted({n.op_type for n in work.graph if n.domain not in ("", "ai.onnx", ORT_DOMAIN)})
    if leftover:
        raise BackendError(f"cannot export non-standard ops to ONNX: {', '.join(leftover)}")
    proto = ir.to_proto(work)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BackendError(f"exported ONNX does not pass onnx.checker: {exc}") from exc
    return proto


#: Node metadata an export without ``debug_info`` keeps: cacc's own marks (a storage cast's, so a re-import
#: still reads it as one).
KEPT_METADATA_PREFIX = "cacc."


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop from ``proto`` (in place) what only serves debugging: every graph's ``value_info`` (the shapes of
    intermediate values, which ONNX Runtime and ``onnx.shape_inference`` infer again), node doc strings, and node
    and graph metadata other than cacc's ``cacc.*`` marks (the source exporter's stack traces, fx node names and
    rewrite-rule names: EfficientNet-Lite0 int8 carries 28 KB of them and 29 KB of shapes; torch.export's
    signature of the source program, which names parameters the optimized graph no longer has: 25 KB). The
    model's own metadata (``ModelProto.metadata_props``: author, license, ...) stays."""

    def keep_marks(props: MutableSequence[onnx.StringStringEntryProto]) -> None:
        kept = [p for p in props if p.key.startswith(KEPT_METADATA_PREFIX)]
        del props[:]
        props.extend(kept)

    def visit(graph: onnx.GraphProto) -> None:
        del graph.value_info[:]
        keep_marks(graph.metadata_props)
        for node in graph.node:
            keep_marks(node.metadata_props)
            node.doc_string = ""
            for a in node.attribute:  # control-flow bodies
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for g in a.graphs:
                    visit(g)

    visit(proto.graph)


def export_onnx(
    model: ir.Model, path: str | os.PathLike[str], *, pack_int4: bool = False, debug_info: bool = False
) -> Path:
    """Write ``model`` as a standard ONNX file at ``path`` and return the path (``pack_int4``: see
    :func:`to_standard_onnx`). Without ``debug_info`` the file leaves out intermediate shapes and the source
    exporter's node metadata (:func:`strip_debug_info`): a deployable, smaller file that runs the same."""
    proto = to_standard_onnx(model, pack_int4=pack_int4)
    if not debug_info:
        strip_debug_info(proto)
    out = Path(path)
    if proto.ByteSize() > _PROTO_LIMIT:
        raise BackendError("model is larger than 2 GiB; external-data export is not supported yet", path=str(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(out))
    except OSError as exc:
        raise BackendError(f"could not write ONNX file: {exc}", path=str(out)) from exc
    return out


#: ORT (1.32) rewrites a ``DequantizeLinear`` of an int8 / int4 weight feeding a ``MatMul`` (a weight-only layer)
#: into ``MatMulNBits`` and by default computes it with its activations quantized to int8 (accuracy level 4): a
#: 0.5% error the model does not contain. Level 1 keeps the fp32 activations, as the model says.
FP32_DQ_MATMUL = ("session.qdq_matmulnbits_accuracy_level", "1")


def ort_session(proto: onnx.ModelProto | bytes, num_threads: int | None = None) -> object:
    """An ``onnxruntime.InferenceSession`` on the CPU with ``num_threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry(*FP32_DQ_MATMUL)
    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise BackendError(f"onnxruntime could not load the model: {exc}") from exc


class OrtExecutable(Executable):
    """A model running in ONNX Runtime (CPU execution provider)."""

    def __init__(self, proto: onnx.ModelProto, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        self._session = ort_session(proto, num_threads)
        self._outputs = [o.name for o in proto.graph.output]
        self.description = f"onnxruntime {ort.__version__} CPU" + (f", {num_threads} threads" if num_threads else "")

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the ORT session."""
        try:
            return list(self._session.run(self._outputs, dict(feeds)))  # type: ignore[attr-defined]
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc


class OnnxBackend(Backend):
    """Target ``onnx``: standard ONNX run by ONNX Runtime."""

    name = "onnx"

    def build(self, model: ir.Model, options: BuildOptions) -> Executable:
        """Export to standard ONNX (blocked int4 MatMul weights as ORT's MatMulNBits) and open an ORT session."""
        return OrtExecutable(to_standard_onnx(model, pack_int4=True), options.num_threads)
