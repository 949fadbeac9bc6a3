"""The C quant-type table and reference kernels against their numpy twin (edgeq.quant_types).

Every packed type, random shapes (rows not a multiple of 16, cols not a multiple of the group),
random levels, scales and mins: C dequantize equals numpy bit for bit, row ranges match, C gemv
equals float64 W @ x up to the final float32 rounding, and bad arguments are clean errors.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq import _ffi, quant_types
from edgeq.errors import EdgeqError
from edgeq.quant_types import TILE_ROWS, TYPES, QuantType, pack, unpack
from edgeq.quant_types import dequantize as numpy_dequantize

HEADER = Path(__file__).resolve().parents[1] / "native" / "include" / "edgeq.h"
PACKED = [qtype for qtype in TYPES.values() if qtype.is_uniform()]      # bit-plane and packed levels
PLAIN = [qtype for qtype in TYPES.values() if qtype.family == quant_types.PLAIN]
SHAPES_FOR_NBYTES = [(1, 1), (16, 32), (17, 33), (15, 128), (100, 130), (576, 1536), (4097, 11008)]


def random_packed(qtype: QuantType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Packed bytes of a (rows, cols) tensor with random levels, scales and mins.

    Padding rows and columns get random levels too (not zeros), so the tests see that C never
    reads them into the logical result. A partial last group is stored compactly (quant_types). Scales mix normal and subnormal fp16 values, signs included.
    """
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    n_groups = padded_cols // qtype.group
    levels = rng.integers(0, 1 << qtype.bits, size=(padded_rows, padded_cols), dtype=np.uint8)
    scales = rng.normal(0.0, 0.05, size=(padded_rows, n_groups))
    tiny = rng.random(scales.shape) < 0.1
    scales[tiny] = rng.normal(0.0, 3e-6, size=int(tiny.sum()))     # fp16 subnormals (< 6.1e-5)
    mins = None if qtype.symmetric else rng.normal(0.0, 0.5, size=(padded_rows, n_groups))
    if qtype.family == quant_types.CODEBOOK:     # indices (v2: per pair) into each tile's random entries
        span = qtype.index_span()
        indices = rng.integers(0, 16, size=(padded_rows, padded_cols // span), dtype=np.uint8)
        books = rng.integers(-64, 64, size=(padded_rows // TILE_ROWS, 16 * span))
        return quant_types.pack_codebook(qtype, indices, scales.astype(np.float16), books, cols,
                                         None if mins is None else mins.astype(np.float16))
    return pack(qtype, levels, scales.astype(np.float16), None if mins is None else mins.astype(np.float16), cols)


def random_shapes(qtype: QuantType, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A fixed awkward shape, an aligned one, one per stored width of a partial last group (32 ..
    G - 32 columns, reached from below and exactly), and two random ones per type."""
    group = qtype.group
    shapes = [(33, 2 * group + 5), (2 * TILE_ROWS, 2 * group)]
    for width in range(32, group, 32):
        shapes += [(19, group + width - 7), (7, width)]
    for _ in range(2):
        shapes.append((int(rng.integers(1, 70)), int(rng.integers(1, 3 * group + 20))))
    return shapes


def as_bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


def scales_and_mins(qtype: QuantType, data: np.ndarray, rows: int, cols: int, with_levels: bool = False):
    """(levels (Mp, Ks) as numbers: a codebook type's indices looked up in its tiles' levels, scales,
    mins or None) of any grouped type; without with_levels, (None, scales, mins)."""
    if qtype.family == quant_types.CODEBOOK:
        indices, scales, books, mins = quant_types.unpack_codebook(qtype, data, rows, cols)
        levels = quant_types.codebook_levels(qtype, indices, books).astype(np.int16)   # (twin: tests/test_codebook.py)
    else:
        levels, scales, mins = unpack(qtype, data, rows, cols)
    return (levels if with_levels else None), scales, mins


def symmetric_zero(qtype: QuantType) -> float:
    """z in w = scale (q - z) of a symmetric uniform type, written out here (not QuantType.zero_point)."""
    return float(2 ** (qtype.bits - 1)) if qtype.integer_zero else (2 ** qtype.bits - 1) / 2.0


def exact_weights(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float64 weights without float32 rounding: scale*q + min is computed exactly.

    numpy's float32 dequantize rounds scale*q + min once more (symmetric values are exact in
    float32: an 11-bit fp16 mantissa times a <= 9-bit half-integer), and gemv works with the exact
    values, so this is the oracle to hold gemv to a tight tolerance."""
    levels, scales, mins = scales_and_mins(qtype, data, rows, cols, with_levels=True)
    expand = lambda a: np.repeat(a.astype(np.float64), qtype.group, axis=1)[:, :levels.shape[1]]
    q = levels.astype(np.float64)
    if qtype.family == quant_types.CODEBOOK:     # q: the tile's level of each index, no zero point
        weights = expand(scales) * q + (0.0 if mins is None else expand(mins))
    elif qtype.symmetric:
        weights = expand(scales) * (q - symmetric_zero(qtype))
    else:
        weights = expand(scales) * q + expand(mins)
    return weights[:rows, :cols]


def assert_gemv_close(y: np.ndarray, weights: np.ndarray, x: np.ndarray, weight_rounding: float = 0.0) -> None:
    """y must equal float64 W @ x up to its own float32 rounding (half an ulp), a tiny accumulation
    allowance (the reference accumulates in double) and, if the weights were rounded to float32
    after the fact, weight_rounding; the last two are relative to Σ|w||x|."""
    exact = weights.astype(np.float64) @ x.astype(np.float64)
    magnitude = np.abs(weights.astype(np.float64)) @ np.abs(x.astype(np.float64))
    allowed = 2.0 ** -24 * np.abs(exact) * (1 + 1e-9) + (1e-12 + weight_rounding) * magnitude + 1e-30
    error = np.abs(y.astype(np.float64) - exact)
    worst = int(np.argmax(error / allowed))
    assert np.all(error <= allowed), (
        f"row {worst}: got {y[worst]!r}, float64 {exact[worst]!r}, error {error[worst]:.3g} "
        f"> allowed {allowed[worst]:.3g}")


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def test_c_table_equals_python_table():
    c_rows = _ffi.qtype_table()
    python_rows = [
        {"name": q.name, "id": q.id, "family": q.family, "bits": q.bits, "group": q.group,
         "symmetric": q.symmetric}
        for q in sorted(TYPES.values(), key=lambda q: q.id)
    ]
    assert c_rows == python_rows


def test_header_enum_equals_python_ids():
    text = HEADER.read_text()
    enum = {name.lower(): int(value) for name, value in re.findall(r"EQ_QTYPE_(\w+) = (\d+)", text)}
    assert enum.pop("count") == len(TYPES)
    assert enum == {q.name: q.id for q in TYPES.values()}


@pytest.mark.parametrize("qtype", list(TYPES.values()), ids=lambda q: q.name)
def test_nbytes_equals_python(qtype):
    for rows, cols in SHAPES_FOR_NBYTES:
        assert _ffi.nbytes(qtype.name, rows, cols) == qtype.nbytes(rows, cols), (rows, cols)


def test_a_partial_last_group_costs_only_its_own_bytes():
    """SmolLM2's 576 input columns at 2 bits: groups of 128 store 4 x 128 + 64 columns (not 640),
    so g128 is smaller than g64 (fewer scales, the same planes), in Python and in C; K % G == 0
    and groups of 32 are what they were; the layout of older files pads the tail to G."""
    g64, g128 = TYPES["u2g64a"], TYPES["u2g128a"]
    tiles = 576 // TILE_ROWS
    assert g128.nbytes(576, 576) == tiles * (5 * 64 + 2 * 2 * 576) < g64.nbytes(576, 576) == tiles * (9 * 64 + 2 * 2 * 576)
    assert g128.nbytes(576, 576, compact_tail=False) == tiles * 5 * g128.block_bytes()
    assert g128.nbytes(1536, 576) < g64.nbytes(1536, 576)          # gate/up; down (576, 1536) is whole groups
    assert g128.nbytes(576, 1536) == g128.nbytes(576, 1536, compact_tail=False)
    for qtype in (g64, g128):
        assert _ffi.nbytes(qtype.name, 576, 576) == qtype.nbytes(576, 576)
    for qtype in PACKED:                                            # at most 31 padding columns
        for cols in (1, 31, 33, qtype.group + 1, 5 * qtype.group - 33):
            assert qtype.stored_cols(cols) == -(-cols // 32) * 32 <= qtype.stored_cols(cols, compact_tail=False)


@pytest.mark.parametrize("qtype", PACKED, ids=lambda q: q.name)
def test_padded_tail_layout_reads_the_same_numbers(qtype):
    """The same levels packed in the layout before compact tails (last group padded to G) dequantize
    to the same values, and converting those bytes gives today's bytes exactly."""
    rng = np.random.default_rng(700 + qtype.id)
    for rows, cols in [(19, qtype.group + 25), (16, 2 * qtype.group + 64), (5, 40), (33, 3 * qtype.group)]:
        padded_rows, padded_cols = qtype.padded_shape(rows, cols)
        levels = rng.integers(0, 1 << qtype.bits, size=(padded_rows, padded_cols), dtype=np.uint8)
        scales = rng.normal(0.0, 0.05, size=(padded_rows, padded_cols // qtype.group)).astype(np.float16)
        mins = None if qtype.symmetric else rng.normal(0.0, 0.5, size=scales.shape).astype(np.float16)
        compact = pack(qtype, levels, scales, mins, cols)
        padded = pack(qtype, levels, scales, mins, cols, compact_tail=False)
        assert padded.size == qtype.nbytes(rows, cols, compact_tail=False) >= compact.size == qtype.nbytes(rows, cols)
        assert np.array_equal(quant_types.compact_tail_bytes(qtype, padded, rows, cols), compact)
        assert np.array_equal(as_bits(numpy_dequantize(qtype, padded, rows, cols, compact_tail=False)),
                              as_bits(numpy_dequantize(qtype, compact, rows, cols)))


def test_nbytes_overflow_is_an_error():
    with pytest.raises(EdgeqError, match="overflow"):
        _ffi.nbytes("u8g32a", 2 ** 62, 2 ** 40)


def test_unknown_qtype_is_an_error():
    with pytest.raises(EdgeqError, match="unknown quant type 'u7g32a'"):
        _ffi.nbytes("u7g32a", 16, 32)


# ---------------------------------------------------------------------------------------------
# fp16 conversion
# ---------------------------------------------------------------------------------------------

def test_fp16_to_fp32_all_bit_patterns():
    bits = np.arange(1 << 16, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    got = _ffi.fp16_bits_to_float32(bits)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(as_bits(got)[~nan], as_bits(expected)[~nan])


def test_fp32_to_fp16_rounds_like_numpy():
    rng = np.random.default_rng(0)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    halves = halves[np.isfinite(halves)]
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 1e9, 2.0 ** -25,
                        2.0 ** -25 * 1.0000001, 2.0 ** -24 * 1.5, 2.0 ** -14 * 0.99999, 1e-30],
                       dtype=np.float32)
    values = np.concatenate([
        special, -special, halves,
        halves + np.float32(1e-3) * np.abs(halves),                  # between neighbours
        rng.normal(0, 1, 20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 20000),
    ]).astype(np.float32)
    # ties: midpoints of adjacent fp16 values are exact in float32 and must round to even
    positive = np.sort(halves[halves > 0]).astype(np.float64)
    midpoints = ((positive[:-1] + positive[1:]) / 2).astype(np.float32)
    values = np.concatenate([values, midpoints, -midpoints])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    got = _ffi.float32_to_fp16_bits(values)
    assert np.array_equal(got, expected)
    assert np.isnan(_ffi.fp16_bits_to_float32(_ffi.float32_to_fp16_bits(np.array([np.nan], np.float32))))[0]


# ---------------------------------------------------------------------------------------------
# packed types: dequantize and gemv against numpy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", PACKED, ids=lambda q: q.name)
def test_dequantize_equals_numpy_bitwise(qtype):
    rng = np.random.default_rng(1000 + qtype.id)
    for rows, cols in random_shapes(qtype, rng):
        data = random_packed(qtype, rows, cols, rng)
        expected = numpy_dequantize(qtype, data, rows, cols)
        got = _ffi.dequantize(qtype.name, data, rows, cols)
        assert got.shape == (rows, cols)
        mismatch = as_bits(got) != as_bits(expected)
        assert not mismatch.any(), (
            f"({rows}, {cols}): {int(mismatch.sum())} values differ, first at "
            f"{tuple(np.argwhere(mismatch)[0])}")


@pytest.mark.parametrize("qtype", PACKED, ids=lambda q: q.name)
def test_dequantize_row_range(qtype):
    rng = np.random.default_rng(2000 + qtype.id)
    rows, cols = 53, qtype.group + 9                                 # 4 tiles, the last partial
    data = random_packed(qtype, rows, cols, rng)
    full = numpy_dequantize(qtype, data, rows, cols)
    for row_begin, row_count in [(0, 1), (5, 20), (15, 2), (16, 16), (48, 5), (52, 1), (0, rows), (7, 0)]:
        got = _ffi.dequantize(qtype.name, data, rows, cols, row_begin, row_count)
        assert got.shape == (row_count, cols)
        assert np.array_equal(as_bits(got), as_bits(full[row_begin:row_begin + row_count]))


@pytest.mark.parametrize("qtype", PACKED, ids=lambda q: q.name)
def test_gemv_equals_float64(qtype):
    rng = np.random.default_rng(3000 + qtype.id)
    for rows, cols in random_shapes(qtype, rng):
        data = random_packed(qtype, rows, cols, rng)
        x = rng.normal(0.0, 1.0, cols).astype(np.float32)
        y = _ffi.gemv(qtype.name, data, rows, cols, x, isa="ref")
        assert y.shape == (rows,) and y.dtype == np.float32
        assert_gemv_close(y, exact_weights(qtype, data, rows, cols), x)
        # against numpy's float32 weights: each may be off by half an ulp (asymmetric only)
        assert_gemv_close(y, numpy_dequantize(qtype, data, rows, cols), x, weight_rounding=2.0 ** -24)


def lut_error_bound(qtype: QuantType, data: np.ndarray, rows: int, cols: int, x: np.ndarray,
                    levels: int = 32767) -> np.ndarray:
    """(rows,) bound on what the avx2 kernels' int16 tables (levels 32767; avx2-lut8's int8 tables
    at 2-3 bits: 127) may change in W x.

    Every 64 activations share one table scale, s = (largest |subset sum of 4|) / levels, and each
    lookup is off by at most s/2; a group's dot product makes (2^bits - 1) x (quads) lookups' worth
    of such errors, times |scale| of that row and group."""
    _, scales, _ = unpack(qtype, data, rows, cols)
    padded = -(-cols // 128) * 128
    quads = np.zeros(padded, np.float64)
    quads[:cols] = x
    quads = quads.reshape(-1, 4)
    largest = np.maximum(np.clip(quads, 0, None).sum(1), -np.clip(quads, None, 0).sum(1))
    quad_error = np.repeat(largest.reshape(-1, 16).max(1) / levels / 2.0, 16)        # per quad
    n_groups = scales.shape[1]
    per_group = quad_error[:n_groups * qtype.group // 4].reshape(n_groups, -1).sum(1)
    return ((1 << qtype.bits) - 1) * np.abs(scales[:rows].astype(np.float64)) @ per_group


def int8_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the multiply-add kernels multiply W with: x (cols,) rounded to int8 per block of 32 with
    the float32 scale s_b = max |x_b| / 127 (round to nearest even), as float64 values x̂_k = s_b xq_k,
    and the (cols,) half steps s_b / 2 that bound each rounding."""
    cols = len(x)
    blocks = np.zeros(-(-cols // 32) * 32, np.float32)
    blocks[:cols] = x
    blocks = blocks.reshape(-1, 32)
    largest = np.abs(blocks).max(1)
    inv = np.where(largest > 0, np.float32(127.0) / np.where(largest > 0, largest, 1), 0).astype(np.float32)
    xq = np.rint(blocks * inv[:, None])
    step = (largest / np.float32(127.0)).astype(np.float32)
    rounded = (xq.astype(np.float64) * step.astype(np.float64)[:, None]).reshape(-1)[:cols]
    return rounded, np.repeat(step.astype(np.float64) / 2.0, 32)[:cols]


# How closely each kernel set's bit-plane products follow the reference: "float" (float tables or
# accumulation: float32 rounding), "int16 tables" (within lut_error_bound) or "int8 tables at 2-3
# bits" (avx2-lut8: lut_error_bound with levels 127 for 2-3-bit types, int16 tables above). Every
# set in the C list is tested; one missing here fails until its accuracy is stated.
BITPLANE_ACCURACY = {"scalar": "float", "avx2": "int16 tables", "avx512": "int16 tables",
                     "avx2-lut8": "int8 tables at 2-3 bits",
                     "neon-dotprod": "int16 tables", "neon": "int16 tables"}   # neon-dotprod's are neon's
KERNEL_SETS_UNDER_TEST = [name for name in _ffi.all_kernel_sets() if name != "ref"]


@pytest.mark.parametrize("isa", KERNEL_SETS_UNDER_TEST)
@pytest.mark.parametrize("qtype", [q for q in TYPES.values()], ids=lambda q: q.name)
def test_every_kernel_set_matches_the_reference(qtype, isa):
    """Every kernel set agrees with the double-accumulating reference: float32 accuracy for
    float sets; for int16- and int8-table sets within what their tables can change, and far inside that on
    average; on multiply-add routes (the packed family) within the int8 activations' bound, and
    equal to the reference on the rounded activations up to float32 accumulation. Plain shapes cover masked and unrolled tails (K mod 16 and mod 32)."""
    assert isa in BITPLANE_ACCURACY, f"state the accuracy of kernel set {isa!r} in BITPLANE_ACCURACY"
    if isa not in _ffi.kernel_sets():
        pytest.skip(f"this CPU does not run the {isa} kernels")
    route = _ffi.kernel_route(qtype.name, isa, 3)
    rng = np.random.default_rng(5000 + qtype.id)
    plain = qtype.family == quant_types.PLAIN
    shapes = random_shapes(qtype, rng) if not plain else [(37, 45), (16, 64), (5, 1000), (7, 48), (4, 7)]
    for rows, cols in shapes:
        if plain:
            values = rng.normal(0.0, 1.0, (rows, cols)).astype(qtype.dtype)
            data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
            weights = values.astype(np.float64)
        else:
            data = random_packed(qtype, rows, cols, rng)
            weights = exact_weights(qtype, data, rows, cols)
        x = rng.normal(0.0, 1.0, (3, cols)).astype(np.float32)       # below prefill_from: decode path
        x[1, rng.integers(0, cols)] = 40.0                              # an outlier activation
        got = _ffi.gemm(qtype.name, data, rows, cols, x, isa=isa).astype(np.float64)
        for v in range(len(x)):
            reference = _ffi.gemv(qtype.name, data, rows, cols, x[v], isa="ref").astype(np.float64)
            magnitude = np.abs(weights) @ np.abs(x[v].astype(np.float64))
            rms = lambda a: np.sqrt(np.mean(a ** 2))
            allowed = 1e-5 * magnitude + 1e-30
            if BITPLANE_ACCURACY[isa] != "float" and qtype.family == quant_types.UNIFORM_BITPLANE:
                int8 = BITPLANE_ACCURACY[isa] == "int8 tables at 2-3 bits" and qtype.bits <= 3
                bound = lut_error_bound(qtype, data, rows, cols, x[v], levels=127 if int8 else 32767)
                allowed += bound
                assert rms(got[v] - reference) <= 0.25 * rms(bound) + 1e-5 * magnitude.max()
            elif route["path"] == "multiply-add":                           # int8 activations
                # the kernels compute W x̂ with x̂_k = s_b xq_k (the min / zero-point term too, through
                # Σx̂ = s_b Σ xq), and |x_k - x̂_k| <= s_b / 2, so |Δy[r]| <= Σ_k |w[r,k]| s_b(k) / 2
                rounded, half_step = int8_activations(x[v])
                bound = np.abs(weights) @ half_step
                allowed += bound
                # and exactly the reference's product with x rounded so, up to float32 accumulation
                # (whose terms are |scale q| |x̂| <= (|w| + |min|) |x̂|, and |min Σx̂|)
                _, scales, mins = scales_and_mins(qtype, data, rows, cols)
                offset = np.repeat(np.abs(scales if mins is None else mins).astype(np.float64), qtype.group, axis=1)
                zero_point = 0.0 if qtype.family == quant_types.CODEBOOK else symmetric_zero(qtype)
                offset = offset[:rows, :cols] * (zero_point if mins is None else 1.0)
                float_sums = 1e-5 * ((np.abs(weights) + 2 * offset) @ np.abs(rounded))
                expected = reference + weights @ (rounded - x[v].astype(np.float64))
                assert np.all(np.abs(got[v] - expected) <= float_sums + 1e-6 * np.abs(reference) + 1e-30)
                allowed += float_sums
            assert np.all(np.abs(got[v] - reference) <= allowed), (qtype.name, rows, cols, v)
            # one vector alone gives the same bits as inside the batch
            assert np.array_equal(_ffi.gemv(qtype.name, data, rows, cols, x[v], isa=isa), got[v].astype(np.float32))


@pytest.mark.parametrize("isa", _ffi.all_kernel_sets())
@pytest.mark.parametrize("qtype", [q for q in PACKED if q.family == quant_types.UNIFORM_PACKED], ids=lambda q: q.name)
def test_packed_prefill_path_gives_every_vector_its_decode_bits(qtype, isa):
    """The packed family's prefill gemms (x86: several vectors per load of levels) multiply the same
    int8 activations with the same float steps as the decode gemm: every vector of every batch size
    (the register blocks and their remainders, and batches past the 64-vector pass) gets the bits
    it gets alone, so greedy output does not depend on how a prompt is batched."""
    if isa not in _ffi.kernel_sets():
        pytest.skip(f"this CPU does not run the {isa} kernels")
    if first_prefill_batch(qtype, isa) is None:
        pytest.skip(f"the {isa} set has no prefill path for {qtype.family}")
    rng = np.random.default_rng(7500 + qtype.id)
    for (rows, cols), n in zip(random_shapes(qtype, rng), [4, 67, 19, 64, 13]):
        data = random_packed(qtype, rows, cols, rng)
        x = rng.normal(0.0, 1.0, (n, cols)).astype(np.float32)
        x[1 % n, rng.integers(0, cols)] = 40.0
        got = _ffi.gemm(qtype.name, data, rows, cols, x, isa=isa)
        for v in range(n):
            assert np.array_equal(_ffi.gemv(qtype.name, data, rows, cols, x[v], isa=isa), got[v]), (rows, cols, n, v)


@pytest.mark.parametrize("qtype", PACKED, ids=lambda q: q.name)
def test_sets_sharing_int16_tables_give_the_same_bits(qtype):
    """avx512 builds the same int16 tables as avx2 and sums the same integers (x86/avx512.c), so
    its bit-plane products are bit-identical (and the packed family's too), for every batch size
    that takes the decode path and partial tile (larger batches take each set's own multiply-add prefill path, held to the
    reference by test_prefill_path_matches_the_reference_within_the_int16_activation_bound)."""
    sets = [name for name in _ffi.kernel_sets() if BITPLANE_ACCURACY.get(name) == "int16 tables"]
    if len(sets) < 2:
        pytest.skip(f"this CPU runs fewer than two int16-table kernel sets ({', '.join(sets) or 'none'})")
    batch = min(first_prefill_batch(qtype, name) or 6 for name in sets) - 1
    assert batch >= 1 and all(_ffi.kernel_route(qtype.name, name, batch=batch) == _ffi.kernel_route(qtype.name, name, batch=1)
                              for name in sets)   # each set's decode path (LUT; packed types: multiply-add)
    rng = np.random.default_rng(5500 + qtype.id)
    for rows, cols in random_shapes(qtype, rng) + [(48, 896)]:
        data = random_packed(qtype, rows, cols, rng)
        x = rng.normal(0.0, 1.0, (batch, cols)).astype(np.float32)
        x[batch // 2, rng.integers(0, cols)] = -60.0
        first = _ffi.gemm(qtype.name, data, rows, cols, x, isa=sets[0])
        for other in sets[1:]:
            assert np.array_equal(as_bits(_ffi.gemm(qtype.name, data, rows, cols, x, isa=other)), as_bits(first))


def first_prefill_batch(qtype: QuantType, isa: str) -> int | None:
    """The smallest batch that set `isa` runs through a path other than its decode path (its
    prefill_from), or None when every batch size takes the decode path."""
    decode = _ffi.kernel_route(qtype.name, isa, batch=1)
    return next((n for n in range(2, 65) if _ffi.kernel_route(qtype.name, isa, batch=n) != decode), None)


def activation_bound(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(rows,) bound on what int16 activations per block of 32 change in W x (the multiply-add path):
    d_b = max |x| over block b / 32767 and |x_k - d_b round(x_k / d_b)| <= (1/2 + 2^-7) d_b with the
    float rounding of x / d_b and of d_b, so |Δy_r| <= Σ_k |w_rk| (1/2 + 2^-7) d_b(k)
    (x86/avx2_prefill.c derives it)."""
    cols = x.shape[0]
    padded = np.zeros(-(-cols // 32) * 32, np.float64)
    padded[:cols] = np.abs(x)
    step = np.repeat(padded.reshape(-1, 32).max(1) / 32767.0 * (0.5 + 2.0 ** -7), 32)[:cols]
    return np.abs(weights) @ step


@pytest.mark.parametrize("isa", _ffi.all_kernel_sets())
@pytest.mark.parametrize("qtype", [q for q in PACKED if q.family == quant_types.UNIFORM_BITPLANE], ids=lambda q: q.name)
def test_prefill_path_matches_the_reference_within_the_int16_activation_bound(qtype, isa):
    """Batches from a set's prefill_from on (the forward pass's prompt batches) take its prefill path;
    every vector of every batch size agrees with the reference within activation_bound, and
    inside it on average as rounding errors are. Batches larger than the kernels' 64-vector pass are covered too."""
    if isa not in _ffi.kernel_sets():
        pytest.skip(f"this CPU does not run the {isa} kernels")
    first = first_prefill_batch(qtype, isa)
    if first is None:
        pytest.skip(f"the {isa} set has no prefill path for {qtype.family}")
    assert _ffi.kernel_route(qtype.name, isa, batch=64)["path"] == "multiply-add"
    rng = np.random.default_rng(7000 + qtype.id)
    for (rows, cols), n in zip(random_shapes(qtype, rng), [first, 67, 19, 64]):
        data = random_packed(qtype, rows, cols, rng)
        weights = exact_weights(qtype, data, rows, cols)
        x = rng.normal(0.0, 1.0, (n, cols)).astype(np.float32)
        x[1 % n, rng.integers(0, cols)] = 40.0                          # an outlier activation
        x[n - 1] = 0.0                                                  # all-zero blocks: scale 0
        got = _ffi.gemm(qtype.name, data, rows, cols, x, isa=isa).astype(np.float64)
        errors, bounds = [], []
        for v in range(n):
            reference = _ffi.gemv(qtype.name, data, rows, cols, x[v], isa="ref").astype(np.float64)
            bound = activation_bound(weights, x[v].astype(np.float64))
            allowed = bound + 1e-5 * (np.abs(weights) @ np.abs(x[v].astype(np.float64))) + 1e-30
            error = np.abs(got[v] - reference)
            assert np.all(error <= allowed), (qtype.name, rows, cols, n, v, float(np.max(error / allowed)))
            errors.append(error)
            bounds.append(bound)
        # rounding errors uniform in ±d/2 have an rms of bound / sqrt(3) for one term and less for sums
        errors, bounds = np.concatenate(errors), np.concatenate(bounds)
        assert np.sqrt(np.mean(errors ** 2)) <= 0.6 * np.sqrt(np.mean(bounds ** 2)) + 1e-6


@pytest.mark.parametrize("isa", _ffi.all_kernel_sets())
@pytest.mark.parametrize("bits", sorted({q.bits for q in PACKED}))
def test_prefill_path_does_not_overflow_on_extreme_levels(bits, isa):
    """The largest products a narrow accumulator could overflow on: every level at its maximum (and
    every level 0, which 8-bit kernels may store as -128), activations all at +max or alternating in
    sign, long rows. The prefill path must stay within the int16 activation bound of the reference."""
    qtype = quant_types.TYPES[f"u{bits}g32a"]
    if isa not in _ffi.kernel_sets() or first_prefill_batch(qtype, isa) is None:
        pytest.skip(f"{isa}: not runnable here or no prefill path")
    rows, cols = 32, 1024
    n_groups = cols // qtype.group
    for level in (0, (1 << bits) - 1):
        levels = np.full((rows, cols), level, np.uint8)
        scales = np.full((rows, n_groups), 0.01, np.float16)
        mins = np.full((rows, n_groups), -0.5, np.float16)
        data = pack(qtype, levels, scales, mins)
        weights = exact_weights(qtype, data, rows, cols)
        x = np.ones((8, cols), np.float32) * 3.0
        x[1::2, 1::2] = -3.0                                            # alternating signs
        x[2, :] = np.linspace(-1.0, 1.0, cols, dtype=np.float32)
        got = _ffi.gemm(qtype.name, data, rows, cols, x, isa=isa).astype(np.float64)
        for v in range(len(x)):
            exact = weights @ x[v].astype(np.float64)
            bound = activation_bound(weights, x[v].astype(np.float64))
            allowed = bound + 1e-5 * (np.abs(weights) @ np.abs(x[v].astype(np.float64)))
            assert np.all(np.abs(got[v] - exact) <= allowed), (bits, level, v)


def test_unknown_kernel_set_is_a_clean_error():
    data = np.zeros(TYPES["u4g64a"].nbytes(16, 64), dtype=np.uint8)
    with pytest.raises(EdgeqError):
        _ffi.gemv("u4g64a", data, 16, 64, np.zeros(64, np.float32), isa="no-such-isa")


# ---------------------------------------------------------------------------------------------
# plain types
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", PLAIN, ids=lambda q: q.name)
def test_plain_dequantize_and_gemv(qtype):
    rng = np.random.default_rng(4000 + qtype.id)
    rows, cols = 37, 45
    values = rng.normal(0.0, 1.0, (rows, cols)).astype(qtype.dtype)
    data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    assert data.nbytes == _ffi.nbytes(qtype.name, rows, cols)
    expected = values.astype(np.float32)
    assert np.array_equal(as_bits(_ffi.dequantize(qtype.name, data, rows, cols)), as_bits(expected))
    assert np.array_equal(as_bits(_ffi.dequantize(qtype.name, data, rows, cols, 10, 3)),
                          as_bits(expected[10:13]))
    x = rng.normal(0.0, 1.0, cols).astype(np.float32)
    assert_gemv_close(_ffi.gemv(qtype.name, data, rows, cols, x, isa="ref"), expected, x)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype_name", ["u4g64a", "u3g128s", "f16"])
def test_short_data_is_a_clean_error(qtype_name):
    qtype = TYPES[qtype_name]
    rows, cols = 20, 70
    data = np.zeros(qtype.nbytes(rows, cols), dtype=np.uint8)
    x = np.zeros(cols, dtype=np.float32)
    for short in (data[:-1], data[:0]):
        with pytest.raises(EdgeqError, match="shorter than its type and shape require"):
            _ffi.dequantize(qtype_name, short, rows, cols)
        with pytest.raises(EdgeqError, match="shorter than its type and shape require"):
            _ffi.gemv(qtype_name, short, rows, cols, x)
    _ffi.gemv(qtype_name, data, rows, cols, x)                       # exactly long enough: fine


def test_row_range_outside_tensor_is_an_error():
    data = np.zeros(TYPES["u2g32s"].nbytes(20, 32), dtype=np.uint8)
    with pytest.raises(EdgeqError, match="row range"):
        _ffi.dequantize("u2g32s", data, 20, 32, row_begin=15, row_count=6)
    with pytest.raises(EdgeqError, match="row range"):
        _ffi.dequantize("u2g32s", data, 20, 32, row_begin=21, row_count=0)


def test_bad_python_arguments_are_rejected_before_c():
    data = np.zeros(TYPES["u4g32a"].nbytes(16, 32), dtype=np.uint8)
    with pytest.raises(TypeError):
        _ffi.dequantize("u4g32a", data.view(np.int8), 16, 32)
    with pytest.raises(ValueError):
        _ffi.dequantize("u4g32a", np.zeros(2 * data.size, np.uint8)[::2], 16, 32)
    with pytest.raises(TypeError):
        _ffi.gemv("u4g32a", data, 16, 32, np.zeros(32, np.float64))
    with pytest.raises(ValueError):
        _ffi.gemv("u4g32a", data, 16, 32, np.zeros(31, np.float32))
    with pytest.raises(ValueError):
        _ffi.gemv("u4g32a", data, 0, 32, np.zeros(32, np.float32))


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------

def active_isa_with(requested: str) -> subprocess.CompletedProcess:
    script = "from edgeq import _ffi; print(_ffi.isa())"
    return subprocess.run([sys.executable, "-c", script], env=dict(os.environ, EDGEQ_ISA=requested),
                          capture_output=True, text=True)


@pytest.mark.parametrize("requested", _ffi.all_kernel_sets() + ["auto", ""])
def test_edgeq_isa_forces_a_kernel_set(requested):
    """Every set in the library's one list can be forced where the CPU runs it; "auto" and an empty
    value choose the best available set, never the slow reference."""
    if requested not in ("auto", "") and requested not in _ffi.kernel_sets():
        pytest.skip(f"this CPU does not run the {requested} kernels")
    result = active_isa_with(requested)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (requested if requested not in ("auto", "") else _ffi.kernel_sets()[0])
    assert _ffi.kernel_sets()[0] != "ref" and _ffi.all_kernel_sets()[-1] == "ref"


def test_edgeq_isa_naming_no_runnable_set_is_an_error_not_a_fallback(tiny_converted):
    """A set that does not exist, or one this CPU lacks, is refused by the kernels, the loader and
    the CLI with one line naming the sets this CPU runs."""
    missing = [name for name in _ffi.all_kernel_sets() if name not in _ffi.kernel_sets()]
    for requested in ["no-such-isa"] + missing[:1]:
        result = active_isa_with(requested)
        assert result.returncode != 0 and f"EDGEQ_ISA={requested}" in result.stderr
        assert ("this CPU cannot run it" if requested in missing else "no kernel set has that name") in result.stderr
        cli = subprocess.run([sys.executable, "-m", "edgeq", "run", str(tiny_converted("llama", 4)), "-p", "Hi",
                              "-n", "2"], env=dict(os.environ, EDGEQ_ISA=requested), capture_output=True,
                             text=True, timeout=120)
        assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
        assert len(cli.stderr.strip().splitlines()) == 1 and f"EDGEQ_ISA={requested}" in cli.stderr, cli.stderr
        assert ", ".join(_ffi.kernel_sets()) in cli.stderr


def test_kernel_route_names_the_set_and_path_for_every_type():
    """Each set in the list runs every type of the table itself or hands it on, the reference last."""
    for isa in _ffi.kernel_sets():
        for qtype in quant_types.TYPES.values():
            route = _ffi.kernel_route(qtype.name, isa, batch=64)
            assert route["set"] in _ffi.kernel_sets()[_ffi.kernel_sets().index(isa):]
            assert route["path"] in ("lut", "multiply-add", "float", "reference") and route["detail"]
    assert _ffi.kernel_route("u4g64a", "ref") == {"set": "ref", "path": "reference",
                                                  "detail": "reference: bit by bit, double accumulation"}


def test_select_isa_switches_and_refuses_unknown_sets():
    previous = _ffi.isa()
    try:
        _ffi.select_isa("ref")
        assert _ffi.isa() == "ref"
        with pytest.raises(EdgeqError, match="kernel set 'no-such-isa' does not exist.*available: .*ref"):
            _ffi.select_isa("no-such-isa")
        assert _ffi.isa() == "ref"
    finally:
        _ffi.select_isa(previous)


def test_avx512_packed_kernels_match_the_portable_ones():
    """x86/avx512_packed.c (VNNI) against scalar/packed.c over every packed type, sharing one
    prepare (native/tests/check_packed_avx512.c, linked with the library's objects: `make
    check-packed-avx512`): closer than the set-by-set test above (float rounding only), and it runs
    wherever VNNI does."""
    from native_make import make
    result = make("check-packed-avx512", timeout=900)
    out = result.stdout.strip().splitlines()
    if out and out[-1].startswith("skip:"):
        pytest.skip(out[-1])
    assert result.returncode == 0 and out and out[-1].startswith("ok "), (result.stdout + result.stderr)[-3000:]
