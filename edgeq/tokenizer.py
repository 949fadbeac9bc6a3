"""Text <-> token ids for a converted model, from the TokenizerSpec stored in the file.

Wraps the `tokenizers` library (kind "hf-json": the whole tokenizer.json) or `sentencepiece` (kind
"sentencepiece": the model bytes); it adds the project's rules on top: when BOS is added, which
ids end generation, and an incremental decoder for streaming. It does not render chat templates
(edgeq.model does) and never re-implements a tokenization algorithm.
"""
from __future__ import annotations

import json
import re
from typing import Iterable, Sequence

from .config import TokenizerSpec
from .errors import EdgeqError

REPLACEMENT = "\ufffd"      # what both libraries decode an incomplete UTF-8 sequence to
MAX_PENDING_TOKENS = 8      # a UTF-8 character is at most 4 bytes, so 4 byte tokens; beyond 8, give up waiting
SPACE = "\u2581"            # sentencepiece's visible space
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")     # a byte-fallback token


def _byte_level_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: the character that stands for each byte -> the byte
    (printable bytes stand for themselves, the others for 256, 257, ... in byte order)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


class _HFBackend:
    def __init__(self, data: str):
        from tokenizers import Tokenizer as HFTokenizer
        try:
            self.tokenizer = HFTokenizer.from_str(data)
        except Exception as error:   # tokenizers raises its own exception type
            raise EdgeqError(f"the tokenizer stored in the file cannot be loaded ({error})") from None
        self.special_ids = frozenset(token_id for token_id, token in
                                     self.tokenizer.get_added_tokens_decoder().items() if token.special)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.added_ids = frozenset(self.tokenizer.get_added_tokens_decoder())
        decoder = json.loads(data).get("decoder") or {}
        kinds = {d.get("type") for d in decoder.get("decoders") or [decoder] if isinstance(d, dict)}
        self.byte_of = _byte_level_bytes() if "ByteLevel" in kinds else None
        self.byte_fallback = "ByteFallback" in kinds

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.added_ids:                # added tokens are stored as their text
            return piece.encode()
        if self.byte_of is not None:
            try:
                return bytes(self.byte_of[c] for c in piece)
            except KeyError:
                return piece.encode()
        match = BYTE_PIECE.fullmatch(piece) if self.byte_fallback else None
        return bytes([int(match.group(1), 16)]) if match else piece.replace(SPACE, " ").encode()

    def encode(self, text: str, post_process: bool, special: bool) -> list[int]:
        # encode_special_tokens=True makes "<|im_end|>" in the text ordinary characters
        self.tokenizer.encode_special_tokens = not special
        try:
            return self.tokenizer.encode(text, add_special_tokens=post_process).ids
        finally:
            self.tokenizer.encode_special_tokens = False

    def decode(self, ids: Sequence[int], skip_special: bool) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)


class _SentencePieceBackend:
    def __init__(self, data: bytes):
        import sentencepiece
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=bytes(data))
        except Exception as error:
            raise EdgeqError(f"the sentencepiece model stored in the file cannot be loaded ({error})") from None
        processor = self.processor
        self.vocab_size = processor.get_piece_size()
        self.special_ids = frozenset(i for i in range(self.vocab_size) if processor.is_control(i))
        # control pieces (<s>, </s>, ...) are matched whole in text, as llama.cpp does; sentencepiece
        # itself matches user-defined pieces but never control ones
        matched = [processor.id_to_piece(i) for i in sorted(self.special_ids) if processor.id_to_piece(i)]
        matched.sort(key=len, reverse=True)
        self.special_pattern = re.compile("(" + "|".join(map(re.escape, matched)) + ")") if matched else None
        self.piece_ids = {processor.id_to_piece(i): i for i in range(self.vocab_size)}

    def encode(self, text: str, post_process: bool, special: bool) -> list[int]:
        if not special or self.special_pattern is None:
            return self.processor.encode(text, out_type=int) if text else []
        ids: list[int] = []
        for index, part in enumerate(self.special_pattern.split(text)):
            if index % 2:                    # a matched special piece
                ids.append(self.piece_ids[part])
            elif part:
                ids.extend(self.processor.encode(part, out_type=int))
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool) -> str:
        if skip_special:
            return self.processor.decode([i for i in ids if i not in self.special_ids])
        out, run = [], []
        for token_id in ids:
            if token_id in self.special_ids:
                out.append(self.processor.decode(run))
                out.append(self.processor.id_to_piece(token_id))
                run = []
            else:
                run.append(token_id)
        out.append(self.processor.decode(run))
        return "".join(out)

    def token_text(self, token_id: int) -> str | None:
        return self.processor.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else None

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.processor.id_to_piece(token_id)
        match = BYTE_PIECE.fullmatch(piece) if self.processor.is_byte(token_id) else None
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.encode() if token_id in self.special_ids else piece.replace(SPACE, " ").encode()


