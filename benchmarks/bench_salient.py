"""Salient input channels (issue 11, Atom's lesson for weights): do a few input columns kept at 8
bits, the rest at low bits, buy more than spending the same bytes on a wider type?

    python benchmarks/bench_salient.py SRC --stats stats.npz [--k 8 16 32 64] [--base u2g64a u3g64a ...]

SRC is any convert source (an HF folder); stats.npz comes from `edgeq calibrate SRC -o stats.npz`.
For a sample of linear tensors (every kind, at the first, an early, a late and the last layer) it
scores, with the allocator's own measure (convert/allocate.py: Σ_j E[x_j²]·‖ΔW[:, j]‖², rtn fits
weighted by E[x²], on the same sampled rows):

- every candidate type the allocator chooses from (bytes, error): the tensor's own front;
- "salient" plans: the k columns with the largest E[x_j²]·‖W[:, j]‖² stored at 8 bits (p8g32a over
  the k reordered columns), the other K − k at a base type, plus 2 bytes per kept column index.

A salient plan helps the allocator only if it lies below the lower convex hull of the candidates'
(bytes, error) points: the Lagrangian knapsack picks points on that hull for every trade-off
between bytes and error, so a point above it would never be chosen (the same bytes buy more
elsewhere). Printed per tensor and plan: error / the hull's error at the plan's bytes (< 1: worth
building), and error / the best candidate no larger.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeq import quant_types  # noqa: E402
from edgeq.fileformat import ALIGNMENT  # noqa: E402
from edgeq.convert import allocate, calibrate  # noqa: E402
from edgeq.convert.sources import open_source  # noqa: E402

SALIENT_TYPE = "p8g32a"         # what the kept columns are stored as
INDEX_BYTES = 2                 # a kept column's index (uint16)


def lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of (bytes, error) points, by increasing bytes, error decreasing."""
    hull: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if hull and y >= hull[-1][1]:
            continue                                    # more bytes, no less error: never chosen
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (x - x1) >= (y - y1) * (x2 - x1):     # the middle point lies on or above the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    return hull


def hull_error(hull: list[tuple[float, float]], x: float) -> float | None:
    """The hull's error at x bytes (linear between its points); None below its smallest point."""
    if x < hull[0][0]:
        return None
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        if x1 <= x <= x2:
            return y1 + (y2 - y1) * (x - x1) / (x2 - x1)
    return hull[-1][1]


def sample_rows(weight: np.ndarray, rows: int = allocate.SAMPLE_ROWS, seed: int = 0) -> tuple[np.ndarray, float]:
    """The rows allocate.tensor_scores measures on, and the factor that scales their error to the tensor."""
    if weight.shape[0] <= rows:
        return np.ascontiguousarray(weight, np.float32), 1.0
    picked = np.sort(np.random.default_rng(seed).choice(weight.shape[0], rows, replace=False))
    return np.ascontiguousarray(weight[picked], np.float32), weight.shape[0] / rows


def salient_error(weight: np.ndarray, importance: np.ndarray, k: int, base) -> tuple[int, float]:
    """(bytes, error) of k salient columns at SALIENT_TYPE and the rest at base, on the sampled rows."""
    rows, cols = weight.shape
    saliency = importance * (weight.astype(np.float64) ** 2).sum(axis=0)
    keep = np.sort(np.argsort(-saliency, kind="stable")[:k])
    rest = np.setdiff1d(np.arange(cols), keep)
    sample, factor = sample_rows(weight)
    salient = quant_types.TYPES[SALIENT_TYPE]
    error = allocate.tensor_error(np.ascontiguousarray(sample[:, keep]), salient, importance[keep])[0]
    error += allocate.tensor_error(np.ascontiguousarray(sample[:, rest]), base, importance[rest])[0]
    size = salient.nbytes(rows, k) + base.nbytes(rows, cols - k) + INDEX_BYTES * k
    return size, factor * error


