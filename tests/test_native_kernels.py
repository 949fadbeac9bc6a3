"""The C kernel harness (native/tests/check_kernels.c), built and run natively, plain and under ASan/UBSan.

check_kernels compares every kernel set this CPU runs with the reference set "ref" (and ref with a
float64 oracle) for every quant type, over random and worst-case shapes and inputs, with the
tolerance derived in its opening comment; `make check-kernels` / `make check-kernels-asan` build and
run it. Here: both runs pass and cover the sets the Python layer sees, and the harness catches two
small kernel bugs planted in a copy of the sources (it is a test that can fail), and two in
avx2-lut8's int8 tables. The same for
native/tests/check_attention.c (`make check-attention`), the int8 KV cache's attention helpers and the
int4 value cache's (k8v4).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from edgeq import _ffi
from edgeq.quant_types import TYPES
from native_make import make

ROOT = Path(__file__).resolve().parent.parent
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")
SUMMARY = re.compile(r"^(\S+)\s+(\d+) types x (\d+) cases = (\d+) products, (\d+) outputs against \S+, "
                     r"(\d+) mismatches", re.MULTILINE)




def _copy_sources(folder: Path) -> None:
    """The Makefile and native/ into `folder`, with the objects already built here (times kept):
    make there recompiles only the sources a test then changes."""
    shutil.copy(ROOT / "Makefile", folder / "Makefile")
    shutil.copytree(ROOT / "native", folder / "native", ignore=shutil.ignore_patterns("*.so", "_edgeq_native.c"))
    if (ROOT / "build" / "obj").is_dir():
        shutil.copytree(ROOT / "build" / "obj", folder / "build" / "obj")


def _plant_in_avx2(folder: Path, before: str, planted: str) -> None:
    """The sources copied into `folder` (_copy_sources) with `before` replaced by `planted` in
    x86/avx2.c, where it must occur once."""
    _copy_sources(folder)
    path = folder / "native/x86/avx2.c"
    source = path.read_text()
    assert source.count(before) == 1, "x86/avx2.c changed: update the planted bug"
    path.write_text(source.replace(before, planted))


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _summaries(output: str) -> dict[str, dict]:
    return {m[1]: {"types": int(m[2]), "cases": int(m[3]), "outputs": int(m[5]), "mismatches": int(m[6])}
            for m in SUMMARY.finditer(output)}


@pytest.fixture(scope="module")
def compiler():
    name = os.environ.get("NATIVE_CC", "gcc")
    if shutil.which(name) is None or shutil.which("make") is None:
        pytest.skip(f"no C compiler ({name}) or make: the C kernel harness cannot be built")
    return name


@pytest.mark.parametrize("target", ["check-kernels", "check-kernels-asan"])
def test_every_kernel_set_matches_the_reference(compiler, target):
    result = make(target)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make {target} failed:\n{_tail(output)}"
    assert not any(marker in output for marker in SANITIZER_MARKERS), _tail(output)
    assert "check_kernels: ok" in result.stdout
    summaries = _summaries(result.stdout)
    # the sets it ran are the ones the library says this CPU runs (the same list Python sees)
    assert sorted(summaries) == sorted(_ffi.kernel_sets()), result.stdout
    for isa, summary in summaries.items():
        assert summary["types"] == len(TYPES), (isa, summary)
        assert summary["cases"] >= 10 and summary["outputs"] > 10_000, (isa, summary)
        assert summary["mismatches"] == 0, (isa, summary)


def test_another_seed_passes_too(compiler):
    result = make("check-kernels", "CHECK_KERNELS_SEED=20240611")
    assert result.returncode == 0, f"check_kernels 20240611 failed:\n{_tail(result.stdout + result.stderr)}"
    assert "seed 20240611" in result.stdout


def test_the_harness_catches_planted_kernel_bugs(compiler, tmp_path):
    """A copy of the sources with two small bugs: the scalar set drops the last 4 columns of every
    group on its highest bit-plane, and (where the CPU runs it) the avx2 set truncates its int16
    table entries instead of rounding them, an error under one table step per lookup."""
    _copy_sources(tmp_path)
    plants = {
        "native/scalar/gemv.c": ("plane_dot[r] += low[plane[r] & 15u] + high[plane[r] >> 4];",
                                 "plane_dot[r] += low[plane[r] & 15u] + "
                                 "(p == type->bits - 1 && c == n_chunks - 1 ? 0.0f : high[plane[r] >> 4]);"),
        "native/x86/avx2.c": ("_mm256_cvtps_epi32(_mm256_mul_ps(first, inv))",
                              "_mm256_cvttps_epi32(_mm256_mul_ps(first, inv))"),
    }
    for path, (before, after) in plants.items():
        source = (tmp_path / path).read_text()
        assert source.count(before) == 1, f"{path} changed: update the planted bug"
        (tmp_path / path).write_text(source.replace(before, after))
    result = make("check-kernels", cwd=tmp_path)
    assert result.returncode != 0, "check_kernels passed with planted bugs"
    summaries = _summaries(result.stdout)
    assert re.search(r"^MISMATCH gemm against ref: set \w+, type \w+, case \"[^\"]+\", shape \(\d+, \d+\) "
                     r"x \d+ vectors, vector \d+, row \d+: got \S+, expected \S+, error \S+ > bound \S+$",
                     result.stdout, re.MULTILINE), _tail(result.stdout)
    assert summaries["scalar"]["mismatches"] > 0 and summaries["ref"]["mismatches"] == 0, result.stdout
    if "avx2" in _ffi.kernel_sets():
        assert summaries["avx2"]["mismatches"] > 0, result.stdout


@pytest.mark.parametrize("before, planted", [
    # int8 table entries truncated instead of rounded: under one table step per lookup
    ("_mm256_cvtps_epi32(_mm256_mul_ps(lower, inv))", "_mm256_cvttps_epi32(_mm256_mul_ps(lower, inv))"),
    # a row's two int8 lookups summed with int8 saturation before widening: wrong only where the
    # entries are large (the harness's worst cases)
    ("_mm256_maddubs_epi16(weight, _mm256_unpacklo_epi8(from_low, from_high))",
     "_mm256_maddubs_epi16(weight, _mm256_unpacklo_epi8(_mm256_adds_epi8(from_low, from_high), _mm256_setzero_si256()))"),
], ids=["int8-tables-truncated", "int8-lookups-saturated"])
def test_the_harness_catches_planted_int8_table_bugs(compiler, tmp_path, before, planted):
    """A bug planted in avx2-lut8's int8 tables (x86/avx2.c) fails check_kernels for avx2-lut8
    only: avx2 (int16 tables) and the others share none of that code."""
    if "avx2-lut8" not in _ffi.kernel_sets():
        pytest.skip("this CPU does not run the avx2 kernels")
    _plant_in_avx2(tmp_path, before, planted)
    result = make("check-kernels", cwd=tmp_path)
    assert result.returncode != 0, "check_kernels passed with a planted bug"
    summaries = _summaries(result.stdout)
    assert re.search(r"^MISMATCH gemm against ref: set avx2-lut8, type u[23]g", result.stdout, re.MULTILINE), \
        _tail(result.stdout)
    assert summaries["avx2-lut8"]["mismatches"] > 0, result.stdout
    assert all(summary["mismatches"] == 0 for isa, summary in summaries.items() if isa != "avx2-lut8"), result.stdout


ATTENTION = re.compile(r"^check_attention: (\S+)\s+(\d+) cases \((fp16 KV|int8 KV|int4 KV values)(?:, blocks of (\d+))?\): "
                       r"largest error (\S+) of its bound", re.MULTILINE)


def test_quantized_kv_attention_helpers_match_the_reference(compiler):
    """native/tests/check_attention.c: the int8 KV cache's and the int4 value cache's quantizers
    against their specifications, every set's dot_q8 / axpy_q8 / axpy_q4 against ref's, and every
    set's dot_f16 / axpy_f16 (the fp16 cache) against float64, within the bounds derived in its
    opening comment, every set's fp16 writer (to_f16) bit for bit against eq_fp32_to_fp16, and the
    softmax's e^x: ref within 1 ulp of float64, every set bit for bit equal to ref."""
    result = make("check-attention")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make check-attention failed:\n{_tail(output)}"
    assert "check_attention: all sets agree with ref" in result.stdout
    for kind in ("fp16 KV", "int8 KV", "int4 KV values"):
        runs = {m[1]: (int(m[2]), m[4], float(m[5])) for m in ATTENTION.finditer(result.stdout) if m[3] == kind}
        assert sorted(runs) == sorted(_ffi.kernel_sets()), result.stdout
        for isa, (cases, block, worst) in runs.items():
            assert cases >= 200 and block == (None if kind == "fp16 KV" else "32") and worst <= 1.0, (kind, isa, runs[isa])
    writers = dict(re.findall(r"^check_attention: (\S+) .*fp16 writer: (\d+) values differ", result.stdout, re.MULTILINE))
    assert sorted(writers) == sorted(_ffi.kernel_sets()) and set(writers.values()) == {"0"}, result.stdout
    exp_line = re.search(r"^check_attention: exp: \d+ values, ref within (\S+) ulp of float64 \(bound 1\); "
                         r"sets differing from ref's bits:(.*)$", result.stdout, re.MULTILINE)
    assert exp_line and float(exp_line[1]) <= 1.0, result.stdout
    differing = dict(zip(exp_line[2].split()[::2], exp_line[2].split()[1::2]))
    assert sorted(differing) == sorted(_ffi.kernel_sets()) and set(differing.values()) == {"0"}, exp_line[0]


