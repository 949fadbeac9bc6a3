"""Export an edgeq file as a llama.cpp GGUF (architectures llama, qwen2 and qwen3): `edgeq export`.

Our uniform types store w = s·q + m (asymmetric), w = s·(q − (2^b − 1)/2) (symmetric) or
w = s·(q − 2^(b − 1)) (z types), q in 0..2^b − 1, fp16 s and m per group of G = 32/64/128 along K. A group of G is G/32 ggml blocks with the
same d (and m), so the group size never matters; the level grid does (gguf_grid has the blocks):
    asymmetric, b <= 4          -> Q4_1   d = s, m = m, the same q
    asymmetric, b == 5          -> Q5_1
    symmetric,  b <= 3          -> Q4_0   d = s/2, q' = 2q − (2^b − 1) + 8: half-integer levels are
                                          odd multiples of s/2
    symmetric,  b == 4          -> Q5_0   (q' = 2q − 15 + 16)
    symmetric,  b <= 7          -> Q8_0   (q' = 2q − (2^b − 1))
    z,          b = 4, 5, 8     -> Q4_0, Q5_0, Q8_0   d = s, the same q: ggml's own grids
    asymmetric with m = −o·s    -> Q4_0 / Q5_0 / Q8_0 when the shifted levels fit (a llama.cpp grid
                                          that `edgeq convert` kept, e.g. SmolLM2's Q8_0 embeddings)
The smallest type that holds a tensor is taken, and only when every block dequantizes with
gguf.quants to exactly our float32 values (s/2 can underflow in fp16, −o·s overflow).
Not exact: asymmetric 6- and 8-bit groups with an arbitrary min (Q8_0 has no min, Q8_1 is not a
storage type), symmetric 8-bit (its levels ±0.5 .. ±127.5 need 9 bits at d = s/2), and K not a
multiple of 32. `--type auto` re-quantizes those from our dequantized weights to the smallest
llama.cpp type with at least the tensor's bits that gguf.quants can write (Q8_0: gguf-py writes no
K-quants), or F32 when K is not a multiple of 32. f16 tensors stay F16, f32 F32, 1-D tensors
(norms, biases) F32. A forced --type is exact where the rules allow, else re-quantized.

llama's q/k rows are permuted into llama.cpp's order (edgeq keeps Hugging Face's; sources.py undoes
the same permutation on the way in). Metadata: llama.cpp's architecture keys, rope scaling (linear
as keys; llama3 as the rope_freqs tensor llama.cpp's convert_hf_to_gguf.py writes), the tokenizer
(byte-level BPE as "gpt2" with its pre-tokenizer name, sentencepiece as "llama"), the chat template.
The file is written to a temporary file and renamed into place when complete.
What a re-quantized tensor costs: KL divergence on a few chunks of the evaluation text, edgeq's
runtime on our file against llama.cpp on the export where llama-cpp-python is found (this python, or
$EDGEQ_LLAMA_CPP_PYTHON), else the numpy float reference on our dequantized weights and on the
exported ones (gguf.quants): the export's own cost, without either runtime's rounding.
Not here: K-quant or IQ output (gguf-py cannot write them), other architectures.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeq import quant_types
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile, TensorInfo, atomic_gguf_writer

from . import gguf_grid


def _gguf():
    import gguf
    return gguf


# ---------------------------------------------------------------------------------------------
# the llama.cpp types we write
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportType:
    name: str            # the --type value
    ggml: str            # gguf.GGMLQuantizationType member name
    level_bits: int      # bits of a level (16 / 32 for floats)
    has_min: bool        # blocks store m (Q4_1, Q5_1)
    file_type: str       # gguf.LlamaFileType member for general.file_type

    @property
    def ggml_type(self):
        return _gguf().GGMLQuantizationType[self.ggml]

    def is_block(self) -> bool:
        return self.level_bits < 16

    def nbytes(self, rows: int, cols: int) -> int:
        if self.is_block():
            return rows * cols // gguf_grid.BLOCK * gguf_grid.layout(self.ggml_type).nbytes()
        return rows * cols * self.level_bits // 8


EXPORT_TYPES = {t.name: t for t in (
    ExportType("q4_0", "Q4_0", 4, False, "MOSTLY_Q4_0"),
    ExportType("q4_1", "Q4_1", 4, True, "MOSTLY_Q4_1"),
    ExportType("q5_0", "Q5_0", 5, False, "MOSTLY_Q5_0"),
    ExportType("q5_1", "Q5_1", 5, True, "MOSTLY_Q5_1"),
    ExportType("q8_0", "Q8_0", 8, False, "MOSTLY_Q8_0"),
    ExportType("f16", "F16", 16, False, "MOSTLY_F16"),
    ExportType("f32", "F32", 32, False, "ALL_F32"),
)}
BLOCK_TYPES = [t for t in EXPORT_TYPES.values() if t.is_block()]       # smallest first
TYPE_CHOICES = ["auto", *EXPORT_TYPES]
ARCHITECTURES = ("llama", "qwen2", "qwen3")      # qwen3: qwen2 without biases, with q/k norms
ROWS_PER_CHUNK = 4096                  # rows read, checked and encoded at a time (a multiple of 16)
DEFAULT_KL_CHUNKS = 4                  # chunks of the evaluation text the KL of a lossy export runs on


@dataclass
class TensorExport:
    name: str
    shape: tuple[int, ...]             # numpy order: (M, K) or (n,)
    source: quant_types.QuantType
    target: ExportType
    exact: bool
    why: str = ""                      # why a re-quantized tensor is not exact

    def nbytes(self) -> int:
        rows, cols = (1, self.shape[0]) if len(self.shape) == 1 else self.shape
        return self.target.nbytes(rows, cols)


@dataclass
class ExportReport:
    output: Path
    file_bytes: int
    seconds: float
    tensors: list[TensorExport]
    kld: float | None = None           # mean KL(ours || exported) per scored token, when measured
    kld_stderr: float | None = None
    top1_agreement: float | None = None
    kl_tokens: int = 0
    kl_runtime: str = ""               # "reference" (numpy on both weight sets) or "llama.cpp"

    def exact(self) -> bool:
        return all(t.exact for t in self.tensors)

    def kind_lines(self) -> list[str]:
        """One line per (tensor kind, our type, exported type): what happened to it."""
        groups: dict[tuple, list[TensorExport]] = {}
        for t in self.tensors:
            kind = t.name.split(".", 2)[2] if t.name.startswith("blk.") else t.name
            groups.setdefault((kind, t.source.name, t.target.ggml, t.exact, t.why), []).append(t)
        lines = []
        for (kind, source, target, exact, why), members in groups.items():
            count = f" x{len(members)}" if len(members) > 1 else ""
            how = "exact" if exact else f"re-quantized ({why})"
            lines.append(f"  {kind}{count}: {source} -> {target}, {how}")
        return lines


# ---------------------------------------------------------------------------------------------
# reading our tensors in row chunks
# ---------------------------------------------------------------------------------------------

def _matrix_shape(info: TensorInfo) -> tuple[int, int]:
    return (1, info.shape[0]) if len(info.shape) == 1 else info.shape


def _chunks(info: TensorInfo, whole: bool = False):
    """(row range, grid) pieces of a tensor: grid = (levels (R, Ks), scales, mins) for uniform types,
    or a (R, K) float32 array for plain ones. whole: one piece (q/k rows permute across a tensor)."""
    rows, cols = _matrix_shape(info)
    step = rows if whole else ROWS_PER_CHUNK
    qtype = info.qtype
    if qtype.family == quant_types.PLAIN:
        values = np.asarray(info.data).view(qtype.dtype).reshape(rows, cols)
        for start in range(0, rows, step):
            yield start, min(rows, start + step), values[start:start + step].astype(np.float32)
        return
    if not qtype.is_uniform():
        raise EdgeqError(f"tensor {info.name}: the {qtype.family} family cannot be exported")
    n_tiles = -(-rows // quant_types.TILE_ROWS)
    tile_bytes = info.nbytes // n_tiles
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        first, last = start // quant_types.TILE_ROWS, -(-stop // quant_types.TILE_ROWS)
        data = np.asarray(info.data)[first * tile_bytes:last * tile_bytes]
        levels, scales, mins = quant_types.unpack(qtype, data, stop - start, cols, info.compact_tail)
        n = stop - start
        yield start, stop, (levels[:n], scales[:n], None if mins is None else mins[:n])


def _dequantized(qtype: quant_types.QuantType, grid, cols: int) -> np.ndarray:
    if qtype.family == quant_types.PLAIN:
        return grid
    levels, scales, mins = grid
    return quant_types.dequantize_levels(qtype, levels, scales, mins)[:, :cols]


# ---------------------------------------------------------------------------------------------
# exact blocks: our levels, scales and mins as ggml blocks, checked against gguf.quants
# ---------------------------------------------------------------------------------------------

def exact_blocks(qtype: quant_types.QuantType, grid, cols: int, target: ExportType) -> np.ndarray | None:
    """Rows of a uniform tensor (levels (R, >= K), scales/mins (R, groups)) as raw ggml blocks
    (R, K/32 * block bytes) of `target` that gguf.quants dequantizes to exactly our float32 values,
    or None when the target cannot hold them (see the module docstring for the mapping)."""
    if not target.is_block() or cols % gguf_grid.BLOCK or not qtype.is_uniform():
        return None
    levels, scales, mins = grid
    layout = gguf_grid.layout(target.ggml_type)
    per_group, n_blocks = qtype.group // gguf_grid.BLOCK, cols // gguf_grid.BLOCK
    q = levels[:, :cols].astype(np.int32)                                   # (R, K)
    s = np.repeat(np.asarray(scales, np.float16), per_group, axis=1)[:, :n_blocks]   # (R, K/32)
    top, zero = (1 << layout.bits) - 1, qtype.zero_point()
    if qtype.symmetric:
        with np.errstate(over="ignore"):
            m = (np.float32(-zero) * s.astype(np.float32)).astype(np.float16)
    else:
        m = np.repeat(np.asarray(mins, np.float16), per_group, axis=1)[:, :n_blocks]
    per_weight = lambda a: np.repeat(a, gguf_grid.BLOCK, axis=1)            # (R, K/32) -> (R, K)
    if layout.has_min:                       # d = s, m = m: the levels must fit
        if q.size and q.max() > top:
            return None
        d, new_q = s, q
    else:                                    # d = s/a, q' = a·q + a·m/s + o for a = 1 or 2
        for a in (1, 2):
            d = (s.astype(np.float32) / a).astype(np.float16)
            if qtype.symmetric:        # a half-integer zero point needs a = 2
                shift = np.full(s.shape, -a * zero)
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    shift = a * m.astype(np.float64) / s.astype(np.float64)
                shift[(s == 0) & (m == 0)] = 0.0
            if not np.all(np.isfinite(shift)) or np.any(shift != np.round(shift)):
                continue
            new_q = a * q + per_weight(shift.astype(np.int32)) + layout.offset
            if new_q.size == 0 or (new_q.min() >= 0 and new_q.max() <= top):
                break
        else:
            return None
    raw = gguf_grid.write_blocks(target.ggml_type, new_q.astype(np.uint8), d, m)
    theirs = np.asarray(_gguf().quants.dequantize(raw, target.ggml_type), np.float32).reshape(len(q), cols)
    ours = _dequantized(qtype, grid, cols)
    return raw if np.array_equal(ours, theirs) else None


def _plain_exact(values: np.ndarray, target: ExportType) -> np.ndarray | None:
    """Float rows stored as F16/F32 without loss, or None."""
    if target.ggml == "F32":
        return np.ascontiguousarray(values, np.float32)
    if target.ggml == "F16":
        with np.errstate(over="ignore"):
            half = values.astype(np.float16)
        return half if np.array_equal(half.astype(np.float32), values) else None
    return None


def _exact(qtype, grid, cols, target) -> np.ndarray | None:
    if qtype.family == quant_types.PLAIN:
        return _plain_exact(grid, target) if not target.is_block() else None
    if not target.is_block():
        return _plain_exact(_dequantized(qtype, grid, cols), target)
    return exact_blocks(qtype, grid, cols, target)


def _requantized(qtype, grid, cols, target: ExportType) -> np.ndarray:
    values = _dequantized(qtype, grid, cols)
    if target.ggml == "F32":
        return np.ascontiguousarray(values, np.float32)
    if target.ggml == "F16":
        return values.astype(np.float16)
    return _gguf().quants.quantize(np.ascontiguousarray(values, np.float32), target.ggml_type)


# ---------------------------------------------------------------------------------------------
# planning: one llama.cpp type per tensor
# ---------------------------------------------------------------------------------------------

def _nearest(qtype: quant_types.QuantType, cols: int) -> tuple[ExportType, str]:
    """The llama.cpp type a tensor that no type holds exactly is re-quantized to, and why."""
    if cols % gguf_grid.BLOCK:
        return EXPORT_TYPES["f32"], f"K = {cols} is not a multiple of 32"
    kind = "symmetric" if qtype.symmetric else "asymmetric"
    for target in BLOCK_TYPES:
        if target.level_bits >= qtype.bits and (target.has_min or qtype.symmetric or target.level_bits == 8):
            return target, f"no llama.cpp type holds {kind} {qtype.bits}-bit levels"
    return EXPORT_TYPES["f16"], f"no llama.cpp type holds {kind} {qtype.bits}-bit levels"


def plan_tensor(info: TensorInfo, requested: str) -> TensorExport:
    """The llama.cpp type of one tensor and whether it is exact (reads the whole tensor)."""
    rows, cols = _matrix_shape(info)
    qtype = info.qtype
    if len(info.shape) == 1:                                 # norms, biases: llama.cpp wants F32
        return TensorExport(info.name, info.shape, qtype, EXPORT_TYPES["f32"], True)
    if requested == "auto":
        if qtype.family == quant_types.PLAIN:
            candidates = [EXPORT_TYPES["f16" if qtype.dtype == "<f2" else "f32"]]
        else:
            candidates = list(BLOCK_TYPES)
    else:
        candidates = [EXPORT_TYPES[requested]]
    if requested != "auto" and candidates[0].is_block() and cols % gguf_grid.BLOCK:
        return TensorExport(info.name, info.shape, qtype, EXPORT_TYPES["f16"], False,
                            f"K = {cols} is not a multiple of 32; F16 as llama.cpp's converter does")
    for _, _, grid in _chunks(info):
        candidates = [t for t in candidates if _exact(qtype, grid, cols, t) is not None]
        if not candidates:
            break
    if candidates:
        return TensorExport(info.name, info.shape, qtype, candidates[0], True)
    if requested == "auto":
        target, why = _nearest(qtype, cols)
    else:
        target = EXPORT_TYPES[requested]
        why = f"{qtype.name} levels do not fit {target.ggml}"
    return TensorExport(info.name, info.shape, qtype, target, False, why)


def encode_tensor(info: TensorInfo, entry: TensorExport, permute_heads: int | None) -> np.ndarray:
    """The tensor's bytes in llama.cpp's layout: (M, row bytes) for matrices, (n,) for vectors;
    rows permuted for llama's q/k when permute_heads is the head count."""
    rows, cols = _matrix_shape(info)
    parts = []
    for _, _, grid in _chunks(info, whole=permute_heads is not None):
        part = _exact(info.qtype, grid, cols, entry.target) if entry.exact else None
        if entry.exact and part is None:
            raise AssertionError(f"{info.name}: planned as exact, not exact on the second read")
        parts.append(part if part is not None else _requantized(info.qtype, grid, cols, entry.target))
    data = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    if len(info.shape) == 1:                  # a vector (llama's q/k biases permute like rows)
        data = data.reshape(-1, 1)
        return (permute_rows(data, permute_heads) if permute_heads is not None else data).reshape(-1)
    data = data.reshape(rows, -1)
    return permute_rows(data, permute_heads) if permute_heads is not None else data


