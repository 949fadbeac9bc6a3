"""cffi builder (API mode) for the native runtime: compiles every .c under native/ into edgeq._native.

setup.py names it (`cffi_modules=["native/build_ffi.py:ffibuilder"]`), so `pip install .` and
`pip install --no-build-isolation -e .` build it (the editable install puts the extension next to
edgeq/__init__.py; rerun it after editing C).
The cdef is the block of native/include/edgeq.h between EQ_CDEF_BEGIN and EQ_CDEF_END, so the header
is the single source of truth for the C API.

Flags are portable on purpose: no -march=native, the library must run on any x86-64 / aarch64.
ISA-specific files (x86/, arm/) select their instructions with `#pragma GCC target` and are only
called after a runtime CPU check.
"""
from __future__ import annotations

import os
from pathlib import Path

import cffi

NATIVE = Path(__file__).resolve().parent
ROOT = NATIVE.parent
INCLUDE = NATIVE / "include"
HEADER = INCLUDE / "edgeq.h"
SOURCE_DIRS = ("src", "ref", "scalar", "x86", "arm")   # generic code, then one folder per kernel set

CDEF_BEGIN = "/* EQ_CDEF_BEGIN */"
CDEF_END = "/* EQ_CDEF_END */"

COMPILE_ARGS = [
    "-O2",
    "-std=c11",
    "-ffp-contract=off",   # no implicit FMA: the reference kernels must match numpy bit for bit
    "-Wall",
    "-Wextra",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wno-unused-parameter",   # the cffi-generated wrapper has many
]
if os.environ.get("EDGEQ_WERROR"):   # CI: fail on warnings; never the default for users' compilers
    COMPILE_ARGS.append("-Werror")


def read_cdef(header: Path = HEADER) -> str:
    """The declarations cffi should see: the text between the markers in edgeq.h."""
    text = header.read_text()
    begin, end = text.find(CDEF_BEGIN), text.find(CDEF_END)
    if begin < 0 or end < begin:
        raise RuntimeError(f"{header}: missing {CDEF_BEGIN} ... {CDEF_END} block")
    return text[begin + len(CDEF_BEGIN):end]


def _as_build_path(path: Path) -> str:
    """Paths relative to the project root when building from it (keeps object files inside build/)."""
    try:
        if Path.cwd().resolve() == ROOT:
            return str(path.relative_to(ROOT))
    except (OSError, ValueError):
        pass
    return str(path)


def _sources() -> list[str]:
    files = []
    for folder in SOURCE_DIRS:
        files.extend(sorted((NATIVE / folder).glob("*.c")))
    return [_as_build_path(path) for path in files]


def _headers() -> list[str]:
    return [_as_build_path(path) for folder in ("include", *SOURCE_DIRS)
            for path in sorted((NATIVE / folder).glob("*.h"))]


ffibuilder = cffi.FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "edgeq._native",
    '#include "edgeq.h"',
    sources=_sources(),
    depends=_headers(),
    include_dirs=[_as_build_path(INCLUDE), _as_build_path(NATIVE / "src")],
    extra_compile_args=COMPILE_ARGS,
)
