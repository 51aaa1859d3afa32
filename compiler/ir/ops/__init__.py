"""Reference kernels, one module per op family. Importing this package registers them all."""

from compiler.ir.ops import (  # noqa: F401
    cacc,
    contrib,
    elementwise,
    indexing,
    nn,
    normalization,
    quant,
    reduce,
    resize,
    tensor,
)
from compiler.ir.ops.registry import CACC_DOMAIN, OpDef, attr, lookup, register, supported_ops

__all__ = ["CACC_DOMAIN", "OpDef", "attr", "lookup", "register", "supported_ops"]
