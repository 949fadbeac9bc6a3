"""Mixed-precision allocation (edgeq.convert.allocate, `edgeq profile`, `edgeq convert --bpw/--size/
--latency-ms`): the knapsack solver against brute force, budgets never exceeded, determinism, files
that match their plan, and the bad inputs (budgets below the minimum, foreign or corrupted profiles)."""
from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgeq import quant_types
from edgeq.convert import allocate
from edgeq.convert.allocate import Option, parse_size, prune, solve
from edgeq.convert.calibrate import calibrate
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------------

def _random_groups(rng, n_groups, n_options, max_cost=20):
    return [[Option(quant_types.TYPES["f16"], float(rng.integers(0, max_cost)), float(rng.random()))
             for _ in range(n_options)] for _ in range(n_groups)]


def _brute_force(groups, budget):
    best, best_pick = math.inf, None
    for pick in itertools.product(*[range(len(g)) for g in groups]):
        cost = sum(g[i].cost for g, i in zip(groups, pick))
        score = sum(g[i].score for g, i in zip(groups, pick))
        if cost <= budget and score < best:
            best, best_pick = score, pick
    return best, best_pick


@pytest.mark.parametrize("seed", range(40))
def test_solver_matches_brute_force_on_integer_costs(seed):
    """With one grid cell per unit of cost the DP is exact: the brute-force optimum, within budget."""
    rng = np.random.default_rng(seed)
    groups = _random_groups(rng, int(rng.integers(1, 6)), int(rng.integers(1, 5)))
    budget = float(rng.integers(0, 20 * len(groups)))
    best, pick = _brute_force(groups, budget)
    slack = budget - sum(min(o.cost for o in g) for g in groups)
    got = solve(groups, budget, cells=max(int(slack), 1))       # one cell per unit of cost
    if pick is None:
        assert got is None
        return
    assert got is not None
    assert sum(g[i].cost for g, i in zip(groups, got)) <= budget
    assert sum(g[i].score for g, i in zip(groups, got)) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(20))
def test_solver_on_a_coarse_grid_never_exceeds_the_budget_and_loses_at_most_the_rounding(seed):
    """Real costs on a coarse grid: never over budget, and no worse than the exact optimum under the
    budget shrunk by one cell of the slack per group (the stated bound)."""
    rng = np.random.default_rng(100 + seed)
    groups = [[Option(quant_types.TYPES["f16"], float(rng.random() * 100), float(rng.random()))
               for _ in range(4)] for _ in range(5)]
    budget, cells = float(rng.random() * 400 + 60), 50
    got = solve(groups, budget, cells=cells)
    slack = budget - sum(min(o.cost for o in g) for g in groups)
    shrunk, _ = _brute_force(groups, budget - len(groups) * max(slack, 0) / cells)
    if got is None:
        assert shrunk == math.inf
        return
    assert sum(g[i].cost for g, i in zip(groups, got)) <= budget
    assert sum(g[i].score for g, i in zip(groups, got)) <= shrunk + 1e-12


def test_solver_is_deterministic_and_refuses_an_impossible_budget():
    rng = np.random.default_rng(7)
    groups = [[Option(quant_types.TYPES["f16"], float(c), 1.0) for c in (5, 5, 9)] for _ in range(30)]
    first = solve(groups, 200.0)
    assert first == solve(groups, 200.0)
    assert all(i in (0, 1) for i in first) and first.count(0) == 30      # ties: the first listed
    assert solve(groups, 149.0) is None
    assert solve(_random_groups(rng, 3, 3), -1.0) is None


@pytest.mark.parametrize("seed", range(6))
def test_capped_solver_against_brute_force(seed):
    """solve_capped: both limits hold, and the plan is optimal among the plans no larger than the
    budget and no slower than itself (the Lagrangian's guarantee); integer costs with one cell per unit
    make the DP exact. A cap below the fastest plan within the budget is refused with that plan's time."""
    rng = np.random.default_rng(seed)
    f16 = quant_types.TYPES["f16"]
    groups = [[Option(f16, float(rng.integers(0, 12)), float(rng.random()), float(rng.integers(1, 30)))
               for _ in range(4)] for _ in range(5)]
    least_cost = sum(min(o.cost for o in g) for g in groups)
    budget = least_cost + 15
    plans = [p for p in itertools.product(*[range(4)] * 5) if sum(g[i].cost for g, i in zip(groups, p)) <= budget]
    time = lambda p: sum(g[i].time for g, i in zip(groups, p))
    score = lambda p: sum(g[i].score for g, i in zip(groups, p))
    fastest = min(map(time, plans))
    for cap in (fastest - 1, fastest, fastest + 5, fastest + 20, 1e9):
        picked, least_time = allocate.solve_capped(groups, budget, cap, cells=15)
        assert least_time == fastest
        if cap < fastest:
            assert picked is None
            continue
        picked = tuple(picked)
        assert picked in plans and time(picked) <= cap
        assert score(picked) == pytest.approx(min(score(p) for p in plans if time(p) <= time(picked)))
        if cap == 1e9:
            assert score(picked) == pytest.approx(min(map(score, plans)))   # no cap in effect: solve's optimum


