"""The codebook family (c4g<G><a|s>) against the uniform 4-bit types, by hand (issue 11):

    python benchmarks/bench_codebook.py [--hf ~/.cache/edgeq/bench/smollm2/hf] [--rounds 5]

1. Fitting: on four SmolLM2 layers, the weighted error Σ_j E[x_j^2] ||ΔW_:,j||^2 (E[x^2] a gamma(0.5)
   stand-in: most columns small, a few large) of c4g64a / c4g64s with one codebook per 16-row tile
   and one per tensor, relative to rtn's p4g64a / p4g64s with the same weights.
2. Kernels: the median time of one decode product (edgeq profile's eq_gemv_time: the forward pass's
   pool and chunks, weights streamed from 16 copies) per type and kernel set this CPU runs, for
   SmolLM2's (1536, 576) and (576, 1536); `--rounds` interleaved rounds, the smallest median kept
   (a shared machine only ever adds time).
The end-to-end numbers (perplexity, KL, decode speed of converted files) are in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgeq import _ffi, quant_types
from edgeq.convert import codebook, methods

LAYERS = ["model.layers.3.self_attn.q_proj.weight", "model.layers.10.mlp.down_proj.weight",
          "model.layers.20.self_attn.v_proj.weight", "model.layers.15.mlp.gate_proj.weight"]
TYPES = ["c4g64a", "p4g64a", "u4g64a"]


def error_of(weight, qtype, importance, **options) -> float:
    tensor = (codebook.fit(weight, qtype, importance, **options) if qtype.family == quant_types.CODEBOOK
              else methods.rtn(weight, qtype, importance))
    return methods.weighted_error(weight, quant_types.dequantize(qtype, tensor.data, *weight.shape), importance)


def fitting(hf: Path) -> None:
    from safetensors.numpy import load_file
    tensors = load_file(str(hf / "model.safetensors"))
    rng = np.random.default_rng(0)
    print("weighted error relative to rtn on the uniform packed type of the same group and symmetry")
    for name in LAYERS:
        weight = tensors[name].astype(np.float32)
        importance = rng.gamma(0.5, 1.0, weight.shape[1])
        cells = []
        for symmetric in (False, True):
            uniform = error_of(weight, quant_types.uniform_type(4, 64, symmetric, quant_types.UNIFORM_PACKED), importance)
            ours = quant_types.codebook_type(4, 64, symmetric)
            for label, rows in (("tile", quant_types.TILE_ROWS), ("tensor", 1 << 30)):
                cells.append(f"{ours.name}/{label} {error_of(weight, ours, importance, rows_per_codebook=rows) / uniform:.3f}")
        print(f"  {name} {weight.shape}: " + ", ".join(cells))


def kernels(rounds: int) -> None:
    rng = np.random.default_rng(0)
    shapes = [(1536, 576), (576, 1536)]
    data = {}
    for rows, cols in shapes:
        weight = (rng.standard_t(4, (rows, cols)) * 0.02).astype(np.float32)
        for name in TYPES:
            qtype = quant_types.TYPES[name]
            data[name, rows, cols] = (codebook.fit(weight, qtype) if qtype.family == quant_types.CODEBOOK
                                      else methods.rtn(weight, qtype)).data
    previous, times = _ffi.isa(), {}
    try:
        for isa in [s for s in _ffi.kernel_sets() if s not in ("ref", "scalar")]:
            _ffi.select_isa(isa)
            for _ in range(rounds):
                for threads in (1, 2):
                    for rows, cols in shapes:
                        for name in TYPES:
                            seconds = _ffi.gemv_time(name, data[name, rows, cols], rows, cols, copies=16,
                                                     threads=threads, repeats=15)
                            times.setdefault((isa, threads, rows, cols, name), []).append(seconds)
    finally:
        _ffi.select_isa(previous)
    print("decode product, µs (smallest of the rounds' medians)")
    for (isa, threads, rows, cols, name), values in times.items():
        print(f"  {isa:<8} t{threads} ({rows}, {cols}) {name}: {min(values) * 1e6:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", type=Path, default=Path.home() / ".cache/edgeq/bench/smollm2/hf")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fitting(args.hf)
    kernels(args.rounds)


if __name__ == "__main__":
    main()
