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

from bench_salient import hull_error, lower_hull, picked_tensors, sample_rows, whole_model  # noqa: E402
from edgeq.convert import allocate, calibrate  # noqa: E402
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
    model = open_source(args.source)
    config = model.config
    if args.bpw:
        whole_model(model, args.stats, args.bpw,
                    lambda weight, imp: [(f"v2 g{group} t{tile}", *vq2_error(weight, imp, group, tile))
                                         for group in args.group for tile in args.tile], "2-D codebook")
        return
    importance, _ = calibrate.load_stats(args.stats, config, calibrate.model_fingerprint(model.load, config))
    candidates = allocate.candidate_types()
    ratios: dict[tuple[int, int], list[float]] = {}
    print("| tensor | group, tile | bpw | error / hull at its bytes | error / best candidate no larger (which) "
          "| u2g32a / hull |")
    print("|---|---|---|---|---|---|")
    for name in args.tensors or picked_tensors(config):
        weight = np.asarray(model.load(name), np.float32)
        imp = np.asarray(importance[calibrate.input_of(name)], np.float64)
        rows, cols = weight.shape
        scores = allocate.tensor_scores(weight, imp, candidates)
        points = [(t.nbytes(rows, cols), scores[t.name]) for t in candidates]
        hull = lower_hull(points)
        u2 = next(t for t in candidates if t.name == "u2g32a")
        u2_ratio = scores["u2g32a"] / hull_error(hull, u2.nbytes(rows, cols))
        for group in args.group:
            for tile in args.tile:
                size, error = vq2_error(weight, imp, group, tile)
                at = hull_error(hull, size)
                no_larger = [(e, t.name) for (b, e), t in zip(points, candidates) if b <= size]
                best = min(no_larger) if no_larger else None
                if best is not None and best[0] <= 0:
                    best = None                                 # a candidate holds the tensor exactly (its source grid)
                ratio = error / at if at else None
                if ratio is not None:
                    ratios.setdefault((group, tile), []).append(ratio)
                print(f"| {name} | {group}, {tile or 'tensor'} | {8 * size / (rows * cols):.3f} | "
                      f"{'' if ratio is None else f'{ratio:.3f}'} | "
                      f"{'' if best is None else f'{error / best[0]:.3f} ({best[1]})'} | {u2_ratio:.3f} |", flush=True)
    print()
    print("| group, tile | tensors | median error / hull | min | max |")
    print("|---|---|---|---|---|")
    for (group, tile), values in ratios.items():
        print(f"| {group}, {tile or 'tensor'} | {len(values)} | {np.median(values):.3f} | {min(values):.3f} | "
              f"{max(values):.3f} |")


if __name__ == "__main__":
    main()
