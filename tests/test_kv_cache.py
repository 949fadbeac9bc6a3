"""The int8 KV cache (`--kv q8`, load(kv="q8")): logits against the numpy reference, greedy decoding,
KV sizes in Model.info and `edgeq info`, and bad values.

How close the runtime's logits with an int8 cache must be, and why:
  * The numpy reference is run with the same quantization applied to every key and value it caches
    (kv_q8_roundtrip below, the twin of eq_kv_q8_quantize in native/ref/gemv.c). The runtime then
    differs from it only as it does with an fp16 cache (test_runtime.py: the kernel set's bound plus
    2e-3 of the logit range for the float32 arithmetic feeding the cache), plus the levels that round
    the other way because the runtime's float32 key differs from the reference's in the last bits (a
    flip moves one cached value by one step, max|block| / 127). A value flips when it lies within the
    runtime's own error of a level boundary, so flips grow with the kernel set's error: measured on
    these models, none with scalar (5e-7 of the range from the int8 reference), 1.1-1.5e-3 of the
    range with avx2/avx512 (whose LUT kernels are 1e-4 off in each key); allowed FLIP = 2e-3. The
    quantization itself moves these logits by 3-5e-3 of the range, so the bound sits below it.
  * Against the float reference (no quantization) the bound is the triangle inequality: what the
    quantization itself changes, measured exactly in the reference (|quantized - float|), plus the
    bound above. So the test fails if the runtime's cache is not the specified int8 cache, or if it
    is farther from the float model than that cache can be.
"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import edgeq
from edgeq import _ffi
from edgeq.convert import PlanSettings, convert
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile
from edgeq.info import describe, kv_cache_bytes, memory_estimate
from edgeq.reference import Reference

from test_runtime import KERNEL_SETS, PROMPT, c_logits, kernel_set  # noqa: F401 (fixture)
from tiny_models import make_tiny_hf_model

BLOCK = 32              # native/src/kernels.h EQ_KV_Q8_BLOCK
FP16_CACHE = 2e-3       # test_runtime.py: the fp16 cache's drift, as a fraction of the logit range
FLIP = 2e-3             # levels rounding the other way (module docstring)


def kv_q8_roundtrip(x: np.ndarray) -> np.ndarray:
    """x (..., head_dim) through the int8 cache: per block of 32 values of a head, scale d =
    fp16(max|x| / 127) (65504 when that overflows), levels round(x / d) clamped to [-127, 127]."""
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for begin in range(0, x.shape[-1], BLOCK):
        block = x[..., begin:begin + BLOCK]
        amax = np.abs(block).max(axis=-1, keepdims=True)
        with np.errstate(over="ignore"):
            scale = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
        scale = np.where(np.isinf(scale), np.float32(65504), scale)
        inverse = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
        levels = np.rint(np.clip(block * inverse, -127, 127))
        out[..., begin:begin + BLOCK] = scale * levels
    return out


class _QuantizedCache(list):
    """A reference layer cache list: the rows each forward appends go through kv_q8_roundtrip."""

    def __setitem__(self, layer, value):
        old = len(self[layer])
        value = value.copy()
        value[old:] = kv_q8_roundtrip(value[old:])
        super().__setitem__(layer, value)


class QuantizedKVReference(Reference):
    """The numpy float reference with an int8 KV cache."""

    def reset(self):
        super().reset()
        self.k_cache, self.v_cache = _QuantizedCache(self.k_cache), _QuantizedCache(self.v_cache)


def reference_logits(path, tokens, quantized: bool) -> np.ndarray:
    model = ModelFile(path)
    forward = (QuantizedKVReference if quantized else Reference)(model.config, model.load)
    return forward.forward(list(tokens))


@pytest.fixture(scope="module")
def files(tiny_llama, tiny_qwen, tmp_path_factory):
    """4-bit files of both tiny models, and a llama with head_dim 40: one full block of 32 and a
    partial one of 8 per head (the SIMD sets' 8/16-wide steps and their tails)."""
    folder = tmp_path_factory.mktemp("kv8")
    wide = make_tiny_hf_model(folder / "llama-hd40", arch="llama", dtype="float32", tied=True,
                              hidden_size=80, num_attention_heads=4, num_key_value_heads=2, head_dim=40)
    out = {}
    for name, source in (("llama", tiny_llama), ("qwen2", tiny_qwen), ("llama-hd40", wide)):
        out[name] = folder / f"{name}.edgeq"
        convert(source, out[name], PlanSettings(bits=4, group=64), progress=False)
    return out


def test_the_twin_quantizer_matches_its_specification():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 3, 40)) * rng.choice([1e-3, 1.0, 300.0], (5, 3, 1))).astype(np.float32)
    y = kv_q8_roundtrip(x)
    for begin in (0, 32):
        block, got = x[..., begin:begin + BLOCK], y[..., begin:begin + BLOCK]
        step = np.abs(block).max(-1, keepdims=True) / 127
        assert (np.abs(got - block) <= 0.5 * step * (1 + 2**-10) + 127 * step * 2**-10).all()
    assert len(np.unique(y[0, 0, :32] / np.abs(y[0, 0, :32]).max())) <= 255


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama-hd40"])
def test_q8_logits_follow_the_int8_reference(files, name, kernel_set):
    path = files[name]
    quantized = reference_logits(path, PROMPT, quantized=True)
    exact = reference_logits(path, PROMPT, quantized=False)
    span = np.ptp(exact)
    bound = (KERNEL_SETS[kernel_set] + FP16_CACHE + FLIP) * span
    by_token = c_logits(path, PROMPT, chunks=[1] * len(PROMPT), kv="q8", threads=2)   # decode: one token a call
    batched = c_logits(path, PROMPT, chunks=(7, 1, 5), kv="q8", threads=2)          # batches read the cache too
    f32 = c_logits(path, PROMPT, chunks=(7, 1, 5), kv_fp32=True, threads=2)
    for got in (by_token, batched):
        assert np.abs(got - quantized).max() < bound
        # closer to the float model than what the int8 cache itself costs plus the runtime's bound
        assert np.abs(got - exact).max() < np.abs(quantized - exact).max() + bound
    # the int8 cache is really in use: its logits move away from the fp32 cache's, and by about as
    # much as the quantization moves the reference's
    moved, expected_move = np.abs(batched - f32).max(), np.abs(quantized - exact).max()
    assert moved > 0 and 0.25 * expected_move < moved < 4 * expected_move + bound


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_greedy_decoding_with_q8_stays_with_the_reference(files, name):
    """Greedy decoding, one token per call after the prompt (the decode path): every step's top token
    is the int8 reference's wherever the reference's lead is clear of the bound."""
    path = files[name]
    handle = _ffi.model_open(path, threads=1, kv="q8")
    try:
        assert _ffi.model_info(handle)["kv"] == "q8"
        ids, rows = [], [_ffi.model_eval(handle, PROMPT)]
        for _ in range(16):
            ids.append(int(rows[-1].argmax()))
            rows.append(_ffi.model_eval(handle, ids[-1:]))
    finally:
        _ffi.model_close(handle)
    logits = np.stack(rows)
    expected = reference_logits(path, PROMPT + ids, quantized=True)[len(PROMPT) - 1:]
    span = np.ptp(expected)
    bound = (KERNEL_SETS["scalar"] + FP16_CACHE + FLIP) * span
    assert np.abs(logits - expected).max() < bound
    top2 = np.sort(expected, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * bound
    assert clear.sum() >= len(clear) // 2
    assert (logits.argmax(-1) == expected.argmax(-1))[clear].all()


@pytest.mark.parametrize("kv", ["f16", "q8", "f32"])
def test_info_reports_the_kv_bytes_of_its_type(files, kv):
    for path in files.values():
        config = ModelFile(path).config
        with edgeq.load(path, threads=1, ctx=48, kv=kv) as model:
            info = model.info
        assert info["kv"] == kv and info["kv_fp32"] == (kv == "f32")
        assert info["kv_bytes"] == kv_cache_bytes(config, 48, kv)
        per_head = {"f16": 2 * config.head_dim, "f32": 4 * config.head_dim,
                    "q8": config.head_dim + 2 * -(-config.head_dim // 32)}[kv]
        assert info["kv_bytes"] == 2 * config.n_layers * 48 * config.n_kv_heads * per_head


# SmolLM2-135M and Qwen2.5-0.5B's attention shapes (the real files' configs, benchmarks/README.md "KV cache")
SMOLLM2 = SimpleNamespace(n_layers=30, n_kv_heads=3, head_dim=64)
QWEN = SimpleNamespace(n_layers=24, n_kv_heads=2, head_dim=64)


@pytest.mark.parametrize("config, ctx, f16, q8", [
    (SMOLLM2, 4096, 94_371_840, 50_135_040),
    (SMOLLM2, 32768, 754_974_720, 401_080_320),
    (QWEN, 4096, 50_331_648, 26_738_688),
    (QWEN, 32768, 402_653_184, 213_909_504),
])
def test_kv_size_arithmetic_at_4k_and_32k(config, ctx, f16, q8):
    # 2 (K, V) x layers x ctx x kv heads x (64 fp16 = 128 bytes | 64 int8 + 2 fp16 scales = 68 bytes)
    assert kv_cache_bytes(config, ctx, "f16") == f16 == 2 * config.n_layers * ctx * config.n_kv_heads * 128
    assert kv_cache_bytes(config, ctx, "q8") == q8 == 2 * config.n_layers * ctx * config.n_kv_heads * 68
    assert kv_cache_bytes(config, ctx, "f32") == 2 * f16
    assert q8 / f16 == 68 / 128


def test_edgeq_info_shows_the_kv_size(files):
    path = files["qwen2"]
    model = ModelFile(path)
    mem = memory_estimate(model, 64, "q8")
    out = subprocess.run([sys.executable, "-m", "edgeq", "info", str(path), "--ctx", "64", "--kv", "q8", "--summary"],
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("memory")]
    assert len(lines) == 1 and lines[0].endswith("(--kv q8)"), out
    assert f"KV cache int8 {mem['kv_cache'] / 1e6:.1f} MB" in lines[0]
    both = describe(model, ctx=64, tensors=False)
    for kind, label in (("f16", "fp16"), ("q8", "int8"), ("f32", "fp32")):
        size = memory_estimate(model, 64, kind)["kv_cache"]
        assert f"KV cache {label} {size / 1e6:.1f} MB" in both and f"(--kv {kind})" in both


@pytest.mark.parametrize("command", [["run", "-p", "hi", "-n", "1"], ["chat"], ["bench"], ["perplexity"],
                                     ["serve"], ["info"]])
def test_a_bad_kv_flag_is_a_one_line_error(files, command):
    args = [command[0], str(files["llama"])] + command[1:] + ["--kv", "q4"]
    result = subprocess.run([sys.executable, "-m", "edgeq", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--kv" in result.stderr and "'q8'" in result.stderr, result.stderr


def test_bad_kv_values_in_the_api(files):
    path = files["llama"]
    for bad in ("q4", "Q8", "", None, 8):
        with pytest.raises(EdgeqError, match="KV cache type"):
            edgeq.load(path, kv=bad)
    with pytest.raises(EdgeqError, match="disagree"):
        edgeq.load(path, kv="q8", kv_fp32=True)
    with pytest.raises(EdgeqError, match="KV cache type"):
        _ffi.model_open(path, kv="int8")
    # the C entry point refuses an unknown type itself (callers other than Python)
    params = _ffi.ffi.new("eq_model_params *")
    params.kv_type = 7
    err = _ffi.ffi.new("char[]", 256)
    assert _ffi.lib.eq_model_open(str(path).encode(), params, err, len(err)) == _ffi.ffi.NULL
    assert "KV cache type 7" in _ffi.ffi.string(err).decode()


def test_perplexity_with_q8_against_the_f16_base(files):
    """`edgeq perplexity FILE --kv q8 --base FILE`: the base runs with fp16, so the KL is the int8
    cache's cost: positive and small."""
    from edgeq.perplexity import perplexity
    path = files["qwen2"]
    text = " ".join(f"word{i % 37} and{i % 11}" for i in range(400))
    result = perplexity(path, text, ctx=64, chunks=2, base=path, kv="q8", threads=1, progress=False).to_dict()
    same = perplexity(path, text, ctx=64, chunks=2, base=path, threads=1, progress=False).to_dict()
    assert same["kld"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < result["kld"] < 0.05
