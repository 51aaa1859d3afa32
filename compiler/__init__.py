"""cacc: a compression-aware graph compiler for neural networks.

>>> import compiler
>>> cm = compiler.compile(model, example_inputs, target="x86")
>>> y = cm(x); cm.export_onnx("model.opt.onnx"); print(cm.report)
"""

from compiler.api import compile, load
from compiler.compiled_model import CompiledModel
from compiler.config import DEFAULT_PASSES, CompileConfig
from compiler.errors import (
    BackendError,
    CompilerError,
    FrontendError,
    InputSignatureError,
    InterpreterError,
    NumericsError,
    PassError,
    SerializationError,
    UnsupportedOpError,
    VerificationError,
)
from compiler.report import Report

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PASSES",
    "BackendError",
    "CompileConfig",
    "CompiledModel",
    "CompilerError",
    "FrontendError",
    "InputSignatureError",
    "InterpreterError",
    "NumericsError",
    "PassError",
    "Report",
    "SerializationError",
    "UnsupportedOpError",
    "VerificationError",
    "compile",
    "load",
]
