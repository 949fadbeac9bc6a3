"""Decode GEMV per shape, quant type and kernel set: median time, GB/s of weights read, and
optionally user-mode instructions per GEMV (load-independent, so they show progress on a noisy
machine).

    python benchmarks/bench_kernels.py                         # the real shapes, 2/3/4/8 bits g32/g64
    python benchmarks/bench_kernels.py --instructions --sets avx2 avx512 --types u4g64a
    python benchmarks/bench_kernels.py --shapes 151936x896 --json out.json

A small C driver (kernel_driver.c, compiled here from the native sources with the build's flags)
runs one set's decode path directly: `prepare` once per input vector (shared by q/k/v and gate/up
in the model, so reported apart) and `gemm` over the whole matrix, one thread. Instructions are
counted by single-stepping under ptrace (valgrind 3.19 has no AVX-512; the VM has no hardware
counters): at 2 and 4 tiles of 16 rows (2 and 4 x 16 rows for plain types), then extended linearly
to the full row count, which is exact because every tile runs the same instructions.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from edgeq import _ffi  # noqa: E402

REAL_SHAPES = ["896x896", "4864x896", "896x4864", "576x576", "1536x576"]   # Qwen2.5-0.5B, SmolLM2-135M
DEFAULT_TYPES = ["u2g32a", "u3g32a", "u4g32a", "u8g32a", "u2g64a", "u3g64a", "u4g64a", "u8g64a"]
DRIVER = ROOT / "build" / "bench_kernels" / "kernel_driver"


def build_driver() -> Path:
    """Compile kernel_driver.c with every native source (rebuilt when a source is newer)."""
    native = ROOT / "native"
    sources = [p for folder in ("src", "ref", "scalar", "x86", "arm") for p in sorted((native / folder).glob("*.c"))]
    inputs = sources + [HERE / "kernel_driver.c"] + list(native.glob("*/*.h"))
    if DRIVER.exists() and DRIVER.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return DRIVER
    DRIVER.parent.mkdir(parents=True, exist_ok=True)
    from native.build_ffi import COMPILE_ARGS  # the library's own flags
    command = [os.environ.get("CC", "cc"), *COMPILE_ARGS, f"-I{native / 'include'}", f"-I{native / 'src'}",
               str(HERE / "kernel_driver.c"), *map(str, sources), "-lm", "-lpthread", "-o", str(DRIVER)]
    subprocess.run(command, check=True)
    return DRIVER


def driver(*arguments: str) -> dict:
    result = subprocess.run([str(DRIVER), *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"kernel_driver {' '.join(arguments)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def instructions(isa: str, qtype: str, rows: int, cols: int) -> tuple[int, int]:
    """(prepare, gemm) instructions of one GEMV of (rows, cols): counted at 32 and 64 rows and
    extended linearly (rows a multiple of 16)."""
    small, large = (driver("count", isa, qtype, str(n), str(cols)) for n in (32, 64))
    per_32_rows = large["gemm_instructions"] - small["gemm_instructions"]
    gemm = small["gemm_instructions"] + per_32_rows * (rows - 32) / 32
    return small["prepare_instructions"], round(gemm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=REAL_SHAPES, help="ROWSxCOLS (default: the real shapes)")
    parser.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    parser.add_argument("--sets", nargs="+", default=None, help="kernel sets (default: every set this CPU runs but ref)")
    parser.add_argument("--repeat", type=int, default=51, help="timed runs per GEMV (median reported)")
    parser.add_argument("--instructions", action="store_true", help="also count instructions (slow: ~50 µs a step)")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args()
    sets = args.sets or [name for name in _ffi.kernel_sets() if name != "ref"]
    missing = [name for name in sets if name not in _ffi.kernel_sets()]
    if missing:
        raise SystemExit(f"this CPU does not run {', '.join(missing)} (it runs {', '.join(_ffi.kernel_sets())})")
    build_driver()

    records = []
    print("| shape | type | set | gemm µs | GB/s | prepare µs |" + (" gemm instructions | prepare instructions |" if args.instructions else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if args.instructions else ""))
    for shape in args.shapes:
        rows, cols = (int(n) for n in shape.split("x"))
        for qtype in args.types:
            for isa in sets:
                timed = driver("time", isa, qtype, str(rows), str(cols), str(args.repeat))
                record = {"shape": shape, "type": qtype, "set": isa, "gemm_us": timed["gemm_ns"] / 1e3,
                          "prepare_us": timed["prepare_ns"] / 1e3, "weight_bytes": timed["weight_bytes"],
                          "gb_per_s": timed["weight_bytes"] / timed["gemm_ns"]}
                line = f"| {shape} | {qtype} | {isa} | {record['gemm_us']:.1f} | {record['gb_per_s']:.1f} | {record['prepare_us']:.2f} |"
                if args.instructions:
                    record["prepare_instructions"], record["gemm_instructions"] = instructions(isa, qtype, rows, cols)
                    line += f" {record['gemm_instructions']} | {record['prepare_instructions']} |"
                records.append(record)
                print(line, flush=True)
    if args.instructions and len(sets) > 1:
        print()
        for other in sets[1:]:
            ratios = [a["gemm_instructions"] / b["gemm_instructions"] for a in records if a["set"] == sets[0]
                      for b in records if b["set"] == other and (b["shape"], b["type"]) == (a["shape"], a["type"])]
            print(f"gemm instructions {sets[0]} / {other}: median {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
