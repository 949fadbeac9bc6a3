"""The public Python API: `edgeq.load(path)` -> Model, with generate / chat / tokenize / logits.

The Python side holds what a user configures (tokenizer, chat template, sampling, stop strings,
the context policy); the C runtime (through edgeq._ffi) does every forward pass over its KV cache.
Not here: batching several prompts, context shifting, or speculative decoding.

Context policy (also in the README):
  * The context is the KV cache length chosen at load (ctx=None: min(trained length, 4096); else
    1 .. the trained length, the same rule and message as `edgeq run/chat/info/perplexity --ctx`).
  * max_tokens: a limit (0 or more), or -1 / None for no limit but the end of the context; any other
    negative value is an EdgeqError (the CLI's -n takes the same values).
  * A prompt that does not leave room for one generated token raises EdgeqError ("the prompt has N
    tokens and the context is M ..."), before anything is evaluated.
  * chat(): when the conversation does not fit with room for the answer (min(max_tokens, ctx/4)
    tokens), the oldest turns (a user message and the replies after it) are dropped, never the
    system message nor the last turn, with an EdgeqWarning; if the system message and the last turn
    alone do not fit, EdgeqError.
  * Generation that fills the context stops there with an EdgeqWarning ("generation stopped at the
    end of the context ..."); `last_stats.stop_reason` is then "context".
  * The KV cache is kept between calls: a prompt that starts with tokens already in the cache (the
    previous prompt and answer, as in a chat) evaluates only the new tokens.

Threads (load's `threads`): None is the number of physical cores; more than the logical CPUs is
capped to them with an EdgeqWarning. One Model serves one thread at a time. A call made while another thread is inside a call
(or holds an unfinished stream) raises EdgeqError("model is in use by another thread ..."), never
waits and never interleaves two KV-cache histories. Use one Model per thread for parallel work;
several models (of the same file too) can be open in one process.
"""
from __future__ import annotations

import json
import os
import shlex
import threading
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import _ffi
from ._ffi import ContextFullError
from .errors import EdgeqError
from .fileformat import ARCHITECTURE, ModelFile
from .gguffile import GGUFFile
from .sampling import DEFAULT_MAX_TOKENS, Sampler, SamplingParams
from .tokenizer import Tokenizer

__all__ = ["load", "Model", "GenerationStats", "TokenLogprob", "log_softmax", "EdgeqWarning", "ContextFullError",
           "DEFAULT_MAX_TOKENS", "check_model_path", "check_ctx", "check_threads", "check_max_tokens"]

# prompt tokens per eq_model_eval call: the runtime's batch (native/src/model.c BATCH), so Ctrl-C and a
# cancel flag are seen after at most one batch; calls of whole batches evaluate exactly as one call does
PREFILL_CHUNK = 64
# the file's generation defaults (Hugging Face generation_config names) -> SamplingParams fields
GENERATION_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                   "repetition_penalty": "repeat_penalty"}


class EdgeqWarning(UserWarning):
    """Something the user should see but that does not stop the call (dropped turns, full context)."""


# shown every time, not once per call site (the user's own -W / filterwarnings still come first)
warnings.filterwarnings("always", category=EdgeqWarning, append=True)


@dataclass
class TokenLogprob:
    """One position's log-probabilities (natural log, float64 log-softmax of the model's logits, before
    penalties, temperature and truncation): the token's, and the `top` most likely ids with theirs."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis (what `edgeq perplexity` scores with)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _token_logprob(log_p: np.ndarray, token: int, top: int) -> TokenLogprob:
    """log_p: (vocab,) float64."""
    best = []
    if top > 0:
        ids = np.argpartition(-log_p, top - 1)[:top] if top < len(log_p) else np.arange(len(log_p))
        ids = ids[np.argsort(-log_p[ids], kind="stable")]
        best = [(int(i), float(log_p[i])) for i in ids]
    return TokenLogprob(int(token), float(log_p[token]), best)


@dataclass
class GenerationStats:
    """What the latest generate/chat call did (Model.last_stats; a stream fills it in as it runs)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0        # prompt tokens already in the KV cache, not evaluated again
    tokens: list[int] = field(default_factory=list)   # the generated ids (an end-of-generation id excluded)
    stop_reason: str = ""         # "eos" | "stop" | "length" | "context" | "cancelled" | "" (unfinished or interrupted)
    dropped_messages: int = 0     # chat: oldest messages left out to fit the context
    prompt_seconds: float = 0.0
    generate_seconds: float = 0.0
    # with logprobs=N: per generated token (an end-of-generation id included, as the model chose it)
    # its log-probability and the N most likely ids with theirs, from the untempered distribution
    logprobs: list[TokenLogprob] | None = None
    # per generated token (as `tokens`): how many characters of the answer, before a stop string cuts
    # it, were decoded once that token was added. Token i's text is answer[text_ends[i-1]:text_ends[i]];
    # a token that completes no character yet (part of a UTF-8 character, a skipped special) adds none
    text_ends: list[int] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def evaluated_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


