"""Perplexity, and KL divergence / top-1 agreement against a base model: the project's quality stick.

Two conventions:
  * "llama" (default), llama.cpp's llama-perplexity (tools/perplexity/perplexity.cpp, `perplexity()`):
    the text (one trailing newline dropped, as `-f` does) is tokenized once as llama.cpp's
    common_tokenize(text, add_special=true, parse_special=false) does: BOS first only when the model
    adds BOS (add_bos_token), special-token text kept as ordinary text. It is cut into
    len(tokens) // ctx chunks of ctx tokens (default 512); when the model adds BOS, the first token of
    every chunk is replaced by BOS (a model with add_bos_token false, e.g. SmolLM2, keeps its text
    token). Each chunk is evaluated from an empty KV cache, and the logits at positions
    ctx/2 .. ctx-2 score the tokens ctx/2+1 .. ctx-1: ctx - 1 - ctx/2 tokens per chunk (255 of 512).
  * "gptq", the GPTQ paper's (ctx 2048 by default): the same tokenization and chunks, no BOS put in
    any chunk, every token of a chunk scored except its first (ctx - 1 per chunk).
ppl = exp(mean NLL); its standard error is llama.cpp's: ppl * sqrt(var(NLL) / (count - 1)).
With a base: KL(base || model) per scored token, top-1 agreement (equal argmax), and Δppl with
llama.cpp's covariance-aware uncertainty, all on the same chunks.

A model or base is an edgeq file (run by the C runtime) or a float source (Hugging Face folder, hub
id, llama.cpp GGUF file) run by the numpy float reference. `kv` (--kv) picks the model's KV cache type;
a base runs with fp16, so `perplexity FILE --kv q8 --base FILE` is the int8 cache's KL cost. Log-softmax is computed in float64.
Not here: strided perplexity, HellaSwag / Winogrande, or several chunks per batch.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import EdgeqError
from .tokenizer import Tokenizer

__all__ = ["CONVENTIONS", "PerplexityResult", "perplexity", "read_text", "tokenize_text", "make_chunks",
           "scored_positions"]

CONVENTIONS = {"llama": 512, "gptq": 2048}    # name -> default ctx
ROWS_PER_BLOCK = 64                           # logit rows turned into float64 at a time (memory bound)


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    tokens_scored: int
    chunks: int
    ctx: int
    convention: str
    text_tokens: int              # tokens of the whole text (chunks use the first chunks * ctx)
    bos_per_chunk: bool           # the first token of every chunk was replaced by BOS
    model: str
    seconds: float
    base: str | None = None
    base_ppl: float | None = None
    base_ppl_stderr: float | None = None
    delta_ppl: float | None = None
    delta_ppl_stderr: float | None = None
    kld: float | None = None
    kld_stderr: float | None = None
    top1_agreement: float | None = None
    top1_stderr: float | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.base is None:
            out = {k: v for k, v in out.items() if v is not None}
        return out

    def summary(self) -> str:
        bos = "BOS first in every chunk" if self.bos_per_chunk else "no BOS"
        lines = [f"{self.model}: perplexity {self.ppl:.4f} ± {self.ppl_stderr:.4f}",
                 f"  {self.convention} convention: {self.chunks} chunks of {self.ctx} tokens ({bos}), "
                 f"{self.tokens_scored} tokens scored of {self.text_tokens}, {self.seconds:.1f} s"]
        if self.base is not None:
            lines += [f"against {self.base}: perplexity {self.base_ppl:.4f} ± {self.base_ppl_stderr:.4f}",
                      f"  Δppl            {self.delta_ppl:+.4f} ± {self.delta_ppl_stderr:.4f}",
                      f"  KL divergence   {self.kld:.6f} ± {self.kld_stderr:.6f}",
                      f"  top-1 agreement {100 * self.top1_agreement:.2f}% ± {100 * self.top1_stderr:.2f}%"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# text, tokens, chunks
# ---------------------------------------------------------------------------------------------

def read_text(path) -> str:
    """A UTF-8 text file, with one trailing newline dropped (what llama.cpp's `-f` does)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgeqError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EdgeqError(f"{path}: is a folder, not a text file") from None
    except OSError as error:
        raise EdgeqError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EdgeqError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                         "convert it to UTF-8 first") from None
    return text[:-1] if text.endswith("\n") else text