def test_prune_keeps_the_front_only():
    t = quant_types.TYPES["f16"]
    options = [Option(t, 10, 1.0), Option(t, 10, 2.0), Option(t, 5, 3.0), Option(t, 12, 1.0), Option(t, 5, 3.0)]
    kept = prune(options)
    assert [(o.cost, o.score) for o in kept] == [(10, 1.0), (5, 3.0)]
    assert kept[1] is options[2]


def test_parse_size():
    assert parse_size("80MB") == 80_000_000
    assert parse_size("1.2GB") == 1_200_000_000
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("123456") == 123456
    for bad in ("80XB", "", "-5MB", "MB", "0"):
        with pytest.raises(EdgeqError):
            parse_size(bad)


def test_candidates_come_from_the_type_table():
    names = [t.name for t in allocate.candidate_types()]
    assert "f32" not in names and "f16" in names
    assert set(names) == {t.name for t in quant_types.TYPES.values() if t.bits < 32}
    # grids in table order, each grid's types together, a 4- or 8-bit grid's packed type first (--layout
    # auto's choice), so a tie goes to it
    grid = lambda name: name[1:]
    table = [t.name for t in quant_types.TYPES.values() if t.name in names]
    assert list(dict.fromkeys(map(grid, names))) == list(dict.fromkeys(map(grid, table)))
    for group in ("32", "64", "128"):
        for sym in "as":
            assert names.index(f"p8g{group}{sym}") < names.index(f"u8g{group}{sym}")
    from edgeq.convert.plan import AUTO_PACKED_BITS
    assert (names.index("p4g64a") < names.index("u4g64a")) == (4 in AUTO_PACKED_BITS)   # as --layout auto


def test_scores_shrink_with_bits_and_packed_equals_bitplane():
    rng = np.random.default_rng(0)
    weight = (rng.standard_t(4, size=(200, 128)) * 0.02).astype(np.float32)
    importance = rng.gamma(1.0, size=128)
    candidates = [quant_types.TYPES[n] for n in ("u2g64a", "u3g64a", "u4g64a", "p4g64a", "u8g64a", "f16")]
    scores = allocate.tensor_scores(weight, importance, candidates, sample_rows=64)
    assert scores["u2g64a"] > scores["u3g64a"] > scores["u4g64a"] > scores["u8g64a"] > scores["f16"] >= 0
    assert scores["p4g64a"] == scores["u4g64a"]
    exact, _ = allocate.tensor_error(weight, quant_types.TYPES["u3g64a"], importance)
    assert scores["u3g64a"] == pytest.approx(exact, rel=0.3)      # the row sample estimates the whole


