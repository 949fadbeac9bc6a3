"""The C loaders as untrusted-input parsers, under AddressSanitizer/UndefinedBehaviorSanitizer and libFuzzer.

`make native-test` builds check_loader (and the example) with -fsanitize=address,undefined. From tiny
converted models this module writes a corpus: the valid files; targeted corruptions, each with the
error it must produce; truncations at many offsets (all must be refused); deterministic random byte
flips and huge values patched into every length, count, dimension and offset field (refused with one
line, or opened when the mutation was harmless). check_loader opens every file with eq_gguf_open and
eq_model_open; a sanitizer report, a crash or a leak fails the test. Then a bounded libFuzzer run
(`make fuzz`, needs clang; FUZZ_SECONDS, default 20) and the example, sanitized and not, on the tiny
models (outputs must be equal).

    python tests/test_native_safety.py --write-seeds DIR     # the fuzz seed corpus (`make fuzz` uses it)
"""
from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from native_make import make

ROOT = Path(__file__).resolve().parent.parent
CHECK_LOADER = ROOT / "build" / "asan" / "check_loader"
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:exitcode=87",
}
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None




def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# the GGUF layout, read independently of the C code, so mutations can aim at real fields
# ---------------------------------------------------------------------------------------------

SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT64 = 8, 9, 10
ELEMENT_BYTES = {0: 4, 1: 2, 24: 1}   # F32, F16, I8


@dataclass
class Field:
    """An integer in the file a mutation can overwrite."""
    at: int
    fmt: str          # struct format, "<I" or "<Q"
    what: str


@dataclass
class Layout:
    keys: list[dict]      # name, start (length field), type_at, value_at, end, type; arrays: elem_type, count_at
    tensors: list[dict]   # name, start, n_dims_at, dims_at, type_at, offset_at, end, type, offset, nbytes
    fields: list[Field]
    info_end: int
    data_start: int
    data_end: int         # end of the last tensor's data (padding may follow)


