"""Relax lowerings of cacc's ops, one module per op family. Importing this package registers them all."""

from backends.tvm.lowering import cacc, elementwise, nn, reduce, tensor  # noqa: F401
from backends.tvm.lowering.common import EmitContext, find_lowering, lowering, supported_ops

__all__ = ["EmitContext", "find_lowering", "lowering", "supported_ops"]
