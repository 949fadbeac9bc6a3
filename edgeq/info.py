"""`edgeq info`: what a converted file holds and what it needs to run."""
from __future__ import annotations

import os

from . import _ffi
from .fileformat import ModelFile

BATCH = 64            # tokens the runtime evaluates together (native/src/model.c BATCH)

def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


KV_Q8_BLOCK = 32     # values per fp16 scale in the int8 KV cache (native/src/kernels.h EQ_KV_Q8_BLOCK)
KV_Q4_BLOCK = 32     # values per fp16 scale in the int4 value cache (native/src/kernels.h EQ_KV_Q4_BLOCK)
KV_LABELS = {"f16": "fp16", "q8": "int8", "k8v4": "int8 K + int4 V", "f32": "fp32"}


def kv_cache_bytes(config, ctx: int, kv: str = "f16") -> int:
    """Bytes of the KV cache at context `ctx` (eq_model_info.kv_bytes): K and V, per layer, token and
    KV head, head_dim values of 2 (f16) or 4 (f32) bytes; int8 (q8, and k8v4's keys): head_dim levels
    plus one fp16 scale per block of 32 (rounded up); int4 (k8v4's values): head_dim / 2 bytes (two
    levels a byte, rounded up) plus one fp16 scale per block of 32."""
    _ffi.check_kv(kv)
    d = config.head_dim
    f16, f32, int8, int4 = 2 * d, 4 * d, d + 2 * -(-d // KV_Q8_BLOCK), -(-d // 2) + 2 * -(-d // KV_Q4_BLOCK)
    key, value = {"f16": (f16, f16), "f32": (f32, f32), "q8": (int8, int8), "k8v4": (int8, int4)}[kv]
    return config.n_layers * ctx * config.n_kv_heads * (key + value)


def memory_estimate(model: ModelFile, ctx: int, kv: str = "f16", threads: int | None = None) -> dict:
    """Bytes to run at context `ctx` with KV cache type `kv` (f16, q8, k8v4, f32): mapped weights + KV cache +
    the runtime's buffers, as native/src/model.c allocates them (a batch of activations, the kernels'
    tables for the three prepared inputs of a layer: normed x (dim), attention output (q_dim), SwiGLU
    output (hidden), attention scores per thread) plus one row of logits."""
    c = model.config
    kv = kv_cache_bytes(c, ctx, kv)
    q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    wide = max(c.dim, q_dim)
    batch = BATCH * (2 * c.dim + wide + 2 * c.hidden_dim + q_dim + 2 * kv_dim) * 4

    def prepared_bytes(cols: int, readers: list[str]) -> int:   # eq_acts_reserve: per family read
        families = {model.tensors[n].qtype.family: model.tensors[n].qtype.name for n in readers if n in model.tensors}
        return sum(_ffi.prepared_bytes(name, BATCH, cols) for name in families.values())
    blocks = [f"blk.{i}." for i in range(c.n_layers)]
    x_readers = ["output.weight" if "output.weight" in model.tensors else "token_embd.weight"]
    x_readers += [b + w for b in blocks for w in ("attn_q.weight", "attn_k.weight", "attn_v.weight",
                                                   "ffn_gate.weight", "ffn_up.weight")]
    tables = (prepared_bytes(c.dim, x_readers) + prepared_bytes(q_dim, [b + "attn_output.weight" for b in blocks])
              + prepared_bytes(c.hidden_dim, [b + "ffn_down.weight" for b in blocks]))
    scores = (threads or os.cpu_count() or 1) * ctx * 4
    activations = batch + tables + scores + 4 * c.vocab_size
    weights = sum(t.nbytes for t in model.tensors.values())
    return {"weights": weights, "kv_cache": kv, "activations": activations, "total": weights + kv + activations}


def linear_bits_per_weight(model: ModelFile) -> tuple[float, int]:
    """Average stored bits per weight over the transformer blocks' linear layers (scales included)."""
    tensors = [t for t in model.tensors.values() if t.name.startswith("blk.") and len(t.shape) == 2]
    weights = sum(t.shape[0] * t.shape[1] for t in tensors)
    return (8.0 * sum(t.nbytes for t in tensors) / weights if weights else 0.0), weights


def weight_bytes_per_token(model: ModelFile) -> int:
    """Bytes of weights one decoded token reads, as the runtime counts them (eq_model_info.weight_bytes):
    every tensor once, except an untied token embedding, of which a token reads one row (a lookup).
    In today's layout: the runtime converts the padded last groups of files before "compact-tail"."""
    runtime_bytes = lambda t: t.qtype.nbytes_for_shape(t.shape)
    total = sum(runtime_bytes(t) for t in model.tensors.values())
    if not model.config.tied_embeddings:
        total -= runtime_bytes(model.tensors["token_embd.weight"])
    return total


def describe(model: ModelFile, ctx: int | None = None, tensors: bool = True, kv: str | None = None) -> str:
    """`edgeq info`'s text. kv None: a memory line per KV cache type (f16, q8, k8v4, f32), else that one's."""
    if kv is not None:
        _ffi.check_kv(kv)
    c, tok = model.config, model.tokenizer
    ctx = min(ctx or 4096, c.max_seq_len) if ctx is None else ctx
    bpw, n_linear = linear_bits_per_weight(model)
    rope = "none" if c.rope_scaling_type == "none" else f"{c.rope_scaling_type} x{c.rope_scaling_factor:g}"
    settings = model.settings
    lines = [
        f"file          {model.path} ({_mb(model.file_size())}, edgeq format {model.format_version}, "
        f"converter {model.provenance['converter_version']})",
        f"source        {model.provenance['source']} ({model.provenance['source_kind']})",
        f"architecture  {c.arch}: {c.n_layers} layers, dim {c.dim}, ffn {c.hidden_dim}, heads {c.n_heads} "
        f"(kv {c.n_kv_heads}, head dim {c.head_dim}), vocab {c.vocab_size}, context {c.max_seq_len}",
        f"rope          theta {c.rope_theta:g}, scaling {rope}; rms norm eps {c.norm_eps:g}; "
        f"tied embeddings {'yes' if c.tied_embeddings else 'no'}; qkv bias {'yes' if c.attn_bias else 'no'}",
        f"tokenizer     {tok.kind}, bos {tok.bos_id}, eos {tok.eos_id}"
        f"{' +' + ','.join(map(str, tok.extra_eos_ids)) if tok.extra_eos_ids else ''}, "
        f"add bos {'yes' if tok.add_bos else 'no'}, chat template {'yes' if tok.chat_template else 'no'}",
    ]
    if model.provenance.get("calibration_hash"):
        lines.append(f"calibration   text hash {model.provenance['calibration_hash']}, "
                     f"{settings.get('calibration_tokens', '?')} tokens")
    if settings:
        lines.append("settings      " + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())))
    lines.append(f"linear layers {bpw:.3f} bits per weight over {n_linear / 1e6:.1f}M weights (scales included)")
    per_token = weight_bytes_per_token(model)
    lines.append(f"weights read per token: {per_token} bytes ({_mb(per_token)}; the decode roofline is "
                 f"memory bandwidth / this)")
    isa = _ffi.isa()
    lines.append(f"kernels       {isa} on this machine (sets here: {', '.join(_ffi.kernel_sets())})")
    for name in sorted({t.qtype.name for t in model.tensors.values()}):
        decode, prefill = _ffi.kernel_route(name, isa, 1), _ffi.kernel_route(name, isa, BATCH)
        line = f"  {name:<10}  decode: {decode['set']} {decode['path']} ({decode['detail']})"
        if prefill != decode:
            line += f"; prefill: {prefill['set']} {prefill['path']} ({prefill['detail']})"
        lines.append(line)
    for kind in (kv,) if kv is not None else ("f16", "q8", "k8v4", "f32"):
        mem = memory_estimate(model, ctx, kind)
        lines.append(f"memory        {_mb(mem['total'])} at context {ctx} = weights {_mb(mem['weights'])} + KV cache "
                     f"{KV_LABELS[kind]} {_mb(mem['kv_cache'])} + buffers {_mb(mem['activations'])} (--kv {kind})")
    if any(t.score is not None for t in model.tensors.values()):     # a mixed-precision plan
        from edgeq.convert.allocate import summary_lines
        lines.append("")
        lines.append("per kind and depth (score: the allocator's estimated KL, nats):")
        lines += ["  " + line for line in summary_lines({t.name: (t.qtype, t.shape, t.score)
                                                          for t in model.tensors.values()}, c.n_layers)]
    if tensors:
        lines.append("")
        lines.append(f"{'tensor':<28} {'type':<8} {'shape':<14} {'bits':>4} {'group':>5} {'sym':>3} "
                     f"{'bpw':>6} {'bytes':>11} {'score':>9}  method")
        for t in model.tensors.values():
            shape = "x".join(map(str, t.shape))
            count = 1
            for d in t.shape:
                count *= d
            score = "-" if t.score is None else f"{t.score:.3g}"
            lines.append(f"{t.name:<28} {t.qtype.name:<8} {shape:<14} {t.qtype.bits:>4} {t.qtype.group or '-':>5} "
                         f"{'yes' if t.qtype.symmetric else 'no':>3} {8 * t.nbytes / count:>6.2f} {t.nbytes:>11,} "
                         f"{score:>9}  {t.method}")
        total = sum(t.nbytes for t in model.tensors.values())
        lines.append(f"{'total':<28} {'':<8} {'':<14} {'':>4} {'':>5} {'':>3} {'':>6} {total:>11,}")
    return "\n".join(lines)
