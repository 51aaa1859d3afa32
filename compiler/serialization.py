"""The ``.cacc`` file: a zip holding ``manifest.json`` and ``model.onnx`` (the optimized IR).

Nothing in it is executable or pickled: loading parses JSON and protobuf, verifies the
IR, and rebuilds the target code.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from compiler.errors import CompilerError, SerializationError

if TYPE_CHECKING:
    from compiler.compiled_model import CompiledModel

FORMAT = "cacc-compiled-model"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_MODEL = "model.onnx"


def save_compiled(cm: CompiledModel, path: str | os.PathLike[str]) -> Path:
    """Write ``cm`` to ``path`` atomically (a partial file never replaces a good one)."""
    out = Path(path)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": cm.config.to_dict(),
        "report": cm.report.to_dict(),
        "inputs": cm.input_names,
        "outputs": cm.output_names,
    }
    tmp = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_MANIFEST, json.dumps(manifest, indent=1))
            zf.writestr(_MODEL, ir.to_proto(cm.ir).SerializeToString())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SerializationError(f"could not write compiled model: {exc}", path=str(out)) from exc
    return out


def read_compiled(path: str | os.PathLike[str]) -> tuple[dict[str, Any], ir.Model]:
    """Read and validate a ``.cacc`` file: (manifest, IR model)."""
    where = str(path)
    if not Path(path).is_file():
        raise SerializationError("no such file", path=where)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = {_MANIFEST, _MODEL} - names
            if missing:
                raise SerializationError(f"not a cacc model: missing {', '.join(sorted(missing))}", path=where)
            manifest = json.loads(zf.read(_MANIFEST))
            model_bytes = zf.read(_MODEL)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise SerializationError(f"corrupt or truncated cacc file: {exc}", path=where) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"corrupt manifest: {exc}", path=where) from exc
    except OSError as exc:  # includes CRC errors on a damaged member
        raise SerializationError(f"could not read cacc file: {exc}", path=where) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SerializationError("not a cacc compiled model (wrong format tag)", path=where)
    if manifest.get("version") != FORMAT_VERSION:
        raise SerializationError(
            f"format version {manifest.get('version')} is not supported (this cacc reads {FORMAT_VERSION})", path=where
        )
    try:
        model = ir.serde.deserialize_model(onnx.load_from_string(model_bytes))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise SerializationError(f"corrupt model graph: {exc}", path=where) from exc
    return manifest, model


def load_compiled(path: str | os.PathLike[str]) -> CompiledModel:
    """Load a ``.cacc`` file and rebuild it for its target."""
    from compiler.api import build_for_target
    from compiler.compiled_model import CompiledModel
    from compiler.config import CompileConfig
    from compiler.ir.verifier import verify
    from compiler.report import Report

    manifest, model = read_compiled(path)
    try:
        verify(model)
        config = CompileConfig.from_dict(manifest.get("config", {}))
        report = Report.from_dict(manifest.get("report", {}))
    except CompilerError as exc:
        raise SerializationError(f"saved model is invalid: {exc.message}", path=str(path)) from exc
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"corrupt manifest: {exc}", path=str(path)) from exc
    executable, _ = build_for_target(model, config)
    return CompiledModel(model, executable, config, report)
