"""The Python API: tokenizer, streaming detokenizer, sampler, edgeq.load / Model (generate, chat,
logits, stop strings, the context policy, KV-cache reuse, threads), on tiny models and on SmolLM2."""
from __future__ import annotations

import io
import threading
import time
import warnings

import numpy as np
import pytest

import edgeq
from edgeq import _ffi
from edgeq.config import TokenizerSpec
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile
from edgeq.model import EdgeqWarning, _StopMatcher
from edgeq.reference import Reference
from edgeq.sampling import Sampler, SamplingParams, candidates
from edgeq.tokenizer import REPLACEMENT, Tokenizer
from tiny_models import TOKENIZER_TEXT, train_tokenizer

MULTIBYTE = "Grüße, naïve café — 🙂🚀 日本語のテキスト, 世界! Ελληνικά 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 done."


# ----------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def tiny_files(tiny_converted):
    return {arch: tiny_converted(arch, 8) for arch in ("llama", "qwen2")}


@pytest.fixture
def tiny(tiny_files):
    with edgeq.load(tiny_files["llama"], threads=1) as model:
        yield model


@pytest.fixture(scope="session")
def smollm2_default():
    """The default model (SmolLM2-135M-Instruct at 4 bits), prepared once in the edgeq cache."""
    from edgeq.registry import default_model
    return default_model(quiet=True)


def hf_tokenizer(**spec) -> Tokenizer:
    return Tokenizer(TokenizerSpec("hf-json", train_tokenizer().to_str(), **spec))


def sentencepiece_tokenizer() -> Tokenizer:
    """A small BPE sentencepiece model with byte fallback (Llama-2 style), trained here."""
    import sentencepiece
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_TEXT.splitlines()), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=1.0, normalization_rule_name="identity", minloglevel=2)
    return Tokenizer(TokenizerSpec("sentencepiece", model.getvalue(), bos_id=1, eos_id=2, add_bos=True))


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf):
    import gguf
    from edgeq.convert.gguf_tokenizer import tokenizer_spec_from_gguf
    return Tokenizer(tokenizer_spec_from_gguf(gguf.GGUFReader(smollm2_gguf)))


# ----------------------------------------------------------------------------------------------
# tokenizer

