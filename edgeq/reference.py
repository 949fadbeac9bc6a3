"""The float reference: a plain numpy forward pass for llama, qwen2, qwen3 and gemma3 (text),
following Hugging Face's math.

Beyond llama's block: per-head q/k RMSNorm before RoPE (qwen3, gemma3); gemma3's post-norms on the
attention and MLP outputs, GeGLU (tanh gelu), embeddings scaled by sqrt(dim), attention scaled by
query_pre_attn_scalar^-0.5, sliding-window layers with their own RoPE base, and soft caps on scores
and logits when the config has them. Gemma's (1 + weight) norms are stored with the 1 added (the
converter does it, as llama.cpp's does), so every RMSNorm here multiplies by the stored weight.

It is the independent oracle for tests (checked against transformers), for calibration (activations
of the float model) and for checking the C runtime's logits and greedy tokens. It deliberately does
not try to be fast or memory-frugal: float32 everywhere, no batching, no quantized weights.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """(head_dim/2,) rotation frequencies, with HF's "linear" or "llama3" rope scaling applied."""
    head_dim = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind, factor = config.rope_scaling_type, config.rope_scaling_factor
    if kind in ("", "none", "default"):
        return inv_freq
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
        old_len = config.rope_original_max_seq_len
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return np.where(is_medium, smoothed, scaled)
    raise ValueError(f"rope scaling {kind!r} is not supported by the reference")


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x (T, dim) float32 -> x * rsqrt(mean(x^2) + eps) * w
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * weight


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    # (T, hidden_dim) x2 -> the input of ffn_down
    return silu(gate) * up


