"""The C runtime against the numpy float reference on the same converted files."""
from __future__ import annotations

import os
import subprocess
import sys

import jinja2
import numpy as np
import pytest
from tokenizers import Tokenizer

from edgeq import _ffi
from edgeq.convert import PlanSettings, convert
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile
from edgeq.reference import Reference
from tiny_models import plain_rtn

PROMPT = [5, 17, 33, 2, 120, 77, 8, 250, 1, 64, 300, 42, 9, 199, 3, 88, 61, 7, 150, 222]

# How far each kernel set's logits may be from the float64 reference, as a fraction of the logit
# range: scalar accumulates in float32; avx2, avx512 and neon look up the same int16-quantized tables
# (2^-15 of each 64 activations' largest subset sum per lookup), so their error is larger but still
# far below what quantizing the weights changes. Every set in the C list but the reference is run;
# one missing here fails until its bound is stated.
# avx2-lut8 looks up int8 tables for 2-3-bit types, each lookup off by 258x int16's step: measured
# 0.012-0.018 of the range on the tiny llama at 2-3 bits (int16 tables: 5-7e-5).
KERNEL_SETS = {"scalar": 1e-5, "avx2": 5e-4, "avx512": 5e-4, "neon-dotprod": 5e-4, "neon": 5e-4,
               "avx2-lut8": 5e-2}
# Batches from a set's prefill_from on (a prompt) may take its multiply-add path, whose int16
# activations per block of 32 change each product by up to Σ_k |w_k| (1/2 + 2^-7) d_b with
# d_b = max |x| / 32767 over the block (x86/avx2_prefill.c): 2^-16 of max |x| Σ |w| per product,
# below what the LUT path's int16 tables change, so the same per-set tolerance holds for both paths.
# Packed (p*g*) files take the multiply-add path in every set but the reference, for every batch:
# activations rounded to int8 per block of 32 (each off by at most 1/254 of its block's largest);
# measured 0.007-0.010 of the logit range on these tiny random models (scalar and avx2 alike).
MULTIPLY_ADD = 0.02
# (bits, symmetric, layout) of the converted files
VARIANTS = [(8, False, "bitplane"), (4, False, "bitplane"), (3, True, "bitplane"), (2, False, "bitplane"),
            (16, False, "bitplane"), (8, False, "packed"), (3, True, "packed"), (4, False, "packed")]


def prefill_from(kernel_set: str) -> int | None:
    """The smallest batch that kernel_set multiplies through its multiply-add path (None: never)."""
    return next((n for n in range(2, 65)
                 if _ffi.kernel_route("u4g64a", kernel_set, batch=n)["path"] == "multiply-add"), None)


@pytest.fixture(params=[name for name in _ffi.all_kernel_sets() if name != "ref"])
def kernel_set(request):
    """Run the test with this kernel set active; skip sets this CPU cannot run."""
    assert request.param in KERNEL_SETS, f"state the logit bound of kernel set {request.param!r} in KERNEL_SETS"
    if request.param not in _ffi.kernel_sets():
        pytest.skip(f"this CPU does not run the {request.param} kernels")
    previous = _ffi.isa()
    _ffi.select_isa(request.param)
    yield request.param
    _ffi.select_isa(previous)


def c_logits(path, tokens, chunks=(), **options):
    """Logits for every token, evaluated in the given chunk sizes (the rest in one call)."""
    handle = _ffi.model_open(path, **options)
    try:
        parts, start = [], 0
        for size in list(chunks) + [len(tokens)]:
            if start < len(tokens):
                parts.append(_ffi.model_eval(handle, tokens[start:start + size], all_logits=True))
                start += size
        return np.concatenate(parts)
    finally:
        _ffi.model_close(handle)


@pytest.fixture(scope="module")
def converted(tiny_llama, tiny_qwen, tiny_qwen3, tiny_gemma3, tmp_path_factory):
    """{(arch, bits, symmetric[, "packed"]): path} for a few bit widths, both symmetries, both layouts
    (plain rtn: tiny_models.plain_rtn)."""
    folder = tmp_path_factory.mktemp("runtime")
    out = {}
    for arch, source in (("llama", tiny_llama), ("qwen2", tiny_qwen), ("qwen3", tiny_qwen3),
                         ("gemma3", tiny_gemma3)):
        for bits, symmetric, layout in VARIANTS:
            path = folder / f"{arch}-{bits}{'s' if symmetric else 'a'}-{layout}.edgeq"
            convert(source, path, PlanSettings(bits=bits, symmetric=symmetric, group=32 if bits == 3 else 64,
                                               layout=layout), progress=False, method=plain_rtn())
            out[(arch, bits, symmetric) + (("packed",) if layout == "packed" else ())] = path
    return out


