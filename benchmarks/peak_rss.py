"""Run a Python script (-c TEXT) or module (-m NAME) in this process, then report this process's own
peak resident memory (VmHWM) on stderr as `EDGEQ_PEAK_RSS_KB <n>`.

Why not the child's ru_maxrss from wait4: Linux counts the parent's resident pages at fork in it, so a
benchmark parent holding a converted model would inflate every child's figure. VmHWM belongs to the
address space exec() created. Standard library only: it also runs under llama.cpp's virtualenv.
"""
import atexit
import runpy
import sys


def _report() -> None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write(f"\nEDGEQ_PEAK_RSS_KB {line.split()[1]}\n")


atexit.register(_report)
mode, target, *arguments = sys.argv[1:]
if mode == "-m":
    sys.argv = [target, *arguments]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *arguments]
    exec(compile(target, "<benchmark>", "exec"), {"__name__": "__main__"})