def read_layout(blob: bytes) -> Layout:
    def u32(pos):
        return struct.unpack_from("<I", blob, pos)[0]

    def u64(pos):
        return struct.unpack_from("<Q", blob, pos)[0]

    def string(pos):
        n = u64(pos)
        return blob[pos + 8:pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n

    fields = [Field(8, "<Q", "tensor count"), Field(16, "<Q", "key count"), Field(4, "<I", "version")]
    n_tensors, n_keys = u64(8), u64(16)
    pos, keys = 24, []
    for _ in range(n_keys):
        key = {"start": pos}
        fields.append(Field(pos, "<Q", "key length"))
        key["name"], pos = string(pos)
        key["type_at"], key["type"] = pos, u32(pos)
        fields.append(Field(pos, "<I", "value type"))
        pos += 4
        key["value_at"] = pos
        if key["type"] == STRING:
            fields.append(Field(pos, "<Q", "string length"))
            _, pos = string(pos)
        elif key["type"] == ARRAY:
            key["elem_type"], count = u32(pos), u64(pos + 4)
            key["count_at"] = pos + 4
            fields += [Field(pos, "<I", "element type"), Field(pos + 4, "<Q", "array count")]
            pos += 12
            for _ in range(count if key["elem_type"] == STRING else 0):
                fields.append(Field(pos, "<Q", "array string length"))
                _, pos = string(pos)
            if key["elem_type"] != STRING:
                pos += count * SCALAR_BYTES[key["elem_type"]]
        else:
            pos += SCALAR_BYTES[key["type"]]
        key["end"] = pos
        keys.append(key)
    alignment = next((u32(k["value_at"]) for k in keys if k["name"] == "general.alignment"), 32)
    tensors = []
    for _ in range(n_tensors):
        tensor = {"start": pos}
        fields.append(Field(pos, "<Q", "tensor name length"))
        tensor["name"], pos = string(pos)
        n_dims = u32(pos)
        tensor["n_dims_at"], tensor["dims_at"] = pos, pos + 4
        fields.append(Field(pos, "<I", "n_dims"))
        fields += [Field(pos + 4 + 8 * d, "<Q", "dimension") for d in range(n_dims)]
        dims = struct.unpack_from(f"<{n_dims}Q", blob, pos + 4)
        pos += 4 + 8 * n_dims
        tensor.update(type_at=pos, offset_at=pos + 4, type=u32(pos), offset=u64(pos + 4), end=pos + 12)
        tensor["nbytes"] = int(np.prod(dims)) * ELEMENT_BYTES[tensor["type"]]
        fields += [Field(pos, "<I", "tensor type"), Field(pos + 4, "<Q", "tensor offset")]
        pos += 12
        tensors.append(tensor)
    data_start = -(-pos // alignment) * alignment
    data_end = max((data_start + t["offset"] + t["nbytes"] for t in tensors), default=pos)
    return Layout(keys, tensors, fields, pos, data_start, data_end)


# ---------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    data: bytes
    expect: str            # "ok"; "error" (eq_gguf_open refuses); "any" (refused with a message, or harmless)
    message: str = ""      # a substring the eq_gguf_open error must contain
    model_ok: bool = False  # eq_model_open must accept it too (a valid edgeq file)


def _patch(blob: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _rename(blob: bytes, entry: dict, name: str) -> bytes:
    """Overwrite the name of a key or tensor with another name of the same length."""
    out = bytearray(blob)
    encoded = name.encode()
    out[entry["start"] + 8:entry["start"] + 8 + len(encoded)] = encoded
    return bytes(out)


def _same_length_pair(entries: list[dict]) -> tuple[dict, dict]:
    by_length = {}
    for entry in entries:
        other = by_length.setdefault(len(entry["name"].encode()), entry)
        if other is not entry:
            return other, entry
    raise AssertionError("no two names of the same length")


def targeted_cases(tag: str, blob: bytes) -> list[Case]:
    """Corruptions of specific fields of an edgeq file, each with the error it must produce."""
    layout = read_layout(blob)
    size = len(blob)
    keys = {k["name"]: k for k in layout.keys}
    arch, alignment = keys["general.architecture"], keys["general.alignment"]
    shape = next(k for k in layout.keys if k["type"] == ARRAY and k["elem_type"] == UINT64)
    boolean = next(k for k in layout.keys if k["type"] == 7)
    vector = next(t for t in layout.tensors if t["type"] == 0)      # an F32 norm weight
    blob_i8 = next(t for t in layout.tensors if t["type"] == 24)    # a packed tensor
    last = max(layout.tensors, key=lambda t: t["offset"])
    first = layout.tensors[0]
    past_end = -(-(size - layout.data_start) // 64) * 64    # an aligned offset at or past the end
    key_a, key_b = _same_length_pair(layout.keys)
    tensor_a, tensor_b = _same_length_pair(layout.tensors)
    newline_name = bytearray(_patch(blob, first["type_at"], "<I", 99))
    newline_name[first["start"] + 8] = ord("\n")
    nul_name = bytearray(blob)
    nul_name[first["start"] + 9] = 0

    def case(name, data, expect, message=""):
        return Case(f"{tag}-{name}", data, expect, message)

    return [
        case("magic", b"GGUG" + blob[4:], "error", "not a GGUF file"),
        case("empty", b"", "error", "empty"),
        case("three-bytes", blob[:3], "error", "not a GGUF file"),
        case("header-only", blob[:24], "error", "truncated"),
        case("version-1", _patch(blob, 4, "<I", 1), "error", "GGUF version 1"),
        case("version-2", _patch(blob, 4, "<I", 2), "ok"),
        case("version-4", _patch(blob, 4, "<I", 4), "error", "GGUF version 4"),
        case("version-big-endian", _patch(blob, 4, ">I", 3), "error", "big-endian"),
        case("tensor-count-huge", _patch(blob, 8, "<Q", 1 << 63), "error", "tensors, more than"),
        case("tensor-count-plus-1", _patch(blob, 8, "<Q", len(layout.tensors) + 1), "any"),
        case("tensor-count-minus-1", _patch(blob, 8, "<Q", len(layout.tensors) - 1), "any"),
        case("key-count-huge", _patch(blob, 16, "<Q", 2**64 - 1), "error", "metadata keys, more than"),
        case("key-count-plus-1", _patch(blob, 16, "<Q", len(layout.keys) + 1), "any"),
        case("key-count-minus-1", _patch(blob, 16, "<Q", len(layout.keys) - 1), "any"),
        case("key-length-0", _patch(blob, arch["start"], "<Q", 0), "error", "empty name"),
        case("key-length-huge", _patch(blob, arch["start"], "<Q", 1 << 63), "error",
             "truncated: metadata key #"),
        case("key-type-13", _patch(blob, arch["type_at"], "<I", 13), "error", "unknown value type 13"),
        case("string-length-huge", _patch(blob, arch["value_at"], "<Q", 2**64 - 1), "error",
             "'general.architecture'"),
        case("string-length-file-size", _patch(blob, arch["value_at"], "<Q", size), "error",
             "'general.architecture'"),
        case("array-count-huge", _patch(blob, shape["count_at"], "<Q", 1 << 62), "error", "array of"),
        case("array-count-max", _patch(blob, shape["count_at"], "<Q", 2**64 - 1), "error", "array of"),
        case("array-of-arrays", _patch(blob, shape["value_at"], "<I", ARRAY), "error", "array of arrays"),
        case("array-element-type-13", _patch(blob, shape["value_at"], "<I", 13), "error",
             "unknown element type"),
        case("array-of-strings", _patch(blob, shape["value_at"], "<I", STRING), "any"),
        case("bool-2", _patch(blob, boolean["value_at"], "<B", 2), "error", "must be 0 or 1"),
        case("alignment-3", _patch(blob, alignment["value_at"], "<I", 3), "error", "power of two"),
        case("alignment-0", _patch(blob, alignment["value_at"], "<I", 0), "error", "power of two"),
        case("alignment-8192", _patch(blob, alignment["value_at"], "<I", 8192), "error", "power of two"),
        case("alignment-float", _patch(blob, alignment["type_at"], "<I", 6), "error", "not an integer"),
        case("alignment-32", _patch(blob, alignment["value_at"], "<I", 32), "any"),
        case("duplicate-key", _rename(blob, key_b, key_a["name"]), "error", "duplicate metadata key"),
        case("n-dims-0", _patch(blob, vector["n_dims_at"], "<I", 0), "error", "dimensions"),
        case("n-dims-5", _patch(blob, vector["n_dims_at"], "<I", 5), "error", "dimensions"),
        case("n-dims-max", _patch(blob, vector["n_dims_at"], "<I", 2**32 - 1), "error", "dimensions"),
        case("dim-0", _patch(blob, vector["dims_at"], "<Q", 0), "error", "dimension of size 0"),
        case("dim-huge", _patch(blob, blob_i8["dims_at"], "<Q", 1 << 62), "error", "ends past the end"),
        case("dim-bytes-overflow", _patch(blob, vector["dims_at"], "<Q", 1 << 62), "error", "overflows 64 bits"),
        case("type-q4_0", _patch(blob, vector["type_at"], "<I", 2), "error", "ggml type Q4_0"),
        case("type-99", _patch(blob, vector["type_at"], "<I", 99), "error", "unknown ggml type 99"),
        case("type-f16-for-f32", _patch(blob, vector["type_at"], "<I", 1), "any"),
        case("offset-unaligned", _patch(blob, blob_i8["offset_at"], "<Q", blob_i8["offset"] + 1), "error",
             "not a multiple of the alignment"),
        case("offset-huge", _patch(blob, blob_i8["offset_at"], "<Q", 1 << 63), "error", "ends past the end"),
        case("offset-max-aligned", _patch(blob, blob_i8["offset_at"], "<Q", 2**64 - 64), "error",
             "ends past the end"),
        case("offset-past-end", _patch(blob, last["offset_at"], "<Q", past_end), "error", "ends past the end"),
        case("offset-overlaps", _patch(blob, last["offset_at"], "<Q", first["offset"]), "error", "overlap"),
        case("offset-overlaps-by-one-block", _patch(blob, last["offset_at"], "<Q", max(
            t["offset"] for t in layout.tensors if t is not last)), "error", "overlap"),
        case("tensor-name-length-0", _patch(blob, first["start"], "<Q", 0), "error", "bytes long"),
        case("tensor-name-length-300", _patch(blob, first["start"], "<Q", 300), "error", "bytes long"),
        case("tensor-name-length-huge", _patch(blob, first["start"], "<Q", 2**64 - 1), "error",
             "the name of tensor #0"),
        case("duplicate-tensor", _rename(blob, tensor_b, tensor_a["name"]), "error", "duplicate tensor name"),
        case("newline-in-name", bytes(newline_name), "error", "unknown ggml type 99"),
        case("nul-in-name", bytes(nul_name), "error", "holds a NUL byte"),
        case("data-cut-at-last-byte", blob[:layout.data_end - 1], "error", "ends past the end"),
    ]


def random_cases(tag: str, blob: bytes, seed: int, n_truncations=60, n_boundaries=120, n_flips=150,
                 n_patches=150) -> list[Case]:
    """Deterministic truncations, byte flips in the header/metadata/tensor-info region, and
    interesting values patched into real fields."""
    rng = random.Random(seed)
    layout = read_layout(blob)
    boundaries = {layout.info_end, layout.data_start, layout.data_end - 1}
    for key in layout.keys:
        boundaries |= {key["start"], key["start"] + 8, key["type_at"], key["value_at"], key["end"] - 1}
    for tensor in layout.tensors:
        start = layout.data_start + tensor["offset"]
        boundaries |= {tensor["start"], tensor["type_at"], tensor["offset_at"], tensor["end"] - 1, start,
                       start + tensor["nbytes"] - 1}
    boundaries = sorted(b for b in boundaries if 0 < b < layout.data_end)
    offsets = set(range(0, 64)) | set(rng.sample(boundaries, min(n_boundaries, len(boundaries))))
    offsets |= {rng.randrange(layout.data_end) for _ in range(n_truncations)}
    cases = [Case(f"{tag}-cut-{n}", blob[:n], "error") for n in sorted(offsets)]
    for i in range(n_flips):
        out = bytearray(blob)
        for _ in range(rng.choice((1, 1, 2, 4))):
            out[rng.randrange(layout.info_end)] ^= rng.randrange(1, 256)
        cases.append(Case(f"{tag}-flip-{i}", bytes(out), "any"))
    for i in range(n_patches):
        field = rng.choice(layout.fields)
        limit = 2**32 if field.fmt == "<I" else 2**64
        old = struct.unpack_from(field.fmt, blob, field.at)[0]
        value = rng.choice([0, 1, 2, 3, 4, 5, 9, 12, 13, 24, 63, 255, 2**31, 2**32 - 1, 2**32, 2**62,
                            2**63, len(blob), len(blob) - layout.data_start, old - 1, old + 1, old * 2,
                            old + 64, limit - 1]) % limit
        cases.append(Case(f"{tag}-patch-{i}-{field.what.replace(' ', '-')}-{value}",
                          _patch(blob, field.at, field.fmt, value), "any"))
    return cases


def value_cases(tag: str, blob: bytes) -> list[Case]:
    """Every model hyper-parameter (integer, float and bool keys outside edgeq.tensor.*) set to edge
    values: the model loader must refuse them or run with them, within bounded memory."""
    layout = read_layout(blob)
    integers = {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
    cases = []
    for key in layout.keys:
        if key["name"].startswith("edgeq.tensor."):
            continue
        if key["type"] in integers:
            fmt = integers[key["type"]]
            old = struct.unpack_from(fmt, blob, key["value_at"])[0]
            values = {0, 1, 2, old - 1, old + 1, old * 2, old * 1000, 2**31 - 1}
            values |= {2**32 - 1} if fmt == "<I" else {-1} if fmt in ("<i", "<q") else {2**63}
        elif key["type"] in (6, 12):
            fmt = "<f" if key["type"] == 6 else "<d"
            values = {0.0, -1.0, 1e30, float("inf"), float("nan")}
        elif key["type"] == 7:
            fmt, values = "<B", {0, 1}
        else:
            continue
        for value in sorted(values, key=str):
            bounds = {"<I": (0, 2**32), "<i": (-2**31, 2**31), "<Q": (0, 2**64), "<q": (-2**63, 2**63)}
            low, high = bounds.get(fmt, (-float("inf"), float("inf")))
            if not low <= value < high:
                continue
            patched = _patch(blob, key["value_at"], fmt, value)
            cases.append(Case(f"{tag}-value-{key['name']}-{value}", patched, "any"))
    return cases


def write_synthetic(path: Path, n_tensors: int = 4, n_extra_keys: int = 0, big_string: int = 0) -> Path:
    """A small GGUF (not an edgeq model) with a key of every value type, arrays (strings included)
    and F32/F16/I8 tensors of 1 to 4 dimensions: the getters' test file, and a compact fuzz seed."""
    import gguf
    vt = gguf.GGUFValueType
    writer = gguf.GGUFWriter(path, "edgeq-test")
    writer.add_custom_alignment(64)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_int8("t.i8pos", 7)
    writer.add_uint16("t.u16", 65535)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 2**32 - 1)
    writer.add_int32("t.i32", 123)
    writer.add_float32("t.f32", 1.5)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "hello")
    writer.add_uint64("t.u64", 2**40)
    writer.add_uint64("t.u64small", 9)
    writer.add_int64("t.i64", -1)
    writer.add_float64("t.f64", 0.1)
    writer.add_key_value("t.arr.u64", [1, 2, 2**63], vt.ARRAY, sub_type=vt.UINT64)
    writer.add_key_value("t.arr.u32", [1, 2], vt.ARRAY, sub_type=vt.UINT32)
    writer.add_array("t.arr.str", ["a", "bc", ""])
    writer.add_array("t.arr.bool", [True, False])
    writer.add_key_value("t.arr.f64", [0.5, -2.0], vt.ARRAY, sub_type=vt.FLOAT64)
    if big_string:
        writer.add_string("t.big", "x" * big_string)
    for i in range(n_extra_keys):
        writer.add_uint32(f"t.extra.{i}.bits", i)
    shapes = [((3, 4), np.float32), ((2, 3, 4), np.float16), ((5,), np.int8), ((1, 2, 1, 3), np.float32)]
    for i in range(n_tensors):
        dims, dtype = shapes[i % len(shapes)]
        writer.add_tensor(f"tensor.{i}", (np.arange(np.prod(dims)) % 7 + i).astype(dtype).reshape(dims))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def convert_tiny(folder: Path, out: Path) -> Path:
    from edgeq.convert import PlanSettings, convert
    convert(folder, out, PlanSettings(bits=4), progress=False)
    return out


def seed_files(models: list[Path], folder: Path) -> list[Path]:
    """The fuzz seeds: the models, the synthetic file and every targeted corruption of the first model."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = []
    for model in models:
        seeds.append(folder / model.name)
        shutil.copyfile(model, seeds[-1])
    seeds.append(write_synthetic(folder / "synthetic.gguf"))
    for case in targeted_cases("seed", models[0].read_bytes()):
        seeds.append(folder / case.name)
        seeds[-1].write_bytes(case.data)
    return seeds


# ---------------------------------------------------------------------------------------------
# running check_loader
# ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    gguf: str      # "OK" or "error: ..."
    model: str     # "OK" or "error: ..."


def run_check_loader(paths: list[Path], *options: str, batch: int = 250) -> tuple[dict[str, Outcome], str]:
    """Outcomes by path, and the stdout text; fails the test on a crash or sanitizer report."""
    env = {**os.environ, **SANITIZER_ENV}

    def run(chunk):
        return subprocess.run([str(CHECK_LOADER), *options, *map(str, chunk)], capture_output=True,
                              text=True, errors="replace", timeout=600, env=env)

    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, chunks))
    outcomes, text = {}, ""
    for chunk, result in zip(chunks, results):
        report = [m for m in SANITIZER_MARKERS if m in result.stderr]
        assert result.returncode == 0 and not report, (
            f"check_loader crashed (exit {result.returncode}) on one of {chunk[0]} .. {chunk[-1]}:\n"
            f"{_tail(result.stdout, 3)}\n{_tail(result.stderr)}")
        text += result.stdout
        for line in result.stdout.splitlines():
            parts = line.split("\t", 2)   # the model's message may quote a tab from the file
            if len(parts) == 3 and parts[1].startswith("gguf: ") and parts[2].startswith("model: "):
                outcomes[parts[0]] = Outcome(parts[1][len("gguf: "):], parts[2][len("model: "):])
    missing = [str(p) for p in paths if str(p) not in outcomes]
    assert not missing, f"check_loader printed no well-formed line for {missing[:5]}"
    return outcomes, text


def judge(case: Case, outcome: Outcome) -> str | None:
    """What is wrong with this outcome, or None."""
    for label, status in (("gguf", outcome.gguf), ("model", outcome.model)):
        if status.startswith("error:") and (len(status) < len("error: ") + 8 or "not one clean line" in status
                                             or "(no message)" in status):
            return f"{label} message is empty or not one line: {status!r}"
    if outcome.gguf != "OK" and outcome.model == "OK":
        return f"the model loader accepted a file the GGUF loader refused ({outcome.gguf})"
    if case.expect == "ok" and outcome.gguf != "OK":
        return f"refused: {outcome.gguf}"
    if case.model_ok and outcome.model != "OK":
        return f"model refused: {outcome.model}"
    if case.expect == "error":
        if outcome.gguf == "OK":
            return "opened, but it must be refused"
        if case.message not in outcome.gguf:
            return f"error {outcome.gguf!r} does not say {case.message!r}"
    return None


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def native_build():
    compiler = os.environ.get("NATIVE_CC", "gcc")
    if not _have(compiler) or not _have("make"):
        pytest.skip(f"no C compiler ({compiler}) or make")
    result = make("native-test")
    assert result.returncode == 0, f"make native-test failed:\n{_tail(result.stdout + result.stderr)}"
    return CHECK_LOADER


@pytest.fixture(scope="module")
def tiny_files(tiny_llama, tiny_qwen, tmp_path_factory):
    folder = tmp_path_factory.mktemp("native-safety")
    return [convert_tiny(tiny_llama, folder / "llama.q4"), convert_tiny(tiny_qwen, folder / "qwen2.q4")]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def test_getters_and_tensors_match_gguf_py(native_build, tmp_path):
    """Every getter's answer on a key of every type, and every tensor's name, type, dims, size and
    bytes, against gguf-py's reader of the same file."""
    import gguf
    path = write_synthetic(tmp_path / "synthetic.gguf")
    keys = ["t.u8", "t.i8", "t.i8pos", "t.u16", "t.i16", "t.u32", "t.i32", "t.f32", "t.bool", "t.str",
            "t.u64", "t.u64small", "t.i64", "t.f64", "t.arr.u64", "t.arr.u32", "t.arr.str",
            "no.such.key"]
    _, text = run_check_loader([path], "--describe", ",".join(keys))
    got = {parts[1]: parts[2:] for parts in (line.split("\t") for line in text.splitlines())
           if parts[0] == "key"}
    NF, FMT = "-9", "-10"   # EQ_ERR_NOT_FOUND, EQ_ERR_FORMAT
    expected = {          # u32, f64, bool, str, u64 array
        "t.u8": ["200", FMT, FMT, FMT, FMT],
        "t.i8": [FMT, FMT, FMT, FMT, FMT],                    # negative: not a u32
        "t.i8pos": ["7", FMT, FMT, FMT, FMT],
        "t.u16": ["65535", FMT, FMT, FMT, FMT],
        "t.i16": [FMT, FMT, FMT, FMT, FMT],
        "t.u32": ["4294967295", FMT, FMT, FMT, FMT],
        "t.i32": ["123", FMT, FMT, FMT, FMT],
        "t.f32": [FMT, "1.5", FMT, FMT, FMT],
        "t.bool": [FMT, FMT, "true", FMT, FMT],
        "t.str": [FMT, FMT, FMT, "5:hello", FMT],
        "t.u64": [FMT, FMT, FMT, FMT, FMT],                   # 2^40 does not fit
        "t.u64small": ["9", FMT, FMT, FMT, FMT],
        "t.i64": [FMT, FMT, FMT, FMT, FMT],
        "t.f64": [FMT, "0.10000000000000001", FMT, FMT, FMT],
        "t.arr.u64": [FMT, FMT, FMT, FMT, f"1,2,{2**63}"],
        "t.arr.u32": [FMT, FMT, FMT, FMT, FMT],               # only UINT64 arrays are shapes
        "t.arr.str": [FMT, FMT, FMT, FMT, FMT],
        "no.such.key": [NF, NF, NF, NF, NF],
    }
    for key, values in expected.items():
        labels = ("u32", "f64", "bool", "str", "u64s")
        assert got[key] == [f"{label}={value}" for label, value in zip(labels, values)], key

    reader = gguf.GGUFReader(path)
    tensors = [line.split("\t")[1:] for line in text.splitlines() if line.startswith("tensor\t")]
    assert len(tensors) == len(reader.tensors)
    for (name, type_id, dims, n_dims, nbytes, digest), tensor in zip(tensors, reader.tensors):
        data = bytes(np.asarray(tensor.data).tobytes())
        shape = [int(d) for d in tensor.shape] + [1] * (4 - len(tensor.shape))
        assert (name, int(type_id), dims, int(n_dims), int(nbytes)) == \
            (tensor.name, int(tensor.tensor_type), ",".join(map(str, shape)), len(tensor.shape), len(data))
        assert int(digest, 16) == _fnv1a64(data), name


def _fnv1a64(data: bytes) -> int:
    value = 14695981039346656037
    for byte in data:
        value = ((value ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return value


def test_converted_models_match_gguf_py(native_build, tiny_files):
    """The real converted files: every tensor found where gguf-py finds it, and the model loader opens them."""
    import gguf
    for path in tiny_files:
        outcomes, text = run_check_loader([path], "--describe", "general.alignment")
        assert outcomes[str(path)].gguf == "OK"
        assert outcomes[str(path)].model == "OK"
        described = {parts[1]: parts for parts in (line.split("\t") for line in text.splitlines())
                     if parts[0] == "tensor"}
        reader = gguf.GGUFReader(path)
        assert sorted(described) == sorted(t.name for t in reader.tensors)
        for tensor in reader.tensors:
            assert int(described[tensor.name][6], 16) == _fnv1a64(bytes(np.asarray(tensor.data).tobytes()))
        assert "key\tgeneral.alignment\tu32=64\t" in text


def test_corrupted_files_are_refused_cleanly(native_build, tiny_files, tmp_path):
    """Targeted corruptions give their specific one-line error; truncations are always refused;
    random flips and patched-in huge values are refused with one line or harmless. No sanitizer report."""
    cases = []
    for index, path in enumerate(tiny_files):
        blob = path.read_bytes()
        tag = path.stem
        cases.append(Case(f"{tag}-valid", blob, "ok", model_ok=True))
        cases += targeted_cases(tag, blob)
        cases += random_cases(tag, blob, seed=1234 + index)
        cases += value_cases(tag, blob)
    synthetic = write_synthetic(tmp_path / "synthetic.gguf").read_bytes()
    cases.append(Case("synthetic-valid", synthetic, "ok"))
    cases += random_cases("synthetic", synthetic, seed=99)
    paths = []
    for case in cases:
        paths.append(tmp_path / case.name)
        paths[-1].write_bytes(case.data)
    outcomes, _ = run_check_loader(paths)
    problems = [f"{case.name}: {problem}" for case, path in zip(cases, paths)
                if (problem := judge(case, outcomes[str(path)])) is not None]
    assert not problems, f"{len(problems)} of {len(cases)} files:\n" + "\n".join(problems[:20])
    refused = sum(outcomes[str(p)].gguf != "OK" for p in paths)
    assert refused > len(cases) // 2   # the corpus really is mostly broken files


def test_model_errors_quoting_the_file_are_one_line(native_build, tiny_files, tmp_path):
    """Strings from the file with a newline or tab in them (architecture, rope scaling, quant type
    names) still give a one-line error from the model loader."""
    blob = tiny_files[0].read_bytes()
    layout = read_layout(blob)
    paths = []
    for key in layout.keys:
        if key["type"] == STRING and key["name"] in ("general.architecture", "edgeq.arch",
                                                     "edgeq.rope_scaling_type") or \
                key["name"] == "edgeq.tensor.blk.0.attn_q.weight.type":
            for char in "\n\r\t":
                out = bytearray(blob)
                out[key["value_at"] + 9] = ord(char)
                paths.append(tmp_path / f"{key['name']}-{ord(char)}")
                paths[-1].write_bytes(bytes(out))
    assert len(paths) == 12
    outcomes, _ = run_check_loader(paths)
    problems = [f"{path.name}: {problem}" for path in paths
                if (problem := judge(Case(path.name, b"", "any"), outcomes[str(path)])) is not None]
    assert not problems, "\n".join(problems)


def test_open_is_fast(native_build, tmp_path):
    """A file shaped like a real model (300 tensors, ~2000 keys, a 2 MB tokenizer string) opens in
    well under 50 ms, even under ASan."""
    path = write_synthetic(tmp_path / "wide.gguf", n_tensors=300, n_extra_keys=1800, big_string=2_000_000)
    _, text = run_check_loader([path], "--bench", "5")
    milliseconds = float(re.search(r"best of 5: ([0-9.]+) ms", text).group(1))
    assert milliseconds < 50, text


def test_example_sanitized_matches_plain(native_build, tiny_files, tmp_path):
    """build/examples/generate (gcc -O2) and build/asan/generate print the same greedy tokens, at 1
    and 2 threads; a corrupted file is a one-line error and a non-zero exit."""
    result = make("example")
    assert result.returncode == 0, _tail(result.stdout + result.stderr)
    env = {**os.environ, **SANITIZER_ENV}

    def generate(binary, *args):
        return subprocess.run([str(ROOT / "build" / binary / "generate"), *map(str, args)],
                              capture_output=True, text=True, timeout=120, env=env)

    for path in tiny_files:
        outputs = set()
        for threads in (1, 2):
            args = (path, 12, 1, 2, 3, 4, "--threads", threads, "--ctx", 64)
            plain, sanitized = generate("examples", *args), generate("asan", *args)
            assert plain.returncode == 0, plain.stderr
            assert sanitized.returncode == 0, _tail(sanitized.stderr)
            assert plain.stdout == sanitized.stdout
            ids = [int(t) for t in plain.stdout.split()]
            assert len(ids) == 12 and all(0 <= t < 384 for t in ids)
            outputs.add(plain.stdout)
        assert len(outputs) == 1, f"{path.name}: 1 and 2 threads disagree: {outputs}"

    broken = tmp_path / "broken.q4"
    broken.write_bytes(tiny_files[0].read_bytes()[:5000])
    result = generate("asan", broken, 4, 1)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("generate: error: ") and result.stderr.count("\n") == 1, result.stderr


def test_fuzz_loader(native_build, tiny_files, tmp_path):
    """A bounded libFuzzer run (FUZZ_SECONDS, default 20) over seeds made from the tiny models: no crash."""
    compiler = os.environ.get("FUZZ_CC", "clang")
    if not _have(compiler):
        pytest.skip(f"{compiler} is not installed (`make fuzz-deps` installs it)")
    seconds = int(os.environ.get("FUZZ_SECONDS", "20"))
    corpus = tmp_path / "corpus"
    seed_files(tiny_files, corpus)
    result = make("fuzz", f"FUZZ_SECONDS={seconds}", f"FUZZ_CORPUS={corpus}", timeout=seconds + 600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the fuzzer found a crash (build/fuzz/artifacts/):\n{_tail(output, 60)}"
    assert "Done" in output and "stat::number_of_executed_units" in output, _tail(output)


# ---------------------------------------------------------------------------------------------
# hostile shapes of a whole file: colliding key names, too many keys or tensors
# ---------------------------------------------------------------------------------------------

FNV_PRIME_LOW16 = 1099511628211 & 0xFFFF
FNV_BASIS_LOW16 = 14695981039346656037 & 0xFFFF


def fnv_colliding_names(count: int) -> list[bytes]:
    """Distinct names whose 64-bit FNV-1a hashes (the loader's unseeded hash before SipHash) all
    end in 16 zero bits: with 2^15 keys they all start probing at slot 0 of a 2^16-slot table.
    The low 16 bits of an FNV-1a state depend only on the low 16 bits before each step, so three
    chosen bytes after any prefix steer them: the last must undo a state below 256."""
    inverse = pow(FNV_PRIME_LOW16, -1, 1 << 16)
    # high byte of s2 * inverse -> a final byte s2 (1..255) with (s2 ^ s2) * p == 0
    final_by_high = {}
    for last in range(1, 256):
        final_by_high.setdefault((last * inverse & 0xFFFF) >> 8, last)
    names, serial = [], 0
    while len(names) < count:
        prefix = b"collide.%08d." % serial
        serial += 1
        state = FNV_BASIS_LOW16
        for byte in prefix + b"x":
            state = ((state ^ byte) * FNV_PRIME_LOW16) & 0xFFFF
        last = final_by_high.get(state >> 8)
        if last is None:
            continue
        middle = (state & 0xFF) ^ (last * inverse & 0xFF)    # (state ^ middle) == last * inverse
        if middle == 0:
            continue
        name = prefix + b"x" + bytes([middle, last])
        names.append(name)
    return names


def _fnv1a64_low16(data: bytes) -> int:
    return _fnv1a64(data) & 0xFFFF


def write_keys_only(path: Path, names: list[bytes]) -> Path:
    """A GGUF v3 file with no tensors and one uint32 key per name."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, len(names)))
    for i, name in enumerate(names):
        out += struct.pack("<Q", len(name)) + name + struct.pack("<II", 4, i)
    path.write_bytes(bytes(out))
    return path


def test_colliding_key_names_open_fast(native_build, tmp_path):
    """2^15 keys that all collide under the old unseeded FNV-1a index (1.5 s to open before the
    per-open SipHash seed; quadratic in the count) open in well under 100 ms, even under ASan."""
    names = fnv_colliding_names(1 << 15)
    assert len(set(names)) == len(names) and {_fnv1a64_low16(n) for n in names[:64]} == {0}
    path = write_keys_only(tmp_path / "colliding.gguf", names)
    outcomes, text = run_check_loader([path], "--bench", "3")
    assert outcomes[str(path)].gguf == "OK"
    milliseconds = float(re.search(r"best of 3: ([0-9.]+) ms", text).group(1))
    assert milliseconds < 100, text


def test_more_keys_or_tensors_than_an_edgeq_file_has_are_refused(native_build, tmp_path):
    """The caps (8 keys per tensor + 4096, 65536 tensors) refuse a header that the file size could back."""
    max_tensors = 1 << 16
    max_keys = 8 * max_tensors + 4096
    keys = tmp_path / "too-many-keys.gguf"
    keys.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, max_keys + 1) + bytes(14 * (max_keys + 1)))
    tensors = tmp_path / "too-many-tensors.gguf"
    tensors.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, max_tensors + 1, 0) + bytes(37 * (max_tensors + 1)))
    at_cap = write_keys_only(tmp_path / "at-cap.gguf", [b"k.%d" % i for i in range(max_keys)])
    outcomes, _ = run_check_loader([keys, tensors, at_cap])
    assert outcomes[str(keys)].gguf == f"error: unsupported: the header claims {max_keys + 1} metadata keys, " \
                                       f"more than the {max_keys} an edgeq file may have"
    assert outcomes[str(tensors)].gguf == f"error: unsupported: the header claims {max_tensors + 1} tensors, " \
                                          f"more than the {max_tensors} an edgeq file may have"
    assert outcomes[str(at_cap)].gguf == "OK"
    from edgeq.errors import EdgeqError
    from edgeq.gguffile import GGUFFile     # the Python reader applies the same caps, with the same words
    for path, outcome in ((keys, outcomes[str(keys)]), (tensors, outcomes[str(tensors)])):
        with pytest.raises(EdgeqError) as refused:
            GGUFFile(path)
        assert outcome.gguf.removeprefix("error: ") in str(refused.value)
    GGUFFile(at_cap)


# ---------------------------------------------------------------------------------------------
# the format-compatibility policy, C side (edgeq.load on the committed version-1 fixture)
# ---------------------------------------------------------------------------------------------

FIXTURE_V1 = ROOT / "tests" / "data" / "compat" / "format-v1-qwen2.q4"
FIXTURE_PROMPT = [5, 6, 7, 8, 9, 10]
FIXTURE_GREEDY = [53, 305, 90, 305, 145, 227, 146, 227, 63, 19, 63, 19, 63, 15, 121, 282]   # its README


def _key_value(layout: Layout, name: str) -> dict:
    return next(k for k in layout.keys if k["name"] == name)


def add_key(blob: bytes, encoded_key: bytes) -> bytes:
    """The file with one more metadata key (its bytes: name, type, value) after the last one; the
    tensor infos and data move, realigned, and tensor offsets (relative to the data) stay valid."""
    layout = read_layout(blob)
    alignment = struct.unpack_from("<I", blob, _key_value(layout, "general.alignment")["value_at"])[0]
    keys_end = layout.keys[-1]["end"]
    head = bytearray(blob[:keys_end] + encoded_key + blob[keys_end:layout.info_end])
    struct.pack_into("<Q", head, 16, len(layout.keys) + 1)
    head += bytes(-len(head) % alignment)
    return bytes(head) + blob[layout.data_start:]


def string_array_key(name: str, values: list[str]) -> bytes:
    out = struct.pack("<Q", len(name)) + name.encode() + struct.pack("<IIQ", ARRAY, STRING, len(values))
    for value in values:
        out += struct.pack("<Q", len(value.encode())) + value.encode()
    return out


def _greedy(path: Path, n: int = len(FIXTURE_GREEDY)) -> list[int]:
    from edgeq import _ffi
    handle = _ffi.model_open(path, threads=1, ctx=64)
    try:
        logits, ids = _ffi.model_eval(handle, FIXTURE_PROMPT), []
        for _ in range(n):
            ids.append(int(np.argmax(logits)))
            logits = _ffi.model_eval(handle, [ids[-1]])
        return ids
    finally:
        _ffi.model_close(handle)


def _open_error(path: Path) -> str:
    from edgeq import _ffi
    from edgeq.errors import EdgeqError
    with pytest.raises(EdgeqError) as error:
        _ffi.model_open(path, threads=1, ctx=64)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def test_library_version_is_the_package_version():
    import edgeq
    from edgeq import _ffi
    assert _ffi.version() == edgeq.__version__


def test_format_version_1_fixture_loads_and_decodes():
    """The committed version-1 file opens in C through edgeq.load and greedy-decodes its README's ids."""
    import edgeq
    with edgeq.load(FIXTURE_V1, threads=1, ctx=64) as model:
        assert model.info["arch"] == "qwen2"
    assert _greedy(FIXTURE_V1) == FIXTURE_GREEDY


def test_format_versions_and_required_features(tmp_path):
    """Version 2 (with or without an empty edgeq.required_features) reads like version 1; version 3,
    a feature this edgeq lacks and an unknown quant type are refused, naming the writer's version."""
    blob = FIXTURE_V1.read_bytes()
    layout = read_layout(blob)
    version_at = _key_value(layout, "edgeq.format_version")["value_at"]
    writer_at = _key_value(layout, "edgeq.converter_version")["value_at"]
    writer = blob[writer_at + 8:writer_at + 8 + struct.unpack_from("<Q", blob, writer_at)[0]].decode()
    from edgeq import _ffi
    this = _ffi.version()
    v2 = _patch(blob, version_at, "<I", 2)
    files = {
        "v2": v2,
        "v2-no-features": add_key(v2, string_array_key("edgeq.required_features", [])),
        "v3": _patch(blob, version_at, "<I", 3),
        "v0": _patch(blob, version_at, "<I", 0),
        "v2-future": add_key(v2, string_array_key("edgeq.required_features", ["future-thing"])),
        "v2-features-not-strings": add_key(v2, struct.pack("<Q", 23) + b"edgeq.required_features" +
                                           struct.pack("<IIQI", ARRAY, 4, 1, 7)),
    }
    type_key = _key_value(layout, "edgeq.tensor.blk.0.attn_q.weight.type")
    qtype = blob[type_key["value_at"] + 8:type_key["end"]]
    files["unknown-qtype"] = blob[:type_key["value_at"] + 8] + b"z" * len(qtype) + blob[type_key["end"]:]
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.q4"
        paths[name].write_bytes(data)
    assert _greedy(paths["v2"], 4) == FIXTURE_GREEDY[:4]
    assert _greedy(paths["v2-no-features"], 4) == FIXTURE_GREEDY[:4]
    assert _open_error(paths["v3"]) == (f"edgeq format version 3, written by edgeq {writer}; this edgeq "
                                        f"({this}) reads versions 1\u20132: upgrade edgeq")
    assert _open_error(paths["v0"]).startswith("edgeq format version 0, written by")
    assert _open_error(paths["v2-future"]) == (f"needs feature 'future-thing' (written by edgeq {writer}), "
                                               f"which this edgeq ({this}) does not have; upgrade edgeq")
    assert _open_error(paths["v2-features-not-strings"]) == \
        "metadata edgeq.required_features is not an array of strings"
    assert _open_error(paths["unknown-qtype"]) == (
        f"tensor blk.0.attn_q.weight has quant type '{'z' * len(qtype)}' (written by edgeq {writer}), which "
        f"this edgeq ({this}) does not know; upgrade edgeq")


def test_dimensions_whose_buffers_overflow_32_bits_are_refused(tmp_path):
    """vocab 2^24 x dim 2^16 (2^40 weights: past a 32-bit size_t, and not what the file holds) and a
    context x layers x kv_dim past any address space are refused with one line, nothing allocated."""
    blob = FIXTURE_V1.read_bytes()
    layout = read_layout(blob)
    huge = blob
    for name, value in (("edgeq.vocab_size", 1 << 24), ("edgeq.dim", 1 << 16), ("edgeq.hidden_dim", 1 << 18)):
        huge = _patch(huge, _key_value(layout, name)["value_at"], "<I", value)
    path = tmp_path / "huge.q4"
    path.write_bytes(huge)
    message = _open_error(path)
    assert "token_embd.weight" in message, message


# ---------------------------------------------------------------------------------------------
# python tests/test_native_safety.py --write-seeds DIR
# ---------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--write-seeds":
        print("usage: python tests/test_native_safety.py --write-seeds DIR", file=sys.stderr)
        return 2
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_models import make_tiny_hf_model
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        models = [convert_tiny(make_tiny_hf_model(scratch / arch, arch=arch), scratch / f"{arch}.q4")
                  for arch in ("llama", "qwen2")]
        seeds = seed_files(models, Path(argv[1]))
    print(f"wrote {len(seeds)} seeds to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
