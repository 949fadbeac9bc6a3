"""Fitting the codebook family (c4g<G>, v2g<G>s; edgeq.quant_types): pure functions (weights, type,
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

The 2-D codebook types (v2g<G>s: a 4-bit index per pair of weights, columns (k, k + 4) for k % 8 < 4,
into 16 centroids (c0, c1) per tile; edgeq.quant_types) are fitted by the same two ideas in 2-D
(_fit_pairs): per tile, weighted Lloyd iterations on the group-normalized pairs u = (w_k, w_k+4) / s,
each coordinate weighted by E[x^2] s^2 of its column, starting from the 4 x 4 product of the
symmetric 2-bit grid (what u2g<G>s would store, so the fit starts at uniform 2-bit's error and every
step can only lower it), alternating with each group's weighted least-squares scale; then the
centroids rounded to int8 filling [-64, 63] and, with them fixed, alternate assignment and scale
refits, the last one rounded to fp16 before the final assignment.
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


# ---- the 2-D codebook (v2): pairs (k, k + 4), k % 8 < 4; pair p = 4m + i covers columns 8m + i, 8m + 4 + i

PAIR_GRID = np.array([-HIGH, -HIGH / 3, HIGH / 3, HIGH])   # u2's symmetric levels ±0.5, ±1.5 in units of HIGH / 1.5


@numba.njit(cache=True, inline="always")
def _pair_columns(p):
    return 8 * (p // 4) + p % 4, 8 * (p // 4) + p % 4 + 4


@numba.njit(parallel=True, cache=True)
def _pair_assign(padded, colw, group, centroids, scales, idx):
    """idx (Mp, Kp/2) = per pair the centroid of its tile (centroids (n_tiles, 16, 2)) nearest to it
    under scale s of its group: argmin_i Σ_d e_d (x_d - s c_i,d)^2."""
    n_tiles, n_pairs = centroids.shape[0], idx.shape[1]
    for t in numba.prange(n_tiles):
        c = centroids[t]
        for r in range(16 * t, 16 * t + 16):
            for p in range(n_pairs):
                k0, k1 = _pair_columns(p)
                s, x0, x1, e0, e1 = scales[r, k0 // group], padded[r, k0], padded[r, k1], colw[k0], colw[k1]
                best, best_d = 0, np.inf
                for i in range(c.shape[0]):
                    d = e0 * (x0 - s * c[i, 0]) ** 2 + e1 * (x1 - s * c[i, 1]) ** 2
                    if d < best_d:
                        best, best_d = i, d
                idx[r, p] = best


@numba.njit(parallel=True, cache=True)
def _pair_refit_scales(padded, colw, group, centroids, idx, scales):
    """Per (row, group): the weighted least-squares scale Σ e x c / Σ e c^2 for its assignments
    (kept when the denominator is 0: every chosen centroid at the origin)."""
    n_tiles, n_pairs = centroids.shape[0], idx.shape[1]
    for t in numba.prange(n_tiles):
        c = centroids[t]
        for r in range(16 * t, 16 * t + 16):
            num, den = np.zeros(scales.shape[1]), np.zeros(scales.shape[1])
            for p in range(n_pairs):
                k0, k1 = _pair_columns(p)
                g, i = k0 // group, idx[r, p]
                num[g] += colw[k0] * padded[r, k0] * c[i, 0] + colw[k1] * padded[r, k1] * c[i, 1]
                den[g] += colw[k0] * c[i, 0] ** 2 + colw[k1] * c[i, 1] ** 2
            for g in range(scales.shape[1]):
                if den[g] > 0:
                    scales[r, g] = num[g] / den[g]


@numba.njit(parallel=True, cache=True)
def _pair_move_centroids(padded, colw, group, scales, idx, centroids):
    """Every tile's centroid i, per coordinate -> the weighted mean of the x_d / s assigned to it
    (weight e_d s^2); a centroid with nothing assigned is kept."""
    n_tiles, n_pairs = centroids.shape[0], idx.shape[1]
    for t in numba.prange(n_tiles):
        num, den = np.zeros((16, 2)), np.zeros((16, 2))
        for r in range(16 * t, 16 * t + 16):
            for p in range(n_pairs):
                k0, k1 = _pair_columns(p)
                s, i = scales[r, k0 // group], idx[r, p]
                num[i, 0] += colw[k0] * s * padded[r, k0]
                den[i, 0] += colw[k0] * s * s
                num[i, 1] += colw[k1] * s * padded[r, k1]
                den[i, 1] += colw[k1] * s * s
        for i in range(16):
            for d in range(2):
                if den[i, d] > 0:
                    centroids[t, i, d] = num[i, d] / den[i, d]


def _fit_pairs(padded: np.ndarray, colw: np.ndarray, group: int, iterations: int):
    """(Mp, Kp) weights, (Kp,) column weights -> (pair indices (Mp, Kp/2) uint8, fp16 scales
    (Mp, Kp/G), int8 codebooks (Mp/16, 32): c0 of the 16 centroids, then c1)."""
    rows, cols = padded.shape
    n_tiles = rows // quant_types.TILE_ROWS
    groups = padded.reshape(rows, cols // group, group)
    amax = np.abs(groups).max(axis=2)
    scales = np.where(amax > 0, amax / HIGH, 1.0)                            # the grid's top on max |w|
    start = np.stack(np.meshgrid(PAIR_GRID, PAIR_GRID, indexing="ij"), axis=-1).reshape(16, 2)
    centroids = np.ascontiguousarray(np.broadcast_to(start, (n_tiles, 16, 2)), dtype=np.float64)
    idx = np.empty((rows, cols // 2), dtype=np.int64)
    for _ in range(iterations):
        _pair_assign(padded, colw, group, centroids, scales, idx)
        _pair_move_centroids(padded, colw, group, scales, idx, centroids)
        _pair_assign(padded, colw, group, centroids, scales, idx)
        _pair_refit_scales(padded, colw, group, centroids, idx, scales)
    # int8 centroids filling [-64, 63] (the scales absorb the factor), then refits with them fixed
    top = np.maximum(np.maximum(centroids.max(axis=(1, 2)) / HIGH, centroids.min(axis=(1, 2)) / LOW), 1e-30)
    books = np.clip(np.rint(centroids / top[:, None, None]), LOW, HIGH)
    scales = scales * np.repeat(top, quant_types.TILE_ROWS)[:, None]
    for _ in range(2):
        _pair_assign(padded, colw, group, books, scales, idx)
        _pair_refit_scales(padded, colw, group, books, idx, scales)
    scales16 = _fp16(scales)
    _pair_assign(padded, colw, group, books, scales16.astype(np.float64), idx)
    tile_books = np.concatenate([books[:, :, 0], books[:, :, 1]], axis=1).astype(np.int8)
    return idx.astype(np.uint8), scales16, tile_books


def method_label(label: str) -> str:
    """What a file records for a codebook tensor: fitted with rtn's settings, "rtn imatrix calib=..."
    -> "codebook-kmeans imatrix calib=..."; with gptq's, the label with act_order=no, since
    gptq_pairs visits the pairs in column order whatever --act-order says."""
    if label.startswith("rtn"):
        return METHOD + label[len("rtn"):]
    return label.replace("act_order=yes", "act_order=no")


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
    if qtype.index_span() == 2:
        if rows_per_codebook != quant_types.TILE_ROWS:
            raise ValueError(f"{qtype.name} learns its centroids per tile of {quant_types.TILE_ROWS} rows")
        colw = column_weights(importance, cols, qtype.group).reshape(-1)
        indices, scales16, tile_books = _fit_pairs(padded, colw, qtype.group, iterations)
        data = quant_types.pack_codebook(qtype, indices, scales16, tile_books, cols)
        restored = quant_types.dequantize_codebook(qtype, indices, scales16, tile_books)[:rows, :cols]
        return QuantizedTensor(qtype, (rows, cols), data, method, *_squares(weight, restored))
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
