"""Keep a llama.cpp file's own grid: ggml block types that an edgeq uniform type represents exactly.

ggml's Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 store each row as blocks of 32 weights along K: integer
levels q and an fp16 scale d (and fp16 min m), dequantized in float32 as
    Q4_1, Q5_1        w = d·q + m          q in 0..15 / 0..31
    Q4_0, Q5_0, Q8_0  w = d·(q − o)        o = 8 / 16 / 128 (Q8_0 stores q − 128 as int8)
edgeq's asymmetric groups of 32 (u4g32a, u5g32a) store w = scale·q + min with fp16 scale and min,
so one Q4_1/Q5_1 block is one edgeq group: scale = d, min = m, the float32 rounding of d·q + m as
ggml's. The z types (u4g32z, u5g32z, u8g32z) store w = scale·(q − 2^(b−1)) with an fp16 scale only:
o is 2^(b−1) for all three, so a Q4_0/Q5_0/Q8_0 block is one z group, scale = d, at the ggml type's
own size (4.5, 5.5, 8.5 bits per weight), d·(q − o) rounded once in float32 as ggml does. Levels
and scales are read from the block bytes, never through float; every block is then checked against
gguf.quants' own dequantization (equal as float32 values, +0 and −0 alike); a tensor with any
block that does not match (a d that is not finite) is refused with a warning (its values not being
finite, the conversion then stops in one line). F16/F32 tensors are not grids.
K-quants multiply a 6-bit sub-block scale by an fp16 super-block scale in float, so no fp16 scale
holds them exactly. Q4_K is close: its sub-blocks of 32 are asymmetric 4-bit groups,
w = (d·sc)·q − dmin·m, so u4g32a with scale = fp16(d·sc) and min = fp16(−dmin·m) holds the same
levels with each group's scale and min rounded to fp16 (relative error <= 2^-11; 5.0 bits per weight
against Q4_K's 4.5): read_rounded gives that grid, and the allocator offers it as that type's fit when
it is closer than re-quantizing (convert.convert). Q6_K (sub-blocks of 16) and the other K-quants
have no such type.
write_blocks is read_blocks' inverse, for the other direction (convert/export_gguf.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq import quant_types
from edgeq.quant_types import QuantType

METHOD = "gguf-grid-exact"     # the method recorded for a tensor that keeps its source grid
ROUNDED_METHOD = "gguf-grid-fp16-scales"   # ... that keeps a K-quant's levels, scales rounded (read_rounded)
BLOCK = 32                     # weights per ggml block of the types below


@dataclass(frozen=True)
class BlockLayout:
    """One ggml block type: fp16 d, [fp16 m], [uint32 mask of fifth bits], then the low bits."""
    bits: int          # edgeq bits of the matching u{bits}g32a (with m) or u{bits}g32z type
    has_min: bool      # m stored (Q4_1, Q5_1); otherwise w = d * (q - offset)
    offset: int        # o in w = d * (q - o) for types without m: 2^(bits - 1), the z types' zero point
    fifth_bit: bool    # Q5_0 / Q5_1: a 32-bit little-endian mask holds bit 4 of each level

    def nbytes(self) -> int:
        low = BLOCK if self.bits == 8 else BLOCK // 2
        return 2 + 2 * self.has_min + 4 * self.fifth_bit + low


def _layouts() -> dict:
    from gguf import GGMLQuantizationType as T
    return {
        T.Q4_0: BlockLayout(4, False, 8, False),
        T.Q4_1: BlockLayout(4, True, 0, False),
        T.Q5_0: BlockLayout(5, False, 16, True),
        T.Q5_1: BlockLayout(5, True, 0, True),
        T.Q8_0: BlockLayout(8, False, 128, False),
    }


def rounded_type(ggml_type) -> QuantType | None:
    """The edgeq type that holds this K-quant's levels with fp16-rounded group scales (Q4_K: u4g32a),
    or None."""
    from gguf import GGMLQuantizationType as T
    return quant_types.uniform_type(4, BLOCK, False) if ggml_type == T.Q4_K else None


def read_rounded(ggml_type, raw: np.ndarray, cols: int):
    """Raw rows of Q4_K blocks, (M, K/256 * 144) uint8 -> levels (M, K) uint8, scales fp16(d·sc) and
    mins fp16(−dmin·m) (M, K/32): the sub-block scales unpacked by gguf.quants' own Q4_K.get_scale_min."""
    import gguf
    if rounded_type(ggml_type) is None:
        raise KeyError(ggml_type)
    _, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, block_bytes)       # (M*K/256, 144)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)                     # (n, 1)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])                           # (n, 8) each
    with np.errstate(over="ignore"):
        scales = (d * sc.astype(np.float32)).astype(np.float16)
        mins = (-(dmin * m.astype(np.float32))).astype(np.float16)
    # 4 chunks of 32 bytes: low nibbles are sub-block 2i, high nibbles 2i + 1
    qs = blocks[:, 16:].reshape(-1, 4, 1, BLOCK) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    levels = (qs & 0x0F).reshape(rows, cols)
    per_row = cols // BLOCK
    return levels, scales.reshape(rows, per_row), mins.reshape(rows, per_row)


