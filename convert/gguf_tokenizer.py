"""Carry a llama.cpp GGUF file's tokenizer (`tokenizer.ggml.*` metadata) over as a Hugging Face
`tokenizer.json`, so that `tokenizers` encodes text to exactly the ids llama.cpp gives.

Byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) with the pre-tokenizers in
PRE_TOKENIZER_REGEXES, and sentencepiece vocabularies with scores (`"llama"`: Llama 2, Gemma), as a
BPE whose merges rank by the merged piece's score with byte fallback (llama.cpp's SPM tokenizer merges
the adjacent pair whose result scores highest). The rules mirror llama.cpp's llama-vocab.cpp (as vendored in llama-cpp-python
0.3.36, the version tests/tools/make_tokenizer_golden.py checks against), not the model's original
Hugging Face tokenizer: no NFC normalizer (Qwen2's tokenizer.json has one, llama.cpp does not), and
every token llama.cpp treats as control or user-defined, including those it recognizes by their text,
is matched whole in text.
"""
from __future__ import annotations

import json
import re

import gguf
from tokenizers.pre_tokenizers import ByteLevel

from edgeq.config import TokenizerSpec
from edgeq.errors import EdgeqError

# tokenizer.ggml.pre -> llama.cpp's regexes, applied one after another; each splits every piece further
# and keeps both the matches and the text between them ("isolated"). The contraction alternatives are
# written `(?i:...)` as in the models' own tokenizer.json; llama.cpp spells the same thing out as '[sS]...
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_REGEXES = {
    "smollm": [r"\p{N}", _GPT2],
    "qwen2": [_QWEN2],
    "llama-bpe": [_LLAMA3],
    "gpt-2": [_GPT2],
    # llama.cpp's fallback when a file names no pre-tokenizer
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}
PRE_TOKENIZER_ALIASES = {"llama3": "llama-bpe", "llama-v3": "llama-bpe", "gpt2": "gpt-2"}
IGNORE_MERGES = {"llama-bpe"}     # a word that is itself a token skips the merges (llama.cpp and HF)
ADD_BOS_DEFAULT = {"llama-bpe"}   # llama.cpp's default when tokenizer.ggml.add_bos_token is absent

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
# types llama.cpp splits out of the text before the BPE (with parse_special)
MATCHED_WHOLE = {TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED}

# llama.cpp recognizes these tokens by their text, whatever type the file gives them: they become
# control tokens, and the first group (plus fill-in-the-middle pad/repo/file-separator) ends generation.
END_OF_GENERATION_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
                           "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
                           "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
                           "<turn|>", "<|tool_response>"}
FILL_IN_THE_MIDDLE_END_TEXTS = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>",
                                "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"}
FILL_IN_THE_MIDDLE_TEXTS = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>",
                            "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>",
                            "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                            "<MID>", "<|code_middle|>", "<|middle|>"}
USER_DEFINED_TEXTS = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}   # gpt-oss
END_OF_GENERATION_KEYS = ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")     # tokenizer.ggml.<k>_token_id


def tokenizer_spec_from_gguf(reader: gguf.GGUFReader) -> TokenizerSpec:
    model = _field(reader, "tokenizer.ggml.model")
    if model == "llama":
        return _sentencepiece_spec(reader)
    if model != "gpt2":
        raise EdgeqError(f"GGUF tokenizer model {model!r} is not supported; only 'gpt2' (byte-level BPE) "
                         f"with pre-tokenizers {', '.join(PRE_TOKENIZER_REGEXES)} and 'llama' "
                         "(sentencepiece with scores) can be carried over")
    pre = _field(reader, "tokenizer.ggml.pre") or "default"
    pre = PRE_TOKENIZER_ALIASES.get(pre, pre)
    if pre not in PRE_TOKENIZER_REGEXES:
        raise EdgeqError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: "
                         f"{', '.join(PRE_TOKENIZER_REGEXES)}")

    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise EdgeqError("GGUF tokenizer has no token list (tokenizer.ggml.tokens)")
    tokens, vocab, types, end_of_generation, bos_id, eos_id, add_bos, add_eos = \
        _vocabulary(reader, tokens, default_add_bos=pre in ADD_BOS_DEFAULT)

    pre_tokenizers = [_split(regex) for regex in PRE_TOKENIZER_REGEXES[pre]]
    pre_tokenizers.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False})
    # a byte the vocabulary lacks (SmolLM2 has no token for \x04, for one) stays a symbol while
    # llama.cpp merges, so nothing merges across it, and is dropped at the end; BPE would drop it
    # first and merge its neighbours, so it is split off on its own
    missing_bytes = sorted(set(ByteLevel.alphabet()) - vocab.keys())
    if missing_bytes:
        pre_tokenizers.append(_split("|".join(map(re.escape, missing_bytes))))

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, text) for i, (text, kind) in enumerate(zip(tokens, types))
                         if kind in MATCHED_WHOLE and vocab[text] == i],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers},
        "post_processor": _post_processor(tokens, bos_id if add_bos else None, eos_id if add_eos else None),
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,          # llama.cpp drops a character it cannot find; so does BPE without unk
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre in IGNORE_MERGES,
            "vocab": vocab,
            "merges": _merge_pairs(_field(reader, "tokenizer.ggml.merges") or [], vocab),
        },
    }
    return TokenizerSpec(
        kind="hf-json",
        data=json.dumps(tokenizer, ensure_ascii=False),
        bos_id=bos_id,
        eos_id=eos_id,
        add_bos=add_bos,
        chat_template=_field(reader, "tokenizer.chat_template"),
        extra_eos_ids=sorted(end_of_generation - {eos_id}),
        pad_id=_token_id(reader, "tokenizer.ggml.padding_token_id", len(tokens)),
        unk_id=_token_id(reader, "tokenizer.ggml.unknown_token_id", len(tokens)),
    )


