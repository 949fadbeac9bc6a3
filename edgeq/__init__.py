"""edgeq: quantize Hugging Face / GGUF models to 2-8-bit formats and run them on CPUs with LUT kernels."""
__version__ = "0.1.0"
