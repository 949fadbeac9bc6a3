"""GPTQ (Frantar et al. 2022) writing our uniform grouped types. A pure function: (W, type, XᵀX) ->
QuantizedTensor; the Hessian comes from convert/calibrate.py. No I/O.

Columns are quantized one at a time; the error of column j, divided by the j-th diagonal entry of
the upper Cholesky factor U of H⁻¹ (H = XᵀX + damping·mean(diag)·I), is spread over the columns not
yet quantized (w_k -= e_j U[j, k]), which minimizes the layer's output error on the calibration
inputs. Lazy batches: inside a block of BLOCK columns the updates are applied column by column (numba,
rows in parallel); the rest of the matrix gets the block's errors in one BLAS product.

Groups stay as the runtime stores them: contiguous runs of G columns in the original order. With
act-order the columns are *visited* by decreasing diag(H), which scatters a group's columns over
time; a group's scale and min are fitted (the rtn clip search weighted by diag(H)) on the group's
current, already updated weights when its first column is visited, and its other columns use them.
"""
from __future__ import annotations

import numba
import numpy as np

from edgeq import quant_types
from edgeq.quant_types import QuantType

from .methods import column_weights, fit_groups, levels_for, pack_result, round_params

DAMP = 0.01
BLOCK = 128


@numba.njit(parallel=True, cache=True)
def _quantize_columns(block, u_block, start, stop, scale, low, n_max, levels_out):
    """block (M, B) current weights of the block's columns, u_block (B, B) the block of U. Quantize
    columns start..stop-1 (their fp16 scale/min per row in scale/low (M, stop-start)), spreading each
    column's error over the block's later columns; the scaled errors e_j replace the quantized columns."""
    rows, width = block.shape
    for r in numba.prange(rows):
        for i in range(start, stop):
            s, m = scale[r, i - start], low[r, i - start]
            step = s if s != 0 else 1.0
            w = block[r, i]
            q = min(max(np.floor((w - m) / step + 0.5), 0.0), n_max)
            levels_out[r, i] = q
            err = (w - (s * q + m)) / u_block[i, i]
            for k in range(i + 1, width):
                block[r, k] -= err * u_block[i, k]
            block[r, i] = err


def inverse_hessian_factor(hessian: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """(K, K) H (dead columns already handled) -> upper U with U^T U = (H + damp·mean(diag H)·I)^-1.

    With J the reversal of the columns and J H J = L L^T: U = J L^-1 J (one Cholesky, one
    triangular inverse). LAPACK runs single-threaded here: OpenBLAS's threaded potrf is 10-20x
    slower, not faster, when the cores are shared."""
    from threadpoolctl import threadpool_limits
    h = np.array(hessian[::-1, ::-1], dtype=np.float64)
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    try:
        with threadpool_limits(1, user_api="blas"):
            lower = np.linalg.cholesky(h)
            lower_inv = np.linalg.solve(lower, np.eye(len(h)))
    except np.linalg.LinAlgError:
        raise ValueError("the Hessian is not positive definite even after damping; raise the damping") from None
    return np.ascontiguousarray(np.tril(lower_inv)[::-1, ::-1])


def prepare(weight: np.ndarray, hessian: np.ndarray, qtype: QuantType, act_order: bool):
    """Pad W (M, K) to (Mp, Kp) and H to (Kp, Kp); columns no input ever reaches (diag 0) get H_jj = 1
    and weight 0 as GPTQ does; the visiting order (a permutation of Kp columns)."""
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"the Hessian has shape {hessian.shape}, expected ({cols}, {cols})")
    if not np.isfinite(hessian).all():
        raise ValueError("the Hessian contains NaN or infinity")
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    w = np.zeros((padded_rows, padded_cols), dtype=np.float64)
    w[:rows, :cols] = weight
    h = np.zeros((padded_cols, padded_cols), dtype=np.float64)
    h[:cols, :cols] = hessian
    importance = np.diag(h).copy()
    dead = importance <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-importance, kind="stable") if act_order else np.arange(padded_cols)
    return w, h, importance, order


def fits(qtype: QuantType) -> bool:
    """Whether gptq writes this type: the uniform ones, and the 2-D codebook (gptq_pairs)."""
    return qtype.is_uniform() or (qtype.family == quant_types.CODEBOOK and qtype.index_span() == 2)


