"""`make` for the native targets the tests build: one job per CPU, so the library's objects (the
Makefile compiles each source once per build folder) are compiled in parallel."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", f"-j{os.cpu_count() or 1}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
