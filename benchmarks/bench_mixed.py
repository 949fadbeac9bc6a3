"""Mixed precision at several budgets of one source, in one process (the sensitivity and KL analysis
runs once: convert.convert caches it per source), each file then scored by `edgeq perplexity`.

    python benchmarks/bench_mixed.py SRC OUTDIR --size 66.6MB 79.9MB --bpw 3.0 [--base F32] [--chunks 20]
    python benchmarks/bench_mixed.py SRC OUTDIR --size 428.73MB:17ms --profile P   # with a latency cap
    python benchmarks/bench_mixed.py SRC OUTDIR --size 79.9MB --without v2g64s v2g128s   # A/B of candidates

Each budget writes OUTDIR/edgeq-mixed-<budget>.eq (e.g. edgeq-mixed-size-66.600MB.eq, the name
benchmarks/suite.py gives its variant mixed:66.6MB) and beside it <file>.json: the suite's conversion
record (convert_s, convert_cpu_s, convert_peak_rss_mb, convert_command, converted) plus the source, the budget,
file size, whether this conversion ran the analysis or reused it, the allocation summary, and
perplexity with KL (`edgeq perplexity OUT --chunks N -t T [--base F32] --json`; --chunks 0 skips it,
for example when the suite will measure the files). With OUTDIR = <edgeq cache>/bench/<model> the
suite reuses the files. Equivalent to one `edgeq convert SRC -o OUT --size ...` per budget (the first
pays for the analysis). CPU seconds are the process's (every thread) during each conversion; peak RSS
is the process's so far. Results: benchmarks/README.md "Mixed precision".
"""
from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from edgeq.convert import AllocationSettings, convert  # noqa: E402
from edgeq.convert.allocate import Budget  # noqa: E402
from suite import mixed_name, parse_mixed  # noqa: E402


def file_name(budget: Budget) -> str:
    """edgeq-mixed-size-66.600MB.eq (edgeq-mixed-size-66.600MB-cap-9ms.eq with a latency cap):
    benchmarks/suite.py's MixedVariant.file_name for this budget."""
    return f"edgeq-{mixed_name(budget)}.eq"


def _budget(text: str, suffix: str = "") -> Budget:
    """'428.73MB' or '428.73MB:17ms' (with a decode-time cap: `edgeq convert --size S --latency-ms CAP
    --profile P`), or for --bpw '3.0' / '3.0:9ms': parsed as the suite's variant mixed:TEXT is."""
    value, *cap = text.split(":")
    try:
        return parse_mixed(f"mixed:{text}", value + suffix, *cap).budget()
    except ValueError as error:
        raise SystemExit(str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--size", nargs="*", default=[])
    parser.add_argument("--bpw", nargs="*", default=[])
    parser.add_argument("--latency-ms", nargs="*", type=float, default=[])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--base", default=None, help="a float model for KL (edgeq perplexity --base)")
    parser.add_argument("--chunks", type=int, default=20, help="perplexity chunks; 0: no perplexity")
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("--without", nargs="*", default=[],
                        help="candidate types the plans may not use; each budget is converted twice, with every "
                             "candidate and without these (file name ...-without-<types>.eq), from one analysis")
    args = parser.parse_args()
    budgets = [_budget(s) for s in args.size] + [_budget(b, "bpw") for b in args.bpw] + \
        [Budget("latency", ms) for ms in args.latency_ms]
    args.outdir.mkdir(parents=True, exist_ok=True)
    runs = [(budget, without) for budget in budgets for without in ([()] + ([tuple(args.without)] if args.without else []))]
    for index, (budget, without) in enumerate(runs):
        out = args.outdir / file_name(budget)
        if without:
            out = out.with_name(f"{out.stem}-without-{'-'.join(without)}{out.suffix}")
        start, cpu = time.perf_counter(), time.process_time()
        report = convert(args.source, out, progress=False,
                         allocation=AllocationSettings(budget, args.profile if budget.needs_profile() else None,
                                                       without))
        record = {"convert_s": time.perf_counter() - start, "convert_cpu_s": time.process_time() - cpu,
                  "convert_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "convert_command": f"edgeq convert SRC -o OUT {budget.describe()}"
                                     + (" --profile P" if budget.needs_profile() else "")
                                     + (" (analysis reused: bench_mixed.py)" if index else ""),
                  "converted": datetime.datetime.now().isoformat(timespec="seconds"), "source": args.source,
                  "budget": budget.describe(), "without": list(without), "file_bytes": report.file_bytes,
                  "analysis": "reused from the first budget" if index else "measured", "allocation": report.allocation_lines}
        print("\n".join(report.allocation_lines), flush=True)
        if args.chunks > 0:
            command = [sys.executable, "-m", "edgeq", "perplexity", str(out), "--chunks", str(args.chunks), "-t",
                       str(args.threads), "--json"] + (["--base", args.base] if args.base else [])
            result = subprocess.run(command, capture_output=True, text=True)
            record["perplexity"] = json.loads(result.stdout) if result.returncode == 0 else result.stderr.strip()
        out.with_name(out.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "allocation"}), flush=True)


if __name__ == "__main__":
    main()
