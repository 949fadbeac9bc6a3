"""The non-uniform bit-plane format (issue 11: binary coding, as LUT-GEMM and ELUTQ), fitted in numpy
before any kernel is written: does it lie below the allocator's front of the types we have?

    python benchmarks/bench_bcq.py SRC --stats stats.npz [--bits 2 3] [--group 128 64] [--tensors ...]

The format measured: per group of G weights along a row, w ~ Σ_p α_p b_p + β with b_p in {-1, +1}
(one bit-plane per bit, so the LUT kernels we have would run it with each plane's sums scaled by
its own α instead of 2^p) and b + 1 fp16 numbers per group: bits per weight b + 16 (b + 1) / G.
Fit: alternating least squares weighted by E[x²] (ELUTQ's), from the uniform asymmetric grid
(α_p = 2^p s / 2, β the group's midpoint, which is what u<b>g<G>a stores): every weight takes the
nearest of the 2^b levels, then α and β are the weighted least-squares solution for those signs,
rounded to fp16; ITERATIONS rounds.

Scored like every candidate (the allocator's Σ_j E[x_j²]·‖ΔW[:, j]‖² on its sampled rows) and placed
against the tensor's lower convex hull of candidate types (benchmarks/bench_salient.py), as
benchmarks/bench_vq2.py places the 2-D codebook. Results: benchmarks/README.md "Non-uniform bit-planes".
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_salient import per_tensor, sample_rows  # noqa: E402
from edgeq.convert.sources import open_source  # noqa: E402

ITERATIONS = 15


def fit_bcq(w: np.ndarray, importance: np.ndarray, bits: int, group: int) -> np.ndarray:
    """(R, K) weights -> restored (R, K) under the format (K padded to whole groups inside)."""
    rows, cols = w.shape
    padded = -(-cols // group) * group
    x = np.zeros((rows, padded)); x[:, :cols] = w
    e = np.zeros(padded); e[:cols] = importance / max(importance.mean(), 1e-30)
    g = x.reshape(rows, -1, group)
    weights = np.broadcast_to(e.reshape(1, -1, group), g.shape)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=bits)))          # (2^b, b)
    low, high = g.min(axis=2), g.max(axis=2)
    step = (high - low) / (2 ** bits - 1)
    alpha = np.stack([step * 2 ** p / 2 for p in range(bits)], axis=-1)         # (R, n, b)
    beta = (high + low) / 2
    for _ in range(ITERATIONS + 1):
        levels = np.einsum("rnp,cp->rnc", alpha, signs) + beta[..., None]       # (R, n, 2^b)
        nearest = np.abs(g[..., None] - levels[..., None, :]).argmin(axis=-1)    # (R, n, G)
        if _ == ITERATIONS:
            break
        design = np.concatenate([signs[nearest], np.ones(nearest.shape + (1,))], axis=-1)   # (R, n, G, b+1)
        normal = np.einsum("rngi,rng,rngj->rnij", design, weights, design) + 1e-12 * np.eye(bits + 1)
        right = np.einsum("rngi,rng,rng->rni", design, weights, g)
        solution = np.linalg.solve(normal, right[..., None])[..., 0]
        alpha = solution[..., :bits].astype(np.float16).astype(np.float64)
        beta = solution[..., bits].astype(np.float16).astype(np.float64)
    return np.take_along_axis(levels, nearest, axis=-1).reshape(rows, padded)[:, :cols]


def bcq_error(weight: np.ndarray, importance: np.ndarray, bits: int, group: int) -> tuple[int, float]:
    """(bytes, score) of a tensor under the format, on the allocator's sampled rows."""
    rows, cols = weight.shape
    sample, factor = sample_rows(weight)
    restored = fit_bcq(sample.astype(np.float64), importance, bits, group)
    error = float((((sample - restored) ** 2).sum(axis=0) * importance).sum())
    n_groups = -(-cols // group)
    size = -(-rows * cols * bits // 8) + rows * n_groups * 2 * (bits + 1)
    return size, factor * error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("--stats", required=True, help="E[x^2] from `edgeq calibrate SRC -o stats.npz`")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--group", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--tensors", nargs="*", help="tensor names [default: every kind at four depths]")
    args = parser.parse_args()
    formats = lambda weight, imp: [(f"{bits} planes, G {group}", *bcq_error(weight, imp, bits, group))
                                   for bits in args.bits for group in args.group]
    per_tensor(open_source(args.source), args.stats, args.tensors, formats, "non-uniform bit-planes")


if __name__ == "__main__":
    main()
