"""Fitting the codebook family (c4g<G>, edgeq.quant_types): pure functions (weights, type,
importance) -> QuantizedTensor. No I/O here.

A tensor W (M, K) is stored as w[r, k] = s[r, g] * C_t[idx[r, k]]: per group g of G columns an fp16
scale s, per 16-row tile t a codebook C_t of 16 int8 levels in [-64, 63], a 4-bit index per weight.
The error minimized is the importance-weighted one of convert.methods,
    Σ_j E[x_j^2] ||W[:, j] - Q[:, j]||^2      (every column weighs 1 without statistics),
in two stages:
  1. Lloyd-Max / weighted k-means of the group-normalized weights u = w / s: alternately assign each
     weight its nearest level, move every level to the weighted mean of its weights (weight
     E[x^2] s^2: the error of u - c in w's units), and refit each group's scale by weighted least
     squares for its assignments. Starts from the uniform 16-level grid with s = max |w| / 63, i.e.
     from what a symmetric 4-bit uniform type would store.
  2. The levels rounded to int8 (scaled to fill [-64, 63]), then per group rtn's clip search: the
     scale max |w| r / max |C| for each clip factor r of the grid (and the k-means scale), nearest
     levels, a weighted least-squares refit, keep the smallest weighted error; the scale rounded to
     fp16 and the indices recomputed against it.
The codebook is shared by ROWS_PER_CODEBOOK rows: one tile (16), the layout's unit. A per-tensor
codebook (every tile's copy equal) measured worse on SmolLM2 (benchmarks/README.md, "Codebook").
"""
from __future__ import annotations

import numba
import numpy as np

from edgeq import quant_types
from edgeq.quant_types import QuantType

from .methods import column_weights
from .quantize import CLIP_GRID, QuantizedTensor, _fp16, _squares

KMEANS_ITERATIONS = 12
ROWS_PER_CODEBOOK = quant_types.TILE_ROWS
METHOD = "codebook-kmeans"
LOW, HIGH = quant_types.CODEBOOK_LEVELS


def _midpoints(levels):
    """(n_books, 16) ascending levels -> (n_books, 15) the midpoints between neighbours."""
    return 0.5 * (levels[:, :-1] + levels[:, 1:])


@numba.njit(cache=True, inline="always")
def _nearest(midpoints, u):
    """Index of the level nearest u given its book's ascending midpoints (15,): how many lie below u
    (branch-free; ties go to the lower level)."""
    count = 0
    for i in range(midpoints.shape[0]):
        count += u > midpoints[i]
    return count


@numba.njit(parallel=True, cache=True)
def _assign(groups, scales, mins, midpoints, book_of, idx_out):
    """idx_out (n, G) = nearest level of (groups - min) / scale under group g's codebook (midpoints[book_of[g]])."""
    n, size = groups.shape
    for g in numba.prange(n):
        mids = midpoints[book_of[g]]
        inv = 1.0 / scales[g] if scales[g] != 0 else 0.0
        for j in range(size):
            idx_out[g, j] = _nearest(mids, (groups[g, j] - mins[g]) * inv)


