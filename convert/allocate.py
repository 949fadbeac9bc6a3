"""Mixed-precision allocation, HAQ-style: one quant type per 2-D tensor, chosen for a budget from
measured sensitivity (data) and measured cost (bytes, or kernel time on the target CPU).

1. Candidates: every row of the type table (edgeq.quant_types.TYPES) the converter can write
   (convert.quantize.writes), except f32: a new family joins without editing this module.
2. Sensitivity of tensor W (M, K) under candidate t: the calibration-weighted output error
       score(W, t) = sum_j E[x_j^2] * ||W[:, j] - Q_t(W)[:, j]||^2
   with Q_t the cheap method (rtn weighted by E[x^2]; for a codebook type its weighted k-means,
   convert.codebook) on SAMPLE_ROWS rows drawn once per tensor
   (the same rows for every candidate), scaled by M / SAMPLE_ROWS. Candidates that hold the same
   numbers (u4g64a and p4g64a) are fitted once. The head (the embedding table when tied) is weighted
   by E[x^2] of its input, the final norm's output (convert.calibrate.HEAD_INPUT), and fitted so in
   the file; untied token embeddings (and a head under a statistics file from before that entry) have
   no E[x^2]: their columns weigh 1. The KL calibration below gives every kind its scale.
3. Calibration against end-to-end KL (kl_factors): for one tensor per (kind, depth) cell, quantize
   only that tensor with PROBE_TYPE, run the float model on KL_TOKENS calibration tokens from its
   layer on, and measure the mean KL(float || perturbed) of the next-token distributions. The cell's
   factor is KL / score, so factor * score estimates the KL one tensor's quantization costs, in nats:
   the unit every tensor's score is stored in (edgeq.tensor.<name>.score) and the solver sums.
   Depth cells: "first" (layer 0), "early" (below n_layers / 2), "late", "last" (n_layers - 1).
   A GGUF source's grids: a candidate holding a tensor's blocks exactly (convert.gguf_grid) scores 0
   (with_source_grids); one holding a Q4_K tensor's levels with fp16-rounded scales scores that
   grid's error when it beats re-quantizing (with_fit, convert.convert._analyse).
4. Cost per (tensor, candidate): the bytes the file holds for it (the type's nbytes, scales and
   padding included, rounded up to the container's alignment), or with a latency budget the
   profile's measured time for the tensor's shape and type (edgeq.profile); the token embeddings
   read one row per token, so an untied embedding costs time(vocab, dim) / vocab. A bpw or size
   budget may carry a latency cap too (`--size S --latency-ms L`): then both hold (solve_capped).
5. Solve (solve): the multiple-choice knapsack by exact dynamic programming. The cheapest plan
   is the base; the slack it leaves (budget - its cost) is cut into GRID_CELLS cells and each
   option's extra cost over its group's cheapest is rounded *up* to whole cells, so a plan the
   solver returns never exceeds the budget; it is optimal for the rounded costs, hence no worse
   than the exact optimum under the budget shrunk by n_groups cells (n_groups / GRID_CELLS of the
   slack: 1 % for SmolLM2's 211 tensors). Ties go to the candidate listed first (the table's
   order, candidate_types), so the result is deterministic.
Tensors that must share a type are solved as one group (share_groups). In native/src/model.c no
fused product needs it: q/k/v and gate/up read one input prepared once per *family* (any mix of
types and families is fine), and gate/up are cut at the larger of their tiles; so every 2-D tensor
is its own group, and a tied embedding is one tensor (it is the head too).
Not here: writing the file (convert.convert) or quantizing with the final method (gptq/rtn).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeq import quant_types
from edgeq.errors import EdgeqError
from edgeq.quant_types import QuantType

SAMPLE_ROWS = 128            # rows of each tensor the sensitivity is measured on
GRID_CELLS = 20000           # the solver's budget grid
PROBE_TYPE = "u3g64a"        # the type a tensor is quantized to for its KL measurement
KL_TOKENS, KL_CTX = 512, 256
KL_ROWS = 64                 # positions per block of the head's logits in the KL measurement
DEPTHS = ("first", "early", "late", "last")
BUDGET_KINDS = ("bpw", "size", "latency")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


# ---------------------------------------------------------------------------------------------
# budgets and candidates
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    kind: str        # BUDGET_KINDS
    value: float     # bits per weight, bytes of the whole file, or milliseconds per decoded token
    cap_ms: float | None = None   # with bpw/size: decode milliseconds per token the plan may not exceed too

    def describe(self) -> str:
        return self.describe_main() + (f" --latency-ms {self.cap_ms:g}" if self.cap_ms is not None else "")

    def describe_main(self) -> str:
        return {"bpw": f"--bpw {self.value:g}", "size": f"--size {self.value / 1e6:.3f}MB",
                "latency": f"--latency-ms {self.value:g}"}[self.kind]

    def needs_profile(self) -> bool:
        return self.kind == "latency" or self.cap_ms is not None


def parse_size(text: str) -> int:
    """'80MB', '1.2GB', '512MiB' or plain bytes -> bytes (decimal units; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise EdgeqError(f"--size {text}: give bytes or a size with a unit, like 80MB, 1.2GB or 512MiB")
    size = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise EdgeqError(f"--size {text}: give a positive size")
    return int(size)


def candidate_types() -> list[QuantType]:
    """Every type the converter writes but f32 (f16 is the float candidate), in table order, except
    that of two types holding the same numbers (u8g64a and p8g64a: one grid as bit-planes or as
    packed levels, equal in bytes and score) the family `--layout auto` stores that width in comes
    first, so the solver's tie goes to it: packed at 4 and 8 bits, which decode faster (convert.plan)."""
    from .plan import PlanSettings
    from .quantize import writes
    types = [qtype for qtype in quant_types.TYPES.values() if writes(qtype) and qtype.bits < 32]
    auto, first = PlanSettings(), {}
    for index, qtype in enumerate(types):
        first.setdefault(_numbers_key(qtype), index)
    return sorted(types, key=lambda t: (first[_numbers_key(t)], t.is_uniform() and t.family != auto.family_for(t.bits)))


def allocated_tensors(config) -> list[str]:
    """The tensors the allocator chooses a type for: every 2-D tensor (1-D ones stay f32)."""
    return [name for name in config.tensor_names() if len(config.tensor_shape(name)) == 2]


def share_groups(config) -> list[list[str]]:
    """Tensors that must take one type together (module docstring: none today in model.c)."""
    return [[name] for name in allocated_tensors(config)]


def kind_of(name: str) -> str:
    """blk.3.attn_v.weight -> attn_v; token_embd.weight -> token_embd."""
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" else parts[0]


def depth_of(name: str, n_layers: int) -> str:
    """The depth cell of a tensor: first / early / late / last, or "-" outside the blocks."""
    parts = name.split(".")
    if parts[0] != "blk":
        return "-"
    layer = int(parts[1])
    if layer == 0:
        return "first"
    if layer == n_layers - 1:
        return "last"
    return "early" if layer < n_layers / 2 else "late"


def stored_bytes(qtype: QuantType, shape: tuple[int, ...]) -> int:
    """Bytes the file holds for a tensor: its data rounded up to the container's alignment."""
    from edgeq.fileformat import ALIGNMENT
    return -(-qtype.nbytes_for_shape(shape) // ALIGNMENT) * ALIGNMENT


# ---------------------------------------------------------------------------------------------
# sensitivity
# ---------------------------------------------------------------------------------------------

def _numbers_key(qtype: QuantType):
    """Types that hold the same numbers (bit-plane and packed layouts of one grid) share a key."""
    return ("uniform", qtype.bits, qtype.group, qtype.symmetric, qtype.integer_zero) if qtype.is_uniform() else qtype.name


def _restore(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None) -> np.ndarray:
    """What the cheap method of qtype's family (rtn weighted by E[x^2]; a codebook type's weighted
    k-means: convert.codebook) restores W to, (M, K) float32."""
    from . import methods
    from .quantize import quantize_plain
    if qtype.is_uniform():
        return methods.rtn_restored(weight, qtype, importance)
    if qtype.family == quant_types.PLAIN:
        return np.asarray(quantize_plain(weight, qtype).data, dtype=np.float32).reshape(weight.shape)
    tensor = methods.rtn(weight, qtype, importance)
    return quant_types.dequantize(qtype, np.asarray(tensor.data).view(np.uint8), *weight.shape)


def tensor_scores(weight: np.ndarray, importance: np.ndarray | None, candidates: list[QuantType],
                  sample_rows: int = SAMPLE_ROWS, seed: int = 0) -> dict[str, float]:
    """{candidate name: sum_j E[x_j^2] ||ΔW[:, j]||^2} for W (M, K), measured on sample_rows rows."""
    from .methods import weighted_error
    rows = weight.shape[0]
    if rows > sample_rows:
        picked = np.sort(np.random.default_rng(seed).choice(rows, sample_rows, replace=False))
        sample = np.ascontiguousarray(weight[picked], dtype=np.float32)
    else:
        sample = np.ascontiguousarray(weight, dtype=np.float32)
    scale = rows / sample.shape[0]
    by_numbers: dict = {}
    scores = {}
    for qtype in candidates:
        key = _numbers_key(qtype)
        if key not in by_numbers:
            by_numbers[key] = scale * weighted_error(sample, _restore(sample, qtype, importance), importance)
        scores[qtype.name] = by_numbers[key]
    return scores


def with_source_grids(scores: dict[str, dict[str, float]], grids: dict[str, QuantType]) -> dict[str, dict[str, float]]:
    """scores with 0 for every candidate that holds a tensor's source grid exactly (a GGUF source's
    Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks: convert.gguf_grid): the file then stores those blocks, bit for bit."""
    return {name: ({t: (0.0 if _numbers_key(quant_types.TYPES[t]) == _numbers_key(grids[name]) else score)
                    for t, score in per_type.items()} if name in grids else per_type)
            for name, per_type in scores.items()}


def with_fit(per_type: dict[str, float], qtype: QuantType, score: float) -> dict[str, float]:
    """One tensor's scores with `score` for every candidate holding qtype's numbers (its packed twin too)."""
    return {t: (score if _numbers_key(quant_types.TYPES[t]) == _numbers_key(qtype) else s) for t, s in per_type.items()}


def kept_grids(plan: dict[str, QuantType], grids: dict[str, QuantType]) -> dict[str, QuantType]:
    """The tensors whose planned type holds their source grid: stored as those blocks."""
    return {name: plan[name] for name in grids if name in plan and _numbers_key(plan[name]) == _numbers_key(grids[name])}


def tensor_error(weight: np.ndarray, qtype: QuantType, importance: np.ndarray | None) -> tuple[float, np.ndarray]:
    """(the whole tensor's score under qtype, its restored float weights)."""
    from .methods import weighted_error
    restored = _restore(np.ascontiguousarray(weight, dtype=np.float32), qtype, importance)
    return weighted_error(weight, restored, importance), restored


# ---------------------------------------------------------------------------------------------
# calibration against end-to-end KL
# ---------------------------------------------------------------------------------------------

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class FloatRunner:
    """The float model on a few calibration windows, keeping each layer's input so a run with one
    tensor replaced restarts at that tensor's layer. Math: convert.calibrate's layer forward."""

    def __init__(self, load, config, tokens: np.ndarray):
        from .calibrate import embed
        self.load, self.config = load, config
        self.n_seq, self.ctx = tokens.shape
        self.tokens = tokens
        self.inputs = []                                   # (N, dim) per layer
        x = embed(load, config, tokens)
        for layer in range(config.n_layers):
            self.inputs.append(x)
            x = self._layer(layer, x, {})
        self.final = x                                     # (N, dim) the last layer's output
        self.head = self._head_weight()                    # (vocab, dim), loaded once
        self.reference = np.empty((len(x), self.head.shape[0]), dtype=np.float32)    # (N, vocab) log-probs
        for rows in self._blocks():
            self.reference[rows] = _log_softmax(self._head(x[rows], None))

    def _layer(self, layer: int, x: np.ndarray, replaced: dict) -> np.ndarray:
        from .calibrate import _layer_forward, _layer_tensors
        weights = {s: replaced.get(f"blk.{layer}.{s}", None) for s in _layer_tensors(self.config)}
        weights = {s: w if w is not None else self.load(f"blk.{layer}.{s}") for s, w in weights.items()}
        return _layer_forward(self.config, weights, x, self.n_seq, self.ctx, layer, lambda name, inputs: None)

    def _head_weight(self) -> np.ndarray:
        return self.load(self.config.head_tensor)

    def _blocks(self):
        """Slices of KL_ROWS positions: the (positions, vocab) arrays exist a block at a time (a
        151936-token vocabulary makes a 512-position block 311 MB, and log_softmax needs several)."""
        return [slice(start, start + KL_ROWS) for start in range(0, self.n_seq * self.ctx, KL_ROWS)]

    def _head(self, x: np.ndarray, head: np.ndarray | None) -> np.ndarray:
        from edgeq.reference import rms_norm, softcap
        from .calibrate import _matmul
        c = self.config
        if head is None:
            head = self.head
        return softcap(_matmul(rms_norm(x, self.load("output_norm.weight"), c.norm_eps), head), c.final_softcap)

    def kl(self, name: str, restored: np.ndarray) -> float:
        """Mean KL(float || model with `name` replaced by `restored`) over every position."""
        from .calibrate import embed
        c = self.config
        head = None
        if name == "token_embd.weight":
            table = restored
            x = embed(lambda n, rows=None: table if rows is None else table[rows], c, self.tokens)
            first = 0
            head = restored if c.tied_embeddings else None
        elif name == "output.weight":
            x, first, head = self.final, c.n_layers, restored
        else:
            first = int(name.split(".")[1])
            x = self.inputs[first]
        replaced = {name: restored} if name.startswith("blk.") else {}
        for layer in range(first, c.n_layers):
            x = self._layer(layer, x, replaced)
        total = 0.0
        for rows in self._blocks():
            reference, probe = self.reference[rows], _log_softmax(self._head(x[rows], head))
            total += float(np.sum(np.exp(reference) * (reference - probe), dtype=np.float64))
        return total / len(x)


def kl_factors(load, config, tokenizer, importance_of, calib: str | None = None, progress=None) -> dict:
    """{(kind, depth): KL / score} measured on one tensor per cell (module docstring, step 3)."""
    from .calibrate import calibration_tokens
    tokens = calibration_tokens(calib, tokenizer, config, KL_TOKENS, min(KL_CTX, config.max_seq_len))
    runner = FloatRunner(load, config, tokens.tokens)
    probe = quant_types.TYPES[PROBE_TYPE]
    cells: dict = {}
    for name in allocated_tensors(config):
        cells.setdefault((kind_of(name), depth_of(name, config.n_layers)), []).append(name)
    factors = {}
    for cell, names in sorted(cells.items()):
        name = names[len(names) // 2]                # the middle layer of the cell
        weight = load(name)
        score, restored = tensor_error(weight, probe, importance_of(name))
        kl = runner.kl(name, restored)
        factors[cell] = max(kl, 0.0) / score if score > 0 else 0.0
        if progress is not None:
            progress.update(1)
    positive = [f for f in factors.values() if f > 0]
    floor = min(positive) if positive else 1.0       # a cell whose KL rounds to 0 keeps some weight
    return {cell: (f if f > 0 else floor) for cell, f in factors.items()}


# ---------------------------------------------------------------------------------------------
# the multiple-choice knapsack
# ---------------------------------------------------------------------------------------------

@dataclass
class Option:
    qtype: QuantType
    cost: float      # bytes or seconds
    score: float     # estimated KL, nats
    time: float = 0.0   # seconds per token, where a latency cap is solved beside a bpw/size budget


def prune(options: list[Option]) -> list[Option]:
    """Drop options another option beats or equals in cost, score and time (the first listed wins a tie)."""
    kept = []
    for i, option in enumerate(options):
        dominated = any((other.cost <= option.cost and other.score <= option.score and other.time <= option.time)
                        and (other.cost < option.cost or other.score < option.score or other.time < option.time
                             or j < i)
                        for j, other in enumerate(options) if j != i)
        if not dominated:
            kept.append(option)
    return kept


def solve(groups: list[list[Option]], budget: float, cells: int = GRID_CELLS) -> list[int] | None:
    """Indices of one option per group minimizing the summed score with summed cost <= budget, or
    None when even the cheapest options exceed it. Exact DP over the slack the cheapest plan leaves
    (budget - sum of each group's least cost) cut into `cells` cells, each option's extra cost over
    its group's least rounded up to whole cells: never over budget, optimal for the rounded costs,
    so no worse than the exact optimum under a budget smaller by len(groups) cells."""
    least = [min(o.cost for o in g) for g in groups]
    slack = budget - sum(least)
    if slack < 0:
        return None
    unit = slack / cells if slack > 0 else 1.0
    capacity = cells if slack > 0 else 0
    units = [[0 if o.cost <= low else math.ceil((o.cost - low) / unit) if slack > 0 else capacity + 1
              for o in g] for g, low in zip(groups, least)]
    best = np.zeros(capacity + 1)                          # best[c]: least score with extra cost <= c cells
    choices = np.zeros((len(groups), capacity + 1), dtype=np.int16)
    for gi, (group, cost_units) in enumerate(zip(groups, units)):
        new = np.full(capacity + 1, np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int16)
        for oi, (option, u) in enumerate(zip(group, cost_units)):
            if u > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[u:] = best[:capacity + 1 - u] + option.score
            better = candidate < new
            new[better] = candidate[better]
            pick[better] = oi
        best, choices[gi] = new, pick
    picked, c = [], capacity
    for gi in range(len(groups) - 1, -1, -1):
        oi = int(choices[gi, c])
        picked.append(oi)
        c -= units[gi][oi]
    return picked[::-1]


CAP_STEPS = 48       # bisection steps of the multiplier in solve_capped


def solve_capped(groups: list[list[Option]], budget: float, cap: float,
                 cells: int = GRID_CELLS) -> tuple[list[int] | None, float]:
    """Like solve, with a second limit: the summed option.time <= cap. Lagrangian relaxation of the
    time: solve (exact DP on cost) for score + lam * time, lam found by bisection as the smallest that
    meets the cap (CAP_STEPS steps). The plan it returns is optimal among the plans no larger and no
    slower than itself (a property of the relaxation; tests check it against brute force), not always
    among all plans within the cap. -> (indices, the least time any plan within the budget takes);
    indices None when no plan fits the budget or none within it meets the cap."""
    def plan_time(picked):
        return sum(g[i].time for g, i in zip(groups, picked))

    def run(lam: float, score_weight: float = 1.0):
        return solve([[Option(o.qtype, o.cost, score_weight * o.score + lam * o.time, o.time) for o in g]
                      for g in groups], budget, cells)

    fastest = run(1.0, 0.0)
    if fastest is None:
        return None, math.inf
    least_time = plan_time(fastest)
    picked = run(0.0)
    if plan_time(picked) <= cap:
        return picked, least_time
    if least_time > cap:
        return None, least_time
    scores = sum(max(o.score for o in g) - min(o.score for o in g) for g in groups)
    times = min((abs(a.time - b.time) for g in groups for a in g for b in g if a.time != b.time), default=1.0)
    low, high = 0.0, max(scores / times, 1e-30) * 2     # at high, a second saved outweighs any score
    best = run(high)
    if best is None or plan_time(best) > cap:
        best = fastest
    for _ in range(CAP_STEPS):
        middle = 0.5 * (low + high)
        candidate = run(middle)
        if plan_time(candidate) <= cap:
            high, best = middle, candidate
        else:
            low = middle
    return best, least_time


# ---------------------------------------------------------------------------------------------
# the plan for a model
# ---------------------------------------------------------------------------------------------

@dataclass
class Allocation:
    plan: dict[str, QuantType]            # allocated tensor -> its type
    scores: dict[str, float]              # allocated tensor -> estimated KL of its choice (nats)
    costs: dict[str, float]               # allocated tensor -> its cost (bytes or seconds)
    budget: Budget
    limit: float                          # the budget the tensors had (bytes or seconds)
    factors: dict = field(default_factory=dict)    # (kind, depth) -> KL / score
    notes: list[str] = field(default_factory=list)
    importance: dict | None = None        # E[x^2] per linear input (and the head's) the scores were weighted by
    calibration_hash: str = ""
    tokens: int = 0
    profile_note: str = ""                # the profile's CPU, set and threads (latency budgets)
    grids: dict = field(default_factory=dict)      # tensor -> the type holding its source grid exactly
    rounded: dict = field(default_factory=dict)    # tensor -> the type holding its K-quant grid, fp16 scales
    times: dict = field(default_factory=dict)      # allocated tensor -> its product's seconds (with a profile)
    cap: float | None = None              # the seconds per token the products had (with a latency budget or cap)

    def summary(self, config) -> list[str]:
        """Per kind and depth: bits per weight (scales included) and summed score."""
        return summary_lines({n: (t, config.tensor_shape(n), self.scores[n]) for n, t in self.plan.items()},
                             config.n_layers)


def summary_lines(tensors: dict, n_layers: int) -> list[str]:
    """tensors: name -> (qtype, shape, score or None) -> a table of kind x depth cells."""
    cells: dict = {}
    for name, (qtype, shape, score) in tensors.items():
        if len(shape) != 2:
            continue
        cell = cells.setdefault((kind_of(name), depth_of(name, n_layers)), [0, 0, 0.0, {}])
        cell[0] += qtype.nbytes_for_shape(shape)
        cell[1] += shape[0] * shape[1]
        cell[2] += score or 0.0
        cell[3][qtype.name] = cell[3].get(qtype.name, 0) + 1
    lines = [f"{'kind':<12} {'depth':<6} {'bpw':>6} {'bytes':>12} {'score':>10}  types"]
    for (kind, depth), (nbytes, weights, score, types) in sorted(cells.items(), key=lambda kv: (kv[0][0], DEPTHS.index(kv[0][1]) if kv[0][1] in DEPTHS else -1)):
        shown = " ".join(f"{n}x{k}" for k, n in sorted(types.items()))
        lines.append(f"{kind:<12} {depth:<6} {8 * nbytes / weights:>6.2f} {nbytes:>12,} {score:>10.3g}  {shown}")
    return lines


def latency_costs(profile: dict, config, candidates: list[QuantType]) -> tuple[dict, float]:
    """({tensor: {type name: seconds}}, fixed seconds per token) from a checked profile."""
    times = profile["times"]
    costs = {}
    for name in allocated_tensors(config):
        rows, cols = config.tensor_shape(name)
        per_type = times[f"{rows}x{cols}"]
        share = 1.0 / rows if name == "token_embd.weight" and not config.tied_embeddings else 1.0
        costs[name] = {t.name: per_type[t.name]["seconds"] * share for t in candidates}
    return costs, float(profile.get("overhead_seconds") or 0.0)


def allocate(config, budget: Budget, scores: dict[str, dict[str, float]], factors: dict,
             fixed_bytes: int, profile: dict | None = None, candidates: list[QuantType] | None = None) -> Allocation:
    """Solve for `budget`. scores: tensor -> {type: raw score}; factors: (kind, depth) -> KL / score;
    fixed_bytes: what the file holds besides the allocated tensors (header bound, 1-D tensors)."""
    candidates = candidates or candidate_types()
    names = allocated_tensors(config)
    notes = []
    time_of, cap = None, None
    if budget.needs_profile():
        if profile is None:
            raise EdgeqError("--latency-ms needs --profile FILE (make one with `edgeq profile`)")
        time_of, fixed_seconds = latency_costs(profile, config, candidates)
        if not profile.get("overhead_seconds"):
            notes.append("the profile has no per-token overhead (made with --shapes-from): the budget "
                         "covers the matrix products only")
        cap = (budget.value if budget.kind == "latency" else budget.cap_ms) / 1e3 - fixed_seconds
    if budget.kind == "latency":
        cost_of, limit = time_of, cap
    else:
        cost_of = {n: {t.name: float(stored_bytes(t, config.tensor_shape(n))) for t in candidates} for n in names}
        if budget.kind == "bpw":
            weights = sum(config.tensor_shape(n)[0] * config.tensor_shape(n)[1] for n in names)
            limit = budget.value * weights / 8
        else:
            limit = budget.value - fixed_bytes
    factor = lambda n: factors.get((kind_of(n), depth_of(n, config.n_layers)), 1.0)
    capped = budget.kind != "latency" and budget.cap_ms is not None
    time = (lambda n, t: time_of[n][t.name]) if capped else (lambda n, t: 0.0)
    groups, group_options = share_groups(config), []
    for group in groups:
        options = [Option(t, sum(cost_of[n][t.name] for n in group), sum(factor(n) * scores[n][t.name] for n in group),
                          sum(time(n, t) for n in group))
                   for t in candidates]
        group_options.append(prune(options))
    if capped:
        picked, least_time = solve_capped(group_options, limit, cap)
        if picked is None and least_time < math.inf:
            fastest = (least_time + (budget.cap_ms / 1e3 - cap)) * 1e3
            raise EdgeqError(f"{budget.describe()}: no plan within {budget.describe_main()} decodes that fast on the "
                             f"profiled CPU; the fastest takes {fastest:.4g} ms per token (give at least that, or a "
                             "larger budget)")
    else:
        picked = solve(group_options, limit)
    if picked is None:
        least = sum(min(o.cost for o in options) for options in group_options)
        if budget.kind == "latency":
            fastest = (least + (budget.value / 1e3 - limit)) * 1e3
            raise EdgeqError(f"{budget.describe()} is below the fastest plan this profile allows "
                             f"({fastest:.3f} ms per token); give at least that")
        if budget.kind == "bpw":
            weights = sum(config.tensor_shape(n)[0] * config.tensor_shape(n)[1] for n in names)
            raise EdgeqError(f"{budget.describe_main()} is below the smallest possible plan "
                             f"({8 * least / weights:.3f} bits per weight); give at least that")
        raise EdgeqError(f"{budget.describe_main()} is below the smallest possible file "
                         f"({(least + fixed_bytes) / 1e6:.3f} MB = {int(least + fixed_bytes)} bytes); give at least that")
    plan, chosen_scores, costs, times = {}, {}, {}, {}
    for group, options, index in zip(groups, group_options, picked):
        qtype = options[index].qtype
        for n in group:
            plan[n], chosen_scores[n], costs[n] = qtype, factor(n) * scores[n][qtype.name], cost_of[n][qtype.name]
            if time_of is not None:
                times[n] = time_of[n][qtype.name]
    return Allocation(plan, chosen_scores, costs, budget, limit, factors, notes, times=times, cap=cap)


# ---------------------------------------------------------------------------------------------
# profiles (written by edgeq.profile)
# ---------------------------------------------------------------------------------------------

def load_profile(path: str, config, candidates: list[QuantType] | None = None) -> dict:
    """A profile checked against this model's shapes and this edgeq's types and sets; one-line errors."""
    from edgeq import _ffi
    from edgeq.profile import PROFILE_FORMAT
    where = f"{path}: "
    try:
        profile = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeqError(where + "no such profile; make one with `edgeq profile`") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise EdgeqError(where + "not a readable profile (corrupted?); make it again with `edgeq profile`") from None
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT or \
            not isinstance(profile.get("times"), dict) or not isinstance(profile.get("isa"), str):
        raise EdgeqError(where + f"not an edgeq profile of format {PROFILE_FORMAT} (corrupted?); make it again "
                         "with `edgeq profile`")
    if profile["isa"] not in _ffi.all_kernel_sets():
        raise EdgeqError(where + f"measured with kernel set {profile['isa']!r}, which this edgeq does not have "
                         f"(it has {', '.join(_ffi.all_kernel_sets())}); profile with this edgeq's `edgeq profile`")
    overhead = profile.get("overhead_seconds")
    if overhead is not None and not (isinstance(overhead, (int, float)) and math.isfinite(overhead) and overhead >= 0):
        raise EdgeqError(where + "overhead_seconds is invalid (corrupted?); make it again with `edgeq profile`")
    candidates = candidates or candidate_types()
    for name in allocated_tensors(config):
        rows, cols = config.tensor_shape(name)
        per_type = profile["times"].get(f"{rows}x{cols}")
        if not isinstance(per_type, dict):
            raise EdgeqError(where + f"has no timings for shape {rows}x{cols} ({name}): it was made for another "
                             "model's shapes; profile this model")
        for qtype in candidates:
            entry = per_type.get(qtype.name)
            seconds = entry.get("seconds") if isinstance(entry, dict) else None
            if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
                raise EdgeqError(where + f"has no valid timing of {qtype.name} at {rows}x{cols} (corrupted, or made "
                                 "by an edgeq with other types?); make it again with `edgeq profile`")
            if entry.get("set") not in _ffi.all_kernel_sets():
                raise EdgeqError(where + f"names kernel set {entry.get('set')!r} for {qtype.name}, which this edgeq "
                                 "does not have; profile with this edgeq's `edgeq profile`")
    return profile