def test_hf_tokenizer_round_trip_and_special_tokens():
    tokenizer = hf_tokenizer(bos_id=0, eos_id=2, add_bos=False, extra_eos_ids=[0])
    for text in ("Once upon a time", MULTIBYTE, "  spaces\tand\nnewlines  ", ""):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_ids == {0, 2}
    ids = tokenizer.encode("<|im_start|>user<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2                       # special-token text becomes its id
    literal = tokenizer.encode("<|im_start|>", special=False)
    assert 1 not in literal and tokenizer.decode(literal) == "<|im_start|>"
    assert tokenizer.decode(ids, skip_special=True) == "user"
    assert tokenizer.token_text(2) == "<|im_end|>"


def test_bos_is_added_once_when_the_model_wants_it():
    tokenizer = hf_tokenizer(bos_id=0, eos_id=2, add_bos=True)
    assert tokenizer.encode("Once")[0] == 0
    assert tokenizer.encode("<|endoftext|>Once")[:2] != [0, 0]          # not doubled
    assert tokenizer.encode("Once", add_special=False)[0] != 0
    assert hf_tokenizer(bos_id=0, eos_id=2, add_bos=False).encode("Once")[0] != 0


def test_sentencepiece_round_trip_byte_fallback_and_control_tokens():
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode("Hello 🙂 世界")
    assert ids[0] == 1                                                   # BOS (add_bos)
    assert tokenizer.decode(ids, skip_special=True) == "Hello 🙂 世界"
    assert len(ids) > 8                                                  # the emoji and CJK are byte pieces
    with_control = tokenizer.encode("a</s>b", add_special=False)
    assert 2 in with_control                                             # "</s>" matched as the control token
    assert tokenizer.decode(with_control) == "a</s>b"


def stream_pieces(tokenizer: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    decoder = tokenizer.stream_decoder(skip_special=skip_special)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("kind", ["byte-level BPE", "sentencepiece byte fallback", "SmolLM2"])
def test_streaming_never_splits_a_character(kind, request):
    tokenizer = {"byte-level BPE": lambda: hf_tokenizer(bos_id=0, eos_id=2),
                 "sentencepiece byte fallback": sentencepiece_tokenizer,
                 "SmolLM2": lambda: request.getfixturevalue("smollm2_tokenizer")}[kind]()
    ids = tokenizer.encode(MULTIBYTE, add_special=False)
    # some characters really are spread over several tokens
    assert sum(REPLACEMENT in tokenizer.decode([i]) for i in ids) >= 4
    pieces = stream_pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special=True)
    assert not any(REPLACEMENT in piece for piece in pieces)
    # text comes out with the token that completes it, not later
    text_so_far = ""
    for count, piece in enumerate(pieces[:-1], start=1):
        text_so_far += piece
        full = tokenizer.decode(ids[:count], skip_special=True)
        assert full.startswith(text_so_far)
        if not full.endswith(REPLACEMENT):
            assert text_so_far == full


@pytest.mark.parametrize("kind", ["byte-level BPE", "sentencepiece byte fallback", "SmolLM2"])
def test_token_bytes_join_to_the_text(kind, request):
    """token_bytes (OpenAI's logprobs `bytes`): a byte token is its one byte, not U+FFFD; a run of
    tokens' bytes is their text (sentencepiece: with the leading space its decoder strips)."""
    tokenizer = {"byte-level BPE": lambda: hf_tokenizer(bos_id=0, eos_id=2),
                 "sentencepiece byte fallback": sentencepiece_tokenizer,
                 "SmolLM2": lambda: request.getfixturevalue("smollm2_tokenizer")}[kind]()
    for text in (MULTIBYTE, "two  spaces, a tab\tand a newline\n"):
        ids = tokenizer.encode(text, add_special=False)
        joined, decoded = b"".join(tokenizer.token_bytes(i) for i in ids), tokenizer.decode(ids).encode()
        assert joined in (decoded, b" " + decoded)
        assert decoded == text.encode() or kind.startswith("sentencepiece")   # (it collapses runs of spaces)
    pieces = [tokenizer.token_bytes(i) for i in tokenizer.encode(MULTIBYTE, add_special=False)]
    assert any(len(piece) == 1 and piece[0] >= 0x80 for piece in pieces)
    assert tokenizer.token_bytes(tokenizer.eos_id) == tokenizer.token_text(tokenizer.eos_id).encode()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.token_bytes(tokenizer.vocab_size)


def test_streaming_leading_spaces_and_special_tokens():
    tokenizer = sentencepiece_tokenizer()              # its decoder drops the first token's leading space
    ids = tokenizer.encode("one two three four", add_special=False)
    assert "".join(stream_pieces(tokenizer, ids)) == "one two three four"
    chat = hf_tokenizer(bos_id=0, eos_id=2)
    ids = chat.encode("<|im_start|>hi<|im_end|> there")
    assert "".join(stream_pieces(chat, ids)) == "hi there"
    assert "".join(stream_pieces(chat, ids, skip_special=False)) == "<|im_start|>hi<|im_end|> there"


def test_streaming_invalid_bytes_still_come_out():
    tokenizer = hf_tokenizer(bos_id=0, eos_id=2)
    lone = [i for i in range(3, 300) if tokenizer.decode([i]) == REPLACEMENT][:10]   # lone UTF-8 fragments
    pieces = stream_pieces(tokenizer, lone)
    assert "".join(pieces) == tokenizer.decode(lone)


# ----------------------------------------------------------------------------------------------
# sampling

LOGITS = np.log(np.array([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02], dtype=np.float64)).astype(np.float32)


def draw(params: SamplingParams, logits=LOGITS, n: int = 4000, history=()) -> np.ndarray:
    sampler = Sampler(params)
    return np.array([sampler.sample(logits, history) for _ in range(n)])


def test_defaults_are_llama_cpp_s():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n) == (0.8, 40, 0.95, 0.05, 1.0, 64)


