"""The float reference: a plain numpy forward pass for llama and qwen2, following Hugging Face's math.

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


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    # (T, hidden_dim) x2 -> the input of ffn_down
    return silu(gate) * up


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (T, 1, head_dim) float32 for `positions` (T,), shaped to broadcast over heads."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (T, head_dim/2)
    angles = np.concatenate([angles, angles], axis=-1)                  # (T, head_dim)
    return np.cos(angles).astype(np.float32)[:, None], np.sin(angles).astype(np.float32)[:, None]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # x (T, heads, head_dim), Hugging Face's rotate_half convention
    return x * cos + rotate_half(x) * sin


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Causal GQA attention. q (T, n_heads, head_dim) after RoPE, keys/values (S, n_kv_heads, head_dim),
    mask (T, S) True where a query must not see a key -> (T, n_heads*head_dim)."""
    T, n_heads, head_dim = q.shape
    group = n_heads // keys.shape[1]
    keys = np.repeat(keys, group, axis=1)                              # (S, n_heads, head_dim)
    values = np.repeat(values, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, keys) / np.float32(math.sqrt(head_dim))  # (n_heads, T, S)
    scores = np.where(mask, -np.inf, scores)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", probs, values).reshape(T, n_heads * head_dim)


class Reference:
    def __init__(self, config: ModelConfig, tensors: Callable[[str], np.ndarray]):
        if config.arch not in ("llama", "qwen2"):
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
        head = "token_embd.weight" if config.tied_embeddings else "output.weight"
        self.head = self.weights[head]                         # (vocab, dim)
        self.inv_freq = rope_inv_freq(config)                  # (head_dim/2,)
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
        cos, sin = rope_tables(self.inv_freq, positions)       # (T, 1, head_dim)
        # causal mask: query t (at position pos+t) sees keys 0..pos+t
        mask = np.arange(S)[None, :] > positions[:, None]      # (T, S)

        x = w["token_embd.weight"][tokens]                     # (T, dim)
        for layer in range(c.n_layers):
            p = f"blk.{layer}."
            h = rms_norm(x, w[p + "attn_norm.weight"], c.norm_eps)
            q = h @ w[p + "attn_q.weight"].T                   # (T, n_heads*head_dim)
            k = h @ w[p + "attn_k.weight"].T                   # (T, n_kv_heads*head_dim)
            v = h @ w[p + "attn_v.weight"].T
            if c.attn_bias:
                q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
            q = q.reshape(T, c.n_heads, c.head_dim)
            k = k.reshape(T, c.n_kv_heads, c.head_dim)
            v = v.reshape(T, c.n_kv_heads, c.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k_cache[layer] = np.concatenate([self.k_cache[layer], k])   # (S, n_kv_heads, head_dim)
            self.v_cache[layer] = np.concatenate([self.v_cache[layer], v])
            attn = attention(q, self.k_cache[layer], self.v_cache[layer], mask)  # (T, n_heads*head_dim)
            x = x + attn @ w[p + "attn_output.weight"].T       # (T, dim)

            h = rms_norm(x, w[p + "ffn_norm.weight"], c.norm_eps)
            gate = h @ w[p + "ffn_gate.weight"].T              # (T, hidden_dim)
            up = h @ w[p + "ffn_up.weight"].T
            x = x + swiglu(gate, up) @ w[p + "ffn_down.weight"].T

        self.pos = S
        x = rms_norm(x, w["output_norm.weight"], c.norm_eps)
        return (x @ self.head.T).astype(np.float32)            # (T, vocab)

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
