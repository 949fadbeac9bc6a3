"""Mixed precision at several budgets of one source, in one process (the sensitivity and KL analysis
runs once: convert.convert caches it per source), each file then scored by `edgeq perplexity`.

    python benchmarks/bench_mixed.py SRC OUTDIR --size 66.6MB 79.9MB --bpw 3.0 [--base F32] [--chunks 20]

Each budget writes OUTDIR/mixed-<budget>.eq and OUTDIR/mixed-<budget>.json (budget, file size,
conversion seconds, the allocation summary, perplexity and KL). Equivalent to one
`edgeq convert SRC -o OUT --size ...` per budget (the first pays for the analysis) followed by
`edgeq perplexity OUT --chunks N -t 1 [--base F32]`. Results: benchmarks/README.md "Mixed precision".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgeq.convert import AllocationSettings, convert  # noqa: E402
from edgeq.convert.allocate import Budget, parse_size  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--size", nargs="*", default=[])
    parser.add_argument("--bpw", nargs="*", type=float, default=[])
    parser.add_argument("--latency-ms", nargs="*", type=float, default=[])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--base", default=None, help="a float model for KL (edgeq perplexity --base)")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("-t", "--threads", type=int, default=1)
    args = parser.parse_args()
    budgets = [Budget("size", parse_size(s)) for s in args.size] + [Budget("bpw", b) for b in args.bpw] + \
        [Budget("latency", ms) for ms in args.latency_ms]
    args.outdir.mkdir(parents=True, exist_ok=True)
    for budget in budgets:
        label = budget.describe().lstrip("-").replace(" ", "-")
        out = args.outdir / f"mixed-{label}.eq"
        start = time.perf_counter()
        report = convert(args.source, out, progress=False,
                         allocation=AllocationSettings(budget, args.profile if budget.kind == "latency" else None))
        record = {"budget": budget.describe(), "file_bytes": report.file_bytes, "convert_s": time.perf_counter() - start,
                  "allocation": report.allocation_lines}
        print("\n".join(report.allocation_lines), flush=True)
        command = [sys.executable, "-m", "edgeq", "perplexity", str(out), "--chunks", str(args.chunks), "-t",
                   str(args.threads), "--json"] + (["--base", args.base] if args.base else [])
        result = subprocess.run(command, capture_output=True, text=True)
        record["perplexity"] = json.loads(result.stdout) if result.returncode == 0 else result.stderr.strip()
        (args.outdir / f"mixed-{label}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "allocation"}), flush=True)


if __name__ == "__main__":
    main()