def permute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face's q/k row order (RoPE pairs i, i + head_dim/2) -> llama.cpp's (pairs 2i, 2i + 1),
    as convert_hf_to_gguf.py's LlamaModel.permute; sources._unpermute_rows is the inverse."""
    n = rows.shape[0]
    return (rows.reshape(n_heads, 2, n // n_heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def _permute_heads(config, name: str) -> int | None:
    if config.arch != "llama":
        return None
    kind = name.split(".")[-2] if name.startswith("blk.") else ""
    return {"attn_q": config.n_heads, "attn_k": config.n_kv_heads}.get(kind)


# ---------------------------------------------------------------------------------------------
# metadata: architecture, rope, tokenizer
# ---------------------------------------------------------------------------------------------

def llama3_rope_factors(config) -> np.ndarray:
    """(head_dim/2,) float32 factors llama.cpp divides each RoPE frequency by (rope_freqs.weight),
    as convert_hf_to_gguf.py computes them for Hugging Face's "llama3" rope scaling."""
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)
    factor, low, high = config.rope_scaling_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    old = config.rope_original_max_seq_len
    wavelen = 2 * math.pi / inv_freq
    smooth = (old / wavelen - low) / (high - low)
    factors = np.where(wavelen < old / high, 1.0,
                       np.where(wavelen > old / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _add_architecture(writer, config) -> None:
    gguf = _gguf()
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim * config.n_heads != config.dim:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if config.rope_scaling_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling_factor)
    elif config.rope_scaling_type not in ("none", "llama3"):      # llama3: the rope_freqs tensor
        raise EdgeqError(f"rope scaling {config.rope_scaling_type!r} cannot be exported")


# tokenizer.json pre-tokenizer steps -> llama.cpp's tokenizer.ggml.pre names (gguf_tokenizer's table,
# read backwards); "gpt2-bytelevel" is ByteLevel's own regex (use_regex true)
def _pre_tokenizer_names() -> dict[tuple[str, ...], str]:
    from .gguf_tokenizer import PRE_TOKENIZER_REGEXES
    gpt2 = PRE_TOKENIZER_REGEXES["gpt-2"][0]
    return {tuple("gpt2-bytelevel" if r == gpt2 else r for r in regexes): name
            for name, regexes in PRE_TOKENIZER_REGEXES.items()}


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer.json's pre-tokenizer, or EdgeqError."""
    from .gguf_tokenizer import PRE_TOKENIZER_REGEXES
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    signature = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("use_regex", True):
                signature.append("gpt2-bytelevel")
            break                            # what follows ByteLevel splits bytes, not words
        if kind == "Digits":
            signature.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "Split" and "Regex" in (step.get("pattern") or {}) and step.get("behavior") == "Isolated" \
                and not step.get("invert"):
            regex = step["pattern"]["Regex"]
            signature.append("gpt2-bytelevel" if regex == PRE_TOKENIZER_REGEXES["gpt-2"][0] else regex)
        else:
            signature.append(f"<{kind}>")
    name = _pre_tokenizer_names().get(tuple(signature))
    if name is None:
        raise EdgeqError("the tokenizer's pre-tokenizer is not one llama.cpp names (known: "
                         f"{', '.join(sorted(set(_pre_tokenizer_names().values())))}); it cannot be exported")
    return name


def _add_bpe_tokenizer(writer, spec, vocab_size: int) -> None:
    from .gguf_tokenizer import TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED
    data = json.loads(spec.data)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise EdgeqError("only byte-level BPE tokenizer.json tokenizers (and sentencepiece) can be exported")
    tokens: dict[int, str] = {int(i): text for text, i in model["vocab"].items()}
    types = {i: TOKEN_NORMAL for i in tokens}
    for added in data.get("added_tokens") or []:
        tokens[int(added["id"])] = added["content"]
        types[int(added["id"])] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    size = max(vocab_size, max(tokens) + 1)
    if size > vocab_size:
        raise EdgeqError(f"the tokenizer has ids up to {size - 1}, beyond the model's {vocab_size} embeddings")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(data))
    # ids the tokenizer lacks (a vocabulary padded for speed, as Qwen2.5's) are named as llama.cpp's converter does
    writer.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(size)])
    writer.add_token_types([types.get(i, TOKEN_UNUSED) for i in range(size)])
    merges = model.get("merges") or []
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    padding = data.get("padding") or {}
    unknown = model.get("unk_token")
    pad_id = spec.pad_id if spec.pad_id is not None else padding.get("pad_id")
    unk_id = spec.unk_id if spec.unk_id is not None else model["vocab"].get(unknown) if isinstance(unknown, str) else None
    for value, add in ((pad_id, writer.add_pad_token_id), (unk_id, writer.add_unk_token_id)):
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size:
            add(value)