SPACE = "\u2581"   # sentencepiece's visible space


def _sentencepiece_spec(reader: gguf.GGUFReader) -> TokenizerSpec:
    """A `llama` (sentencepiece) vocabulary as a byte-fallback BPE: spaces become U+2581 (and one is
    prepended when tokenizer.ggml.add_space_prefix, llama.cpp's default true), control and
    user-defined tokens are matched whole, the merges are every split of a token into two tokens,
    ranked by the merged token's score (higher first), then its id, then where it is cut. Checked
    against llama.cpp on Gemma 3's vocabulary (tests/test_gemma3_real.py)."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    if not tokens or not scores or len(scores) != len(tokens):
        raise EdgeqError("GGUF sentencepiece tokenizer needs tokenizer.ggml.tokens and as many scores")
    tokens, vocab, types, end_of_generation, bos_id, eos_id, add_bos, add_eos = \
        _vocabulary(reader, tokens, default_add_bos=True)   # llama.cpp's default for spm
    space_prefix = _field(reader, "tokenizer.ggml.add_space_prefix")
    space_prefix = True if space_prefix is None else bool(space_prefix)
    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")

    # merges: (left, right) -> rank; only normal tokens merge (byte and special tokens are whole)
    mergeable = {text: i for i, text in enumerate(tokens) if types[i] in (TOKEN_NORMAL, TOKEN_USER_DEFINED)
                 and vocab[text] == i}
    ranked = []
    for text, i in mergeable.items():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(scores[i]), i, cut, left, right))
    ranked.sort()
    normalizers = ([{"type": "Prepend", "prepend": SPACE}] if space_prefix else []) + \
        [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if space_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        # user-defined tokens (Gemma's runs of newlines, spaces, tabs...) are text: decoding keeps them
        "added_tokens": [_added_token(i, text, special=kind != TOKEN_USER_DEFINED)
                         for i, (text, kind) in enumerate(zip(tokens, types)) if kind in MATCHED_WHOLE and vocab[text] == i],
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": _post_processor(tokens, bos_id if add_bos else None, eos_id if add_eos else None),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[left, right] for _, _, _, left, right in ranked],
        },
    }
    return TokenizerSpec(
        kind="hf-json",
        data=json.dumps(tokenizer, ensure_ascii=False),
        bos_id=bos_id,
        eos_id=eos_id,
        add_bos=add_bos,
        chat_template=_field(reader, "tokenizer.chat_template"),
        extra_eos_ids=sorted(end_of_generation - {eos_id}),
        pad_id=_token_id(reader, "tokenizer.ggml.padding_token_id", len(tokens)),
        unk_id=_token_id(reader, "tokenizer.ggml.unknown_token_id", len(tokens)),
    )


def _token_id(reader: gguf.GGUFReader, key: str, n_tokens: int) -> int | None:
    """A token id field (padding, unknown), or None when absent or outside the vocabulary."""
    value = _field(reader, key)
    return int(value) if isinstance(value, int) and 0 <= value < n_tokens else None


def _field(reader: gguf.GGUFReader, key: str):
    """A metadata value as Python (str, int, bool, list), or None when the key is absent."""
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _vocabulary(reader: gguf.GGUFReader, tokens: list[str], default_add_bos: bool):
    """What both tokenizer models read alike: the token list (llama.cpp names empty tokens
    [EMPTY_i]; when a text repeats, the last id wins its lookup), its id lookup, the token types and
    end-of-generation ids as llama.cpp settles them, BOS/EOS ids and whether they are added
    (`default_add_bos` when the file does not say). Returns (tokens, vocab, types,
    end_of_generation, bos_id, eos_id, add_bos, add_eos)."""
    tokens = [text or f"[EMPTY_{i}]" for i, text in enumerate(tokens)]
    vocab = {text: i for i, text in enumerate(tokens)}
    types = _field(reader, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    key_ids = {name: _field(reader, f"tokenizer.ggml.{name}_token_id") for name in END_OF_GENERATION_KEYS}
    types, end_of_generation = _llama_cpp_token_types(tokens, [int(kind) for kind in types], vocab, key_ids)
    bos_id, eos_id = _field(reader, "tokenizer.ggml.bos_token_id"), key_ids["eos"]
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    add_bos = default_add_bos if add_bos is None else bool(add_bos)
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token"))
    if (add_bos and bos_id is None) or (add_eos and eos_id is None):
        raise EdgeqError("GGUF tokenizer asks to add a BOS/EOS token but names none")
    return tokens, vocab, types, end_of_generation, bos_id, eos_id, add_bos, add_eos


def _llama_cpp_token_types(tokens: list[str], types: list[int], vocab: dict[str, int],
                           key_ids: dict[str, int | None]) -> tuple[list[int], set[int]]:
    """Token types after llama.cpp's by-text overrides, and its end-of-generation ids.

    llama.cpp overrides only the first fill-in-the-middle token of each kind it meets, and none when the
    file names that kind by key; here every listed text is overridden (the same for real vocabularies).
    """
    types = list(types)
    end_of_generation = {i for i in key_ids.values() if i is not None}
    for text in END_OF_GENERATION_TEXTS | FILL_IN_THE_MIDDLE_END_TEXTS | FILL_IN_THE_MIDDLE_TEXTS:
        if text in vocab:
            types[vocab[text]] = TOKEN_CONTROL
            if text not in FILL_IN_THE_MIDDLE_TEXTS:
                end_of_generation.add(vocab[text])
    for text in USER_DEFINED_TEXTS & vocab.keys():
        types[vocab[text]] = TOKEN_USER_DEFINED
    texts = {tokens[i] for i in end_of_generation}
    # gpt-oss / solar-open: "<|end|>" ends a message, not the generation
    if "<|end|>" in texts and texts & {"<|call|>", "<|calls|>"} and texts & {"<|return|>", "<|flush|>"}:
        types[vocab["<|end|>"]] = TOKEN_USER_DEFINED
        end_of_generation.discard(vocab["<|end|>"])
    # gemma4: "</s>" is ordinary text
    if {"<|tool_response>", "</s>"} <= texts:
        types[vocab["</s>"]] = TOKEN_NORMAL
        end_of_generation.discard(vocab["</s>"])
    return types, end_of_generation


def _split(regex: str) -> dict:
    """Split every piece at the regex's matches, keeping the matches and the text between them."""
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _added_token(token_id: int, text: str, special: bool = True) -> dict:
    return {"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _merge_pairs(merges: list[str], vocab: dict[str, int]) -> list[list[str]]:
    """`"a b"` -> ["a", "b"], split at the first space after the first character, as llama.cpp does.

    `tokenizers` refuses a merge whose parts or result are not tokens (llama.cpp could still use one
    as an intermediate step), so such merges are dropped; the packaged models have none.
    """
    pairs = []
    for merge in merges:
        cut = merge.find(" ", 1)
        left, right = merge[:cut], merge[cut + 1:]
        if cut > 0 and left in vocab and right in vocab and left + right in vocab:
            pairs.append([left, right])
    return pairs


def _post_processor(tokens: list[str], bos_id: int | None, eos_id: int | None) -> dict | None:
    """Prepend BOS / append EOS, as llama.cpp's tokenize(add_special=True) does."""
    if bos_id is None and eos_id is None:
        return None
    bos = [{"SpecialToken": {"id": tokens[bos_id], "type_id": 0}}] if bos_id is not None else []
    eos = [{"SpecialToken": {"id": tokens[eos_id], "type_id": 0}}] if eos_id is not None else []
    seq_a, seq_b = [{"Sequence": {"id": "A", "type_id": 0}}], [{"Sequence": {"id": "B", "type_id": 1}}]
    special = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}
               for i in (bos_id, eos_id) if i is not None}
    return {"type": "TemplateProcessing", "single": bos + seq_a + eos,
            "pair": bos + seq_a + eos + bos + seq_b + eos, "special_tokens": special}
