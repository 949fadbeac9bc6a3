"""The quant-type table: one row per type, and the canonical packed layout (numpy twin of native/).

Each row names its family: how the type's weights are stored and multiplied. Today:
  PLAIN             f32, f16: a plain float tensor (GGUF F32/F16) in (M, K) numpy order.
  UNIFORM_BITPLANE  u<b>g<G><a|s>: grouped uniform levels stored as b one-bit planes (below).
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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE_ROWS = 16
CHUNK_COLS = 8  # columns covered by one byte of a plane (two nibbles of 4)

# families (mirror of enum eq_qfamily in native/): the value is what error messages show
PLAIN = "plain"
UNIFORM_BITPLANE = "uniform-bitplane"
FAMILIES = (PLAIN, UNIFORM_BITPLANE)


def _unknown_family(family: str):
    return ValueError(f"quant family {family!r} is not handled here")


@dataclass(frozen=True)
class QuantType:
    name: str          # stored in the file, e.g. "u4g64a"
    id: int            # mirror of enum eq_qtype in native/include/edgeq.h
    family: str        # PLAIN | UNIFORM_BITPLANE
    bits: int          # bits per weight before scales (32 / 16 for plain types)
    group: int         # weights per scale along K (0 for plain types)
    symmetric: bool
    dtype: str         # numpy dtype of the stored elements: "<f4", "<f2" (plain) or "u1" (packed bytes)

    def padded_shape(self, rows: int, cols: int) -> tuple[int, int]:
        if self.family == PLAIN:
            return rows, cols
        if self.family == UNIFORM_BITPLANE:
            return -(-rows // TILE_ROWS) * TILE_ROWS, -(-cols // self.group) * self.group
        raise _unknown_family(self.family)

    def block_bytes(self) -> int:
        """Bytes of one (tile, group) block: scales, mins, planes."""
        scale_bytes = 2 * TILE_ROWS * (1 if self.symmetric else 2)
        return scale_bytes + self.bits * 2 * self.group

    def nbytes(self, rows: int, cols: int) -> int:
        if self.family == PLAIN:
            return rows * cols * self.bits // 8
        if self.family == UNIFORM_BITPLANE:
            padded_rows, padded_cols = self.padded_shape(rows, cols)
            return (padded_rows // TILE_ROWS) * (padded_cols // self.group) * self.block_bytes()
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
GROUPS = (32, 64, 128)


def _build_table() -> dict[str, QuantType]:
    table = {
        "f32": QuantType("f32", 0, PLAIN, 32, 0, False, "<f4"),
        "f16": QuantType("f16", 1, PLAIN, 16, 0, False, "<f2"),
    }
    next_id = 2
    for bits in BITS:
        for group in GROUPS:
            for symmetric in (False, True):
                name = f"u{bits}g{group}{'s' if symmetric else 'a'}"
                table[name] = QuantType(name, next_id, UNIFORM_BITPLANE, bits, group, symmetric, "u1")
                next_id += 1
    return table


TYPES: dict[str, QuantType] = _build_table()


def uniform_type(bits: int, group: int, symmetric: bool) -> QuantType:
    name = f"u{bits}g{group}{'s' if symmetric else 'a'}"
    if name not in TYPES:
        raise KeyError(name)
    return TYPES[name]


# ---------------------------------------------------------------------------------------------
# packing: integer levels + per-group scale/min -> canonical bytes, and back
# ---------------------------------------------------------------------------------------------

def pack(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None) -> np.ndarray:
    """levels (Mp, Kp) uint8 in [0, 2^b), scales/mins (Mp, Kp/G) -> packed uint8 bytes."""
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
    parts = [scales.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1)]
    if not qtype.symmetric:
        parts.append(mins.astype(np.float16).reshape(n_tiles, TILE_ROWS, n_groups).transpose(0, 2, 1))
    scale_bytes = [np.ascontiguousarray(part).view(np.uint8).reshape(n_tiles, n_groups, -1) for part in parts]
    block = np.concatenate(scale_bytes + [plane_bytes], axis=2)
    assert block.shape[2] == qtype.block_bytes()
    return block.reshape(-1)


def unpack(qtype: QuantType, data: np.ndarray, rows: int, cols: int):
    """Packed bytes -> (levels (Mp, Kp) uint8, scales (Mp, Kp/G) f16, mins or None)."""
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    group, bits = qtype.group, qtype.bits
    n_tiles, n_groups, n_chunks = padded_rows // TILE_ROWS, padded_cols // group, group // CHUNK_COLS
    blocks = np.asarray(data, dtype=np.uint8).reshape(n_tiles, n_groups, qtype.block_bytes())
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


def _dequantize_bitplane(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    levels, scales, mins = unpack(qtype, data, rows, cols)
    return dequantize_levels(qtype, levels, scales, mins)[:rows, :cols]


_DEQUANTIZE = {PLAIN: _dequantize_plain, UNIFORM_BITPLANE: _dequantize_bitplane}


def dequantize(qtype: QuantType, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Stored tensor bytes (uint8, as in the file) -> (rows, cols) float32."""
    if qtype.family not in _DEQUANTIZE:
        raise _unknown_family(qtype.family)
    return _DEQUANTIZE[qtype.family](qtype, np.asarray(data).view(np.uint8).reshape(-1), rows, cols)
