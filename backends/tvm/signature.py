"""A built model's input signature and the check every TVM executable runs on its feeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from compiler.errors import BackendError, InputSignatureError


@dataclass(frozen=True)
class InputSignature:
    """One graph input: its name, static dims (``None`` for a symbolic one) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


def input_signatures(model: ir.Model) -> list[InputSignature]:
    """The signatures of ``model``'s graph inputs, in order."""
    sigs = []
    for v in model.graph.inputs:
        if v.dtype is None:
            raise BackendError(f"graph input '{v.name}' has no dtype")
        shape = tuple(d if isinstance(d, int) else None for d in (v.shape or []))
        sigs.append(InputSignature(v.name or "", shape, np.dtype(v.dtype.numpy())))
    return sigs


def check_inputs(inputs: Sequence[InputSignature], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The feeds in signature order, C-contiguous; InputSignatureError on a mismatch."""
    missing = [s.name for s in inputs if s.name not in feeds]
    extra = sorted(set(feeds) - {s.name for s in inputs})
    if missing or extra:
        raise InputSignatureError(f"inputs do not match the model: missing {missing}, unexpected {extra}")
    arrays = []
    for sig in inputs:
        arr = np.asarray(feeds[sig.name])
        if arr.dtype != sig.dtype:
            raise InputSignatureError(f"input '{sig.name}' has dtype {arr.dtype}, expected {sig.dtype}")
        if arr.ndim != len(sig.shape) or any(d is not None and d != a for d, a in zip(sig.shape, arr.shape)):
            raise InputSignatureError(f"input '{sig.name}' has shape {arr.shape}, expected {sig.shape}")
        # (not np.ascontiguousarray: it would turn a 0-d array into a 1-d one)
        arrays.append(arr if arr.flags.c_contiguous else arr.copy(order="C"))
    return arrays
