"""`edgeq serve` as a user runs it: a subprocess on a free loopback port, driven by the official
openai client (and raw HTTP where a client would hide what is checked): chat, streaming, completions
with echo and logprobs against the Python API and `edgeq perplexity`, every error, a bounded load
test, a client that disconnects mid-stream, and Ctrl-C."""
from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client: pip install -e '.[test]'")
pytest.importorskip("starlette", reason="edgeq serve needs edgeq[server]: pip install -e '.[test]'")

import edgeq  # noqa: E402
from edgeq.convert import PlanSettings, convert  # noqa: E402
from edgeq.model import log_softmax  # noqa: E402
from tiny_models import make_tiny_hf_model  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
KEY = "sk-test-edgeq"
START_SECONDS = 60


class Server:
    """`edgeq serve FILE --port 0 ...` in a subprocess; the URL comes from its "listening on" line."""

    def __init__(self, path, *flags):
        command = [sys.executable, "-m", "edgeq", "serve", str(path), "--port", "0", *map(str, flags)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines = []
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
            if found:
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}/v1"
                self.model = re.match(r"edgeq serve: (.+?): \d+ slot", self.lines[0]).group(1)
                return
        self.proc.kill()
        raise AssertionError("the server did not start: " + "".join(self.lines) + self.proc.stderr.read())

    def client(self, **kwargs) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url, api_key=kwargs.pop("api_key", KEY), max_retries=0, timeout=60,
                             **kwargs)

    def request(self, method, path, body=None, headers=None, key=KEY) -> tuple[int, dict, dict]:
        """Raw HTTP: (status, headers, JSON body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
                   **(headers or {})}
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = json.loads(response.read() or b"null")
        connection.close()
        return response.status, dict(response.getheaders()), payload

    def health(self) -> dict:
        return self.request("GET", "/health", key=None)[2]

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))

    def stop(self, sig=signal.SIGINT) -> str:
        """Ctrl-C (or `sig`); returns the stderr it wrote after starting. Asserts a clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the server did not stop within 20 s of Ctrl-C")
        assert self.proc.returncode == 0, err
        assert "Traceback" not in err and err.strip().splitlines()[-1:] == ["edgeq serve: stopped"], err
        return err


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """A tiny random llama with an 8192-token window: greedy answers run thousands of tokens
    (rarely an end-of-generation id), so a generation lasts long enough to interrupt or overlap."""
    folder = tmp_path_factory.mktemp("serve")
    source = make_tiny_hf_model(folder / "hf", arch="llama", max_position_embeddings=8192, seed=0)
    path = folder / "long.q8"
    convert(source, path, PlanSettings(bits=8), progress=False)
    return path


