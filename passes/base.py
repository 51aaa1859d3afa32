"""The pass abstraction: an in-place onnx-ir pass with declared requirements and guarantees."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

import onnx_ir as ir

from compiler.errors import PassError


class Property(str, Enum):
    """Facts about the IR that passes require or guarantee."""

    SHAPES_INFERRED = "shapes_inferred"  #: every value has a dtype and shape
    CONSTANTS_FOLDED = "constants_folded"  #: no node has only constant inputs
    NO_DEAD_CODE = "no_dead_code"  #: every node contributes to an output
    NO_BATCHNORM = "no_batchnorm"  #: no BatchNormalization node follows a Conv/Gemm
    STANDARD_OPS_ONLY = "standard_ops_only"  #: only ONNX-domain ops (no cacc:: ops)


class Pass(ir.passes.InPlacePass):
    """Base class of cacc passes.

    Subclasses set ``name`` (the registry key), ``description``, and the properties the
    IR must have before (``required``), holds after (``guarantees``) and may lose if the
    pass changes anything (``invalidates``); then implement :meth:`call` returning
    ``ir.passes.PassResult(model, modified)``.

    ``numerics_tolerance`` is the largest output change the pass may cause, relative to
    the largest output magnitude; exact rewrites keep the default. Compression passes
    raise it, or set ``None`` to be exempt from the debug-mode numerics check.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    required: ClassVar[frozenset[Property]] = frozenset()
    guarantees: ClassVar[frozenset[Property]] = frozenset()
    invalidates: ClassVar[frozenset[Property]] = frozenset()
    numerics_tolerance: ClassVar[float | None] = 1e-5

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry under ``cls.name`` (duplicates rejected)."""
    if not cls.name:
        raise PassError(f"pass class {cls.__qualname__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise PassError(
            f"a pass named '{cls.name}' is already registered ({existing.__module__}.{existing.__qualname__})",
            pass_name=cls.name,
        )
    _REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; :class:`PassError` listing the known names if none."""
    _load_builtin_passes()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise PassError(f"unknown pass '{name}'; available passes: {known}", pass_name=name)
    return _REGISTRY[name]


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name."""
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def _load_builtin_passes() -> None:
    import passes  # noqa: F401  (importing the package registers the built-in passes)
