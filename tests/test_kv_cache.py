"""The quantized KV caches: int8 (`--kv q8`, load(kv="q8")) and int8 keys with int4 values (`--kv
k8v4`): logits against the numpy reference, greedy decoding, KV sizes in Model.info and `edgeq info`,
and bad values.

How close the runtime's logits with a quantized cache must be, and why:
  * The numpy reference is run with the same quantization applied to every key and value it caches
    (kv_q8_roundtrip and kv_q4_roundtrip below, the twins of eq_kv_q8_quantize and eq_kv_q4_quantize
    in native/ref/gemv.c). The runtime then
    differs from it only as it does with an fp16 cache (test_runtime.py: the kernel set's bound plus
    2e-3 of the logit range for the float32 arithmetic feeding the cache), plus the levels that round
    the other way because the runtime's float32 key differs from the reference's in the last bits (a
    flip moves one cached value by one step, max|block| / 127). A value flips when it lies within the
    runtime's own error of a level boundary, so flips grow with the kernel set's error: measured on
    these models, none with scalar (5e-7 of the range from the int8 reference), 1.1-1.5e-3 of the
    range with avx2/avx512 (whose LUT kernels are 1e-4 off in each key); allowed FLIP = 2e-3. The
    quantization itself moves these logits by 3-5e-3 of the range, so the bound sits below it.
    With int4 values (k8v4) a flip moves a value by max|block| / 8, 16 times an int8 step, but a
    value is 16 times less likely to lie near a boundary: measured on these models (PROMPT, by token
    and batched), the runtime is 4-6e-7 of the range from the k8v4 reference with scalar (no flip)
    and 2.1-4.3e-3 with avx2 (its own error and the fp16-like drift included, against 0.9-2.0e-3 for
    q8); allowed FLIP["k8v4"] = 6e-3, so the whole bound is 8.5e-3 for avx2. The int4 values move
    these logits by 5.2-6.0e-2 of the range (the k8v4 reference against the float one), ten times
    what int8 does (3-5e-3), so the bound still catches a cache that is not the specified one.
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
FLIP = {"q8": 2e-3, "k8v4": 6e-3}   # levels rounding the other way (module docstring)


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


def kv_q4_roundtrip(x: np.ndarray) -> np.ndarray:
    """x (..., head_dim) through the int4 value cache: per block of 32 values of a head, m the value of
    largest magnitude (the first of equals), scale d = fp16(m / -8) (-+65504 when that overflows),
    levels round(x / d) clamped to [-8, 7]."""
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for begin in range(0, x.shape[-1], BLOCK):
        block = x[..., begin:begin + BLOCK]
        largest = np.take_along_axis(block, np.abs(block).argmax(axis=-1)[..., None], axis=-1)
        with np.errstate(over="ignore"):
            scale = (largest / np.float32(-8)).astype(np.float16).astype(np.float32)
        scale = np.where(np.isinf(scale), np.copysign(np.float32(65504), scale), scale)
        inverse = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, 1), 0).astype(np.float32)
        levels = np.rint(np.clip(block * inverse, -8, 7))
        out[..., begin:begin + BLOCK] = scale * levels
    return out


ROUNDTRIPS = {"q8": (kv_q8_roundtrip, kv_q8_roundtrip), "k8v4": (kv_q8_roundtrip, kv_q4_roundtrip)}


class _QuantizedCache(list):
    """A reference layer cache list: the rows each forward appends go through `roundtrip`."""

    def __init__(self, layers, roundtrip):
        super().__init__(layers)
        self.roundtrip = roundtrip

    def __setitem__(self, layer, value):
        old = len(self[layer])
        value = value.copy()
        value[old:] = self.roundtrip(value[old:])
        super().__setitem__(layer, value)


class QuantizedKVReference(Reference):
    """The numpy float reference with a quantized KV cache (ROUNDTRIPS[kv] for keys and values)."""

    def __init__(self, config, load, kv: str):
        self.roundtrips = ROUNDTRIPS[kv]
        super().__init__(config, load)

    def reset(self):
        super().reset()
        keys, values = self.roundtrips
        self.k_cache, self.v_cache = _QuantizedCache(self.k_cache, keys), _QuantizedCache(self.v_cache, values)


def reference_logits(path, tokens, kv: str | None) -> np.ndarray:
    """The float reference's logits, with the KV cache `kv` (q8, k8v4) quantizes, or none (None)."""
    model = ModelFile(path)
    forward = Reference(model.config, model.load) if kv is None else QuantizedKVReference(model.config, model.load, kv)
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
        # bit-planes: the LUT/int16 paths, whose tolerance the cache's is measured against
        convert(source, out[name], PlanSettings(bits=4, group=64, layout="bitplane"), progress=False)
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