@pytest.fixture(scope="module")
def reference():
    """reference(path, tokens) -> the numpy float reference's logits of `tokens`; with greedy=n, its n
    greedy ids after them. Computed once per module: every kernel set is checked against the same
    numbers (recomputing them per set was the slowest part of the suite)."""
    results = {}

    def get(path, tokens, greedy: int | None = None):
        key = (str(path), tuple(tokens), greedy)
        if key not in results:
            model = ModelFile(path)
            forward = Reference(model.config, model.load)
            results[key] = forward.forward(list(tokens)) if greedy is None else forward.greedy(list(tokens), greedy)
        return results[key]
    return get


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("bits, symmetric, layout", VARIANTS)
def test_logits_equal_the_reference(converted, reference, arch, bits, symmetric, layout, kernel_set):
    path = converted[(arch, bits, symmetric) + (("packed",) if layout == "packed" else ())]
    expected = reference(path, PROMPT)
    span = np.ptp(expected)
    decode = MULTIPLY_ADD if layout == "packed" else KERNEL_SETS[kernel_set]   # packed: multiply-add always
    by_token = c_logits(path, PROMPT, chunks=[1] * len(PROMPT), kv_fp32=True, threads=2)   # decode path
    assert np.abs(by_token - expected).max() < decode * span
    exact = c_logits(path, PROMPT, chunks=(7, 1, 5), kv_fp32=True, threads=2)
    assert np.abs(exact - expected).max() < decode * span
    whole = c_logits(path, PROMPT, kv_fp32=True, threads=2)       # one batch: the prefill path, if any
    assert np.abs(whole - expected).max() < decode * span
    cached = c_logits(path, PROMPT, kv_fp32=False, threads=1)      # fp16 KV cache: small, bounded drift
    coarse = decode >= MULTIPLY_ADD      # int8 rounding: packed's activations, avx2-lut8's tables
    allowed = (2e-3 + (decode if coarse else 0.0)) * span
    assert np.abs(cached - expected).max() < allowed
    # the top token is kept (int8 activations or tables: wherever the reference's lead over the
    # runner-up exceeds twice the error allowed; below that a tie may break either way, the tiny
    # random models have near-ties)
    top2 = np.sort(expected, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > (2 * allowed if coarse else 0.0)
    assert (cached.argmax(-1) == expected.argmax(-1))[clear].all()


@pytest.fixture(scope="module")
def mixed_families(tiny_qwen, tmp_path_factory):
    """A file whose products change family from tensor to tensor and from layer to layer (bit-plane
    LUT u3g32a, packed p4g64a, codebook c4g64a; the head packed, the embeddings bit-plane), spliced
    from three uniform conversions of one model, as a mixed-precision plan can write it."""
    from edgeq.fileformat import TensorPlanEntry, write_model_file
    folder = tmp_path_factory.mktemp("mixed-families")
    files = []
    for bits, group, layout in ((3, 32, "bitplane"), (4, 64, "packed"), (4, 64, "codebook")):
        path = folder / f"{layout}.edgeq"
        convert(tiny_qwen, path, PlanSettings(bits=bits, group=group, layout=layout), progress=False,
                method=plain_rtn())
        files.append(ModelFile(path))
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]

    def source(name: str) -> ModelFile:
        parts = name.split(".")
        if parts[0] == "blk" and parts[2] in kinds:
            return files[(int(parts[1]) + kinds.index(parts[2])) % len(files)]
        return files[1] if name == "output.weight" else files[0]

    tensors = {name: source(name).tensors[name] for name in files[0].tensors}
    entries = [TensorPlanEntry(t.name, t.qtype, t.shape, t.method) for t in tensors.values()]
    families = {(name.split(".")[1], t.qtype.family) for name, t in tensors.items() if name.startswith("blk.")}
    assert len({layer for layer, _ in families}) < len(families)     # layers mix families
    out = folder / "mixed.edgeq"
    base = files[0]
    write_model_file(out, base.config, base.tokenizer, base.generation, base.provenance, entries,
                     lambda entry: tensors[entry.name])
    return out


