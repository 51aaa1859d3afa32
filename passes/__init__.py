"""Graph passes, one per file. Importing the package registers every built-in pass."""

# Built-in passes: importing each module registers its pass.
from passes import (
    batchnorm_folding,
    compact_storage,
    constant_folding,
    dead_code_elimination,
    decompose,
    fusion,
    identity_removal,
    pack_matmulnbits,
    quantize_dynamic,
    quantize_int4,
    quantize_int8,
    quantize_mixed,
    quantize_ternary,
    shape_inference,
    smoothquant,
)
from passes.base import LayerRecord, Pass, PassContext, Property, available_passes, get_pass, register_pass
from passes.decompose import decompose_cacc_ops
from passes.manager import PassManager, PassRecord, PipelineResult, expand_pipeline

__all__ = [
    "LayerRecord",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PipelineResult",
    "Property",
    "available_passes",
    "batchnorm_folding",
    "compact_storage",
    "constant_folding",
    "dead_code_elimination",
    "decompose",
    "decompose_cacc_ops",
    "expand_pipeline",
    "fusion",
    "get_pass",
    "identity_removal",
    "pack_matmulnbits",
    "quantize_dynamic",
    "quantize_int4",
    "quantize_int8",
    "quantize_mixed",
    "quantize_ternary",
    "register_pass",
    "shape_inference",
    "smoothquant",
]