@numba.njit(parallel=True, cache=True)
def _search_scales(groups, weights, levels, midpoints, book_of, grid, start, start_min, with_min, scale_out, min_out):
    """Per group: for each clip factor r and sign, the scale (and min) that maps the group's range
    shrunk by r onto the codebook's, nearest levels, weighted least-squares refit of the scale (and
    min); also from `start` (the k-means fit). Keep the smallest weighted error."""
    n, size = groups.shape
    per_row = weights.shape[0]
    for g in numba.prange(n):
        x, w, book, mids = groups[g], weights[g % per_row], levels[book_of[g]], midpoints[book_of[g]]
        lo, hi = x.min(), x.max()
        amax = max(abs(lo), abs(hi))
        top = max(abs(book[0]), abs(book[-1]))
        span = book[-1] - book[0]
        best_err, best_d, best_m = np.inf, 0.0, 0.0
        if amax > 0 and top > 0 and span > 0:
            for i in range(2 * grid.shape[0] + 1):
                if i == 2 * grid.shape[0]:
                    d, m = start[g], start_min[g]
                else:
                    sign = 1.0 if i % 2 == 0 else -1.0
                    if with_min:
                        d = (hi - lo) * grid[i // 2] / span * sign
                        m = 0.5 * (hi + lo) - d * (0.5 * (book[0] + book[-1]))
                    else:
                        d, m = amax * grid[i // 2] / top * sign, 0.0
                if d == 0:
                    continue
                sign = 1.0 if d > 0 else -1.0
                s0 = s1 = s2 = sx = sqx = 0.0
                for j in range(size):
                    c = book[_nearest(mids, (x[j] - m) / d)]
                    s0 += w[j]
                    s1 += w[j] * c
                    s2 += w[j] * c * c
                    sx += w[j] * x[j]
                    sqx += w[j] * c * x[j]
                if with_min:
                    den = s0 * s2 - s1 * s1
                    if den > 0:
                        d2 = (s0 * sqx - s1 * sx) / den
                        if d2 * sign > 0:
                            d, m = d2, (sx - d2 * s1) / s0
                elif sqx * sign > 0 and s2 > 0:
                    d = sqx / s2
                # weighted squared error up to Σ w x^2
                err = d * d * s2 + 2 * d * m * s1 - 2 * d * sqx + s0 * m * m - 2 * m * sx
                if err < best_err:
                    best_err, best_d, best_m = err, d, m
        scale_out[g] = best_d
        min_out[g] = best_m


@numba.njit(parallel=True, cache=True)
def _move_levels(groups, weights, scales, mins, idx, book_start, levels):
    """Every book's level i -> the weighted mean of the (w - min) / scale assigned to it (weight
    E[x^2] s^2: the error in w's units), a level with nothing assigned kept; then sorted. Books own
    contiguous runs of groups (book_start), so each is one parallel task."""
    size, per_row = groups.shape[1], weights.shape[0]
    for b in numba.prange(levels.shape[0]):
        num, den = np.zeros(levels.shape[1]), np.zeros(levels.shape[1])
        for g in range(book_start[b], book_start[b + 1]):
            s, m, w = scales[g], mins[g], weights[g % per_row]
            for j in range(size):
                num[idx[g, j]] += w[j] * s * (groups[g, j] - m)
                den[idx[g, j]] += w[j] * s * s
        for i in range(levels.shape[1]):
            if den[i] > 0:
                levels[b, i] = num[i] / den[i]
        levels[b] = np.sort(levels[b])


@numba.njit(parallel=True, cache=True)
def _refit_scales(groups, weights, levels, book_of, idx, with_min, scales, mins):
    """Per group, for its assignments: the weighted least-squares scale (and min), kept only when it
    exists and keeps the scale's sign."""
    n, size = groups.shape
    per_row = weights.shape[0]
    for g in numba.prange(n):
        w, book = weights[g % per_row], levels[book_of[g]]
        s0 = s1 = s2 = sx = sqx = 0.0
        for j in range(size):
            c, x = book[idx[g, j]], groups[g, j]
            s0 += w[j]
            s1 += w[j] * c
            s2 += w[j] * c * c
            sx += w[j] * x
            sqx += w[j] * c * x
        if with_min:
            den = s0 * s2 - s1 * s1
            if den > 1e-12 * max(s0 * s2, 1e-30):
                new = (s0 * sqx - s1 * sx) / den
                if new * scales[g] > 0:
                    scales[g] = new
                    mins[g] = (sx - new * s1) / (s0 if s0 > 0 else 1.0)
        elif s2 > 0 and sqx * scales[g] > 0:
            scales[g] = sqx / s2


def _kmeans(groups, weights, book_of, n_books, iterations, with_min):
    """Weighted Lloyd iterations -> (levels (n_books, 16) ascending float, scales (n,), mins (n,))."""
    n = groups.shape[0]
    if with_min:                        # the uniform grid from min to max
        lo, hi = groups.min(axis=1), groups.max(axis=1)
        scales = np.where(hi > lo, (hi - lo) / (2 * HIGH), 1.0)
        mins = 0.5 * (hi + lo)
    else:                               # the largest |w| (signed) on the top level
        scales = groups[np.arange(n), np.abs(groups).argmax(axis=1)] / HIGH
        mins = np.zeros(n)
    levels = np.tile(np.linspace(-HIGH, HIGH, quant_types.CODEBOOK_SIZE), (n_books, 1))
    idx = np.empty(groups.shape, dtype=np.int64)
    book_start = np.searchsorted(book_of, np.arange(n_books + 1))           # book_of is non-decreasing
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    for _ in range(iterations):
        _assign(groups, scales, mins, _midpoints(levels), book_of, idx)
        _move_levels(groups, weights, scales, mins, idx, book_start, levels)
        _assign(groups, scales, mins, _midpoints(levels), book_of, idx)
        _refit_scales(groups, weights, levels, book_of, idx, with_min, scales, mins)
    return levels, scales, mins


def method_label(rtn_label: str) -> str:
    """What a file records for a codebook tensor fitted with rtn's settings ("rtn imatrix calib=..."
    -> "codebook-kmeans imatrix calib=...")."""
    return METHOD + rtn_label[len("rtn"):] if rtn_label.startswith("rtn") else rtn_label


def fit(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None = None,
        method: str = METHOD, rows_per_codebook: int = ROWS_PER_CODEBOOK,
        iterations: int = KMEANS_ITERATIONS) -> QuantizedTensor:
    """(M, K) float -> a packed codebook tensor minimizing the E[x^2]-weighted squared error.
    rows_per_codebook: a multiple of 16 (one codebook per that many rows; >= M: one per tensor)."""
    if qtype.family != quant_types.CODEBOOK:
        raise ValueError(f"{qtype.name} is a {qtype.family} type, not a codebook type")
    if weight.ndim != 2:
        raise ValueError(f"{qtype.name} needs a 2-D tensor, got shape {weight.shape}")
    if importance is not None and np.shape(importance) != (weight.shape[1],):
        raise ValueError(f"importance has shape {np.shape(importance)}, expected ({weight.shape[1]},)")
    if rows_per_codebook % quant_types.TILE_ROWS:
        raise ValueError(f"rows_per_codebook must be a multiple of {quant_types.TILE_ROWS}")
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    rows, cols = weight.shape
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    padded = np.zeros((padded_rows, padded_cols), dtype=np.float64)
    padded[:rows, :cols] = weight
    per_row = padded_cols // qtype.group
    groups = padded.reshape(-1, qtype.group)                                   # (Mp * Kp/G, G)
    weights = column_weights(importance, cols, qtype.group)                    # (Kp/G, G)
    book_of_row = np.arange(padded_rows) // rows_per_codebook                  # (Mp,)
    book_of = np.repeat(book_of_row, per_row)
    n_books = int(book_of_row[-1]) + 1

    with_min = not qtype.symmetric
    levels, scales, mins = _kmeans(groups, weights, book_of, n_books, iterations, with_min)
    # int8 levels filling [-64, 63]; the scales absorb the factor (then the search refits them)
    top = np.maximum(np.maximum(levels[:, -1] / HIGH, -levels[:, 0] / -LOW), 1e-30)
    books = np.clip(np.rint(levels / top[:, None]), LOW, HIGH)                 # ascending, may repeat
    final, final_min = np.empty(groups.shape[0]), np.empty(groups.shape[0])
    _search_scales(groups, weights, books, _midpoints(books), book_of, CLIP_GRID.astype(np.float64), scales * top[book_of],
                   mins, with_min, final, final_min)
    scales16 = _fp16(final).reshape(padded_rows, per_row)
    mins16 = _fp16(final_min).reshape(padded_rows, per_row) if with_min else None
    idx = np.empty(groups.shape, dtype=np.int64)
    _assign(groups, scales16.astype(np.float64).reshape(-1),
            np.zeros(groups.shape[0]) if mins16 is None else mins16.astype(np.float64).reshape(-1), _midpoints(books),
            book_of, idx)
    indices = idx.reshape(padded_rows, padded_cols).astype(np.uint8)
    tile_books = books[book_of_row[::quant_types.TILE_ROWS]].astype(np.int8)  # (Mp / 16, 16)
    data = quant_types.pack_codebook(qtype, indices, scales16, tile_books, cols, mins16)
    restored = quant_types.dequantize_codebook(qtype, indices, scales16, tile_books, mins16)[:rows, :cols]
    return QuantizedTensor(qtype, (rows, cols), data, method, *_squares(weight, restored))