def _add_sentencepiece_tokenizer(writer, spec, vocab_size: int) -> None:
    import sentencepiece
    from .gguf_tokenizer import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED
    processor = sentencepiece.SentencePieceProcessor(model_proto=bytes(spec.data))
    n = processor.get_piece_size()
    if n > vocab_size:
        raise EdgeqError(f"the tokenizer has {n} pieces, more than the model's {vocab_size} embeddings")
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        if i >= n:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(processor.id_to_piece(i))
        scores.append(processor.get_score(i))
        types.append(TOKEN_UNKNOWN if processor.is_unknown(i) else TOKEN_CONTROL if processor.is_control(i)
                     else TOKEN_BYTE if processor.is_byte(i) else TOKEN_UNUSED if processor.is_unused(i)
                     else TOKEN_NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    unk_id = spec.unk_id if spec.unk_id is not None else processor.unk_id()
    if 0 <= unk_id < vocab_size:
        writer.add_unk_token_id(unk_id)
    if spec.pad_id is not None and 0 <= spec.pad_id < vocab_size:
        writer.add_pad_token_id(spec.pad_id)


def _add_tokenizer(writer, spec, vocab_size: int) -> None:
    if spec.kind == "hf-json":
        _add_bpe_tokenizer(writer, spec, vocab_size)
    elif spec.kind == "sentencepiece":
        _add_sentencepiece_tokenizer(writer, spec, vocab_size)
    else:
        raise EdgeqError(f"tokenizer kind {spec.kind!r} cannot be exported")
    if spec.bos_id is not None:
        writer.add_bos_token_id(spec.bos_id)
    if spec.eos_id is not None:
        writer.add_eos_token_id(spec.eos_id)
    writer.add_add_bos_token(bool(spec.add_bos))
    writer.add_add_eos_token(False)
    if spec.chat_template:
        writer.add_chat_template(spec.chat_template)


def _file_type(entries: list[TensorExport]):
    """general.file_type: the type most matrix weights (not embeddings or head) were written as."""
    weights = [e.target for e in entries if len(e.shape) == 2 and e.name.startswith("blk.")] or \
              [e.target for e in entries if len(e.shape) == 2]
    return _gguf().LlamaFileType[Counter(t.file_type for t in weights).most_common(1)[0][0]]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def _write(path: Path, model: ModelFile, entries: list[TensorExport], tensor_bytes: Callable) -> None:
    """Header and tensors through atomic_gguf_writer (no partial file on any error)."""
    gguf = _gguf()
    config = model.config
    with atomic_gguf_writer(path, lambda tmp: gguf.GGUFWriter(tmp, config.arch)) as writer:
        writer.add_type("model")
        writer.add_name(model.gguf.value("general.name") or model.path.stem)
        writer.add_string("general.quantized_by", "edgeq export")
        _add_architecture(writer, config)
        writer.add_file_type(_file_type(entries))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, model.tokenizer, config.vocab_size)
        extra = []
        if config.rope_scaling_type == "llama3":
            extra.append(("rope_freqs.weight", llama3_rope_factors(config)))
        for name, array in extra:
            writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
        for entry in entries:
            if entry.target.is_block():
                rows, cols = _matrix_shape_of(entry.shape)
                byte_shape = (rows, entry.nbytes() // rows)
                writer.add_tensor_info(entry.name, byte_shape, np.dtype(np.uint8), entry.nbytes(),
                                       raw_dtype=entry.target.ggml_type)
            else:
                dtype = np.dtype(np.float16 if entry.target.ggml == "F16" else np.float32)
                writer.add_tensor_info(entry.name, entry.shape, dtype, entry.nbytes())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, array in extra:
            writer.write_tensor_data(array)
        for entry in entries:
            data = tensor_bytes(entry)
            if data.nbytes != entry.nbytes():
                raise AssertionError(f"{entry.name}: {data.nbytes} bytes, planned {entry.nbytes()}")
            writer.write_tensor_data(np.ascontiguousarray(data))


def _matrix_shape_of(shape: tuple[int, ...]) -> tuple[int, int]:
    return (1, shape[0]) if len(shape) == 1 else shape


# ---------------------------------------------------------------------------------------------
# the cost of a lossy export
# ---------------------------------------------------------------------------------------------

def exported_tensor_loader(path: Path, config) -> Callable[[str], np.ndarray]:
    """name -> float32 tensor of an exported GGUF, dequantized with gguf.quants, in edgeq's
    (Hugging Face) q/k row order."""
    from .sources import _unpermute_rows
    gguf = _gguf()
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}

    def load(name: str) -> np.ndarray:
        tensor = tensors[name]
        shape = config.tensor_shape(name)
        weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)
        heads = _permute_heads(config, name)
        return _unpermute_rows(weight, heads) if heads is not None else weight
    return load


