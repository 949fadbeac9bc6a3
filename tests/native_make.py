"""`make` for the native targets the tests build: one job per CPU, so the library's objects (the
Makefile compiles each source once per build folder) are compiled in parallel, and one make at a
time: pytest-xdist workers share build/, where two makes of targets with common objects would write
the same files at once."""
from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    lock = ROOT / "build" / ".make.lock"
    lock.parent.mkdir(exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)   # released when the file closes
        return subprocess.run(["make", "--no-print-directory", f"-j{os.cpu_count() or 1}", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