def test_greedy_and_repeat_penalty():
    greedy = SamplingParams(temperature=0)
    assert set(draw(greedy, n=50)) == {0}
    # penalty 2 on recent token 0: 0.40 -> logit/2 ... still negative logits are multiplied: 0 drops below 1
    assert Sampler(greedy.replace(repeat_penalty=2.0)).sample(LOGITS, [0]) == 1
    # only the last repeat_last_n tokens count
    assert Sampler(greedy.replace(repeat_penalty=2.0, repeat_last_n=1)).sample(LOGITS, [0, 5]) == 0


def test_frequency_and_presence_penalties():
    """llama.cpp's penalties sampler: logit -= count * frequency + presence, for tokens of the window."""
    greedy = SamplingParams(temperature=0)
    gap = LOGITS[0] - LOGITS[1]
    history = [0, 0, 0, 6]
    # three 0s: 3 * frequency must pass the gap to the second token; presence once
    assert Sampler(greedy.replace(frequency_penalty=gap / 3 * 1.01)).sample(LOGITS, history) == 1
    assert Sampler(greedy.replace(frequency_penalty=gap / 3 * 0.99)).sample(LOGITS, history) == 0
    assert Sampler(greedy.replace(presence_penalty=gap * 1.01)).sample(LOGITS, history) == 1
    assert Sampler(greedy.replace(presence_penalty=gap * 0.99)).sample(LOGITS, history) == 0
    assert Sampler(greedy.replace(presence_penalty=-2.0)).sample(LOGITS, [1]) == 1     # negative: favoured
    # outside the last repeat_last_n tokens: no penalty
    assert Sampler(greedy.replace(presence_penalty=2.0, repeat_last_n=1)).sample(LOGITS, [0, 5]) == 0
    with pytest.raises(ValueError, match="frequency_penalty must be in"):
        SamplingParams(frequency_penalty=2.5).validate()


def test_generation_logprobs_and_prompt_logprobs(tiny):
    """logprobs=N: the chosen token's log-probability under the model (greedy: the largest), the N
    likeliest; prompt_logprobs: log-softmax of logits() at the position before each token."""
    ids = tiny.tokenize("Once upon a time there was")
    text = tiny.generate(ids, max_tokens=6, temperature=0, logprobs=3)
    records = tiny.last_stats.logprobs
    assert text == tiny.generate("Once upon a time there was", max_tokens=6, temperature=0)
    assert [r.token for r in records][:len(tiny.last_stats.tokens)] == tiny.last_stats.tokens
    for record in records:
        assert len(record.top) == 3 and record.top[0] == (record.token, pytest.approx(record.logprob))
        assert record.top[0][1] >= record.top[1][1] >= record.top[2][1]
    scored = tiny.prompt_logprobs(ids, top=2)
    want = edgeq.model.log_softmax(tiny.logits(ids))
    assert [s.token for s in scored] == ids[1:]
    assert np.allclose([s.logprob for s in scored], want[np.arange(len(ids) - 1), ids[1:]], atol=1e-12)
    assert [s.top[0][0] for s in scored] == np.argmax(want[:-1], axis=-1).tolist()
    with pytest.raises(EdgeqError, match="outside the vocabulary"):
        tiny.generate([10 ** 7])


class CancelAfter(threading.Event):
    """A cancel flag that reads as set from its (n + 1)-th look on: where the model looks, exactly."""

    def __init__(self, n: int):
        super().__init__()
        self.looks, self.n = 0, n

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.n