KL_RUNTIMES = ("auto", "reference", "llama.cpp")
LLAMA_PYTHON_ENV = "EDGEQ_LLAMA_CPP_PYTHON"   # a python that imports llama_cpp, for the llama.cpp KL

# llama.cpp's logits of token chunks, in a child process (llama-cpp-python may live in another
# environment): argv = model.gguf chunks.npy out.npy threads; writes (chunks, ctx - 1 - ctx/2, vocab)
# float32 logits at positions ctx/2 .. ctx-2 (the ones llama-perplexity scores) to out.npy.
LLAMA_LOGITS = r"""
import sys
import numpy as np
import llama_cpp
path, chunks_file, out_file, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
chunks = np.load(chunks_file)
ctx = chunks.shape[1]
first = ctx // 2
llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                      n_threads=threads, n_threads_batch=threads, verbose=False)
out = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.float32,
                                shape=(len(chunks), ctx - 1 - first, llm.n_vocab()))
for i, chunk in enumerate(chunks):
    llm.reset()
    llm.eval([int(t) for t in chunk])
    out[i] = np.asarray(llm.scores[first:ctx - 1], dtype=np.float32)
out.flush()
"""


def llama_cpp_python() -> str | None:
    """A python that imports llama_cpp: $EDGEQ_LLAMA_CPP_PYTHON, else this one if it can, else None."""
    import importlib.util
    import sys
    if os.environ.get(LLAMA_PYTHON_ENV):
        return os.environ[LLAMA_PYTHON_ENV]
    return sys.executable if importlib.util.find_spec("llama_cpp") is not None else None


