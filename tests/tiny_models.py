"""Tiny random Hugging Face model folders (llama, qwen2, qwen3, gemma3 text) for tests: real config.json, safetensors
weights (float32/float16/bfloat16, one file or sharded) and a small trained byte-level BPE tokenizer.

The weights are random, so the models say nothing useful; they exist to exercise loaders, converters,
the float reference and the runtime end to end without downloading anything. A folder is about 100 KB.
"""
from __future__ import annotations

import json
import pathlib
import struct

import numpy as np

# A built-in English paragraph to train the tokenizer on (any text encodes: the BPE is byte-level).
TOKENIZER_TEXT = """\
Once upon a time there was a little robot who lived in a small house at the edge of a quiet town.
Every morning the robot opened the window, looked at the sky and counted the birds on the roof.
Some days there were three birds, some days there were seven, and on rainy days there were none at
all. The robot wrote every number in a notebook, because it wanted to understand the world one small
piece at a time. The people of the town thought this was strange, but they liked the robot anyway:
it carried their bags up the hill, it fixed the clock in the square, and it told the children stories
about the stars. "Why do you count the birds?" asked a girl one evening. The robot thought for a long
time and then answered that numbers were the way it remembered things, and that a good memory is what
makes a friend. The girl laughed, sat down beside it, and together they counted the first stars of
the night: one, two, three, four, five, and then too many to count. She said: 'Hello, world! It's 9:30
and the temperature is 21.5 degrees.' Questions, answers, lists; names like Alice, Bob and Charlie.
"""
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]   # ids 0, 1, 2
TOKENIZER_VOCAB_SIZE = 384
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DEFAULT_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
}
ARCH_DEFAULTS = {   # architecture class, rms_norm_eps, rope_theta
    "llama": ("LlamaForCausalLM", 1e-5, 10000.0),
    "qwen2": ("Qwen2ForCausalLM", 1e-6, 1000000.0),
    "qwen3": ("Qwen3ForCausalLM", 1e-6, 1000000.0),
    "gemma3": ("Gemma3ForCausalLM", 1e-6, 1000000.0),
}
# gemma3 extras: a window shorter than the tests' prompts, global layers every second layer, soft caps
# (Gemma 3 itself has none; Gemma 2 had them, and the config supports them)
GEMMA3_DEFAULTS = {"sliding_window": 6, "layer_types": ["sliding_attention", "full_attention"],
                   "query_pre_attn_scalar": 24, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


# ----------------------------------------------------------------------------------------------
# tokenizer

def train_tokenizer():
    """A byte-level BPE (GPT-2 style) trained on TOKENIZER_TEXT; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TOKENIZER_TEXT.splitlines(keepends=True), trainer=trainer)
    return tokenizer


def _write_tokenizer(path: pathlib.Path, tokenizer, max_len: int) -> None:
    tokenizer.save(str(path / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


# ----------------------------------------------------------------------------------------------
# safetensors

def _to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (what torch does)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], dtype: str) -> int:
    """Writes float tensors in `dtype`; returns the number of data bytes. The format: an 8-byte
    little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the bytes."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        if dtype == "bfloat16":
            data = _to_bfloat16_bits(array).tobytes()
        else:
            data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)   # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for data in blobs:
            f.write(data)
    return offset


# ----------------------------------------------------------------------------------------------
# weights and config

