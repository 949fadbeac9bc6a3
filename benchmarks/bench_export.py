"""`edgeq export` checked by llama.cpp itself: every exported file loads, and its perplexity equals
edgeq's on the edgeq file it came from (within 0.5 % when every tensor is exact).

    python benchmarks/bench_export.py [--models smollm2 qwen] [--chunks 4] [--threads 2]
                                      [--extra model=FILE ...] [--extra-only] [--output benchmarks/export_results.json]

For each model, the edgeq files the suite made (`edgeq.registry.cache_dir()/bench/<model>/*.eq`) plus
any --extra ones are exported with `edgeq export --type auto --kl-chunks 0` into
`bench/<model>/export/<name>.gguf` (made again when older than its edgeq file). Then the same text
(the shipped evaluation text, llama-perplexity's convention, ctx 512, the first --chunks chunks) is
scored by `edgeq perplexity` on the edgeq file and by llama-cpp-python (suite.py's LLAMA_PPL child,
which mirrors edgeq/perplexity.py token for token) on the export. Printed as a Markdown table and
written as JSON. The relative difference also holds the two runtimes' own arithmetic (llama.cpp
quantizes activations to 8 bits for its Q4/Q5/Q8 dot products; edgeq's kernels round differently),
which is why "equal" means within 0.5 %.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, llama_cpp_python  # noqa: E402
from suite import MODELS, bench_dir, edgeq_ppl, llama_ppl, log  # noqa: E402

TOLERANCE = 0.005          # |ppl llama.cpp / ppl edgeq - 1| for files whose every tensor is exact


def export(model_file: Path, out: Path) -> dict:
    """`edgeq export` (cached): the per-tensor summary it printed and the exported size."""
    summary = out.with_name(out.name + ".txt")
    if not out.is_file() or out.stat().st_mtime < model_file.stat().st_mtime or not summary.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"exporting {model_file.name} -> {out}")
        result = subprocess.run([sys.executable, "-m", "edgeq", "export", str(model_file), "-o", str(out),
                                 "--kl-chunks", "0"], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"edgeq export failed on {model_file}: {result.stderr.strip()}")
        summary.write_text(result.stdout)
    lines = summary.read_text().splitlines()
    requantized = [line.strip() for line in lines if "re-quantized (" in line]
    return {"exported_mb": out.stat().st_size / 1e6, "all_exact": not requantized,
            "requantized": requantized, "summary": lines}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], metavar="MODEL=FILE",
                        help="more edgeq files to export, e.g. qwen=/path/model.eq")
    parser.add_argument("--extra-only", action="store_true", help="only the --extra files, not the suite's")
    parser.add_argument("--output", type=Path, default=HERE / "export_results.json")
    args = parser.parse_args(argv)
    python = llama_cpp_python()
    if python is None:
        raise SystemExit("llama-cpp-python is not available (benchmarks/setup_llamacpp.sh failed)")
    from edgeq.data import text_path
    text = text_path("evaluation")
    extra: dict[str, list[Path]] = {}
    for item in args.extra:
        model, _, file = item.partition("=")
        if model not in MODELS or not Path(file).is_file():
            raise SystemExit(f"--extra {item}: expected MODEL=FILE with MODEL in {', '.join(MODELS)}")
        extra.setdefault(model, []).append(Path(file))
    records = []
    for model in args.models:
        files = ([] if args.extra_only else sorted(bench_dir(model).glob("*.eq"))) + extra.get(model, [])
        for model_file in files:
            exported = bench_dir(model) / "export" / (model_file.stem + ".gguf")
            record = {"model": model, "file": model_file.name, "edgeq_mb": model_file.stat().st_size / 1e6,
                      **export(model_file, exported)}
            ours = edgeq_ppl(model_file, text, args.chunks, args.threads)
            theirs = llama_ppl(python, exported, text, args.chunks, args.threads)
            record.update(edgeq_ppl=ours["ppl"], llama_ppl=theirs["ppl"], tokens_scored=ours["tokens_scored"],
                          relative=theirs["ppl"] / ours["ppl"] - 1)
            record["within_tolerance"] = abs(record["relative"]) <= TOLERANCE
            log(f"{model} {model_file.name}: edgeq {ours['ppl']:.4f}, llama.cpp {theirs['ppl']:.4f} "
                f"({100 * record['relative']:+.3f} %), {'exact' if record['all_exact'] else 're-quantized parts'}")
            records.append(record)
    args.output.write_text(json.dumps({"chunks": args.chunks, "threads": args.threads, "records": records}, indent=2))
    print(table(records, args.chunks))
    failed = [r for r in records if r["all_exact"] and not r["within_tolerance"]]
    if failed:
        raise SystemExit(f"exact exports off by more than {100 * TOLERANCE} %: {[r['file'] for r in failed]}")


def requantized_text(lines: list[str]) -> str:
    """'  ffn_up.weight x30: u8g64a -> Q8_0, re-quantized (...)' lines -> '211 re-quantized (Q8_0), ...'."""
    count, targets, kinds = 0, set(), []
    for line in lines:
        kind, _, rest = line.strip().partition(": ")
        name, _, times = kind.partition(" x")
        count += int(times or 1)
        targets.add(rest.split("->")[1].split(",")[0].strip())
        kinds.append(name.removesuffix(".weight"))
    shown = ", ".join(kinds) if len(kinds) <= 2 else "every matrix"
    return f"{count} re-quantized to {'/'.join(sorted(targets))} ({shown})"


def table(records: list[dict], chunks: int) -> str:
    lines = [f"| model | edgeq file | MB | exported MB | tensors | ppl edgeq | ppl llama.cpp | diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        kinds = "all exact" if r["all_exact"] else requantized_text(r["requantized"])
        lines.append(f"| {r['model']} | {r['file']} | {r['edgeq_mb']:.1f} | {r['exported_mb']:.1f} | {kinds} | "
                     f"{r['edgeq_ppl']:.4f} | {r['llama_ppl']:.4f} | {100 * r['relative']:+.3f} % |")
    lines.append(f"\n(ctx 512, first {chunks} chunks of the shipped evaluation text, {records[0]['tokens_scored']} "
                 "tokens scored)" if records else "")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