def test_cancel_stops_a_prompt_after_the_batch_being_evaluated(tiny):
    """generate/chat(cancel=...) looks at the flag before each batch of prompt tokens (64: the runtime's
    batch) and before each new token; prompt_logprobs after each batch. What was evaluated stays cached."""
    ids = (tiny.tokenize(TOKENIZER_TEXT * 4))[:min(tiny.n_ctx - 8, 200)]
    assert len(ids) > 2 * edgeq.model.PREFILL_CHUNK
    tiny.reset()
    assert tiny.generate(ids, max_tokens=4, temperature=0, cancel=CancelAfter(2)) == ""
    assert tiny.last_stats.stop_reason == "cancelled" and tiny.last_stats.tokens == []
    assert tiny.info["n_past"] == 2 * edgeq.model.PREFILL_CHUNK
    # the next call reuses the two batches; cancelled after two tokens, it says so
    text = tiny.generate(ids, max_tokens=4, temperature=0, cancel=CancelAfter(3))   # two batches, a token, then stop
    assert tiny.last_stats.cached_tokens == 2 * edgeq.model.PREFILL_CHUNK
    assert tiny.last_stats.stop_reason == "cancelled" and len(tiny.last_stats.tokens) == 2
    assert text == tiny.generate(ids, max_tokens=2, temperature=0) and tiny.last_stats.stop_reason == "length"
    assert len(tiny.prompt_logprobs(ids, cancel=CancelAfter(1))) == edgeq.model.PREFILL_CHUNK
    assert len(tiny.prompt_logprobs(ids, cancel=threading.Event())) == len(ids) - 1


def test_seed_reproduces_and_no_seed_varies():
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    assert np.array_equal(draw(params, n=200), draw(params, n=200))
    assert not np.array_equal(draw(params, n=200), draw(params.replace(seed=8), n=200))


def test_full_support_follows_the_distribution():
    counts = np.bincount(draw(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1), n=20000),
                         minlength=7) / 20000
    assert np.abs(counts - np.exp(LOGITS)).max() < 0.015


@pytest.mark.parametrize("changes, support", [
    ({"top_k": 3}, {0, 1, 2}),
    ({"top_p": 0.78}, {0, 1, 2}),          # 0.40 + 0.25 = 0.65 < 0.78 <= 0.80 with the third
    ({"top_p": 0.60}, {0, 1}),
    ({"min_p": 0.3}, {0, 1, 2}),           # p >= 0.3 * 0.40 = 0.12
    ({"min_p": 0.2}, {0, 1, 2, 3}),        # p >= 0.08
    ({"min_p": 0.5}, {0, 1}),
    ({"top_k": 5, "top_p": 0.9, "min_p": 0.2}, {0, 1, 2, 3}),
])
def test_top_k_top_p_min_p_restrict_the_support(changes, support):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3).replace(**changes)
    assert set(candidates(LOGITS, params)[0].tolist()) == support
    assert set(draw(params).tolist()) == support


def test_temperature_reshapes_only_what_survives_the_filters():
    hot = SamplingParams(temperature=50.0, top_k=2, top_p=1.0, min_p=0.0, seed=4)
    counts = np.bincount(draw(hot), minlength=7)
    assert set(np.nonzero(counts)[0]) == {0, 1} and abs(counts[0] - counts[1]) < 300   # nearly uniform over 2
    cold = draw(SamplingParams(temperature=0.05, top_k=0, top_p=1.0, min_p=0.0, seed=4), n=500)
    assert (cold == 0).mean() > 0.99


def test_bad_sampling_values_are_refused():
    for bad in ({"temperature": -1}, {"top_p": 1.5}, {"min_p": -0.1}, {"repeat_penalty": 0}):
        with pytest.raises(ValueError):
            SamplingParams().replace(**bad).validate()


# ----------------------------------------------------------------------------------------------
# stop strings (the matcher alone)

def run_matcher(stops, pieces):
    matcher, out = _StopMatcher(stops), []
    for piece in pieces:
        text, hit = matcher.push(piece)
        out.append(text)
        if hit:
            return out, True
    out.append(matcher.flush())
    return out, False