# ---------------------------------------------------------------------------------------------
# whole conversions on the tiny models
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_stats(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("alloc") / "stats.npz"
    calibrate(tiny_llama, path, n_tokens=512, progress=False)
    return path


@pytest.fixture(scope="module")
def llama_profile(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("alloc") / "profile.json"
    result = run_cli("profile", "--shapes-from", tiny_llama, "-t", 1, "--repeats", 3, "--stream-mb", 1, "-o", path, "-q")
    assert result.returncode == 0, result.stderr
    return path


def _weights(config):
    return sum(config.tensor_shape(n)[0] * config.tensor_shape(n)[1] for n in allocate.allocated_tensors(config))


def _check_plan(out, stdout):
    """The file holds exactly the plan the converter printed and recorded."""
    model = ModelFile(out)
    for name in allocate.allocated_tensors(model.config):
        assert model.tensors[name].score is not None and model.tensors[name].score >= 0
    assert "allocation for" in stdout
    return model


def test_profile_on_a_tiny_model(tiny_llama, llama_profile, tmp_path):
    profile = json.loads(llama_profile.read_text())
    from edgeq import _ffi
    from edgeq.convert.sources import open_source
    config = open_source(tiny_llama).config
    assert profile["isa"] == _ffi.isa() and profile["threads"] == 1 and profile["cpu"]
    shapes = {tuple(config.tensor_shape(n)) for n in allocate.allocated_tensors(config)}
    assert {tuple(s) for s in profile["shapes"]} == shapes
    for rows, cols in shapes:
        per_type = profile["times"][f"{rows}x{cols}"]
        assert set(per_type) == {t.name for t in allocate.candidate_types()}
        assert all(entry["seconds"] > 0 and entry["set"] in _ffi.all_kernel_sets() for entry in per_type.values())
    assert profile["overhead_seconds"] is None
    allocate.load_profile(str(llama_profile), config)       # its own model's profile is accepted
    # from an edgeq file: the decode time per token and what the products leave of it
    converted = tmp_path / "u4.eq"
    assert run_cli("convert", tiny_llama, "-o", converted, "-q").returncode == 0
    result = run_cli("profile", converted, "-t", 1, "--repeats", 1, "--stream-mb", 1, "-o", tmp_path / "p.json")
    assert result.returncode == 0, result.stderr
    assert "ms outside the products" in result.stdout
    with_model = json.loads((tmp_path / "p.json").read_text())
    assert 0 <= with_model["overhead_seconds"] < with_model["decode_seconds"]


def test_profile_times_every_product_in_rounds(tiny_llama, monkeypatch):
    """Each round times every (shape, type) once (its share of the runs), so drift over the profile
    lands on all types alike; a product's time is the median over rounds."""
    from edgeq import _ffi
    from edgeq import profile as profiling
    calls, clock = [], iter(range(1, 10**6))

    def fake(name, data, rows, cols, copies=1, threads=0, repeats=15):
        assert data.nbytes >= _ffi.nbytes(name, rows, cols)
        calls.append(((rows, cols, name), repeats))
        return float(next(clock))                                 # later calls are "slower"
    monkeypatch.setattr(_ffi, "gemv_time", fake)
    result = profiling.profile(shapes_from=str(tiny_llama), threads=1, repeats=7, progress=False, stream_bytes=1)
    products = len(calls) // 5
    assert result["rounds"] == 5 and len(calls) == 5 * products
    keys = [key for key, _ in calls]
    assert all(keys[r * products:(r + 1) * products] == keys[:products] for r in range(5))   # same order each round
    assert len(set(keys[:products])) == products
    assert [runs for _, runs in calls[::products]] == [2, 2, 1, 1, 1]                          # 7 runs over 5 rounds
    for index, (rows, cols, name) in enumerate(keys[:products]):                              # median of the rounds' times
        assert result["times"][f"{rows}x{cols}"][name]["seconds"] == 2 * products + index + 1


def _convert(source, out, budget, stats, profile=None):
    """In-process, so the sensitivity/KL analysis of the source is measured once for every budget."""
    from edgeq.convert import AllocationSettings, MethodSettings, convert
    return convert(source, out, progress=False, method=MethodSettings(stats=str(stats)),
                   allocation=AllocationSettings(budget, None if profile is None else str(profile)))


def test_bpw_budget(tiny_llama, llama_stats, tmp_path):
    used_bits = []
    for bpw in (2.6, 3.5):
        out = tmp_path / f"mixed-{bpw}.eq"
        report = _convert(tiny_llama, out, allocate.Budget("bpw", bpw), llama_stats)
        model = _check_plan(out, "\n".join(report.allocation_lines))
        assert {n: model.tensors[n].qtype for n in report.allocation.plan} == report.allocation.plan
        used = sum(allocate.stored_bytes(model.tensors[n].qtype, model.tensors[n].shape)
                   for n in allocate.allocated_tensors(model.config))
        used_bits.append(8 * used / _weights(model.config))
        assert bpw - 1.0 < used_bits[-1] <= bpw            # the budget is spent, never exceeded
    assert used_bits[0] < used_bits[1]
    again = _convert(tiny_llama, tmp_path / "again.eq", allocate.Budget("bpw", 3.5), llama_stats)
    assert again.allocation.plan == report.allocation.plan      # deterministic
    assert (tmp_path / "again.eq").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("bpw, bits", [(4.5, 4), (2.6, 2)])
def test_a_plan_holds_codebook_types(tiny_llama, llama_stats, tmp_path, bpw, bits):
    """Codebook types are candidates like any other: at 4.5 bpw the tiny model's plan takes some c4
    tensors, at 2.6 some v2 ones (2-D centroids) (their score is their weighted k-means fit's), the
    file stores each as convert.codebook fits it with the statistics' E[x^2], and the C forward pass runs it."""
    from edgeq import _ffi
    from edgeq.convert import calibrate as calibration, codebook
    from edgeq.convert.sources import open_source
    out = tmp_path / f"mixed-{bpw}.eq"
    report = _convert(tiny_llama, out, allocate.Budget("bpw", bpw), llama_stats)
    model = _check_plan(out, "\n".join(report.allocation_lines))
    books = [n for n, t in report.allocation.plan.items() if t.family == quant_types.CODEBOOK]
    assert any(report.allocation.plan[n].bits == bits for n in books), report.allocation_lines
    source = open_source(tiny_llama)
    importance = calibration.load_stats(str(llama_stats), source.config,
                                        calibration.model_fingerprint(source.load, source.config))[0]
    for name in books:
        tensor = model.tensors[name]
        assert tensor.method.startswith("codebook-kmeans")
        fitted = codebook.fit(source.load(name), tensor.qtype, importance[calibration.input_of(name)])
        assert np.array_equal(np.asarray(tensor.data).view(np.uint8).reshape(-1),
                              np.asarray(fitted.data).view(np.uint8).reshape(-1)), name
    handle = _ffi.model_open(out, threads=1)
    try:
        logits = _ffi.model_eval(handle, [1, 5, 9, 2], all_logits=True)
    finally:
        _ffi.model_close(handle)
    assert np.isfinite(logits).all()


def test_the_head_under_a_budget_is_scored_and_fitted_with_its_inputs_statistics(tiny_llama, llama_stats, tmp_path):
    """`edgeq calibrate` saves E[x^2] of the head's input (the final norm's output); with a budget the
    head (tied here) is scored with it and stored as rtn weighted by it, in the type the allocator
    chose. A statistics file from before that entry still loads: its head weighs every column 1 in
    the score and is fitted plainly."""
    from edgeq.convert import calibrate as calibration, methods
    from edgeq.convert.quantize import quantize
    from edgeq.convert.sources import open_source
    source = open_source(tiny_llama)
    config, head = source.config, source.config.head_tensor
    importance = calibration.load_stats(str(llama_stats), config,
                                        calibration.model_fingerprint(source.load, config))[0]
    weights = importance[calibration.HEAD_INPUT]
    assert weights.shape == (config.dim,) and np.all(weights > 0)
    old_stats = tmp_path / "old.npz"            # as `edgeq calibrate` wrote it before
    with np.load(llama_stats) as archive:
        np.savez(old_stats, **{k: archive[k] for k in archive.files if k != calibration.HEAD_INPUT})
    cell = (allocate.kind_of(head), allocate.depth_of(head, config.n_layers))
    for stats, head_weights in ((llama_stats, weights), (old_stats, None)):
        out = tmp_path / f"{stats.stem}.eq"
        report = _convert(tiny_llama, out, allocate.Budget("bpw", 3.5), stats)
        qtype = report.allocation.plan[head]
        assert qtype.family != quant_types.PLAIN, report.allocation_lines
        score = allocate.tensor_scores(source.load(head), head_weights, [qtype])[qtype.name]
        assert report.allocation.scores[head] == pytest.approx(report.allocation.factors[cell] * score)
        tensor = ModelFile(out).tensors[head]
        if head_weights is None:
            expected = quantize(source.load(head), qtype)
            assert not tensor.method.startswith("rtn imatrix")
        else:
            expected = methods.rtn(source.load(head), qtype, head_weights)
            assert "imatrix calib=" in tensor.method, tensor.method
        assert np.array_equal(np.asarray(tensor.data).view(np.uint8).reshape(-1),
                              np.asarray(expected.data).view(np.uint8).reshape(-1))


def test_gptq_with_a_budget_fits_the_codebook_tensors_it_chose_by_kmeans(tiny_llama, tmp_path):
    """--method gptq with a budget: the plan's uniform and v2 linear layers get gptq, the c4 ones (a
    type the budget chose, not the user) their weighted k-means fit, instead of an error."""
    from edgeq.convert import AllocationSettings, MethodSettings, convert
    from edgeq.convert.gptq import fits
    out = tmp_path / "mixed-gptq.eq"
    report = convert(tiny_llama, out, progress=False, method=MethodSettings(method="gptq", calib_tokens=256, calib_ctx=64),
                     allocation=AllocationSettings(allocate.Budget("bpw", 4.5)))
    model = _check_plan(out, "\n".join(report.allocation_lines))
    methods = {name: model.tensors[name].method for name in report.allocation.plan if name.startswith("blk.")}
    kinds = {name: report.allocation.plan[name].family for name in methods}
    assert quant_types.CODEBOOK in kinds.values(), report.allocation_lines
    for name, method in methods.items():
        expected = "gptq" if fits(report.allocation.plan[name]) else "codebook-kmeans"
        assert method.startswith(expected), (name, method)


def test_size_budget_from_the_command_line(tiny_llama, llama_stats, tmp_path):
    out = tmp_path / "mixed.eq"
    result = run_cli("convert", tiny_llama, "-o", out, "--size", "90KB", "--stats", llama_stats)
    assert result.returncode == 0, result.stderr
    model = _check_plan(out, result.stdout)
    assert 60_000 < out.stat().st_size <= 90_000
    info = run_cli("info", out)
    assert "per kind and depth" in info.stdout and "score" in info.stdout
    assert str(model.tensors["blk.0.ffn_down.weight"].qtype.name) in info.stdout


def test_latency_budget(tiny_llama, llama_stats, llama_profile, tmp_path):
    from edgeq.convert.sources import open_source
    config = open_source(tiny_llama).config
    profile = allocate.load_profile(str(llama_profile), config)
    costs, _ = allocate.latency_costs(profile, config, allocate.candidate_types())
    fastest = sum(min(c.values()) for c in costs.values())
    slowest = sum(max(c.values()) for c in costs.values())
    budget_ms = 1e3 * (fastest + 0.3 * (slowest - fastest))
    out = tmp_path / "mixed.eq"
    report = _convert(tiny_llama, out, allocate.Budget("latency", budget_ms), llama_stats, llama_profile)
    model = _check_plan(out, "\n".join(report.allocation_lines))
    spent = sum(costs[n][model.tensors[n].qtype.name] for n in allocate.allocated_tensors(config))
    assert spent <= budget_ms / 1e3
    assert {n: model.tensors[n].qtype for n in report.allocation.plan} == report.allocation.plan


def test_size_budget_with_a_latency_cap(tiny_llama, llama_stats, llama_profile, tmp_path):
    """--size S --latency-ms L: the file fits S and its products fit L on the profile; a cap the
    fastest plan within S cannot meet is a one-line error naming that plan's time."""
    from edgeq.convert.sources import open_source
    config = open_source(tiny_llama).config
    profile = allocate.load_profile(str(llama_profile), config)
    costs, _ = allocate.latency_costs(profile, config, allocate.candidate_types())
    spent = lambda model: sum(costs[n][model.tensors[n].qtype.name] for n in allocate.allocated_tensors(config))
    never = tmp_path / "never.eq"
    failed = run_cli("convert", tiny_llama, "-o", never, "--stats", llama_stats, "--size", "100KB",
                     "--latency-ms", 1e-4, "--profile", llama_profile)
    assert failed.returncode != 0 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "no plan within --size 0.100MB decodes that fast" in failed.stderr
    assert not never.exists() and not list(tmp_path.glob(".never*"))
    fastest = float(failed.stderr.split("the fastest takes ")[1].split(" ms")[0]) / 1e3   # within 100KB, 4 digits
    assert fastest >= sum(min(c.values()) for c in costs.values()) * (1 - 1e-3)
    free = tmp_path / "free.eq"
    assert run_cli("convert", tiny_llama, "-o", free, "--stats", llama_stats, "--size", "100KB", "-q").returncode == 0
    uncapped = spent(ModelFile(free))
    assert uncapped >= fastest * (1 - 1e-3)
    cap_ms = 1e3 * (fastest + 0.5 * (uncapped - fastest)) * (1 + 1e-3)    # above the minimum printed to 4 digits
    out = tmp_path / "capped.eq"
    result = run_cli("convert", tiny_llama, "-o", out, "--stats", llama_stats, "--size", "100KB",
                     "--latency-ms", cap_ms, "--profile", llama_profile)
    assert result.returncode == 0, result.stderr
    model = _check_plan(out, result.stdout)
    assert out.stat().st_size <= 100_000 and spent(model) <= cap_ms / 1e3
    assert f"--size 0.100MB --latency-ms {cap_ms:g}" in result.stdout and "ms per token" in result.stdout
    if uncapped > 1.01 * fastest:            # the cap binds: the plan is faster than the uncapped one
        assert spent(model) < uncapped


def test_bad_budgets_and_profiles(tiny_llama, tiny_qwen_partial, llama_stats, llama_profile, tmp_path):
    out = tmp_path / "never.eq"

    def fails(*args, says):
        result = run_cli("convert", tiny_llama, "-o", out, "--stats", llama_stats, *args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], result.stderr
        assert not out.exists() and not list(tmp_path.glob(".never*"))
        return lines[0]

    line = fails("--size", "20KB", says="below the smallest possible file")
    minimum = int(line.split("= ")[1].split(" bytes")[0])
    assert run_cli("convert", tiny_llama, "-o", tmp_path / "min.eq", "--stats", llama_stats, "--size",
                   minimum, "-q").returncode == 0                       # the minimum it names is enough
    fails("--bpw", "1.5", says="below the smallest possible plan")
    fails("--latency-ms", "0.0001", "--profile", llama_profile, says="below the fastest plan")
    fails("--latency-ms", "5", says="needs --profile")
    fails("--bpw", "3", "--size", "1MB", says="one of --bpw and --size")
    fails("--size", "90KB", "--latency-ms", "5", says="needs --profile")
    fails("--bpw", "3", "--bits", "4", says="chooses every tensor's type")
    fails("--size", "80XB", says="--size 80XB")
    # profiles: another model's shapes, another set, corrupted
    other = tmp_path / "other.json"
    assert run_cli("profile", "--shapes-from", tiny_qwen_partial, "-t", 1, "--repeats", 1, "--stream-mb", 1,
                   "-o", other, "-q").returncode == 0
    fails("--latency-ms", "5", "--profile", other, says="another model's shapes")
    profile = json.loads(llama_profile.read_text())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(dict(profile, isa="avx9000")))
    fails("--latency-ms", "5", "--profile", foreign, says="kernel set 'avx9000'")
    broken = tmp_path / "broken.json"
    broken.write_text(llama_profile.read_text()[:-40])
    fails("--latency-ms", "5", "--profile", broken, says="corrupted")
    shape = next(iter(profile["times"]))
    profile["times"][shape]["u2g32a"]["seconds"] = -1
    broken.write_text(json.dumps(profile))
    fails("--latency-ms", "5", "--profile", broken, says="no valid timing of u2g32a")
    fails("--latency-ms", "5", "--profile", tmp_path / "missing.json", says="no such profile")


def test_gemv_time_entry_point():
    """eq_gemv_time: positive medians, more work takes longer, bad arguments are refused."""
    from edgeq import _ffi
    from edgeq.convert.quantize import quantize
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((256, 512)) * 0.02).astype(np.float32)
    data = np.ascontiguousarray(quantize(weight, quant_types.TYPES["u4g64a"]).data).view(np.uint8).reshape(-1)
    small = _ffi.gemv_time("u4g64a", data[:data.nbytes // 8], 32, 512, copies=2, threads=1, repeats=5)
    large = _ffi.gemv_time("u4g64a", data, 256, 512, copies=4, threads=1, repeats=5)
    assert 0 < small and 0 < large
    assert min(_ffi.gemv_time("u4g64a", data, 256, 512, copies=4, threads=1, repeats=5) for _ in range(3)) > \
        min(_ffi.gemv_time("u4g64a", data[:data.nbytes // 8], 32, 512, copies=2, threads=1, repeats=5)
            for _ in range(3))
    with pytest.raises(EdgeqError, match="too short|short"):
        _ffi.gemv_time("u4g64a", data[:100], 256, 512)
    with pytest.raises(ValueError):
        _ffi.gemv_time("u4g64a", data, 256, 512, copies=0)
    with pytest.raises(EdgeqError, match="unknown quant type"):
        _ffi.gemv_time("u9g64a", data, 256, 512)