def tokenize_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """llama.cpp's common_tokenize(text, add_special=true, parse_special=false): BOS first only when
    the model adds BOS; "<|im_end|>" in the text is ordinary characters."""
    ids = tokenizer.encode(text, add_special=False, special=False)
    if tokenizer.add_bos:
        ids.insert(0, tokenizer.bos_id)
    return ids


def _check_ctx(ctx: int, convention: str) -> None:
    if convention not in CONVENTIONS:
        raise EdgeqError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    if len(scored_positions(ctx, convention)) < 1:
        least = 3 if convention == "llama" else 2
        raise EdgeqError(f"ctx={ctx} scores no token with the {convention} convention; use --ctx {least} or more")


def scored_positions(ctx: int, convention: str) -> range:
    """Positions whose logits are scored (each predicts the token after it)."""
    first = ctx // 2 if convention == "llama" else 0
    return range(first, ctx - 1)


def make_chunks(tokens: Sequence[int], ctx: int, convention: str, bos_id: int | None, add_bos: bool,
                limit: int | None = None) -> np.ndarray:
    """(chunks, ctx) int64: consecutive ctx-token slices; llama convention: BOS first when add_bos."""
    n_chunks = len(tokens) // ctx
    if n_chunks < 1:
        raise EdgeqError(f"the text has {len(tokens)} tokens; one chunk needs ctx={ctx}: give a longer text "
                         "or a smaller --ctx")
    if limit is not None:
        n_chunks = min(n_chunks, limit)
    chunks = np.asarray(tokens[:n_chunks * ctx], dtype=np.int64).reshape(n_chunks, ctx)
    if convention == "llama" and add_bos:
        chunks[:, 0] = bos_id
    return chunks


# ---------------------------------------------------------------------------------------------
# the two evaluators: an edgeq file (C runtime) and a float source (numpy reference)
# ---------------------------------------------------------------------------------------------

def _starts_with_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _is_edgeq_file(path: Path) -> bool:
    if not path.is_file() or not _starts_with_gguf_magic(path):
        return False
    from .fileformat import ARCHITECTURE
    from .gguffile import GGUFFile
    # metadata only (a llama.cpp source holds tensor types edgeq files do not); a corrupt header or
    # metadata is refused here, in bounded time, whichever reader the file was meant for
    return GGUFFile(path, metadata_only=True).value("general.architecture") == ARCHITECTURE


class _RuntimeEvaluator:
    """An edgeq file through the C runtime; Model.logits evaluates from position 0 (empty cache)."""

    def __init__(self, model, owned: bool):
        self.model, self.owned = model, owned
        self.name = str(model.path)
        self.tokenizer = model.tokenizer

    @classmethod
    def open(cls, path: Path, ctx: int, threads: int | None, kv: str = "f16") -> "_RuntimeEvaluator":
        from .model import load
        return cls(load(path, threads=threads, ctx=ctx, kv=kv), owned=True)

    def logits(self, chunk: np.ndarray) -> np.ndarray:
        return self.model.logits(chunk.tolist())          # (ctx, vocab) float32

    def close(self) -> None:
        if self.owned:
            self.model.close()