def load(path, threads: int | None = None, ctx: int | None = None, kv_fp32: bool = False,
         kv: str = "f16") -> "Model":
    """Open a converted edgeq file. threads None: physical cores (more than the logical CPUs: capped,
    with an EdgeqWarning); ctx None: min(trained length, 4096), else 1 .. trained length; kv: the KV
    cache, "f16" (default), "q8" (int8 per block of 32 values with an fp16 scale: 0.53x the memory at
    head_dim 64), "k8v4" (keys as q8, values int4 per block of 32 with an fp16 scale: 0.41x) or "f32"
    (the same as kv_fp32=True); benchmarks/README.md "KV cache" has their cost per model."""
    return Model(path, threads=threads, ctx=ctx, kv_fp32=kv_fp32, kv=kv)


# ----------------------------------------------------------------------------------------------
# what the user asked for, checked once with the same message for load, run, chat, bench,
# perplexity and info

def convert_command(path) -> str:
    """The `edgeq convert` command that turns `path` (as the user typed it) into a 4-bit file beside it."""
    typed = os.fspath(path)
    source = typed.rstrip("/") or typed
    output = source + ".q4" if Path(source).is_dir() else str(Path(source).with_suffix(".q4"))
    return f"edgeq convert {shlex.quote(typed)} -o {shlex.quote(output)}"


def not_an_edgeq_file(path, what: str, convertible: bool = False) -> EdgeqError:
    """The one "not an edgeq file" error: what the file is instead, and what to do."""
    hint = f"convert it first: {convert_command(path)}" if convertible else \
        "give a file written by `edgeq convert`"
    return EdgeqError(f"{os.fspath(path)}: not an edgeq file ({what}); {hint}")


def check_model_path(path) -> Path:
    """Refuse, with one message each, a path that is missing, a folder (a Hugging Face one: with the
    command that converts it), unreadable, not a GGUF file, or a GGUF file of another program."""
    typed, file = os.fspath(path), Path(path)
    if file.is_dir():
        if (file / "config.json").is_file():
            raise not_an_edgeq_file(typed, "it is a Hugging Face model folder", convertible=True)
        raise not_an_edgeq_file(typed, "it is a folder")
    if not file.exists():
        raise EdgeqError(f"{typed}: no such file")
    try:
        with open(file, "rb") as f:
            head = f.read(4)
    except OSError as error:
        raise EdgeqError(f"{typed}: cannot be read ({error.strerror or error})") from None
    if head != b"GGUF":
        raise not_an_edgeq_file(typed, "it does not start with GGUF's magic bytes")
    # metadata only, bounded: a corrupt header is refused here with the loader's message
    arch = GGUFFile(file, metadata_only=True).value("general.architecture")
    if arch is not None and arch != ARCHITECTURE:
        raise not_an_edgeq_file(typed, f"a GGUF file for {arch!r}, as llama.cpp writes them", convertible=True)
    return file


def check_ctx(ctx: int, trained: int, where) -> int:
    """A context length must be 1 .. the model's trained length (run, chat, load, info, perplexity)."""
    if isinstance(ctx, bool) or not isinstance(ctx, (int, np.integer)):
        raise TypeError(f"ctx must be an integer or None, got {type(ctx).__name__}")
    if not 1 <= ctx <= trained:
        raise EdgeqError(f"{os.fspath(where)}: a context of {ctx} tokens is out of range: use 1 to {trained} "
                         f"(-c/--ctx, ctx=), the length the model was trained for")
    return int(ctx)


