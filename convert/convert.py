"""The convert pipeline: source -> plan (keeping a GGUF source's exact grid where it can; or, with a
budget, every 2-D tensor's type from convert.allocate's knapsack) ->
[calibrate and quantize the linear layers, layer by layer] -> quantize the other tensors -> stream
into an edgeq file."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeq import quant_types
from edgeq.errors import EdgeqError
from edgeq.fileformat import TensorPlanEntry, write_model_file

from . import calibrate as calibration
from . import allocate, codebook, gguf_grid, methods
from .gptq import fits as gptq_fits
from .calibrate import MethodSettings
from .plan import PlanSettings, make_plan, source_grids, type_for_bits
from .quantize import QuantizedTensor, chunk_rows, method_name as storage_method, pack_grid_chunked, quantize_chunked
from .sources import open_source


@dataclass
class AllocationSettings:
    """A mixed-precision budget (`edgeq convert --bpw/--size/--latency-ms`): convert.allocate."""
    budget: "allocate.Budget"
    profile: str | None = None          # an `edgeq profile` file (needed by a latency budget)
    without: tuple[str, ...] = ()       # candidate types the plan may not use (benchmarks' with/without runs)


@dataclass
class ConvertReport:
    output: Path
    seconds: float
    file_bytes: int
    n_tensors: int
    mean_rel_error: float       # sqrt(sum ||W - Q(W)||^2 / sum ||W||^2) over the quantized tensors
    kept_grid: list[str]        # tensors stored on the source's own grid (method gguf-grid-exact)
    refused_grid: dict[str, str]  # tensors with a source grid that were re-quantized instead -> why
    allocation: "allocate.Allocation | None" = None   # the mixed-precision plan, when a budget was given
    allocation_lines: list[str] | None = None        # what the converter prints about it


# The head's group when the calibration pass weights it by its input's E[x^2] (a 6-bit tied head of
# SmolLM2 at 2-3 bits: KL to the float model no worse than the unweighted head in groups of 32, 1.7 MB
# smaller, its product 14 % faster; benchmarks/README.md "A weighted head in groups of 64")
WEIGHTED_HEAD_GROUP = 64


def weighted_head_type(qtype: quant_types.QuantType, settings: PlanSettings) -> quant_types.QuantType:
    """The type a weighted head of `qtype` (a uniform family) is stored in: groups of
    WEIGHTED_HEAD_GROUP unless --group was given."""
    if settings.group is None and qtype.group < WEIGHTED_HEAD_GROUP:
        return type_for_bits(qtype.bits, replace(settings, group=WEIGHTED_HEAD_GROUP))
    return qtype


def convert(source: str | os.PathLike, output: str | os.PathLike, settings: PlanSettings | None = None,
            progress: bool | None = None, method: MethodSettings | None = None,
            allocation: AllocationSettings | None = None) -> ConvertReport:
    """Convert a Hugging Face folder, hub id or GGUF file into an edgeq file at `output`.

    progress: True shows a progress bar, False hides it, None shows it when stderr is a terminal.
    method: how the linear layers are quantized (default: auto, see convert.calibrate.MethodSettings;
    with a budget, auto resolves per tensor from the bits the plan gives it).
    allocation: a mixed-precision budget; then every 2-D tensor's type comes from convert.allocate.
    """
    from tqdm import tqdm
    settings = settings or PlanSettings()
    settings.validate()
    method = method or MethodSettings()
    method_name, uses_data = method.resolve(settings.linear())
    if method.method == "auto" and method_name == "gptq" and not gptq_fits(type_for_bits(settings.linear(), settings)):
        method_name = "rtn"          # auto's gptq does not fit c4 codebooks: their weighted k-means does
    start = time.perf_counter()
    output = Path(output)
    if Path(source).exists() and output.exists() and output.resolve() == Path(source).resolve():
        raise EdgeqError(f"{output}: the output would overwrite the source; choose another name")
    model = open_source(source)
    plan = make_plan(model.config, settings)
    disable = None if progress is None else not progress

    def load_checked(name: str, rows: slice | None = None) -> np.ndarray:
        weight = model.load(name, rows)
        if not np.isfinite(weight).all():
            raise EdgeqError(f"{model.provenance['source']}: tensor {name} contains NaN or infinity")
        return weight

    chosen, allocation_lines = None, None
    if allocation is not None:       # every 2-D tensor gets the type the budget buys; a source grid
        refused = {}                 # the plan's type holds exactly is kept (scored 0 by the solver)
        chosen = _allocate(model, load_checked, allocation, method, disable)
        plan.update(chosen.plan)
        kept = allocate.kept_grids(chosen.plan, chosen.grids)
        rounded = allocate.kept_grids(chosen.plan, chosen.rounded)
        allocation_lines = [f"allocation for {chosen.budget.describe()}: {_used(chosen)}"] + \
            [f"  note: {note}" for note in chosen.notes] + ["  " + line for line in chosen.summary(model.config)]
        if chosen.grids:
            allocation_lines.append(f"  the source's own grid kept for {len(kept)} of the {len(chosen.grids)} "
                                    "tensors that have an exact one")
        if chosen.rounded:
            allocation_lines.append(f"  the source's K-quant grid kept with fp16 scales for {len(rounded)} of the "
                                    f"{len(chosen.rounded)} tensors it fits closer than re-quantizing")
    else:
        (kept, refused), rounded = source_grids(model, settings), {}
        for name, reason in refused.items():
            warnings.warn(f"{name}: {reason}; re-quantized to {plan[name].name}")
        plan.update(kept)

    # the linear layers the method quantizes: not those that keep their source's grid
    to_fit = [name for name, qtype in plan.items() if calibration.is_calibrated_linear(name)
              and qtype.family != quant_types.PLAIN and name not in kept and name not in rounded]
    if chosen is not None:           # auto picks per tensor (gptq at <= 3 bits); the statistics serve all
        methods_of = {name: method.resolve(plan[name].bits)[0] for name in to_fit}
        uses_data = bool(to_fit)
    else:
        methods_of = {name: method_name for name in to_fit}
    uses_data = uses_data and bool(to_fit)
    for name in to_fit:              # c4: rtn's settings only (k-means); v2: those or gptq (convert.gptq)
        fitting = ("rtn", "gptq") if gptq_fits(plan[name]) else ("rtn",)
        if plan[name].family == quant_types.CODEBOOK and methods_of[name] not in fitting and chosen is not None:
            methods_of[name] = "rtn"     # a type the budget chose, not the user: its weighted k-means fit
        elif plan[name].family == quant_types.CODEBOOK and methods_of[name] not in fitting:
            raise EdgeqError(f"--method {methods_of[name]} does not fit codebook types (--layout codebook "
                             f"fits by weighted k-means{' or gptq' if 'gptq' in fitting else ''}): use --method "
                             f"auto or {' or '.join(fitting)}")
    tokens, importance, calibration_hash, n_tokens = None, None, "", 0
    if uses_data and method.stats is not None:
        importance, meta = calibration.load_stats(method.stats, model.config,
                                                  calibration.model_fingerprint(model.load, model.config))
        calibration_hash, n_tokens = str(meta.get("calibration_hash", "")), int(meta.get("tokens", 0))
    elif uses_data and chosen is not None and "gptq" not in methods_of.values():
        importance, calibration_hash, n_tokens = chosen.importance, chosen.calibration_hash, chosen.tokens
    elif uses_data:
        tokens = calibration.calibration_tokens(method.calib, model.tokenizer, model.config,
                                                method.calib_tokens, method.calib_ctx)
        calibration_hash, n_tokens = tokens.text_hash, tokens.count
    linear_method = {name: calibration.tensor_method(methods_of[name], uses_data, method, calibration_hash, n_tokens)
                     for name in to_fit}
    # The head (or the tied embedding table): rtn weighted by E[x^2] of its input, the final norm's
    # output (benchmarks/README.md "A weighted head in groups of 64"), from the statistics when they
    # hold it (a budget's analysis, --stats) or else collected by the calibration pass. With a budget,
    # in the type the allocator chose (its score used the same statistics); without, in groups of
    # WEIGHTED_HEAD_GROUP unless --group says otherwise.
    head_name = model.config.head_tensor
    given = ((chosen.importance if chosen is not None else importance) or {}).get(calibration.HEAD_INPUT)
    own_grid = head_name in kept or head_name in rounded
    if chosen is not None:
        weighted_head = given is not None and not own_grid and plan[head_name].family != quant_types.PLAIN
    else:
        weighted_head = ((given is not None or tokens is not None) and not own_grid
                         and plan[head_name].family in (quant_types.UNIFORM_BITPLANE, quant_types.UNIFORM_PACKED))
        if weighted_head:
            plan[head_name] = weighted_head_type(plan[head_name], settings)
    head_importance = [given] if weighted_head and given is not None else []    # or from the calibration pass
    if weighted_head:
        head_hash, head_tokens = ((chosen.calibration_hash, chosen.tokens) if chosen is not None
                                  else (calibration_hash, n_tokens))
        linear_method[head_name] = calibration.tensor_method("rtn", True, method, head_hash, head_tokens)
    for name in to_fit + ([head_name] if weighted_head else []):     # rtn's settings, fitted by convert.codebook
        if plan[name].family == quant_types.CODEBOOK:
            linear_method[name] = codebook.method_label(linear_method[name])
    label = calibration.tensor_method(method_name, uses_data, method, calibration_hash, n_tokens)
    if chosen is not None:
        label = "per tensor: " + ", ".join(sorted(set(methods_of.values()))) + " (auto: gptq at <= 3 bits)"
    scores = chosen.scores if chosen is not None else {}
    entries = [TensorPlanEntry(name, qtype, model.config.tensor_shape(name),
                               gguf_grid.METHOD if name in kept else gguf_grid.ROUNDED_METHOD if name in rounded
                               else linear_method.get(name, storage_method(qtype)),
                               scores.get(name))
               for name, qtype in plan.items()]
    if chosen is not None and chosen.budget.kind == "size":
        size = _file_bytes(model, entries, _provenance(model, settings, label, uses_data, calibration_hash, n_tokens,
                                                       chosen, kept))
        if size > chosen.budget.value:    # the header bound makes this unreachable: a bug, not the user's
            raise AssertionError(f"the plan needs {size} bytes, over the budget {chosen.budget.value:.0f}")
    errors = []
    calibrated = {}      # name -> QuantizedTensor, from the sequential calibration pass
    if tokens is not None:
        quantizer = calibration.layer_quantizer(plan, methods_of, method, linear_method)
        gptq = "gptq" in methods_of.values()
        with tqdm(total=model.config.n_layers, desc=f"calibrating ({label}, {tokens.count} tokens)",
                  unit="layer", disable=disable, dynamic_ncols=True, leave=False) as layer_bar:
            for _, _, stored in calibration.run_layers(load_checked, model.config, tokens, quantizer,
                                                       hessian=gptq, progress=layer_bar,
                                                       float_target=method.float_target and gptq,
                                                       head=head_importance.append
                                                       if weighted_head and not head_importance else None):
                calibrated.update(stored)

    def produce(entry: TensorPlanEntry):
        def load_rows(rows: slice) -> np.ndarray:
            return load_checked(entry.name, rows)
        if entry.name in kept:
            tensor = pack_grid_chunked(lambda rows: model.load_grid(entry.name, rows), entry.qtype, entry.shape)
        elif entry.name in rounded:      # near, not exact: its error against the source is measured
            tensor = pack_grid_chunked(lambda rows: model.load_grid(entry.name, rows), entry.qtype, entry.shape,
                                       load_rows)
        elif entry.name in calibrated:
            tensor = calibrated.pop(entry.name)
        elif entry.name == head_name and head_importance:
            tensor = _weighted_rtn_chunked(load_rows, entry, head_importance[0])
        elif entry.name in linear_method and (importance is not None or methods_of[entry.name] == "hqq"):
            weights = importance[calibration.input_of(entry.name)] if importance is not None else None
            fit = methods.hqq if methods_of[entry.name] == "hqq" else methods.rtn
            tensor = fit(load_rows(slice(None)), entry.qtype, weights, method=entry.method)
        else:
            tensor = quantize_chunked(load_rows, entry.qtype, entry.shape)
        if entry.qtype.family != quant_types.PLAIN:       # the weight error counts quantized tensors
            errors.append((tensor.sq_error, tensor.sq_norm))
        return tensor

    bar = tqdm(entries, desc=f"converting to {output.name}", unit="tensor", disable=disable,
               dynamic_ncols=True, leave=False)
    provenance = _provenance(model, settings, label, uses_data, calibration_hash, n_tokens, chosen, kept)
    try:
        write_model_file(output, model.config, model.tokenizer, model.generation, provenance, entries, produce, bar)
    finally:
        bar.close()
    total = sum(norm for _, norm in errors)
    mean_error = (sum(error for error, _ in errors) / total) ** 0.5 if total else 0.0
    return ConvertReport(output, time.perf_counter() - start, output.stat().st_size, len(entries), mean_error,
                         sorted(kept), refused, chosen, allocation_lines)


def _weighted_rtn_chunked(load_rows, entry: TensorPlanEntry, importance: np.ndarray) -> QuantizedTensor:
    """methods.rtn weighted by `importance`, a chunk of whole tiles at a time (a 152k-token head is
    0.5 GB as float32): the same bytes as at once, since every group is fitted alone."""
    rows, cols = entry.shape
    step = chunk_rows(cols)
    parts, sq_error, sq_norm = [], 0.0, 0.0
    for start in range(0, rows, step):
        part = methods.rtn(load_rows(slice(start, min(rows, start + step))), entry.qtype, importance,
                           method=entry.method)
        parts.append(part.data)
        sq_error, sq_norm = sq_error + part.sq_error, sq_norm + part.sq_norm
    return QuantizedTensor(entry.qtype, tuple(entry.shape), np.concatenate(parts), entry.method, sq_error, sq_norm)


def _provenance(model, settings: PlanSettings, label: str, uses_data: bool, calibration_hash: str, n_tokens: int,
                chosen, kept=()) -> dict:
    provenance = dict(model.provenance)
    if chosen is None:
        provenance["settings"] = {"bits": settings.linear(), "group": settings.group_size(),
                                  "symmetric": settings.symmetric, "head_bits": settings.head(),
                                  "embed_bits": settings.embed(), "method": label, "layout": settings.layout,
                                  "source_grid": f"kept for {len(kept)} tensors" if kept else "none kept"}
    else:
        provenance["settings"] = {"budget": chosen.budget.describe(), "method": label,
                                  "allocation": _used(chosen),
                                  "source_grid": f"kept for {len(kept)} tensors" if kept else "none kept",
                                  "kl_factors": " ".join(f"{k}/{d}={f:.3g}" for (k, d), f in sorted(chosen.factors.items()))}
        if chosen.profile_note:
            provenance["settings"]["profile"] = chosen.profile_note
    if uses_data:
        provenance["calibration_hash"] = calibration_hash
        provenance["settings"]["calibration_tokens"] = n_tokens
    return provenance


def _used(chosen) -> str:
    total = sum(chosen.costs.values())
    if chosen.budget.kind == "latency":
        return (f"products {1e3 * total:.3f} ms of {1e3 * chosen.limit:.3f} ms per token, estimated KL "
                f"{sum(chosen.scores.values()):.4g}")
    products = (f", products {1e3 * sum(chosen.times.values()):.3f} ms of {1e3 * chosen.cap:.3f} ms per token"
                if chosen.budget.cap_ms is not None else "")
    return (f"tensors {total / 1e6:.3f} MB of {chosen.limit / 1e6:.3f} MB{products}, estimated KL "
            f"{sum(chosen.scores.values()):.4g}")


def _file_bytes(model, entries: list[TensorPlanEntry], provenance: dict) -> int:
    """The size of the file these entries make: header, then each tensor padded to the alignment."""
    from edgeq.fileformat import header_bytes
    return header_bytes(model.config, model.tokenizer, model.generation, provenance, entries) + \
        sum(allocate.stored_bytes(e.qtype, e.shape) for e in entries)


# what _analyse found per (source, statistics settings, candidates), so a process converting one
# source at several budgets (benchmarks) measures sensitivity and KL once
_ANALYSES: dict = {}


def _allocate(model, load, allocation: AllocationSettings, method: MethodSettings, disable):
    """Statistics, scores, KL factors and the solved plan (convert.allocate) for `model`."""
    config, budget = model.config, allocation.budget
    every = allocate.candidate_types()                 # the analysis scores them all (one per source)
    candidates = [t for t in every if t.name not in allocation.without]
    profile = allocate.load_profile(allocation.profile, config, candidates) if allocation.profile else None
    if budget.needs_profile() and profile is None:
        raise EdgeqError("--latency-ms needs --profile FILE (make one with `edgeq profile`)")
    fixed = _fixed_bytes(model, candidates)
    names = allocate.allocated_tensors(config)       # a budget below the minimum fails before any measuring
    allocate.allocate(config, budget, {n: {t.name: 0.0 for t in candidates} for n in names}, {}, fixed, profile,
                      candidates)
    key = (str(model.provenance.get("source")), calibration.model_fingerprint(model.load, config), method.stats,
           method.calib, method.calib_tokens, method.calib_ctx, tuple(t.name for t in every))
    if key not in _ANALYSES:
        _ANALYSES.clear()
        _ANALYSES[key] = _analyse(model, load, method, every, disable)
    importance, calibration_hash, n_tokens, scores, factors, grids, rounded = _ANALYSES[key]
    chosen = allocate.allocate(config, budget, allocate.with_source_grids(scores, grids), factors, fixed, profile,
                               candidates)
    chosen.importance, chosen.calibration_hash, chosen.tokens = importance, calibration_hash, n_tokens
    chosen.grids, chosen.rounded = grids, rounded
    chosen.profile_note = (f"{profile['cpu']}, kernels {profile['isa']}, {profile['threads']} threads"
                           if profile is not None else "")
    return chosen


def _analyse(model, load, method: MethodSettings, candidates, disable):
    """(E[x^2] per input, calibration hash, tokens, scores per tensor and candidate, KL factors, the
    tensors with an exact source grid -> the edgeq type that holds it, the tensors whose K-quant grid
    with fp16 scales (gguf_grid.read_rounded) fits closer than that type's re-quantization -> the type:
    their scores under it are that grid's)."""
    from tqdm import tqdm
    config = model.config
    if method.stats is not None:
        importance, meta = calibration.load_stats(method.stats, config, calibration.model_fingerprint(model.load, config))
        calibration_hash, n_tokens = str(meta.get("calibration_hash", "")), int(meta.get("tokens", 0))
    else:                            # the float model's E[x^2] at every linear input and the head's
        tokens = calibration.calibration_tokens(method.calib, model.tokenizer, config, method.calib_tokens,
                                                method.calib_ctx)
        importance = calibration.float_statistics(load, config, tokens, "statistics (float model)",
                                                  None if disable is None else not disable)
        calibration_hash, n_tokens = tokens.text_hash, tokens.count

    def importance_of(name: str) -> np.ndarray | None:
        """E[x^2] of the tensor's input: a linear layer's, the head's (a statistics file from before
        the head's was collected has none: its columns weigh 1), none for an untied embedding"""
        if calibration.is_calibrated_linear(name):
            return importance[calibration.input_of(name)]
        return importance.get(calibration.HEAD_INPUT) if name == config.head_tensor else None
    names = allocate.allocated_tensors(config)
    scores = {}
    for name in tqdm(names, desc="sensitivity", unit="tensor", disable=disable, dynamic_ncols=True, leave=False):
        scores[name] = allocate.tensor_scores(load(name), importance_of(name), candidates)
    n_cells = len({(allocate.kind_of(n), allocate.depth_of(n, config.n_layers)) for n in names})
    with tqdm(total=n_cells, desc="KL calibration", unit="tensor", disable=disable, dynamic_ncols=True,
              leave=False) as bar:
        factors = allocate.kl_factors(load, config, model.tokenizer, importance_of, method.calib, bar)
    grids, _ = source_grids(model, PlanSettings())   # the grids a default conversion keeps exactly
    rounded = {}
    for name in names:
        qtype = model.rounded_grid_type(name)
        if qtype is None:
            continue
        restored = quant_types.dequantize_levels(qtype, *model.load_grid(name))
        score = methods.weighted_error(load(name), restored, importance_of(name))
        if score < scores[name][qtype.name]:
            scores[name] = allocate.with_fit(scores[name], qtype, score)
            rounded[name] = qtype
    return importance, calibration_hash, n_tokens, scores, factors, grids, rounded


HEADER_SLACK = 4096      # bytes: the provenance strings the bound below cannot know exactly


def _fixed_bytes(model, candidates) -> int:
    """An upper bound on what the file holds besides the allocated tensors: the header written with
    each allocated tensor at the longest candidate name, method and a score, plus the 1-D tensors."""
    from .calibrate import BLOCK_SIZE
    config = model.config
    longest = max((t for t in candidates if t.family != quant_types.PLAIN), key=lambda t: (len(t.name), t.id))
    method = (f"gptq damp=0.01 block={BLOCK_SIZE} act_order=yes target=quantized hessian "
              f"calib={'0' * 16} tokens={10 ** 9}")
    entries = []
    for name in config.tensor_names():
        shape = config.tensor_shape(name)
        qtype = longest if len(shape) == 2 else quant_types.TYPES["f32"]
        entries.append(TensorPlanEntry(name, qtype, shape, method, 0.0))
    from edgeq.fileformat import header_bytes
    provenance = dict(model.provenance, settings={})
    header = header_bytes(config, model.tokenizer, model.generation, provenance, entries)
    vectors = sum(allocate.stored_bytes(quant_types.TYPES["f32"], config.tensor_shape(n))
                  for n in config.tensor_names() if len(config.tensor_shape(n)) == 1)
    return header + HEADER_SLACK + 8 * len(entries) + vectors