def test_the_int4_twin_quantizer_matches_its_specification():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 3, 40)) * rng.choice([1e-3, 1.0, 300.0], (5, 3, 1))).astype(np.float32)
    y = kv_q4_roundtrip(x)
    for begin in (0, 32):
        block, got = x[..., begin:begin + BLOCK], y[..., begin:begin + BLOCK]
        largest = np.take_along_axis(block, np.abs(block).argmax(-1)[..., None], -1)
        step = np.abs(largest) / 8
        # the largest value is level -8 (exact up to the fp16 scale), the others within half a step,
        # or a step for those clamped at +7 (beyond 7.5 steps on the other side)
        assert np.allclose(np.take_along_axis(got, np.abs(block).argmax(-1)[..., None], -1), largest, rtol=2**-10)
        clamped = block * np.sign(-largest) > 7.5 * step
        error, slack = np.abs(got - block), step * 2**-9
        assert (error[~clamped] <= (0.5 * step + slack).repeat(block.shape[-1], -1)[~clamped]).all()
        assert (error[clamped] <= (step + slack).repeat(block.shape[-1], -1)[clamped]).all()
        assert all(len(np.unique(row)) <= 16 for row in got.reshape(-1, block.shape[-1]))


@pytest.mark.parametrize("kv", ["q8", "k8v4"])
@pytest.mark.parametrize("name", ["llama", "qwen2", "llama-hd40"])
def test_quantized_cache_logits_follow_their_reference(files, name, kv, kernel_set):
    path = files[name]
    quantized = reference_logits(path, PROMPT, kv)
    exact = reference_logits(path, PROMPT, None)
    span = np.ptp(exact)
    bound = (KERNEL_SETS[kernel_set] + FP16_CACHE + FLIP[kv]) * span
    by_token = c_logits(path, PROMPT, chunks=[1] * len(PROMPT), kv=kv, threads=2)   # decode: one token a call
    batched = c_logits(path, PROMPT, chunks=(7, 1, 5), kv=kv, threads=2)          # batches read the cache too
    f32 = c_logits(path, PROMPT, chunks=(7, 1, 5), kv_fp32=True, threads=2)
    for got in (by_token, batched):
        assert np.abs(got - quantized).max() < bound
        # closer to the float model than what the quantized cache itself costs plus the runtime's bound
        assert np.abs(got - exact).max() < np.abs(quantized - exact).max() + bound
    # the quantized cache is really in use: its logits move away from the fp32 cache's, and by about
    # as much as the quantization moves the reference's
    moved, expected_move = np.abs(batched - f32).max(), np.abs(quantized - exact).max()
    assert moved > 0 and 0.25 * expected_move < moved < 4 * expected_move + bound


def test_int4_values_cost_more_than_int8_and_stay_small(files):
    """k8v4 against the float reference moves the logits more than q8 (its values have 16 levels, not
    255) and less than 10 % of the logit range on the tiny models (measured: 5-6 %)."""
    for path in files.values():
        exact = reference_logits(path, PROMPT, None)
        q8, k8v4 = (np.abs(c_logits(path, PROMPT, kv=kv, threads=1) - exact).max() for kv in ("q8", "k8v4"))
        assert q8 < k8v4 < 0.1 * np.ptp(exact)