def _random_weights(rng, arch: str, dims: dict, vocab_size: int, tied: bool) -> dict[str, np.ndarray]:
    """Hugging Face names -> float32 arrays (out, in), in the order transformers saves them."""
    dim, hidden = dims["hidden_size"], dims["intermediate_size"]
    q_dim = dims["num_attention_heads"] * dims["head_dim"]
    kv_dim = dims["num_key_value_heads"] * dims["head_dim"]

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(n=dim):   # gemma stores w of (1 + w)
        return ((0.0 if arch == "gemma3" else 1.0) + rng.standard_normal(n) * 0.1).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal((vocab_size, dim), 0.1)}
    for layer in range(dims["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        weights[prefix + "input_layernorm.weight"] = norm_weight()
        weights[prefix + "self_attn.q_proj.weight"] = normal((q_dim, dim), 0.1)
        weights[prefix + "self_attn.k_proj.weight"] = normal((kv_dim, dim), 0.1)
        weights[prefix + "self_attn.v_proj.weight"] = normal((kv_dim, dim), 0.08)
        if arch == "qwen2":
            weights[prefix + "self_attn.q_proj.bias"] = normal(q_dim, 0.1)
            weights[prefix + "self_attn.k_proj.bias"] = normal(kv_dim, 0.1)
            weights[prefix + "self_attn.v_proj.bias"] = normal(kv_dim, 0.05)
        if arch in ("qwen3", "gemma3"):
            weights[prefix + "self_attn.q_norm.weight"] = norm_weight(dims["head_dim"])
            weights[prefix + "self_attn.k_norm.weight"] = norm_weight(dims["head_dim"])
        weights[prefix + "self_attn.o_proj.weight"] = normal((dim, q_dim), 0.05)
        weights[prefix + "post_attention_layernorm.weight"] = norm_weight()
        if arch == "gemma3":
            weights[prefix + "pre_feedforward_layernorm.weight"] = norm_weight()
            weights[prefix + "post_feedforward_layernorm.weight"] = norm_weight()
        weights[prefix + "mlp.gate_proj.weight"] = normal((hidden, dim), 0.08)
        weights[prefix + "mlp.up_proj.weight"] = normal((hidden, dim), 0.08)
        weights[prefix + "mlp.down_proj.weight"] = normal((dim, hidden), 0.05)
    weights["model.norm.weight"] = norm_weight()
    if not tied:
        weights["lm_head.weight"] = normal((vocab_size, dim), 0.1)
    return weights


def _hf_config(arch, dims, vocab_size, dtype, tied, rope_scaling, bos_id, eos_id) -> dict:
    """config.json as transformers 4.x writes it (the form most hub folders have)."""
    architecture, eps, theta = ARCH_DEFAULTS[arch]
    config = {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": dims["hidden_size"],
        "head_dim": dims["head_dim"],
        "initializer_range": 0.02,
        "intermediate_size": dims["intermediate_size"],
        "max_position_embeddings": dims["max_position_embeddings"],
        "model_type": arch,
        "num_attention_heads": dims["num_attention_heads"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "rms_norm_eps": dims.get("rms_norm_eps", eps),
        "rope_scaling": rope_scaling,
        "rope_theta": dims.get("rope_theta", theta),
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if arch == "llama":
        config.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    elif arch == "qwen3":
        config.update({"attention_bias": False, "max_window_layers": dims["num_hidden_layers"],
                       "sliding_window": None, "use_sliding_window": False})
    elif arch == "gemma3":   # transformers 4.x's Gemma3TextConfig keys
        del config["hidden_act"]
        layer_types = dims.get("layer_types", GEMMA3_DEFAULTS["layer_types"])
        layer_types = (layer_types * dims["num_hidden_layers"])[:dims["num_hidden_layers"]]
        config.update({"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh",
                       "attention_bias": False, "rope_local_base_freq": 10000.0, "layer_types": layer_types,
                       **{k: dims.get(k, v) for k, v in GEMMA3_DEFAULTS.items() if k != "layer_types"}})
    else:
        config.update({"max_window_layers": dims["num_hidden_layers"], "sliding_window": None,
                       "use_sliding_window": False})
    return dict(sorted(config.items()))


def make_tiny_hf_model(path, arch="llama", dtype="float32", tied=True, sharded=False,
                       rope_scaling=None, seed=0, **dims) -> pathlib.Path:
    """Writes a tiny random HF model folder at `path` and returns it.

    dims overrides config.json fields: hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, head_dim, max_position_embeddings, rms_norm_eps,
    rope_theta, and vocab_size (>= the tokenizer's, the extra rows are padding as in real models).
    """
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCH_DEFAULTS)}")
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(SAFETENSORS_DTYPES)}")
    allowed = set(DEFAULT_DIMS) | {"rms_norm_eps", "rope_theta", "vocab_size"} | set(GEMMA3_DEFAULTS)
    if set(dims) - allowed:
        raise TypeError(f"unknown dims {sorted(set(dims) - allowed)}; allowed: {sorted(allowed)}")
    dims = {**DEFAULT_DIMS, **dims}

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    vocab_size = dims.pop("vocab_size", tokenizer.get_vocab_size())
    if vocab_size < tokenizer.get_vocab_size():
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {tokenizer.get_vocab_size()}")
    bos_id = tokenizer.token_to_id("<|endoftext|>")
    eos_id = tokenizer.token_to_id("<|im_end|>")
    _write_tokenizer(path, tokenizer, dims["max_position_embeddings"])

    config = _hf_config(arch, dims, vocab_size, dtype, tied, rope_scaling, bos_id, eos_id)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    generation_config = {"bos_token_id": bos_id, "eos_token_id": [eos_id, bos_id],
                         "do_sample": False, "transformers_version": "4.46.0"}
    (path / "generation_config.json").write_text(json.dumps(generation_config, indent=2))

    weights = _random_weights(np.random.default_rng(seed), arch, dims, vocab_size, tied)
    if not sharded:
        write_safetensors(path / "model.safetensors", weights, dtype)
        return path
    names = list(weights)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map, total_size = {}, 0
    for index, shard in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        total_size += write_safetensors(path / filename, {n: weights[n] for n in shard}, dtype)
        weight_map.update({name: filename for name in shard})
    index_json = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    return path


def plain_rtn():
    """The method for files made to test the runtime (`convert(..., method=plain_rtn())`): the default
    method calibrates, a float forward pass over 4096 tokens that is most of a tiny model's conversion
    time (a minute for SmolLM2) and tells nothing about the runtime, which is checked against the
    reference on the same file. Calibration is tested in test_calibration.py."""
    from edgeq.convert import MethodSettings
    return MethodSettings(method="rtn")
