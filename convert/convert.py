"""The convert pipeline: source -> plan -> quantize each tensor (or keep the source's exact grid)
-> stream into an edgeq file."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq import quant_types
from edgeq.errors import EdgeqError
from edgeq.fileformat import TensorPlanEntry, write_model_file

from . import gguf_grid
from .plan import PlanSettings, make_plan, source_grids
from .quantize import method_name, pack_grid_chunked, quantize_chunked
from .sources import open_source


@dataclass
class ConvertReport:
    output: Path
    seconds: float
    file_bytes: int
    n_tensors: int
    mean_rel_error: float       # sqrt(sum ||W - Q(W)||^2 / sum ||W||^2) over the quantized tensors
    kept_grid: list[str]        # tensors stored on the source's own grid (method gguf-grid-exact)
    refused_grid: dict[str, str]  # tensors with a source grid that were re-quantized instead -> why


def convert(source: str | os.PathLike, output: str | os.PathLike, settings: PlanSettings | None = None,
            progress: bool | None = None) -> ConvertReport:
    """Convert a Hugging Face folder, hub id or GGUF file into an edgeq file at `output`.

    progress: True shows a progress bar, False hides it, None shows it when stderr is a terminal.
    """
    from tqdm import tqdm
    settings = settings or PlanSettings()
    settings.validate()
    start = time.perf_counter()
    output = Path(output)
    if Path(source).exists() and output.exists() and output.resolve() == Path(source).resolve():
        raise EdgeqError(f"{output}: the output would overwrite the source; choose another name")
    model = open_source(source)
    plan = make_plan(model.config, settings)
    kept, refused = source_grids(model, settings)
    for name, reason in refused.items():
        warnings.warn(f"{name}: {reason}; re-quantized to {plan[name].name}")
    plan.update(kept)
    entries = [TensorPlanEntry(name, qtype, model.config.tensor_shape(name),
                               gguf_grid.METHOD if name in kept else method_name(qtype))
               for name, qtype in plan.items()]
    errors = []

    def produce(entry: TensorPlanEntry):
        def load_rows(rows: slice) -> np.ndarray:
            weight = model.load(entry.name, rows)
            if not np.isfinite(weight).all():
                raise EdgeqError(f"{model.provenance['source']}: tensor {entry.name} contains NaN or infinity")
            return weight
        if entry.name in kept:
            tensor = pack_grid_chunked(lambda rows: model.load_grid(entry.name, rows), entry.qtype, entry.shape)
        else:
            tensor = quantize_chunked(load_rows, entry.qtype, entry.shape)
        if entry.qtype.family != quant_types.PLAIN:       # the weight error counts quantized tensors
            errors.append((tensor.sq_error, tensor.sq_norm))
        return tensor

    bar = tqdm(entries, desc=f"converting to {output.name}", unit="tensor", disable=None if progress is None else not progress,
               dynamic_ncols=True, leave=False)
    provenance = dict(model.provenance)
    provenance["settings"] = {"bits": settings.linear(), "group": settings.group_size(), "symmetric": settings.symmetric,
                              "head_bits": settings.head(), "embed_bits": settings.embed(),
                              "source_grid": f"kept for {len(kept)} tensors" if kept else "none kept"}
    try:
        write_model_file(output, model.config, model.tokenizer, model.generation, provenance, entries, produce, bar)
    finally:
        bar.close()
    total = sum(norm for _, norm in errors)
    mean_error = (sum(error for error, _ in errors) / total) ** 0.5 if total else 0.0
    return ConvertReport(output, time.perf_counter() - start, output.stat().st_size, len(entries), mean_error,
                         sorted(kept), refused)
