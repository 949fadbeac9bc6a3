"""A llama.cpp file's own grid survives the default conversion exactly (convert/gguf_grid.py):
Q4_1/Q5_1 blocks become u4g32a/u5g32a groups and Q4_0/Q5_0/Q8_0 blocks u4g32z/u5g32z/u8g32z groups
(at the ggml type's own size) whose dequantized values equal gguf.quants' bit for bit, through the q/k un-permutation and tiling; other tensors and explicit
--bits/--group/--sym settings take the normal plan."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import edgeq
from edgeq import _ffi
from edgeq import quant_types
from edgeq.convert import PlanSettings, convert, gguf_grid
from edgeq.convert.sources import open_source
from edgeq.fileformat import ModelFile
from edgeq.reference import Reference

EXACT = {T.Q4_0: "u4g32z", T.Q4_1: "u4g32a", T.Q5_0: "u5g32z", T.Q5_1: "u5g32a", T.Q8_0: "u8g32z"}


def _awkward_weights(rng, rows, cols):
    """Normal weights with a zero block, a constant block and a wide-range row (huge d)."""
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    w[1, :32] = 0.0
    w[2, 32:64] = -1.5
    w[3] *= 1000.0
    return w


@pytest.mark.parametrize("ggml_type", list(EXACT), ids=lambda t: t.name)
def test_blocks_pack_to_the_values_gguf_dequantizes(ggml_type):
    rng = np.random.default_rng(int(ggml_type))
    rows, cols = 37, 96                                  # rows not a multiple of the 16-row tile
    raw = gguf.quants.quantize(_awkward_weights(rng, rows, cols), ggml_type)
    qtype = gguf_grid.edgeq_type(ggml_type)
    assert qtype.name == EXACT[ggml_type]
    data = gguf_grid.pack_rows(qtype, *gguf_grid.read_blocks(ggml_type, raw, cols))
    ours = quant_types.dequantize(qtype, data, rows, cols)
    theirs = gguf.quants.dequantize(raw, ggml_type)
    assert ours.dtype == theirs.dtype == np.float32
    assert np.array_equal(ours, theirs)                  # equal floats (+0 and -0 alike)
    assert gguf_grid.matches_gguf(ggml_type, raw, cols)


def test_k_quants_and_floats_have_no_exact_type():
    for ggml_type in (T.Q4_K, T.Q6_K, T.Q2_K, T.F16, T.F32, T.BF16):
        assert gguf_grid.edgeq_type(ggml_type) is None


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q5_0, T.Q8_0], ids=lambda t: t.name)
def test_a_z_type_holds_its_ggml_block_at_its_size(ggml_type):
    """A Q4_0/Q5_0/Q8_0 block is one z group: same bytes per weight (4.5, 5.5, 8.5 bits), and a
    d whose -o·d would overflow fp16 (no min is stored) still reads back exactly."""
    qtype = gguf_grid.edgeq_type(ggml_type)
    rows, cols = 32, 896
    assert qtype.nbytes(rows, cols) == rows * cols // 32 * gguf_grid.layout(ggml_type).nbytes()
    w = np.zeros((1, 32), dtype=np.float32)
    w[0, 0] = 80000.0                                     # d = -80000 / 2^(b-1): -o·d = 80000 > fp16 max
    assert gguf_grid.matches_gguf(ggml_type, gguf.quants.quantize(w, ggml_type), 32)


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q5_0, T.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
def test_rtn_fits_a_z_type_no_worse_than_llama_cpp_quantizes_it(ggml_type, weighted):
    """Re-quantizing into a z type (the same grid and bytes as the ggml type) with rtn's clip search
    and least-squares refit: an error no larger than gguf.quants' own Q4_0/Q5_0/Q8_0 (scale = the
    signed peak / -2^(b-1)) on heavy-tailed weights, E[x^2]-weighted when statistics are given."""
    from edgeq.convert import methods
    rng = np.random.default_rng(7)
    w = (rng.standard_t(4, size=(64, 896)) * 0.02).astype(np.float32)
    importance = rng.uniform(0.1, 2.0, size=896) if weighted else None
    qtype = gguf_grid.edgeq_type(ggml_type)
    ours = quant_types.dequantize(qtype, methods.rtn(w, qtype, importance).data, *w.shape)
    theirs = gguf.quants.dequantize(gguf.quants.quantize(w, ggml_type), ggml_type).reshape(w.shape)
    error = lambda restored: methods.weighted_error(w, restored, importance)
    assert error(ours) <= error(theirs)


def test_a_block_that_is_not_finite_is_detected():
    raw = gguf.quants.quantize(np.ones((1, 32), dtype=np.float32), T.Q4_0)
    assert gguf_grid.matches_gguf(T.Q4_0, raw, 32)
    raw[0, :2] = np.array([np.nan], dtype=np.float16).view(np.uint8)   # d = NaN
    assert not gguf_grid.matches_gguf(T.Q4_0, raw, 32)


# ------------------------------------------------------------- a tiny llama.cpp file, end to end

TOKENS = ["<s>", "</s>", "a", "b", "c", "d", "e", "f", "g", "h", "i", "Ġ", "ab", "cd", "ef", "gh", "abcd"]  # 17 rows: a padded tile
DIM, HIDDEN, HEADS, KV_HEADS, LAYERS = 64, 128, 4, 2, 2
TYPES = {"token_embd": T.Q8_0, "attn_q": T.Q4_0, "attn_k": T.Q4_1, "attn_v": T.Q5_0, "attn_output": T.Q5_1,
         "ffn_gate": T.Q4_1, "ffn_up": T.Q8_0, "ffn_down": T.Q4_0, "output": T.F16}


def q4_k_blocks(rng, rows: int, cols: int) -> np.ndarray:
    """Random Q4_K rows (gguf-py cannot quantize K-quants): small fp16 d and dmin, random 6-bit
    scales and mins, random levels; (rows, cols / 256 * 144) uint8."""
    n = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    blocks[:, 0:2] = rng.uniform(0.001, 0.004, size=(n, 1)).astype(np.float16).view(np.uint8)
    blocks[:, 2:4] = rng.uniform(0.001, 0.01, size=(n, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def write_tiny_gguf(path, corrupt: bool = False, hidden: int = HIDDEN, types: dict | None = None):
    """A 2-layer llama in llama.cpp's layout, every exact ggml type used once or more, an F16 head;
    corrupt: one Q4_0 block of blk.1.ffn_down gets d = NaN; types: other ggml types per kind (Q4_K
    needs rows of whole 256-blocks: hidden=256 for ffn_down)."""
    types = {**TYPES, **(types or {})}
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    for add, value in ((writer.add_embedding_length, DIM), (writer.add_feed_forward_length, hidden),
                       (writer.add_block_count, LAYERS), (writer.add_head_count, HEADS),
                       (writer.add_head_count_kv, KV_HEADS), (writer.add_context_length, 128),
                       (writer.add_layer_norm_rms_eps, 1e-5), (writer.add_rope_freq_base, 10000.0)):
        add(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3, 3] + [1] * (len(TOKENS) - 2))
    writer.add_token_merges(["a b", "c d", "e f", "g h", "ab cd"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    def add(name, kind, shape):
        weight = (rng.normal(size=shape) * 0.3).astype(np.float32)
        ggml_type = types[kind]
        if ggml_type == T.F16:
            writer.add_tensor(name, weight.astype(np.float16))
            return
        raw = q4_k_blocks(rng, *shape) if ggml_type == T.Q4_K else gguf.quants.quantize(weight, ggml_type)
        if corrupt and name == "blk.1.ffn_down.weight":          # row 5, the block of columns 64..95
            at = 2 * gguf_grid.layout(ggml_type).nbytes()
            raw[5, at:at + 2] = np.array([np.nan], dtype=np.float16).view(np.uint8)
        writer.add_tensor(name, raw, raw_dtype=ggml_type)

    head_dim = DIM // HEADS
    add("token_embd.weight", "token_embd", (len(TOKENS), DIM))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", (1 + 0.1 * rng.normal(size=DIM)).astype(np.float32))
        writer.add_tensor(f"{block}.ffn_norm.weight", (1 + 0.1 * rng.normal(size=DIM)).astype(np.float32))
        add(f"{block}.attn_q.weight", "attn_q", (DIM, DIM))
        add(f"{block}.attn_k.weight", "attn_k", (KV_HEADS * head_dim, DIM))
        add(f"{block}.attn_v.weight", "attn_v", (KV_HEADS * head_dim, DIM))
        add(f"{block}.attn_output.weight", "attn_output", (DIM, DIM))
        add(f"{block}.ffn_gate.weight", "ffn_gate", (hidden, DIM))
        add(f"{block}.ffn_up.weight", "ffn_up", (hidden, DIM))
        add(f"{block}.ffn_down.weight", "ffn_down", (DIM, hidden))
    writer.add_tensor("output_norm.weight", np.ones(DIM, dtype=np.float32))
    add("output.weight", "output", (len(TOKENS), DIM))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("grid") / "tiny.gguf")


def test_default_conversion_keeps_every_exact_grid(tiny_gguf, tmp_path):
    out = tmp_path / "tiny.edgeq"
    report = convert(tiny_gguf, out, progress=False)
    source, model = open_source(tiny_gguf), ModelFile(out)
    assert len(report.kept_grid) == 1 + 7 * LAYERS and report.refused_grid == {}
    for name, info in model.tensors.items():
        weight = source.load(name)
        if name == "output.weight":                     # F16 in the source: no grid, the default plan
            assert (info.qtype.name, info.method) == ("p6g64a", "rtn-clip-search")   # auto packs every width
        elif weight.ndim == 1:
            assert info.qtype.name == "f32" and np.array_equal(model.load(name), weight)
        else:
            kind = name.split(".")[-2]
            assert (info.qtype.name, info.method) == (EXACT[TYPES[kind]], "gguf-grid-exact"), name   # bit-planes
            assert np.array_equal(model.load(name), weight), name   # q/k un-permuted, tiles padded
    assert model.settings["source_grid"] == f"kept for {1 + 7 * LAYERS} tensors"


@pytest.mark.parametrize("layout, tolerance", [("bitplane", 2e-3),   # the fp16 KV cache's bound (test_runtime)
                                               ("packed", 5e-2)])   # + int8 activations: measured 0.026
def test_the_runtime_matches_the_source_on_the_kept_grid(tiny_gguf, tmp_path, layout, tolerance):
    """Negative scales (Q4_0/Q5_0 store d = max / -8) and u5/u8 (p5/p8) groups of 32 through the C
    kernels, LUT and multiply-add."""
    out = tmp_path / "tiny.edgeq"
    report = convert(tiny_gguf, out, PlanSettings(head_bits=16, layout=layout), progress=False)   # head F16: all exact
    assert report.mean_rel_error == 0.0
    source = open_source(tiny_gguf)
    prompt = [0, 2, 3, 12, 5, 13, 11, 7, 15, 9, 4, 14, 6, 16, 8, 10, 2, 3]
    expected = Reference(source.config, source.load).forward(prompt)
    # token by token: the decode path, whose error is the fp16 KV cache's (a prompt in one batch
    # takes the multiply-add prefill path where the set has one: test_runtime holds it)
    handle = _ffi.model_open(out, threads=1)
    try:
        got = np.concatenate([_ffi.model_eval(handle, [token], all_logits=True) for token in prompt])
    finally:
        _ffi.model_close(handle)
    assert np.abs(got - expected).max() < tolerance * np.ptp(expected)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_an_export_gives_the_kept_blocks_back_byte_for_byte(tiny_gguf, tmp_path):
    """Q4_0/Q5_0/Q8_0 kept as z groups (and Q4_1/Q5_1 as a groups) export as the same ggml type
    with the source's own bytes, q/k rows back in llama.cpp's order."""
    from edgeq.convert import export_gguf
    ours, exported = tmp_path / "tiny.edgeq", tmp_path / "back.gguf"
    convert(tiny_gguf, ours, PlanSettings(head_bits=16), progress=False)
    assert export_gguf.export_gguf(ours, exported, kl_chunks=0).exact()
    source = {t.name: t for t in gguf.GGUFReader(tiny_gguf).tensors}
    back = {t.name: t for t in gguf.GGUFReader(exported).tensors}
    blocks = [name for name, t in source.items() if t.tensor_type in EXACT]
    assert len(blocks) == 1 + 7 * LAYERS
    for name in blocks:
        assert back[name].tensor_type == source[name].tensor_type, name
        assert np.array_equal(np.asarray(back[name].data), np.asarray(source[name].data)), name


@pytest.mark.parametrize("settings, kept", [
    (PlanSettings(bits=4), 0),                  # an explicit width re-quantizes every tensor
    (PlanSettings(group=32), 0),
    (PlanSettings(symmetric=True), 0),
    (PlanSettings(head_bits=8), 1 + 7 * LAYERS),  # the head's own flag: the rest keep their grid
    (PlanSettings(embed_bits=6), 7 * LAYERS),
])
def test_explicit_settings_re_quantize_what_they_name(tiny_gguf, tmp_path, settings, kept):
    out = tmp_path / "tiny.edgeq"
    report = convert(tiny_gguf, out, settings, progress=False)
    model = ModelFile(out)
    methods = {name: info.method for name, info in model.tensors.items()}
    assert sum(method == "gguf-grid-exact" for method in methods.values()) == len(report.kept_grid) == kept
    if settings.bits is not None:
        assert model.tensors["blk.0.ffn_up.weight"].qtype.name == "p4g64a"     # --layout auto packs 4 bits
    if settings.embed_bits is not None:
        assert model.tensors["token_embd.weight"].qtype.name == "p6g64a"


def test_a_block_that_is_not_finite_stops_the_conversion(tmp_path):
    """Every finite ggml block of these types has an exact edgeq group, so a block that does not
    read back exactly holds a NaN or infinity: the grid is refused with a warning, and the tensor
    (not re-quantizable) stops the conversion in one line, leaving no output."""
    from edgeq.errors import EdgeqError
    path, out = write_tiny_gguf(tmp_path / "corrupt.gguf", corrupt=True), tmp_path / "out.edgeq"
    with pytest.warns(UserWarning, match=r"blk\.1\.ffn_down\.weight: its source grid does not fit u4g32z exactly"), \
            pytest.raises(EdgeqError, match=r"tensor blk\.1\.ffn_down\.weight contains NaN or infinity"):
        convert(path, out, progress=False)
    assert not out.exists()


# ------------------------------------------------------------- the real SmolLM2 (the default model's source)

@pytest.mark.slow
def test_smollm2_default_conversion_is_as_good_as_its_source(smollm2_gguf, smollm2_default_conversion):
    """PyPI's SmolLM2 Q4_1 GGUF (Q4_1 linear layers, Q8_0 embeddings) converted by default, as the
    default model is: every tensor dequantizes to the source's values, and the runtime's logits
    follow the source's float reference. Measured (ctx 512, 2 chunks, 510 tokens scored): KL 1.0e-6,
    top-1 agreement 1.0, Δppl 0.002 -- the runtime's own rounding (fp16 KV cache, int16 activation
    tables); the 4-bit g64 re-quantization this replaced measured KL 0.18, top-1 0.73."""
    from pathlib import Path

    from edgeq.perplexity import perplexity
    out, report = smollm2_default_conversion
    assert len(report.kept_grid) == 211 and report.refused_grid == {}   # 210 Q4_1 + the Q8_0 embeddings
    source, model = open_source(smollm2_gguf), ModelFile(out)
    assert model.tensors["token_embd.weight"].qtype.name == "u8g32z"    # a kept grid stays bit-planes under auto
    for name in model.tensors:
        assert np.array_equal(model.load(name), source.load(name)), name
    text = (Path(edgeq.__file__).parent / "data" / "evaluation.txt").read_text(encoding="utf-8")
    result = perplexity(out, text, base=smollm2_gguf, ctx=512, chunks=2, progress=False)
    # perplexity evaluates batches of 64: on avx2 and avx512 the multiply-add prefill path (int16
    # activations per 32) runs them, the LUT path elsewhere; both measured KL ~1e-6, top-1 1.0
    assert result.kld < 1e-4  # 100x the measured 1e-6: rounding, not weights
    assert result.top1_agreement >= 0.99
    assert abs(result.delta_ppl) < 0.01 * result.base_ppl


@pytest.mark.parametrize("extra", [20_000, -10_000])
def test_a_budget_keeps_the_grids_its_plan_can_hold(tiny_gguf, tmp_path, extra):
    """With --size, a tensor whose source grid an edgeq type holds exactly scores 0 under that type
    (and its packed twin), and is stored as the source's blocks when the plan picks it. 20 kB over
    the default file's size every grid is kept (the head, F16 in the source, takes the rest); 10 kB
    under it some tensors must give theirs up."""
    from edgeq.convert import AllocationSettings, MethodSettings
    from edgeq.convert.allocate import Budget
    default = tmp_path / "default.edgeq"
    convert(tiny_gguf, default, progress=False)
    budget = default.stat().st_size + extra
    out = tmp_path / "mixed.edgeq"
    report = convert(tiny_gguf, out, progress=False, method=MethodSettings(calib_tokens=256, calib_ctx=64),
                     allocation=AllocationSettings(Budget("size", budget)))
    assert out.stat().st_size <= budget
    source, model = open_source(tiny_gguf), ModelFile(out)
    kept = {name for name, info in model.tensors.items() if info.method == "gguf-grid-exact"}
    assert kept == set(report.kept_grid)
    assert f"kept for {len(kept)} of the {1 + 7 * LAYERS} tensors" in "\n".join(report.allocation_lines)
    for name in kept:
        assert model.tensors[name].qtype.name[1:] == EXACT[TYPES[name.split(".")[-2]]][1:], name   # u or p: one grid
        assert np.array_equal(model.load(name), source.load(name)), name
        assert report.allocation.scores[name] == 0.0
    if extra > 0:
        assert len(kept) == 1 + 7 * LAYERS
        assert model.tensors["token_embd.weight"].qtype.name == "p8g32z"   # Q8_0: the packed twin wins the tie
    else:
        assert 0 < len(kept) < 1 + 7 * LAYERS


# ------------------------------------------------------------- a K-quant's grid with fp16 scales

def test_q4_k_reads_as_u4g32a_with_scales_rounded_to_fp16():
    """Q4_K's sub-blocks of 32 are asymmetric 4-bit groups, scale d·sc and min −dmin·m computed in
    float: u4g32a holds the same levels with both rounded to fp16, each weight off by at most half
    an fp16 ulp of the scale times 15 plus half an ulp of the min (and the float32 roundings)."""
    rng = np.random.default_rng(3)
    rows, cols = 37, 512
    raw = q4_k_blocks(rng, rows, cols)
    qtype = gguf_grid.rounded_type(T.Q4_K)
    assert qtype.name == "u4g32a" and gguf_grid.rounded_type(T.Q6_K) is None and gguf_grid.rounded_type(T.Q4_0) is None
    levels, scales, mins = gguf_grid.read_rounded(T.Q4_K, raw, cols)
    ours = quant_types.dequantize(qtype, gguf_grid.pack_rows(qtype, levels, scales, mins), rows, cols)
    theirs = gguf.quants.dequantize(raw, T.Q4_K).reshape(rows, cols)
    per_weight = lambda a: np.repeat(np.abs(a.astype(np.float64)), 32, axis=1)
    bound = 2.0 ** -11 * (15 * per_weight(scales) + per_weight(mins)) + 2.0 ** -23 * (np.abs(theirs) + per_weight(mins))
    assert np.all(np.abs(ours - theirs) <= bound)
    assert not np.array_equal(ours, theirs)          # rounded, not exact: why it is not a kept grid


def test_a_budget_keeps_a_q4_k_grid_with_fp16_scales(tmp_path):
    """With --size, a Q4_K tensor scores its rounded grid's (tiny) error under u4g32a and its packed
    twin, and is stored as that grid (method gguf-grid-fp16-scales) when the plan picks it."""
    from edgeq.convert import AllocationSettings, MethodSettings
    from edgeq.convert.allocate import Budget
    source_path = write_tiny_gguf(tmp_path / "q4k.gguf", hidden=256, types={"ffn_down": T.Q4_K})
    default = tmp_path / "default.edgeq"
    convert(source_path, default, progress=False)
    out = tmp_path / "mixed.edgeq"
    report = convert(source_path, out, progress=False, method=MethodSettings(calib_tokens=256, calib_ctx=64),
                     allocation=AllocationSettings(Budget("size", default.stat().st_size + 20_000)))
    source, model = open_source(source_path), ModelFile(out)
    downs = [f"blk.{layer}.ffn_down.weight" for layer in range(LAYERS)]
    assert f"fp16 scales for {LAYERS} of the {LAYERS} tensors" in "\n".join(report.allocation_lines)
    for name in downs:
        info = model.tensors[name]
        assert info.method == "gguf-grid-fp16-scales" and info.qtype.name[1:] == "4g32a", (name, info.method)
        weight, stored = source.load(name), model.load(name)
        assert 0 < np.abs(stored - weight).max() <= 2.0 ** -10 * np.abs(weight).max()
        assert 0 < report.allocation.scores[name]