def gated_mlp(config: ModelConfig, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(T, hidden_dim) x2 -> the input of ffn_down: SwiGLU, or GeGLU when ffn_act is "gelu_tanh"."""
    if config.ffn_act == "gelu_tanh":
        return gelu_tanh(gate) * up
    return swiglu(gate, up)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    return np.tanh(x / np.float32(cap)) * np.float32(cap) if cap > 0 else x


def local_inv_freq(config: ModelConfig) -> np.ndarray | None:
    """(head_dim/2,) frequencies of sliding-window layers when they have their own base, else None."""
    if not config.rope_local_theta or not any(config.layer_is_sliding(i) for i in range(config.n_layers)):
        return None
    return 1.0 / config.rope_local_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)


def attention_mask(config: ModelConfig, layer: int, positions: np.ndarray, n_keys: int) -> np.ndarray:
    """(T, S) True where query at positions[t] must not see key s: causal, and for a sliding-window
    layer also keys sliding_window or more positions back."""
    keys = np.arange(n_keys)[None, :]
    mask = keys > positions[:, None]
    if config.layer_is_sliding(layer):
        mask |= keys <= positions[:, None] - config.sliding_window
    return mask


def qk_normed(config: ModelConfig, weights: dict, prefix: str, q: np.ndarray, k: np.ndarray):
    """Per-head RMSNorm of q (T, n_heads, head_dim) and k (T, n_kv_heads, head_dim) when the model has it."""
    if not config.qk_norm:
        return q, k
    return (rms_norm(q, weights[prefix + "attn_q_norm.weight"], config.norm_eps),
            rms_norm(k, weights[prefix + "attn_k_norm.weight"], config.norm_eps))


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (T, 1, head_dim) float32 for `positions` (T,), shaped to broadcast over heads."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (T, head_dim/2)
    angles = np.concatenate([angles, angles], axis=-1)                  # (T, head_dim)
    return np.cos(angles).astype(np.float32)[:, None], np.sin(angles).astype(np.float32)[:, None]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # x (T, heads, head_dim), Hugging Face's rotate_half convention
    return x * cos + rotate_half(x) * sin


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray, scale: float = 0.0,
              cap: float = 0.0) -> np.ndarray:
    """Causal GQA attention. q (T, n_heads, head_dim) after RoPE, keys/values (S, n_kv_heads, head_dim),
    mask (T, S) True where a query must not see a key -> (T, n_heads*head_dim). Scores are q.k times
    `scale` (0: 1/sqrt(head_dim)), then soft-capped at `cap` when it is > 0."""
    T, n_heads, head_dim = q.shape
    S, n_kv = keys.shape[:2]
    group = n_heads // n_kv
    # query head h reads kv head h // group: the group's queries are stacked as rows of one product
    # per kv head (batched matmul, BLAS; no repeated keys)
    stacked = q.transpose(1, 0, 2).reshape(n_kv, group * T, head_dim)
    scores = np.matmul(stacked, keys.transpose(1, 2, 0)).reshape(n_heads, T, S)
    scores = scores / np.float32(math.sqrt(head_dim)) if not scale else scores * np.float32(scale)
    scores = softcap(scores, cap)
    scores = np.where(mask, -np.inf, scores)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = (scores / scores.sum(axis=-1, keepdims=True)).reshape(n_kv, group * T, S)
    out = np.matmul(probs, values.transpose(1, 0, 2)).reshape(n_heads, T, head_dim)
    return out.transpose(1, 0, 2).reshape(T, n_heads * head_dim)


class Reference:
    def __init__(self, config: ModelConfig, tensors: Callable[[str], np.ndarray]):
        if config.arch not in ("llama", "qwen2", "qwen3", "gemma3"):
            raise ValueError(f"the reference does not know architecture {config.arch!r}")
        if config.n_heads % config.n_kv_heads:
            raise ValueError(f"n_heads {config.n_heads} is not a multiple of n_kv_heads {config.n_kv_heads}")
        self.config = config
        self.weights: dict[str, np.ndarray] = {}
        for name in config.tensor_names():
            array = np.ascontiguousarray(tensors(name), dtype=np.float32)
            if array.shape != config.tensor_shape(name):
                raise ValueError(f"{name}: shape {array.shape}, expected {config.tensor_shape(name)}")
            self.weights[name] = array
        head = config.head_tensor
        self.head = self.weights[head]                         # (vocab, dim)
        self.inv_freq = rope_inv_freq(config)                  # (head_dim/2,)
        self.local_inv_freq = local_inv_freq(config)           # sliding layers' own, or None
        self.reset()

    def reset(self):
        self.pos = 0
        self.k_cache = [np.zeros((0, self.config.n_kv_heads, self.config.head_dim), np.float32)
                        for _ in range(self.config.n_layers)]  # per layer (pos, n_kv_heads, head_dim)
        self.v_cache = [k.copy() for k in self.k_cache]

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens at the current position; returns logits (len(tokens), vocab) float32."""
        c, w = self.config, self.weights
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = len(tokens)
        if T == 0:
            raise ValueError("forward() needs at least one token")
        if self.pos + T > c.max_seq_len:
            raise ValueError(f"context exceeded: {self.pos} + {T} tokens > max_seq_len {c.max_seq_len}")
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise ValueError(f"token id out of range [0, {c.vocab_size})")
        positions = np.arange(self.pos, self.pos + T)
        S = self.pos + T                                       # keys visible after this call
        rotations = rope_tables(self.inv_freq, positions)      # cos, sin (T, 1, head_dim)
        local = rope_tables(self.local_inv_freq, positions) if self.local_inv_freq is not None else rotations

        x = w["token_embd.weight"][tokens]                     # (T, dim)
        if c.embed_scale != 1.0:
            x = x * np.float32(c.embed_scale)
        for layer in range(c.n_layers):
            p = f"blk.{layer}."
            # query t (at position pos+t) sees keys 0..pos+t (the last sliding_window of them if sliding)
            mask = attention_mask(c, layer, positions, S)      # (T, S)
            cos, sin = local if c.layer_is_sliding(layer) else rotations
            h = rms_norm(x, w[p + "attn_norm.weight"], c.norm_eps)
            q = h @ w[p + "attn_q.weight"].T                   # (T, n_heads*head_dim)
            k = h @ w[p + "attn_k.weight"].T                   # (T, n_kv_heads*head_dim)
            v = h @ w[p + "attn_v.weight"].T
            if c.attn_bias:
                q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
            q = q.reshape(T, c.n_heads, c.head_dim)
            k = k.reshape(T, c.n_kv_heads, c.head_dim)
            v = v.reshape(T, c.n_kv_heads, c.head_dim)
            q, k = qk_normed(c, w, p, q, k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k_cache[layer] = np.concatenate([self.k_cache[layer], k])   # (S, n_kv_heads, head_dim)
            self.v_cache[layer] = np.concatenate([self.v_cache[layer], v])
            attn = attention(q, self.k_cache[layer], self.v_cache[layer], mask, c.attn_scale,
                             c.attn_softcap)                   # (T, n_heads*head_dim)
            out = attn @ w[p + "attn_output.weight"].T         # (T, dim)
            if c.post_norms:
                out = rms_norm(out, w[p + "post_attention_norm.weight"], c.norm_eps)
            x = x + out

            h = rms_norm(x, w[p + "ffn_norm.weight"], c.norm_eps)
            gate = h @ w[p + "ffn_gate.weight"].T              # (T, hidden_dim)
            up = h @ w[p + "ffn_up.weight"].T
            out = gated_mlp(c, gate, up) @ w[p + "ffn_down.weight"].T
            if c.post_norms:
                out = rms_norm(out, w[p + "post_ffw_norm.weight"], c.norm_eps)
            x = x + out

        self.pos = S
        x = rms_norm(x, w["output_norm.weight"], c.norm_eps)
        return softcap(x @ self.head.T, c.final_softcap).astype(np.float32)   # (T, vocab)

    def greedy(self, prompt: Sequence[int], n_tokens: int) -> list[int]:
        """Resets, then greedy-decodes n_tokens new ids after the prompt."""
        self.reset()
        logits = self.forward(prompt)
        out: list[int] = []
        for _ in range(n_tokens):
            out.append(int(np.argmax(logits[-1])))
            if len(out) < n_tokens:
                logits = self.forward(out[-1:])
        return out