@pytest.fixture(scope="module")
def server(long_file):
    """--parallel 2 --queue 2, with an API key; every test leaves it idle."""
    server = Server(long_file, "--parallel", 2, "--queue", 2, "--ctx", 2048, "--threads", 1, "--api-key", KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local(long_file):
    with edgeq.load(long_file, threads=1, ctx=2048) as model:
        yield model


def idle(server) -> bool:
    status = server.health()
    return status["idle"] == status["slots"] and status["waiting"] == 0


# ----------------------------------------------------------------------------------------------
# endpoints against the Python API

def test_models_health_and_the_start_lines(server, long_file):
    assert "2 slot(s), context 2048 tokens, 1 thread(s) each, queue 2" in server.lines[0]
    assert re.search(r"memory about [\d.]+ MB = weights [\d.]+ MB \(mapped once, shared by the slots\) \+ "
                     r"2 x \(KV cache [\d.]+ MB", server.lines[0])
    models = server.client().models.list()
    assert [m.id for m in models.data] == [long_file.name]
    assert server.health() == {"status": "ok", "slots": 2, "idle": 2, "busy": 0, "waiting": 0, "queue_limit": 2,
                               **{k: server.health()[k] for k in ("served", "cancelled")}}


def test_chat_equals_the_python_api_and_reuses_the_prefix(server, local):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count the birds."}]
    client = server.client()
    answer = client.chat.completions.create(model=server.model, messages=messages, max_tokens=12, temperature=0)
    want = local.chat(messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == want and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == local.last_stats.prompt_tokens
    assert answer.usage.completion_tokens == 12 and answer.usage.total_tokens == answer.usage.prompt_tokens + 12
    # the next turn goes to the slot that holds the conversation so far
    follow = messages + [{"role": "assistant", "content": want}, {"role": "user", "content": "And the stars?"}]
    again = client.chat.completions.create(model=server.model, messages=follow, max_tokens=4, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens
    assert again.choices[0].message.content == local.chat(follow, max_tokens=4, temperature=0)


def test_chat_streams_the_same_text(server, local):
    messages = [{"role": "user", "content": "Tell me about the robot."}]
    chunks = list(server.client().chat.completions.create(model=server.model, messages=messages, max_tokens=20,
                                                          temperature=0, stream=True,
                                                          stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == local.chat(messages, max_tokens=20, temperature=0) and len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"] and finals[0].usage.completion_tokens == 20
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == local.last_stats.prompt_tokens


def test_sampling_fields_map_onto_the_sampler(server, local):
    settings = dict(temperature=1.0, top_p=0.9, seed=7, frequency_penalty=0.5, presence_penalty=0.3)
    extra = dict(top_k=20, min_p=0.01, repeat_penalty=1.1)
    got = server.client().completions.create(model=server.model, prompt="Once upon a time", max_tokens=24,
                                             extra_body=extra, **settings)
    want = local.generate("Once upon a time", max_tokens=24, **settings, **extra)
    assert got.choices[0].text == want
    plain = local.generate("Once upon a time", max_tokens=24, temperature=1.0, top_p=0.9, seed=7, **extra)
    assert plain != want                     # the penalties changed the draw: they are not ignored
    # a stop string: never in the text, finish_reason "stop"
    stop = want[len(want) // 3:len(want) // 3 + 3]
    stopped = server.client().completions.create(model=server.model, prompt="Once upon a time", max_tokens=24,
                                                 stop=[stop], extra_body=extra, **settings)
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].text
    assert want.startswith(stopped.choices[0].text)


def test_completions_echo_and_logprobs(server, local):
    prompt = "The robot counted the birds on the roof"
    got = server.client().completions.create(model=server.model, prompt=prompt, max_tokens=5, temperature=0,
                                             echo=True, logprobs=3)
    choice = got.choices[0]
    tokens = local.tokenize(prompt)
    generated = local.generate(prompt, max_tokens=5, temperature=0)
    assert choice.text == prompt + generated
    lp = choice.logprobs
    assert len(lp.tokens) == len(tokens) + 5 == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == choice.text and lp.text_offset[0] == 0
    assert all(lp.text_offset[i + 1] == lp.text_offset[i] + len(lp.tokens[i]) for i in range(len(lp.tokens) - 1))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    # the prompt's log-probabilities are the model's: log-softmax of its logits at the position before
    want = log_softmax(local.logits(tokens))
    for i in range(1, len(tokens)):
        assert lp.token_logprobs[i] == pytest.approx(want[i - 1, tokens[i]], abs=1e-9)
        best = np.argsort(-want[i - 1])[:3]
        assert set(lp.top_logprobs[i]) >= {local.detokenize([b]) for b in best}
    # greedy: each generated token is the most likely one
    for i in range(len(tokens), len(lp.tokens)):
        assert lp.token_logprobs[i] == pytest.approx(max(lp.top_logprobs[i].values()))
    assert got.usage.prompt_tokens == len(tokens) and got.usage.completion_tokens == 5
    # without echo: only the answer, offsets counted from the end of the prompt; token ids as prompt
    plain = server.client().completions.create(model=server.model, prompt=tokens, max_tokens=5, temperature=0,
                                               logprobs=0)
    assert plain.choices[0].text == generated and plain.choices[0].logprobs.text_offset[0] == len(prompt)
    # lm-evaluation-harness's loglikelihood request: token ids, echo, max_tokens 1, logprobs 1
    scored = server.client().completions.create(model=server.model, prompt=[tokens, tokens[:4]], max_tokens=1,
                                                temperature=0, echo=True, logprobs=1)
    assert [c.index for c in scored.choices] == [0, 1]
    assert scored.choices[0].logprobs.token_logprobs[:len(tokens)] == lp.token_logprobs[:len(tokens)]
    assert scored.choices[1].logprobs.token_logprobs[:4] == lp.token_logprobs[:4]
    assert scored.usage.prompt_tokens == len(tokens) + 4 and scored.usage.completion_tokens == 2


def test_completion_streaming(server, local):
    chunks = list(server.client().completions.create(model=server.model, prompt="Once upon a time", max_tokens=16,
                                                     temperature=0, stream=True, echo=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Once upon a time" + local.generate("Once upon a time", max_tokens=16, temperature=0)
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 16


def streamed_chat_logprobs(chunks) -> tuple[list, list[str]]:
    """(the chunks' logprobs.content entries joined, each text-carrying chunk's text)"""
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    return entries, [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=5),
                                      dict(temperature=1.0, seed=3, stop="")], ids=["greedy", "sampled", "stop"])
def test_streamed_chat_logprobs_equal_the_non_streamed(server, local, settings):
    """Each chunk carries the logprobs of the tokens whose text it carries; joined, they are the
    non-streamed answer's. Sampled at temperature 2, the tiny byte-level model emits parts of UTF-8
    characters (a token with no text of its own yet); a stop string that starts inside a token keeps
    that token (its text is partly in the answer) and drops the ones after."""
    messages = [{"role": "user", "content": "Tell me about the robot."}]
    settings = dict(settings)
    extra = {k: settings.pop(k) for k in ("top_k", "min_p") if k in settings}
    if "stop" in settings:       # 3 characters from the second one of a token on, not seen earlier
        answer = local.chat(messages, max_tokens=30, temperature=1.0, seed=3)
        ends = local.last_stats.text_ends
        at = next(ends[i - 1] + 1 for i in range(len(ends) // 3, len(ends)) if ends[i] - ends[i - 1] >= 2
                  and answer.find(answer[ends[i - 1] + 1:ends[i - 1] + 4]) == ends[i - 1] + 1)
        settings["stop"] = answer[at:at + 3]
    request = dict(model=server.model, messages=messages, max_tokens=30, logprobs=True, top_logprobs=2,
                   extra_body=extra, **settings)
    whole = server.client().chat.completions.create(**request)
    chunks = list(server.client().chat.completions.create(**request, stream=True))
    entries, texts = streamed_chat_logprobs(chunks)
    want = whole.choices[0].logprobs.content
    assert [e.model_dump() for e in entries] == [e.model_dump() for e in want] and want
    assert "".join(texts) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    if "stop" in settings:
        assert whole.choices[0].finish_reason == "stop" and len(want) <= whole.usage.completion_tokens < 30
    else:                                      # every generated token (an end-of-generation id has no text)
        assert len(want) == whole.usage.completion_tokens
    if settings["temperature"] == 2.0:         # some token completed no character on its own
        assert any(e.token == "\ufffd" for e in want)
        # `bytes` are the tokens' own: joined, the answer (special tokens aside)
        specials = {local.tokenizer.token_text(i) for i in local.tokenizer.special_ids}
        joined = b"".join(bytes(e.bytes) for e in want if e.token not in specials)
        assert joined.decode("utf-8", errors="replace") == whole.choices[0].message.content
        carried = [c.choices[0].logprobs.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert any(len(tokens) > 1 for tokens in carried)
    else:                                      # ASCII: each chunk's tokens spell its text
        for c in chunks:
            if c.choices and c.choices[0].delta.content and "stop" not in settings:
                assert "".join(e.token for e in c.choices[0].logprobs.content) == c.choices[0].delta.content


@pytest.mark.parametrize("echo", [False, True], ids=["answer", "echo"])
def test_streamed_completion_logprobs_equal_the_non_streamed(server, echo):
    request = dict(model=server.model, prompt="The robot counted the birds", max_tokens=20, temperature=2.0,
                   seed=11, logprobs=2, echo=echo, extra_body={"top_k": 0, "min_p": 0.0})
    whole = server.client().completions.create(**request).choices[0]
    chunks = list(server.client().completions.create(**request, stream=True))
    joined = {key: [] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    for c in chunks:
        if c.choices and c.choices[0].logprobs:
            for key in joined:
                joined[key] += getattr(c.choices[0].logprobs, key)
    assert joined == {key: getattr(whole.logprobs, key) for key in joined}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    n_prompt = len(server.client().completions.create(model=server.model, prompt="The robot counted the birds",
                                                      max_tokens=0, echo=True, logprobs=0).choices[0].logprobs.tokens)
    assert len(joined["tokens"]) == chunks[-1].usage.completion_tokens + (n_prompt if echo else 0)


def test_tokenizer_endpoints_for_lm_evaluation_harness(server, local):
    """vLLM's /tokenizer_info, /tokenize, /detokenize: lm-evaluation-harness's tokenizer_backend=remote."""
    status, _, info = server.request("GET", "/tokenizer_info")
    assert status == 200 and info["model_max_length"] == 2048
    assert info["eos_token"] == local.tokenizer.token_text(local.tokenizer.eos_id) == "<|im_end|>"
    assert info["chat_template"] == local.tokenizer.spec.chat_template
    status, _, body = server.request("POST", "/tokenize", {"prompt": "Hello <|im_end|> world",
                                                           "add_special_tokens": False})
    assert status == 200 and body["tokens"] == local.tokenize("Hello <|im_end|> world", add_special=False)
    assert body["count"] == len(body["tokens"])
    status, _, back = server.request("POST", "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and back["prompt"] == "Hello <|im_end|> world"
    assert error_of(server.request("POST", "/detokenize", {"tokens": [-1]}))[0] == 400
    assert error_of(server.request("GET", "/tokenizer_info", key="wrong"))[0] == 401


# ----------------------------------------------------------------------------------------------
# errors: OpenAI's shape, the right status, and the server lives on

def error_of(status_body):
    status, _, body = status_body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return status, body["error"]


def test_errors(server, local):
    client = server.client()
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    status, error = error_of(server.request("POST", "/v1/completions", {"prompt": "hi"}, key=None))
    assert status == 401 and error["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="hi")
    status, error = error_of(server.request("POST", "/v1/chat/completions", b"{not json"))
    assert status == 400 and "not valid JSON" in error["message"]
    status, error = error_of(server.request("POST", "/v1/chat/completions", [1, 2]))
    assert status == 400
    status, error = error_of(server.request("POST", "/v1/chat/completions", {"messages": "hi"}))
    assert status == 400 and error["param"] == "messages"
    status, error = error_of(server.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": "many"}))
    assert status == 400 and error["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=server.model, prompt="hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="'n' = 2 is not supported"):
        client.completions.create(model=server.model, prompt="hi", n=2)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}],
                                       logit_bias={"5": 10})
    long = " ".join(["birds"] * 3000)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=server.model, prompt=long)
    n = len(local.tokenize(long))
    assert f"the prompt has {n} tokens and the context is 2048 tokens" in str(caught.value)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="context is 2048 tokens"):
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": long}])
    status, error = error_of(server.request("POST", "/v1/completions", {"prompt": [10 ** 9]}))
    assert status == 400 and error["param"] == "prompt"
    status, error = error_of(server.request("GET", "/v1/nothing"))
    assert status == 404
    assert server.proc.poll() is None and wait_for(lambda: idle(server))
    assert client.completions.create(model=server.model, prompt="hi", max_tokens=2).usage.completion_tokens <= 2


# ----------------------------------------------------------------------------------------------
# concurrency

def test_load_every_request_completes_or_gets_503_and_nothing_leaks(server):
    """8 clients at once, 6 rounds, on 2 slots with 2 queue places: at least the first 4 of each round
    are served, the rest get a clean 503 with Retry-After; the slots come back, RSS stays flat."""
    def one(results, barrier):
        client = server.client()
        barrier.wait()
        try:
            answer = client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=120,
                                               temperature=0)
            results.append(("ok", answer.usage.completion_tokens))
        except openai.APIStatusError as error:
            results.append((error.status_code, error.response.headers.get("retry-after")))

    rss, refused = [], 0
    for _ in range(6):
        results, barrier = [], threading.Barrier(8)
        threads = [threading.Thread(target=one, args=(results, barrier)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 8
        served = [r for r in results if r[0] == "ok"]
        busy = [r for r in results if r[0] != "ok"]
        assert all(r == ("ok", 120) for r in served) and len(served) >= 4
        assert all(r == (503, "1") for r in busy), busy
        refused += len(busy)
        assert wait_for(lambda: idle(server), 5)
        rss.append(server.rss_kb())
    assert refused > 0                       # the queue did fill up
    assert rss[-1] - rss[1] < 8 * 1024, rss  # KB: no growth after the first rounds


def post(server, path, body) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", path, body=json.dumps(body),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    return connection


def hang_up(connection) -> None:
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()


def test_disconnect_mid_stream_stops_the_generation(server):
    before = server.health()
    streams = [post(server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": -1, "temperature": 0,
                                                "stream": True}) for _ in range(2)]
    for connection in streams:
        response = connection.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
    assert server.health()["busy"] == 2
    # a third request waits in the queue; hanging up takes it out of the queue
    waiting = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert wait_for(lambda: server.health()["waiting"] == 1, 5)
    hang_up(waiting)
    assert wait_for(lambda: server.health()["waiting"] == 0, 5) and server.health()["busy"] == 2
    for connection in streams:
        hang_up(connection)
    assert wait_for(lambda: idle(server), 5)
    after = server.health()
    assert after["cancelled"] == before["cancelled"] + 2 and after["served"] == before["served"] + 2


def test_disconnect_during_a_long_prompt_stops_its_evaluation(server, local):
    """A client that hangs up while its long prompt is evaluated stops the evaluation after the batch
    of 64 prompt tokens being evaluated: the slot comes back well before the prompt would have been
    done, and holds only the batches evaluated by then (the next request with that prompt reuses them)."""
    def prompt(word):
        return word + " " + " ".join(["the robot counted the birds"] * 380)
    n = len(local.tokenize(prompt("pear")))
    assert 1800 < n < 2040
    before = server.health()
    start = time.monotonic()
    whole = server.client().completions.create(model=server.model, prompt=prompt("apple"), max_tokens=1, temperature=0)
    full_seconds = time.monotonic() - start
    assert whole.usage.prompt_tokens_details.cached_tokens == 0
    connection = post(server, "/v1/completions", {"prompt": prompt("pear"), "max_tokens": 1, "stream": True})
    assert connection.getresponse().status == 200            # (sent when the job starts)
    start = time.monotonic()
    hang_up(connection)
    assert wait_for(lambda: idle(server), 10)
    cancel_seconds = time.monotonic() - start
    after = server.health()
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"] + 2
    again = server.client().completions.create(model=server.model, prompt=prompt("pear"), max_tokens=1, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached % 64 == 0 and cached < n - 64, (cached, n, full_seconds, cancel_seconds)
    assert cancel_seconds < full_seconds / 2, (full_seconds, cancel_seconds)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_a_stream_stops_cleanly(long_file, sig):
    server = Server(long_file, "--threads", 1)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(
        {"messages": [{"role": "user", "content": "Go on"}], "max_tokens": -1, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.readline().startswith(b"data: ")
    start = time.monotonic()
    err = server.stop(sig)
    assert time.monotonic() - start < 10
    assert err.count("\n") == 1                                  # only "edgeq serve: stopped" after the start
    connection.close()


def test_missing_server_extra_is_one_line(long_file):
    code = ("import sys; sys.modules['uvicorn'] = None; from edgeq.cli import main; "
            f"sys.exit(main(['serve', {str(long_file)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 1
    assert result.stderr == "edgeq: error: edgeq serve needs uvicorn: pip install 'edgeq[server]'\n"


def test_bad_flags_are_one_line(long_file):
    for flags, message in ((["--parallel", "0"], "--parallel must be at least 1"),
                           (["--ctx", "100000"], "a context of 100000 tokens is out of range"),
                           (["--port", "70000"], "--port must be 0 to 65535")):
        result = subprocess.run([sys.executable, "-m", "edgeq", "serve", str(long_file), *flags], capture_output=True,
                                text=True, timeout=60, env=ENV)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and message in result.stderr, \
            result.stderr


# ----------------------------------------------------------------------------------------------
# the prompt's log-probabilities are what `edgeq perplexity` scores

def exact_token_text(model, text: str, n: int) -> tuple[str, list[int]]:
    """A prefix of `text` that tokenizes to exactly n tokens, as perplexity tokenizes a text file."""
    ids = model.tokenizer.encode(text, add_special=False, special=False)[:n]
    prefix = model.detokenize(ids)
    assert model.tokenizer.encode(prefix, add_special=False, special=False) == ids
    return prefix, ids


def check_against_perplexity(server, model_path, text, n, tmp_path, conventions=("gptq", "llama")):
    with edgeq.load(model_path, threads=1) as model:
        prefix, ids = exact_token_text(model, text, n)
        assert not model.tokenizer.add_bos
    (tmp_path / "text.txt").write_text(prefix)
    scored = server.client().completions.create(model=server.model, prompt=prefix, max_tokens=0, echo=True, logprobs=0)
    lp = scored.choices[0].logprobs
    assert len(lp.token_logprobs) == n and scored.choices[0].text == prefix
    nll = -np.array(lp.token_logprobs[1:])
    rows_of = {"gptq": slice(0, n - 1), "llama": slice(n // 2, n - 1)}       # the positions each one scores
    for convention, rows in ((c, rows_of[c]) for c in conventions):
        result = subprocess.run([sys.executable, "-m", "edgeq", "perplexity", str(model_path), "--text",
                                 str(tmp_path / "text.txt"), "--ctx", str(n), "--convention", convention,
                                 "--json", "-t", "1"], capture_output=True, text=True, timeout=300, env=ENV)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["chunks"] == 1 and report["tokens_scored"] == len(nll[rows])
        assert math.exp(nll[rows].mean()) == pytest.approx(report["ppl"], rel=1e-9)


def test_prompt_logprobs_equal_perplexity_tiny(server, long_file, tmp_path):
    from tiny_models import TOKENIZER_TEXT
    check_against_perplexity(server, long_file, TOKENIZER_TEXT * 3, 300, tmp_path)


def test_prompt_logprobs_equal_perplexity_smollm2(tmp_path):
    """SmolLM2-135M-Instruct, the default model (as `edgeq run` without MODEL): 600 tokens of the
    shipped evaluation text, past one 256-token evaluation chunk."""
    from edgeq import registry
    from edgeq.data import text_path
    path = registry.default_model(quiet=True)
    server = Server(path, "--ctx", 1024)
    try:
        check_against_perplexity(server, path, text_path("evaluation").read_text()[:20000], 600, tmp_path,
                                 conventions=("gptq",))
        answer = server.client().chat.completions.create(model=server.model, 
            messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12, temperature=0)
        assert "Paris" in answer.choices[0].message.content
    finally:
        server.stop()