def gptq(weight: np.ndarray, qtype: QuantType, hessian: np.ndarray, damp: float = DAMP,
         block_size: int = BLOCK, act_order: bool = False, method: str = "gptq"):
    """(M, K) float, (K, K) XᵀX -> QuantizedTensor. Rows are independent, so callers may stack
    matrices that share an input (q/k/v, gate/up) and split the result."""
    if fits(qtype) and not qtype.is_uniform():
        return gptq_pairs(weight, qtype, hessian, damp, block_size, method)
    if not qtype.is_uniform():
        raise ValueError(f"{qtype.name} is a {qtype.family} type; gptq writes uniform types and v2 codebooks")
    if weight.ndim != 2:
        raise ValueError(f"{qtype.name} needs a 2-D tensor, got shape {weight.shape}")
    group, n_max = qtype.group, float((1 << qtype.bits) - 1)
    w, h, importance, order = prepare(weight, hessian, qtype, act_order)
    padded_rows, padded_cols = w.shape
    w = np.ascontiguousarray(w[:, order])                                # columns in visiting order
    u = inverse_hessian_factor(h[np.ix_(order, order)], damp)
    group_weights = column_weights(importance, padded_cols, group)       # (Kp/G, G), original order
    position = np.empty(padded_cols, dtype=np.int64)
    position[order] = np.arange(padded_cols)                             # original column -> visit index
    n_groups = padded_cols // group
    scales16 = np.zeros((padded_rows, n_groups), dtype=np.float16)
    mins16 = None if qtype.symmetric else np.zeros((padded_rows, n_groups), dtype=np.float16)
    fitted = np.zeros(n_groups, dtype=bool)
    levels_visited = np.zeros((padded_rows, padded_cols), dtype=np.float64)
    group_of_visit = order // group

    for start in range(0, padded_cols, block_size):
        stop = min(start + block_size, padded_cols)
        block = w[:, start:stop].copy()                                  # (Mp, B) updated in place
        u_block = np.ascontiguousarray(u[start:stop, start:stop])
        i = 0
        while i < stop - start:
            # columns i..j-1 of the block whose groups are fitted (fit the group of column i first)
            g = group_of_visit[start + i]
            if not fitted[g]:
                current = _current_group(w, block, u, start, i, position[g * group:(g + 1) * group])
                s, m = fit_groups(current, group_weights[g:g + 1], qtype)
                s16, m16 = round_params(qtype, s, m)
                scales16[:, g] = s16
                if mins16 is not None:
                    mins16[:, g] = m16
                fitted[g] = True
            j = i + 1
            while j < stop - start and fitted[group_of_visit[start + j]]:
                j += 1
            groups = group_of_visit[start + i:start + j]
            scale = scales16[:, groups].astype(np.float64)
            low = (-scale * qtype.zero_point() if qtype.symmetric else mins16[:, groups].astype(np.float64))
            _quantize_columns(block, u_block, i, j, np.ascontiguousarray(scale), np.ascontiguousarray(low),
                              n_max, levels_visited[:, start:stop])
            i = j
        # block now holds the scaled errors; spread them over the remaining columns
        w[:, stop:] -= block @ u[start:stop, stop:]
    levels = levels_visited[:, position]                                 # back to the original order
    return pack_result(np.asarray(weight, np.float32), qtype, levels, scales16, mins16, method)


