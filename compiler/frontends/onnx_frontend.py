"""ONNX frontend: a path, bytes, a ModelProto or an onnx-ir Model becomes cacc IR."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from compiler.errors import FrontendError
from compiler.frontends.common import MIN_OPSET, normalize

OnnxSource = str | os.PathLike[str] | bytes | onnx.ModelProto | ir.Model


def _load_proto(source: str | os.PathLike[str] | bytes) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(source, bytes):
        try:
            return onnx.load_from_string(source), None
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise FrontendError(f"the bytes are not a valid ONNX model: {exc}") from exc
    path = Path(source)
    if not path.is_file():
        raise FrontendError("ONNX file not found", path=str(path))
    try:
        return onnx.load(str(path)), str(path)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise FrontendError(f"not a valid ONNX model: {exc}", path=str(path)) from exc


def _upgrade(proto: onnx.ModelProto, path: str | None) -> onnx.ModelProto:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise FrontendError("the model imports no default-domain (ai.onnx) opset", path=path)
    if opset >= MIN_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors with C++ text
        raise FrontendError(f"could not upgrade opset {opset} to {MIN_OPSET}: {exc}", path=path) from exc


def import_onnx(source: OnnxSource) -> ir.Model:
    """Import an ONNX model (opset 13+, older ones are upgraded) into normalized cacc IR."""
    if isinstance(source, ir.Model):
        return normalize(source)
    if isinstance(source, onnx.ModelProto):
        proto, path = source, None
    else:
        proto, path = _load_proto(source)
    if not proto.graph.node and not proto.graph.output:
        raise FrontendError("the ONNX model has an empty graph", path=path)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise FrontendError(f"the ONNX model is malformed: {str(exc).strip().splitlines()[0]}", path=path) from exc
    proto = _upgrade(proto, path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise FrontendError(f"could not read the ONNX model: {exc}", path=path) from exc
    return normalize(model, source=path)
