"""Two ways to multiply: decode speed and perplexity of bit-plane (LUT) against packed (multiply-add)
files of the same numbers, beside llama.cpp, on SmolLM2-135M-Instruct.

    python benchmarks/bench_layout.py [--bits 8 6 5 4] [--threads 1 2] [--isa avx2 avx512]
                                      [--rounds 5] [--gen-tokens 64] [--chunks 10] [--json FILE]

Files: the suite's Hugging Face export of the SmolLM2 GGUF (benchmarks/suite.py hf_folder), converted
once per (bits, layout) with groups of 64, rtn, into cache_dir()/bench/layout/; llama.cpp's peer
(Q8_0 for 8 bits, Q4_0 for 4) requantized by the suite from the same GGUF.
Speed: every measurement is a fresh child (`edgeq bench --json --runs 1` with EDGEQ_ISA, or the
llama.cpp child of benchmarks/common.py), all (file, set, threads) interleaved within a round; the
table shows the median decode tok/s over the rounds and each edgeq file's ratio to llama.cpp's
median at the same thread count. Sets this CPU lacks are skipped with a note.
Quality (--chunks > 0): `edgeq perplexity` of both layouts (the same weights: they differ only by
the multiply-add path's int8 activations) and llama.cpp's on the suite's evaluation text.
Timing numbers are measurements, not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LLAMA_RUN, llama_cpp_python, run_measured  # noqa: E402
from suite import REPO, bench_dir, edgeq_ppl, hf_folder, llama_file, llama_ppl  # noqa: E402

PEERS = {8: "Q8_0", 6: "Q8_0", 5: "Q8_0", 4: "Q4_0"}
GROUP = 64


def edgeq_file(bits: int, layout: str) -> Path:
    path = bench_dir("layout") / f"smollm2-{'p' if layout == 'packed' else 'u'}{bits}g{GROUP}.eq"
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        print(f"converting SmolLM2 to {bits} bits, layout {layout} -> {path}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "edgeq", "convert", str(hf_folder("smollm2")), "-o", str(partial),
                        "--bits", str(bits), "--group", str(GROUP), "--layout", layout, "--method", "rtn", "-q"],
                       check=True)
        partial.replace(path)
    return path


def edgeq_decode(path: Path, isa: str, threads: int, gen_tokens: int) -> float:
    out = subprocess.run([sys.executable, "-m", "edgeq", "bench", str(path), "--json", "--runs", "1",
                          "--threads", str(threads), "--prompt-tokens", "16", "--gen-tokens", str(gen_tokens),
                          "--bandwidth-mb", "64"], env=dict(os.environ, EDGEQ_ISA=isa), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"edgeq bench failed on {path}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)["decode_tok_s"]


def llama_decode(python: str, path: Path, threads: int, gen_tokens: int) -> float:
    out, _, _ = run_measured(python, "-c", LLAMA_RUN, str(path), str(threads), "16", str(gen_tokens))
    return json.loads(out.strip().splitlines()[-1])["decode_tok_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4], choices=sorted(PEERS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--isa", nargs="+", default=["avx2", "avx512"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=10, help="perplexity chunks of 512 tokens; 0: speed only")
    parser.add_argument("--text", type=Path, default=REPO.parent / "shared" / "data" / "eval" / "botchan.txt")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = parser.parse_args()

    from edgeq import _ffi
    isas = [isa for isa in args.isa if isa in _ffi.kernel_sets()]
    for isa in set(args.isa) - set(isas):
        print(f"note: this CPU (or this build) has no {isa} set; skipped", file=sys.stderr)
    python = llama_cpp_python()
    files = {(bits, layout): edgeq_file(bits, layout) for bits in args.bits for layout in ("bitplane", "packed")}
    peers = {} if python is None else {bits: llama_file("smollm2", PEERS[bits], python) for bits in args.bits}

    samples: dict[tuple, list[float]] = {}
    for round_index in range(args.rounds):
        for threads in args.threads:
            for (bits, layout), path in files.items():
                for isa in isas:
                    samples.setdefault(("edgeq", bits, layout, isa, threads), []).append(
                        edgeq_decode(path, isa, threads, args.gen_tokens))
            for peer in sorted(set(PEERS[bits] for bits in peers)):
                path = next(p for b, p in peers.items() if PEERS[b] == peer)
                samples.setdefault(("llama.cpp", peer, threads), []).append(
                    llama_decode(python, path, threads, args.gen_tokens))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    medians = {key: statistics.median(values) for key, values in samples.items()}

    print(f"| file | size MB | set | threads | decode tok/s (median of {args.rounds}) | vs llama.cpp |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        for (bits, layout), path in files.items():
            for isa in isas:
                tok_s = medians[("edgeq", bits, layout, isa, threads)]
                peer = medians.get(("llama.cpp", PEERS[bits], threads))
                ratio = f"{tok_s / peer:.2f}x {PEERS[bits]}" if peer else "-"
                print(f"| {path.name} | {path.stat().st_size / 1e6:.1f} | {isa} | {threads} | {tok_s:.1f} | {ratio} |")
        for peer in sorted(set(PEERS[bits] for bits in peers)):
            print(f"| llama.cpp {peer} | - | native | {threads} | {medians[('llama.cpp', peer, threads)]:.1f} | 1.00x |")

    quality = {}
    if args.chunks > 0:
        for (bits, layout), path in files.items():
            quality[path.name] = edgeq_ppl(path, args.text, args.chunks, max(args.threads))["ppl"]
        for bits, path in peers.items():
            quality[path.name] = llama_ppl(python, path, args.text, args.chunks, max(args.threads))["ppl"]
        print(f"\n| file | perplexity ({args.chunks} chunks of 512, {args.text.name}) |")
        print("|---|---|")
        for name, ppl in quality.items():
            print(f"| {name} | {ppl:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"decode_tok_s": {" ".join(map(str, k)): v for k, v in medians.items()},
                                         "ppl": quality}, indent=1))


if __name__ == "__main__":
    main()
