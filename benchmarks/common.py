"""Shared by the benchmarks: measured child processes and the locally built llama.cpp."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_measured(python: str, mode: str, target: str, *arguments: str) -> tuple[str, float, float]:
    """Run `python -c SCRIPT args` (mode "-c") or `python -m MODULE args` (mode "-m") through
    peak_rss.py; returns (stdout, wall seconds, the child's own peak RSS in MB). Exits on failure."""
    result_start = time.perf_counter()
    result = subprocess.run([python, str(HERE / "peak_rss.py"), mode, target, *arguments],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - result_start
    if result.returncode != 0:
        raise SystemExit(f"failed: {mode} {target[:200]} {' '.join(arguments)}\n{result.stderr[-2000:]}")
    peaks = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("EDGEQ_PEAK_RSS_KB ")]
    return result.stdout, seconds, int(peaks[-1]) / 1024


def edgeq_bench_once(path: Path, threads: int, prompt_tokens: int, gen_tokens: int, build_dir: Path | None = None,
                     extra: tuple[str, ...] = ()) -> dict:
    """One fresh `python -m edgeq bench PATH --json --runs 1` (its report), under this environment's
    edgeq or, with build_dir, under that checkout (built in place). The child runs in / then: `-m`
    puts the working directory first on sys.path, so from inside a checkout PYTHONPATH would lose to
    it and the other build would silently not be the one measured. Exits on failure."""
    env = dict(os.environ)
    if build_dir is not None:
        env["PYTHONPATH"] = str(build_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "edgeq", "bench", str(path), "--json", "--threads", str(threads), "--runs", "1",
           "--prompt-tokens", str(prompt_tokens), "--gen-tokens", str(gen_tokens), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/" if build_dir is not None else None)
    if out.returncode != 0:
        raise SystemExit(f"edgeq: error: edgeq bench failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def llama_cpp_python() -> str | None:
    """A python that imports llama_cpp: this one when the `llamacpp` extra is installed, else the
    cached build of benchmarks/setup_llamacpp.sh (built on first use); None if that fails."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return sys.executable
    setup = subprocess.run([str(HERE / "setup_llamacpp.sh")], capture_output=True, text=True)
    if setup.returncode != 0:
        return None
    return setup.stdout.strip().splitlines()[-1]


def llama_cpp_quantize(python: str, source: Path, out: Path, ftype: str) -> Path:
    """Requantize a GGUF with llama.cpp (ftype e.g. "LLAMA_FTYPE_MOSTLY_Q4_0")."""
    script = ("import llama_cpp, sys\n"
              "p = llama_cpp.llama_model_quantize_default_params()\n"
              f"p.ftype = llama_cpp.{ftype}\n"
              "p.allow_requantize = True\n"
              "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n")
    subprocess.run([python, "-c", script, str(source), str(out)], check=True, capture_output=True)
    return out


# llama.cpp speed, one measurement in a fresh process: argv = model threads prompt_tokens gen_tokens;
# prints {"load_s", "prefill_tok_s", "decode_tok_s"} as one JSON line.
LLAMA_RUN = r"""
import json, sys, time
import llama_cpp
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t1 = time.perf_counter()
llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_prompt + n_gen + 8,
                      n_batch=max(512, n_prompt + n_gen + 8), verbose=False)   # scores has n_batch rows
load = time.perf_counter() - t1
vocab = llm.n_vocab()
prompt = [(7 * i + 11) % vocab for i in range(n_prompt)]
t = time.perf_counter(); llm.eval(prompt); prefill = time.perf_counter() - t
token = int(llm.scores[llm.n_tokens - 1].argmax())
t = time.perf_counter()
for _ in range(n_gen):
    llm.eval([token])
    token = int(llm.scores[llm.n_tokens - 1].argmax())
decode = time.perf_counter() - t
print(json.dumps({"load_s": load, "prefill_tok_s": n_prompt / prefill, "decode_tok_s": n_gen / decode}))
"""
