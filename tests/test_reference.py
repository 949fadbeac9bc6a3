"""The float reference (edgeq.reference) against transformers on tiny random HF folders, and the tiny
folders themselves (tokenizer, determinism, size)."""
from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
import pytest

from edgeq.config import ModelConfig, canonical_name
from edgeq.reference import Reference
from tiny_models import make_tiny_hf_model

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
CASES = {
    "llama-tied-bf16-llama3": dict(arch="llama", dtype="bfloat16", tied=True, rope_scaling=LLAMA3_SCALING),
    "qwen2-untied-f32-bias": dict(arch="qwen2", dtype="float32", tied=False),
    "llama-untied-f16-sharded-linear": dict(arch="llama", dtype="float16", tied=False, sharded=True,
                                            rope_scaling={"rope_type": "linear", "factor": 2.0}, seed=3),
    # qwen3: q/k norms, head_dim 24 != dim / heads 16
    "qwen3-untied-f32-headdim": dict(arch="qwen3", dtype="float32", tied=False, head_dim=24, seed=4),
    # gemma3: window 6 < the 20-token prompts, layers sliding/global, soft caps, scale 24^-0.5
    "gemma3-tied-bf16-window": dict(arch="gemma3", dtype="bfloat16", tied=True, num_hidden_layers=3, seed=5),
}


# ----------------------------------------------------------------------------------------------
# reading a folder by hand (the project's real loader lives in convert/sources.py)

def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """HF name -> float32 array; BF16 is widened by hand (numpy has no bfloat16)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    if not any(v["dtype"] == "BF16" for k, v in header.items() if k != "__metadata__"):
        from safetensors.numpy import load_file
        return {name: array.astype(np.float32) for name, array in load_file(str(path)).items()}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16"
        start, end = info["data_offsets"]
        bits = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint32) << 16
        out[name] = bits.view(np.float32).reshape(info["shape"])
    return out


def read_folder(path: pathlib.Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    hf = json.loads((path / "config.json").read_text())
    if hf["model_type"] in ("qwen3", "gemma3_text"):   # their fields as the converter reads them
        from edgeq.convert.sources import config_from_hf
        config = config_from_hf(hf, str(path))
        tensors = {}
        for name, array in read_safetensors(path / "model.safetensors").items():
            if canonical_name(name, config.arch) is not None:
                shift = config.arch == "gemma3" and name.endswith("norm.weight")   # Gemma: x (1 + w)
                tensors[canonical_name(name, config.arch)] = array + np.float32(shift)
        return config, tensors
    scaling = hf.get("rope_scaling") or {}
    config = ModelConfig(
        arch=hf["model_type"], vocab_size=hf["vocab_size"], dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf["num_key_value_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        max_seq_len=hf["max_position_embeddings"], rope_theta=hf["rope_theta"],
        norm_eps=hf["rms_norm_eps"], tied_embeddings=hf["tie_word_embeddings"],
        attn_bias=hf["model_type"] == "qwen2" or hf.get("attention_bias", False),
        rope_scaling_type=scaling.get("rope_type", scaling.get("type", "")),
        rope_scaling_factor=scaling.get("factor", 1.0),
        rope_low_freq_factor=scaling.get("low_freq_factor", 1.0),
        rope_high_freq_factor=scaling.get("high_freq_factor", 4.0),
        rope_original_max_seq_len=scaling.get("original_max_position_embeddings", 0),
    )
    files = ["model.safetensors"]
    if (path / "model.safetensors.index.json").exists():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
    tensors = {}
    for file in files:
        for name, array in read_safetensors(path / file).items():
            if canonical_name(name) is not None:
                tensors[canonical_name(name)] = array
    return config, tensors


def reference_for(path: pathlib.Path) -> Reference:
    config, tensors = read_folder(path)
    return Reference(config, tensors.__getitem__)


def token_sequence(vocab_size: int, n: int = 20, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab_size, n).tolist()


# ----------------------------------------------------------------------------------------------
# against transformers

@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    path = make_tiny_hf_model(tmp_path_factory.mktemp(request.param), **CASES[request.param])
    return request.param, path


def hf_model(path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # transformers >= 4.56 calls torch_dtype `dtype` (5.x defaults to the checkpoint's dtype: pass it)
    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if version >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **{dtype_key: torch.float32})
    return torch, model.eval()


def test_logits_match_transformers(case):
    name, path = case
    torch, model = hf_model(path)
    reference = reference_for(path)
    tokens = token_sequence(reference.config.vocab_size)
    with torch.no_grad():
        expected = model(torch.tensor([tokens])).logits[0].numpy()          # (20, vocab)
    logits = np.concatenate([reference.forward(tokens[:13]), reference.forward(tokens[13:])])
    assert logits.shape == expected.shape and logits.dtype == np.float32
    logit_range = float(expected.max() - expected.min())
    max_diff = float(np.abs(logits - expected).max())
    print(f"{name}: max |diff| {max_diff:.3g}, logit range {logit_range:.3g}, "
          f"relative {max_diff / logit_range:.3g}")
    assert logit_range > 1.0, "logits too flat to tell implementations apart"
    assert max_diff < 1e-4 * logit_range
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


def test_greedy_matches_transformers(case):
    name, path = case
    torch, model = hf_model(path)
    reference = reference_for(path)
    prompt = token_sequence(reference.config.vocab_size, n=8, seed=2)
    ids = list(prompt)
    with torch.no_grad():   # greedy by hand: generate() would stop at an eos id
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert reference.greedy(prompt, 10) == ids[len(prompt):]
    assert reference.greedy(prompt, 10) == ids[len(prompt):]   # greedy() resets the cache


def test_transformers_sees_the_rope_scaling(case):
    """The folder's rope scaling must reach transformers, or the logit test would prove nothing."""
    name, path = case
    torch, model = hf_model(path)
    reference = reference_for(path)
    rotary = model.model.rotary_emb
    if reference.config.arch == "gemma3":   # one table per layer type; the sliding one is the reference's local
        np.testing.assert_allclose(reference.local_inv_freq, rotary.sliding_attention_inv_freq.numpy(), rtol=1e-6)
        hf_inv_freq = rotary.full_attention_inv_freq.numpy()
    else:
        hf_inv_freq = rotary.inv_freq.numpy()
    np.testing.assert_allclose(reference.inv_freq, hf_inv_freq, rtol=1e-6)
    if reference.config.rope_scaling_type not in ("", "none"):
        head_dim = reference.config.head_dim
        plain = 1.0 / reference.config.rope_theta ** (np.arange(0, head_dim, 2) / head_dim)
        assert not np.allclose(hf_inv_freq, plain, rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# the reference on its own

def test_chunking_does_not_change_logits(tmp_path):
    reference = reference_for(make_tiny_hf_model(tmp_path, arch="qwen2", tied=False))
    tokens = token_sequence(reference.config.vocab_size, n=12)
    whole = reference.forward(tokens)
    reference.reset()
    one_by_one = np.concatenate([reference.forward([t]) for t in tokens])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)


