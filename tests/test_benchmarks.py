"""benchmarks/suite.py without llama.cpp or real models: the edgeq variant parser and its one-line
errors, file names, the reuse of a cached file only when its recorded settings match (tiny models),
and the report's peers at equal size and dominance verdicts (synthetic records)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq import _ffi
from edgeq.convert import convert
from edgeq.convert.plan import DEFAULT_GROUP, LOW_BITS_GROUP


@pytest.fixture(scope="module")
def suite():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "suite.py"
    spec = importlib.util.spec_from_file_location("edgeq_bench_suite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, name, flags", [
    ("8", "p8g64a-rtn", ["--bits", "8"]),                               # auto at 8 bits: plain rtn, packed
    ("4", "p4g64a-rtn-imatrix", ["--bits", "4"]),                       # auto at 4-6: rtn weighted by E[x^2]; packed
    ("4:packed", "p4g64a-rtn-imatrix", ["--bits", "4", "--layout", "packed"]),   # the same types as auto
    ("4:bitplane", "u4g64a-rtn-imatrix", ["--bits", "4", "--layout", "bitplane"]),
    ("8:packed", "p8g64a-rtn", ["--bits", "8", "--layout", "packed"]),
    ("3", f"p3g{LOW_BITS_GROUP}a-gptq", ["--bits", "3"]),               # auto at <= 3: gptq, groups of 32
    ("2", f"p2g{LOW_BITS_GROUP}a-gptq", ["--bits", "2"]),
    ("3:bitplane", f"u3g{LOW_BITS_GROUP}a-gptq", ["--bits", "3", "--layout", "bitplane"]),
    ("4:g32", "p4g32a-rtn-imatrix", ["--bits", "4", "--group", "32"]),
    ("3:g64:gptq", "p3g64a-gptq", ["--bits", "3", "--group", "64", "--method", "gptq"]),
    ("4:rtn", "p4g64a-rtn", ["--bits", "4", "--method", "rtn"]),
    ("2:hqq:g128", "p2g128a-hqq", ["--bits", "2", "--group", "128", "--method", "hqq"]),
    ("6:sym", "p6g64s-rtn-imatrix", ["--bits", "6", "--sym"]),
    ("3:act-order", "p3g32a-gptq-act-order", ["--bits", "3", "--act-order"]),
])
def test_variant_name_and_convert_flags(suite, spec, name, flags):
    variant = suite.parse_variant(spec)
    assert variant.name == name
    assert variant.file_name == f"edgeq-{name}.eq"
    assert variant.convert_flags() == flags
    assert variant.describe()["linear_type"] == variant.linear_type().name == name.split("-")[0]


def test_default_groups_are_the_converters(suite):
    assert suite.parse_variant("4").linear_type().group == DEFAULT_GROUP
    assert suite.parse_variant("3").linear_type().group == LOW_BITS_GROUP


def test_same_file_one_name_different_settings_different_names(suite):
    same = [suite.parse_variant(s) for s in ("3", "3:gptq", "3:g32:gptq", "3:auto")]
    assert len({v.file_name for v in same}) == 1
    assert len(suite.unique_variants(same)) == 1
    specs = ["8", "6", "5", "4", "3", "2", "4:g32", "4:rtn", "4:hqq", "4:sym", "3:g64", "3:rtn", "3:act-order", "2:g64"]
    assert len({suite.parse_variant(s).file_name for s in specs}) == len(specs)
    assert [v.bits for v in suite.unique_variants([suite.parse_variant(s) for s in ("2", "8", "4")])] == [8, 4, 2]


@pytest.mark.parametrize("spec, words", [
    ("7", "starts with the bits"),
    ("four", "starts with the bits"),
    ("4:g48", "unknown option 'g48'"),
    ("4:fast", "unknown option 'fast'"),
    ("4:g32:g64", "repeats the group"),
    ("4:gptq:rtn", "repeats the method"),
    ("4:rtn:act-order", "--act-order"),
    ("8:hqq:act-order", "--act-order"),
])
def test_bad_variant_is_a_one_line_error(suite, spec, words):
    with pytest.raises(ValueError, match="^variant .*" + words.replace("[", r"\[")) as error:
        suite.parse_variant(spec)
    assert "\n" not in str(error.value)


def test_layout_option_needs_a_converter_with_layout(suite):
    if suite.converter_has_layout():
        with pytest.raises(ValueError, match="--layout codebook at 2 bits takes --group 64 or 128"):
            suite.parse_variant("2:codebook:g32")     # the converter's own check, as a one-line reason
        assert suite.parse_variant("3:packed").name == f"p3g{LOW_BITS_GROUP}a-gptq"   # auto's types
        assert "-".join(suite.parse_variant("8:bitplane").convert_flags()[-2:]) == "--layout-bitplane"
    else:
        with pytest.raises(ValueError, match="has no --layout"):
            suite.parse_variant("8:packed")


@pytest.mark.parametrize("spec, name, flags", [
    ("mixed:491.4MB", "mixed-size-491.400MB", ["--size", "491.400MB"]),
    ("mixed:1.2GB", "mixed-size-1200.000MB", ["--size", "1200.000MB"]),
    ("mixed:3.0bpw", "mixed-bpw-3", ["--bpw", "3"]),
    ("mixed:2.75bpw", "mixed-bpw-2.75", ["--bpw", "2.75"]),
    ("mixed:675.71MB:25ms", "mixed-size-675.710MB-cap-25ms", ["--size", "675.710MB", "--latency-ms", "25"]),
])
def test_mixed_variant_name_and_convert_flags(suite, spec, name, flags):
    variant = suite.parse_variant(spec)
    assert (variant.name, variant.convert_flags(), variant.file_name) == (name, flags, f"edgeq-{name}.eq")
    assert variant.bits is None and suite.conversion_kind(variant) == "mixed"
    assert variant.describe()["linear_type"] == "mixed" and variant.describe()["variant"] == spec
    # benchmarks/bench_mixed.py writes the same file name, so the suite reuses its files
    bench_mixed = importlib.util.spec_from_file_location(
        "edgeq_bench_mixed", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_mixed.py")
    module = importlib.util.module_from_spec(bench_mixed)
    bench_mixed.loader.exec_module(module)
    assert module.file_name(variant.budget()) == variant.file_name


@pytest.mark.parametrize("spec, words", [
    ("mixed", "mixed:BUDGET"), ("mixed:3bpw:g32", "latency cap in milliseconds"), ("mixed:lots", "give a file size"),
    ("mixed:3bpw:5ms:g32", "mixed:BUDGET"), ("mixed:3bpw:-5ms", "latency cap in milliseconds"),
    ("mixed:0bpw", "bits per weight as a number"), ("mixed:xbpw", "bits per weight as a number"),
    ("mixed:-5MB", "give a file size"),
])
def test_bad_mixed_variant_is_a_one_line_error(suite, spec, words):
    with pytest.raises(ValueError, match=words) as error:
        suite.parse_variant(spec)
    assert "\n" not in str(error.value)


def test_mixed_variants_sort_after_uniform_ones(suite):
    variants = [suite.parse_variant(s) for s in ("mixed:3.0bpw", "2", "mixed:80MB", "8", "mixed:3bpw")]
    assert [v.spec for v in suite.unique_variants(variants)] == ["8", "2", "mixed:3.0bpw", "mixed:80MB"]


def test_command_line_checks_variants_and_kernel_sets_up_front(suite, capsys):
    with pytest.raises(SystemExit):
        suite.build_parser().parse_args(["--edgeq-variants", "4", "4:g48"])
    assert "unknown option 'g48'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.build_parser().parse_args(["--isa", "no-such-set"])
    assert "no kernel set 'no-such-set'" in capsys.readouterr().err
    args = suite.build_parser().parse_args(["--edgeq-variants", "4:g32", "3", "--isa", *_ffi.kernel_sets()])
    assert [v.name for v in args.edgeq_variants] == ["p4g32a-rtn-imatrix", f"p3g{LOW_BITS_GROUP}a-gptq"]
    assert args.isa == _ffi.kernel_sets()
    default = suite.build_parser().parse_args([])
    assert [v.spec for v in default.edgeq_variants] == suite.EDGEQ_VARIANTS
    assert {"Q5_K_M", "Q6_K"} <= set(default.llama_types) and default.isa is None


# ---------------------------------------------------------------------------------------------
# cached files: reused only when their recorded settings match
# ---------------------------------------------------------------------------------------------

def test_cached_file_matches_only_its_variant(suite, tiny_llama, tiny_converted, tmp_path):
    plain = tmp_path / "plain.eq"
    v8 = suite.parse_variant("8")
    convert(tiny_llama, plain, v8.plan_settings(), progress=False, method=v8.method_settings())
    assert suite.cached_mismatch(plain, v8) is None
    assert "group" in suite.cached_mismatch(plain, suite.parse_variant("8:g32"))
    assert "symmetric" in suite.cached_mismatch(plain, suite.parse_variant("8:sym"))
    assert "bits" in suite.cached_mismatch(plain, suite.parse_variant("4"))
    # a calibrated file (auto at 4 bits: E[x^2] from the shipped text) records its hash and token count
    calibrated = tiny_converted("llama", 4)                     # a bit-plane file (conftest)
    assert suite.cached_mismatch(calibrated, suite.parse_variant("4:bitplane")) is None
    assert "layout" in suite.cached_mismatch(calibrated, suite.parse_variant("4"))
    assert "method" in suite.cached_mismatch(calibrated, suite.parse_variant("4:rtn:bitplane"))
    assert "method" in suite.cached_mismatch(calibrated, suite.parse_variant("4:hqq:bitplane"))
    broken = tmp_path / "broken.eq"
    broken.write_bytes(plain.read_bytes()[:4096])
    assert "does not open" in suite.cached_mismatch(broken, v8)


def test_a_cached_file_with_a_head_the_converter_no_longer_writes_is_converted_again(suite, tiny_llama,
                                                                                    tmp_path, monkeypatch):
    """A file converted before the calibrated head was weighted (in groups of 64) records the same
    settings as one converted now: its head tells them apart."""
    converter = importlib.import_module("edgeq.convert.convert")     # the module, not the function
    v3 = suite.parse_variant("3:bitplane")
    now = tmp_path / "now.eq"
    convert(tiny_llama, now, v3.plan_settings(), progress=False, method=v3.method_settings())
    assert suite.cached_mismatch(now, v3) is None
    monkeypatch.setattr(converter, "WEIGHTED_HEAD_GROUP", 32)      # the head stays in the linear layers' groups
    before = tmp_path / "before.eq"
    convert(tiny_llama, before, v3.plan_settings(), progress=False, method=v3.method_settings())
    monkeypatch.undo()
    assert "its head is u6g32a" in suite.cached_mismatch(before, v3)


def test_mixed_file_converts_records_its_budget_and_is_reused(suite, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "bench_dir", lambda model: tmp_path)
    monkeypatch.setattr(suite, "hf_folder", lambda model: tiny_llama)
    variant = suite.parse_variant("mixed:90KB")
    path, measured = suite.edgeq_file("tiny", variant)
    assert path == tmp_path / "edgeq-mixed-size-0.090MB.eq" and path.stat().st_size <= 90_000
    assert measured["convert_command"] == "edgeq convert SRC -o OUT --size 0.090MB" and measured["convert_cpu_s"] > 0
    assert suite.cached_mismatch(path, variant) is None
    assert "budget" in suite.cached_mismatch(path, suite.parse_variant("mixed:95KB"))
    assert "budget" in suite.cached_mismatch(path, suite.parse_variant("mixed:3.0bpw"))
    stamp = path.stat().st_mtime_ns
    assert suite.edgeq_file("tiny", variant)[0] == path and path.stat().st_mtime_ns == stamp     # reused
    # a uniform file under the mixed name is not the variant's
    uniform = tmp_path / "uniform.eq"
    convert(tiny_llama, uniform, suite.parse_variant("8").plan_settings(), progress=False)
    assert "budget" in suite.cached_mismatch(uniform, variant)
    # the record beside a file made by bench_mixed.py carries more than the suite keeps
    suite.conversion_record(path).write_text(json.dumps({**measured, "allocation": ["..."], "analysis": "reused"}))
    assert suite.edgeq_file("tiny", variant)[1] == measured
    # one converted before a budget's head was fitted with its input's E[x^2] is converted again
    from edgeq.convert import AllocationSettings
    from edgeq.convert import calibrate as calibration
    converter = importlib.import_module("edgeq.convert.convert")
    statistics = calibration.float_statistics
    monkeypatch.setattr(calibration, "float_statistics", lambda *args, **kwargs: {
        k: v for k, v in statistics(*args, **kwargs).items() if k != calibration.HEAD_INPUT})
    monkeypatch.setattr(converter, "_ANALYSES", {})
    before = tmp_path / "before.eq"
    convert(tiny_llama, before, progress=False, allocation=AllocationSettings(variant.budget()))
    assert "fitted without its input's statistics" in suite.cached_mismatch(before, variant)


def test_edgeq_file_converts_measures_reuses_and_reconverts(suite, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "bench_dir", lambda model: tmp_path)
    monkeypatch.setattr(suite, "hf_folder", lambda model: tiny_llama)
    v8 = suite.parse_variant("8")
    path, measured = suite.edgeq_file("tiny", v8)
    assert path == tmp_path / "edgeq-p8g64a-rtn.eq" and suite.cached_mismatch(path, v8) is None
    assert measured["convert_s"] > 0 and measured["convert_cpu_s"] > 0 and measured["convert_peak_rss_mb"] > 10
    assert measured["convert_command"] == "edgeq convert SRC -o OUT --bits 8"
    assert json.loads(suite.conversion_record(path).read_text()) == measured
    assert suite.edgeq_file_ready("tiny", v8)
    stamp = path.stat().st_mtime_ns
    assert suite.edgeq_file("tiny", v8) == (path, measured) and path.stat().st_mtime_ns == stamp   # reused
    # the same name holding a file made with other settings is converted again
    other = tmp_path / "other.eq"
    convert(tiny_llama, other, suite.parse_variant("8:g32").plan_settings(), progress=False)
    shutil.copyfile(other, path)
    assert not suite.edgeq_file_ready("tiny", v8)
    again, measured_again = suite.edgeq_file("tiny", v8)
    assert again == path and suite.cached_mismatch(path, v8) is None and measured_again["convert_s"] > 0


def test_estimate_counts_conversions_that_calibrate(suite, monkeypatch):
    monkeypatch.setattr(suite, "edgeq_file_ready", lambda model, variant: False)
    args = suite.build_parser().parse_args(["--quality-only", "--chunks", "1", "--llama-types"])
    variants = [suite.parse_variant(s) for s in ("8", "4", "3")]
    _, converting = suite.estimate(args, ["qwen"], False, [], variants, [], [None])
    guess = suite.CONVERT_SECONDS_GUESS["qwen"]
    assert converting == guess["plain"] + guess["imatrix"] + guess["gptq"]
    monkeypatch.setattr(suite, "edgeq_file_ready", lambda model, variant: True)
    assert suite.estimate(args, ["qwen"], False, [], variants, [], [None])[1] == 0
    monkeypatch.setattr(suite, "edgeq_file_ready", lambda model, variant: False)
    mixed = [suite.parse_variant("mixed:400MB")]
    measuring, converting = suite.estimate(args, ["qwen"], False, [], mixed, [], [None])
    assert converting == guess["mixed"]
    with_kl = suite.build_parser().parse_args(["--quality-only", "--chunks", "1", "--llama-types", "--kl"])
    assert suite.estimate(with_kl, ["qwen"], False, [], mixed, [], [None])[0] > measuring


# ---------------------------------------------------------------------------------------------
# the report: peers at equal size, dominance
# ---------------------------------------------------------------------------------------------

def _records():
    def speed(system, kind, mb, tok_s, isa=None, bits=None):
        return {"model": "smollm2", "system": system, "type": kind, "bits": bits, "file_mb": mb, "kind": "speed",
                "threads": 2, "decode_tok_s": tok_s, "prefill_tok_s": 2 * tok_s, **({"isa": isa} if isa else {})}

    def ppl(system, kind, mb, value, bits=None):
        return {"model": "smollm2", "system": system, "type": kind, "bits": bits, "file_mb": mb, "kind": "perplexity",
                "threads": 2, "ppl": value, "ppl_stderr": 1.0, "chunks": 2}
    edgeq_file = {"variant": "4", "linear_type": "u4g64a", "group": 64, "layout": "uniform-bitplane",
                  "method": "rtn-imatrix", "convert_s": 40.0, "convert_cpu_s": 70.0, "convert_peak_rss_mb": 900.0}
    return [
        speed("llama.cpp", "Q8_0", 144.8, 100.0), ppl("llama.cpp", "Q8_0", 144.8, 27.0),
        speed("llama.cpp", "Q4_0", 91.7, 130.0), ppl("llama.cpp", "Q4_0", 91.7, 30.8),
        speed("llama.cpp", "Q3_K_M", 93.5, 120.0), ppl("llama.cpp", "Q3_K_M", 93.5, 29.6),
        speed("llama.cpp", "Q2_K", 88.2, 110.0),                                         # no perplexity
        {**speed("edgeq", "u8g64a-rtn", 144.9, 90.0, "avx2", 8)}, ppl("edgeq", "u8g64a-rtn", 144.9, 26.9, 8),
        {**speed("edgeq", "u4g64a-rtn-imatrix", 84.7, 140.0, "avx2", 4), **edgeq_file},
        {**speed("edgeq", "u4g64a-rtn-imatrix", 84.7, 125.0, "scalar", 4), **edgeq_file},
        {**ppl("edgeq", "u4g64a-rtn-imatrix", 84.7, 29.3, 4), **edgeq_file},
        speed("edgeq", "u3g32a-gptq", 79.9, 150.0, "avx2", 3), ppl("edgeq", "u3g32a-gptq", 79.9, 34.7, 3),
        speed("edgeq", "mixed-size-88.200MB", 88.1, 115.0, "avx2"),
        {**ppl("edgeq", "mixed-size-88.200MB", 88.1, 29.5), "kld": 0.0321, "top1_agreement": 0.912,
         "variant": "mixed:88.2MB", "linear_type": "mixed", "layout": "mixed", "method": "auto per tensor"},
    ]


def test_rows_per_kernel_set_share_the_files_perplexity(suite):
    rows = suite.table_rows(_records(), "smollm2")
    four = [r for r in rows if r["type"] == "u4g64a-rtn-imatrix"]
    assert [r["isa"] for r in four] == ["avx2", "scalar"]
    assert all(r["ppl"]["ppl"] == 29.3 and r["file"]["method"] == "rtn-imatrix" for r in four)
    assert [suite.decode(r, 2) for r in four] == [140.0, 125.0]


def test_peers_by_nominal_bits_and_by_size(suite):
    rows = suite.table_rows(_records(), "smollm2")
    by_type = {r["type"]: r for r in rows if r["isa"] in (None, "avx2")}
    assert suite.peer_of(by_type["u8g64a-rtn"], rows)["type"] == "Q8_0"
    assert suite.size_peer_of(by_type["u8g64a-rtn"], rows) is None          # 0.1 MB larger than Q8_0: nothing is
    assert suite.size_peer_of(by_type["u4g64a-rtn-imatrix"], rows)["type"] == "Q2_K"    # 88.2 >= 84.7, the nearest
    assert suite.size_peer_of(by_type["u3g32a-gptq"], rows)["type"] == "Q2_K"
    assert suite.size_peer_of(by_type["Q4_0"], rows) is None                 # only edgeq rows have peers


def test_dominance_per_llama_type(suite):
    rows = suite.table_rows(_records(), "smollm2")
    verdicts = {d["llama"]["type"]: d for d in suite.dominance(rows, 2)}
    # Q4_0: the 4-bit file is smaller, better and faster under avx2 (not under scalar)
    assert verdicts["Q4_0"]["status"] == "dominated"
    assert (verdicts["Q4_0"]["best"]["type"], verdicts["Q4_0"]["best"]["isa"]) == ("u4g64a-rtn-imatrix", "avx2")
    assert verdicts["Q3_K_M"]["status"] == "dominated"
    # Q8_0: the 8-bit file is no worse but 0.1 MB larger; nothing smaller is as good
    assert verdicts["Q8_0"]["status"] == "worse"
    assert verdicts["Q8_0"]["best"]["type"] == "u4g64a-rtn-imatrix"        # best perplexity at no larger size
    assert verdicts["Q8_0"]["smallest"]["type"] == "u8g64a-rtn"
    assert verdicts["Q2_K"]["status"] == "unmeasured"
    # a file no larger and no worse than Q8_0 whose speed is not recorded: undecided, and named
    unspeeded = _records() + [{**_records()[-1], "type": "mixed-size-144.811MB", "file_mb": 126.2, "ppl": 26.8}]
    verdicts = {d["llama"]["type"]: d for d in suite.dominance(suite.table_rows(unspeeded, "smollm2"), 2)}
    assert verdicts["Q8_0"]["status"] == "undecided"
    assert verdicts["Q8_0"]["unspeeded"]["type"] == "mixed-size-144.811MB"
    assert verdicts["Q4_0"]["status"] == "dominated" and verdicts["Q4_0"]["unspeeded"] is None
    slower = [r for r in _records() if not (r["type"] == "u4g64a-rtn-imatrix" and r.get("isa") == "avx2")]
    verdicts = {d["llama"]["type"]: d for d in suite.dominance(suite.table_rows(slower, "smollm2"), 2)}
    assert verdicts["Q4_0"]["status"] == "slower" and verdicts["Q4_0"]["best"]["isa"] == "scalar"


def test_report_states_peers_dominance_and_conversions(suite, tmp_path):
    path = tmp_path / "RESULTS.md"
    suite.write_markdown(path, _records(), "edgeq/data/evaluation.txt")
    text = path.read_text()
    assert "| edgeq | u4g64a-rtn-imatrix [avx2] | 84.7 |" in text and "u4g64a-rtn-imatrix [scalar]" in text
    assert "- llama.cpp Q4_0 (91.7 MB, ppl 30.80, decode 130.0 tok/s t2): **dominated** by edgeq " \
           "u4g64a-rtn-imatrix [avx2] (84.7 MB, ppl 29.30, decode 1.08x)." in text
    assert "- llama.cpp Q8_0 (144.8 MB, ppl 27.00, decode 100.0 tok/s t2): not dominated: no edgeq file is no " \
           "larger and no worse in perplexity" in text
    assert "- llama.cpp Q2_K (88.2 MB): not decided" in text
    suite.write_markdown(path, _records() + [{**_records()[-1], "type": "mixed-size-144.811MB", "file_mb": 126.2,
                                              "ppl": 26.8}], "edgeq/data/evaluation.txt")
    assert "- llama.cpp Q8_0 (144.8 MB, ppl 27.00, decode 100.0 tok/s t2): not decided here: no edgeq file " \
           "measured for speed is no larger and no worse in perplexity; the smallest edgeq file no worse is " \
           "edgeq u8g64a-rtn [avx2] (144.9 MB, ppl 26.90, decode 0.90x); edgeq " \
           "mixed-size-144.811MB (126.2 MB, ppl 26.80) is no larger and no worse; its decode speed at t2 is not " \
           "in these records." in path.read_text().splitlines()
    assert "| u4g64a-rtn-imatrix | `4` | u4g64a | 64 | uniform-bitplane | rtn-imatrix | 40.0 | 70.0 | 900 |" in text
    # a mixed row: its KL and top-1 in the KL column (empty for rows measured without a base), no peer at
    # equal bits, the llama.cpp file no smaller beside it
    assert "| edgeq | mixed-size-88.200MB [avx2] | 88.1 | 29.50 ± 1.00 (2) | 0.0321 (91.2 %) | 115.0 | 230.0 " \
           "|  |  |  |  | Q2_K | 1.00 |" in text
    assert "| edgeq | u3g32a-gptq [avx2] | 79.9 | 34.70 ± 1.00 (2) |  | 150.0 |" in text
    assert "| mixed-size-88.200MB | `mixed:88.2MB` | mixed |  | mixed | auto per tensor |" in text


def test_report_shows_the_roofline_where_the_bench_measured_it(suite, tmp_path):
    """The roofline column (issue 10's Qwen target) appears when a speed record carries
    `edgeq bench`'s roofline_fraction, in the main table and in another run's table."""
    records = [{**r, "roofline_fraction": 0.912} if r["type"] == "u3g32a-gptq" and r["kind"] == "speed" else r
               for r in _records()]
    path = tmp_path / "RESULTS.md"
    suite.write_markdown(path, records, "edgeq/data/evaluation.txt")
    text = path.read_text()
    assert "| prefill tok/s t2 | roofline t2 | peer |" in text
    assert "| edgeq | u3g32a-gptq [avx2] | 79.9 | 34.70 ± 1.00 (2) |  | 150.0 | 300.0 | 0.91 | Q3_K_M |" in text
    assert "| llama.cpp | Q4_0 | 91.7 | 30.80 ± 1.00 (2) |  | 130.0 | 260.0 |  |" in text
    later = [{**r, "when": "2026-12-03T02:45:00", "machine": "elsewhere"} for r in records
             if r["kind"] == "speed" and r["type"] in ("Q3_K_M", "u3g32a-gptq")]
    suite.write_markdown(path, records + later, "edgeq/data/evaluation.txt")
    assert "| edgeq | u3g32a-gptq [avx2] | 79.9 | 34.70 | 150.0 | 300.0 | 0.91 | Q3_K_M | 1.250 |" in path.read_text()
    suite.write_markdown(path, _records(), "edgeq/data/evaluation.txt")
    assert "roofline t2" not in path.read_text().split("Each edgeq row")[1]    # no record has one: no column


def test_report_says_per_model_which_machine_measured_its_rows(suite, tmp_path):
    records = _records()
    for i, record in enumerate(records):
        record["when"] = "2026-12-01T10:00:00" if i % 2 else "2026-11-30T09:00:00"
        if i % 3:
            record["machine"] = "AMD EPYC, 2 cores, best kernel set avx2"
    path = tmp_path / "RESULTS.md"
    suite.write_markdown(path, records, "edgeq/data/evaluation.txt")
    assert "Measured on AMD EPYC, 2 cores, best kernel set avx2 (2026-11-30, 2026-12-01); on a machine not " \
           "recorded (2026-11-30, 2026-12-01)." in path.read_text()
    label = suite.machine_label({"cpu": "AMD EPYC", "cores": 2, "best_kernel_set": "avx512"})
    assert label == "AMD EPYC, 2 cores, best kernel set avx512"


def test_speeds_from_two_machines_are_never_compared(suite, tmp_path):
    old, new = "AMD EPYC, 2 cores, best kernel set avx512", "AMD EPYC, 2 cores, best kernel set avx2"
    records = [{**r, "when": "2026-11-30T09:00:00", "machine": old} for r in _records()]
    # the newer machine re-measured llama.cpp's Q4_0 (slower here) and the mixed file only
    records += [{**r, "when": "2026-12-02T04:00:00", "machine": new, "decode_tok_s": r["decode_tok_s"] / 2}
                for r in _records() if r["kind"] == "speed" and r["type"] in ("Q4_0", "mixed-size-88.200MB")]
    old_run, new_run = f"{old}, run of 2026-11-30 09:00", f"{new}, run of 2026-12-02 04:00"
    # the run that measured the most edgeq files makes the main table, the newer small one follows it
    assert suite.speed_machines(records, "smollm2") == [old_run, new_run]
    for r in records[-2:]:          # replacing a record keys speed by machine: both machines' are kept
        assert all(suite.record_key(r) != suite.record_key(o) for o in records[:-2])
    assert suite.decode(next(r for r in suite.table_rows(records, "smollm2") if r["type"] == "Q4_0"), 2) == 130.0
    rows = suite.table_rows(records, "smollm2", new_run)
    assert {r["type"]: suite.decode(r, 2) for r in rows if r["speed"]} == {"Q4_0": 65.0, "mixed-size-88.200MB": 57.5}
    path = tmp_path / "RESULTS.md"
    suite.write_markdown(path, records, "edgeq/data/evaluation.txt")
    text = path.read_text()
    assert f"Speeds in this table were measured on {old_run}; those measured in other runs ({new_run}) follow it" in text
    assert f"### Speeds on {new_run}" in text
    # each machine's dominance is decided with its own llama.cpp speed: Q4_0 by the u4 file on the old one only
    main, later = text.split(f"### Speeds on {new_run}")
    assert "- llama.cpp Q4_0 (91.7 MB, ppl 30.80, decode 130.0 tok/s t2): **dominated** by edgeq " \
           "u4g64a-rtn-imatrix [avx2] (84.7 MB, ppl 29.30, decode 1.08x)." in main
    assert "- llama.cpp Q4_0 (91.7 MB, ppl 30.80, decode 65.0 tok/s t2): **dominated** by edgeq " \
           "mixed-size-88.200MB [avx2] (88.1 MB, ppl 29.50, decode 0.88x)" not in later
    assert "- llama.cpp Q4_0 (91.7 MB, ppl 30.80, decode 65.0 tok/s t2): not dominated: " in later
    assert "| edgeq | mixed-size-88.200MB [avx2] | 88.1 | 29.50 | 57.5 | 230.0 |  |  | Q4_0 | 0.885 |" in later
    assert "| edgeq | u3g32a-gptq" not in later


def test_speeds_from_two_runs_on_one_machine_are_never_compared(suite, tmp_path):
    """The shared host's speed moves between runs: a run that re-measures some files compares them
    with the llama.cpp speeds it measured itself, and the rows it did not re-measure stay beside the
    llama.cpp speeds of their own run (kept until no edgeq row of that run is left)."""
    machine = "AMD EPYC, 2 cores, best kernel set avx2"
    records = [{**r, "when": "2026-12-02T05:00:00", "machine": machine} for r in _records()]
    for again in [r for r in _records() if r["kind"] == "speed" and r["type"] in ("Q4_0", "u4g64a-rtn-imatrix")]:
        again = {**again, "when": "2026-12-03T02:45:00", "machine": machine, "decode_tok_s": 1.5 * again["decode_tok_s"]}
        records = [r for r in records if suite.record_key(r) != suite.record_key(again)] + [again]
    first, second = f"{machine}, run of 2026-12-02 05:00", f"{machine}, run of 2026-12-03 02:45"
    assert suite.speed_machines(records, "smollm2") == [first, second]   # the first still has the most files
    earlier = {r["type"]: suite.decode(r, 2) for r in suite.table_rows(records, "smollm2") if r["speed"]}
    assert earlier["Q4_0"] == 130.0 and "u4g64a-rtn-imatrix" not in earlier and earlier["u3g32a-gptq"] == 150.0
    latest = {(r["type"], r["isa"]): suite.decode(r, 2) for r in suite.table_rows(records, "smollm2", second) if r["speed"]}
    assert latest == {("Q4_0", None): 195.0, ("u4g64a-rtn-imatrix", "avx2"): 210.0, ("u4g64a-rtn-imatrix", "scalar"): 187.5}
    path = tmp_path / "RESULTS.md"
    suite.write_markdown(path, records, "edgeq/data/evaluation.txt")
    main, newer = path.read_text().split(f"### Speeds on {second}")
    assert "| edgeq | u3g32a-gptq [avx2] | 79.9 | 34.70 ± 1.00 (2) |  | 150.0 | 300.0 |" in main
    assert "| edgeq | u4g64a-rtn-imatrix [avx2] | 84.7 | 29.30 | 210.0 | 280.0 | Q4_0 | 1.077 |" in newer
    # a run that measures more files than the main one takes its place
    bigger = records + [{**r, "when": "2026-12-03T02:45:00", "machine": machine} for r in _records()
                        if r["kind"] == "speed" and r["type"] in ("u3g32a-gptq", "u8g64a-rtn", "mixed-size-88.200MB")]
    bigger = [r for r in bigger if not (r["kind"] == "speed" and r["system"] == "edgeq" and r["when"].startswith("2026-12-02")
                                        and r["type"] in ("u3g32a-gptq", "u8g64a-rtn"))]
    assert suite.speed_machines(bigger, "smollm2") == [second, first]
    # once every edgeq speed of the first run is measured again, its llama.cpp speeds go with it
    assert len(suite.prune_runs(records)) == len(records)
    gone = [r for r in records if not (r["kind"] == "speed" and r["system"] == "edgeq" and r["when"].startswith("2026-12-02"))]
    assert not any(r["kind"] == "speed" and r["when"].startswith("2026-12-02") for r in suite.prune_runs(gone))


def test_plots_draw_mixed_rows_as_their_own_series(suite, tmp_path):
    pytest.importorskip("matplotlib")
    written = suite.plot(_records(), tmp_path)
    assert sorted(p.name for p in written) == ["smollm2-decode.png", "smollm2-ppl.png"]


# ---------------------------------------------------------------------------------------------
# bench_salient.py: the front a candidate format must get below
# ---------------------------------------------------------------------------------------------

def test_lower_hull_is_the_cheapest_mix_of_two_candidates():
    """hull_error(x) = the least error any candidate no larger than x, or a mix of two candidates
    around x, reaches (brute force over random points): what the Lagrangian knapsack can buy."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_salient import hull_error, lower_hull
    rng = np.random.default_rng(3)
    for _ in range(50):
        points = [(float(x), float(y)) for x, y in zip(rng.uniform(1, 10, 8), rng.uniform(0, 5, 8))]
        hull = lower_hull(points)
        assert [x for x, _ in hull] == sorted(x for x, _ in hull) and all(
            b[1] < a[1] for a, b in zip(hull, hull[1:]))
        for x in rng.uniform(0, 11, 20):
            singles = [py for px, py in points if px <= x]
            mixes = [ay + (by - ay) * (x - ax) / (bx - ax) for ax, ay in points for bx, by in points
                     if ax <= x <= bx and bx > ax]
            best = min(singles + mixes, default=None)
            got = hull_error(hull, x)
            assert (got is None) == (best is None)
            if best is not None:
                assert got == pytest.approx(best, abs=1e-9)


def test_bcq_fit_starts_at_uniform_and_only_improves():
    """bench_bcq.py's binary-coding fit (w ~ Σ_p α_p b_p + β per group, weighted ALS) starts from the
    uniform asymmetric grid u<b>g<G>a stores, so its weighted error is no worse than that grid's with
    nearest levels (and its levels are 2^b per group); with 0 iterations it is that grid."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_bcq
    rng = np.random.default_rng(5)
    w = rng.standard_t(4, size=(32, 200)) * 0.02
    importance = rng.gamma(0.5, 1.0, 200)
    error = lambda restored: float((((w - restored) ** 2).sum(axis=0) * importance).sum())
    for bits, group in ((2, 64), (3, 128)):
        padded = np.zeros((32, -(-200 // group) * group)); padded[:, :200] = w
        g = padded.reshape(32, -1, group)
        low, high = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
        step = (high - low) / (2 ** bits - 1)
        uniform = (low + step * np.clip(np.rint((g - low) / step), 0, 2 ** bits - 1)).reshape(32, -1)[:, :200]
        iterations = bench_bcq.ITERATIONS
        try:
            bench_bcq.ITERATIONS = 0
            start = bench_bcq.fit_bcq(w, importance, bits, group)
        finally:
            bench_bcq.ITERATIONS = iterations
        fitted = bench_bcq.fit_bcq(w, importance, bits, group)
        assert np.allclose(start, uniform)
        assert error(fitted) < error(uniform)
        assert all(len(np.unique(row[:group])) <= 2 ** bits for row in fitted)


def test_bench_pairs_interleaves_files_and_reports_ratios_to_peers(tiny_converted, capsys):
    """bench_pairs.py end to end on a tiny model: every file measured once per round, medians and the
    per-round ratio to the named peer in the table (the same file twice: a ratio near 1, finite);
    a peer that is not one of the labels, or a missing file, is a one-line error."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_pairs
    path = tiny_converted("llama", 4)
    bench_pairs.main([f"a={path}", f"b={path}@a", "--threads", "1", "--rounds", "2",
                      "--prompt-tokens", "4", "--gen-tokens", "4"])
    captured = capsys.readouterr()
    assert captured.err.count("round ") == 4                # 2 rounds x 2 files
    rows = [line.split("|")[1:-1] for line in captured.out.splitlines() if line.startswith("| a") or line.startswith("| b")]
    assert [r[0].strip() for r in rows] == ["a", "b"]
    assert 0 < float(rows[0][4]) and rows[1][5].strip() == "a" and 0 < float(rows[1][7]) < 100
    with pytest.raises(SystemExit, match="peer 'c' is not a LABEL"):
        bench_pairs.main([f"a={path}@c"])
    with pytest.raises(SystemExit, match="no such file"):
        bench_pairs.main(["a=/nonexistent.eq"])


def test_bench_pairs_build_rows_run_that_checkout(tiny_converted, tmp_path, capsys, monkeypatch):
    """A `--build NAME=DIR` row runs DIR's edgeq, not the one of the working directory: a stand-in
    checkout whose `python -m edgeq` prints a fixed report shows up in its rows only, also when the
    caller sits inside this checkout (where `-m` would put the current edgeq first on sys.path)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_pairs
    fake = tmp_path / "other" / "edgeq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text('print(\'{"prefill_tok_s": 1234.0, "decode_tok_s": 567.0}\')\n')
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    path = tiny_converted("llama", 4)
    bench_pairs.main([f"a={path}", "--threads", "1", "--rounds", "1", "--prompt-tokens", "4", "--gen-tokens", "4",
                      "--build", f"other={tmp_path / 'other'}"])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| a")}
    assert [c.strip() for c in rows["a/other"][1:3]] == ["1234.0", "567.0"]
    assert rows["a"][2].strip() != "567.0"
