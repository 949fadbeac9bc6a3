"""The convert pipeline: source -> plan (keeping a GGUF source's exact grid where it can) ->
[calibrate and quantize the linear layers, layer by layer] -> quantize the other tensors -> stream
into an edgeq file."""
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

from . import calibrate as calibration
from . import gguf_grid, methods
from .calibrate import MethodSettings
from .plan import PlanSettings, make_plan, source_grids
from .quantize import method_name as storage_method, pack_grid_chunked, quantize_chunked
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
            progress: bool | None = None, method: MethodSettings | None = None) -> ConvertReport:
    """Convert a Hugging Face folder, hub id or GGUF file into an edgeq file at `output`.

    progress: True shows a progress bar, False hides it, None shows it when stderr is a terminal.
    method: how the linear layers are quantized (default: auto, see convert.calibrate.MethodSettings).
    """
    from tqdm import tqdm
    settings = settings or PlanSettings()
    settings.validate()
    method = method or MethodSettings()
    method_name, uses_data = method.resolve(settings.linear())
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

    def load_checked(name: str, rows: slice | None = None) -> np.ndarray:
        weight = model.load(name, rows)
        if not np.isfinite(weight).all():
            raise EdgeqError(f"{model.provenance['source']}: tensor {name} contains NaN or infinity")
        return weight

    # the linear layers the method quantizes: not those that keep their source's grid
    to_fit = [name for name, qtype in plan.items() if calibration.is_calibrated_linear(name)
              and qtype.family != quant_types.PLAIN and name not in kept]
    uses_data = uses_data and bool(to_fit)
    tokens, importance, calibration_hash, n_tokens = None, None, "", 0
    if uses_data and method.stats is not None:
        importance, meta = calibration.load_stats(method.stats, model.config,
                                                  calibration.model_fingerprint(model.load, model.config))
        calibration_hash, n_tokens = str(meta.get("calibration_hash", "")), int(meta.get("tokens", 0))
    elif uses_data:
        tokens = calibration.calibration_tokens(method.calib, model.tokenizer, model.config,
                                                method.calib_tokens, method.calib_ctx)
        calibration_hash, n_tokens = tokens.text_hash, tokens.count
    label = calibration.tensor_method(method_name, uses_data, method, calibration_hash, n_tokens)
    linear_method = {name: label for name in to_fit}
    entries = [TensorPlanEntry(name, qtype, model.config.tensor_shape(name),
                               gguf_grid.METHOD if name in kept else linear_method.get(name, storage_method(qtype)))
               for name, qtype in plan.items()]
    errors = []
    calibrated = {}      # name -> QuantizedTensor, from the sequential calibration pass
    if tokens is not None:
        quantizer = calibration.layer_quantizer(plan, method_name, method, linear_method)
        with tqdm(total=model.config.n_layers, desc=f"calibrating ({method_name}, {tokens.count} tokens)",
                  unit="layer", disable=None if progress is None else not progress, dynamic_ncols=True,
                  leave=False) as layer_bar:
            for _, _, stored in calibration.run_layers(load_checked, model.config, tokens, quantizer,
                                                       hessian=method_name == "gptq", progress=layer_bar,
                                                       float_target=method.float_target):
                calibrated.update(stored)

    def produce(entry: TensorPlanEntry):
        def load_rows(rows: slice) -> np.ndarray:
            return load_checked(entry.name, rows)
        if entry.name in kept:
            tensor = pack_grid_chunked(lambda rows: model.load_grid(entry.name, rows), entry.qtype, entry.shape)
        elif entry.name in calibrated:
            tensor = calibrated.pop(entry.name)
        elif entry.name in linear_method and (importance is not None or method_name == "hqq"):
            weights = importance[calibration.input_of(entry.name)] if importance is not None else None
            fit = methods.hqq if method_name == "hqq" else methods.rtn
            tensor = fit(load_rows(slice(None)), entry.qtype, weights, method=entry.method)
        else:
            tensor = quantize_chunked(load_rows, entry.qtype, entry.shape)
        if entry.qtype.family != quant_types.PLAIN:       # the weight error counts quantized tensors
            errors.append((tensor.sq_error, tensor.sq_norm))
        return tensor

    bar = tqdm(entries, desc=f"converting to {output.name}", unit="tensor", disable=None if progress is None else not progress,
               dynamic_ncols=True, leave=False)
    provenance = dict(model.provenance)
    provenance["settings"] = {"bits": settings.linear(), "group": settings.group_size(), "symmetric": settings.symmetric,
                              "head_bits": settings.head(), "embed_bits": settings.embed(), "method": label,
                              "layout": settings.layout,
                              "source_grid": f"kept for {len(kept)} tensors" if kept else "none kept"}
    if uses_data:
        provenance["calibration_hash"] = calibration_hash
        provenance["settings"]["calibration_tokens"] = n_tokens
    try:
        write_model_file(output, model.config, model.tokenizer, model.generation, provenance, entries, produce, bar)
    finally:
        bar.close()
    total = sum(norm for _, norm in errors)
    mean_error = (sum(error for error, _ in errors) / total) ** 0.5 if total else 0.0
    return ConvertReport(output, time.perf_counter() - start, output.stat().st_size, len(entries), mean_error,
                         sorted(kept), refused)
