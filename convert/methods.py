"""Quantization methods that write today's uniform types: importance-weighted RTN and HQQ. Pure
functions (weights, type, statistics) -> QuantizedTensor; no I/O, no model, no calibration here
(GPTQ is in convert/gptq.py, the statistics come from convert/calibrate.py).

Importance: E[x_j^2] per input column j (llama.cpp's imatrix idea). The error a method minimizes for
a weight matrix W (M, K) and its quantized Q is then
    sum_j E[x_j^2] * ||W[:, j] - Q[:, j]||^2
which is the expected squared output error when the inputs are uncorrelated. Without statistics every
column weighs 1 and `rtn` is exactly quantize.quantize_rtn's clip search.
"""
from __future__ import annotations

import numba
import numpy as np

from edgeq import quant_types
from edgeq.quant_types import QuantType

from .quantize import CLIP_GRID, QuantizedTensor, _fp16, _squares

HQQ_ITERATIONS = 20
HQQ_LP_NORM = 0.7       # the sparsity-promoting norm of the error HQQ's auxiliary variable follows
HQQ_BETA, HQQ_KAPPA = 10.0, 1.01
BLOCK_VALUES = 1 << 22  # weights per block of rows rtn fits and scores at a time (_row_blocks)


# ---------------------------------------------------------------------------------------------
# per-group scale/min search, weighted
# ---------------------------------------------------------------------------------------------

@numba.njit(parallel=True, cache=True)
def _search_weighted(groups, importance, n_max, grid, symmetric, zero, integer_zero, scale_out, min_out):
    """groups (n, G); group g weighs its G columns by importance[g % len(importance)] (P, G).
    For each clip factor r: levels of the shrunk range, weighted least-squares refit of (scale, min),
    keep the smallest weighted squared error. Symmetric types: levels q - zero; with an integer
    zero (z types, levels -zero .. zero - 1) the group's largest magnitude, with its sign, goes on
    the extra level -zero (a negative scale for a positive peak), as llama.cpp's _0 types do."""
    n_groups, size = groups.shape
    per_row = importance.shape[0]
    for g in numba.prange(n_groups):
        x = groups[g]
        w = importance[g % per_row]
        lo, hi = x.min(), x.max()
        amax = max(abs(lo), abs(hi))
        peak = lo if -lo > hi else hi
        best_err, best_d, best_m = np.inf, 0.0, lo
        if symmetric:
            best_m = 0.0
        if hi > lo or (symmetric and amax > 0):
            for r in grid:
                if symmetric:
                    d = -peak * r / zero if integer_zero else amax * r / zero
                    m = -d * zero
                else:
                    half, center = (hi - lo) * 0.5 * r, (hi + lo) * 0.5
                    d, m = 2.0 * half / n_max, center - half
                s0 = s1 = s2 = sx = sqx = 0.0
                for j in range(size):
                    q = min(max(np.floor((x[j] - m) / d + 0.5), 0.0), n_max)
                    if symmetric:
                        q -= zero
                    s0 += w[j]
                    s1 += w[j] * q
                    s2 += w[j] * q * q
                    sx += w[j] * x[j]
                    sqx += w[j] * q * x[j]
                if symmetric:
                    if sqx * d > 0 and s2 > 0:      # the refit keeps the scale's sign
                        d = sqx / s2
                    err = d * d * s2 - 2 * d * sqx
                    m = -d * zero
                else:
                    den = s0 * s2 - s1 * s1
                    if den > 0:
                        d2 = (s0 * sqx - s1 * sx) / den
                        if d2 > 0:
                            d, m = d2, (sx - d2 * s1) / s0
                    err = d * d * s2 + 2 * d * m * s1 - 2 * d * sqx + s0 * m * m - 2 * m * sx
                if err < best_err:
                    best_err, best_d, best_m = err, d, m
        scale_out[g] = best_d
        min_out[g] = best_m


