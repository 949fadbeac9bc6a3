"""Prefill and decode of several files, interleaved in rounds, with ratios to a named peer.

    python benchmarks/bench_pairs.py LABEL=FILE[@PEER] ... [--threads 1 2] [--rounds 3]
                                     [--prompt-tokens 128] [--gen-tokens 64] [--build NAME=DIR ...]

A FILE ending in .gguf runs in llama.cpp (the build of benchmarks/setup_llamacpp.sh, as the suite's),
any other in `edgeq bench`. Every measurement is a fresh process with one run; each round measures
every (threads, file, build) once, in the same order, so a host whose speed drifts (a shared machine)
moves every file alike and the per-round ratios stay meaningful. The table shows medians over the
rounds and, for an entry with @PEER, the median of its per-round ratios to PEER (another LABEL).

`--build NAME=DIR` measures every edgeq file again under another edgeq checkout (built in place:
`python setup.py build_ext --inplace`), through PYTHONPATH=DIR; its rows are LABEL/NAME, with the
ratio to the same file under the current environment's edgeq. This is how a kernel change is A/B'd
on a noisy machine. Timing numbers are measurements, not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LLAMA_RUN, edgeq_bench_once, llama_cpp_python, run_measured  # noqa: E402


@dataclass(frozen=True)
class Entry:
    label: str
    path: Path
    peer: str | None = None
    build: str | None = None     # None: the current environment's edgeq

    @property
    def llama(self) -> bool:
        return self.path.suffix == ".gguf"


def parse_entry(spec: str) -> Entry:
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"bench_pairs: error: {spec!r}: expected LABEL=FILE or LABEL=FILE@PEER")
    path, _, peer = rest.partition("@")
    if not Path(path).is_file():
        raise SystemExit(f"bench_pairs: error: {path}: no such file")
    return Entry(label, Path(path), peer or None)


def entries_with_builds(entries: list[Entry], builds: dict[str, Path]) -> list[Entry]:
    """The entries, then each edgeq entry once more per build, compared with its current-build row."""
    labels = {e.label for e in entries}
    for e in entries:
        if e.peer is not None and e.peer not in labels:
            raise SystemExit(f"bench_pairs: error: {e.label}: peer {e.peer!r} is not a LABEL given")
    extra = [Entry(f"{e.label}/{name}", e.path, e.label, name) for name in builds for e in entries if not e.llama]
    return entries + extra


def measure(entry: Entry, threads: int, args, builds: dict[str, Path], llama_python: str | None) -> tuple:
    """(prefill tok/s, decode tok/s, roofline fraction: `edgeq bench`'s, None for llama.cpp) of one
    fresh run."""
    if entry.llama:
        out, _, _ = run_measured(llama_python, "-c", LLAMA_RUN, str(entry.path), str(threads),
                                 str(args.prompt_tokens), str(args.gen_tokens))
        report = json.loads(out.strip().splitlines()[-1])
    else:
        report = edgeq_bench_once(entry.path, threads, args.prompt_tokens, args.gen_tokens,
                                  builds[entry.build] if entry.build is not None else None)
    return report["prefill_tok_s"], report["decode_tok_s"], report.get("roofline_fraction")


def summary(entries: list[Entry], threads: list[int], results: dict) -> list[str]:
    """Markdown rows: medians per (threads, entry), and the medians of per-round ratios to the peer."""
    lines = ["| file | threads | prefill tok/s | decode tok/s | roofline | peer | prefill × | decode × |",
             "|---|---|---|---|---|---|---|---|"]
    for t in threads:
        for e in entries:
            own = results[(e.label, t)]
            rooflines = [run[2] for run in own if run[2] is not None]
            cells = [e.label, str(t), f"{statistics.median(run[0] for run in own):.1f}",
                     f"{statistics.median(run[1] for run in own):.1f}",
                     f"{statistics.median(rooflines):.2f}" if rooflines else ""]
            if e.peer is None:
                cells += ["", "", ""]
            else:
                peer = results[(e.peer, t)]
                cells += [e.peer, f"{statistics.median(a[0] / b[0] for a, b in zip(own, peer)):.2f}",
                          f"{statistics.median(a[1] / b[1] for a, b in zip(own, peer)):.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def build_argument(spec: str) -> tuple[str, Path]:
    name, sep, directory = spec.partition("=")
    if not sep or not name or not Path(directory, "edgeq").is_dir():
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=DIR, DIR an edgeq checkout built in place")
    return name, Path(directory).resolve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="LABEL=FILE[@PEER]")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--build", type=build_argument, action="append", default=[], metavar="NAME=DIR")
    args = parser.parse_args(argv)
    builds = dict(args.build)
    entries = entries_with_builds([parse_entry(spec) for spec in args.files], builds)
    llama_python = llama_cpp_python() if any(e.llama for e in entries) else None
    if any(e.llama for e in entries) and llama_python is None:
        raise SystemExit("bench_pairs: error: llama.cpp could not be built (benchmarks/setup_llamacpp.sh)")
    results: dict = {}
    for r in range(args.rounds):
        for t in args.threads:
            for e in entries:
                speed = measure(e, t, args, builds, llama_python)
                results.setdefault((e.label, t), []).append(speed)
                print(f"round {r + 1}/{args.rounds} -t {t} {e.label}: prefill {speed[0]:.1f} decode {speed[1]:.1f}",
                      file=sys.stderr, flush=True)
    print("\n".join(summary(entries, args.threads, results)))


if __name__ == "__main__":
    main()