def test_context_overflow_raises(tmp_path):
    reference = reference_for(make_tiny_hf_model(tmp_path, max_position_embeddings=16))
    reference.forward(list(range(10)))
    with pytest.raises(ValueError, match="context"):
        reference.forward(list(range(7)))
    reference.forward(list(range(6)))   # exactly full is fine


def test_unknown_rope_scaling_raises(tmp_path):
    config, tensors = read_folder(make_tiny_hf_model(tmp_path))
    config.rope_scaling_type = "yarn"
    with pytest.raises(ValueError, match="yarn"):
        Reference(config, tensors.__getitem__)


# ----------------------------------------------------------------------------------------------
# the tiny folders

def test_tokenizer_round_trips(tmp_path):
    from tokenizers import Tokenizer

    path = make_tiny_hf_model(tmp_path, arch="qwen2")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    config = json.loads((path / "config.json").read_text())
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    assert 300 <= config["vocab_size"] <= 400
    for text in ["Once upon a time there was a little robot.",
                 "  Unseen wörds, émoji 🙂 and\ttabs\nnew lines 12345!",
                 "<|im_start|>user\nHello<|im_end|>\n"]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert len(tokenizer.encode("Once upon a time").ids) < len("Once upon a time")   # merges learned
    special = tokenizer.encode("<|im_start|><|im_end|><|endoftext|>").ids
    assert special == [tokenizer.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")]
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer.token_to_id(tokenizer_config["eos_token"]) == config["eos_token_id"]
    assert "<|im_start|>" in tokenizer_config["chat_template"]


def test_chat_template_renders_with_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = make_tiny_hf_model(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer.encode("Hello, world!")) == "Hello, world!"


def test_folders_are_deterministic_and_small(tmp_path):
    kwargs = dict(arch="llama", dtype="bfloat16", tied=False, sharded=True, seed=5)
    a = make_tiny_hf_model(tmp_path / "a", **kwargs)
    b = make_tiny_hf_model(tmp_path / "b", **kwargs)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "model.safetensors.index.json", "model-00001-of-00002.safetensors"} <= set(files)
    for file in files:
        assert (a / file).read_bytes() == (b / file).read_bytes(), file
    c = make_tiny_hf_model(tmp_path / "c", **{**kwargs, "seed": 6})
    shard = "model-00001-of-00002.safetensors"
    assert (c / shard).read_bytes() != (a / shard).read_bytes()
    largest = make_tiny_hf_model(tmp_path / "d", dtype="float32", tied=False)
    assert sum(p.stat().st_size for p in largest.iterdir()) < 1_000_000


def test_bfloat16_weights_are_rounded_not_truncated(tmp_path):
    path = make_tiny_hf_model(tmp_path, dtype="bfloat16")
    f32 = read_folder(make_tiny_hf_model(tmp_path / "f32", dtype="float32"))[1]
    bf16 = read_folder(path)[1]
    for name, array in f32.items():
        error = np.abs(bf16[name] - array) / np.abs(array).max()
        assert error.max() < 2 ** -8, name
