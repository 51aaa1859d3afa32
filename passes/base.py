"""The pass abstraction: an in-place onnx-ir pass with declared requirements and guarantees."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import onnx_ir as ir

from compiler.errors import PassError
from passes._utils import Rejection


class Property(str, Enum):
    """Facts about the IR that passes require or guarantee."""

    SHAPES_INFERRED = "shapes_inferred"  #: every value has a dtype and shape
    #: no node has only constant inputs (but weight DequantizeLinear and storage Casts)
    CONSTANTS_FOLDED = "constants_folded"
    NO_DEAD_CODE = "no_dead_code"  #: every node contributes to an output
    NO_BATCHNORM = "no_batchnorm"  #: no BatchNormalization node follows a Conv/Gemm
    STANDARD_OPS_ONLY = "standard_ops_only"  #: only ONNX-domain ops (no cacc:: ops)


#: Where a pass belongs in a pipeline; see :func:`passes.manager.expand_pipeline`.
Stage = Literal["cleanup", "compression", "fusion", "storage", "lowering"]

OptionsT = TypeVar("OptionsT")


@dataclass
class LayerRecord:
    """What a compression pass decided for one layer (a weighted node), for the report."""

    node: str  #: node name
    op_type: str
    pass_name: str
    action: str  #: e.g. "int8 static", "int4 g128 gptq", "kept fp32"
    weight_bits: int | None = None  #: None: weights left in float
    activation_bits: int | None = None  #: None: activations left in float
    bytes_before: int = 0  #: weight bytes before the pass
    bytes_after: int = 0  #: weight bytes after (quantized data + scales + zero points)
    error: float | None = None  #: output error when only this layer is compressed (diagnosis), if measured
    note: str = ""  #: why a layer was kept in float, outliers kept, etc.
    #: how float weights (``weight_bits`` None) are stored: "" (float32) or "float16" (``compact_storage``)
    weight_storage: str = ""


@dataclass
class PassContext:
    """What a pipeline's passes share: user options per pass, calibration data, the target, and the
    per-layer decisions compression passes record for the report.

    ``calibration`` holds input feeds (``{input name: array}``), one dict per sample.
    """

    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    target: str | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    #: model-level findings passes report, one line each (e.g. a quantizer's diagnosis of where its error comes from)
    findings: list[str] = field(default_factory=list)


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
    stage: ClassVar[Stage] = "cleanup"

    def __init__(self, context: PassContext | None = None) -> None:
        super().__init__()
        self.context = context if context is not None else PassContext()
        #: (node, reason) for every rewrite that matched but was not applied, from the last run.
        self.last_rejections: list[Rejection] = []

    @property
    def options(self) -> dict[str, Any]:
        """This pass's user options (``context.options[self.name]``)."""
        return self.context.options.get(self.name, {})

    def parse_options(self, options_type: type[OptionsT]) -> OptionsT:
        """Build the dataclass ``options_type`` from :attr:`options`; :class:`PassError` naming
        unknown keys or a value the dataclass rejects."""
        known = {f.name for f in dataclasses.fields(options_type)}  # type: ignore[arg-type]
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise PassError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", pass_name=self.name
            )
        try:
            return options_type(**self.options)
        except (TypeError, ValueError) as exc:
            raise PassError(f"bad options {self.options}: {exc}", pass_name=self.name) from exc

    def calibration_feeds(self, minimum: int = 1) -> Sequence[Mapping[str, np.ndarray]]:
        """The calibration samples; :class:`PassError` if fewer than ``minimum`` were given."""
        feeds = self.context.calibration
        if len(feeds) < minimum:
            raise PassError(
                f"needs at least {minimum} calibration sample(s), got {len(feeds)}; "
                "pass calibration=[...] to compile()",
                pass_name=self.name,
            )
        return feeds

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
