"""Graph passes, one per file. Importing the package registers every built-in pass."""

from passes.base import Pass, Property, available_passes, get_pass, register_pass
from passes.manager import PassManager, PassRecord, PipelineResult

__all__ = [
    "Pass",
    "PassManager",
    "PassRecord",
    "PipelineResult",
    "Property",
    "available_passes",
    "get_pass",
    "register_pass",
]