def test_stop_string_split_across_pieces_is_never_emitted():
    out, hit = run_matcher(["END"], ["The answer", " is 4.", " E", "N", "D and more"])
    assert hit and "".join(out) == "The answer is 4. "
    assert out[2] == " " and out[3] == ""                # "E" and "N" were held back, not emitted
    out, hit = run_matcher(["END"], ["a E", "NOUGH", " b"])
    assert not hit and "".join(out) == "a ENOUGH b"      # a partial match is released when it fails
    out, hit = run_matcher(["\n\n", "User:"], ["Hi", "\n", "Us", "er: x"])
    assert hit and "".join(out) == "Hi\n"


# ----------------------------------------------------------------------------------------------
# the Model on tiny converted files

def test_greedy_generation_equals_the_float_reference(tiny_files):
    for arch, path in tiny_files.items():
        file = ModelFile(path)
        with edgeq.load(path, threads=1, kv_fp32=True) as model:
            prompt = model.tokenize("Once upon a time")
            model.generate("Once upon a time", max_tokens=24, temperature=0)
            got = model.last_stats.tokens
        assert got == Reference(file.config, file.load).greedy(prompt, len(got))[:len(got)], arch
        assert len(got) >= 4 or model.last_stats.stop_reason == "eos"


def test_logits_equal_the_reference(tiny_files):
    path = tiny_files["qwen2"]
    file = ModelFile(path)
    with edgeq.load(path, threads=1, kv_fp32=True) as model:
        ids = model.tokenize("The robot counted the birds")
        logits = model.logits(ids)
        assert model.info["n_past"] == len(ids)
    expected = Reference(file.config, file.load).forward(ids)
    assert logits.shape == (len(ids), file.config.vocab_size) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 1e-4 * np.ptp(expected)


def test_stream_equals_text_and_seed_reproduces(tiny):
    kwargs = dict(max_tokens=30, temperature=1.0, seed=11)
    text = tiny.generate("Once upon a time", **kwargs)
    pieces = list(tiny.generate("Once upon a time", stream=True, **kwargs))
    assert "".join(pieces) == text and len(pieces) > 1
    assert tiny.generate("Once upon a time", **kwargs) == text
    others = {tiny.generate("Once upon a time", **{**kwargs, "seed": s}) for s in range(12, 16)}
    assert len(others - {text}) >= 3
    assert tiny.last_stats.stop_reason in ("length", "eos")


def pick_stop(text: str) -> str:
    """A 3-character stop string that first occurs in the middle of `text`."""
    for i in range(6, len(text) - 3):
        stop = text[i:i + 3]
        if REPLACEMENT not in stop and text.find(stop) == i:
            return stop
    raise AssertionError(f"no stop string candidate in {text!r}")


def test_max_tokens_and_stop_strings(tiny):
    tiny.generate("The robot", max_tokens=12, temperature=0)
    assert tiny.last_stats.generated_tokens == 12 and tiny.last_stats.stop_reason == "length"
    assert tiny.generate("The robot", max_tokens=0) == ""
    sampling = dict(max_tokens=40, temperature=1.0, top_k=10, seed=0)
    full = tiny.generate("The robot", **sampling)
    stop = pick_stop(full)
    expected = full[:full.find(stop)]
    for as_list in (False, True):
        pieces = list(tiny.generate("The robot", stream=True, stop=["never-in-this-text", stop] if as_list else stop,
                                    **sampling))
        assert "".join(pieces) == expected and len(expected) >= 6
        assert not any(stop in piece for piece in pieces)
        assert tiny.last_stats.stop_reason == "stop"


def test_prompt_longer_than_the_context_is_a_clear_error(tiny_files):
    with edgeq.load(tiny_files["llama"], threads=1, ctx=32) as model:
        prompt = "the robot counted the birds " * 10
        n = len(model.tokenize(prompt))
        with pytest.raises(EdgeqError, match=f"the prompt has {n} tokens and the context is 32 tokens.*--ctx"):
            model.generate(prompt)
        with pytest.raises(EdgeqError, match="trained for"):
            edgeq.load(tiny_files["llama"], ctx=100_000)


