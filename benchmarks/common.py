"""Shared by the benchmarks: measured child processes and the locally built llama.cpp."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_measured(cmd: list[str]) -> tuple[str, float, float]:
    """Run a child process; (stdout, wall seconds, peak RSS in MB). Exits with its stderr on failure."""
    import tempfile
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        out = process.stdout.read()                      # small: a line of JSON
        _, status, usage = os.wait4(process.pid, 0)      # reaps the child and gives its rusage
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            err.seek(0)
            raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{err.read().decode()[-2000:]}")
    return out.decode(), seconds, usage.ru_maxrss / 1024


def llama_cpp_python() -> str | None:
    """The python of the cached llama-cpp-python build (built on first use), or None if it fails."""
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