def check_threads(threads: int | None) -> int | None:
    """None stays None (the runtime's default: physical cores); below 1 is an error; above the number
    of logical CPUs is capped to it with an EdgeqWarning (more threads only wait for each other)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an integer or None, got {type(threads).__name__}")
    if threads < 1:
        raise EdgeqError(f"threads must be at least 1, got {threads} (-t/--threads, threads=)")
    cpus = os.cpu_count() or 1
    if threads > cpus:
        warnings.warn(EdgeqWarning(f"{threads} threads asked for, but this machine has {cpus} logical CPUs: "
                                   f"using {cpus}"), stacklevel=3)
        return cpus
    return int(threads)


def check_max_tokens(max_tokens: int | None) -> int | None:
    """max_tokens >= 0 is a limit; -1 or None: no limit but the end of the context; other values: error."""
    if max_tokens is None or max_tokens == -1:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
        raise TypeError(f"max_tokens must be an integer or None, got {type(max_tokens).__name__}")
    if max_tokens < 0:
        raise EdgeqError(f"max_tokens (-n) must be at least 0, or -1 (None) for no limit but the context; "
                         f"got {max_tokens}")
    return int(max_tokens)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _StopMatcher:
    """Holds back text that could be the start of a stop string; reports the first full match."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """-> (text safe to emit, whether a stop string was found)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[:min(found)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:length]):
                    hold = length
                    break
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _normalize_stop(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    stops = list(stop)
    if not all(isinstance(s, str) for s in stops):
        raise TypeError("stop must be a string or a list of strings")
    return stops


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _raise_exception(message):
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return time.strftime(fmt)


class Model:
    """A converted model opened for generation. See the module docstring for the context and
    thread policies. Use as a context manager, or call close()."""

    def __init__(self, path, threads: int | None = None, ctx: int | None = None, kv_fp32: bool = False,
                 kv: str = "f16"):
        _ffi.check_kv(kv)
        self.path = check_model_path(path)
        threads = check_threads(threads)
        self.file = ModelFile(self.path)
        if ctx is not None:
            ctx = check_ctx(ctx, self.file.config.max_seq_len, path)
        self.tokenizer = Tokenizer(self.file.tokenizer)
        self.defaults = self._file_defaults()
        self._handle = _ffi.model_open(self.path, threads or 0, ctx or 0, kv_fp32, kv)
        self.n_ctx = self._handle.n_ctx
        self._cached: list[int] = []     # the tokens in the KV cache, in order (len == C's n_past)
        self._lock = threading.Lock()
        self._owner: int | None = None   # thread ident holding the lock
        self._template = None
        self._stream = None              # weak reference to the last stream, so close() can end it
        self.last_stats = GenerationStats()

    # ----------------------------------------------------------------------------------------------
    # lifetime

    def close(self) -> None:
        """Free the runtime's memory. Idempotent; any later call raises EdgeqError."""
        if self._handle.closed:
            return
        stream = self._stream() if self._stream is not None else None
        if stream is not None and self._owner == threading.get_ident() and not stream.gi_running:
            stream.close()                # an unfinished stream of this thread: end it first
        with self._use():
            _ffi.model_close(self._handle)
            self._cached = []

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<edgeq.Model {str(self.path)!r}{' closed' if self.closed else ''}>"

    @property
    def info(self) -> dict:
        """The runtime's view (arch, dims, n_ctx, n_past, n_threads, bytes) plus the file's path.
        Under the model's lock, like every call into the runtime: refused while another thread uses it."""
        if self._owner == threading.get_ident():   # this thread's paused stream: no runtime call is running
            return {**_ffi.model_info(self._handle), "path": str(self.path)}
        with self._use():
            return {**_ffi.model_info(self._handle), "path": str(self.path)}

    # ----------------------------------------------------------------------------------------------
    # one thread at a time

    @contextmanager
    def _use(self):
        """Hold the model for one call or one stream; refuse (never wait) when it is taken."""
        if not self._lock.acquire(blocking=False):
            if self._owner == threading.get_ident():
                raise EdgeqError("the model is busy with an unfinished generate/chat stream in this thread; "
                                 "iterate it to the end or call its close() first")
            raise EdgeqError("model is in use by another thread (a Model serves one thread at a time; "
                             "load one Model per thread for parallel use)")
        try:
            if self._handle.closed:
                raise EdgeqError(f"{self.path}: the model is closed")
            self._owner = threading.get_ident()
            yield
        finally:
            self._owner = None
            self._lock.release()

    # ----------------------------------------------------------------------------------------------
    # the KV cache (callers hold the lock)

    def _sync_cache(self) -> None:
        """After an error or interrupt: make the token list agree with the runtime's n_past."""
        if self._handle.closed:
            return
        n_past = _ffi.model_info(self._handle)["n_past"]
        keep = min(n_past, len(self._cached))
        if n_past > keep:
            _ffi.model_truncate(self._handle, keep)
        del self._cached[keep:]

    def _eval(self, tokens: Sequence[int], logits: bool = True,
              cancel: threading.Event | None = None) -> np.ndarray | None:
        """Append tokens to the cache (in chunks), returning the last token's logits; None when
        `cancel` is set before the last chunk (the chunks evaluated so far stay in the cache)."""
        out = None
        for begin in range(0, len(tokens), PREFILL_CHUNK):
            if cancel is not None and cancel.is_set():
                return None
            chunk = list(tokens[begin:begin + PREFILL_CHUNK])
            last = begin + PREFILL_CHUNK >= len(tokens)
            self._cached.extend(chunk)       # first, so an interrupt after C returns leaves them recorded
            try:
                out = _ffi.model_eval(self._handle, chunk, logits=logits and last)
            except BaseException:
                self._sync_cache()
                raise
        return out

    def _prefill(self, tokens: list[int], cancel: threading.Event | None = None) -> tuple[np.ndarray | None, int]:
        """Make the cache hold `tokens`, evaluating only what is not already there.
        Returns the last token's logits (None: cancelled) and how many tokens were reused."""
        reuse = min(_common_prefix(self._cached, tokens), len(tokens) - 1)   # the last one gives the logits
        if reuse < len(self._cached):
            _ffi.model_truncate(self._handle, reuse)
            del self._cached[reuse:]
        return self._eval(tokens[reuse:], cancel=cancel), reuse

    def reset(self) -> None:
        """Empty the KV cache (the next prompt is evaluated from scratch)."""
        with self._use():
            _ffi.model_truncate(self._handle, 0)
            self._cached = []

    # ----------------------------------------------------------------------------------------------
    # tokens

    def tokenize(self, text: str, add_special: bool = True, special: bool = True) -> list[int]:
        """text -> ids, as generate() sees a prompt: BOS when the model wants one (add_special),
        special-token text such as "<|im_end|>" as its id (special)."""
        return self.tokenizer.encode(text, add_special=add_special, special=special)

    def detokenize(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def prompt_logprobs(self, tokens: Sequence[int], top: int = 0,
                        cancel: threading.Event | None = None) -> list[TokenLogprob]:
        """The log-probability of every token after the first given the tokens before it (what
        `edgeq perplexity` scores, with the same evaluation from position 0 in the same chunks), and the
        `top` most likely ids at each position: len(tokens) - 1 entries. Memory is one chunk of
        logits, not the whole prompt's; the KV cache holds `tokens` afterwards. `cancel` (a
        threading.Event another thread may set) stops it after the chunk being evaluated, with fewer entries."""
        ids = self._check_ids(tokens)
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0:
            raise ValueError(f"top must be an integer >= 0, got {top!r}")
        top = min(int(top), self._handle.vocab_size)
        out: list[TokenLogprob] = []
        with self._use():
            for begin, rows in self._eval_from_start(ids):
                if cancel is not None and cancel.is_set():
                    break
                log_p = log_softmax(rows)                          # (chunk, vocab) float64
                for row, position in enumerate(range(begin, begin + len(rows))):
                    if position + 1 < len(ids):
                        out.append(_token_logprob(log_p[row], ids[position + 1], top))
        return out

    def _check_ids(self, tokens) -> list[int]:
        if isinstance(tokens, str):
            raise TypeError("logits() and prompt_logprobs() take token ids; use model.tokenize(text) first")
        ids = [int(t) for t in tokens]
        if not ids:
            raise ValueError("tokens must not be empty")
        if len(ids) > self.n_ctx:
            raise EdgeqError(f"{len(ids)} tokens do not fit in the context of {self.n_ctx} tokens "
                             f"(load the model with a larger ctx, at most {self.file.config.max_seq_len})")
        return ids

    def _eval_from_start(self, ids: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Empty the cache and evaluate `ids` in chunks, yielding (first position, (chunk, vocab)
        float32 logits of every position). The caller holds the lock."""
        _ffi.model_truncate(self._handle, 0)
        self._cached = []
        for begin in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[begin:begin + PREFILL_CHUNK]
            self._cached.extend(chunk)
            try:
                rows = _ffi.model_eval(self._handle, chunk, all_logits=True)
            except BaseException:
                self._sync_cache()
                raise
            yield begin, rows

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """(n, vocab) float32 logits of every position of `tokens`, evaluated from position 0.
        The KV cache holds `tokens` afterwards (a following generate that extends them reuses it)."""
        ids = self._check_ids(tokens)
        with self._use():
            out = np.empty((len(ids), self._handle.vocab_size), dtype=np.float32)
            for begin, rows in self._eval_from_start(ids):
                out[begin:begin + len(rows)] = rows
            return out

    # ----------------------------------------------------------------------------------------------
    # sampling settings

    def _file_defaults(self) -> SamplingParams:
        """Built-in defaults, overridden by the file's generation defaults (temperature, top_k, top_p,
        min_p, repetition_penalty; do_sample is not consulted, as in llama.cpp)."""
        params = SamplingParams()
        values = {}
        for key, name in GENERATION_KEYS.items():
            value = self.file.generation.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = type(getattr(params, name))(value)
        try:
            return params.replace(**values).validate()
        except ValueError:
            return params          # nonsense in the file: keep the built-in defaults

    def _sampling(self, temperature, top_k, top_p, min_p, repeat_penalty, seed, frequency_penalty=None,
                  presence_penalty=None) -> SamplingParams:
        params = self.defaults.replace(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                       repeat_penalty=repeat_penalty, seed=seed,
                                       frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
        try:
            return params.validate()
        except ValueError as error:
            raise EdgeqError(str(error)) from None

    # ----------------------------------------------------------------------------------------------
    # generation

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repeat_penalty: float | None = None, seed: int | None = None,
                 stop=None, stream: bool = False, frequency_penalty: float | None = None,
                 presence_penalty: float | None = None, logprobs: int | None = None,
                 cancel: threading.Event | None = None) -> str | Iterator[str]:
        """Continue `prompt` (text, or token ids taken as they are). Returns the text, or with
        stream=True an iterator of text pieces.

        Stops at an end-of-generation token (not part of the text), at a stop string (neither it nor
        a partial prefix of it is ever emitted), after max_tokens tokens (-1 or None: no limit), or at the
        end of the context (with an EdgeqWarning). Sampling arguments left at None take the file's
        generation defaults, else llama.cpp's: temperature 0.8 (0 = greedy), top_k 40, top_p 0.95,
        min_p 0.05, repeat_penalty 1.0 over the last 64 tokens, frequency and presence penalties 0 (OpenAI's,
        over the same window); seed None draws a random seed. logprobs=N records each generated
        token's log-probability and the N most likely alternatives in last_stats.logprobs. cancel: a
        threading.Event another thread may set to stop the call after the batch of prompt tokens (64)
        or the token being evaluated; last_stats.stop_reason is then "cancelled".
        """
        max_tokens = check_max_tokens(max_tokens)
        params = self._sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed, frequency_penalty,
                                presence_penalty)
        if isinstance(prompt, str):
            tokens = self.tokenizer.encode(prompt)
        elif isinstance(prompt, Sequence) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                  for t in prompt):
            tokens = [int(t) for t in prompt]
            bad = [t for t in tokens if not 0 <= t < self._handle.vocab_size]
            if bad:
                raise EdgeqError(f"token id {bad[0]} is outside the vocabulary [0, {self._handle.vocab_size})")
        else:
            raise TypeError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        if not tokens:
            raise EdgeqError("the prompt is empty and the model adds no BOS token; give some text")
        self._check_fits(len(tokens), "the prompt")
        top = self._check_logprobs(logprobs)
        stats = GenerationStats(prompt_tokens=len(tokens), logprobs=None if top is None else [])
        run = self._run(tokens, params, max_tokens, _normalize_stop(stop), stats, stream, top or 0, cancel)
        return self._start(run, stats, stream)

    def chat(self, messages: Sequence[dict], max_tokens: int | None = DEFAULT_MAX_TOKENS,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, repeat_penalty: float | None = None, seed: int | None = None,
             stop=None, stream: bool = False, frequency_penalty: float | None = None,
             presence_penalty: float | None = None, logprobs: int | None = None,
             cancel: threading.Event | None = None) -> str | Iterator[str]:
        """Answer a conversation: messages [{"role": "system"|"user"|"assistant", "content": str}, ...].

        Renders the file's chat template (sandboxed jinja2, add_generation_prompt=True) and
        generates like generate(). Turns that do not fit the context are dropped oldest first (see
        the module docstring); last_stats.dropped_messages says how many messages were left out.
        """
        messages = self._check_messages(messages)
        max_tokens = check_max_tokens(max_tokens)
        params = self._sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed, frequency_penalty,
                                presence_penalty)
        reserve = min(max_tokens if max_tokens is not None else self.n_ctx, self.n_ctx // 4)
        tokens, dropped = self._fit_conversation(messages, reserve)
        top = self._check_logprobs(logprobs)
        stats = GenerationStats(prompt_tokens=len(tokens), dropped_messages=dropped,
                                logprobs=None if top is None else [])
        if dropped:
            warnings.warn(EdgeqWarning(f"the conversation does not fit the context of {self.n_ctx} tokens: "
                                       f"left out its {dropped} oldest message(s)"), stacklevel=2)
        run = self._run(tokens, params, max_tokens, _normalize_stop(stop), stats, stream, top or 0, cancel)
        return self._start(run, stats, stream)

    def _check_logprobs(self, logprobs) -> int | None:
        """logprobs None: not recorded; N >= 0: record them, with the N most likely alternatives."""
        if logprobs is None:
            return None
        if isinstance(logprobs, bool) or not isinstance(logprobs, (int, np.integer)) or logprobs < 0:
            raise EdgeqError(f"logprobs must be an integer >= 0 or None, got {logprobs!r}")
        return min(int(logprobs), self._handle.vocab_size)

    def _start(self, run: Iterator[str], stats: GenerationStats, stream: bool) -> str | Iterator[str]:
        self.last_stats = stats          # the latest call's, filled in as its stream runs
        if not stream:
            return "".join(run)
        self._stream = weakref.ref(run)
        return run

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text chat() would tokenize."""
        return self._render(self._check_messages(messages), add_generation_prompt)

    def _check_fits(self, n_tokens: int, what: str) -> None:
        if n_tokens >= self.n_ctx:
            raise EdgeqError(f"{what} has {n_tokens} tokens and the context is {self.n_ctx} tokens, which leaves "
                             f"no room for an answer; shorten it or use a larger context (--ctx / "
                             f"load(ctx=...), up to {self.file.config.max_seq_len} for this model)")

    @staticmethod
    def _check_messages(messages) -> list[dict]:
        if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
            raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
        checked = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise TypeError(f"each message must be a dict with str 'role' and 'content', got {message!r}")
            checked.append(dict(message))
        if not checked:
            raise ValueError("messages must not be empty")
        return checked

    def _render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        source = self.tokenizer.spec.chat_template
        if not source:
            raise EdgeqError(f"{self.path}: the model has no chat template (a base model?); use generate() / "
                             "`edgeq run` with a plain prompt")
        if self._template is None:
            # what transformers' apply_chat_template sets up
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            try:
                self._template = env.from_string(source)
            except jinja2.TemplateError as error:
                raise EdgeqError(f"{self.path}: the chat template does not compile ({error})") from None
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.tokenizer.token_text(self.tokenizer.bos_id),
                                         eos_token=self.tokenizer.token_text(self.tokenizer.eos_id))
        except jinja2.TemplateError as error:
            raise EdgeqError(f"the chat template rejected the conversation: {error}") from None

    def _encode_chat(self, messages: list[dict]) -> list[int]:
        # the template writes the special tokens itself (HF: add_special_tokens=False); BOS is
        # still added when the model wants it and the template did not write it
        tokens = self.tokenizer.encode(self._render(messages), add_special=False)
        if self.tokenizer.add_bos and tokens[:1] != [self.tokenizer.bos_id]:
            tokens.insert(0, self.tokenizer.bos_id)
        return tokens

    def _fit_conversation(self, messages: list[dict], reserve: int) -> tuple[list[int], int]:
        """Tokens of the conversation, dropping its oldest turns until it fits with `reserve` tokens
        left for the answer. A turn starts at a user message; system messages at the start stay."""
        n_system = 0
        while n_system < len(messages) and messages[n_system]["role"] == "system":
            n_system += 1
        system, rest = messages[:n_system], messages[n_system:]
        starts = [i for i, m in enumerate(rest) if m["role"] == "user" and i > 0]   # where a turn may begin
        dropped = 0
        tokens = self._encode_chat(system + rest)
        while len(tokens) + reserve > self.n_ctx and starts:
            dropped = starts.pop(0)
            tokens = self._encode_chat(system + rest[dropped:])
        if len(tokens) >= self.n_ctx:
            what = "the last message" + (" with the system message" if system else "")
            self._check_fits(len(tokens), what)
        return tokens, dropped

    def _run(self, prompt: list[int], params: SamplingParams, max_tokens: int | None, stops: list[str],
             stats: GenerationStats, stream: bool, top: int = 0,
             cancel: threading.Event | None = None) -> Iterator[str]:
        """The generation loop (a generator: runs as it is iterated, holds the model meanwhile)."""
        with self._use():
            if max_tokens == 0:
                stats.stop_reason = "length"
                return
            sampler = Sampler(params)
            decoder = self.tokenizer.stream_decoder(skip_special=True)
            matcher = _StopMatcher(stops)
            history = list(prompt)
            eos_ids = self.tokenizer.eos_ids
            try:
                start = time.perf_counter()
                logits, stats.cached_tokens = self._prefill(prompt, cancel)
                stats.prompt_seconds = time.perf_counter() - start
                start = time.perf_counter()
                decoded = 0                      # characters the decoder has given so far
                while logits is not None:
                    token = sampler.sample(logits, history)
                    if stats.logprobs is not None:
                        stats.logprobs.append(_token_logprob(log_softmax(logits), token, top))
                    if token in eos_ids:
                        stats.stop_reason = "eos"
                        break
                    history.append(token)
                    stats.tokens.append(token)
                    piece = decoder.push(token)
                    decoded += len(piece)
                    stats.text_ends.append(decoded)
                    text, hit = matcher.push(piece)
                    if hit:                      # set before the last piece goes out
                        stats.stop_reason = "stop"
                    if text:
                        yield text
                    if hit:
                        break
                    if max_tokens is not None and stats.generated_tokens >= max_tokens:
                        stats.stop_reason = "length"
                        break
                    if len(self._cached) >= self.n_ctx:
                        stats.stop_reason = "context"
                        break
                    if cancel is not None and cancel.is_set():
                        break
                    logits = self._eval([token])
                if cancel is not None and cancel.is_set() and not stats.stop_reason:
                    stats.stop_reason = "cancelled"
                if stats.stop_reason != "stop":
                    piece = decoder.flush()
                    if piece and stats.text_ends:  # the last token completes what was pending
                        decoded += len(piece)
                        stats.text_ends[-1] = decoded
                    text, hit = matcher.push(piece)
                    if hit:
                        stats.stop_reason = "stop"
                    else:
                        text += matcher.flush()
                    if text:
                        yield text
            except BaseException:
                self._sync_cache()
                raise
            finally:
                stats.generate_seconds = time.perf_counter() - start
            if stats.stop_reason == "context":
                warnings.warn(EdgeqWarning(
                    f"generation stopped at the end of the context ({self.n_ctx} tokens) after "
                    f"{stats.generated_tokens} tokens; use a larger context (--ctx / load(ctx=...), up to "
                    f"{self.file.config.max_seq_len}) for longer answers"),
                    stacklevel=2 if stream else 4)   # the loop over the stream, or generate()'s caller