class Tokenizer:
    """Encode / decode for one model. BOS policy: `encode(text)` runs the tokenizer's own
    post-processor and then makes sure the sequence starts with BOS when the file says the model
    wants one (add_bos); `encode(text, add_special=False)` adds nothing."""

    def __init__(self, spec: TokenizerSpec):
        if spec.kind == "hf-json":
            self._backend = _HFBackend(spec.data)
        elif spec.kind == "sentencepiece":
            self._backend = _SentencePieceBackend(spec.data)
        else:
            raise EdgeqError(f"unknown tokenizer kind {spec.kind!r}")
        self.spec = spec
        self.kind = spec.kind
        self.bos_id = spec.bos_id
        self.eos_id = spec.eos_id
        self.add_bos = bool(spec.add_bos) and spec.bos_id is not None
        # ids that end generation: EOS plus the file's extra end-of-generation ids (e.g. <|endoftext|>)
        self.eos_ids = frozenset(i for i in [spec.eos_id, *spec.extra_eos_ids] if i is not None)
        self.special_ids = self._backend.special_ids | self.eos_ids
        self.vocab_size = self._backend.vocab_size

    def encode(self, text: str, add_special: bool = True, special: bool = True) -> list[int]:
        """text -> ids. add_special: BOS (and whatever the tokenizer's post-processor adds);
        special: special-token text such as "<|im_start|>" becomes its id (else ordinary characters)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._backend.encode(text, add_special, special)
        if add_special and self.add_bos and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """ids -> text. skip_special drops control tokens (BOS, EOS, <|im_start|>, ...)."""
        ids = [int(i) for i in ids]
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self._backend.decode(ids, skip_special)

    def token_text(self, token_id: int | None) -> str:
        """The text of one (special) token, e.g. for a chat template's bos_token; "" if unknown."""
        if token_id is None:
            return ""
        return self._backend.token_text(int(token_id)) or ""

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a byte token: that byte, part of a UTF-8 character; a
        special token: its text), as OpenAI's logprobs `bytes`; the text of a run of tokens is their
        bytes joined, but for a leading space a decoder strips."""
        if not 0 <= int(token_id) < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self._backend.token_bytes(int(token_id))

    def stream_decoder(self, skip_special: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Turns generated ids, one at a time, into the text they add, never splitting a UTF-8 character.

    Decoding ids one by one is wrong twice over: a character spread over several byte tokens
    (byte-level BPE, sentencepiece byte fallback) decodes to U+FFFD pieces, and decoders that strip
    a leading space from the first token would drop spaces. So, like vLLM and text-generation-
    inference, each step decodes a short window that starts at the previous emitted piece, twice
    (without and with the new ids), and emits the difference only once it does not end in an
    incomplete character. `flush()` returns what is still pending at the end.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.prefix = 0     # window start: the first id of the last emitted piece
        self.read = 0       # ids before this have been emitted

    def _decode(self, begin: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[begin:end], skip_special=self.skip_special)

    def push(self, token_id: int) -> str:
        """Add one id; returns the newly completed text ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        piece = self._new_text()
        complete = piece and not piece.endswith(REPLACEMENT)
        if complete or len(self.ids) - self.read >= MAX_PENDING_TOKENS:
            return self._emit(piece)
        return ""

    def _new_text(self) -> str:
        prefix_text = self._decode(self.prefix, self.read)
        text = self._decode(self.prefix)
        if text.startswith(prefix_text):
            return text[len(prefix_text):]
        common = 0     # a decoder that rewrites earlier text: emit from where the two differ
        while common < min(len(text), len(prefix_text)) and text[common] == prefix_text[common]:
            common += 1
        return text[common:]

    def _emit(self, piece: str) -> str:
        self.prefix, self.read = self.read, len(self.ids)
        return piece

    def flush(self) -> str:
        """The text of ids not yet emitted (an incomplete character comes out as U+FFFD)."""
        if self.read == len(self.ids):
            return ""
        return self._emit(self._new_text())
