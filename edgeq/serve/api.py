"""The OpenAI-compatible HTTP API of `edgeq serve`, on Starlette: /v1/models, /v1/chat/completions,
/v1/completions (echo and prompt log-probabilities, as lm-evaluation-harness asks), /health, and
vLLM's /tokenizer_info, /tokenize, /detokenize (lm-evaluation-harness's tokenizer_backend=remote).

A request is checked completely (JSON, fields, model name, prompt length) before it takes a slot;
errors are OpenAI's JSON shape {"error": {"message", "type", "param", "code"}}. Generation runs on
the slot's thread (slots.py); text streams back as server-sent events. Not here: n > 1, best_of,
logit_bias, tools, response formats, or embeddings (each refused with 400 naming the field).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import EdgeqError
from ..model import GenerationStats, Model, TokenLogprob
from .slots import QueueFull, SlotPool

RETRY_AFTER_SECONDS = 1
COMPLETIONS_MAX_TOKENS = 16           # /v1/completions without max_tokens, as OpenAI (chat: until the end)
MAX_LOGPROBS = 20                     # alternatives per token, as OpenAI allows
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop",
                  "": "stop"}


class ClientGone(Exception):
    """The client disconnected before its request got a slot: nothing to answer."""


class ApiError(Exception):
    """An error answered to the client: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ----------------------------------------------------------------------------------------------
# request fields

_MISSING = object()


def _field(body: dict, name: str, kinds: tuple, default=None, allow_none: bool = True):
    """body[name] checked against JSON kinds (bool is never a number); 400 naming the field."""
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and allow_none):
        return default
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
                 dict: "an object"}
        want = " or ".join(dict.fromkeys(names[k] for k in kinds))
        raise ApiError(400, f"'{name}' must be {want}, got {json.dumps(value)[:60]}", param=name,
                       code="invalid_type")
    return value


def _refuse_unsupported(body: dict) -> None:
    """Fields that would change the answer in a way edgeq cannot: 400 naming the field."""
    checks = {
        "n": lambda v: v not in (None, 1),
        "best_of": lambda v: v not in (None, 1),
        "logit_bias": lambda v: bool(v),
        "suffix": lambda v: bool(v),
        "tools": lambda v: bool(v),
        "functions": lambda v: bool(v),
        "tool_choice": lambda v: v not in (None, "none", "auto"),
        "response_format": lambda v: v not in (None, {"type": "text"}),
        "audio": lambda v: v is not None,
        "modalities": lambda v: v not in (None, ["text"]),
        "prediction": lambda v: v is not None,
    }
    for name, unsupported in checks.items():
        if name in body and unsupported(body[name]):
            raise ApiError(400, f"'{name}' = {json.dumps(body[name])[:60]} is not supported by edgeq serve",
                           param=name, code="unsupported_parameter")


@dataclass
class Generation:
    """What one generation call needs, checked."""
    max_tokens: int | None
    sampling: dict
    stop: list[str]
    stream: bool
    include_usage: bool


def _generation(body: dict, model: Model, default_max: int | None) -> Generation:
    max_tokens = _field(body, "max_completion_tokens", (int,), _MISSING)
    if max_tokens is _MISSING:
        max_tokens = _field(body, "max_tokens", (int,), default_max)
    if max_tokens is not None and max_tokens < 0:
        if max_tokens != -1:
            raise ApiError(400, f"'max_tokens' must be 0 or more (or -1: until the end of the context), "
                           f"got {max_tokens}", param="max_tokens")
        max_tokens = None
    sampling = {"temperature": _field(body, "temperature", (int, float)),
                "top_p": _field(body, "top_p", (int, float)),
                "top_k": _field(body, "top_k", (int,)),
                "min_p": _field(body, "min_p", (int, float)),
                "repeat_penalty": _field(body, "repeat_penalty", (int, float)),
                "frequency_penalty": _field(body, "frequency_penalty", (int, float)),
                "presence_penalty": _field(body, "presence_penalty", (int, float)),
                "seed": _field(body, "seed", (int,))}
    try:
        model.defaults.replace(**sampling).validate()
    except ValueError as error:
        message = str(error)
        param = message.split(" ", 1)[0]
        raise ApiError(400, message, param=param if param in sampling else None) from None
    stop = _field(body, "stop", (str, list))
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not all(isinstance(s, str) for s in stop) or len(stop) > 16):
        raise ApiError(400, "'stop' must be a string or an array of up to 16 strings", param="stop")
    options = _field(body, "stream_options", (dict,), {}) or {}
    return Generation(max_tokens, sampling, stop or [], bool(_field(body, "stream", (bool,), False)),
                      bool(options.get("include_usage")))


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage; cached_tokens: prompt tokens the slot's KV cache already held (not evaluated)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