def test_generation_stops_at_the_end_of_the_context_with_a_warning(tiny_files):
    with edgeq.load(tiny_files["llama"], threads=1, ctx=32) as model:
        prompt = model.tokenize("Once upon a time")
        with pytest.warns(EdgeqWarning, match="end of the context \\(32 tokens\\)"):
            for seed in range(20):       # a random model: find a run that does not sample EOS first
                model.generate("Once upon a time", max_tokens=None, temperature=1.0, top_k=0, seed=seed)
                if model.last_stats.stop_reason == "context":
                    break
        assert model.last_stats.stop_reason == "context"
        # every position of the context was used; the last sampled token is returned, not evaluated
        assert model.info["n_past"] == 32
        assert model.last_stats.generated_tokens == 32 - len(prompt) + 1


def chat_messages(n_turns: int, words: int = 1) -> list[dict]:
    messages = [{"role": "system", "content": "You are a robot."}]
    for turn in range(n_turns):
        messages.append({"role": "user", "content": f"question {turn}: " + "birds " * words})
        messages.append({"role": "assistant", "content": f"answer {turn}: " + "stars " * words})
    return messages


def test_chat_drops_the_oldest_turns_to_fit(tiny_files):
    with edgeq.load(tiny_files["llama"], threads=1, ctx=128) as model:
        messages = chat_messages(5) + [{"role": "user", "content": "last question"}]   # 226 tokens
        with pytest.warns(EdgeqWarning, match="context of 128 tokens: left out its 6 oldest message"):
            model.chat(messages, max_tokens=4, temperature=0)
        stats = model.last_stats
        assert stats.dropped_messages == 6
        kept = messages[:1] + messages[1 + stats.dropped_messages:]
        assert kept[1]["role"] == "user"                                  # whole turns only
        assert stats.prompt_tokens == len(model.tokenize(model.render_chat(kept), add_special=False))
        assert stats.prompt_tokens + 4 <= 128 < stats.prompt_tokens + 4 + 37   # room for the answer; one turn
                                                                               # more (37 tokens) would not fit
        assert model.render_chat(kept).startswith("<|im_start|>system\nYou are a robot.")

        with warnings.catch_warnings():
            warnings.simplefilter("error")                                # a fitting chat warns nothing
            model.chat(messages[:1] + messages[-1:], max_tokens=4, temperature=0)
        long = messages[:1] + [{"role": "user", "content": "birds " * 150}]
        with pytest.raises(EdgeqError, match="the last message with the system message has \\d+ tokens and "
                                             "the context is 128"):
            model.chat(long)


def test_chat_reuses_the_kv_cache_of_the_previous_turn(tiny_files, monkeypatch):
    evaluated = []
    real_eval = _ffi.model_eval

    def counting_eval(handle, tokens, *args, **kwargs):
        evaluated.append(len(tokens))
        return real_eval(handle, tokens, *args, **kwargs)

    monkeypatch.setattr(_ffi, "model_eval", counting_eval)
    messages = [{"role": "system", "content": "You are a robot."}, {"role": "user", "content": "Hello there"}]
    with edgeq.load(tiny_files["llama"], threads=1) as model:
        first = model.chat(messages, max_tokens=8, temperature=0)
        s1 = model.last_stats
        assert s1.cached_tokens == 0 and sum(evaluated) == s1.prompt_tokens + s1.generated_tokens - 1
        assert model.info["n_past"] == sum(evaluated)
        messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "Count the birds"}]
        evaluated.clear()
        second = model.chat(messages, max_tokens=8, temperature=0)
        s2 = model.last_stats
        # the first prompt (and the answer's tokens, as far as they re-tokenize the same) are not evaluated again
        assert s2.cached_tokens >= s1.prompt_tokens
        assert sum(evaluated) == s2.prompt_tokens - s2.cached_tokens + s2.generated_tokens - 1
        assert sum(evaluated) < s2.prompt_tokens
    with edgeq.load(tiny_files["llama"], threads=1) as fresh:                    # same answer from scratch
        assert fresh.chat(messages, max_tokens=8, temperature=0) == second