@pytest.mark.parametrize("kv", ["q8", "k8v4"])
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_greedy_decoding_with_a_quantized_cache_stays_with_its_reference(files, name, kv):
    """Greedy decoding, one token per call after the prompt (the decode path): every step's top token
    is the quantized reference's wherever the reference's lead is clear of the bound, and k8v4's
    tokens are the fp16 cache's wherever fp16's lead is clear of what the int4 values move."""
    path = files[name]

    def greedy(kv_type):
        handle = _ffi.model_open(path, threads=1, kv=kv_type)
        try:
            assert _ffi.model_info(handle)["kv"] == kv_type
            ids, rows = [], [_ffi.model_eval(handle, PROMPT)]
            for _ in range(16):
                ids.append(int(rows[-1].argmax()))
                rows.append(_ffi.model_eval(handle, ids[-1:]))
        finally:
            _ffi.model_close(handle)
        return ids, np.stack(rows)

    ids, logits = greedy(kv)
    expected = reference_logits(path, PROMPT + ids, kv)[len(PROMPT) - 1:]
    span = np.ptp(expected)
    bound = (KERNEL_SETS["scalar"] + FP16_CACHE + FLIP[kv]) * span
    assert np.abs(logits - expected).max() < bound
    top2 = np.sort(expected, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * bound
    assert clear.sum() >= len(clear) // 2
    assert (logits.argmax(-1) == expected.argmax(-1))[clear].all()
    # against the fp16 cache's own greedy run: the same tokens, or, from the first step where they
    # differ (the contexts differ after it), a step whose fp16 lead is within twice what the
    # quantization moved that step's logits: there a swap is legitimate
    f16_ids, f16_logits = greedy("f16")
    diverged = next((step for step in range(len(ids)) if ids[step] != f16_ids[step]), len(ids))
    if diverged < len(ids):
        lead = np.diff(np.sort(f16_logits[diverged])[-2:])[0]
        assert lead <= 2 * np.abs(logits[diverged] - f16_logits[diverged]).max(), (diverged, ids, f16_ids)


@pytest.mark.parametrize("kv", ["f16", "q8", "k8v4", "f32"])
def test_info_reports_the_kv_bytes_of_its_type(files, kv):
    for path in files.values():
        config = ModelFile(path).config
        with edgeq.load(path, threads=1, ctx=48, kv=kv) as model:
            info = model.info
        assert info["kv"] == kv and info["kv_fp32"] == (kv == "f32")
        assert info["kv_bytes"] == kv_cache_bytes(config, 48, kv)
        d, blocks = config.head_dim, -(-config.head_dim // 32)
        # bytes per head and token, K + V: fp16 / fp32 values; int8 levels + fp16 scales per 32 for
        # both (q8) or the keys (k8v4), whose values are two int4 levels a byte + fp16 scales per 32
        key_and_value = {"f16": 2 * 2 * d, "f32": 2 * 4 * d, "q8": 2 * (d + 2 * blocks),
                         "k8v4": (d + 2 * blocks) + (d // 2 + 2 * blocks)}[kv]
        assert info["kv_bytes"] == config.n_layers * 48 * config.n_kv_heads * key_and_value


# SmolLM2-135M and Qwen2.5-0.5B's attention shapes (the real files' configs, benchmarks/README.md "KV cache")
SMOLLM2 = SimpleNamespace(n_layers=30, n_kv_heads=3, head_dim=64)
QWEN = SimpleNamespace(n_layers=24, n_kv_heads=2, head_dim=64)


@pytest.mark.parametrize("config, ctx, f16, q8, k8v4", [
    (SMOLLM2, 4096, 94_371_840, 50_135_040, 38_338_560),
    (SMOLLM2, 32768, 754_974_720, 401_080_320, 306_708_480),
    (QWEN, 4096, 50_331_648, 26_738_688, 20_447_232),
    (QWEN, 32768, 402_653_184, 213_909_504, 163_577_856),
])
def test_kv_size_arithmetic_at_4k_and_32k(config, ctx, f16, q8, k8v4):
    # 2 (K, V) x layers x ctx x kv heads x (64 fp16 = 128 bytes | 64 int8 + 2 fp16 scales = 68 bytes),
    # k8v4: layers x ctx x kv heads x (68 bytes of keys + 32 bytes of int4 values + 2 fp16 scales = 104)
    assert kv_cache_bytes(config, ctx, "f16") == f16 == 2 * config.n_layers * ctx * config.n_kv_heads * 128
    assert kv_cache_bytes(config, ctx, "q8") == q8 == 2 * config.n_layers * ctx * config.n_kv_heads * 68
    assert kv_cache_bytes(config, ctx, "k8v4") == k8v4 == config.n_layers * ctx * config.n_kv_heads * (68 + 36)
    assert kv_cache_bytes(config, ctx, "f32") == 2 * f16
    assert q8 / f16 == 68 / 128 and k8v4 / f16 == 104 / 256


@pytest.mark.parametrize("kv, label", [("q8", "int8"), ("k8v4", "int8 K + int4 V")])
def test_edgeq_info_shows_the_kv_size(files, kv, label):
    path = files["qwen2"]
    model = ModelFile(path)
    mem = memory_estimate(model, 64, kv)
    out = subprocess.run([sys.executable, "-m", "edgeq", "info", str(path), "--ctx", "64", "--kv", kv, "--summary"],
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("memory")]
    assert len(lines) == 1 and lines[0].endswith(f"(--kv {kv})"), out
    assert f"KV cache {label} {mem['kv_cache'] / 1e6:.1f} MB" in lines[0]
    every = describe(model, ctx=64, tensors=False)
    for kind, name in (("f16", "fp16"), ("q8", "int8"), ("k8v4", "int8 K + int4 V"), ("f32", "fp32")):
        size = memory_estimate(model, 64, kind)["kv_cache"]
        assert f"KV cache {name} {size / 1e6:.1f} MB" in every and f"(--kv {kind})" in every


@pytest.mark.parametrize("command", [["run", "-p", "hi", "-n", "1"], ["chat"], ["bench"], ["perplexity"],
                                     ["serve"], ["info"]])
def test_a_bad_kv_flag_is_a_one_line_error(files, command):
    args = [command[0], str(files["llama"])] + command[1:] + ["--kv", "q4"]
    result = subprocess.run([sys.executable, "-m", "edgeq", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--kv" in result.stderr and "'q8'" in result.stderr, result.stderr


def test_bad_kv_values_in_the_api(files):
    path = files["llama"]
    for bad in ("q4", "Q8", "k8v8", "K8V4", "k4v8", "", None, 8):
        with pytest.raises(EdgeqError, match="KV cache type"):
            edgeq.load(path, kv=bad)
    with pytest.raises(EdgeqError, match="disagree"):
        edgeq.load(path, kv="q8", kv_fp32=True)
    with pytest.raises(EdgeqError, match="KV cache type"):
        _ffi.model_open(path, kv="int8")
    # the C entry point refuses an unknown type itself (callers other than Python)
    params = _ffi.ffi.new("eq_model_params *")
    for bad in (4, 7, -1):
        params.kv_type = bad
        err = _ffi.ffi.new("char[]", 256)
        assert _ffi.lib.eq_model_open(str(path).encode(), params, err, len(err)) == _ffi.ffi.NULL
        assert f"KV cache type {bad}" in _ffi.ffi.string(err).decode()
    params.kv_type, params.kv_fp32 = _ffi.lib.EQ_KV_K8V4, 1     # k8v4 with kv_fp32: contradictory
    assert _ffi.lib.eq_model_open(str(path).encode(), params, err, len(err)) == _ffi.ffi.NULL


def test_perplexity_with_a_quantized_cache_against_the_f16_base(files):
    """`edgeq perplexity FILE --kv q8|k8v4 --base FILE`: the base runs with fp16, so the KL is the
    quantized cache's cost: positive, small, and larger with int4 values than with int8."""
    from edgeq.perplexity import perplexity
    path = files["qwen2"]
    text = " ".join(f"word{i % 37} and{i % 11}" for i in range(400))
    q8, k8v4 = (perplexity(path, text, ctx=64, chunks=2, base=path, kv=kv, threads=1, progress=False).to_dict()
                for kv in ("q8", "k8v4"))
    same = perplexity(path, text, ctx=64, chunks=2, base=path, threads=1, progress=False).to_dict()
    assert same["kld"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < q8["kld"] < k8v4["kld"] < 0.05
