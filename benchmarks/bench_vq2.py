"""A 2-D vector codebook at 2 bits (issue 11), fitted in numpy before any kernel is written: does
it lie below the allocator's front of the types we have?

    python benchmarks/bench_vq2.py SRC --stats stats.npz [--group 64 32] [--tile 16 0] [--tensors ...]

The format measured: consecutive pairs of input columns (w[2i], w[2i+1]) of a row take one of 16
learned 2-D centroids (a 4-bit index per pair: 2 bits per weight), times an fp16 scale per group of
G weights along the row; the 16 centroids (int8 pairs, 32 bytes) are learned per tile of T rows (T = 0:
one codebook per tensor). Bits per weight: 2 + 16 / G + 256 / (T·K). Fit: weighted k-means of the
group-normalized pairs (each coordinate weighted by its column's E[x²]), alternating with the
least-squares scale of every group, from a k-means++ start; the centroids are rounded to int8 (a
shared step per codebook), as a kernel would hold them.

Scored like every candidate (convert/allocate.py: Σ_j E[x_j²]·‖ΔW[:, j]‖² on the allocator's sampled
rows) and placed against the tensor's lower convex hull of candidate types (benchmarks/bench_salient.py:
a point above the hull is never chosen by the knapsack). Printed per tensor: bpw, error / hull at its
bytes (< 1: the format would be chosen somewhere), error / the best candidate no larger.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_salient import per_tensor, sample_rows, whole_model  # noqa: E402
from edgeq.convert.sources import open_source  # noqa: E402

CENTROIDS = 16
ITERATIONS = 12


def _assign(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of every pair under the per-coordinate weights. points, weights (N, 2)."""
    distance = ((points[:, None, :] - centroids[None, :, :]) ** 2 * weights[:, None, :]).sum(axis=2)
    return distance.argmin(axis=1)


def fit_tile(w: np.ndarray, imp: np.ndarray, group: int, rng) -> np.ndarray:
    """The restored (rows, K) weights of one tile under the format; K even, K % group == 0."""
    rows, cols = w.shape
    pairs = w.reshape(rows, cols // 2, 2)
    col_w = np.broadcast_to(imp.reshape(1, cols // 2, 2), pairs.shape)
    groups = w.reshape(rows, cols // group, group)
    scale = np.sqrt((groups ** 2).mean(axis=2)) + 1e-12                     # (rows, n_groups)
    per_pair = np.repeat(scale, group // 2, axis=1)                         # (rows, cols/2)
    points = (pairs / per_pair[..., None]).reshape(-1, 2)
    weights = (col_w * per_pair[..., None] ** 2).reshape(-1, 2)
    # k-means++ start, weighted by each pair's importance
    mass = weights.sum(axis=1)
    centroids = [points[rng.choice(len(points), p=mass / mass.sum())]]
    for _ in range(CENTROIDS - 1):
        d = np.min([((points - c) ** 2 * weights).sum(axis=1) for c in centroids], axis=0)
        centroids.append(points[rng.choice(len(points), p=d / d.sum())] if d.sum() > 0 else points[0])
    centroids = np.array(centroids)
    for _ in range(ITERATIONS):
        index = _assign(points, weights, centroids)
        for k in range(CENTROIDS):
            mine = index == k
            if mine.any():
                centroids[k] = (weights[mine] * points[mine]).sum(axis=0) / np.maximum(weights[mine].sum(axis=0), 1e-30)
        # int8 centroids, one step per codebook
        step = np.abs(centroids).max() / 127 or 1.0
        q = np.round(centroids / step) * step
        # least-squares scale per group: s = Σ e w c / Σ e c², c the chosen centroid's coordinates
        chosen = q[index].reshape(rows, cols // 2, 2)
        num = (col_w * pairs * chosen).reshape(rows, cols // group, group).sum(axis=2)
        den = (col_w * chosen ** 2).reshape(rows, cols // group, group).sum(axis=2)
        scale = np.where(den > 0, num / np.maximum(den, 1e-30), scale)
        scale = scale.astype(np.float16).astype(np.float64)
        per_pair = np.repeat(scale, group // 2, axis=1)
        safe = np.where(per_pair == 0, 1.0, per_pair)
        points = (pairs / safe[..., None]).reshape(-1, 2)
        weights = (col_w * per_pair[..., None] ** 2).reshape(-1, 2)
    index = _assign(points, weights, q)
    return (q[index].reshape(rows, cols // 2, 2) * per_pair[..., None]).reshape(rows, cols)


def vq2_error(weight: np.ndarray, imp: np.ndarray, group: int, tile: int, seed: int = 0) -> tuple[int, float]:
    """(bytes, score) of a tensor under the format, scored on the allocator's sampled rows (the
    codebooks learned on the tiles those rows fall in: per tensor, the sample itself)."""
    rows, cols = weight.shape
    padded = -(-cols // group) * group
    sample, factor = sample_rows(weight)
    w = np.zeros((sample.shape[0], padded)); w[:, :cols] = sample
    e = np.zeros(padded); e[:cols] = imp
    rng = np.random.default_rng(seed)
    if tile:
        restored = np.concatenate([fit_tile(w[r:r + tile], e, group, rng) for r in range(0, w.shape[0], tile)])
    else:
        restored = fit_tile(w, e, group, rng)
    error = float((((w - restored) ** 2).sum(axis=0) * e).sum())
    n_books = -(-rows // tile) if tile else 1
    size = rows * padded // 4 + rows * (padded // group) * 2 + n_books * 2 * CENTROIDS + 4 * n_books
    return size, factor * error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("--stats", required=True, help="E[x^2] from `edgeq calibrate SRC -o stats.npz`")
    parser.add_argument("--group", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--tile", type=int, nargs="+", default=[16, 0], help="rows per codebook (0: per tensor)")
    parser.add_argument("--tensors", nargs="*", help="tensor names [default: every kind at four depths]")
    parser.add_argument("--bpw", type=float, nargs="*",
                        help="instead of the per-tensor table: the allocator's estimated KL at these budgets, "
                             "with and without the format (every --group, --tile) for every linear tensor")
    args = parser.parse_args()
    formats = lambda weight, imp: [(f"G {group}, codebook per {f'{tile} rows' if tile else 'tensor'}",
                                    *vq2_error(weight, imp, group, tile))
                                   for group in args.group for tile in args.tile]
    model = open_source(args.source)
    if args.bpw:
        whole_model(model, args.stats, args.bpw, formats, "2-D codebook")
    else:
        per_tensor(model, args.stats, args.tensors, formats, "2-D codebook")


if __name__ == "__main__":
    main()