def test_two_models_in_one_process(tiny_files):
    expected = {}
    for arch, path in tiny_files.items():
        with edgeq.load(path, threads=1) as model:
            expected[arch] = list(model.generate("The robot", max_tokens=16, temperature=0, stream=True))
    llama, qwen = edgeq.load(tiny_files["llama"], threads=1), edgeq.load(tiny_files["qwen2"], threads=1)
    try:
        streams = {"llama": llama.generate("The robot", max_tokens=16, temperature=0, stream=True),
                   "qwen2": qwen.generate("The robot", max_tokens=16, temperature=0, stream=True)}
        got = {arch: [] for arch in streams}
        while streams:                           # interleaved token by token
            for arch in list(streams):
                piece = next(streams[arch], None)
                if piece is None:
                    del streams[arch]
                else:
                    got[arch].append(piece)
        assert got == expected
    finally:
        llama.close()
        qwen.close()


def test_one_model_from_two_threads_is_refused_clearly(tiny):
    stream = tiny.generate("Once upon a time", max_tokens=50, temperature=0, stream=True)
    next(stream)                                           # this thread now holds the model
    errors = []

    def other_thread():
        try:
            tiny.generate("Hello", max_tokens=2)
        except EdgeqError as error:
            errors.append(str(error))

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert len(errors) == 1 and "in use by another thread" in errors[0]
    with pytest.raises(EdgeqError, match="unfinished generate/chat stream"):
        tiny.generate("Hello", max_tokens=2)                # same thread, stream not finished
    stream.close()
    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert len(errors) == 1                                  # free again: the other thread succeeds


def test_the_runtime_refuses_concurrent_calls_on_one_handle(tiny_files):
    """Below the Model's lock, C's own guard: while one thread is inside eq_model_eval (back-to-back
    96-token evaluations, the GIL released), the other thread's eval, truncate and info are refused
    with EQ_ERR_BUSY, each at least once; afterwards the cache gives the same logits as a fresh model."""
    handle = _ffi.model_open(tiny_files["llama"], threads=1, ctx=256)
    refused = {"eval": 0, "truncate": 0, "info": 0}
    stop = threading.Event()
    prompt = (np.arange(96) % 300 + 3).tolist()

    def busy(call) -> bool:
        """Run call(); True if the runtime refused it because the other thread holds the model."""
        try:
            call()
        except _ffi.ContextFullError:
            pass                  # the cache filled up between the evaluator's evaluations: it resets it
        except EdgeqError as error:
            assert "in use by another thread" in str(error), error
            return True
        return False

    def evaluator():
        while not stop.is_set():
            busy(lambda: _ffi.model_truncate(handle, 0))
            busy(lambda: _ffi.model_eval(handle, prompt, logits=False))

    worker = threading.Thread(target=evaluator)
    worker.start()
    try:
        calls = {"eval": lambda: _ffi.model_eval(handle, [5]), "truncate": lambda: _ffi.model_truncate(handle, 0),
                 "info": lambda: _ffi.model_info(handle)}
        deadline = time.monotonic() + 60
        while min(refused.values()) == 0 and time.monotonic() < deadline:
            for name, call in calls.items():
                refused[name] += busy(call)
    finally:
        stop.set()
        worker.join()
    try:
        assert min(refused.values()) >= 1, refused
        _ffi.model_truncate(handle, 0)
        after = _ffi.model_eval(handle, prompt[:8])
    finally:
        _ffi.model_close(handle)
    fresh = _ffi.model_open(tiny_files["llama"], threads=1, ctx=256)
    try:
        assert np.array_equal(after, _ffi.model_eval(fresh, prompt[:8]))
    finally:
        _ffi.model_close(fresh)


