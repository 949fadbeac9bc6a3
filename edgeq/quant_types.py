"""The quant-type table: one row per type, and the canonical packed layout (numpy twin of native/).

Each row names its family: how the type's weights are stored and multiplied. Today:
  PLAIN             f32, f16: a plain float tensor (GGUF F32/F16) in (M, K) numpy order.
  UNIFORM_BITPLANE  u<b>g<G><a|s>: grouped uniform levels stored as b one-bit planes (below), for
                    the LUT kernels (cost per bit-plane: what 2-3 bits want).
  UNIFORM_PACKED    p<b>g<G><a|s>, b in 4, 5, 6, 8: the same numbers (levels, fp16 scale and min or
                    scale only, groups of G along K) stored as whole levels, bytes or nibbles, for
                    the int8 multiply-add kernels (cost per weight: what 5-8 bits want). Type names
                    read "uniform, b bits, groups of G, asymmetric|symmetric" with u = bit-planes and
                    p = packed levels; which layout a tensor uses is the converter's choice
                    (`edgeq convert --layout`), recorded by its type.
Code dispatches on the family (the per-family functions here), never on a type's name; nothing
else in the project switches on type names; tests and tools iterate TYPES. A family not handled
by a function is an error, never a fall-through to bit-planes.
This module packs and unpacks; choosing levels (scale/min search) lives in edgeq.convert.quantize.

Packed layout of a uniform grouped (bit-serial) tensor W of logical shape (M, K), ISA-neutral:
  - K is padded with zeros to Kp = ceil(K / G) * G, M to Mp = ceil(M / 16) * 16.
  - Rows are cut into tiles of TILE_ROWS = 16. The tensor is n_tiles blocks of n_groups blocks:
        for tile t, for group g (G weights along K):
            scale[16]  fp16   one per row of the tile
            min[16]    fp16   (asymmetric types only)
            plane[b]   each 2*G bytes: G/8 chunks of 16 bytes, one byte per row of the tile
  - Chunk c of plane p covers columns k0 = g*G + 8c .. k0+7; byte r holds
        low nibble  = bits p of q[r, k0+0..k0+3]   (bit i = weight k0+i)
        high nibble = bits p of q[r, k0+4..k0+7]
    so one 16-byte load gives the 4-bit table indices of 16 rows for two groups of 4 activations
    (vqtbl1q_s8 on NEON, pshufb per 128-bit lane on AVX2).
  - Dequantized value: asymmetric  w = scale * q + min
                       symmetric   w = scale * (q - (2^b - 1) / 2)      (levels ±0.5, ±1.5, ... × scale)
    with q in [0, 2^b - 1]. The symmetric zero point makes the LUT mirror trick exact: no Σx term.

Packed layout of a uniform packed tensor (p<b>g<G><a|s>), same numbers, ISA-neutral:
  - M is padded to Mp = ceil(M / 16) * 16; rows are cut into tiles of 16 as above. K is NOT padded
    to the group: the last group of a row holds only ceil(tail / 32) * 32 columns (tail = the
    columns left for it, 1..G), zeros past K; 32 columns is one block of the int8 activations, the
    unit every multiply-add kernel reads, so no kernel needs a ragged loop.
  - The tensor is n_tiles tiles of equal size, each ceil(K / G) blocks in group order:
        scale[16]  fp16   one per row of the tile
        min[16]    fp16   (asymmetric types only)
        levels     for the block's c columns (c = G, or the last group's rounded tail):
            b = 5, 6, 8: c / 4 quads of 64 bytes, [c/4][16 rows][4 columns]: byte (j, r, i) is
                         q[r, 4j + i] (one byte per level; 5 and 6 bits take a whole byte, so they
                         are only as small as 8-bit files and exist for the speed of their kernels)
            b = 4:       c / 8 quads of 64 bytes, [c/8][16 rows][4 columns]: byte (j, r, i) holds
                         q[r, 8j + i] in its low nibble and q[r, 8j + 4 + i] in its high nibble
  - Why: one 64-byte load is 16 rows x 4 consecutive columns, what AVX-512 VNNI vpdpbusd multiplies
    by 4 activations broadcast to every row (u8 levels x s8 activations, summed per row in int32);
    two 32-byte loads feed AVX2 vpmaddubsw for 8 rows each, four 16-byte loads NEON sdot for 4 rows.
    The 4-bit byte holds two such 4-column blocks: mask the low nibbles, shift the high ones.
  - Dequantized value: exactly as the bit-plane types above (the same levels, scales and mins).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE_ROWS = 16
CHUNK_COLS = 8  # columns covered by one byte of a plane (two nibbles of 4)

# families (mirror of enum eq_qfamily in native/): the value is what error messages show
PLAIN = "plain"
UNIFORM_BITPLANE = "uniform-bitplane"
UNIFORM_PACKED = "uniform-packed"
FAMILIES = (PLAIN, UNIFORM_BITPLANE, UNIFORM_PACKED)
UNIFORM_FAMILIES = (UNIFORM_BITPLANE, UNIFORM_PACKED)    # grouped uniform levels: every method writes both
PACKED_BLOCK_COLS = 32   # the packed family's column granularity (one block of int8 activations)


def _unknown_family(family: str):
    return ValueError(f"quant family {family!r} is not handled here")


@dataclass(frozen=True)
class QuantType:
    name: str          # stored in the file, e.g. "u4g64a"
    id: int            # mirror of enum eq_qtype in native/include/edgeq.h
    family: str        # PLAIN | UNIFORM_BITPLANE | UNIFORM_PACKED
    bits: int          # bits per weight before scales (32 / 16 for plain types)
    group: int         # weights per scale along K (0 for plain types)
    symmetric: bool
    dtype: str         # numpy dtype of the stored elements: "<f4", "<f2" (plain) or "u1" (packed bytes)

    def is_uniform(self) -> bool:
        """Grouped uniform levels with fp16 scales (every quantization method writes these)."""
        return self.family in UNIFORM_FAMILIES

    def padded_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """The (Mp, Kp) levels array pack() takes: rows to whole tiles, columns to whole groups."""
        if self.family == PLAIN:
            return rows, cols
        if self.is_uniform():
            return -(-rows // TILE_ROWS) * TILE_ROWS, -(-cols // self.group) * self.group
        raise _unknown_family(self.family)

    def header_bytes(self) -> int:
        """Bytes of a block's scales and mins: 16 fp16 each."""
        return 2 * TILE_ROWS * (1 if self.symmetric else 2)

    def block_bytes(self, block_cols: int | None = None) -> int:
        """Bytes of one (tile, group) block of block_cols columns (default: a whole group)."""
        block_cols = self.group if block_cols is None else block_cols
        if self.family == UNIFORM_BITPLANE:
            return self.header_bytes() + self.bits * 2 * block_cols
        if self.family == UNIFORM_PACKED:
            return self.header_bytes() + TILE_ROWS * block_cols * self.level_bits() // 8
        raise _unknown_family(self.family)

    def level_bits(self) -> int:
        """Packed family: bits each level takes in the file (a nibble at 4 bits, else a byte)."""
        return 4 if self.bits == 4 else 8

    def group_columns(self, cols: int) -> list[int]:
        """Packed family: the columns each group's block stores (the last one rounded up to 32)."""
        stored = -(-cols // PACKED_BLOCK_COLS) * PACKED_BLOCK_COLS
        return [min(self.group, stored - start) for start in range(0, stored, self.group)]

    def nbytes(self, rows: int, cols: int) -> int:
        if self.family == PLAIN:
            return rows * cols * self.bits // 8
        n_tiles = -(-rows // TILE_ROWS)
        if self.family == UNIFORM_BITPLANE:
            return n_tiles * -(-cols // self.group) * self.block_bytes()
        if self.family == UNIFORM_PACKED:
            full, tail = divmod(-(-cols // PACKED_BLOCK_COLS) * PACKED_BLOCK_COLS, self.group)
            return n_tiles * (full * self.block_bytes() + (self.block_bytes(tail) if tail else 0))
        raise _unknown_family(self.family)

    def allows_1d(self) -> bool:
        """Whether a tensor of this type may have a 1-D shape (n,): plain types only."""
        return self.family == PLAIN

    def nbytes_for_shape(self, shape: tuple[int, ...]) -> int:
        """Bytes of a stored tensor of logical `shape`: (M, K), or (n,) for the types that allow it."""
        if len(shape) == 1:
            if not self.allows_1d():
                raise ValueError(f"{self.name} needs a 2-D shape, got {shape}")
            return self.nbytes(1, shape[0])
        return self.nbytes(*shape)

    def bits_per_weight(self, rows: int, cols: int) -> float:
        return 8.0 * self.nbytes(rows, cols) / (rows * cols)


BITS = (2, 3, 4, 5, 6, 8)
PACKED_BITS = (4, 5, 6, 8)      # the widths multiply-add can win at (benchmarks/README.md)
GROUPS = (32, 64, 128)
LAYOUTS = {UNIFORM_BITPLANE: "u", UNIFORM_PACKED: "p"}   # family -> the type names' first letter


def _build_table() -> dict[str, QuantType]:
    """f32, f16, then per family in LAYOUTS order every (bits, group, a|s): ids never change, a new
    family's rows go at the end."""
    table = {
        "f32": QuantType("f32", 0, PLAIN, 32, 0, False, "<f4"),
        "f16": QuantType("f16", 1, PLAIN, 16, 0, False, "<f2"),
    }
    next_id = 2
    for family, widths in ((UNIFORM_BITPLANE, BITS), (UNIFORM_PACKED, PACKED_BITS)):
        for bits in widths:
            for group in GROUPS:
                for symmetric in (False, True):
                    name = f"{LAYOUTS[family]}{bits}g{group}{'s' if symmetric else 'a'}"
                    table[name] = QuantType(name, next_id, family, bits, group, symmetric, "u1")
                    next_id += 1
    return table


TYPES: dict[str, QuantType] = _build_table()


def uniform_type(bits: int, group: int, symmetric: bool, family: str = UNIFORM_BITPLANE) -> QuantType:
    if family not in LAYOUTS:
        raise _unknown_family(family)
    name = f"{LAYOUTS[family]}{bits}g{group}{'s' if symmetric else 'a'}"
    if name not in TYPES:
        raise KeyError(name)
    return TYPES[name]


def with_family(qtype: QuantType, family: str) -> QuantType:
    """The type holding the same numbers as uniform `qtype` in the other layout (KeyError: none)."""
    return uniform_type(qtype.bits, qtype.group, qtype.symmetric, family)


# ---------------------------------------------------------------------------------------------
# packing: integer levels + per-group scale/min -> canonical bytes, and back
# ---------------------------------------------------------------------------------------------

def pack(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
         cols: int | None = None) -> np.ndarray:
    """levels (Mp, Kp) uint8 in [0, 2^b), scales/mins (Mp, Kp/G) -> packed uint8 bytes of a tensor
    of `cols` logical columns (default Kp; the packed family stores only ceil(cols / 32) * 32)."""
    if qtype.family == UNIFORM_BITPLANE:
        return _pack_bitplane(qtype, levels, scales, mins)
    if qtype.family == UNIFORM_PACKED:
        return _pack_packed(qtype, levels, scales, mins, levels.shape[1] if cols is None else cols)
    raise _unknown_family(qtype.family)


def unpack(qtype: QuantType, data: np.ndarray, rows: int, cols: int):
    """Packed bytes -> (levels (Mp, Kp) uint8, scales (Mp, Kp/G) f16, mins or None); levels of
    columns a layout does not store are 0."""
    if qtype.family == UNIFORM_BITPLANE:
        return _unpack_bitplane(qtype, data, rows, cols)
    if qtype.family == UNIFORM_PACKED:
        return _unpack_packed(qtype, data, rows, cols)
    raise _unknown_family(qtype.family)


def _scale_bytes(qtype: QuantType, scales, mins, n_tiles: int, n_groups: int) -> np.ndarray:
    """(Mp, n_groups) scales/mins -> (tile, group, header_bytes): 16 fp16 scales, then 16 mins."""
    parts = [scales.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1)]
    if not qtype.symmetric:
        parts.append(mins.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1))
    return np.concatenate([np.ascontiguousarray(part).view(np.uint8).reshape(n_tiles, n_groups, -1)
                           for part in parts], axis=2)


def _scales_of(qtype: QuantType, headers: np.ndarray, padded_rows: int):
    """(tile, group, header_bytes) -> scales, mins (Mp, n_groups) f16 (mins None if symmetric)."""
    n_groups, span = headers.shape[1], 2 * TILE_ROWS

    def halves(offset):
        raw = np.ascontiguousarray(headers[:, :, offset:offset + span]).view(np.float16)
        return raw.transpose(0, 2, 1).reshape(padded_rows, n_groups)        # (t, g, r) -> (t*r, g)
    return halves(0), None if qtype.symmetric else halves(span)


def _pack_bitplane(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None) -> np.ndarray:
    rows, cols = levels.shape
    group, bits = qtype.group, qtype.bits
    n_tiles, n_groups, n_chunks = rows // TILE_ROWS, cols // group, group // CHUNK_COLS
    # (tile, row, group, chunk, 8 columns)
    q = levels.reshape(n_tiles, TILE_ROWS, n_groups, n_chunks, CHUNK_COLS)
    weights_of_bit = (1 << np.arange(4, dtype=np.uint8))
    planes = []
    for p in range(bits):
        bit = (q >> p) & 1                                                 # (t, r, g, c, 8)
        low = (bit[..., :4] * weights_of_bit).sum(-1, dtype=np.uint8)
        high = (bit[..., 4:] * weights_of_bit).sum(-1, dtype=np.uint8)
        byte = low | (high << 4)                                           # (t, r, g, c)
        planes.append(byte.transpose(0, 2, 3, 1))                          # (t, g, c, r)
    plane_bytes = np.stack(planes, axis=2).reshape(n_tiles, n_groups, bits * n_chunks * TILE_ROWS)
    block = np.concatenate([_scale_bytes(qtype, scales, mins, n_tiles, n_groups), plane_bytes], axis=2)
    assert block.shape[2] == qtype.block_bytes()
    return block.reshape(-1)


def _unpack_bitplane(qtype: QuantType, data: np.ndarray, rows: int, cols: int):
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    group, bits = qtype.group, qtype.bits
    n_tiles, n_groups, n_chunks = padded_rows // TILE_ROWS, padded_cols // group, group // CHUNK_COLS
    blocks = np.asarray(data, dtype=np.uint8).reshape(n_tiles, n_groups, qtype.block_bytes())
    start = qtype.header_bytes()
    scales, mins = _scales_of(qtype, blocks[:, :, :start], padded_rows)
    planes = blocks[:, :, start:].reshape(n_tiles, n_groups, bits, n_chunks, TILE_ROWS)
    # bit i of a byte is column i of its chunk (low nibble columns 0-3, high nibble 4-7)
    columns = np.unpackbits(planes[..., None], axis=-1, bitorder="little")  # (t, g, p, c, r, 8)
    levels = np.zeros((n_tiles, n_groups, n_chunks, TILE_ROWS, CHUNK_COLS), dtype=np.uint8)
    for p in range(bits):
        levels |= columns[:, :, p] << p
    levels = levels.transpose(0, 3, 1, 2, 4)                              # (t, r, g, c, 8)
    return levels.reshape(padded_rows, padded_cols), scales, mins


def _packed_level_bytes(qtype: QuantType, q: np.ndarray) -> np.ndarray:
    """(tile, 16 rows, groups, c) levels -> (tile, groups, level bytes of c columns)."""
    n_tiles, _, n_groups, c = q.shape
    if qtype.level_bits() == 8:                                            # [c/4][16][4]
        quads = q.reshape(n_tiles, TILE_ROWS, n_groups, c // 4, 4)
    else:                                                                  # [c/8][16][4] nibbles
        pairs = q.reshape(n_tiles, TILE_ROWS, n_groups, c // 8, 2, 4)
        quads = pairs[..., 0, :] | (pairs[..., 1, :] << 4)
    return np.ascontiguousarray(quads.transpose(0, 2, 3, 1, 4)).reshape(n_tiles, n_groups, -1)


def _pack_packed(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
                 cols: int) -> np.ndarray:
    padded_rows, padded_cols = levels.shape
    n_tiles, n_groups, group = padded_rows // TILE_ROWS, padded_cols // qtype.group, qtype.group
    if qtype.padded_shape(padded_rows, cols) != levels.shape:
        raise ValueError(f"{qtype.name}: levels {levels.shape} are not a padded ({padded_rows}, {cols}) tensor")
    q = levels.astype(np.uint8).reshape(n_tiles, TILE_ROWS, padded_cols)
    headers = _scale_bytes(qtype, scales, mins, n_tiles, n_groups)          # (t, g, header)
    widths = qtype.group_columns(cols)
    full = sum(1 for width in widths if width == group)
    parts = []
    if full:
        whole = q[:, :, :full * group].reshape(n_tiles, TILE_ROWS, full, group)
        parts.append(np.concatenate([headers[:, :full], _packed_level_bytes(qtype, whole)], axis=2).reshape(n_tiles, -1))
    if full < len(widths):                                                 # the last group's rounded tail
        tail = widths[-1]
        last = q[:, :, full * group:full * group + tail].reshape(n_tiles, TILE_ROWS, 1, tail)
        parts.append(np.concatenate([headers[:, full:], _packed_level_bytes(qtype, last)], axis=2).reshape(n_tiles, -1))
    data = np.concatenate(parts, axis=1).reshape(-1)
    assert data.size == qtype.nbytes(padded_rows, cols)
    return data


def _unpack_packed(qtype: QuantType, data: np.ndarray, rows: int, cols: int):
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    n_tiles, group = padded_rows // TILE_ROWS, qtype.group
    header = qtype.header_bytes()
    tiles = np.asarray(data, dtype=np.uint8).reshape(n_tiles, -1)
    levels = np.zeros((n_tiles, TILE_ROWS, padded_cols), dtype=np.uint8)
    headers, at, start = [], 0, 0
    for width in qtype.group_columns(cols):
        block = tiles[:, at:at + qtype.block_bytes(width)]
        headers.append(block[:, None, :header])
        body = block[:, header:]
        if qtype.level_bits() == 8:
            q = body.reshape(n_tiles, width // 4, TILE_ROWS, 4).transpose(0, 2, 1, 3)
        else:
            nibbles = body.reshape(n_tiles, width // 8, TILE_ROWS, 1, 4)
            q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=3).transpose(0, 2, 1, 3, 4)
        levels[:, :, start:start + width] = q.reshape(n_tiles, TILE_ROWS, width)
        at, start = at + qtype.block_bytes(width), start + group
    scales, mins = _scales_of(qtype, np.concatenate(headers, axis=1), padded_rows)
    return levels.reshape(padded_rows, padded_cols), scales, mins


def dequantize_levels(qtype: QuantType, levels, scales, mins) -> np.ndarray:
    """(Mp, Kp) levels and group scales -> (Mp, Kp) float32."""
    group = qtype.group
    expand = lambda a: np.repeat(a.astype(np.float32), group, axis=1)
    q = levels.astype(np.float32)
    if qtype.symmetric:
        return expand(scales) * (q - ((1 << qtype.bits) - 1) / 2.0)
    return expand(scales) * q + expand(mins)


def _dequantize_plain(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.asarray(data).view(qtype.dtype).astype(np.float32).reshape(rows, cols)


def _dequantize_uniform(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    levels, scales, mins = unpack(qtype, data, rows, cols)
    return dequantize_levels(qtype, levels, scales, mins)[:rows, :cols]


_DEQUANTIZE = {PLAIN: _dequantize_plain, UNIFORM_BITPLANE: _dequantize_uniform, UNIFORM_PACKED: _dequantize_uniform}


def dequantize(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Stored tensor bytes (uint8, as in the file) -> (rows, cols) float32."""
    if qtype.family not in _DEQUANTIZE:
        raise _unknown_family(qtype.family)
    return _DEQUANTIZE[qtype.family](qtype, np.asarray(data).view(np.uint8).reshape(-1), rows, cols)