# ----------------------------------------------------------------------------------------------
# running a job on a slot, stopping it when the client goes away

async def _watch_disconnect(receive, cancel: threading.Event) -> None:
    """Set `cancel` when the client closes the connection."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


class _Server:
    def __init__(self, pool: SlotPool, model_id: str, api_key: str | None):
        self.pool = pool
        self.model_id = model_id
        self.api_key = api_key
        self.front = pool.slots[0].model          # tokenizer and chat template (no runtime call)
        self.n_ctx = self.front.n_ctx
        self.created = int(time.time())

    # -- request checks shared by the endpoints --------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'" if header else
                           "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def body(self, request: Request) -> dict:
        self.authorize(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        name = _field(body, "model", (str,))
        if name is not None and name not in (self.model_id, str(self.front.path)):
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{self.model_id}'",
                           param="model", code="model_not_found")
        _refuse_unsupported(body)
        return body

    def check_fits(self, n_tokens: int, what: str) -> None:
        if n_tokens >= self.n_ctx:
            raise ApiError(400, f"{what} has {n_tokens} tokens and the context is {self.n_ctx} tokens, which "
                           f"leaves no room for an answer; shorten it (or start the server with a larger "
                           f"--ctx, up to {self.front.file.config.max_seq_len} for this model)",
                           param="messages" if what == "the conversation" else "prompt",
                           code="context_length_exceeded")

    async def take_slot(self, request: Request, tokens: list[int], cancel: threading.Event,
                        watcher: asyncio.Future):
        """An idle slot, waiting in the queue if need be; 503 when the queue is full. A client that
        disconnects while waiting leaves the queue (ClientGone)."""
        acquire = asyncio.ensure_future(self.pool.acquire(tokens))
        await asyncio.wait({acquire, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not acquire.done():
            acquire.cancel()
            raise ClientGone()
        try:
            return acquire.result()
        except QueueFull as error:
            raise ApiError(503, f"the server is busy ({error}); retry later", kind="server_error",
                           code="server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    async def run(self, request: Request, tokens: list[int], job: Callable[[Model, threading.Event], Any]):
        """Run a non-streamed job on a slot; stop it when the client disconnects."""
        cancel = threading.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(request.receive, cancel))
        try:
            slot = await self.take_slot(request, tokens, cancel, watcher)
            return await asyncio.shield(self.pool.submit(slot, job, cancel))
        finally:
            watcher.cancel()

    async def stream(self, request: Request, tokens: list[int], job, first: list[dict]) -> Response:
        """Take a slot (503 before anything is sent when there is none), then stream what the job
        emits as server-sent events."""
        cancel = threading.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(request.receive, cancel))
        try:
            slot = await self.take_slot(request, tokens, cancel, watcher)
        finally:
            watcher.cancel()
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(event: dict) -> None:            # on the slot's thread
            loop.call_soon_threadsafe(queue.put_nowait, event)

        result = self.pool.submit(slot, lambda model, cancel: job(model, cancel, emit), cancel)
        return _EventStream(queue, result, cancel, first)


class _EventStream(Response):
    """Server-sent events from a running job: each event a `data: {json}` line, then `data: [DONE]`.
    The job's cancel flag is set when the client disconnects or the response ends for any reason."""

    media_type = "text/event-stream"

    def __init__(self, queue: asyncio.Queue, result: asyncio.Future, cancel: threading.Event, first: list[dict]):
        self.status_code, self.background = 200, None        # as StreamingResponse: no Content-Length
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.queue, self.result, self.cancel, self.first = queue, result, cancel, first

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(_watch_disconnect(receive, self.cancel))
        finished = asyncio.ensure_future(asyncio.shield(self.result))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            for event in self.first:
                await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
            while True:             # until the job has ended and all it emitted is sent, or the client left
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({getter, watcher, finished}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await send({"type": "http.response.body", "body": _sse(getter.result()), "more_body": True})
                    continue
                getter.cancel()
                if watcher.done() or (finished.done() and self.queue.empty()):
                    break
            if not watcher.done():  # (a shutdown stops the job early; its last events still go out)
                error = finished.exception()
                if error is not None:              # after the headers: an error event (as OpenAI does)
                    await send({"type": "http.response.body", "more_body": True,
                                "body": _sse(_error_body(error))})
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except OSError:
            pass                                   # the client went away while we wrote
        finally:
            self.cancel.set()                      # a no-op when the job has ended
            watcher.cancel()
            finished.cancel()


def _sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def _error_body(error: BaseException) -> dict:
    if isinstance(error, ApiError):
        return {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}
    kind = "invalid_request_error" if isinstance(error, (EdgeqError, ValueError, TypeError)) else "server_error"
    return {"error": {"message": str(error) or type(error).__name__, "type": kind, "param": None, "code": None}}


# ----------------------------------------------------------------------------------------------
# what a slot's thread runs

def _generate(model: Model, cancel: threading.Event, prompt, gen: Generation, emit=None,
              logprobs: int | None = None) -> tuple[str, GenerationStats]:
    """Generate from `prompt` (token ids), stopping after the batch of prompt tokens or the token
    being evaluated once `cancel` is set; each piece goes to emit(piece, stats) when streaming (the
    stats of the run so far). Returns the text and the run's stats."""
    stream = model.generate(prompt, max_tokens=gen.max_tokens, stop=gen.stop, stream=True,
                            logprobs=logprobs, cancel=cancel, **gen.sampling)
    pieces = []
    try:
        for piece in stream:
            pieces.append(piece)
            if emit is not None:
                emit(piece, model.last_stats)
    finally:
        stream.close()
    return "".join(pieces), model.last_stats


def _finish_reason(stats: GenerationStats) -> str:
    return FINISH_REASONS.get(stats.stop_reason, "stop")


def _answer_tokens(stats: GenerationStats, answer_length: int | None) -> list[tuple[TokenLogprob, int]]:
    """The generated tokens whose text is part of the answer, each with the offset in the answer where
    its text starts: an end-of-generation token is left out, and so are the tokens of a stop string
    that cut the answer at `answer_length` characters (None: nothing was cut). A token keeps its place
    when its text starts before the cut or is empty at it (stats.text_ends says where each one ends)."""
    kept = []
    for i, entry in enumerate((stats.logprobs or [])[:len(stats.tokens)]):   # (the eos entry is the last)
        start, end = stats.text_ends[i - 1] if i else 0, stats.text_ends[i]
        if answer_length is not None and start >= answer_length and end > answer_length:
            break
        kept.append((entry, start))
    return kept


def _kept_logprobs(stats: GenerationStats, text: str) -> list[tuple[TokenLogprob, int]]:
    """_answer_tokens of a finished generation whose answer is `text`."""
    return _answer_tokens(stats, len(text) if stats.stop_reason == "stop" else None)


class _StreamedLogprobs:
    """Which generated tokens each streamed piece carries: those whose text has been sent in full
    (with the piece that completes it; a token that adds no text goes with the next piece), so the
    pieces' logprobs, joined, are the non-streamed answer's (_kept_logprobs)."""

    def __init__(self):
        self.sent_tokens = 0
        self.sent_chars = 0

    def piece(self, text: str, stats: GenerationStats) -> list[tuple[TokenLogprob, int]]:
        """After `text` was generated: the tokens it carries, with their answer offsets."""
        self.sent_chars += len(text)
        if stats.stop_reason == "stop":              # the last piece, up to where the stop string cut
            end = len(_answer_tokens(stats, self.sent_chars))
        else:
            end = self.sent_tokens
            while end < len(stats.tokens) and stats.text_ends[end] <= self.sent_chars:
                end += 1
        entries = (stats.logprobs or [])[self.sent_tokens:end]
        out = [(entry, stats.text_ends[i - 1] if i else 0) for i, entry in enumerate(entries, self.sent_tokens)]
        self.sent_tokens = max(self.sent_tokens, end)
        return out

    def rest(self, stats: GenerationStats, text: str) -> list[tuple[TokenLogprob, int]]:
        """At the end: the tokens no piece carried (ones that added no text)."""
        rest = _kept_logprobs(stats, text)[self.sent_tokens:]
        self.sent_tokens += len(rest)
        return rest


def _token_text(model: Model, token: int) -> str:
    return model.tokenizer.decode([token])


# ----------------------------------------------------------------------------------------------
# endpoints

def build_app(pool: SlotPool, model_id: str, api_key: str | None = None) -> Starlette:
    """The Starlette app serving `pool`'s model as `model_id`; with `api_key`, /v1/* needs it."""
    server = _Server(pool, model_id, api_key)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **pool.status()})

    async def models(request: Request) -> Response:
        server.authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": server.created, "owned_by": "edgeq",
             "context_length": server.n_ctx}]})

    async def chat_completions(request: Request) -> Response:
        body = await server.body(request)
        messages = _messages(body)
        gen = _generation(body, server.front, None)
        want_logprobs = bool(_field(body, "logprobs", (bool,), False))
        top = _field(body, "top_logprobs", (int,), 0)
        if not 0 <= top <= MAX_LOGPROBS:
            raise ApiError(400, f"'top_logprobs' must be 0 to {MAX_LOGPROBS}", param="top_logprobs")
        if top and not want_logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        try:
            tokens = server.front._encode_chat(server.front._check_messages(messages))
        except (EdgeqError, TypeError, ValueError) as error:
            raise ApiError(400, str(error), param="messages") from None
        server.check_fits(len(tokens), "the conversation")
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish=None, logprobs=None, **extra) -> dict:
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                    **extra}

        def logprobs_content(model, entries):
            """OpenAI's chat logprobs object for (TokenLogprob, offset) entries."""
            token_bytes = model.tokenizer.token_bytes       # (a byte token: its byte, not U+FFFD's three)
            return {"content": [{"token": _token_text(model, e.token), "logprob": e.logprob,
                                 "bytes": list(token_bytes(e.token)),
                                 "top_logprobs": [{"token": _token_text(model, i), "logprob": lp,
                                                   "bytes": list(token_bytes(i))} for i, lp in e.top]}
                                for e, _ in entries]}

        logprobs = top if want_logprobs else None
        if not gen.stream:
            def job(model, cancel):
                text, stats = _generate(model, cancel, tokens, gen, logprobs=logprobs)
                content = logprobs_content(model, _kept_logprobs(stats, text)) if want_logprobs else None
                return text, stats, content
            text, stats, content = await server.run(request, tokens, job)
            return JSONResponse({
                "id": ident, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": content, "finish_reason": _finish_reason(stats)}],
                "usage": _usage(stats.prompt_tokens, stats.generated_tokens, stats.cached_tokens)})

        def job(model, cancel, emit):
            carried = _StreamedLogprobs()

            def piece(text, stats):
                content = logprobs_content(model, carried.piece(text, stats)) if want_logprobs else None
                emit(chunk({"content": text}, logprobs=content))
            text, stats = _generate(model, cancel, tokens, gen, piece, logprobs=logprobs)
            rest = carried.rest(stats, text) if want_logprobs else []
            if rest:                              # tokens that added no text (after the last piece)
                emit(chunk({"content": ""}, logprobs=logprobs_content(model, rest)))
            usage = _usage(stats.prompt_tokens, stats.generated_tokens, stats.cached_tokens)
            emit(chunk({}, _finish_reason(stats), usage=usage))
            if gen.include_usage:
                emit({**chunk({}), "choices": [], "usage": usage})
        return await server.stream(request, tokens, job, [chunk({"role": "assistant", "content": ""})])

    async def completions(request: Request) -> Response:
        body = await server.body(request)
        gen = _generation(body, server.front, COMPLETIONS_MAX_TOKENS)
        prompts = _prompts(body, server.front)
        for tokens in prompts:
            server.check_fits(len(tokens), "the prompt")
        echo = bool(_field(body, "echo", (bool,), False))
        logprobs = _field(body, "logprobs", (int,))
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"'logprobs' must be 0 to {MAX_LOGPROBS}", param="logprobs")
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if gen.stream:
            if len(prompts) != 1:
                raise ApiError(400, "'stream' takes one prompt in edgeq serve", param="prompt")
            tokens = prompts[0]

            def chunk(text: str, finish=None, logprobs=None, **extra) -> dict:
                return {"id": ident, "object": "text_completion", "created": created, "model": model_id,
                        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
                        **extra}

            def job(model, cancel, emit):
                prompt_text = _prompt_text(model, body["prompt"], 0, tokens)
                scored = _scored_prompt(model, cancel, tokens, logprobs) if echo else None
                if echo:
                    emit(chunk(prompt_text, logprobs=None if scored is None else _logprob_lists(model, scored)))
                if cancel.is_set():
                    return
                carried, base = _StreamedLogprobs(), len(prompt_text)

                def piece(text, stats):
                    entries = None
                    if logprobs is not None:
                        entries = _logprob_lists(model, _answer_entries(model, carried.piece(text, stats), base))
                    emit(chunk(text, logprobs=entries))
                text, stats = _generate(model, cancel, tokens, gen, piece, logprobs=logprobs)
                rest = carried.rest(stats, text) if logprobs is not None else []
                if rest:                          # tokens that added no text (after the last piece)
                    emit(chunk("", logprobs=_logprob_lists(model, _answer_entries(model, rest, base))))
                if scored is not None:            # (as _complete: scoring evaluated the whole prompt)
                    stats.cached_tokens = 0
                usage = _usage(stats.prompt_tokens, stats.generated_tokens, stats.cached_tokens)
                emit(chunk("", _finish_reason(stats), usage=usage))
                if gen.include_usage:
                    emit({**chunk(""), "choices": [], "usage": usage})
            return await server.stream(request, tokens, job, [])

        def job(model, cancel):
            choices, usage = [], _usage(0, 0)
            for index, tokens in enumerate(prompts):
                if cancel.is_set():
                    break
                choice, stats = _complete(model, cancel, tokens, body["prompt"], index, gen, echo, logprobs)
                choices.append(choice)
                usage = _usage(usage["prompt_tokens"] + stats.prompt_tokens,
                               usage["completion_tokens"] + stats.generated_tokens,
                               usage["prompt_tokens_details"]["cached_tokens"] + stats.cached_tokens)
            return choices, usage
        choices, usage = await server.run(request, prompts[0], job)
        return JSONResponse({"id": ident, "object": "text_completion", "created": created, "model": model_id,
                             "choices": choices, "usage": usage})

    # vLLM's tokenizer endpoints, which lm-evaluation-harness's tokenizer_backend=remote uses
    async def tokenizer_info(request: Request) -> Response:
        server.authorize(request)
        tokenizer = server.front.tokenizer
        return JSONResponse({"tokenizer_class": "edgeq", "model_max_length": server.n_ctx,
                             "bos_token": tokenizer.token_text(tokenizer.bos_id) if tokenizer.add_bos else None,
                             "eos_token": tokenizer.token_text(tokenizer.eos_id) or None, "pad_token": None,
                             "add_bos_token": tokenizer.add_bos,
                             "chat_template": tokenizer.spec.chat_template or None})

    async def tokenize(request: Request) -> Response:
        body = await server.body(request)
        prompt = _field(body, "prompt", (str,), None)
        if prompt is None:
            raise ApiError(400, "'prompt' must be a string", param="prompt")
        add_special = _field(body, "add_special_tokens", (bool,), True)
        tokens = server.front.tokenize(prompt, add_special=add_special)
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": server.n_ctx})

    async def detokenize(request: Request) -> Response:
        body = await server.body(request)
        tokens = _field(body, "tokens", (list,), None)
        vocab = server.front.tokenizer.vocab_size
        if tokens is None or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                     for t in tokens):
            raise ApiError(400, f"'tokens' must be an array of token ids in [0, {vocab})", param="tokens")
        return JSONResponse({"prompt": server.front.detokenize(tokens)})

    async def not_found(request: Request, error: HTTPException) -> Response:
        status = error.status_code
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(error.detail))
        return ApiError(status, message, code="not_found" if status == 404 else None).response()

    async def api_error(request: Request, error: ApiError) -> Response:
        return error.response()

    async def client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)          # (nobody reads it)

    async def internal_error(request: Request, error: Exception) -> Response:
        if isinstance(error, (EdgeqError, ValueError, TypeError)):
            return ApiError(400, str(error)).response()
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").response()

    routes = [Route("/health", health, methods=["GET"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/tokenizer_info", tokenizer_info, methods=["GET"]),
              Route("/tokenize", tokenize, methods=["POST"]),
              Route("/detokenize", detokenize, methods=["POST"])]
    handlers = {HTTPException: not_found, ApiError: api_error, ClientGone: client_gone, EdgeqError: internal_error,
                Exception: internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def _messages(body: dict) -> list[dict]:
    """OpenAI chat messages -> [{"role", "content": str}]; text parts are joined."""
    messages = _field(body, "messages", (list,), None)
    if not messages:
        raise ApiError(400, "'messages' must be a non-empty array of {role, content} objects", param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"{where} must be an object with a string 'role'", param=where)
        role = "system" if message["role"] == "developer" else message["role"]
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}: role '{message['role']}' is not supported (system, user, assistant)",
                           param=where)
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}: only text content parts are supported", param=where)
            content = "".join(p["text"] for p in content)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"{where}: 'content' must be a string or an array of text parts", param=where)
        out.append({"role": role, "content": content})
    return out