def test_files_mixing_families_per_layer_equal_the_reference(mixed_families, reference, kernel_set):
    """Each prepare step prepares its output for the families of the products that read it next
    (model.c step_families): a file whose q, k, v, gate, up and down change family from layer to
    layer gives the reference's logits by token (decode), in one batch (prefill) and on 1 thread."""
    expected = reference(mixed_families, PROMPT)
    allowed = max(KERNEL_SETS[kernel_set], MULTIPLY_ADD) * np.ptp(expected)
    for chunks, threads in (([1] * len(PROMPT), 2), ((), 2), ((7, 1, 5), 1)):
        got = c_logits(mixed_families, PROMPT, chunks=chunks, kv_fp32=True, threads=threads)
        assert np.abs(got - expected).max() < allowed, (chunks, threads)


@pytest.fixture(scope="module")
def converted_partial(tiny_qwen_partial, tmp_path_factory):
    """{(bits, symmetric, group): path} of a model whose K (96, 176) are not multiples of the group
    (bit-planes: their whole-group layout is what compact tails change; packed tails are always compact)."""
    folder = tmp_path_factory.mktemp("runtime-partial")
    out = {}
    for bits, symmetric, group in ((3, False, 128), (4, True, 64)):
        out[bits, symmetric, group] = folder / f"partial-{bits}-{group}.edgeq"
        convert(tiny_qwen_partial, out[bits, symmetric, group],
                PlanSettings(bits=bits, symmetric=symmetric, group=group, layout="bitplane"), progress=False)
    return out


