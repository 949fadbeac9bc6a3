"""edgeq: quantize Hugging Face / GGUF models to 2-8-bit formats and run them on CPUs with LUT kernels.

    import edgeq
    with edgeq.load("model.q4") as model:
        print(model.generate("Once upon a time", max_tokens=40))

The runtime API (load, Model, ...) is imported on first use, so `import edgeq` stays light for the
converter and the CLI.
"""
__version__ = "0.1.0"

__all__ = ["load", "Model", "GenerationStats", "SamplingParams", "EdgeqError", "EdgeqWarning",
           "ContextFullError", "__version__"]


def load(path, threads=None, ctx=None, kv_fp32=False, kv="f16"):
    """Open a converted edgeq file for generation: see edgeq.model.load (kv: "f16", "q8", "k8v4" or "f32")."""
    from .model import load as _load
    return _load(path, threads=threads, ctx=ctx, kv_fp32=kv_fp32, kv=kv)


def __getattr__(name):
    if name in ("Model", "GenerationStats", "EdgeqWarning", "ContextFullError"):
        from . import model
        return getattr(model, name)
    if name == "SamplingParams":
        from .sampling import SamplingParams
        return SamplingParams
    if name == "EdgeqError":
        from .errors import EdgeqError
        return EdgeqError
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
