"""`edgeq bench` and the memory-bandwidth probe on tiny models: the report's keys and types, its
roofline arithmetic, bytes per token agreeing across the runtime, `edgeq info` and the file, and one-line
errors. No speed assertions (the machine is shared)."""
from __future__ import annotations

import json
import math
import re

import pytest

from edgeq import _ffi
from edgeq.cli import main
from edgeq.fileformat import ModelFile
from edgeq.info import weight_bytes_per_token

FAST = ["--runs", "1", "--prompt-tokens", "4", "--gen-tokens", "3", "--bandwidth-mb", "8"]


@pytest.fixture(scope="module")
def tiny_files(tiny_converted):
    """{"llama": tied head, "qwen2": untied head with q/k/v biases}, both at 4 bits."""
    return {arch: tiny_converted(arch, 4) for arch in ("llama", "qwen2")}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["bench", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def bench_json(capsys, path, *args) -> dict:
    code, out, err = run_cli(capsys, path, *FAST, "--json", *args)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_json_report_keys_and_types(tiny_files, capsys, name):
    report = bench_json(capsys, tiny_files[name], "--threads", "1")
    spread = [key + suffix for key in ("decode_tok_s", "prefill_tok_s", "load_s") for suffix in ("", "_min", "_max")]
    for key in (*spread, "peak_rss_mb", "bandwidth_gb_s", "roofline_tok_s", "roofline_fraction"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, (key, report[key])
    assert report["decode_tok_s_min"] <= report["decode_tok_s"] <= report["decode_tok_s_max"]
    assert isinstance(report["bytes_per_token"], int) and report["bytes_per_token"] > 0
    assert (report["runs"], report["threads"], report["prompt_tokens"], report["gen_tokens"]) == (1, 1, 4, 3)
    assert report["model"] == str(tiny_files[name])
    assert report["isa"] == _ffi.isa()
    assert report["single_thread_share"] == 0.0      # one thread: the pool has no workers to lose


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_bytes_per_token_agrees_with_runtime_info_and_file(tiny_files, capsys, name):
    path = tiny_files[name]
    report = bench_json(capsys, path)
    handle = _ffi.model_open(path, threads=1)
    runtime = _ffi.model_info(handle)["weight_bytes"]
    _ffi.model_close(handle)
    assert report["bytes_per_token"] == runtime == weight_bytes_per_token(ModelFile(path))

    assert main(["info", str(path), "--summary"]) == 0
    match = re.search(r"^weights read per token: (\d+) bytes", capsys.readouterr().out, re.MULTILINE)
    assert match and int(match.group(1)) == runtime

    model = ModelFile(path)
    embedding = model.tensors["token_embd.weight"].nbytes
    total = sum(t.nbytes for t in model.tensors.values())
    # tied: the embedding is the head, read whole; untied: the embedding is only a row lookup
    assert runtime == (total if model.config.tied_embeddings else total - embedding)
    assert model.config.tied_embeddings == (name == "llama")


def test_roofline_arithmetic(tiny_files, capsys):
    report = bench_json(capsys, tiny_files["qwen2"], "--runs", "2")
    ceiling = report["bandwidth_gb_s"] * 1e9 / report["bytes_per_token"]
    assert report["roofline_tok_s"] == pytest.approx(ceiling, rel=1e-9)
    assert report["bandwidth_gb_s_min"] <= report["bandwidth_gb_s"] <= report["bandwidth_gb_s_max"]
    assert report["runs"] == 2


@pytest.mark.parametrize("restartable", [True, False])
def test_each_run_is_set_against_its_own_probe(tiny_files, monkeypatch, restartable):
    """Where the peak RSS can be restarted (Linux), a probe follows every run and the roofline
    fraction is the median of each run's decode over its own ceiling; elsewhere one probe follows
    all the runs."""
    from edgeq import bench
    decodes, probes = iter([100.0, 50.0, 80.0]), iter([10.0, 20.0, 40.0])
    real_run = bench._one_run
    monkeypatch.setattr(bench, "_reset_peak_rss", lambda: restartable)
    monkeypatch.setattr(bench, "_one_run", lambda *args: {**real_run(*args), "decode_tok_s": next(decodes)})
    monkeypatch.setattr(bench._ffi, "memory_read_bandwidth", lambda *args: next(probes))
    report = bench.run_bench(tiny_files["qwen2"], threads=1, prompt_tokens=4, gen_tokens=3, runs=3, bandwidth_mb=8)
    per_byte = report["bytes_per_token"] / 1e9
    if restartable:
        assert report["bandwidth_probes"] == 3 and report["bandwidth_gb_s"] == 20.0
        fractions = [100.0 * per_byte / 10.0, 50.0 * per_byte / 20.0, 80.0 * per_byte / 40.0]
    else:
        assert report["bandwidth_probes"] == 1 and report["bandwidth_gb_s"] == 10.0
        fractions = [100.0 * per_byte / 10.0, 50.0 * per_byte / 10.0, 80.0 * per_byte / 10.0]
    assert report["roofline_fraction"] == pytest.approx(sorted(fractions)[1], rel=1e-12)
    assert report["roofline_tok_s"] == pytest.approx(report["bandwidth_gb_s"] / per_byte, rel=1e-12)
    assert "median of each run's decode" in bench.format_table(report) or not restartable


def test_table_output(tiny_files, capsys):
    code, out, err = run_cli(capsys, tiny_files["llama"], *FAST, "--threads", "2")
    assert code == 0, err
    for label in ("load", "prefill", "decode", "peak RSS", "weights/token", "bandwidth", "roofline"):
        assert re.search(rf"^{label}\s", out, re.MULTILINE), out
    assert "2 threads" in out


def test_bandwidth_probe():
    for threads in (1, 2):
        rate = _ffi.memory_read_bandwidth(1 << 20, threads=threads, repeats=2)
        assert isinstance(rate, float) and math.isfinite(rate) and rate > 0
    with pytest.raises(ValueError):
        _ffi.memory_read_bandwidth(0)
    with pytest.raises(ValueError):
        _ffi.memory_read_bandwidth(1 << 20, repeats=0)
    assert _ffi.lib.eq_memory_read_bandwidth(32, 1, 1) == _ffi.lib.EQ_ERR_INVALID_ARGUMENT   # < one cache line
    assert _ffi.lib.eq_memory_read_bandwidth(1 << 16, -1, 1) == _ffi.lib.EQ_ERR_INVALID_ARGUMENT


@pytest.mark.parametrize("args, pattern", [
    (["--runs", "0"], r"--runs must be at least 1, got 0"),
    (["--prompt-tokens", "-3"], r"--prompt-tokens must be at least 1, got -3"),
    (["--gen-tokens", "-1"], r"--gen-tokens must be at least 1, got -1"),
    (["--threads", "0"], r"threads must be at least 1, got 0 \(-t/--threads"),
    (["--bandwidth-mb", "0"], r"--bandwidth-mb must be at least 1, got 0"),
    (["--prompt-tokens", "200", "--gen-tokens", "100"], r"200 prompt \+ 100 generated tokens do not fit .* 256"),
])
def test_bad_input_is_one_line(tiny_files, capsys, args, pattern):
    code, out, err = run_cli(capsys, tiny_files["llama"], "--runs", "1", *args)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgeq: error: "), err
    assert re.search(pattern, err), err


def test_missing_or_foreign_file(tmp_path, capsys):
    code, out, err = run_cli(capsys, tmp_path / "absent.q4")
    assert code == 1 and err.strip() == f"edgeq: error: {tmp_path / 'absent.q4'}: no such file"
    (tmp_path / "notes.txt").write_text("not a model\n")
    code, out, err = run_cli(capsys, tmp_path / "notes.txt", *FAST)
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("edgeq: error: "), err


def test_threads_above_the_logical_cpus_are_capped_with_one_warning(tiny_files, capsys):
    import os
    code, out, err = run_cli(capsys, tiny_files["llama"], *FAST, "--json", "-t", "1000")
    assert code == 0 and json.loads(out)["threads"] == os.cpu_count()
    assert err == (f"edgeq: warning: 1000 threads asked for, but this machine has {os.cpu_count()} logical CPUs: "
                   f"using {os.cpu_count()}\n")