@pytest.mark.parametrize("before, planted, mismatch", [
    # dot_q8 scaling every block by the first block's scale: wrong only for heads of more than 32
    # values, which the harness must cover
    ("float scale = _cvtsh_ss(scales[block]);", "float scale = _cvtsh_ss(scales[0]);", "dot"),
    # axpy_q4 taking the high nibble of a byte first (values 2i and 2i+1 swapped)
    ("_mm_unpacklo_epi8(low, high)", "_mm_unpacklo_epi8(high, low)", "q4 axpy"),
    # dot_f16 multiplying every 8 keys by the first 8 query values: wrong only for rows over 8 values
    ("_mm256_loadu_ps(b + i), acc)", "_mm256_loadu_ps(b), acc)", "dot_f16"),
    # the fp16 writer rounding toward zero instead of to nearest even
    ("_mm256_cvtps_ph(_mm256_loadu_ps(x + i), NEAREST)", "_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_ZERO)",
     "to_f16"),
    # e^x with one fused multiply-add where kernels.h's steps round twice: 1 ulp off ref here and there
    ("_mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EQ_EXP_C2))", "_mm256_fmadd_ps(p, r, _mm256_set1_ps(EQ_EXP_C2))",
     "exp"),
], ids=["q8-dot-first-scale", "q4-axpy-nibbles-swapped", "f16-dot-first-query-values", "f16-writer-truncates",
        "exp-fused"])
