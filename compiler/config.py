"""Compilation settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The pipeline ``compile`` runs when no ``passes`` are given: cleanup, then fusion.
DEFAULT_PASSES: tuple[str, ...] = (
    "fold_constants",
    "remove_identity",
    "eliminate_dead_code",
    "fold_batchnorm",
    "fuse_bias_activation",
    "eliminate_dead_code",
)


@dataclass
class CompileConfig:
    """Everything that decides what ``compile`` produces (stored with a saved model)."""

    target: str = "x86"
    passes: list[str] = field(default_factory=lambda: list(DEFAULT_PASSES))
    num_threads: int | None = None
    dynamic_batch: bool = False
    debug: bool = False  #: verify the IR and check numerics after every pass
    measure: bool = True  #: time the compiled model and ONNX Runtime for the report
    tune_trials: int = 0  #: auto-tuning trials for all kernels together (0: use existing records only)
    tune_minutes: float | None = None  #: auto-tuning wall-time budget in minutes
    tuning_db: str | None = None  #: tuning database directory (None: the user cache dir, plus shipped records)
    use_tuning_records: bool = True  #: apply existing tuning records (False: default schedules only)
    pass_options: dict[str, dict[str, Any]] = field(default_factory=dict)  #: options per pass name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompileConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