def _prompts(body: dict, model: Model) -> list[list[int]]:
    """'prompt' as a string, an array of strings, an array of token ids or an array of such arrays."""
    prompt = body.get("prompt")
    vocab = model.tokenizer.vocab_size

    def ids(value) -> list[int]:
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in value):
            raise ApiError(400, f"'prompt' token ids must be integers in [0, {vocab})", param="prompt")
        return list(value)

    def encode(text: str) -> list[int]:
        return model.tokenize(text)
    if isinstance(prompt, str):
        prompts = [encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [encode(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [ids(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompts = [ids(p) for p in prompt]
    else:
        raise ApiError(400, "'prompt' must be a string, an array of strings, an array of token ids or an "
                       "array of token-id arrays", param="prompt")
    if any(not p for p in prompts):
        raise ApiError(400, "'prompt' must not be empty", param="prompt")
    return prompts


def _prompt_text(model: Model, prompt, index: int, tokens: list[int]) -> str:
    """The text of prompt `index` as echo returns it: as the client sent it, or its ids decoded."""
    if isinstance(prompt, list) and isinstance(prompt[index], str):
        return prompt[index]
    return prompt if isinstance(prompt, str) else model.detokenize(tokens)


def _scored_prompt(model: Model, cancel: threading.Event, tokens: list[int],
                   logprobs: int | None) -> list[tuple[int, float | None, dict | None, int]] | None:
    """The prompt's log-probabilities as (token, logprob, top, text offset) entries when logprobs are
    asked (every token after the first, from position 0, as `edgeq perplexity` scores; the first has
    none); offsets count the tokens' texts from 0. None when not asked."""
    if logprobs is None:
        return None
    scored = model.prompt_logprobs(tokens, top=logprobs, cancel=cancel)
    entries = [(tokens[0], None, None)] + [(e.token, e.logprob, _top(model, e)) for e in scored]
    out, at = [], 0
    for token, logprob, top in entries:
        out.append((token, logprob, top, at))
        at += len(_token_text(model, token))
    return out


def _answer_entries(model: Model, kept: list[tuple[TokenLogprob, int]], base: int):
    """Generated tokens (TokenLogprob, offset in the answer) as (token, logprob, top, text offset)
    entries, the offset counted from the start of the prompt (`base` characters before the answer)."""
    return [(e.token, e.logprob, _top(model, e), base + start) for e, start in kept]


def _logprob_lists(model: Model, entries) -> dict:
    """OpenAI's completions logprobs object from (token, logprob, top, text offset) entries."""
    return {"tokens": [_token_text(model, token) for token, _, _, _ in entries],
            "token_logprobs": [logprob for _, logprob, _, _ in entries],
            "top_logprobs": [top for _, _, top, _ in entries],
            "text_offset": [offset for _, _, _, offset in entries]}


def _complete(model: Model, cancel: threading.Event, tokens: list[int], prompt, index: int, gen: Generation,
              echo: bool, logprobs: int | None) -> tuple[dict, GenerationStats]:
    """One /v1/completions choice (on the slot's thread): prompt log-probabilities when echo and
    logprobs are asked, then the generated text. -> (choice, the generation's stats; cached_tokens 0
    when the prompt was scored, which evaluates all of it)."""
    scored = _scored_prompt(model, cancel, tokens, logprobs) if echo else None
    if gen.max_tokens == 0 or cancel.is_set():
        text, stats = "", GenerationStats(prompt_tokens=len(tokens), stop_reason="length", logprobs=[])
    else:
        text, stats = _generate(model, cancel, tokens, gen, logprobs=logprobs)
        if scored is not None:
            stats.cached_tokens = 0
    prompt_text = _prompt_text(model, prompt, index, tokens)
    choice = {"text": prompt_text + text if echo else text, "index": index, "logprobs": None,
              "finish_reason": _finish_reason(stats)}
    if logprobs is not None:             # offsets into the text returned (prompt and answer with echo), as OpenAI
        entries = (scored or []) + _answer_entries(model, _kept_logprobs(stats, text), len(prompt_text))
        choice["logprobs"] = _logprob_lists(model, entries)
    return choice, stats


def _top(model: Model, entry: TokenLogprob) -> dict:
    """OpenAI's top_logprobs entry: token text -> logprob (the chosen token always included)."""
    top = {_token_text(model, i): lp for i, lp in entry.top}
    top.setdefault(_token_text(model, entry.token), entry.logprob)
    return top