def _llama_cpp_logits(python: str, exported: Path, batch: np.ndarray, threads: int, folder: Path) -> np.ndarray:
    import subprocess
    np.save(folder / "chunks.npy", batch)
    result = subprocess.run([python, "-c", LLAMA_LOGITS, str(exported), str(folder / "chunks.npy"),
                             str(folder / "logits.npy"), str(threads)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise EdgeqError(f"llama.cpp ({python}) could not run {exported}: {last}")
    return np.load(folder / "logits.npy", mmap_mode="r")


def export_kl(model: ModelFile, exported: Path, changed: set[str], text: str, chunks: int,
              ctx: int = 512, runtime: str = "auto", threads: int | None = None) -> tuple[float, float, float, int, str]:
    """KL(ours || exported), its standard error, top-1 agreement, the scored token count and the
    runtime used, on the first `chunks` chunks of `text` (llama-perplexity's convention).
    runtime "llama.cpp": edgeq's runtime on our file, llama.cpp on the export (its own kernels'
    rounding included); "reference": the numpy float reference on both weight sets (tensors not in
    `changed` shared, not loaded twice); "auto": llama.cpp when a python with llama_cpp is found."""
    from edgeq.model import check_threads, load
    from edgeq.perplexity import make_chunks, scored_positions, tokenize_text
    from edgeq.reference import Reference
    from edgeq.tokenizer import Tokenizer
    if runtime not in KL_RUNTIMES:
        raise EdgeqError(f"unknown KL runtime {runtime!r}; known: {', '.join(KL_RUNTIMES)}")
    python = llama_cpp_python() if runtime != "reference" else None
    if runtime == "llama.cpp" and python is None:
        raise EdgeqError(f"llama.cpp is not available: install llama-cpp-python or set {LLAMA_PYTHON_ENV}")
    config = model.config
    ctx = min(ctx, config.max_seq_len)
    tokenizer = Tokenizer(model.tokenizer)
    batch = make_chunks(tokenize_text(tokenizer, text), ctx, "llama", tokenizer.bos_id, tokenizer.add_bos, chunks)
    rows = scored_positions(ctx, "llama")
    scored = slice(rows.start, rows.stop)
    kld, same = [], []

    def score(ours_logits: np.ndarray, their_logits: np.ndarray) -> None:
        log_p, log_q = _log_softmax(ours_logits), _log_softmax(their_logits)
        kld.append(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))
        same.append(np.argmax(log_p, axis=-1) == np.argmax(log_q, axis=-1))

    if python is not None:
        from edgeq import _ffi
        threads = check_threads(threads) or _ffi.physical_cores()
        with tempfile.TemporaryDirectory(prefix="edgeq-export-kl-") as folder:
            theirs = _llama_cpp_logits(python, exported, batch, threads, Path(folder))
            with load(model.path, threads=threads, ctx=ctx) as ours:
                for i, chunk in enumerate(batch):
                    score(ours.logits(chunk.tolist())[scored], np.asarray(theirs[i]))
            del theirs
        used = "llama.cpp"
    else:
        ours = Reference(config, model.load)
        load_exported = exported_tensor_loader(exported, config)
        theirs = Reference(config, lambda name: load_exported(name) if name in changed else ours.weights[name])
        for chunk in batch:
            ours.reset()
            theirs.reset()
            score(ours.forward(chunk)[scored], theirs.forward(chunk)[scored])
        used = "reference"
    kld, same = np.concatenate(kld), np.concatenate(same)
    stderr = float(kld.std(ddof=1) / math.sqrt(len(kld))) if len(kld) > 1 else 0.0
    return float(kld.mean()), stderr, float(same.mean()), len(kld), used


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

def export_gguf(model_path: str | os.PathLike, output: str | os.PathLike, type_name: str = "auto",
                kl_chunks: int = DEFAULT_KL_CHUNKS, text: str | None = None, kl_runtime: str = "auto",
                threads: int | None = None) -> ExportReport:
    """Write the edgeq file at `model_path` as a llama.cpp GGUF at `output` (see the module docstring).
    kl_chunks: chunks of `text` (default: the shipped evaluation text) to measure the KL divergence of
    re-quantized tensors on; 0 skips it. Nothing is measured when every tensor is exact.
    kl_runtime: what runs the two models (export_kl): auto, reference or llama.cpp."""
    start = time.perf_counter()
    if type_name not in TYPE_CHOICES:
        raise EdgeqError(f"unknown export type {type_name!r}; known: {', '.join(TYPE_CHOICES)}")
    if kl_runtime not in KL_RUNTIMES:
        raise EdgeqError(f"unknown KL runtime {kl_runtime!r}; known: {', '.join(KL_RUNTIMES)}")
    if kl_chunks < 0:
        raise EdgeqError(f"kl_chunks must be 0 or more, got {kl_chunks}")
    from edgeq.model import check_model_path
    model = ModelFile(check_model_path(model_path))
    output = Path(output)
    if output.exists() and output.resolve() == model.path.resolve():
        raise EdgeqError(f"{output}: the output would overwrite the model; choose another name")
    config = model.config
    if config.arch not in ARCHITECTURES:
        raise EdgeqError(f"{model.path}: architecture {config.arch!r} cannot be exported ({', '.join(ARCHITECTURES)})")
    entries = [plan_tensor(model.tensors[name], type_name) for name in config.tensor_names()]
    _write(output, model, entries,
           lambda entry: encode_tensor(model.tensors[entry.name], entry, _permute_heads(config, entry.name)))
    report = ExportReport(output, output.stat().st_size, 0.0, entries)
    changed = {e.name for e in entries if not e.exact}
    if changed and kl_chunks:
        from edgeq.data import text_path
        from edgeq.perplexity import read_text
        text = read_text(text_path("evaluation")) if text is None else text
        (report.kld, report.kld_stderr, report.top1_agreement, report.kl_tokens,
         report.kl_runtime) = export_kl(model, output, changed, text, kl_chunks, runtime=kl_runtime, threads=threads)
    report.seconds = time.perf_counter() - start
    return report
