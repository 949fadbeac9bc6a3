"""`edgeq profile`: how long each candidate quant type's decode product takes for a model's shapes on
this CPU, for `edgeq convert --latency-ms` (which may run on another machine: the profile names the
CPU, kernel set and threads it was measured with).

For every distinct (rows, cols) of the model's 2-D tensors and every type the allocator may choose
(edgeq.convert.allocate.candidate_types), eq_gemv_time runs the product as the forward pass does
(input prepared once, rows cut into the same chunks on a pool of --threads threads), each run
reading a copy of the weights that is not in the caches (copies spanning STREAM_BYTES, at least
twice the last-level cache), as decode streams its weights from memory. The --repeats runs are
spread over ROUNDS rounds, each round timing every (shape, type) in turn, and a product's time is
the median over rounds of its runs' median in each: a shared machine's drift over the minutes a
profile takes lands on every type alike, not on whichever types ran during a slow stretch (timed
back to back, like types came out 20-45 % apart on a loaded host: benchmarks/README.md). The
weights are random numbers quantized by the converter (a block of rows, tiled), so every family's
kernels see valid scales. With an edgeq file as MODEL, its decode time per token is
measured too, as `edgeq bench` measures it by default (64 tokens after a 128-token prompt), and the
part no product explains (attention at that context, norms, hand-offs) is recorded as
overhead_seconds, which a latency budget adds to the products' sum.
Not here: choosing types (edgeq.convert.allocate), prefill timing.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from . import __version__, _ffi
from .errors import EdgeqError

PROFILE_FORMAT = 1
DEFAULT_REPEATS = 15
ROUNDS = 5                     # the repeats are spread over this many rounds of every product
STREAM_BYTES = 64 << 20
TILE_BLOCK_ROWS = 256          # rows quantized once and tiled to the full shape
DECODE_RUNS = 3


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _last_level_cache() -> int:
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
            best = max(best, int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
                       if text[-1] in "KM" else int(text))
        except (OSError, ValueError):
            pass
    return best


def _weights_for(qtype, rows: int, cols: int, rng) -> tuple[np.ndarray, int]:
    """Packed bytes of a random (rows, cols) tensor of qtype as (block, times): a block of rows
    quantized by the converter, to be tiled `times` times when the type's bytes are per block of rows
    (they are for every family today; otherwise the whole tensor, once). Kept small between rounds."""
    from edgeq.convert.quantize import quantize
    block = min(rows, TILE_BLOCK_ROWS)
    while block > 1 and rows % block:
        block //= 2
    weight = (rng.standard_normal((block, cols)) * 0.02).astype(np.float32)
    data = np.ascontiguousarray(quantize(weight, qtype).data).view(np.uint8).reshape(-1)
    if qtype.nbytes(block, cols) * (rows // block) == qtype.nbytes(rows, cols):
        return data, rows // block
    weight = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    return np.ascontiguousarray(quantize(weight, qtype).data).view(np.uint8).reshape(-1), 1


def _model_shapes(config) -> list[tuple[int, int]]:
    from edgeq.convert.allocate import allocated_tensors
    return sorted({tuple(config.tensor_shape(name)) for name in allocated_tensors(config)})


def _decode_seconds(path: str, threads: int, config) -> float:
    """Median seconds per decoded token of an edgeq file as `edgeq bench` measures it by default
    (greedy, DEFAULT_GEN_TOKENS tokens after a DEFAULT_PROMPT_TOKENS-token prompt; both shortened to
    fit a smaller context): attention grows with the context, so a latency budget means the time
    per token at that context, the one a user's `edgeq bench FILE` shows."""
    from .bench import DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, _one_run
    gen = min(DEFAULT_GEN_TOKENS, max(1, config.max_seq_len // 3))
    prompt_tokens = max(1, min(DEFAULT_PROMPT_TOKENS, config.max_seq_len - gen))
    prompt = [(7 * i + 11) % config.vocab_size for i in range(prompt_tokens)]
    return statistics.median(1.0 / _one_run(path, threads, prompt, gen)["decode_tok_s"] for _ in range(DECODE_RUNS))


def profile(model: str | None = None, shapes_from: str | None = None, threads: int | None = None,
            repeats: int = DEFAULT_REPEATS, progress: bool | None = None, stream_bytes: int | None = None) -> dict:
    """Measure; returns the profile (what -o writes). Exactly one of model (an edgeq file) and
    shapes_from (any convert source) names the model. stream_bytes: what each product's copies span
    (default max(STREAM_BYTES, 2 x the last-level cache); smaller measures cached weights)."""
    from tqdm import tqdm
    from edgeq.convert.allocate import allocated_tensors, candidate_types
    from .model import check_threads
    if (model is None) == (shapes_from is None):
        raise EdgeqError("give an edgeq file (MODEL) or --shapes-from SRC, one of them")
    if repeats < 1:
        raise EdgeqError(f"--repeats must be at least 1, got {repeats}")
    threads = check_threads(threads) or _ffi.physical_cores()
    model_file = None
    if model is not None:
        from .fileformat import ModelFile
        from .model import check_model_path
        model_file = ModelFile(check_model_path(model))
        config, source = model_file.config, str(model)
    else:
        from edgeq.convert.sources import open_source
        opened = open_source(shapes_from)
        config, source = opened.config, str(shapes_from)
    isa = _ffi.isa()
    shapes = _model_shapes(config)
    types = candidate_types()
    wanted = {shape: list(types) for shape in shapes}
    if model_file is not None:          # the file's own types, for its overhead
        for name in allocated_tensors(config):
            qtype = model_file.tensors[name].qtype
            if qtype not in wanted[tuple(config.tensor_shape(name))]:
                wanted[tuple(config.tensor_shape(name))].append(qtype)
    stream = stream_bytes if stream_bytes is not None else max(STREAM_BYTES, 2 * _last_level_cache())
    if stream < 1:
        raise EdgeqError(f"--stream-mb must be positive, got {stream / (1 << 20):g}")
    rng = np.random.default_rng(0)
    measured = [((rows, cols), qtype) for (rows, cols), shape_types in wanted.items() for qtype in shape_types]
    rounds = min(repeats, ROUNDS)
    samples: dict = {}
    start = time.perf_counter()
    with tqdm(total=len(measured) * (rounds + 1), desc="profiling", unit="product", leave=False,
              dynamic_ncols=True, disable=None if progress is None else not progress) as bar:
        weights = {}
        for (rows, cols), qtype in measured:
            weights[rows, cols, qtype.name] = _weights_for(qtype, rows, cols, rng)
            bar.update(1)
        for index in range(rounds):     # each round: every product's median of its share of the runs
            runs = repeats // rounds + (index < repeats % rounds)
            for (rows, cols), qtype in measured:
                block, tiles = weights[rows, cols, qtype.name]
                data = np.tile(block, tiles) if tiles > 1 else block
                copies = max(2, -(-stream // max(data.nbytes, 1)))
                samples.setdefault((rows, cols, qtype.name), []).append(
                    _ffi.gemv_time(qtype.name, data, rows, cols, copies=copies, threads=threads, repeats=runs))
                del data
                bar.update(1)
    times: dict = {}
    for (rows, cols), qtype in measured:
        route = _ffi.kernel_route(qtype.name, isa, 1)
        times.setdefault(f"{rows}x{cols}", {})[qtype.name] = {
            "seconds": statistics.median(samples[rows, cols, qtype.name]), "set": route["set"], "path": route["path"]}
    result = {"format": PROFILE_FORMAT, "edgeq_version": __version__, "cpu": cpu_name(),
              "machine": platform.machine(), "isa": isa, "threads": threads, "repeats": repeats, "rounds": rounds,
              "stream_bytes": stream, "model": source, "shapes": [list(s) for s in shapes],
              "types": [t.name for t in types], "times": times, "overhead_seconds": None,
              "decode_seconds": None, "profile_seconds": None}
    if model_file is not None:
        decode = _decode_seconds(str(model), threads, config)
        products = 0.0
        for name in allocated_tensors(config):
            rows, cols = config.tensor_shape(name)
            seconds = times[f"{rows}x{cols}"][model_file.tensors[name].qtype.name]["seconds"]
            products += seconds / rows if name == "token_embd.weight" and not config.tied_embeddings else seconds
        result["decode_seconds"] = decode
        result["overhead_seconds"] = max(0.0, decode - products)
    result["profile_seconds"] = time.perf_counter() - start
    return result


def save_profile(result: dict, output: str | os.PathLike) -> None:
    """Written to a temporary file beside `output`, then renamed: never a partial profile."""
    output = Path(output)
    directory = output.parent if str(output.parent) else Path(".")
    if not directory.is_dir():
        raise EdgeqError(f"{output}: the output folder {directory} does not exist")
    tmp = directory / f".{output.name}.tmp"
    try:
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