@numba.njit(parallel=True, cache=True)
def _quantize_pairs(block, u_block, scale, centroids, idx_out):
    """block (Mp, B) current weights of B columns in pair order (a pair's two columns adjacent),
    u_block (B, B), scale (Mp, B/2) each pair's fp16 scale, centroids (Mp/16, 16, 2) each tile's.
    Per row and pair (a, b = a + 1): the centroid that minimizes the pair's GPTQ cost e_a^2 + e_b^2,
    e_a = (w_a - s c0) / U_aa, e_b = (w_b - e_a U_ab - s c1) / U_bb (b's weight after a's error);
    then both errors spread over the later columns of the block, which keeps the scaled errors."""
    rows, width = block.shape
    for r in numba.prange(rows):
        c = centroids[r // 16]
        for q in range(width // 2):
            a, b = 2 * q, 2 * q + 1
            s, ua, ub, uab = scale[r, q], u_block[a, a], u_block[b, b], u_block[a, b]
            best, best_cost = 0, np.inf
            for i in range(c.shape[0]):
                ea = (block[r, a] - s * c[i, 0]) / ua
                eb = (block[r, b] - ea * uab - s * c[i, 1]) / ub
                cost = ea * ea + eb * eb
                if cost < best_cost:
                    best, best_cost = i, cost
            idx_out[r, q] = best
            ea = (block[r, a] - s * c[best, 0]) / ua
            for k in range(b, width):
                block[r, k] -= ea * u_block[a, k]
            eb = (block[r, b] - s * c[best, 1]) / ub
            for k in range(b + 1, width):
                block[r, k] -= eb * u_block[b, k]
            block[r, a], block[r, b] = ea, eb


def gptq_pairs(weight: np.ndarray, qtype: QuantType, hessian: np.ndarray, damp: float = DAMP,
               block_size: int = BLOCK, method: str = "gptq"):
    """GPTQ for the 2-D codebook (v2g<G>s, GPTVQ's idea): centroids and scales from the weighted
    k-means (convert.codebook, columns weighted by diag H), then the pairs (k, k + 4) visited in
    order, each one's two columns adjacent, every pair's centroid chosen against the weights the
    earlier pairs' errors updated, its errors spread as GPTQ spreads a column's."""
    from . import codebook
    from .quantize import QuantizedTensor, _squares
    if weight.ndim != 2:
        raise ValueError(f"{qtype.name} needs a 2-D tensor, got shape {weight.shape}")
    w, h, importance, _ = prepare(weight, hessian, qtype, False)
    padded_rows, padded_cols = w.shape
    indices, scales16, books = codebook._fit_pairs(w, column_weights(importance, padded_cols, qtype.group).reshape(-1),
                                                   qtype.group, codebook.KMEANS_ITERATIONS)
    pair = np.arange(padded_cols // 2)
    order = np.stack([8 * (pair // 4) + pair % 4, 8 * (pair // 4) + pair % 4 + 4], axis=1).reshape(-1)
    w = np.ascontiguousarray(w[:, order])                                # pair p's columns at 2p, 2p + 1
    u = inverse_hessian_factor(h[np.ix_(order, order)], damp)
    centroids = np.stack([books[:, :16], books[:, 16:]], axis=2).astype(np.float64)   # (Mp/16, 16, 2)
    pair_scale = np.repeat(scales16.astype(np.float64), qtype.group // 2, axis=1)     # (Mp, Kp/2)
    block_size -= block_size % 2
    for start in range(0, padded_cols, block_size):
        stop = min(start + block_size, padded_cols)
        block = w[:, start:stop].copy()
        _quantize_pairs(block, np.ascontiguousarray(u[start:stop, start:stop]),
                        np.ascontiguousarray(pair_scale[:, start // 2:stop // 2]), centroids,
                        indices[:, start // 2:stop // 2])
        w[:, stop:] -= block @ u[start:stop, stop:]
    rows, cols = weight.shape
    data = quant_types.pack_codebook(qtype, indices, scales16, books, cols)
    restored = quant_types.dequantize_codebook(qtype, indices, scales16, books)[:rows, :cols]
    return QuantizedTensor(qtype, (rows, cols), data, method, *_squares(np.asarray(weight, np.float32), restored))


def _current_group(w, block, u, start, i, positions):
    """(Mp, G) current weights of one group's columns (given by visit positions, none visited yet):
    inside the block they are up to date; beyond it they still lack the block's errors so far."""
    rows = w.shape[0]
    current = np.empty((rows, len(positions)), dtype=np.float64)
    stop = start + block.shape[1]
    for k, p in enumerate(positions):
        if p < stop:
            current[:, k] = block[:, p - start]
        else:
            current[:, k] = w[:, p] - block[:, :i] @ u[start:start + i, p]
    return current


def float_target_weight(weight: np.ndarray, hessian: np.ndarray, input_error: np.ndarray,
                        damp: float = DAMP) -> np.ndarray:
    """The weights GPTQ should aim at when its inputs X~ (N, K) are the quantized model's but the
    target is the float layer's output W X (X the float model's inputs at the same place):
        W* = W + W (X - X~)ᵀX~ (X~ᵀX~ + damp·mean(diag)·I)^-1          (M, K)
    is the least-squares fit of X W^T by X~ W*^T (ridge-damped towards W), and for any Q
        ||X Wᵀ - X~ Qᵀ||² = ||X Wᵀ - X~ W*ᵀ||² + ||X~ (W* - Q)ᵀ||²     (undamped)
    so running GPTQ on W* with H = X~ᵀX~ minimizes the error against the float output. With X = X~
    (the first layer) W* = W."""
    h = np.array(hessian, dtype=np.float64)
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h)) + 1e-30
    correction = np.asarray(weight, np.float64) @ np.asarray(input_error, np.float64)     # (M, K)
    return np.asarray(weight, np.float64) + np.linalg.solve(h, correction.T).T


def layer_output_error(weight: np.ndarray, restored: np.ndarray, hessian: np.ndarray) -> float:
    """sum over calibration inputs of ||(W - Q) x||^2 = trace((W - Q) XᵀX (W - Q)ᵀ)."""
    diff = np.asarray(weight, np.float64) - restored
    return float(np.einsum("ij,jk,ik->", diff, hessian, diff))