def test_model_info_is_read_under_the_model_lock(tiny_files):
    """Model.info takes the Model's lock: refused while another thread holds an unfinished stream,
    answered by the stream's own thread and once the stream is closed."""
    model = edgeq.load(tiny_files["llama"], threads=1)
    started, finish, seen = threading.Event(), threading.Event(), {}

    def streamer():
        # greedy: a random draw ends this tiny random model's answer at once about 1 time in 30
        stream = model.generate("Hello", max_tokens=10, stream=True, temperature=0)
        next(stream)
        seen["own thread"] = model.info["n_past"]
        started.set()
        finish.wait(30)
        stream.close()

    worker = threading.Thread(target=streamer)
    worker.start()
    try:
        assert started.wait(30)
        with pytest.raises(EdgeqError, match="in use by another thread"):
            model.info
    finally:
        finish.set()
        worker.join()
    assert seen["own thread"] > 0
    assert model.info["n_past"] >= seen["own thread"]
    model.close()


def test_closed_models_and_handles_refuse_use(tiny_files):
    model = edgeq.load(tiny_files["llama"], threads=1)
    # greedy: a random draw ends this tiny random model's answer at once about 1 time in 30
    stream = model.generate("Hello", max_tokens=10, stream=True, temperature=0)
    next(stream)
    model.close()                                  # ends this thread's unfinished stream first
    model.close()
    assert model.closed
    with pytest.raises(EdgeqError, match="closed"):
        model.generate("Hello", max_tokens=2)
    with pytest.raises(EdgeqError, match="closed"):
        model.info
    handle = _ffi.model_open(tiny_files["llama"], threads=1)
    _ffi.model_close(handle)
    with pytest.raises(EdgeqError, match="closed"):
        _ffi.model_eval(handle, [1])
    with pytest.raises(_ffi.ContextFullError):
        handle = _ffi.model_open(tiny_files["llama"], threads=1, ctx=4)
        _ffi.model_eval(handle, [1, 2, 3, 4, 5])
    assert _ffi.physical_cores() >= 1


def test_info_and_defaults(tiny_files):
    with edgeq.load(tiny_files["qwen2"], threads=1, ctx=128) as model:
        info = model.info
        assert (info["arch"], info["n_ctx"], info["n_threads"], info["n_past"]) == ("qwen2", 128, 1, 0)
        assert model.defaults == SamplingParams()          # the tiny generation_config sets no sampling values
        assert model.detokenize(model.tokenize("Hello, world!")) == "Hello, world!"
    with edgeq.load(tiny_files["qwen2"]) as model:
        assert model.info["n_threads"] == _ffi.physical_cores()
        assert model.info["n_ctx"] == 256                 # min(max_seq_len 256, 4096)


# ----------------------------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct

@pytest.mark.slow
def test_smollm2_chat_answers_and_reuses_the_conversation(smollm2_default):
    with edgeq.load(smollm2_default, ctx=512, threads=1) as model:   # 1: steady on a busy machine
        messages = [{"role": "user", "content": "What is 2+2?"}]
        answer = model.chat(messages, temperature=0, max_tokens=10)          # "2 + 2 = 4..."
        first = model.last_stats
        assert "4" in answer and REPLACEMENT not in answer
        assert first.prompt_tokens == 37 and first.stop_reason in ("eos", "length")
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And 3+3?"}]
        model.chat(messages, temperature=0, max_tokens=3)
        second = model.last_stats
        # only the new turn is evaluated: the first prompt and answer come from the KV cache
        assert second.cached_tokens >= first.prompt_tokens + first.generated_tokens - 2
        assert second.evaluated_prompt_tokens < 20
        assert model.info["n_past"] == second.prompt_tokens + second.generated_tokens - (second.stop_reason != "eos")