@pytest.mark.parametrize("bits, symmetric, group", [(3, False, 128), (4, True, 64)])
def test_partial_last_groups_convert_and_run(converted_partial, reference, bits, symmetric, group, kernel_set):
    """A partial last group costs only its own bytes (rounded up to 32 columns), the file says it
    needs "compact-tail", and every kernel set's logits and greedy ids agree with the reference."""
    path = converted_partial[bits, symmetric, group]
    model = ModelFile(path)
    assert model.get("edgeq.required_features") == ["compact-tail"] and model.compact_tail
    down = model.tensors["blk.0.ffn_down.weight"]                   # (96, 176)
    assert down.qtype.group == group and down.nbytes == down.qtype.nbytes(96, 176)
    # 176 columns stored as 192: 128 + a tail of 48 in 64 (g128), 2 x 64 + 48 in 64 (g64: no saving)
    assert down.nbytes == 6 * (-(-176 // group) * down.qtype.block_bytes(0) + 2 * bits * 192)
    q = model.tensors["blk.0.attn_q.weight"]                        # (96, 96): 96 stored, not 128
    assert q.nbytes == 6 * (-(-96 // group) * q.qtype.block_bytes(0) + 2 * bits * 96)
    assert q.nbytes < q.qtype.nbytes(96, 96, compact_tail=False)
    expected = reference(path, PROMPT)
    got = c_logits(path, PROMPT, kv_fp32=True, threads=2)         # one batch: the prefill path, if any
    assert np.abs(got - expected).max() < KERNEL_SETS[kernel_set] * np.ptp(expected)
    by_token = c_logits(path, PROMPT, chunks=[1] * len(PROMPT), kv_fp32=True, threads=2)   # decode path
    assert np.abs(by_token - expected).max() < KERNEL_SETS[kernel_set] * np.ptp(expected)
    greedy = reference(path, PROMPT[:6], greedy=8)
    handle = _ffi.model_open(path, threads=1, kv_fp32=True)
    try:
        for token in PROMPT[:5]:                                    # below prefill_from: decode path
            _ffi.model_eval(handle, [token])
        logits, ids = _ffi.model_eval(handle, PROMPT[5:6]), []
        for _ in range(8):
            ids.append(int(np.argmax(logits)))
            logits = _ffi.model_eval(handle, [ids[-1]])
    finally:
        _ffi.model_close(handle)
    if KERNEL_SETS[kernel_set] < MULTIPLY_ADD:   # avx2-lut8's int8 tables: near-ties break either way
        assert ids == greedy


def test_threads_and_batching_do_not_change_the_result(converted, kernel_set):
    """On 1 or 2 threads, a prompt in one batch or in several that take the same path (decode below
    prefill_from, multiply-add from it on): the same bits. Across the paths: within their tolerance."""
    path = converted["qwen2", 4, False]
    prompt = PROMPT + PROMPT[::-1]                                  # 40 tokens: two prefill batches fit
    one = c_logits(path, prompt, threads=1)
    assert np.array_equal(one, c_logits(path, prompt, threads=2))
    by_token = c_logits(path, prompt, chunks=[1] * len(prompt), threads=2)
    first = prefill_from(kernel_set)
    if first is None:
        assert np.array_equal(one, c_logits(path, prompt, chunks=(1, 1, 3, 9), threads=2))
        assert np.array_equal(one, by_token)
        return
    assert 2 * first <= len(prompt)
    assert np.array_equal(one, c_logits(path, prompt, chunks=(first,), threads=2))   # first + the rest
    small = max(1, first - 1)
    assert np.array_equal(by_token, c_logits(path, prompt, chunks=[small] * (len(prompt) // small), threads=2))
    assert np.abs(one - by_token).max() < 2 * KERNEL_SETS[kernel_set] * np.ptp(by_token)


def test_packed_files_same_bits_however_batched(converted, kernel_set):
    """A packed file's products take one path whatever the batch: the same bits in one batch, in
    several, token by token, on 1 or 2 threads."""
    path = converted["qwen2", 8, False, "packed"]
    one = c_logits(path, PROMPT, threads=1)
    assert np.array_equal(one, c_logits(path, PROMPT, threads=2))
    assert np.array_equal(one, c_logits(path, PROMPT, chunks=(1, 1, 3, 9), threads=2))
    assert np.array_equal(one, c_logits(path, PROMPT, chunks=[1] * len(PROMPT), threads=2))


def test_a_busy_core_does_not_change_the_result(converted):
    """With another process spinning on one of the two cores, the pool may run evaluations on one
    thread, the caller, with the workers probing beside it (threadpool.c, STALL_NS); whichever way
    each one runs, the bits are those of one thread, and the counts it reports are consistent."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    path = converted["qwen2", 4, False]
    one = c_logits(path, PROMPT, chunks=[1] * len(PROMPT), threads=1)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {max(os.sched_getaffinity(0))})
        handle = _ffi.model_open(path, threads=2)
        try:
            for _ in range(3):
                _ffi.model_truncate(handle, 0)
                rows = [_ffi.model_eval(handle, [token], all_logits=True) for token in PROMPT]
                assert np.array_equal(one, np.concatenate(rows))
            info = _ffi.model_info(handle)
        finally:
            _ffi.model_close(handle)
    finally:
        spinner.kill()
        spinner.wait()
    # one hand-off to the pool per evaluation, the head included; solo jobs and probes are counted too
    assert info["pool_jobs"] == 3 * len(PROMPT) and 0 <= info["pool_jobs_alone"] <= info["pool_jobs"]


@pytest.fixture(scope="module")
def converted_odd_sizes(tmp_path_factory):
    """A tiny llama whose sizes are no multiple of 16 (hidden 72, head_dim 18, MLP 200): every
    kernel's tail (masked lanes, partial groups) runs, as f16 and as 4-bit weights."""
    from tiny_models import make_tiny_hf_model
    folder = tmp_path_factory.mktemp("odd")
    source = make_tiny_hf_model(folder / "hf", arch="llama", hidden_size=72, head_dim=18,
                                intermediate_size=200, num_attention_heads=4, num_key_value_heads=2)
    out = {}
    for bits in (16, 4):
        out[bits] = folder / f"odd-{bits}.edgeq"
        convert(source, out[bits], PlanSettings(bits=bits, group=64, layout="bitplane"), progress=False)
    return out


@pytest.mark.parametrize("bits", [16, 4])
def test_sizes_off_every_vector_width(converted_odd_sizes, reference, bits, kernel_set):
    path = converted_odd_sizes[bits]
    expected = reference(path, PROMPT)
    got = c_logits(path, PROMPT, chunks=(3, 1), kv_fp32=False, threads=2)   # fp16 cache: dot/axpy_f16
    assert np.abs(got - expected).max() < KERNEL_SETS[kernel_set] * np.ptp(expected) + 2e-3 * np.ptp(expected)


def test_prompts_longer_than_one_batch(converted, reference, kernel_set):
    """Prefill runs in batches of 64 tokens: 150 tokens cross two batch boundaries."""
    path = converted["llama", 4, False]
    model = ModelFile(path)
    tokens = [int(t) for t in np.random.default_rng(7).integers(0, model.config.vocab_size, 150)]
    expected = reference(path, tokens)
    got = c_logits(path, tokens, kv_fp32=True, threads=2)
    assert np.abs(got - expected).max() < KERNEL_SETS[kernel_set] * np.ptp(expected)
    assert np.array_equal(got[-1], c_logits(path, tokens, chunks=(64, 63), kv_fp32=True, threads=2)[-1])


def test_truncate_and_last_logits(converted):
    path = converted["llama", 4, False]
    prompt = PROMPT + PROMPT[::-1]              # 40 tokens: both halves are batches of 20, which take
    handle = _ffi.model_open(path, threads=2, ctx=64)   # the path the whole prompt takes (prefill from 16)
    try:
        full = _ffi.model_eval(handle, prompt, all_logits=True)
        _ffi.model_truncate(handle, 0)
        last = _ffi.model_eval(handle, prompt)     # the head on one vector: its decode path, as below
        _ffi.model_truncate(handle, 20)
        assert _ffi.model_info(handle)["n_past"] == 20
        again = _ffi.model_eval(handle, prompt[20:])                  # last token's logits only
        assert np.array_equal(again, last)
        _ffi.model_truncate(handle, 0)
        assert np.array_equal(_ffi.model_eval(handle, prompt[:20], all_logits=True), full[:20])
    finally:
        _ffi.model_close(handle)


def test_context_and_token_errors(converted):
    path = converted["llama", 8, False]
    handle = _ffi.model_open(path, threads=1, ctx=16)
    try:
        with pytest.raises(_ffi.ContextFullError, match=r"context full: 0 tokens in the cache \+ 20 new > context 16"):
            _ffi.model_eval(handle, PROMPT)                            # 20 tokens > ctx 16
        assert _ffi.model_info(handle)["n_past"] == 0                  # nothing was evaluated
        with pytest.raises(ValueError, match="outside the vocabulary"):
            _ffi.model_eval(handle, [0, 10_000_000])   # refused before reaching C
        with pytest.raises(EdgeqError, match="cannot keep 5 tokens: the cache holds 0"):
            _ffi.model_truncate(handle, 5)                             # beyond n_past
    finally:
        _ffi.model_close(handle)
    with pytest.raises(EdgeqError, match="context"):
        _ffi.model_open(path, ctx=100_000)                             # beyond max_seq_len 256


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_weight_bytes_per_token_matches_the_file(converted, arch):
    path = converted[arch, 4, False]
    model = ModelFile(path)
    handle = _ffi.model_open(path)
    try:
        info = _ffi.model_info(handle)
    finally:
        _ffi.model_close(handle)
    # every tensor once, except an untied embedding: a lookup of one row, not a matrix read
    lookup = 0 if model.config.tied_embeddings else model.tensors["token_embd.weight"].nbytes
    assert info["weight_bytes"] == sum(t.nbytes for t in model.tensors.values()) - lookup
    assert info["file_bytes"] == model.file_size()


@pytest.mark.parametrize("bits", [8, 4])
def test_smollm2_greedy_32_tokens_equal_the_reference(bits, smollm2_q8_path, smollm2_q4_path, reference, kernel_set):
    """Token for token, on the real SmolLM2-135M-Instruct, through the C runtime."""
    if kernel_set == "avx2-lut8":   # above 3 bits it is avx2, bit for bit (test_lut8_tables.py)
        pytest.skip("avx2-lut8 multiplies 4- and 8-bit types with avx2's kernels")
    path = smollm2_q8_path if bits == 8 else smollm2_q4_path
    model = ModelFile(path)
    messages = [{"role": "user", "content": "Who wrote Romeo and Juliet?"}]
    text = jinja2.Template(model.tokenizer.chat_template).render(messages=messages, add_generation_prompt=True)
    prompt = Tokenizer.from_str(model.tokenizer.data).encode(text).ids
    expected = reference(path, prompt, greedy=32)
    handle = _ffi.model_open(path, threads=2, ctx=256)
    try:
        logits = _ffi.model_eval(handle, prompt)   # one batch: the prefill path where the set has one
        got = []
        for _ in range(32):
            got.append(int(logits.argmax()))
            logits = _ffi.model_eval(handle, got[-1:])
    finally:
        _ffi.model_close(handle)
    assert got == expected
