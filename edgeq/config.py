"""The normalized model description shared by sources, the file format, the reference and the runtime.

Canonical tensor names follow llama.cpp's (token_embd.weight, blk.N.attn_q.weight, ...), but q/k rows
are in Hugging Face order (RoPE pairs dimension i with i + head_dim/2, `rotate_half`).
Linear weights are numpy (out_features, in_features).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")

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
# tensors of the newer architectures: per-head q/k norms (qwen3, gemma3) and gemma3's post-norms.
# Gemma's Hugging Face names differ: its post_attention_layernorm is a post-norm (llama's is the
# pre-feedforward norm), so the mapping depends on the architecture.
QK_NORM_TENSORS = {
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}
POST_NORM_TENSORS = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
GEMMA_FFN_NORM = "pre_feedforward_layernorm.weight"
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def layer_tensors(arch: str = "llama") -> dict[str, str]:
    """canonical suffix -> Hugging Face name inside model.layers.N, for this architecture."""
    tensors = dict(LAYER_TENSORS)
    if arch in ("qwen3", "gemma3"):
        tensors.update(QK_NORM_TENSORS)
    if arch == "gemma3":
        tensors["ffn_norm.weight"] = GEMMA_FFN_NORM
        tensors.update(POST_NORM_TENSORS)
    return tensors


def hf_name(canonical: str, arch: str = "llama") -> str:
    if canonical in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[canonical]
    _, layer, suffix = canonical.split(".", 2)
    return f"model.layers.{layer}.{layer_tensors(arch)[suffix]}"


def canonical_name(hf: str, arch: str = "llama") -> str | None:
    """Hugging Face tensor name -> canonical name, or None for tensors the runtime does not use."""
    for canonical, name in GLOBAL_TENSORS.items():
        if hf == name:
            return canonical
    parts = hf.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        suffix = ".".join(parts[3:])
        for canonical_suffix, name in layer_tensors(arch).items():
            if suffix == name:
                return f"blk.{parts[2]}.{canonical_suffix}"
    return None


@dataclass
class ModelConfig:
    """The model's hyper-parameters, each stored as the key edgeq.<field> (edgeq.fileformat). A field
    added after format version 1 needs a default here and its name in fileformat.ADDED_CONFIG_KEYS:
    readers give files that lack it this default."""
    arch: str                  # "llama" | "qwen2" | "qwen3" | "gemma3"
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
    # added with qwen3 / gemma3 (optional keys: files without them get these defaults)
    qk_norm: bool = False                  # RMSNorm per head on q and k before RoPE (attn_q_norm, attn_k_norm)
    post_norms: bool = False               # gemma3: RMSNorm on the attention and MLP outputs before the residual add
    ffn_act: str = "silu"                  # gated MLP activation: "silu" (SwiGLU) | "gelu_tanh" (GeGLU)
    embed_scale: float = 1.0               # embeddings are multiplied by this (gemma3: sqrt(dim))
    attn_scale: float = 0.0                # q.k multiplier; 0 = 1/sqrt(head_dim) (gemma3: query_pre_attn_scalar^-0.5)
    attn_softcap: float = 0.0              # scores -> cap * tanh(scores / cap) when > 0
    final_softcap: float = 0.0             # logits -> cap * tanh(logits / cap) when > 0
    sliding_window: int = 0                # keys a sliding layer's query sees, itself included
    layer_types: str = ""                  # one letter per layer: "g" global, "s" sliding window; "" = all global
    rope_local_theta: float = 0.0          # RoPE base of sliding layers (unscaled); 0 = rope_theta with scaling
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def layer_is_sliding(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer < len(self.layer_types) and self.layer_types[layer] == "s"

    @property
    def head_tensor(self) -> str:
        """The tensor the logits are multiplied with: the embedding table when tied."""
        return "token_embd.weight" if self.tied_embeddings else "output.weight"

    def tensor_names(self) -> list[str]:
        """Every canonical tensor this architecture needs, in file order."""
        names = ["token_embd.weight"]
        suffixes = list(LAYER_TENSORS) + (list(QK_NORM_TENSORS) if self.qk_norm else []) + \
            (list(POST_NORM_TENSORS) if self.post_norms else [])
        for layer in range(self.n_layers):
            for suffix in suffixes:
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
            "attn_q_norm.weight": (self.head_dim,),
            "attn_k_norm.weight": (self.head_dim,),
            "post_attention_norm.weight": (self.dim,),
            "post_ffw_norm.weight": (self.dim,),
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
    pad_id: int | None = None          # padding and unknown tokens: not used by edgeq, carried to exports
    unk_id: int | None = None