def picked_tensors(config) -> list[str]:
    layers = sorted({0, config.n_layers // 4, 3 * config.n_layers // 4, config.n_layers - 1})
    return [name for name in allocate.allocated_tensors(config)
            if calibrate.is_calibrated_linear(name) and int(name.split(".")[1]) in layers]


class Extra(NamedTuple):
    """An option that is not a type (yet) as a knapsack option's "type" (the solver reads only cost and score)."""
    name: str


def whole_model(model, stats: str, bpws: list[float], extra, what: str = "salient plans") -> None:
    """The allocator's estimated KL at each --bpw with and without extra options for every linear
    tensor: the same scores, KL factors and solver as `edgeq convert --bpw B` (convert/allocate.py).
    extra(weight, importance) -> [(label, bytes, score)]."""
    from tqdm import tqdm
    from edgeq.convert.calibrate import MethodSettings
    from edgeq.convert.convert import _analyse
    config = model.config
    candidates = allocate.candidate_types()
    importance, _, _, scores, factors, grids, _ = _analyse(model, model.load, MethodSettings(stats=stats),
                                                           candidates, disable=False)
    scores = allocate.with_source_grids(scores, grids)
    names = allocate.allocated_tensors(config)
    factor = lambda n: factors.get((allocate.kind_of(n), allocate.depth_of(n, config.n_layers)), 1.0)
    plain, extended = [], []
    for name in tqdm(names, desc=what, unit="tensor", leave=False):
        shape = config.tensor_shape(name)
        options = [allocate.Option(t, float(allocate.stored_bytes(t, shape)), factor(name) * scores[name][t.name])
                   for t in candidates]
        plain.append(allocate.prune(options))
        if calibrate.is_calibrated_linear(name):
            weight = np.asarray(model.load(name), np.float32)
            imp = np.asarray(importance[calibrate.input_of(name)], np.float64)
            for label, size, error in extra(weight, imp):
                size = -(-size // ALIGNMENT) * ALIGNMENT
                options.append(allocate.Option(Extra(label), float(size), factor(name) * error))
        extended.append(allocate.prune(options))
    weights = sum(config.tensor_shape(n)[0] * config.tensor_shape(n)[1] for n in names)
    print(f"| --bpw | estimated KL, candidate types | with {what} | ratio | tensors given one of {what} |")
    print("|---|---|---|---|---|")
    for bpw in bpws:
        limit = bpw * weights / 8
        totals, chosen = [], 0
        for groups in (plain, extended):
            picked = allocate.solve(groups, limit)
            if picked is None:
                raise SystemExit(f"--bpw {bpw:g} is below the smallest plan")
            totals.append(sum(options[i].score for options, i in zip(groups, picked)))
            chosen = sum(isinstance(options[i].qtype, Extra) for options, i in zip(groups, picked))
        print(f"| {bpw:g} | {totals[0]:.5f} | {totals[1]:.5f} | {totals[1] / totals[0]:.3f} | {chosen} |", flush=True)


def per_tensor(model, stats: str, tensors: list[str] | None, extra, what: str = "plan") -> None:
    """For each tensor (default: every kind at four depths), every extra(weight, importance) ->
    [(label, bytes, score)] option against the tensor's hull of candidate types, then a summary per label."""
    config = model.config
    importance, _ = calibrate.load_stats(stats, config, calibrate.model_fingerprint(model.load, config))
    candidates = allocate.candidate_types()
    below = total = 0
    ratios: dict[str, list[float]] = {}
    print(f"| tensor | {what} | bpw | error / hull at its bytes | error / best candidate no larger (which) "
          "| u2g32a / hull |")
    print("|---|---|---|---|---|---|")
    for name in tensors or picked_tensors(config):
        weight = np.asarray(model.load(name), np.float32)
        imp = np.asarray(importance[calibrate.input_of(name)], np.float64)
        rows, cols = weight.shape
        scores = allocate.tensor_scores(weight, imp, candidates)
        points = [(qtype.nbytes(rows, cols), scores[qtype.name]) for qtype in candidates]
        hull = lower_hull(points)
        u2 = quant_types.TYPES["u2g32a"]
        u2_at = hull_error(hull, u2.nbytes(rows, cols))
        u2_ratio = f"{scores[u2.name] / u2_at:.3f}" if u2_at else ""
        for label, size, error in extra(weight, imp):
            at = hull_error(hull, size)
            no_larger = [(e, t.name) for (b, e), t in zip(points, candidates) if b <= size]
            best = min(no_larger) if no_larger else None
            if best is not None and best[0] <= 0:
                best = None                                 # a candidate holds the tensor exactly (its source grid)
            ratio = error / at if at else None
            total += 1
            below += bool(ratio is not None and ratio < 1)
            if ratio is not None:
                ratios.setdefault(label, []).append(ratio)
            print(f"| {name} | {label} | {8 * size / (rows * cols):.3f} | {'' if ratio is None else f'{ratio:.3f}'} | "
                  f"{'' if best is None else f'{error / best[0]:.3f} ({best[1]})'} | {u2_ratio} |", flush=True)
    print()
    print(f"| {what} | tensors | median error / hull | min | max |")
    print("|---|---|---|---|---|")
    for label, values in ratios.items():
        print(f"| {label} | {len(values)} | {np.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    print(f"\n{below} of {total} lie below their tensor's hull of candidate types")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("--stats", required=True, help="E[x^2] from `edgeq calibrate SRC -o stats.npz`")
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 32, 64], help="salient columns kept")
    parser.add_argument("--base", nargs="+", default=["u2g64a", "u2g32a", "u3g64a", "u3g32a", "p4g64a"],
                        help="the type of the other columns")
    parser.add_argument("--tensors", nargs="*", help="tensor names [default: every kind at four depths]")
    parser.add_argument("--bpw", type=float, nargs="*",
                        help="instead of the per-tensor table: the allocator's estimated KL at these budgets, "
                             "with and without salient plans for every linear tensor")
    args = parser.parse_args()
    bases = [quant_types.TYPES[n] for n in args.base]
    plans = lambda weight, imp: [(f"{base.name} + {k} at 8 bits", *salient_error(weight, imp, k, base))
                                 for base in bases for k in args.k]
    model = open_source(args.source)
    if args.bpw:
        whole_model(model, args.stats, args.bpw, plans)
    else:
        per_tensor(model, args.stats, args.tensors, plans)


if __name__ == "__main__":
    main()
