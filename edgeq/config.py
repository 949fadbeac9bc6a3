"""The normalized model description shared by sources, the file format, the reference and the runtime.

Canonical tensor names follow llama.cpp's (token_embd.weight, blk.N.attn_q.weight, ...), but q/k rows
are in Hugging Face order (RoPE pairs dimension i with i + head_dim/2, `rotate_half`).
Linear weights are numpy (out_features, in_features).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# per-layer tensors: canonical suffix -> Hugging Face name inside model.layers.N
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(canonical: str) -> str:
    if canonical in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[canonical]
    _, layer, suffix = canonical.split(".", 2)
    return f"model.layers.{layer}.{LAYER_TENSORS[suffix]}"


def canonical_name(hf: str) -> str | None:
    """Hugging Face tensor name -> canonical name, or None for tensors the runtime does not use."""
    for canonical, name in GLOBAL_TENSORS.items():
        if hf == name:
            return canonical
    parts = hf.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        suffix = ".".join(parts[3:])
        for canonical_suffix, name in LAYER_TENSORS.items():
            if suffix == name:
                return f"blk.{parts[2]}.{canonical_suffix}"
    return None


@dataclass
class ModelConfig:
    """The model's hyper-parameters, each stored as the key edgeq.<field> (edgeq.fileformat). A field
    added after format version 1 needs a default here and its name in fileformat.ADDED_CONFIG_KEYS:
    readers give files that lack it this default."""
    arch: str                  # "llama" | "qwen2"
    vocab_size: int
    dim: int                   # hidden_size
    hidden_dim: int            # intermediate_size (SwiGLU)
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_seq_len: int
    rope_theta: float
    norm_eps: float
    tied_embeddings: bool
    attn_bias: bool            # q/k/v biases (qwen2; llama with attention_bias)
    # rope scaling, Hugging Face semantics
    rope_scaling_type: str = "none"        # "none" | "linear" | "llama3"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0      # llama3
    rope_high_freq_factor: float = 4.0     # llama3
    rope_original_max_seq_len: int = 0     # llama3
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def tensor_names(self) -> list[str]:
        """Every canonical tensor this architecture needs, in file order."""
        names = ["token_embd.weight"]
        for layer in range(self.n_layers):
            for suffix in LAYER_TENSORS:
                if suffix.endswith(".bias") and not self.attn_bias:
                    continue
                names.append(f"blk.{layer}.{suffix}")
        names.append("output_norm.weight")
        if not self.tied_embeddings:
            names.append("output.weight")
        return names

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        suffix = name.split(".", 2)[2] if name.startswith("blk.") else name
        shapes = {
            "token_embd.weight": (self.vocab_size, self.dim),
            "output.weight": (self.vocab_size, self.dim),
            "output_norm.weight": (self.dim,),
            "attn_norm.weight": (self.dim,),
            "ffn_norm.weight": (self.dim,),
            "attn_q.weight": (q_dim, self.dim),
            "attn_k.weight": (kv_dim, self.dim),
            "attn_v.weight": (kv_dim, self.dim),
            "attn_q.bias": (q_dim,),
            "attn_k.bias": (kv_dim,),
            "attn_v.bias": (kv_dim,),
            "attn_output.weight": (self.dim, q_dim),
            "ffn_gate.weight": (self.hidden_dim, self.dim),
            "ffn_up.weight": (self.hidden_dim, self.dim),
            "ffn_down.weight": (self.dim, self.hidden_dim),
        }
        return shapes[suffix]


@dataclass
class TokenizerSpec:
    kind: str                          # "hf-json" (tokenizer.json text) | "sentencepiece" (model bytes)
    data: str | bytes
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None
    extra_eos_ids: list[int] = field(default_factory=list)   # e.g. generation_config eos lists