def layout(ggml_type) -> BlockLayout:
    """The block layout of Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 (KeyError for other types)."""
    return _layouts()[ggml_type]


def edgeq_type(ggml_type) -> QuantType | None:
    """The edgeq type that holds this ggml type's blocks exactly, or None (K-quants, floats, ...)."""
    layout = _layouts().get(ggml_type)
    if layout is None:
        return None
    return quant_types.uniform_type(layout.bits, BLOCK, not layout.has_min, integer_zero=not layout.has_min)


def read_blocks(ggml_type, raw: np.ndarray, cols: int):
    """Raw rows of ggml blocks, (M, K/32 * block bytes) uint8 -> levels (M, K) uint8 and scales,
    mins (M, K/32) fp16 (None for types without m: their z type has no min), read from the bytes."""
    layout = _layouts()[ggml_type]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, cols // BLOCK, layout.nbytes())
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0]                       # (M, K/32)
    at = 2
    if layout.has_min:
        mins = blocks[..., 2:4].copy().view(np.float16)[..., 0]
        at = 4
    if layout.fifth_bit:
        mask = blocks[..., at:at + 4].copy().view("<u4")                             # (M, K/32, 1)
        fifth = ((mask >> np.arange(BLOCK, dtype=np.uint32)) & 1).astype(np.uint8)  # (M, K/32, 32)
        at += 4
    low = blocks[..., at:]
    if layout.bits == 8:
        levels = (low.view(np.int8).astype(np.int16) + layout.offset).astype(np.uint8)
    else:   # byte j holds level j in its low nibble and level j + 16 in its high nibble
        levels = np.concatenate([low & 0x0F, low >> 4], axis=-1)
        if layout.fifth_bit:
            levels |= fifth << 4
    return levels.reshape(rows, cols), scales, mins if layout.has_min else None


def write_blocks(ggml_type, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None) -> np.ndarray:
    """read_blocks' inverse: levels (M, K) uint8 in 0..2^bits - 1 (q, with w = d·(q − o) for types
    without m), d and m (M, K/32) fp16 (m ignored for types without it) -> raw rows of ggml blocks,
    (M, K/32 * block bytes) uint8, as llama.cpp reads them."""
    layout = _layouts()[ggml_type]
    rows, cols = levels.shape
    q = np.asarray(levels, dtype=np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    parts = [np.asarray(scales, dtype=np.float16).reshape(rows, -1, 1).view(np.uint8)]
    if layout.has_min:
        parts.append(np.asarray(mins, dtype=np.float16).reshape(rows, -1, 1).view(np.uint8))
    if layout.fifth_bit:
        fifth = ((q >> 4) & 1).astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)
        parts.append(fifth.sum(axis=-1, dtype=np.uint32).astype("<u4").reshape(rows, -1, 1).view(np.uint8))
    if layout.bits == 8:
        parts.append((q.astype(np.int16) - layout.offset).astype(np.int8).view(np.uint8))
    else:   # byte j: level j in the low nibble, level j + 16 in the high one
        low = q & 0x0F
        parts.append(low[..., :BLOCK // 2] | (low[..., BLOCK // 2:] << 4))
    blocks = np.concatenate(parts, axis=-1)
    assert blocks.shape[-1] == layout.nbytes()
    return blocks.reshape(rows, -1)


def matches_gguf(ggml_type, raw: np.ndarray, cols: int) -> bool:
    """Whether every block of these raw rows, read as edgeq levels/scale/min, dequantizes to exactly
    the float32 values gguf.quants gives (-0 equal to +0)."""
    import gguf
    levels, scales, mins = read_blocks(ggml_type, raw, cols)
    ours = quant_types.dequantize_levels(edgeq_type(ggml_type), levels, scales, mins)
    theirs = np.asarray(gguf.quants.dequantize(np.asarray(raw), ggml_type), dtype=np.float32).reshape(ours.shape)
    return bool(np.array_equal(ours, theirs))


def pack_rows(qtype: QuantType, levels: np.ndarray, scales: np.ndarray, mins: np.ndarray | None) -> np.ndarray:
    """Levels (M, K) and group scales/mins (M, K/32; mins None for z types) -> packed bytes, rows
    padded to whole tiles."""
    rows, cols = levels.shape
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    assert padded_cols == cols, "ggml rows are whole blocks of 32"
    pad = ((0, padded_rows - rows), (0, 0))
    return quant_types.pack(qtype, np.pad(levels, pad), np.pad(scales, pad),
                            None if mins is None else np.pad(mins, pad), cols)
