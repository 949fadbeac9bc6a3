"""The only module that touches the compiled library (edgeq._native.lib).

Checks arguments (dtype, contiguity, sizes) before calling C, and turns negative EQ_ERR_* codes into
EdgeqError. Wrong Python types or shapes from the caller are programming errors (TypeError /
ValueError); what C rejects (unknown type, data too short for the shape, ...) is an EdgeqError,
since it usually comes from a file. Everything above this module works with numpy arrays only.
"""
from __future__ import annotations

import numpy as np

from .errors import EdgeqError

try:
    from ._native import ffi, lib
except ImportError as exc:   # not built: e.g. a source checkout without `pip install -e .`
    raise EdgeqError(
        "the native library edgeq._native is not built; run `pip install --no-build-isolation -e .` "
        f"in the edgeq source tree ({exc})") from exc


def _check(code: int, what: str) -> None:
    if code < 0:
        message = ffi.string(lib.eq_error_string(code)).decode()
        raise EdgeqError(f"{what}: {message} (code {code})")


def _qtype_id(qtype_name: str) -> int:
    qtype_id = lib.eq_qtype_from_name(qtype_name.encode())
    if qtype_id < 0:
        known = ", ".join(row["name"] for row in qtype_table())
        raise EdgeqError(f"unknown quant type {qtype_name!r}; known: {known}")
    return qtype_id


def _check_shape(rows: int, cols: int) -> tuple[int, int]:
    rows, cols = int(rows), int(cols)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"tensor shape must be positive, got ({rows}, {cols})")
    return rows, cols


def _check_bytes(data: np.ndarray) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise TypeError(f"data must be a numpy uint8 array, got {getattr(data, 'dtype', type(data))}")
    if not data.flags.c_contiguous:
        raise ValueError("data must be C-contiguous (a copy of a weight tensor is never made silently)")
    return data


def _check_floats(array: np.ndarray, length: int, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise TypeError(f"{name} must be a numpy float32 array, got {getattr(array, 'dtype', type(array))}")
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return array


# ---------------------------------------------------------------------------------------------
# the quant-type table
# ---------------------------------------------------------------------------------------------

def qtype_table() -> list[dict]:
    """The C table, one dict per type in id order: name, id, bits, group, symmetric, plain."""
    rows = []
    for qtype_id in range(lib.eq_qtype_count()):
        traits = lib.eq_qtype_get(qtype_id)
        rows.append({
            "name": ffi.string(traits.name).decode(),
            "id": int(traits.id),
            "bits": int(traits.bits),
            "group": int(traits.group),
            "symmetric": bool(traits.symmetric),
            "plain": bool(traits.plain),
        })
    return rows


def nbytes(qtype_name: str, rows: int, cols: int) -> int:
    """Bytes of a (rows, cols) tensor in the canonical layout, as C computes it."""
    rows, cols = _check_shape(rows, cols)
    size = lib.eq_qtype_nbytes(_qtype_id(qtype_name), rows, cols)
    if size == 0:
        raise EdgeqError(f"size of a ({rows}, {cols}) {qtype_name} tensor overflows size_t")
    return int(size)


# ---------------------------------------------------------------------------------------------
# fp16 conversion (scalar calls; for tests and small tables, not bulk data)
# ---------------------------------------------------------------------------------------------

def fp16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 fp16 bit patterns -> float32, through eq_fp16_to_fp32."""
    bits = np.asarray(bits, dtype=np.uint16)
    out = np.array([lib.eq_fp16_to_fp32(int(b)) for b in bits.reshape(-1)], dtype=np.float32)
    return out.reshape(bits.shape)


def float32_to_fp16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint16 fp16 bit patterns (round to nearest even), through eq_fp32_to_fp16."""
    values = np.asarray(values, dtype=np.float32)
    out = np.array([lib.eq_fp32_to_fp16(float(v)) for v in values.reshape(-1)], dtype=np.uint16)
    return out.reshape(values.shape)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

def dequantize(qtype_name: str, data: np.ndarray, rows: int, cols: int,
               row_begin: int = 0, row_count: int | None = None) -> np.ndarray:
    """Stored bytes of a (rows, cols) tensor -> float32 (row_count, cols) of rows from row_begin
    (all rows by default). Plain f32/f16 tensors are passed as their raw bytes too."""
    qtype_id = _qtype_id(qtype_name)
    rows, cols = _check_shape(rows, cols)
    data = _check_bytes(data)
    row_begin = int(row_begin)
    row_count = rows - row_begin if row_count is None else int(row_count)
    if row_begin < 0 or row_count < 0:
        raise ValueError(f"row range must be non-negative, got begin {row_begin}, count {row_count}")
    out = np.empty((row_count, cols), dtype=np.float32)
    code = lib.eq_dequantize_rows(qtype_id, ffi.from_buffer("uint8_t[]", data), data.nbytes, rows, cols,
                                  row_begin, row_count, ffi.from_buffer("float[]", out))
    _check(code, f"dequantize {qtype_name} ({rows}, {cols}) rows {row_begin}..{row_begin + row_count}")
    return out


def gemv(qtype_name: str, data: np.ndarray, rows: int, cols: int, x: np.ndarray) -> np.ndarray:
    """y = W x for W the (rows, cols) tensor in `data`; x float32 (cols,) -> y float32 (rows,)."""
    qtype_id = _qtype_id(qtype_name)
    rows, cols = _check_shape(rows, cols)
    data = _check_bytes(data)
    x = _check_floats(x, cols, "x")
    y = np.empty(rows, dtype=np.float32)
    code = lib.eq_gemv(qtype_id, ffi.from_buffer("uint8_t[]", data), data.nbytes, rows, cols,
                       ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y))
    _check(code, f"gemv {qtype_name} ({rows}, {cols})")
    return y


def isa() -> str:
    """The active kernel set: "ref" (scalar reference), later "avx2" or "neon"."""
    return ffi.string(lib.eq_isa_name()).decode()
