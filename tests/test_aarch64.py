"""The native code on aarch64, cross-compiled with Debian's gcc-aarch64-linux-gnu and run under
qemu-user (`make arm-deps` installs both; `make test` runs it first). Without them these tests skip,
naming what is missing.

- Every C source `pip install .` compiles (native/build_ffi.py's SOURCE_DIRS, with its COMPILE_ARGS)
  compiles for aarch64 without a warning: no x86-only flag or source reaches an ARM build.
- The kernel harness (native/tests/check_kernels.c; `make check-kernels-aarch64`) cross-built and
  run under qemu-aarch64 as cortex-a72 and max: every ARM set against the reference, every type;
  neon-dotprod (sdot) runs on max only, and its and neon's packed-family outputs are the bits
  x86's avx2/avx512 multiply-add give on the same inputs (the harness's digests). The int8 KV
  cache's attention helpers the same way (native/tests/check_attention.c, `make check-attention-aarch64`).
- The C example (`make aarch64`: build/aarch64/generate, static) decodes tiny converted models
  greedily under qemu-aarch64 (`-cpu cortex-a72`: ARMv8.0 without the dot product, like a Pi 4;
  `-cpu max`) with the set it picks, and with every set of the library's one list forced by
  EDGEQ_ISA, and prints the token ids the x86 build prints with each of its sets; a set aarch64
  cannot run (avx2) is a one-line error.
- A tiny model converted with --layout packed (the int8 multiply-add path) decodes under qemu to
  the ids x86's multiply-add sets give: neon's ARMv8.0 path (cortex-a72, and forced on max) and
  neon-dotprod's sdot path (max).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from native_make import make

ROOT = Path(__file__).resolve().parent.parent
AARCH64_CC = os.environ.get("AARCH64_CC", "aarch64-linux-gnu-gcc")
QEMU = os.environ.get("QEMU_AARCH64", "qemu-aarch64")

# qemu's CPU models, and the set an aarch64 build must pick on each (the best it runs): cortex-a72
# is ARMv8.0 without the dot-product extension (a Pi 4), max has it (HWCAP_ASIMDDP).
QEMU_CPUS = {"cortex-a72": "neon", "max": "neon-dotprod"}
# The sets the harness checks on each CPU model, in the list's order (the Makefile's QEMU_A72_SETS and
# QEMU_MAX_SETS, plus ref).
QEMU_SETS = {"cortex-a72": ["neon", "scalar", "ref"], "max": ["neon-dotprod", "ref"]}

PROMPTS = ([1, 2, 3, 4], [5, 17, 33, 2, 120, 77, 8, 250, 1, 64], [300, 42, 9, 199], [7])
N_GENERATE = 8


def _missing_tools() -> list[str]:
    return [tool for tool in (AARCH64_CC, QEMU, "make", "gcc") if shutil.which(tool) is None]


@pytest.fixture(scope="module")
def arm_tools():
    missing = _missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (`make arm-deps` installs the aarch64 "
                    "cross compiler and qemu-user on Debian/Ubuntu)")


@pytest.fixture(scope="module")
def built(arm_tools):
    """build/examples/generate (x86) and build/aarch64/generate (static), once per module."""
    _make("example", "aarch64")


def _make(*targets: str) -> None:
    result = make(*targets)
    assert result.returncode == 0, f"make {' '.join(targets)} failed:\n{result.stdout}{result.stderr}"


def _build_ffi():
    spec = importlib.util.spec_from_file_location("edgeq_build_ffi", ROOT / "native" / "build_ffi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extension_sources_compile_for_aarch64(arm_tools, tmp_path):
    """What `pip install .` compiles on an aarch64 machine, compiled (to objects) by the cross
    compiler with the builder's own flags plus -Werror."""
    build_ffi = _build_ffi()
    sources = [ROOT / source for source in build_ffi._sources()]   # absolute stays absolute
    assert {source.parent.name for source in sources} >= {"src", "ref", "scalar"}
    flags = [*build_ffi.COMPILE_ARGS, "-Werror", f"-I{build_ffi.INCLUDE}", f"-I{build_ffi.NATIVE / 'src'}"]
    for index, source in enumerate(sources):
        obj = tmp_path / f"{index}-{source.stem}.o"
        result = subprocess.run([AARCH64_CC, "-c", *flags, str(source), "-o", str(obj)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{source}:\n{result.stderr}"
        header = obj.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183, obj  # EM_AARCH64


def _harness_summary(output: str) -> tuple[list[str], dict[str, str]]:
    """The sets one check_kernels run checked, and its uniform-packed digests (inputs, per set)."""
    checked = re.findall(r"^(\S+)\s+\d+ types x \d+ cases = \d+ products, \d+ outputs against \S+, 0 mismatches",
                         output, re.MULTILINE)
    line = re.search(r"^uniform-packed digests: (.*)$", output, re.MULTILINE)
    assert line, output
    digests = dict(item.split(" ") for item in line.group(1).split(", "))
    return checked, digests


def test_kernel_harness_under_qemu(arm_tools):
    """check_kernels passes under both CPU models: neon, scalar and ref on cortex-a72 (no dot
    product), neon-dotprod (sdot) and ref on max (the Makefile's QEMU_*_SETS: a set's code is the same
    on both models, so each set runs once); avx2 is listed and not run. The packed family goes
    through neon's (ARMv8.0) multiply-add on cortex-a72 and neon-dotprod's on max, and both give,
    case for case, the bits of x86's avx2 and avx512 multiply-add paths (the harness's digests of
    the same inputs)."""
    result = make("check-kernels-aarch64", timeout=1800)
    assert result.returncode == 0, f"make check-kernels-aarch64 failed:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    runs = result.stdout.split("check_kernels: seed ")[1:]
    assert len(runs) == len(QEMU_CPUS), result.stdout
    arm_digests = {}
    for run, cpu in zip(runs, QEMU_CPUS):
        assert "\ncheck_kernels: ok\n" in run, run
        checked, digests = _harness_summary(run)
        assert checked == QEMU_SETS[cpu], run
        assert re.search(r"^avx2\s+not run: this CPU does not run it", run, re.MULTILINE), run
        if cpu == "max":
            assert re.search(r"^  neon-dotprod: .*uniform-bitplane by neon lut, uniform-packed by neon-dotprod "
                             r"multiply-add", run, re.MULTILINE), run
            assert re.search(r"^neon\s+not run: not in CHECK_KERNELS_SETS", run, re.MULTILINE), run
        else:
            assert re.search(r"^  neon: .*uniform-packed by neon multiply-add", run, re.MULTILINE), run
            assert re.search(r"^neon-dotprod\s+not run: this CPU does not run it", run, re.MULTILINE), run
        arm_digests[cpu] = digests
    assert arm_digests["cortex-a72"]["inputs"] == arm_digests["max"]["inputs"]
    assert arm_digests["cortex-a72"]["neon"] == arm_digests["max"]["neon-dotprod"]
    native = make("check-kernels")
    assert native.returncode == 0, native.stdout[-4000:]
    _, x86 = _harness_summary(native.stdout)
    multiply_add = [isa for isa in ("avx512", "avx2") if isa in x86]
    if not multiply_add:
        pytest.skip("this x86 CPU runs no multiply-add set of avx2's rounding (avx2, avx512)")
    assert x86["inputs"] == arm_digests["max"]["inputs"], "the harness drew different inputs on x86 and aarch64"
    for isa in multiply_add:
        assert x86[isa] == arm_digests["max"]["neon-dotprod"], f"x86 {isa}'s packed outputs differ from aarch64's"



def test_int8_kv_attention_helpers_under_qemu(arm_tools):
    """native/tests/check_attention.c cross-built: neon's (and neon-dotprod's, which takes neon's)
    dot_q8 / axpy_q8 / axpy_q4 against ref, and dot_f16 / axpy_f16 against float64, under both CPU
    models."""
    result = make("check-attention-aarch64", timeout=1800)
    assert result.returncode == 0, f"make check-attention-aarch64 failed:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    assert result.stdout.count("check_attention: all sets agree with ref") == len(QEMU_CPUS), result.stdout
    for cpu in QEMU_CPUS:
        for isa in QEMU_SETS[cpu]:
            for kind in ("fp16 KV)", "int8 KV,", "int4 KV values,"):
                assert re.search(rf"^check_attention: {re.escape(isa)}\s+\d+ cases \({re.escape(kind)}", result.stdout,
                                 re.MULTILINE), result.stdout

def _run(command: list[str], path: Path, prompt: list[int], isa: str | None, threads: int):
    env = {k: v for k, v in os.environ.items() if k != "EDGEQ_ISA"}
    if isa is not None:
        env["EDGEQ_ISA"] = isa
    return subprocess.run([*command, str(path), str(N_GENERATE), *map(str, prompt),
                           "--threads", str(threads), "--ctx", "64", "--verbose"],
                          capture_output=True, text=True, timeout=300, env=env)


def _generate(command: list[str], path: Path, prompt: list[int], isa: str | None, threads: int):
    result = _run(command, path, prompt, isa, threads)
    assert result.returncode == 0, result.stderr
    ids = [int(t) for t in result.stdout.split()]
    assert len(ids) == N_GENERATE
    used = result.stderr.strip().removeprefix("generate: kernel set ")
    return ids, used


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_example_under_qemu_matches_x86(built, tiny_converted, arch, bits):
    """Greedy ids of build/aarch64/generate under qemu-aarch64, with the set it picks on each CPU
    model and with every set of the list it runs forced (on the ARMv8.0 model), equal those of
    build/examples/generate (x86) with each set this machine runs."""
    from edgeq import _ffi
    path = tiny_converted(arch, bits)
    native = [str(ROOT / "build" / "examples" / "generate")]
    expected = {}
    for prompt in PROMPTS:
        # every x86 set gives the same ids: the LUT sets agree bit for bit, and a set whose
        # multiply-add prefill path takes a prompt this long (int16 activations) is as accurate
        lut_sets = [isa for isa in _ffi.kernel_sets()
                    if _ffi.kernel_route(f"u{bits}g64a", isa, batch=len(prompt))["path"] != "multiply-add"]
        expected[tuple(prompt)], _ = _generate(native, path, prompt, lut_sets[0], 1)
        for isa in _ffi.kernel_sets():
            if isa == "avx2-lut8" and bits <= 3:   # int8 tables at 2-3 bits (opt-in): other roundings
                continue
            ids, used = _generate(native, path, prompt, isa, 2)
            assert used == isa, f"x86 {isa} ran the {used} set"
            assert ids == expected[tuple(prompt)], f"x86 {isa}: {ids} (prompt {prompt})"
    binary = str(ROOT / "build" / "aarch64" / "generate")
    for cpu, best in QEMU_CPUS.items():           # the set each CPU model gets by default
        for prompt in PROMPTS:
            ids, used = _generate([QEMU, "-cpu", cpu, binary], path, prompt, None, 2)
            assert used == best, f"qemu -cpu {cpu} ran the {used} set, not {best}"
            assert ids == expected[tuple(prompt)], f"aarch64 ({cpu}, {used}): {ids} (prompt {prompt})"
    baseline = [QEMU, "-cpu", "cortex-a72", binary]   # every set of the list, forced
    runnable = []
    for isa in _ffi.all_kernel_sets():
        result = _run(baseline, path, PROMPTS[0], isa, 1)
        if result.returncode != 0:
            assert result.stderr == f"generate: error: {path}: EDGEQ_ISA={isa} names no kernel set this CPU runs\n"
            continue
        runnable.append(isa)
        for prompt in PROMPTS:
            ids, used = _generate(baseline, path, prompt, isa, 1)
            assert used == isa and ids == expected[tuple(prompt)], f"aarch64 ({isa}): {ids} (prompt {prompt})"
    assert runnable == [QEMU_CPUS["cortex-a72"], "scalar", "ref"], runnable


@pytest.fixture(scope="module")
def tiny_packed(tiny_llama, tmp_path_factory):
    """tiny_packed(bits) -> the tiny llama converted with --layout packed at `bits`, once per module."""
    from edgeq.convert import PlanSettings, convert
    folder, made = tmp_path_factory.mktemp("tiny-packed"), {}

    def get(bits: int):
        if bits not in made:
            made[bits] = folder / f"llama.p{bits}"
            convert(tiny_llama, made[bits], PlanSettings(bits=bits, layout="packed"), progress=False)
        return made[bits]
    return get


# 3: the body's 2- and 1-bit fields, the p4 embeddings' nibbles, the p6 head's nibbles and 2-bit
# fields; 8: byte quads flipped to q - 128
@pytest.mark.parametrize("bits", [3, 8])
def test_packed_file_under_qemu_matches_x86_multiply_add(built, tiny_packed, bits):
    """A file of packed (p*g*) types: build/aarch64/generate's greedy ids under qemu with neon's
    ARMv8.0 multiply-add (cortex-a72; and max with EDGEQ_ISA=neon) and neon-dotprod's sdot (max, its
    default) equal x86's with its multiply-add sets of the same rounding (avx512, avx2)."""
    from edgeq import _ffi
    from edgeq import quant_types
    from edgeq.fileformat import ModelFile
    path = tiny_packed(bits)
    packed = {t.qtype.name for t in ModelFile(path).tensors.values() if t.qtype.family == quant_types.UNIFORM_PACKED}
    assert packed, f"{path} has no packed tensors"
    x86_sets = [isa for isa in ("avx512", "avx2") if isa in _ffi.kernel_sets()]
    if not x86_sets:
        pytest.skip("this x86 CPU runs no multiply-add set of avx2's rounding (avx2, avx512)")
    for isa in x86_sets:
        for name in packed:
            assert _ffi.kernel_route(name, isa, batch=1)["path"] == "multiply-add", (isa, name)
    native = [str(ROOT / "build" / "examples" / "generate")]
    binary = str(ROOT / "build" / "aarch64" / "generate")
    prompts = PROMPTS[:2]
    for prompt in prompts:
        expected, _ = _generate(native, path, prompt, x86_sets[0], 2)
        for isa in x86_sets[1:]:
            assert _generate(native, path, prompt, isa, 2)[0] == expected, f"x86 {isa} (prompt {prompt})"
        for cpu, isa, want in (("cortex-a72", None, "neon"), ("max", None, "neon-dotprod"), ("max", "neon", "neon")):
            ids, used = _generate([QEMU, "-cpu", cpu, binary], path, prompt, isa, 2)
            assert used == want, f"qemu -cpu {cpu} (EDGEQ_ISA={isa}) ran the {used} set, not {want}"
            assert ids == expected, f"aarch64 ({cpu}, {used}): {ids}, x86 {x86_sets[0]}: {expected} (prompt {prompt})"