class _ReferenceEvaluator:
    """A float source (HF folder, hub id, GGUF) through the numpy reference, a chunk at a time."""

    def __init__(self, spec, ctx: int):
        from edgeq.convert.sources import open_source
        from .reference import Reference
        from .model import check_ctx
        source = open_source(spec)
        self.name = str(spec)
        check_ctx(ctx, source.config.max_seq_len, spec)
        self.tokenizer = Tokenizer(source.tokenizer)
        self.reference = Reference(source.config, source.load)

    def logits(self, chunk: np.ndarray) -> np.ndarray:
        self.reference.reset()
        return self.reference.forward(chunk)              # (ctx, vocab) float32

    def close(self) -> None:
        pass


def _open(spec, ctx: int, threads: int | None, kv: str = "f16"):
    from .model import Model
    if isinstance(spec, Model):
        if ctx > spec.n_ctx:
            raise EdgeqError(f"{spec.path}: ctx={ctx} is more than the loaded context of {spec.n_ctx} tokens; "
                             f"load it with ctx={ctx} or use a smaller ctx")
        return _RuntimeEvaluator(spec, owned=False)
    path = Path(spec)
    if _is_edgeq_file(path):
        return _RuntimeEvaluator.open(path, ctx, threads, kv)
    if kv != "f16":
        raise EdgeqError(f"{spec}: kv={kv!r} needs an edgeq file (the float reference keeps no quantized KV cache)")
    if path.is_file() and not _starts_with_gguf_magic(path):     # neither kind: the common message
        from .model import check_model_path
        check_model_path(spec)
    return _ReferenceEvaluator(spec, ctx)


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)                          # (rows, vocab)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def _mean_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and llama.cpp's uncertainty of it: sqrt((E[x^2] - E[x]^2) / (n - 1))."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, 0.0
    var = float(np.mean(values * values)) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 else 0.0


