"""cacc's IR: onnx-ir models plus shape inference, a verifier, a printer and a reference interpreter."""

from compiler.ir.interpreter import Interpreter, run, signature
from compiler.ir.ops.registry import CACC_DOMAIN, lookup, supported_ops
from compiler.ir.printer import format_graph, op_histogram, parameter_count
from compiler.ir.shapes import infer_shapes
from compiler.ir.verifier import find_problems, verify

__all__ = [
    "CACC_DOMAIN",
    "Interpreter",
    "find_problems",
    "format_graph",
    "infer_shapes",
    "lookup",
    "op_histogram",
    "parameter_count",
    "run",
    "signature",
    "supported_ops",
    "verify",
]
