"""Runtime benchmark: load time, peak RSS, prefill and decode tokens/s of edgeq beside llama.cpp on
the same source model, at 1 and 2 threads, medians of several runs, each run in a fresh process.

    python benchmarks/bench_runtime.py [--bits 8 4] [--threads 1 2] [--runs 3] [--prompt 64] [--gen 64]

The source is SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI). edgeq converts it at each --bits (groups
of 64); llama.cpp gets Q8_0 / Q4_0 requantized from the same GGUF (llama_model_quantize), through
llama-cpp-python built locally by benchmarks/setup_llamacpp.sh. Writes
benchmarks/runtime_results.json and prints a Markdown table with edgeq/llama.cpp ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import HERE, LLAMA_RUN, llama_cpp_python, llama_cpp_quantize, run_measured
LLAMA_TYPES = {8: "LLAMA_FTYPE_MOSTLY_Q8_0", 4: "LLAMA_FTYPE_MOSTLY_Q4_0"}

# One measurement, run in a child process: prints a JSON line.
EDGEQ_RUN = r"""
import json, sys, time
t0 = time.perf_counter()
from edgeq import _ffi
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t1 = time.perf_counter()
handle = _ffi.model_open(path, threads=threads, ctx=n_prompt + n_gen + 8)
load = time.perf_counter() - t1
vocab = _ffi.model_info(handle)["vocab_size"]
prompt = [(7 * i + 11) % vocab for i in range(n_prompt)]
t = time.perf_counter(); logits = _ffi.model_eval(handle, prompt); prefill = time.perf_counter() - t
token = int(logits.argmax())
t = time.perf_counter()
for _ in range(n_gen):
    token = int(_ffi.model_eval(handle, [token]).argmax())
decode = time.perf_counter() - t
print(json.dumps({"load_s": load, "prefill_tok_s": n_prompt / prefill, "decode_tok_s": n_gen / decode}))
"""



def measure(python: str, script: str, args: list[str]) -> dict:
    out, _, peak_rss_mb = run_measured(python, "-c", script, *args)
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak_rss_mb}


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4], choices=sorted(LLAMA_TYPES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (prefill)")
    parser.add_argument("--gen", type=int, default=64, help="generated tokens (decode)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="edgeq only")
    args = parser.parse_args()

    from edgeq.convert import PlanSettings, convert
    from edgeq.registry import cache_dir, fetch_pypi_gguf
    source = fetch_pypi_gguf("smollm2-135m-instruct")
    llama_python = None
    if not args.no_llama_cpp:
        llama_python = llama_cpp_python()
        if llama_python is None:
            raise SystemExit("llama.cpp could not be built (benchmarks/setup_llamacpp.sh); use --no-llama-cpp")

    rows = []
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        for bits in args.bits:
            edgeq_file = Path(tmp) / f"smollm2.q{bits}"
            convert(source, edgeq_file, PlanSettings(bits=bits, group=64), progress=False)
            systems = [("edgeq", sys.executable, EDGEQ_RUN, edgeq_file)]
            if llama_python:
                llama_file = llama_cpp_quantize(llama_python, source, Path(tmp) / f"smollm2-{LLAMA_TYPES[bits]}.gguf",
                                                LLAMA_TYPES[bits])
                systems.append(("llama.cpp", llama_python, LLAMA_RUN, llama_file))
            for threads in args.threads:
                for system, python, script, path in systems:
                    runs = [measure(python, script, [str(path), str(threads), str(args.prompt), str(args.gen)])
                            for _ in range(args.runs)]
                    row = {"system": system, "bits": bits, "threads": threads, "file": path.name,
                           "file_mb": path.stat().st_size / 1e6, "runs": args.runs, **median_of(runs)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)

    (HERE / "runtime_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| bits | threads | system | file MB | load s | peak RSS MB | prefill tok/s | decode tok/s | decode vs llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        peer = next((r for r in rows if r["system"] == "llama.cpp" and r["bits"] == row["bits"]
                     and r["threads"] == row["threads"]), None)
        ratio = f"{row['decode_tok_s'] / peer['decode_tok_s']:.2f}x" if peer and row["system"] == "edgeq" else ""
        print(f"| {row['bits']} | {row['threads']} | {row['system']} ({row['file']}) | {row['file_mb']:.1f} | "
              f"{row['load_s']:.3f} | {row['peak_rss_mb']:.0f} | {row['prefill_tok_s']:.1f} | "
              f"{row['decode_tok_s']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
