"""Quantization building blocks shared by the quantization passes: the quantizer formula
(:mod:`passes.quant.scheme`), the layers a pass can quantize and the Q/DQ rewrites
(:mod:`passes.quant.layers`)."""

from passes.quant.layers import (
    QuantLayer,
    find_layers,
    insert_activation_qdq,
    matches_any,
    quantize_weight_in_place,
    weight_bytes,
)
from passes.quant.scheme import (
    QuantParams,
    dequantize,
    qrange,
    quant_dtype,
    quantize,
    quantize_weight,
    scale_zero_point,
    weight_params,
)

__all__ = [
    "QuantLayer",
    "QuantParams",
    "dequantize",
    "find_layers",
    "insert_activation_qdq",
    "matches_any",
    "qrange",
    "quant_dtype",
    "quantize",
    "quantize_weight",
    "quantize_weight_in_place",
    "scale_zero_point",
    "weight_bytes",
    "weight_params",
]