def column_weights(importance: np.ndarray | None, cols: int, group: int) -> np.ndarray:
    """E[x^2] per input column (K,) -> (Kp/G, G) float weights for the search, padded columns 0, each
    group's weights normalized to mean 1 (a group whose inputs are all zero weighs its columns equally)."""
    padded = -(-cols // group) * group
    weights = np.zeros(padded, dtype=np.float64)
    weights[:cols] = 1.0 if importance is None else np.asarray(importance, dtype=np.float64).reshape(cols)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("importance must be finite and non-negative")
    weights = weights.reshape(-1, group)
    mean = weights.mean(axis=1, keepdims=True)
    dead = mean[:, 0] <= 0
    weights[dead, :] = 1.0
    mean[dead] = 1.0
    return weights / mean


def fit_groups(groups: np.ndarray, weights: np.ndarray, qtype: QuantType) -> tuple[np.ndarray, np.ndarray]:
    """(n, G) groups, (P, G) column weights -> float scale and min per group (the clip search)."""
    n_max = float((1 << qtype.bits) - 1)
    grid = CLIP_GRID if qtype.bits < 8 else CLIP_GRID[:6]
    scales = np.empty(groups.shape[0], dtype=groups.dtype)
    mins = np.empty(groups.shape[0], dtype=groups.dtype)
    _search_weighted(groups, weights.astype(groups.dtype), n_max, grid.astype(groups.dtype),
                     qtype.symmetric, qtype.zero_point(), qtype.integer_zero, scales, mins)
    return scales, mins


def round_params(qtype: QuantType, scales: np.ndarray, mins: np.ndarray):
    """Scales and mins as stored (fp16), and as the float step/offset levels are computed against."""
    scales16 = _fp16(scales)
    mins16 = None if qtype.symmetric else _fp16(mins)
    return scales16, mins16


def levels_for(qtype: QuantType, values: np.ndarray, scales16: np.ndarray, mins16: np.ndarray | None) -> np.ndarray:
    """Nearest levels of `values` (..., n) under per-entry fp16 scale/min broadcast against them."""
    n_max = float((1 << qtype.bits) - 1)
    step = np.where(scales16 == 0, 1.0, scales16.astype(values.dtype))
    if qtype.symmetric:
        levels = np.floor(values / step + (qtype.zero_point() + 0.5))
    else:
        levels = np.floor((values - mins16.astype(values.dtype)) / step + 0.5)
    return np.clip(levels, 0, n_max)


def pack_result(weight: np.ndarray, qtype: QuantType, levels: np.ndarray, scales16, mins16,
                method: str) -> QuantizedTensor:
    """(Mp, Kp) levels and (Mp, Kp/G) fp16 scales/mins -> the packed tensor (a partial last group
    keeps only its stored columns, quant_types.stored_cols), with its error against W."""
    rows, cols = weight.shape
    levels = levels.astype(np.uint8)
    data = quant_types.pack(qtype, levels, scales16, mins16, cols)
    error = norm = 0.0
    for block in _row_blocks(rows, cols):
        restored = quant_types.dequantize_levels(qtype, levels[block], scales16[block],
                                                 None if mins16 is None else mins16[block])
        part_error, part_norm = _squares(weight[block], restored[:len(weight[block]), :cols])
        error, norm = error + part_error, norm + part_norm
    return QuantizedTensor(qtype, (rows, cols), data, method, error, norm)


def _padded_groups(weight: np.ndarray, qtype: QuantType) -> np.ndarray:
    rows, cols = weight.shape
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    padded = np.zeros((padded_rows, padded_cols), dtype=np.float32)
    padded[:rows, :cols] = weight
    return padded


def _check(weight: np.ndarray, qtype: QuantType, importance) -> None:
    if not qtype.is_uniform():
        raise ValueError(f"{qtype.name} is a {qtype.family} type; these methods write uniform types")
    if weight.ndim != 2:
        raise ValueError(f"{qtype.name} needs a 2-D tensor, got shape {weight.shape}")
    if importance is not None and np.shape(importance) != (weight.shape[1],):
        raise ValueError(f"importance has shape {np.shape(importance)}, expected ({weight.shape[1]},)")


# ---------------------------------------------------------------------------------------------
# rtn: clip search, weighted by E[x^2]
# ---------------------------------------------------------------------------------------------

def _row_blocks(rows: int, cols: int):
    """Slices of whole tiles holding about BLOCK_VALUES weights: the fits below are per row, and
    their float64 temporaries are several times a block (a 151936-row head at once needed 3 GB)."""
    step = -(-max(1, BLOCK_VALUES // max(cols, 1)) // quant_types.TILE_ROWS) * quant_types.TILE_ROWS
    return [slice(start, start + step) for start in range(0, rows, step)]


def _rtn_levels(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None):
    """rtn's fit: (levels (Mp, Kp) uint8, fp16 scales, fp16 mins or None) of float32 weight (M, K),
    a block of whole tiles at a time (the same numbers as at once: every group is fitted alone)."""
    parts = [_rtn_levels_block(weight[rows], qtype, importance) for rows in _row_blocks(*weight.shape)]
    if len(parts) == 1:
        return parts[0]
    join = lambda i: None if parts[0][i] is None else np.concatenate([part[i] for part in parts])
    return join(0), join(1), join(2)


def _rtn_levels_block(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None):
    padded = _padded_groups(weight, qtype)
    padded_rows, padded_cols = padded.shape
    groups = padded.reshape(-1, qtype.group)                                  # (Mp*Kp/G, G)
    scales, mins = fit_groups(groups, column_weights(importance, weight.shape[1], qtype.group), qtype)
    shape2d = (padded_rows, padded_cols // qtype.group)
    scales16, mins16 = round_params(qtype, scales.reshape(shape2d), mins.reshape(shape2d))
    expand = lambda a: None if a is None else np.repeat(a, qtype.group, axis=1)
    return levels_for(qtype, padded, expand(scales16), expand(mins16)).astype(np.uint8), scales16, mins16


def rtn(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None = None,
        method: str = "rtn") -> QuantizedTensor:
    """(M, K) float -> packed tensor; per group the clip factor and least-squares (scale, min) that
    minimize the E[x^2]-weighted squared error (unweighted without importance). A codebook type
    is fitted by convert.codebook (weighted k-means, then the same clip search per group)."""
    if qtype.family == quant_types.CODEBOOK:
        from . import codebook
        return codebook.fit(weight, qtype, importance, method=codebook.method_label(method))
    _check(weight, qtype, importance)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    levels, scales16, mins16 = _rtn_levels(weight, qtype, importance)
    return pack_result(weight, qtype, levels, scales16, mins16, method)


def rtn_restored(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None = None) -> np.ndarray:
    """What rtn's tensor dequantizes to, (M, K) float32, without packing it (the allocator's scores)."""
    _check(weight, qtype, importance)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    levels, scales16, mins16 = _rtn_levels(weight, qtype, importance)
    rows, cols = weight.shape
    restored = np.empty((rows, cols), dtype=np.float32)
    for block in _row_blocks(rows, cols):
        part = quant_types.dequantize_levels(qtype, levels[block], scales16[block], None if mins16 is None else mins16[block])
        restored[block] = part[:len(restored[block]), :cols]
    return restored


# ---------------------------------------------------------------------------------------------
# hqq: half-quadratic optimization of scale and min per group
# ---------------------------------------------------------------------------------------------

def _shrink_lp(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    """Generalized soft threshold: argmin_e |e|^p + beta/2 (e - x)^2, HQQ's closed-form step."""
    magnitude = np.abs(x)
    return np.sign(x) * np.maximum(magnitude - (1.0 / beta) * np.power(magnitude + 1e-12, p - 1), 0)


def hqq(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None = None,
        iterations: int = HQQ_ITERATIONS, method: str = "hqq") -> QuantizedTensor:
    """HQQ (Badri & Shaji 2023) with our levels: W ≈ s*q + m per group. Alternate
        W_e  = shrink_lp(W - (s*q + m))                  the sparse outlier part of the error
        q    = nearest levels of W under (s, m)
        s, m = weighted least squares of W - W_e ≈ s*q + m  (the quadratic sub-problem, E[x^2] weights)
    starting from the rtn clip search; a group keeps the iterate with the lowest weighted squared
    error (so hqq is never worse than the search it starts from). Symmetric types fit s only."""
    _check(weight, qtype, importance)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    padded = _padded_groups(weight, qtype)
    padded_rows, padded_cols = padded.shape
    n_per_row = padded_cols // qtype.group
    x = padded.reshape(padded_rows, n_per_row, qtype.group).astype(np.float64)   # (Mp, Kp/G, G)
    w = column_weights(importance, weight.shape[1], qtype.group)[None]            # (1, Kp/G, G)
    n_max = float((1 << qtype.bits) - 1)
    zero = qtype.zero_point()
    scale, low = fit_groups(x.reshape(-1, qtype.group), w[0], qtype)
    scale, low = scale.reshape(x.shape[:2])[..., None], low.reshape(x.shape[:2])[..., None]

    def levels(s, m):       # q in [0, n_max]; w ≈ s*q + m (symmetric: m = -s*zero)
        return np.clip(np.floor((x - m) / np.where(s == 0, 1.0, s) + 0.5), 0, n_max)

    def error(s, m):
        return np.sum(w * (s * levels(s, m) + m - x) ** 2, axis=-1, keepdims=True)

    best_s, best_m, best_err = scale.copy(), low.copy(), error(scale, low)
    beta = HQQ_BETA
    for _ in range(iterations):
        q = levels(scale, low)
        outlier = _shrink_lp(x - (scale * q + low), beta, HQQ_LP_NORM)
        q = q - zero                                     # symmetric: centred levels, w ≈ s*q
        target = x - outlier
        s0, s1, s2 = w.sum(-1, keepdims=True), (w * q).sum(-1, keepdims=True), (w * q * q).sum(-1, keepdims=True)
        st, sqt = (w * target).sum(-1, keepdims=True), (w * q * target).sum(-1, keepdims=True)
        if qtype.symmetric:
            new_s = np.where(s2 > 0, sqt / np.where(s2 > 0, s2, 1), scale)
            new_m = -new_s * zero
        else:
            den = s0 * s2 - s1 * s1
            ok = den > 1e-12 * np.maximum(s0 * s2, 1e-30)
            new_s = np.where(ok, (s0 * sqt - s1 * st) / np.where(ok, den, 1), scale)
            new_m = np.where(ok, (st - new_s * s1) / s0, low)
        keep = new_s * scale > 0    # a z type's scale may be negative: keep its sign
        scale, low = np.where(keep, new_s, scale), np.where(keep, new_m, low)
        err = error(scale, low)
        better = err < best_err
        best_s, best_m, best_err = np.where(better, scale, best_s), np.where(better, low, best_m), np.minimum(err, best_err)
        beta *= HQQ_KAPPA
    scales16, mins16 = round_params(qtype, best_s[..., 0], best_m[..., 0])
    expand = lambda a: None if a is None else np.repeat(a, qtype.group, axis=1)
    levels16 = levels_for(qtype, padded, expand(scales16), expand(mins16))
    return pack_result(weight, qtype, levels16, scales16, mins16, method)


def weighted_error(weight: np.ndarray, restored: np.ndarray, importance: np.ndarray | None) -> float:
    """sum_j E[x_j^2] ||W[:, j] - Q[:, j]||^2 (unweighted without importance)."""
    columns = np.zeros(weight.shape[1])
    for rows in _row_blocks(*weight.shape):
        columns += ((np.asarray(weight[rows], np.float64) - restored[rows]) ** 2).sum(axis=0)
    return float(columns.sum() if importance is None else columns @ np.asarray(importance, np.float64))
