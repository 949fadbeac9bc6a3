"""The quant-type table: one row per type, and the canonical packed layout (numpy twin of native/).

Each row names its family: how the type's weights are stored and multiplied. Today:
  PLAIN             f32, f16: a plain float tensor (GGUF F32/F16) in (M, K) numpy order.
  UNIFORM_BITPLANE  u<b>g<G><a|s|z>: grouped uniform levels stored as b one-bit planes (below), for
                    the LUT kernels (cost per bit-plane: what 2-3 bits want).
  UNIFORM_PACKED    p<b>g<G><a|s|z>, b in 2, 3, 4, 5, 6, 8: the same numbers (levels, fp16 scale and
                    min or scale only, groups of G along K) stored as whole levels (bytes at 8 bits,
                    else planes of bit fields per 32 columns), for the int8 multiply-add kernels
                    (cost per weight, whatever the width). Type names
                    read "uniform, b bits, groups of G, asymmetric|symmetric|symmetric with an
                    integer zero point" with u = bit-planes and p = packed levels; which layout a
                    tensor uses is the converter's choice (`edgeq convert --layout`), recorded by its
                    type. The z types (groups of 32 at 4, 5 and 8 bits only) are llama.cpp's Q4_0,
                    Q5_0 and Q8_0 grids at those types' own sizes: a GGUF source's blocks of them are
                    kept exactly (convert.gguf_grid) and exported back as they were.
  CODEBOOK          c4g<G>: 4-bit indices into 16 learned int8 levels per 16-row tile, times an fp16
                    scale per group of G (no min: the levels carry any offset, so no a|s suffix), for
                    the same int8 multiply-add kernels (an index becomes its level by one table lookup
                    in registers: pshufb / vpermb / tbl). Fitted by convert.codebook.
                    v2g<G>s: the same family at 2 bits per weight: a 4-bit index per pair of weights
                    into 16 learned 2-D centroids per tile (a vector codebook), decoded by two
                    lookups per index into the same multiply-add. Fitted by convert.codebook too.
Code dispatches on the family (the per-family functions here), never on a type's name; nothing
else in the project switches on type names; tests and tools iterate TYPES. A family not handled
by a function is an error, never a fall-through to bit-planes.
This module packs and unpacks; choosing levels (scale/min search) lives in edgeq.convert.quantize.

Packed layout of a uniform grouped (bit-serial) tensor W of logical shape (M, K), ISA-neutral:
  - M is padded to Mp = ceil(M / 16) * 16. K is cut into n_groups = ceil(K / G) groups of G columns;
    a partial last group (K % G = tail != 0) is stored in ceil(tail / GROUP_STEP) * GROUP_STEP
    columns (GROUP_STEP = 32), so the stored width is Ks = ceil(K / 32) * 32 and padding costs at
    most 31 columns, not G - 1. Padding columns hold zero levels; no kernel reads them into a result.
  - Rows are cut into tiles of TILE_ROWS = 16. The tensor is n_tiles blocks of n_groups blocks:
        for tile t, for group g (width w = G, or the last group's stored width):
            scale[16]  fp16   one per row of the tile
            min[16]    fp16   (asymmetric types only)
            plane[b]   each 2*w bytes: w/8 chunks of 16 bytes, one byte per row of the tile
    so a tile is n_groups * (32 or 64) + b * 2 * Ks bytes and group g starts g * block_bytes()
    bytes into it (every group before the last is whole).
  - Chunk c of plane p covers columns k0 = g*G + 8c .. k0+7; byte r holds
        low nibble  = bits p of q[r, k0+0..k0+3]   (bit i = weight k0+i)
        high nibble = bits p of q[r, k0+4..k0+7]
    so one 16-byte load gives the 4-bit table indices of 16 rows for two groups of 4 activations
    (vqtbl1q_s8 on NEON, pshufb per 128-bit lane on AVX2).
  - Dequantized value: asymmetric  w = scale * q + min
                       symmetric   w = scale * (q - (2^b - 1) / 2)      (levels ±0.5, ±1.5, ... × scale)
                       z           w = scale * (q - 2^(b - 1))          (levels -2^(b-1) .. 2^(b-1) - 1)
    with q in [0, 2^b - 1] (QuantType.zero_point). A z type's scale may be negative: its fit puts
    the group's largest magnitude on the extra level -2^(b-1), as llama.cpp's _0 types do.
Why 32 columns: every group size is a multiple of 32, so every stored width is too, and each SIMD
kernel's step divides it: AVX2 reads 16 columns per 32-byte plane load and keeps Σx per 32
activations, AVX-512 reads 32 columns per 64-byte load, NEON 8 per 16-byte load. A finer step would
give AVX2/AVX-512 a second, partial-load path for at most 24 more columns per row; real models' K
(576, 896, 1536, 4864) are multiples of 32 anyway.
Files written before this layout (no "compact-tail" in edgeq.required_features) store a partial
last group padded to all G columns (Ks = ceil(K / G) * G); the functions here read and write both
(compact_tail=False), and the readers turn such tensors into this layout when they load them.

Packed layout of a uniform packed tensor (p<b>g<G><a|s>), same numbers, ISA-neutral:
  - M is padded to Mp = ceil(M / 16) * 16; rows are cut into tiles of 16 as above; groups as above,
    the last one stored in ceil(tail / 32) * 32 columns (32 columns is also one block of the int8
    activations, the unit every multiply-add kernel reads). There is no padded-tail variant: the
    family is newer than compact tails.
  - The tensor is n_tiles tiles of equal size, each ceil(K / G) blocks in group order:
        scale[16]  fp16   one per row of the tile
        min[16]    fp16   (asymmetric types only)
        levels     for the block's w columns (w = G, or the last group's stored width):
            b = 8:       w / 4 quads of 64 bytes, [w/4][16 rows][4 columns]: byte (j, r, i) is q[r, 4j + i]
            b < 8:       w / 32 runs of 64 b bytes, each 32 columns as planes of bit fields, the
                         level's lowest bits first: 4-bit fields (b >= 4), 2-bit fields (b = 2, 3, 6),
                         1-bit fields (b odd). The plane of f-bit fields is f chunks of 64 bytes
                         [16 rows][4 bytes]; byte (r, i) of chunk m holds the fields of columns
                         32m/f + i + 4t at bits f*t (t < 8/f). At b = 4 that is w / 8 quads, byte
                         (j, r, i) = q[r, 8j + i] | q[r, 8j + 4 + i] << 4; at b = 6 a level is its
                         nibble | its 2-bit field << 4. So b bits cost b bits, as in the bit-plane
                         types (files before the "packed-fields" feature stored 5 and 6 bits a byte each).
  - Why: one 64-byte load is 16 rows x 4 consecutive columns, what AVX-512 VNNI vpdpbusd multiplies
    by 4 activations broadcast to every row (u8 levels x s8 activations, summed per row in int32);
    two 32-byte loads feed AVX2 vpmaddubsw for 8 rows each, four 16-byte loads NEON sdot for 4 rows.
    A plane's fields become a quad's bytes by one shift and one mask (the 4-bit byte holds two
    4-column blocks: mask the low nibbles, shift the high ones).
  - Dequantized value: exactly as the bit-plane types above (the same levels, scales and mins).

Layout of a codebook tensor (c4g<G>), ISA-neutral:
  - Tiles of 16 rows (M padded to Mp) of equal size, groups as the packed family's (the last one in
    ceil(tail / 32) * 32 columns). A tile is
        codebook[16]  int8   the tile's 16 levels, each in [-64, 63] (index i -> codebook[i])
        then ceil(K / G) blocks in group order, each exactly a p4g<G>s block:
            scale[16]  fp16   one per row of the tile
            indices    w / 8 quads of 64 bytes, [w/8][16 rows][4 columns]: byte (j, r, i) holds the
                       index of column 8j + i in its low nibble and of 8j + 4 + i in its high nibble
  - Dequantized value: w = scale * codebook[index] (one float32 multiply).
  - Why [-64, 63]: a level biased by +64 is a u8 <= 127, so AVX2's vpmaddubsw (u8 x s8 pairs into
    s16) cannot saturate (2 x 127 x 127 = 32258) and AVX-512's vpdpbusd takes it as it is; the bias
    comes back out exactly as 64 Σ xq per block of 32 activations. 7-bit levels cost a centroid at
    most 1/256 of the tile's range, far below the 16-level step.
  - Why per tile: the kernels load the 16 levels once per tile into one register; a per-tensor
    codebook is the same layout with every tile's copy equal (the converter measures both).

Layout of a 2-D codebook tensor (v2g<G>s), ISA-neutral: the codebook layout above with
  - codebook[32] int8 at the start of each tile: the 16 centroids (c0, c1) as c0 of all 16, then c1
    of all 16, each in [-64, 63];
  - per group scale[16] fp16 (no min), then the pair indices as w / 16 quads of 64 bytes
    [w/16][16 rows][4]: byte (j, r, i) holds in its low nibble the index P of the pair of columns
    (16j+i, 16j+4+i) and in its high nibble the index Q of (16j+8+i, 16j+12+i);
  - w[16j+i] = scale c0[P], w[16j+4+i] = scale c1[P], w[16j+8+i] = scale c0[Q], w[16j+12+i] = scale c1[Q].
  Pairs are columns 4 apart within each 8 (column k with k % 8 < 4 and k + 4) so that one quad
  decodes, by a lookup of each nibble in c0 and in c1, into exactly the four 16-row x 4-column runs
  of levels the c4 kernels multiply (no byte interleave). Here the pair indices are an (Mp, Ks / 2)
  array in pair order: pair p = 4m + i covers columns 8m + i and 8m + 4 + i, so that they pack as
  the p4 layout packs levels over Ks / 2 columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE_ROWS = 16
CHUNK_COLS = 8  # columns covered by one byte of a plane (two nibbles of 4)
GROUP_STEP = 32  # a partial last group is stored in a multiple of this many columns

# families (mirror of enum eq_qfamily in native/): the value is what error messages show
PLAIN = "plain"
UNIFORM_BITPLANE = "uniform-bitplane"
UNIFORM_PACKED = "uniform-packed"
CODEBOOK = "codebook"
FAMILIES = (PLAIN, UNIFORM_BITPLANE, UNIFORM_PACKED, CODEBOOK)
UNIFORM_FAMILIES = (UNIFORM_BITPLANE, UNIFORM_PACKED)    # grouped uniform levels: every method writes both
BLOB_FAMILIES = (UNIFORM_BITPLANE, UNIFORM_PACKED, CODEBOOK)  # stored as I8 blobs of 16-row tiles
CODEBOOK_SIZE = 16                   # entries per codebook (4-bit indices): levels, or 2-D centroids
CODEBOOK_LEVELS = (-64, 63)          # the range of a codebook level (int8)


def _unknown_family(family: str):
    return ValueError(f"quant family {family!r} is not handled here")


@dataclass(frozen=True)
class QuantType:
    name: str          # stored in the file, e.g. "u4g64a"
    id: int            # mirror of enum eq_qtype in native/include/edgeq.h
    family: str        # PLAIN | UNIFORM_BITPLANE | UNIFORM_PACKED | CODEBOOK
    bits: int          # bits per weight before scales (32 / 16 for plain types)
    group: int         # weights per scale along K (0 for plain types)
    symmetric: bool    # scale only, no min (zero_point below)
    dtype: str         # numpy dtype of the stored elements: "<f4", "<f2" (plain) or "u1" (packed bytes)
    integer_zero: bool = False   # symmetric with zero point 2^(b-1) (a z type), not (2^b - 1) / 2

    def zero_point(self) -> float:
        """z in w = scale * (q - z) for symmetric types; 0 for the others (they store a min)."""
        if not self.symmetric or self.family == CODEBOOK:
            return 0.0
        return float(1 << (self.bits - 1)) if self.integer_zero else ((1 << self.bits) - 1) / 2.0

    def is_uniform(self) -> bool:
        """Grouped uniform levels with fp16 scales (every quantization method writes these)."""
        return self.family in UNIFORM_FAMILIES

    def padded_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """(Mp, whole groups of columns): the grid the quantizers fit, zeros beyond (rows, cols).
        What is stored may be narrower: stored_cols."""
        if self.family == PLAIN:
            return rows, cols
        if self.family in BLOB_FAMILIES:
            return -(-rows // TILE_ROWS) * TILE_ROWS, -(-cols // self.group) * self.group
        raise _unknown_family(self.family)

    def stored_cols(self, cols: int, compact_tail: bool = True) -> int:
        """Columns stored per row of a uniform tensor: the last group rounded up to GROUP_STEP
        columns (compact_tail, and always for the packed family), or to the whole group (bit-plane
        files written before that layout)."""
        step = GROUP_STEP if compact_tail or self.family != UNIFORM_BITPLANE else self.group
        return -(-cols // step) * step

    def header_bytes(self) -> int:
        """Bytes of a block's scales and mins: 16 fp16 each."""
        return 2 * TILE_ROWS * (1 if self.symmetric else 2)

    def level_bits(self) -> int:
        """Packed and codebook families: bits each weight's level (index) takes in the file (b bits
        in fields of b < 8, half a nibble for v2's pairs, a byte at 8)."""
        return self.bits if self.bits <= 6 else 8

    def index_span(self) -> int:
        """Codebook family: weights per index (2 for v2's pairs, else 1)."""
        return 2 if self.family == CODEBOOK and self.bits == 2 else 1

    def block_bytes(self, width: int | None = None) -> int:
        """Bytes of one (tile, group) block of `width` stored columns (default G): scales, mins, then
        planes (bit-plane) or levels (packed)."""
        width = self.group if width is None else width
        if self.family == UNIFORM_BITPLANE:
            return self.header_bytes() + self.bits * 2 * width
        if self.family in (UNIFORM_PACKED, CODEBOOK):
            return self.header_bytes() + TILE_ROWS * width * self.level_bits() // 8
        raise _unknown_family(self.family)

    def tile_header_bytes(self) -> int:
        """Bytes at the start of every tile before its first block: the codebook family's entries."""
        return CODEBOOK_SIZE * self.index_span() if self.family == CODEBOOK else 0

    def nbytes(self, rows: int, cols: int, compact_tail: bool = True) -> int:
        if self.family == PLAIN:
            return rows * cols * self.bits // 8
        if self.family == UNIFORM_BITPLANE:
            n_tiles, n_groups = -(-rows // TILE_ROWS), -(-cols // self.group)
            tile_bytes = n_groups * self.block_bytes(0) + self.bits * 2 * self.stored_cols(cols, compact_tail)
            return n_tiles * tile_bytes
        if self.family in (UNIFORM_PACKED, CODEBOOK):
            n_tiles, n_groups = -(-rows // TILE_ROWS), -(-cols // self.group)
            return n_tiles * (self.tile_header_bytes() + n_groups * self.block_bytes(0) +
                              TILE_ROWS * self.stored_cols(cols) * self.level_bits() // 8)
        raise _unknown_family(self.family)

    def allows_1d(self) -> bool:
        """Whether a tensor of this type may have a 1-D shape (n,): plain types only."""
        return self.family == PLAIN

    def nbytes_for_shape(self, shape: tuple[int, ...], compact_tail: bool = True) -> int:
        """Bytes of a stored tensor of logical `shape`: (M, K), or (n,) for the types that allow it."""
        if len(shape) == 1:
            if not self.allows_1d():
                raise ValueError(f"{self.name} needs a 2-D shape, got {shape}")
            return self.nbytes(1, shape[0], compact_tail)
        return self.nbytes(*shape, compact_tail=compact_tail)

    def bits_per_weight(self, rows: int, cols: int) -> float:
        return 8.0 * self.nbytes(rows, cols) / (rows * cols)


BITS = (2, 3, 4, 5, 6, 8)
PACKED_BITS = (4, 5, 6, 8)      # the packed widths of the first table rows ...
PACKED_LOW_BITS = (2, 3)        # ... and those added after the 2-D codebook (ids at the end)
GROUPS = (32, 64, 128)
LAYOUTS = {UNIFORM_BITPLANE: "u", UNIFORM_PACKED: "p"}   # family -> the type names' first letter
CODEBOOK_BITS = (4,)
VECTOR_BITS, VECTOR_GROUPS = 2, (64, 128)   # v2g<G>s: 2-D codebook (benchmarks/README.md: G = 32 lost)
ZERO_BITS = (4, 5, 8)           # z types: llama.cpp's Q4_0, Q5_0, Q8_0 grids (blocks of 32)
ZERO_GROUP = 32


def _suffix(symmetric: bool, integer_zero: bool = False) -> str:
    return "z" if integer_zero else "s" if symmetric else "a"


def _build_table() -> dict[str, QuantType]:
    """f32, f16, then per family in LAYOUTS order every (bits, group, a|s), the codebook types, the
    z types, the 2-D codebook types, then the packed types at 2 and 3 bits: ids never change, new
    rows go at the end."""
    table = {
        "f32": QuantType("f32", 0, PLAIN, 32, 0, False, "<f4"),
        "f16": QuantType("f16", 1, PLAIN, 16, 0, False, "<f2"),
    }

    def add_grouped(prefix: str, family: str, widths) -> None:
        """<prefix><b>g<G><a|s> for every width, group, then asymmetric before symmetric."""
        for bits in widths:
            for group in GROUPS:
                for symmetric in (False, True):
                    name = f"{prefix}{bits}g{group}{_suffix(symmetric)}"
                    table[name] = QuantType(name, len(table), family, bits, group, symmetric, "u1")
    for family, widths in ((UNIFORM_BITPLANE, BITS), (UNIFORM_PACKED, PACKED_BITS)):
        add_grouped(LAYOUTS[family], family, widths)
    add_grouped("c", CODEBOOK, CODEBOOK_BITS)          # c<b>g<G><a|s>: scale and min, or scale only
    for family, widths in ((UNIFORM_BITPLANE, BITS), (UNIFORM_PACKED, PACKED_BITS)):
        for bits in (b for b in widths if b in ZERO_BITS):
            name = f"{LAYOUTS[family]}{bits}g{ZERO_GROUP}z"
            table[name] = QuantType(name, len(table), family, bits, ZERO_GROUP, True, "u1", integer_zero=True)
    for group in VECTOR_GROUPS:
        name = f"v{VECTOR_BITS}g{group}s"
        table[name] = QuantType(name, len(table), CODEBOOK, VECTOR_BITS, group, True, "u1")
    add_grouped(LAYOUTS[UNIFORM_PACKED], UNIFORM_PACKED, PACKED_LOW_BITS)
    return table


TYPES: dict[str, QuantType] = _build_table()


def uniform_type(bits: int, group: int, symmetric: bool, family: str = UNIFORM_BITPLANE,
                 integer_zero: bool = False) -> QuantType:
    if family not in LAYOUTS:
        raise _unknown_family(family)
    name = f"{LAYOUTS[family]}{bits}g{group}{_suffix(symmetric, integer_zero)}"
    if name not in TYPES:
        raise KeyError(name)
    return TYPES[name]


def codebook_type(bits: int, group: int, symmetric: bool) -> QuantType:
    """c4g<G><a|s> at 4 bits, v2g<G>s (2-D centroids) at 2."""
    name = f"{'v' if bits == VECTOR_BITS else 'c'}{bits}g{group}{_suffix(symmetric)}"
    if name not in TYPES:
        raise KeyError(name)
    return TYPES[name]


def with_family(qtype: QuantType, family: str) -> QuantType:
    """The type holding the same numbers as uniform `qtype` in the other layout (KeyError: none)."""
    return uniform_type(qtype.bits, qtype.group, qtype.symmetric, family, qtype.integer_zero)


# ---------------------------------------------------------------------------------------------
# packing: integer levels + per-group scale/min -> canonical bytes, and back
# ---------------------------------------------------------------------------------------------

def _pack_blocks(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
                 width: int) -> np.ndarray:
    """levels (Mp, n * width), scales/mins (Mp, n) -> (n_tiles, n, block_bytes(width)) blocks."""
    rows, cols = levels.shape
    bits, n_groups, n_chunks = qtype.bits, cols // width, width // CHUNK_COLS
    n_tiles = rows // TILE_ROWS
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
    parts = [scales.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1)]
    if not qtype.symmetric:
        parts.append(mins.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1))
    scale_bytes = [np.ascontiguousarray(part).view(np.uint8).reshape(n_tiles, n_groups, -1) for part in parts]
    block = np.concatenate(scale_bytes + [plane_bytes], axis=2)
    assert block.shape[2] == qtype.block_bytes(width)
    return block


def pack(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
         cols: int | None = None, compact_tail: bool = True) -> np.ndarray:
    """levels (Mp, >= Ks) uint8 in [0, 2^b), scales/mins (Mp, ceil(K/G)) -> packed uint8 bytes of a
    tensor of `cols` = K logical columns (default: all of levels' columns, a multiple of
    GROUP_STEP); levels beyond Ks = stored_cols(K) are dropped (the quantizers' zero padding)."""
    if qtype.family == UNIFORM_PACKED:
        return _pack_packed(qtype, levels, scales, mins, levels.shape[1] if cols is None else cols)
    if qtype.family != UNIFORM_BITPLANE:
        raise _unknown_family(qtype.family)
    group, n_tiles = qtype.group, levels.shape[0] // TILE_ROWS
    stored = levels.shape[1] if cols is None else qtype.stored_cols(cols, compact_tail)
    n_full, width = stored // group, stored % group                        # width: a partial last group
    pick = lambda a, begin, end: None if a is None else a[:, begin:end]
    tiles = []
    if n_full:
        tiles.append(_pack_blocks(qtype, levels[:, :n_full * group], scales[:, :n_full],
                                  pick(mins, 0, n_full), group).reshape(n_tiles, -1))
    if width:
        tiles.append(_pack_blocks(qtype, levels[:, n_full * group:stored], scales[:, n_full:n_full + 1],
                                  pick(mins, n_full, n_full + 1), width).reshape(n_tiles, -1))
    return np.concatenate(tiles, axis=1).reshape(-1)


def _unpack_blocks(qtype: QuantType, blocks: np.ndarray, width: int):
    """(n_tiles, n, block_bytes(width)) blocks -> (levels (Mp, n * width), scales (Mp, n), mins or None)."""
    n_tiles, n_groups, _ = blocks.shape
    bits, n_chunks, padded_rows = qtype.bits, width // CHUNK_COLS, n_tiles * TILE_ROWS
    scale_span = 2 * TILE_ROWS

    def halves(offset):
        raw = np.ascontiguousarray(blocks[:, :, offset:offset + scale_span]).view(np.float16)
        return raw.transpose(0, 2, 1).reshape(padded_rows, n_groups)        # (t, g, r) -> (t*r, g)

    scales = halves(0)
    mins = None if qtype.symmetric else halves(scale_span)
    start = scale_span * (1 if qtype.symmetric else 2)
    planes = blocks[:, :, start:].reshape(n_tiles, n_groups, bits, n_chunks, TILE_ROWS)
    # bit i of a byte is column i of its chunk (low nibble columns 0-3, high nibble 4-7)
    columns = np.unpackbits(planes[..., None], axis=-1, bitorder="little")  # (t, g, p, c, r, 8)
    levels = np.zeros((n_tiles, n_groups, n_chunks, TILE_ROWS, CHUNK_COLS), dtype=np.uint8)
    for p in range(bits):
        levels |= columns[:, :, p] << p
    levels = levels.transpose(0, 3, 1, 2, 4)                              # (t, r, g, c, 8)
    return levels.reshape(padded_rows, n_groups * width), scales, mins


def unpack(qtype: QuantType, data: np.ndarray, rows: int, cols: int, compact_tail: bool = True):
    """Packed bytes -> (levels (Mp, Ks) uint8, scales (Mp, ceil(K/G)) f16, mins or None)."""
    if qtype.family == UNIFORM_PACKED:
        return _unpack_packed(qtype, data, rows, cols)
    if qtype.family != UNIFORM_BITPLANE:
        raise _unknown_family(qtype.family)
    group, n_tiles = qtype.group, -(-rows // TILE_ROWS)
    stored = qtype.stored_cols(cols, compact_tail)
    n_full, width = stored // group, stored % group
    tiles = np.asarray(data, dtype=np.uint8).reshape(n_tiles, -1)
    full_bytes = n_full * qtype.block_bytes()
    parts = []
    if n_full:
        parts.append(_unpack_blocks(qtype, tiles[:, :full_bytes].reshape(n_tiles, n_full, -1), group))
    if width:
        parts.append(_unpack_blocks(qtype, tiles[:, full_bytes:].reshape(n_tiles, 1, -1), width))
    levels = np.concatenate([part[0] for part in parts], axis=1)
    scales = np.concatenate([part[1] for part in parts], axis=1)
    mins = None if qtype.symmetric else np.concatenate([part[2] for part in parts], axis=1)
    return levels, scales, mins


def _field_planes(bits: int) -> list[tuple[int, int]]:
    """Planes of a 32-column run of b-bit levels (b < 8), as (field width, the level's bit it
    starts at): 4-bit fields (b >= 4), 2-bit (b = 2, 3, 6), 1-bit (b odd), lowest bits first."""
    planes, at = [], 0
    for width in (4, 2, 1):
        if (width == 4 and bits >= 4) or (width == 2 and bits in (2, 3, 6)) or (width == 1 and bits % 2):
            planes.append((width, at))
            at += width
    return planes


def _run_cols(bits: int) -> int:
    """Columns of one run of planes: 32 (a 1-bit chunk's columns); 8 at 4 bits, whose one plane
    repeats every 8 columns (so v2's 16-index partial groups pack too)."""
    return 8 if bits == 4 else 32


def _layout_bits(qtype: QuantType) -> int:
    """The packed layout a family's levels take: the codebooks' 4-bit indices, else the type's bits."""
    return 4 if qtype.family == CODEBOOK else qtype.bits


def _packed_level_bytes(qtype: QuantType, q: np.ndarray) -> np.ndarray:
    """(tile, 16 rows, groups, w) levels -> (tile, groups, level bytes of w columns)."""
    n_tiles, _, n_groups, width = q.shape
    bits = _layout_bits(qtype)
    if bits == 8:                                                          # [w/4][16][4]
        quads = q.reshape(n_tiles, TILE_ROWS, n_groups, width // 4, 4)
        return np.ascontiguousarray(quads.transpose(0, 2, 3, 1, 4)).reshape(n_tiles, n_groups, -1)
    run = _run_cols(bits)
    runs = q.reshape(n_tiles, TILE_ROWS, n_groups, width // run, run)
    planes = []
    for field, at in _field_planes(bits):               # [w/run][chunk][16 rows][4 bytes of 8/field fields]
        fields = ((runs >> at) & ((1 << field) - 1)).reshape(n_tiles, TILE_ROWS, n_groups, width // run,
                                                               run * field // 32, 8 // field, 4)
        chunks = np.zeros(fields.shape[:5] + (4,), dtype=np.uint8)
        for f in range(8 // field):
            chunks |= (fields[..., f, :] << (field * f)).astype(np.uint8)
        planes.append(chunks.transpose(0, 2, 3, 4, 1, 5).reshape(n_tiles, n_groups, width // run, -1))
    return np.ascontiguousarray(np.concatenate(planes, axis=3)).reshape(n_tiles, n_groups, -1)


def _packed_levels(qtype: QuantType, raw: np.ndarray, width: int) -> np.ndarray:
    """_packed_level_bytes' inverse for one group: (tile, level bytes of w columns) -> (tile, 16, w)."""
    n_tiles, bits = raw.shape[0], _layout_bits(qtype)
    if bits == 8:
        return raw.reshape(n_tiles, width // 4, TILE_ROWS, 4).transpose(0, 2, 1, 3).reshape(n_tiles, TILE_ROWS, width)
    run = _run_cols(bits)
    runs = raw.reshape(n_tiles, width // run, 2 * run * bits)
    q = np.zeros((n_tiles, TILE_ROWS, width // run, run), dtype=np.uint8)
    offset = 0
    for field, at in _field_planes(bits):
        n_chunks = run * field // 32
        chunks = runs[:, :, offset:offset + 64 * n_chunks].reshape(n_tiles, width // run, n_chunks, TILE_ROWS, 1, 4)
        fields = (chunks >> (field * np.arange(8 // field, dtype=np.uint8)[:, None])) & ((1 << field) - 1)
        q |= (fields.transpose(0, 3, 1, 2, 4, 5).reshape(n_tiles, TILE_ROWS, width // run, run) << at).astype(np.uint8)
        offset += 64 * n_chunks
    return q.reshape(n_tiles, TILE_ROWS, width)


def _scale_bytes(qtype: QuantType, scales, mins, n_tiles: int, n_groups: int) -> np.ndarray:
    """(Mp, n_groups) scales/mins -> (tile, group, header_bytes): 16 fp16 scales, then 16 mins."""
    parts = [scales.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1)]
    if not qtype.symmetric:
        parts.append(mins.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1))
    return np.concatenate([np.ascontiguousarray(part).view(np.uint8).reshape(n_tiles, n_groups, -1)
                           for part in parts], axis=2)


def _pack_packed(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
                 cols: int) -> np.ndarray:
    """The packed family's pack: levels (Mp, >= Ks) -> tiles of (scales, mins, level quads) blocks.
    v2 (index_span 2): levels are the pair indices (Mp, >= Ks / 2), packed as 4-bit levels over Ks / 2
    columns in groups of G / 2."""
    span = qtype.index_span()
    group, stored = qtype.group // span, qtype.stored_cols(cols) // span
    n_tiles, n_full, width = levels.shape[0] // TILE_ROWS, stored // group, stored % group
    q = levels[:, :stored].astype(np.uint8).reshape(n_tiles, TILE_ROWS, stored)
    headers = _scale_bytes(qtype, scales[:, :n_full + (width > 0)],
                           None if mins is None else mins[:, :n_full + (width > 0)], n_tiles, n_full + (width > 0))
    parts = []
    if n_full:
        whole = q[:, :, :n_full * group].reshape(n_tiles, TILE_ROWS, n_full, group)
        parts.append(np.concatenate([headers[:, :n_full], _packed_level_bytes(qtype, whole)], axis=2).reshape(n_tiles, -1))
    if width:                                                              # the last group's stored width
        last = q[:, :, n_full * group:].reshape(n_tiles, TILE_ROWS, 1, width)
        parts.append(np.concatenate([headers[:, n_full:], _packed_level_bytes(qtype, last)], axis=2).reshape(n_tiles, -1))
    return np.concatenate(parts, axis=1).reshape(-1)


def _unpack_packed(qtype: QuantType, data: np.ndarray, rows: int, cols: int):
    """The packed family's unpack: -> (levels (Mp, Ks), scales (Mp, ceil(K/G)), mins or None)."""
    span = qtype.index_span()                                              # v2: pair indices, as _pack_packed
    group, stored, header = qtype.group // span, qtype.stored_cols(cols) // span, qtype.header_bytes()
    n_tiles = -(-rows // TILE_ROWS)
    tiles = np.asarray(data, dtype=np.uint8).reshape(n_tiles, -1)
    levels = np.zeros((n_tiles, TILE_ROWS, stored), dtype=np.uint8)
    headers, at = [], 0
    for start in range(0, stored, group):
        width = min(group, stored - start)
        block = tiles[:, at:at + qtype.block_bytes(width * span)]
        headers.append(block[:, None, :header])
        levels[:, :, start:start + width] = _packed_levels(qtype, block[:, header:], width)
        at += qtype.block_bytes(width * span)
    headers = np.concatenate(headers, axis=1)
    n_groups, span = headers.shape[1], 2 * TILE_ROWS

    def halves(offset):
        raw = np.ascontiguousarray(headers[:, :, offset:offset + span]).view(np.float16)
        return raw.transpose(0, 2, 1).reshape(n_tiles * TILE_ROWS, n_groups)
    return levels.reshape(n_tiles * TILE_ROWS, stored), halves(0), None if qtype.symmetric else halves(span)


def pack_codebook(qtype: QuantType, indices: np.ndarray, scales: np.ndarray, codebooks: np.ndarray,
                  cols: int | None = None, mins: np.ndarray | None = None) -> np.ndarray:
    """Codebook family: indices (Mp, >= Ks / span) uint8 in [0, 16) (v2: pair indices in pair order),
    scales (Mp, ceil(K/G)), codebooks (Mp / 16, 16 x span) int8 in [-64, 63] (v2: c0 of the 16
    centroids, then c1) -> the tensor's bytes (each tile: its codebook, then its blocks)."""
    if qtype.family != CODEBOOK:
        raise _unknown_family(qtype.family)
    codebooks = np.asarray(codebooks)
    low, high = CODEBOOK_LEVELS
    if codebooks.min() < low or codebooks.max() > high:
        raise ValueError(f"codebook levels must lie in [{low}, {high}]")
    n_tiles, span = indices.shape[0] // TILE_ROWS, qtype.index_span()
    blocks = _pack_packed(qtype, indices, scales, mins, indices.shape[1] * span if cols is None else cols)
    head = codebooks.astype(np.int8).view(np.uint8).reshape(n_tiles, CODEBOOK_SIZE * span)
    return np.concatenate([head, blocks.reshape(n_tiles, -1)], axis=1).reshape(-1)


def unpack_codebook(qtype: QuantType, data: np.ndarray, rows: int, cols: int):
    """Codebook family bytes -> (indices (Mp, Ks / span) uint8, scales (Mp, ceil(K/G)) f16, codebooks
    (Mp / 16, 16 x span) int8, mins or None)."""
    if qtype.family != CODEBOOK:
        raise _unknown_family(qtype.family)
    n_tiles = -(-rows // TILE_ROWS)
    tiles = np.asarray(data, dtype=np.uint8).reshape(n_tiles, -1)
    head = qtype.tile_header_bytes()
    indices, scales, mins = _unpack_packed(qtype, tiles[:, head:].reshape(-1), rows, cols)
    return indices, scales, np.ascontiguousarray(tiles[:, :head]).view(np.int8), mins


def codebook_levels(qtype: QuantType, indices: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(Mp, Ks / span) indices and (Mp / 16, 16 x span) codebooks -> (Mp, Ks) float32 levels: each
    index's level (c4), or each pair index's c0 at column 8m + i and c1 at 8m + 4 + i (v2)."""
    per_row = np.repeat(np.asarray(codebooks, dtype=np.float32), TILE_ROWS, axis=0)    # (Mp, 16 span)
    index = indices.astype(np.intp)
    if qtype.index_span() == 1:
        return np.take_along_axis(per_row, index, axis=1)
    rows, n_pairs = index.shape
    first = np.take_along_axis(per_row[:, :CODEBOOK_SIZE], index, axis=1).reshape(rows, n_pairs // 4, 1, 4)
    second = np.take_along_axis(per_row[:, CODEBOOK_SIZE:], index, axis=1).reshape(rows, n_pairs // 4, 1, 4)
    return np.concatenate([first, second], axis=2).reshape(rows, 2 * n_pairs)


def dequantize_codebook(qtype: QuantType, indices: np.ndarray, scales: np.ndarray, codebooks: np.ndarray,
                        mins: np.ndarray | None = None) -> np.ndarray:
    """(Mp, Ks / span) indices, (Mp, ceil(Ks/G)) scales and mins (asymmetric types), (Mp/16, 16 x span)
    codebooks -> (Mp, Ks) float32: scale * level, then + min (two roundings, as the C reference)."""
    values = codebook_levels(qtype, indices, codebooks)
    stored = values.shape[1]
    expand = lambda a: np.repeat(a.astype(np.float32), qtype.group, axis=1)[:, :stored]
    scaled = expand(scales) * values
    return scaled if qtype.symmetric else scaled + expand(mins)


def compact_tail_bytes(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A tensor stored in the layout before compact tails (the last group padded to G) -> the same
    tensor in today's layout. Copies only what is kept: scales, mins and each plane's first chunks."""
    if qtype.family != UNIFORM_BITPLANE or qtype.stored_cols(cols) == qtype.stored_cols(cols, False):
        return np.asarray(data, dtype=np.uint8)
    n_tiles, n_full = -(-rows // TILE_ROWS), cols // qtype.group
    width = qtype.stored_cols(cols) - n_full * qtype.group
    tiles = np.asarray(data, dtype=np.uint8).reshape(n_tiles, -1)
    full_bytes = n_full * qtype.block_bytes()
    scale_bytes = qtype.block_bytes(0)
    last = tiles[:, full_bytes:].reshape(n_tiles, -1)                      # (t, block_bytes(G))
    planes = last[:, scale_bytes:].reshape(n_tiles, qtype.bits, 2 * qtype.group)[:, :, :2 * width]
    return np.concatenate([tiles[:, :full_bytes], last[:, :scale_bytes], planes.reshape(n_tiles, -1)],
                          axis=1).reshape(-1)


def dequantize_levels(qtype: QuantType, levels, scales, mins) -> np.ndarray:
    """(Mp, Ks) levels and group scales (Mp, ceil(Ks/G)) -> (Mp, Ks) float32."""
    group, stored = qtype.group, levels.shape[1]
    expand = lambda a: np.repeat(a.astype(np.float32), group, axis=1)[:, :stored]
    q = levels.astype(np.float32)
    if qtype.symmetric:
        return expand(scales) * (q - np.float32(qtype.zero_point()))
    return expand(scales) * q + expand(mins)


def _dequantize_plain(qtype: QuantType, data: np.ndarray, rows: int, cols: int, compact_tail: bool) -> np.ndarray:
    return np.asarray(data).view(qtype.dtype).astype(np.float32).reshape(rows, cols)


def _dequantize_bitplane(qtype: QuantType, data: np.ndarray, rows: int, cols: int, compact_tail: bool) -> np.ndarray:
    levels, scales, mins = unpack(qtype, data, rows, cols, compact_tail)
    return dequantize_levels(qtype, levels, scales, mins)[:rows, :cols]


def _dequantize_codebook(qtype: QuantType, data: np.ndarray, rows: int, cols: int, compact_tail: bool) -> np.ndarray:
    return dequantize_codebook(qtype, *unpack_codebook(qtype, data, rows, cols))[:rows, :cols]


_DEQUANTIZE = {PLAIN: _dequantize_plain, UNIFORM_BITPLANE: _dequantize_bitplane,
               UNIFORM_PACKED: _dequantize_bitplane,    # unpack knows both layouts
               CODEBOOK: _dequantize_codebook}


def dequantize(qtype: QuantType, data: np.ndarray, rows: int, cols: int, compact_tail: bool = True) -> np.ndarray:
    """Stored tensor bytes (uint8, as in the file) -> (rows, cols) float32; compact_tail=False reads
    the layout of files without the "compact-tail" feature."""
    if qtype.family not in _DEQUANTIZE:
        raise _unknown_family(qtype.family)
    return _DEQUANTIZE[qtype.family](qtype, np.asarray(data).view(np.uint8).reshape(-1), rows, cols, compact_tail)
