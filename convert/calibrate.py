"""Calibration: run the model layer by layer over calibration tokens, collect per-input statistics,
and (when converting) quantize each layer's linear weights as soon as their input is known.

Sequential (GPTQ's "true sequential" order inside a layer, too): the activations of every calibration
token at the current layer's input are kept, (n_seq, ctx, dim) float32; one layer's weights are loaded
from the source, its four linear inputs are formed in data-flow order
    attn_in  = rms_norm(x)            read by attn_q, attn_k, attn_v
    attn_out = attention(q, k, v)     read by attn_output
    mlp_in   = rms_norm(x + attn)     read by ffn_gate, ffn_up
    mlp_out  = swiglu(gate, up)       read by ffn_down   (gemma3: GeGLU; its post-norms and q/k norms
                                                          sit between these, as in edgeq.reference)
and at each one the statistics are taken and the layers reading it quantized; the rest of the layer
then runs on the *quantized* weights, so the next layer sees the inputs the converted model will see.
With float_target (`--float-target`) the float model's activations run beside them, so GPTQ can aim
at the float layer's output (convert/gptq.py: float_target_weight); that doubles the activations.
Memory: one layer's float weights plus the activations, never the whole model. The math is
edgeq.reference's (rms_norm, rope, attention, swiglu), not a second copy.

Statistics per input: the token count, sum of x^2 per column (E[x^2], the importance matrix) and,
for GPTQ, the Hessian XᵀX. `edgeq calibrate` runs the float model (nothing quantized) and saves the
E[x^2] of every input to a .npz file that later conversions reuse with --stats.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeq import quant_types
from edgeq.config import ModelConfig, TokenizerSpec
from edgeq.errors import EdgeqError
from edgeq.reference import (apply_rope, attention, attention_mask, gated_mlp, local_inv_freq, qk_normed,
                             rms_norm, rope_inv_freq, rope_tables)

# the input each group of linear layers shares, in data-flow order
INPUTS = {
    "attn_in": ("attn_q", "attn_k", "attn_v"),
    "attn_out": ("attn_output",),
    "mlp_in": ("ffn_gate", "ffn_up"),
    "mlp_out": ("ffn_down",),
}
HEAD_INPUT = "head_in"       # the statistics' key for the head's input (the final norm's output)
DEFAULT_TOKENS = 4096
DEFAULT_CTX = 512
STATS_FORMAT = 1
ROWS_PER_PRODUCT = 2048      # calibration tokens multiplied at once (bounds the temporaries)


# ---------------------------------------------------------------------------------------------
# calibration tokens
# ---------------------------------------------------------------------------------------------

@dataclass
class CalibrationTokens:
    tokens: np.ndarray       # (n_seq, ctx) int64, windows of the text
    text_hash: str           # sha256 of the text's UTF-8 bytes, first 16 hex digits
    path: str

    @property
    def count(self) -> int:
        return int(self.tokens.size)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def calibration_tokens(path: str | os.PathLike | None, tokenizer: TokenizerSpec, config: ModelConfig,
                       n_tokens: int = DEFAULT_TOKENS, ctx: int | None = None) -> CalibrationTokens:
    """ceil(n_tokens / ctx) windows of ctx tokens, evenly spaced over the text (deterministic).
    Without a path, the calibration text shipped in the package (never the evaluation text)."""
    from edgeq.data import text_path
    from edgeq.tokenizer import Tokenizer
    if n_tokens <= 0:
        raise EdgeqError(f"--calib-tokens {n_tokens}: give a positive number of tokens")
    if ctx is not None and not 0 < ctx <= config.max_seq_len:
        raise EdgeqError(f"--calib-ctx {ctx}: give a length from 1 to the model's context {config.max_seq_len}")
    ctx = min(ctx or DEFAULT_CTX, config.max_seq_len, n_tokens)
    path = Path(path) if path is not None else text_path("calibration")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeqError(f"{path}: no such calibration text") from None
    except IsADirectoryError:
        raise EdgeqError(f"{path}: is a folder; give a UTF-8 text file with --calib") from None
    except UnicodeDecodeError:
        raise EdgeqError(f"{path}: not UTF-8 text; give a UTF-8 text file with --calib") from None
    ids = np.asarray(Tokenizer(tokenizer).encode(text, add_special=False), dtype=np.int64) if text.strip() else \
        np.zeros(0, dtype=np.int64)
    n_seq = -(-n_tokens // ctx)
    if len(ids) < n_seq * ctx:
        raise EdgeqError(f"{path}: the calibration text has {len(ids)} tokens, fewer than the {n_seq * ctx} "
                         f"that --calib-tokens {n_tokens} (in windows of {ctx}) needs; give a longer text "
                         "or lower --calib-tokens")
    starts = np.linspace(0, len(ids) - ctx, n_seq).astype(np.int64) if n_seq > 1 else np.zeros(1, np.int64)
    windows = np.stack([ids[s:s + ctx] for s in starts])
    if windows.max(initial=0) >= config.vocab_size:
        raise EdgeqError(f"{path}: the tokenizer gives ids beyond the model's vocabulary ({config.vocab_size})")
    return CalibrationTokens(windows, text_hash(text), str(path))


# ---------------------------------------------------------------------------------------------
# statistics of one linear input
# ---------------------------------------------------------------------------------------------

@dataclass
class InputStats:
    count: int                          # tokens seen
    sum_sq: np.ndarray                  # (K,) float64, sum of x_j^2
    hessian: np.ndarray | None = None   # (K, K) float64, XᵀX (only when asked for)
    input_error: np.ndarray | None = None  # (K, K) float64, (X_float - X)ᵀX (only with a float stream)

    @classmethod
    def collect(cls, x: np.ndarray, hessian: bool, x_float: np.ndarray | None = None) -> "InputStats":
        """x (N, K) float32 [, the float model's x (N, K) at the same input] -> their statistics."""
        n, k = x.shape
        sum_sq = np.zeros(k, dtype=np.float64)
        h = np.zeros((k, k), dtype=np.float64) if hessian else None
        cross = np.zeros((k, k), dtype=np.float64) if hessian and x_float is not None else None
        for start in range(0, n, ROWS_PER_PRODUCT):
            part = x[start:start + ROWS_PER_PRODUCT]
            if h is not None:
                h += (part.T @ part).astype(np.float64)
            else:
                sum_sq += np.square(part).sum(axis=0)          # float32 within a chunk, float64 across
            if cross is not None:
                cross += ((x_float[start:start + ROWS_PER_PRODUCT] - part).T @ part).astype(np.float64)
        if h is not None:
            sum_sq = np.diag(h).copy()
        return cls(n, sum_sq, h, cross)

    @property
    def importance(self) -> np.ndarray:
        """E[x_j^2] (K,)."""
        return self.sum_sq / max(self.count, 1)


# ---------------------------------------------------------------------------------------------
# the sequential pass
# ---------------------------------------------------------------------------------------------

# quantize(layer, input name, {tensor name: float weight}, stats) -> {tensor name: (stored, restored float)}
LayerQuantizer = Callable[[int, str, dict, InputStats], dict]


def _matmul(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    # x (N, K) @ W (M, K)^T -> (N, M) float32, in row chunks
    out = np.empty((x.shape[0], weight.shape[0]), dtype=np.float32)
    for start in range(0, x.shape[0], ROWS_PER_PRODUCT):
        out[start:start + ROWS_PER_PRODUCT] = x[start:start + ROWS_PER_PRODUCT] @ weight.T
    if bias is not None:
        out += bias
    return out


def embed(load: Callable, config: ModelConfig, tokens: np.ndarray) -> np.ndarray:
    """(n_seq, ctx) ids -> (n_seq*ctx, dim) float32 embedding rows, reading the table in row chunks."""
    flat = tokens.reshape(-1)
    out = np.empty((len(flat), config.dim), dtype=np.float32)
    step = max(1, (1 << 22) // config.dim)
    for start in range(0, config.vocab_size, step):
        wanted = (flat >= start) & (flat < start + step)
        if wanted.any():
            rows = load("token_embd.weight", slice(start, min(start + step, config.vocab_size)))
            out[wanted] = rows[flat[wanted] - start]
    return out * np.float32(config.embed_scale) if config.embed_scale != 1.0 else out


def run_layers(load: Callable, config: ModelConfig, calib: CalibrationTokens,
               quantize: LayerQuantizer | None = None, hessian: bool = False,
               progress=None, float_target: bool = False,
               head: Callable[[np.ndarray], None] | None = None) -> Iterator[tuple[int, dict, dict]]:
    """Yields (layer, {input: InputStats}, {tensor name: stored tensor}) for each layer in order.
    `load(name, rows=None)` reads one float tensor; without `quantize` the float model runs and
    nothing is stored. `progress`: a tqdm-like object updated once per layer.

    float_target (with quantize and hessian): the float model runs beside the quantized one, each
    layer first on the float stream's activations X (keeping its four inputs), then on the quantized
    stream's X~; every input's statistics then also hold (X - X~)ᵀX~, from which GPTQ aims the
    quantized layer at the *float* layer's output (see float_target_weight).

    head: called once after the last layer with E[x^2] per column of the final norm's output, the
    head's input (of the stream that ran: the quantized one when `quantize` is given)."""
    c = config
    n_seq, ctx = calib.tokens.shape
    x = embed(load, c, calib.tokens)                                     # (N, dim), N = n_seq*ctx
    x_float = x.copy() if float_target else None                         # (N, dim) the float model's stream
    for layer in range(c.n_layers):
        weights = {suffix: load(f"blk.{layer}.{suffix}") for suffix in _layer_tensors(c)}
        stats, stored, float_inputs = {}, {}, {}
        if x_float is not None:
            x_float = _layer_forward(c, dict(weights), x_float, n_seq, ctx, layer,
                                     lambda input_name, inputs: float_inputs.__setitem__(input_name, inputs))

        def take(input_name: str, inputs: np.ndarray) -> None:
            stats[input_name] = InputStats.collect(inputs, hessian, float_inputs.pop(input_name, None))
            if quantize is None:
                return
            names = {f"blk.{layer}.{s}.weight": s + ".weight" for s in INPUTS[input_name]}
            result = quantize(layer, input_name, {n: weights[s] for n, s in names.items()}, stats[input_name])
            for name, (tensor, restored) in result.items():
                stored[name] = tensor
                weights[names[name]] = np.ascontiguousarray(restored, dtype=np.float32)
            if hessian:
                stats[input_name].hessian = stats[input_name].input_error = None   # free K*K floats

        x = _layer_forward(c, weights, x, n_seq, ctx, layer, take)
        del weights
        if not np.isfinite(x).all():
            raise EdgeqError(f"calibration: layer {layer} produced NaN or infinity; the weights or the "
                             "quantization of an earlier layer are broken")
        if progress is not None:
            progress.update(1)
        yield layer, stats, stored
    if head is not None:
        head(InputStats.collect(rms_norm(x, load("output_norm.weight"), c.norm_eps), False).importance)


def _layer_forward(c: ModelConfig, weights: dict, x: np.ndarray, n_seq: int, ctx: int, layer: int,
                   take: Callable[[str, np.ndarray], None]) -> np.ndarray:
    """Layer `layer` on x (N, dim) -> (N, dim), sequences of ctx tokens from position 0; `take(input,
    activations)` is called at each linear input in data-flow order and may replace that input's
    readers in `weights` before they are used."""
    positions = np.arange(ctx)
    inv_freq = local_inv_freq(c) if c.layer_is_sliding(layer) else None
    cos, sin = rope_tables(inv_freq if inv_freq is not None else rope_inv_freq(c), positions)  # (ctx, 1, head_dim)
    mask = attention_mask(c, layer, positions, ctx)                      # (ctx, ctx)
    h = rms_norm(x, weights["attn_norm.weight"], c.norm_eps)             # (N, dim)
    take("attn_in", h)
    attn = np.empty((len(x), c.n_heads * c.head_dim), dtype=np.float32)
    bias = (lambda n: weights[f"attn_{n}.bias"]) if c.attn_bias else (lambda n: None)
    for s in range(n_seq):
        rows = slice(s * ctx, (s + 1) * ctx)
        q = _matmul(h[rows], weights["attn_q.weight"], bias("q")).reshape(ctx, c.n_heads, c.head_dim)
        k = _matmul(h[rows], weights["attn_k.weight"], bias("k")).reshape(ctx, c.n_kv_heads, c.head_dim)
        v = _matmul(h[rows], weights["attn_v.weight"], bias("v")).reshape(ctx, c.n_kv_heads, c.head_dim)
        q, k = qk_normed(c, weights, "", q, k)
        attn[rows] = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask, c.attn_scale,
                               c.attn_softcap)
    del h
    take("attn_out", attn)
    out = _matmul(attn, weights["attn_output.weight"])
    x = x + (rms_norm(out, weights["post_attention_norm.weight"], c.norm_eps) if c.post_norms else out)
    del attn, out
    h = rms_norm(x, weights["ffn_norm.weight"], c.norm_eps)
    take("mlp_in", h)
    act = np.empty((len(x), c.hidden_dim), dtype=np.float32)
    for start in range(0, len(x), ROWS_PER_PRODUCT):
        part = h[start:start + ROWS_PER_PRODUCT]
        act[start:start + ROWS_PER_PRODUCT] = gated_mlp(c, part @ weights["ffn_gate.weight"].T,
                                                        part @ weights["ffn_up.weight"].T)
    del h
    take("mlp_out", act)
    out = _matmul(act, weights["ffn_down.weight"])
    return x + (rms_norm(out, weights["post_ffw_norm.weight"], c.norm_eps) if c.post_norms else out)


def _layer_tensors(config: ModelConfig) -> list[str]:
    return [name.split(".", 2)[2] for name in config.tensor_names() if name.startswith("blk.0.")]


# ---------------------------------------------------------------------------------------------
# statistics files (edgeq calibrate -o stats.npz; edgeq convert --stats stats.npz)
# ---------------------------------------------------------------------------------------------

def model_fingerprint(load: Callable, config: ModelConfig) -> str:
    """Dimensions plus the first embedding rows (rounded to fp16): tells one model's statistics from another's."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.to_dict().items() if k != "extra"},
                                       sort_keys=True).encode())
    digest.update(load("token_embd.weight", slice(0, min(8, config.vocab_size))).astype(np.float16).tobytes())
    return digest.hexdigest()[:16]


def save_stats(path: str | os.PathLike, importance: dict[str, np.ndarray], meta: dict) -> None:
    """importance: {"blk.N.<input>" or HEAD_INPUT: E[x^2] (K,)}; written to a temporary file, then renamed."""
    path = Path(path)
    if path.suffix != ".npz":
        raise EdgeqError(f"{path}: statistics files end in .npz; choose a name like stats.npz")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise EdgeqError(f"{path}: the output folder {directory} does not exist")
    tmp = directory / f".{path.name}.tmp.npz"
    try:
        np.savez(tmp, edgeq_stats=np.array(json.dumps(dict(meta, format=STATS_FORMAT), sort_keys=True)),
                 **importance)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_stats(path: str | os.PathLike, config: ModelConfig, fingerprint: str) -> tuple[dict, dict]:
    """-> ({"blk.N.<input>" and, when the file has it, HEAD_INPUT: E[x^2]}, meta), checked against this
    model; one-line errors otherwise."""
    import zipfile
    path = Path(path)
    where = f"{path}: "
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise EdgeqError(where + "no such statistics file; make one with `edgeq calibrate SRC -o stats.npz`") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        raise EdgeqError(where + "not a readable statistics file (corrupted?); make it again with "
                         "`edgeq calibrate`") from None
    try:
        meta = json.loads(str(arrays.pop("edgeq_stats")))
        if not isinstance(meta, dict):
            raise ValueError
    except (KeyError, ValueError):
        raise EdgeqError(where + "not an edgeq statistics file; make one with `edgeq calibrate`") from None
    if meta.get("format") != STATS_FORMAT:
        raise EdgeqError(where + f"statistics format {meta.get('format')!r} is not {STATS_FORMAT}; "
                         "make it again with this edgeq's `edgeq calibrate`")
    if meta.get("model") != fingerprint:
        raise EdgeqError(where + f"the statistics are of another model ({meta.get('source', '?')}); "
                         "make them for this one with `edgeq calibrate`")
    expected = {}
    for layer in range(config.n_layers):
        for input_name, readers in INPUTS.items():
            cols = config.tensor_shape(f"blk.{layer}.{readers[0]}.weight")[1]
            expected[f"blk.{layer}.{input_name}"] = cols
    if HEAD_INPUT in arrays:         # files written before it was collected have no head entry
        expected[HEAD_INPUT] = config.dim
    for key, cols in expected.items():
        array = arrays.get(key)
        if array is None or array.shape != (cols,) or array.dtype.kind != "f" \
                or not np.isfinite(array).all() or (array < 0).any():
            raise EdgeqError(where + f"entry {key} is missing or invalid (corrupted?); make the file again "
                             "with `edgeq calibrate`")
    return {key: arrays[key].astype(np.float64) for key in expected}, meta


# ---------------------------------------------------------------------------------------------
# choosing a method, and quantizing one layer's linear weights with it
# ---------------------------------------------------------------------------------------------

METHODS = ("auto", "rtn", "hqq", "gptq")
AUTO_GPTQ_MAX_BITS = 3       # auto: gptq at <= 3 bits, rtn weighted by E[x^2] at 4-6 bits, plain rtn at 8
AUTO_IMATRIX_MAX_BITS = 6


@dataclass
class MethodSettings:
    """How linear layers are quantized (`edgeq convert --method ...`). Embeddings, head and norms keep
    the plan's defaults (clip-search rtn / f32) whatever the method."""
    method: str = "auto"
    calib: str | None = None              # calibration text; None = the shipped one
    calib_tokens: int = DEFAULT_TOKENS
    calib_ctx: int | None = None          # None = min(512, the model's context)
    stats: str | None = None              # an `edgeq calibrate` file (E[x^2] per input)
    act_order: bool = False
    damp: float = 0.01
    float_target: bool = False            # gptq: aim at the float model's layer outputs (run_layers)

    def resolve(self, bits: int) -> tuple[str, bool]:
        """-> (rtn | hqq | gptq, whether it uses calibration statistics); one-line errors for
        combinations that cannot work."""
        from .plan import PLAIN_BITS
        if self.method not in METHODS:
            raise EdgeqError(f"--method {self.method} is not known; choose one of {', '.join(METHODS)}")
        if self.calib is not None and self.stats is not None:
            raise EdgeqError("give --calib (a text to calibrate on) or --stats (statistics already computed), not both")
        method = self.method
        if method == "auto":
            method = "rtn" if self.stats or bits > AUTO_GPTQ_MAX_BITS else "gptq"
            uses_data = bits not in PLAIN_BITS and (bits <= AUTO_IMATRIX_MAX_BITS or self.calib is not None
                                                    or self.stats is not None)
        else:
            uses_data = method == "gptq" or self.calib is not None or self.stats is not None
        if bits in PLAIN_BITS and self.method in ("gptq", "hqq"):
            raise EdgeqError(f"--method {self.method} writes 2-8-bit uniform types, but --bits {bits} stores plain "
                             f"{PLAIN_BITS[bits]}; use --method rtn, or --bits 2-8")
        if method == "gptq" and self.stats is not None:
            raise EdgeqError("--stats holds E[x^2] only; gptq computes its Hessians from a calibration text while "
                             "converting: give --calib FILE (or nothing for the shipped text) instead of --stats")
        if self.act_order and method != "gptq":
            raise EdgeqError("--act-order orders GPTQ's columns by calibration statistics; it needs --method gptq "
                             f"(here the method is {method}{' without calibration' if not uses_data else ''})")
        if self.float_target and method != "gptq":
            raise EdgeqError("--float-target aims GPTQ at the float model's layer outputs; it needs --method gptq "
                             f"(here the method is {method})")
        if not 0 <= self.damp < 1:
            raise EdgeqError(f"damping {self.damp} must be in [0, 1)")
        return method, uses_data


def tensor_method(method: str, uses_data: bool, settings: MethodSettings, calibration_hash: str, tokens: int) -> str:
    """What a tensor's `.method` key records: method, its settings, calibration hash and token count."""
    if method == "rtn" and not uses_data:
        return "rtn-clip-search"
    parts = [method]
    if method == "gptq":
        parts += [f"damp={settings.damp:g}", f"block={BLOCK_SIZE}", f"act_order={'yes' if settings.act_order else 'no'}",
                  f"target={'float' if settings.float_target else 'quantized'}"]
    if uses_data:
        parts += ["imatrix" if method != "gptq" else "hessian", f"calib={calibration_hash}", f"tokens={tokens}"]
    return " ".join(parts)


BLOCK_SIZE = 128


def _restore(tensor) -> np.ndarray:
    from edgeq import quant_types
    rows, cols = tensor.shape
    return quant_types.dequantize(tensor.qtype, tensor.data, rows, cols)


def _gptq_stacked(weights: dict[str, np.ndarray], qtype, stats: InputStats, settings: MethodSettings,
                  label: str) -> dict:
    """GPTQ on matrices sharing one input, stacked by rows (each padded to whole tiles, so the packed
    stack is the concatenation of the packed parts), one Cholesky for all."""
    from edgeq.quant_types import TILE_ROWS
    from .gptq import float_target_weight, gptq
    from .quantize import QuantizedTensor, _squares
    names = list(weights)
    padded = [-(-w.shape[0] // TILE_ROWS) * TILE_ROWS for w in weights.values()]
    cols = next(iter(weights.values())).shape[1]
    stack = np.zeros((sum(padded), cols), dtype=np.float32)
    offset = 0
    for name, rows in zip(names, padded):
        stack[offset:offset + weights[name].shape[0]] = weights[name]
        offset += rows
    if stats.input_error is not None:
        stack = float_target_weight(stack, stats.hessian, stats.input_error, settings.damp)
    whole = gptq(stack, qtype, stats.hessian, damp=settings.damp, block_size=BLOCK_SIZE,
                 act_order=settings.act_order, method=label)
    out, byte_offset = {}, 0
    for name in names:
        weight = weights[name]
        nbytes = qtype.nbytes(*weight.shape)
        part = QuantizedTensor(qtype, weight.shape, whole.data[byte_offset:byte_offset + nbytes], label, 0.0, 0.0)
        byte_offset += nbytes
        restored = _restore(part)
        part.sq_error, part.sq_norm = _squares(weight, restored)
        out[name] = (part, restored)
    return out


def layer_quantizer(plan: dict, method: str | dict, settings: MethodSettings, labels: dict) -> LayerQuantizer:
    """The callback run_layers calls at each linear input: quantize the layers reading it with `method`
    (one for all, or {tensor name: method} from a mixed-precision plan; types from the plan), return
    {name: (stored tensor, restored float weight)}. Tensors of one type and method that share the
    input are quantized together (gptq: one Cholesky)."""
    from . import methods
    from .quantize import quantize_plain
    method_of = (lambda name: method[name]) if isinstance(method, dict) else (lambda name: method)

    def quantize(layer: int, input_name: str, weights: dict, stats: InputStats) -> dict:
        out, by_type = {}, {}
        for name in weights:
            if name in labels:           # others (a kept source grid) stay exactly as the source has them
                by_type.setdefault((plan[name], method_of(name)), []).append(name)
        for (qtype, method), names in by_type.items():
            if qtype.family == quant_types.PLAIN:
                for name in names:
                    tensor = quantize_plain(weights[name], qtype)
                    out[name] = (tensor, tensor.data.astype(np.float32))
            elif method == "gptq":
                out.update(_gptq_stacked({n: weights[n] for n in names}, qtype, stats, settings, labels[names[0]]))
            else:
                fit = methods.hqq if method == "hqq" else methods.rtn
                for name in names:
                    tensor = fit(weights[name], qtype, stats.importance, method=labels[name])
                    out[name] = (tensor, _restore(tensor))
        return out
    return quantize


def is_calibrated_linear(name: str) -> bool:
    """blk.N.<suffix>.weight of a linear layer that reads one of INPUTS."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and \
        any(parts[2] in readers for readers in INPUTS.values())


def input_of(name: str) -> str:
    """blk.N.attn_k.weight -> blk.N.attn_in"""
    _, layer, suffix, _ = name.split(".")
    return next(f"blk.{layer}.{key}" for key, readers in INPUTS.items() if suffix in readers)


def float_statistics(load: Callable, config: ModelConfig, tokens: CalibrationTokens, desc: str,
                     progress: bool | None = None) -> dict[str, np.ndarray]:
    """The float model's E[x^2] at every linear input ({"blk.N.<input>": (K,)}) and at the head's
    (HEAD_INPUT), over the calibration tokens; a tqdm bar per layer unless progress is False."""
    from tqdm import tqdm
    importance = {}
    with tqdm(total=config.n_layers, desc=desc, unit="layer", dynamic_ncols=True, leave=False,
              disable=None if progress is None else not progress) as bar:
        for layer, stats, _ in run_layers(load, config, tokens, progress=bar,
                                          head=lambda e: importance.__setitem__(HEAD_INPUT, e)):
            for input_name, input_stats in stats.items():
                importance[f"blk.{layer}.{input_name}"] = input_stats.importance
    return importance


def calibrate(source, output: str | os.PathLike, calib: str | None = None, n_tokens: int = DEFAULT_TOKENS,
              ctx: int | None = None, progress: bool | None = None) -> dict:
    """`edgeq calibrate`: the float model's E[x^2] at every linear input and the head's, saved to
    `output` (.npz). Returns the file's metadata."""
    from .sources import open_source
    output = Path(output)
    if output.suffix != ".npz":
        raise EdgeqError(f"{output}: statistics files end in .npz; choose a name like stats.npz")
    model = open_source(source)
    tokens = calibration_tokens(calib, model.tokenizer, model.config, n_tokens, ctx)
    importance = float_statistics(model.load, model.config, tokens, "calibrating", progress)
    meta = {"model": model_fingerprint(model.load, model.config), "source": str(model.provenance["source"]),
            "calibration_hash": tokens.text_hash, "calibration_text": tokens.path, "tokens": tokens.count,
            "ctx": int(tokens.tokens.shape[1])}
    save_stats(output, importance, meta)
    return meta
