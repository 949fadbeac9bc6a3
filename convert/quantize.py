"""Quantizers: pure functions (weights, quant type) -> QuantizedTensor. No I/O here.

The quantizer is chosen by the type's family (edgeq.quant_types): plain types are stored as floats;
uniform types (bit-plane or packed levels: the same numbers) use round-to-nearest with a per-group clipping search: for every group of G
weights along K, try shrinking the range by each factor of a grid, refit scale (and min) by least squares for the
resulting levels, and keep the candidate with the smallest squared error. Scales and mins are then
rounded to fp16 and the levels recomputed against the rounded values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from edgeq import quant_types
from edgeq.quant_types import QuantType

CLIP_GRID = np.linspace(1.0, 0.5, 21).astype(np.float32)
CHUNK_WEIGHTS = 1 << 22     # rows are quantized in chunks of about this many weights to bound memory


@dataclass
class QuantizedTensor:
    qtype: QuantType
    shape: tuple[int, ...]      # logical shape, (M, K) or (n,)
    data: np.ndarray            # packed uint8 bytes, or the plain float array
    method: str
    sq_error: float             # ||W - Q(W)||^2
    sq_norm: float              # ||W||^2

    @property
    def rel_error(self) -> float:
        return (self.sq_error / self.sq_norm) ** 0.5 if self.sq_norm > 0 else 0.0


@numba.njit(parallel=True, cache=True)
def _search_asymmetric(groups, n_max, grid, scale_out, min_out):  # groups (n, G)
    n_groups, size = groups.shape
    for g in numba.prange(n_groups):
        x = groups[g]
        lo, hi = x.min(), x.max()
        best_err, best_d, best_m = np.inf, 0.0, lo
        if hi > lo:
            for r in grid:
                half, center = (hi - lo) * 0.5 * r, (hi + lo) * 0.5
                d, m = 2.0 * half / n_max, center - half
                sq = sw = sqq = sqw = 0.0
                for j in range(size):
                    q = min(max(np.floor((x[j] - m) / d + 0.5), 0.0), n_max)
                    sq += q
                    sw += x[j]
                    sqq += q * q
                    sqw += q * x[j]
                den = size * sqq - sq * sq
                if den > 0:
                    d2 = (size * sqw - sq * sw) / den
                    if d2 > 0:
                        d, m = d2, (sw - d2 * sq) / size
                # squared error of these levels under (d, m); requantizing later only lowers it
                err = d * d * sqq + 2 * d * m * sq - 2 * d * sqw + size * m * m - 2 * m * sw
                if err < best_err:
                    best_err, best_d, best_m = err, d, m
        scale_out[g] = best_d
        min_out[g] = best_m


@numba.njit(parallel=True, cache=True)
def _search_symmetric(groups, n_max, zero, integer_zero, grid, scale_out):  # levels c = q - zero
    n_groups, size = groups.shape
    for g in numba.prange(n_groups):
        x = groups[g]
        lo, hi = x.min(), x.max()
        amax = max(abs(lo), abs(hi))
        peak = lo if -lo > hi else hi   # z types: the peak, with its sign, on the extra level -zero
        best_err, best_d = np.inf, 0.0
        if amax > 0:
            for r in grid:
                d = -peak * r / zero if integer_zero else amax * r / zero
                scc = scw = 0.0
                for j in range(size):
                    c = min(max(np.floor(x[j] / d + zero + 0.5), 0.0), n_max) - zero
                    scc += c * c
                    scw += c * x[j]
                if scw * d > 0:
                    d = scw / scc
                err = d * d * scc - 2 * d * scw    # squared error up to the constant sum of x^2
                if err < best_err:
                    best_err, best_d = err, d
        scale_out[g] = best_d


def _fp16(values: np.ndarray) -> np.ndarray:
    """Round to fp16, saturating instead of overflowing to inf."""
    limit = np.finfo(np.float16).max
    return np.clip(values, -limit, limit).astype(np.float16)


def quantize_rtn(weight: np.ndarray, qtype: QuantType) -> QuantizedTensor:
    """(M, K) float32 -> packed grouped uniform tensor (search over clipping, least-squares refit)."""
    rows, cols = weight.shape
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    padded = np.zeros((padded_rows, padded_cols), dtype=np.float32)
    padded[:rows, :cols] = weight
    groups = padded.reshape(-1, qtype.group)                                   # (Mp*Kp/G, G)
    n_max = float((1 << qtype.bits) - 1)
    grid = CLIP_GRID if qtype.bits < 8 else CLIP_GRID[:6]
    scales = np.empty(groups.shape[0], dtype=np.float32)
    mins = None if qtype.symmetric else np.empty(groups.shape[0], dtype=np.float32)
    if qtype.symmetric:
        _search_symmetric(groups, n_max, qtype.zero_point(), qtype.integer_zero, grid, scales)
    else:
        _search_asymmetric(groups, n_max, grid, scales, mins)
    scales16 = _fp16(scales)
    step = np.where(scales16 == 0, np.float32(1), scales16.astype(np.float32))[:, None]
    if qtype.symmetric:
        levels = np.floor(groups / step + (qtype.zero_point() + 0.5))
    else:
        mins16 = _fp16(mins)
        levels = np.floor((groups - mins16.astype(np.float32)[:, None]) / step + 0.5)
    levels = np.clip(levels, 0, n_max).astype(np.uint8).reshape(padded_rows, padded_cols)
    shape2d = (padded_rows, padded_cols // qtype.group)
    scales16, mins16 = scales16.reshape(shape2d), None if qtype.symmetric else mins16.reshape(shape2d)
    data = quant_types.pack(qtype, levels, scales16, mins16, cols)
    restored = quant_types.dequantize_levels(qtype, levels, scales16, mins16)[:rows, :cols]
    return QuantizedTensor(qtype, (rows, cols), data, "rtn-clip-search", *_squares(weight, restored))


def quantize_plain(weight: np.ndarray, qtype: QuantType) -> QuantizedTensor:
    """Any shape -> the plain float array of qtype.dtype (fp16 saturates instead of overflowing)."""
    data = _fp16(weight) if np.dtype(qtype.dtype) == np.float16 else weight.astype(qtype.dtype)
    return QuantizedTensor(qtype, tuple(weight.shape), np.ascontiguousarray(data), method_name(qtype),
                           *_squares(weight, data.astype(np.float32)))


def _quantize_uniform(weight: np.ndarray, qtype: QuantType) -> QuantizedTensor:
    if weight.ndim != 2:
        raise ValueError(f"{qtype.name} needs a 2-D tensor, got shape {weight.shape}")
    return quantize_rtn(np.ascontiguousarray(weight, dtype=np.float32), qtype)


def _quantize_codebook(weight: np.ndarray, qtype: QuantType) -> QuantizedTensor:
    from .codebook import fit
    return fit(weight, qtype, method=_FAMILIES[quant_types.CODEBOOK][1])


# family -> (quantizer, the method name recorded in the file, whether rows quantize independently)
_FAMILIES = {
    quant_types.PLAIN: (quantize_plain, None, False),
    quant_types.UNIFORM_BITPLANE: (_quantize_uniform, "rtn-clip-search", True),
    quant_types.UNIFORM_PACKED: (_quantize_uniform, "rtn-clip-search", True),
    # one codebook per 16-row tile: chunks of whole tiles quantize independently
    quant_types.CODEBOOK: (_quantize_codebook, "codebook-kmeans-clip-search", True),
}


def _family(qtype: QuantType):
    if qtype.family not in _FAMILIES:
        raise ValueError(f"no quantizer for the {qtype.family} family ({qtype.name})")
    return _FAMILIES[qtype.family]


def writes(qtype: QuantType) -> bool:
    """Whether the converter has a quantizer for this type's family, hence offers it to the allocator
    (the allocator's candidates: convert.allocate.candidate_types)."""
    return qtype.family in _FAMILIES


def method_name(qtype: QuantType) -> str:
    """What the file records as the tensor's method: the quantizer, or the type for plain storage."""
    return _family(qtype)[1] or qtype.name


def quantize(weight: np.ndarray, qtype: QuantType) -> QuantizedTensor:
    return _family(qtype)[0](weight, qtype)


def chunk_rows(cols: int) -> int:
    """Rows per chunk such that packing chunk by chunk and concatenating equals packing the whole."""
    return max(quant_types.TILE_ROWS, CHUNK_WEIGHTS // max(cols, 1) // quant_types.TILE_ROWS * quant_types.TILE_ROWS)


def quantize_chunked(load_rows, qtype: QuantType, shape: tuple[int, ...]) -> QuantizedTensor:
    """Quantize a tensor whose rows `load_rows(slice)` returns, a chunk of rows at a time."""
    if not _family(qtype)[2] or len(shape) != 2:
        return quantize(load_rows(slice(None)), qtype)
    rows, cols = shape
    step = chunk_rows(cols)
    parts, sq_error, sq_norm = [], 0.0, 0.0
    for start in range(0, rows, step):
        part = quantize(load_rows(slice(start, min(rows, start + step))), qtype)
        parts.append(part.data)
        sq_error, sq_norm = sq_error + part.sq_error, sq_norm + part.sq_norm
    return QuantizedTensor(qtype, shape, np.concatenate(parts), method_name(qtype), sq_error, sq_norm)


def pack_grid_chunked(load_grid_rows, qtype: QuantType, shape: tuple[int, int], load_rows=None) -> QuantizedTensor:
    """Pack a source's own grid, `load_grid_rows(slice)` -> (levels, scales, mins), a chunk of rows
    at a time (convert.gguf_grid): no quantization, so the error is zero by construction; or, with
    `load_rows(slice)` giving the source's weights, a K-quant grid with fp16-rounded scales, whose
    error against them is measured."""
    from .gguf_grid import METHOD, ROUNDED_METHOD, pack_rows
    rows, cols = shape
    parts, sq_error, sq_norm = [], 0.0, 0.0
    for start in range(0, rows, chunk_rows(cols)):
        chunk = slice(start, min(rows, start + chunk_rows(cols)))
        levels, scales, mins = load_grid_rows(chunk)
        parts.append(pack_rows(qtype, levels, scales, mins))
        restored = quant_types.dequantize_levels(qtype, levels, scales, mins)
        if load_rows is None:
            sq_norm += float(np.sum(restored.astype(np.float64) ** 2))
        else:
            error, norm = _squares(load_rows(chunk), restored)
            sq_error, sq_norm = sq_error + error, sq_norm + norm
    return QuantizedTensor(qtype, shape, np.concatenate(parts), METHOD if load_rows is None else ROUNDED_METHOD,
                           sq_error, sq_norm)


def _squares(weight: np.ndarray, restored: np.ndarray) -> tuple[float, float]:
    weight = weight.astype(np.float64)
    return float(np.sum((weight - restored) ** 2)), float(np.sum(weight ** 2))