def test_the_attention_harness_catches_a_planted_bug(compiler, tmp_path, before, planted, mismatch):
    """A bug planted in avx2's attention helpers makes check_attention fail, naming avx2 only."""
    if "avx2" not in _ffi.kernel_sets():
        pytest.skip("this CPU does not run the avx2 kernels")
    _plant_in_avx2(tmp_path, before, planted)
    result = make("check-attention", cwd=tmp_path)
    assert result.returncode != 0, "check_attention passed with a planted bug"
    assert re.search(rf"^MISMATCH set avx2 {mismatch} vs (ref|float64|eq_fp32_to_fp16) n \d+ pattern \w+", result.stderr,
                     re.MULTILINE), \
        result.stderr
    assert "MISMATCH set ref" not in result.stderr


def test_the_attention_harness_catches_planted_row_bugs(compiler, tmp_path):
    """The fp16 helpers over many cache rows, two bugs planted at once in avx2 (one build): dot_f16
    giving the fourth row of each block of four the third one's keys, axpy_f16 weighing every row by
    the first row's weight (both right for a single row). check_attention names each (it prints a few
    mismatches per check, so one broken helper does not hide the other)."""
    if "avx2" not in _ffi.kernel_sets():
        pytest.skip("this CPU does not run the avx2 kernels")
    _copy_sources(tmp_path)
    path = tmp_path / "native/x86/avx2.c"
    source = path.read_text()
    for before, planted in [("(a + 3 * stride + i))), q, acc3)", "(a + 2 * stride + i))), q, acc3)"),
                            ("const __m256 weight = _mm256_set1_ps(w[r]);", "const __m256 weight = _mm256_set1_ps(w[0]);")]:
        assert source.count(before) == 1, "x86/avx2.c changed: update the planted bug"
        source = source.replace(before, planted)
    path.write_text(source)
    result = make("check-attention", cwd=tmp_path)
    assert result.returncode != 0, "check_attention passed with planted bugs"
    for mismatch in ("dot_f16 rows", "axpy_f16 rows"):
        assert re.search(rf"^MISMATCH set avx2 {mismatch} vs float64 n \d+ pattern \w+", result.stderr, re.MULTILINE), \
            result.stderr
    assert "MISMATCH set ref" not in result.stderr