def perplexity(model, text: str, *, ctx: int | None = None, convention: str = "llama",
               chunks: int | None = None, base=None, threads: int | None = None,
               progress: bool | None = None, kv: str = "f16") -> PerplexityResult:
    """Score `text` with `model` (an edgeq file path or a loaded edgeq.Model, or a float source:
    HF folder, hub id, GGUF file); with `base` (same kinds), also KL(base || model), top-1 agreement
    and Δppl on the same chunks. kv: the KV cache type of `model` when it is an edgeq file path (f16,
    q8, k8v4, f32; a loaded Model keeps its own); `base` always runs with fp16, so `--kv q8 --base` the same
    file measures what the int8 cache costs. progress: True shows a bar on stderr, False hides it, None shows it
    on a terminal. See the module docstring for the conventions."""
    from tqdm import tqdm
    if convention not in CONVENTIONS:
        raise EdgeqError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    ctx = CONVENTIONS[convention] if ctx is None else int(ctx)
    _check_ctx(ctx, convention)
    if chunks is not None and chunks < 1:
        raise EdgeqError(f"--chunks must be at least 1, got {chunks}")
    from ._ffi import check_kv
    from .model import check_threads
    check_kv(kv)
    threads = check_threads(threads)          # once, so a base model does not warn a second time
    start = time.perf_counter()
    with ExitStack() as stack:
        evaluator = _open(model, ctx, threads, kv)
        stack.callback(evaluator.close)
        tokens = tokenize_text(evaluator.tokenizer, text)
        tok = evaluator.tokenizer
        add_bos = convention == "llama" and tok.add_bos
        batch = make_chunks(tokens, ctx, convention, tok.bos_id, tok.add_bos, chunks)
        reference = None
        if base is not None:
            reference = _open(base, ctx, threads)
            stack.callback(reference.close)
            base_tokens = tokenize_text(reference.tokenizer, text)
            base_batch = make_chunks(base_tokens, ctx, convention, reference.tokenizer.bos_id,
                                     reference.tokenizer.add_bos, chunks) if len(base_tokens) >= ctx else None
            if base_tokens != tokens or base_batch is None or not np.array_equal(base_batch, batch):
                raise EdgeqError(_tokenizer_mismatch(evaluator.name, reference.name, tokens, base_tokens))

        positions = scored_positions(ctx, convention)
        rows = slice(positions.start, positions.stop)
        nll, nll_base, kld, same_top = [], [], [], []
        bar = tqdm(batch, desc="perplexity", unit="chunk", disable=None if progress is None else not progress,
                   file=sys.stderr, leave=False)
        for done, chunk in enumerate(bar, 1):
            targets = chunk[rows.start + 1:rows.stop + 1]
            logits = evaluator.logits(chunk)[rows]
            base_logits = reference.logits(chunk)[rows] if reference is not None else None
            if base_logits is not None and base_logits.shape != logits.shape:
                raise EdgeqError(f"{evaluator.name} has {logits.shape[1]} logits per token and {reference.name} "
                                 f"{base_logits.shape[1]}: they are not the same vocabulary")
            for begin in range(0, len(targets), ROWS_PER_BLOCK):
                block = slice(begin, begin + ROWS_PER_BLOCK)
                index = np.arange(len(targets[block]))
                log_p = _log_softmax(logits[block])                  # (rows, vocab) float64
                nll.append(-log_p[index, targets[block]])
                if base_logits is not None:
                    log_q = _log_softmax(base_logits[block])
                    nll_base.append(-log_q[index, targets[block]])
                    kld.append(np.sum(np.exp(log_q) * (log_q - log_p), axis=-1))
                    same_top.append(np.argmax(logits[block], axis=-1) == np.argmax(base_logits[block], axis=-1))
            if done == len(batch) or done % 10 == 0:
                bar.set_postfix(ppl=f"{math.exp(np.concatenate(nll).mean()):.4f}")
        bar.close()

    nll = np.concatenate(nll)
    mean, stderr = _mean_stderr(nll)
    ppl = math.exp(mean)
    result = PerplexityResult(ppl=ppl, ppl_stderr=ppl * stderr, tokens_scored=len(nll), chunks=len(batch),
                              ctx=ctx, convention=convention, text_tokens=len(tokens), bos_per_chunk=add_bos,
                              model=evaluator.name, seconds=0.0)
    if reference is not None:
        nll_base, kld, same_top = np.concatenate(nll_base), np.concatenate(kld), np.concatenate(same_top)
        base_mean, base_stderr = _mean_stderr(nll_base)
        base_ppl = math.exp(base_mean)
        n = len(nll)
        # llama.cpp's Δppl uncertainty: the two log-ppl means are correlated (same tokens)
        cov = (float(np.mean(nll * nll_base)) - mean * base_mean) / (n - 1) if n > 1 else 0.0
        delta_var = (ppl * stderr) ** 2 + (base_ppl * base_stderr) ** 2 - 2 * ppl * base_ppl * cov
        top1 = float(same_top.mean())
        result.base = reference.name
        result.base_ppl, result.base_ppl_stderr = base_ppl, base_ppl * base_stderr
        result.delta_ppl, result.delta_ppl_stderr = ppl - base_ppl, math.sqrt(max(delta_var, 0.0))
        result.kld, result.kld_stderr = _mean_stderr(kld)
        result.top1_agreement = top1
        result.top1_stderr = math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0
    result.seconds = time.perf_counter() - start
    return result


def _tokenizer_mismatch(name: str, base_name: str, tokens: list[int], base_tokens: list[int]) -> str:
    where = next((i for i, (a, b) in enumerate(zip(tokens, base_tokens)) if a != b), min(len(tokens), len(base_tokens)))
    if where < min(len(tokens), len(base_tokens)):
        detail = f"first difference at token {where}: {tokens[where]} vs {base_tokens[where]}"
    elif len(tokens) != len(base_tokens):
        detail = f"{len(tokens)} vs {len(base_tokens)} tokens"
    else:
        detail = "they put BOS differently into the chunks"
    return (f"{name} and the base {base_name} tokenize the text differently ({detail}); "
            "KL divergence and Δppl need the same tokenizer")
