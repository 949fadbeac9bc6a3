"""`edgeq bench`: how fast one converted model runs here, and how close decode is to its ceiling.

Per run (a fresh open of the model each time): load time, prefill tokens/s (one eval of the prompt
from an empty cache), decode tokens/s (greedy, one token per eval), then this machine's memory read
bandwidth (native probe, right after the run). Then the process's peak RSS, the weight bytes one
token reads (the runtime's eq_model_info.weight_bytes), and the roofline: decode can be at most
bandwidth / bytes per token; the fraction reached is the median over runs of each run's decode
against its own probe.
Everything runs in this process through edgeq._ffi (no tokenizer, no sampling). Not here:
comparisons with llama.cpp (benchmarks/) or quality (perplexity).
"""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time

from . import _ffi
from .errors import EdgeqError
from .fileformat import ModelFile

DEFAULT_PROMPT_TOKENS = 128
DEFAULT_GEN_TOKENS = 64
DEFAULT_RUNS = 3
DEFAULT_BANDWIDTH_MB = 256        # MiB; >= 4x the last-level cache, or the probe measures the cache
BANDWIDTH_REPEATS = 5


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise EdgeqError(f"{flag} must be at least 1, got {value}")
    return value


def _reset_peak_rss() -> bool:
    """Start the high-water mark afresh (Linux: write 5 to clear_refs), so a conversion of the default
    model or an earlier test in this process does not count; elsewhere the peak is the process's.
    -> whether it was restarted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM, else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _one_run(path: str, threads: int, prompt: list[int], gen_tokens: int, kv: str = "f16") -> dict:
    """Open, prefill `prompt`, decode gen_tokens greedily, close. -> seconds of each phase."""
    start = time.perf_counter()
    handle = _ffi.model_open(path, threads=threads, ctx=len(prompt) + gen_tokens, kv=kv)
    load = time.perf_counter() - start
    try:
        start = time.perf_counter()
        logits = _ffi.model_eval(handle, prompt)
        prefill = time.perf_counter() - start
        token = int(logits.argmax())
        start = time.perf_counter()
        for _ in range(gen_tokens):
            token = int(_ffi.model_eval(handle, [token]).argmax())
        decode = time.perf_counter() - start
        info = _ffi.model_info(handle)
    finally:
        _ffi.model_close(handle)
    return {"load_s": load, "prefill_tok_s": len(prompt) / prefill, "decode_tok_s": gen_tokens / decode,
            "pool_jobs": info["pool_jobs"], "pool_jobs_alone": info["pool_jobs_alone"]}


def run_bench(path, threads: int | None = None, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
              gen_tokens: int = DEFAULT_GEN_TOKENS, runs: int = DEFAULT_RUNS,
              bandwidth_mb: int = DEFAULT_BANDWIDTH_MB, kv: str = "f16") -> dict:
    """Measure `path` (an edgeq file) with KV cache type `kv`; returns the flat dict `edgeq bench --json` prints.
    threads None: physical cores (more than the logical CPUs: capped, with an EdgeqWarning).
    Speeds are median / min / max over `runs` fresh opens."""
    from .model import check_model_path, check_threads
    path = check_model_path(path)
    threads = check_threads(threads)
    _positive(prompt_tokens, "--prompt-tokens")
    _positive(gen_tokens, "--gen-tokens")
    _positive(runs, "--runs")
    _positive(bandwidth_mb, "--bandwidth-mb")
    _ffi.check_kv(kv)

    ModelFile(path)     # the Python reader's checks first, the same as `edgeq info` and edgeq.load
    # an untimed open and one token: validates the file, reads its figures, brings it into the page cache
    handle = _ffi.model_open(path, threads=threads or 0)
    try:
        info = _ffi.model_info(handle)
        if prompt_tokens + gen_tokens > info["max_seq_len"]:
            raise EdgeqError(f"{prompt_tokens} prompt + {gen_tokens} generated tokens do not fit in the "
                             f"model's context of {info['max_seq_len']} tokens; use fewer")
        _ffi.model_eval(handle, [0], logits=False)
    finally:
        _ffi.model_close(handle)

    vocab = info["vocab_size"]
    prompt = [(7 * i + 11) % vocab for i in range(prompt_tokens)]    # fixed ids: every run does the same work
    # The bandwidth a shared host gives moves by 10-20 % within minutes, so each run's decode is set
    # against a probe right after it and the roofline fraction is the median of those ratios. The peak
    # RSS is read before each probe's buffer exists: where it cannot be restarted (not Linux), the runs
    # go first and one probe follows them.
    def probe() -> float:
        return _ffi.memory_read_bandwidth(bandwidth_mb << 20, info["n_threads"], BANDWIDTH_REPEATS)
    results, peak_rss_mb = [], 0.0
    paired = _reset_peak_rss()
    for _ in range(runs):
        if results and paired:
            _reset_peak_rss()
        results.append(_one_run(str(path), info["n_threads"], prompt, gen_tokens, kv))
        peak_rss_mb = max(peak_rss_mb, _peak_rss_mb())
        if paired:
            results[-1]["bandwidth_gb_s"] = probe()
    if not paired:
        bandwidth = probe()
        for result in results:
            result["bandwidth_gb_s"] = bandwidth
    for result in results:
        result["roofline_fraction"] = result["decode_tok_s"] * info["weight_bytes"] / (result["bandwidth_gb_s"] * 1e9)

    report = {"model": str(path), "isa": _ffi.isa(), "threads": info["n_threads"], "runs": runs, "kv": kv,
              "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens}
    for key in ("load_s", "prefill_tok_s", "decode_tok_s", "bandwidth_gb_s", "roofline_fraction"):
        values = [result[key] for result in results]
        report[key] = statistics.median(values)
        report[f"{key}_min"] = min(values)
        report[f"{key}_max"] = max(values)
    jobs = sum(result["pool_jobs"] for result in results)
    # the share of threaded work the pool ran on one thread because another thread's core was busy
    report["single_thread_share"] = sum(result["pool_jobs_alone"] for result in results) / jobs if jobs else 0.0
    report.update({
        "peak_rss_mb": peak_rss_mb,
        "file_bytes": info["file_bytes"],
        "bytes_per_token": info["weight_bytes"],
        "bandwidth_buffer_mb": bandwidth_mb,
        "bandwidth_probes": runs if paired else 1,
        "roofline_tok_s": report["bandwidth_gb_s"] * 1e9 / info["weight_bytes"],
    })
    return report


def format_table(report: dict) -> str:
    """The report for people: one measurement per line."""
    def spread(key: str, digits: int) -> str:
        return (f"{report[key]:.{digits}f} (min {report[key + '_min']:.{digits}f}, "
                f"max {report[key + '_max']:.{digits}f})")

    runs = f"median of {report['runs']} runs" if report["runs"] > 1 else "1 run"
    lines = [
        f"model            {report['model']} ({report['file_bytes'] / 1e6:.1f} MB)",
        f"setup            {report['threads']} threads, kernels {report['isa']}, KV cache {report.get('kv', 'f16')}, {runs}",
        f"load             {1000 * report['load_s']:.1f} ms (min {1000 * report['load_s_min']:.1f}, "
        f"max {1000 * report['load_s_max']:.1f})",
        f"prefill          {spread('prefill_tok_s', 1)} tok/s over {report['prompt_tokens']} tokens",
        f"decode           {spread('decode_tok_s', 1)} tok/s over {report['gen_tokens']} tokens",
        f"peak RSS         {report['peak_rss_mb']:.0f} MB",
        f"weights/token    {report['bytes_per_token']} bytes ({report['bytes_per_token'] / 1e6:.1f} MB)",
        f"bandwidth        {spread('bandwidth_gb_s', 1)} GB/s (reading {report['bandwidth_buffer_mb']} MiB, "
        f"{report['threads']} threads, {'a probe after each run' if report['bandwidth_probes'] > 1 else 'one probe'})",
        f"roofline         decode at most {report['roofline_tok_s']:.1f} tok/s (bandwidth / weights per token); "
        f"measured {100 * report['roofline_fraction']:.1f}% of it"
        + (" (median of each run's decode against its probe)" if report['bandwidth_probes'] > 1 else ""),
    ]
    if report["single_thread_share"] > 0:
        lines.append(f"contention       {100 * report['single_thread_share']:.0f}% of the work ran on one thread: "
                     "another process kept a core busy")
    return "\n".join(lines)


def format_json(report: dict) -> str:
    return json.dumps(report)
