"""Quantized block formats: ggml's Q8_0, Q4_0, Q4_1, Q4_K, Q6_K (bit-compatible with GGUF files) and our
own int4_g128. One module per format holds everything about it: its block layout (docstring), its NumPy
reference (quantize / dequantize), its block decoder and its AVX512-VNNI pieces. Shared: `common`
(helpers), `vnni` (the activation scheme and the prefill tile), `kernels` (the drivers written once for
every format, and the references), `registry` (the table, built once), `weight` (`QuantizedWeight`).

    FORMATS["q4_k"].matvec(blocks, x, out)
    w = QuantizedWeight.quantize("q8_0", w_f32);  w.matvec(x, out)
    w = QuantizedWeight.from_blocks(get_format(GGMLQuantizationType.Q6_K).name, tensor_bytes, (rows, cols))
"""
from .registry import FORMATS, QuantFormat, dequantize, format_names, get_format, quantize
from .weight import QuantizedWeight

__all__ = ["FORMATS", "QuantFormat", "QuantizedWeight", "dequantize", "format_names", "get_format", "quantize"]
