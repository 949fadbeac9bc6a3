"""`edgeq perplexity`: the numbers against an independent numpy computation on the float reference,
llama.cpp's chunking and scoring convention, KL divergence / top-1 against a base, and bad input."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeq.fileformat import ModelFile
from edgeq.perplexity import make_chunks, perplexity, read_text, scored_positions, tokenize_text
from edgeq.reference import Reference
from edgeq.tokenizer import Tokenizer

CTX = 64          # the tiny models are trained for 256 positions


def english_text(n_sentences: int = 220, seed: int = 0) -> str:
    """A few KB of plain English, deterministic."""
    rng = np.random.default_rng(seed)
    subjects = ["The robot", "A girl", "The old man", "Every bird", "The town", "Alice", "Bob", "The teacher"]
    verbs = ["counted", "watched", "carried", "remembered", "fixed", "opened", "wrote about", "asked about"]
    objects = ["the stars", "the clock in the square", "a small notebook", "the window", "the birds on the roof",
               "the quiet hill", "a long story", "the first light of the morning"]
    tails = [".", " every day.", " before the rain.", " and then went home.", ", because it was late."]
    return " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}"
                    for _ in range(n_sentences)) + "\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "english.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


def _convert(tmp_path_factory, folder, bits):
    """Plain rtn: on a random tiny model a calibrated 2-bit file can land on either side of the
    float perplexity by chance; these tests are about the measuring tool. Bit-planes: the LUT path
    follows the float reference to ~1e-5 in perplexity, the oracle below (int8 activations would not)."""
    from edgeq.convert import MethodSettings, PlanSettings, convert
    out = tmp_path_factory.mktemp("ppl") / f"{folder.name}.q{bits}"
    convert(folder, out, PlanSettings(bits=bits, layout="bitplane"), progress=False, method=MethodSettings(method="rtn"))
    return out


@pytest.fixture(scope="module")
def llama_q8(tiny_llama, tmp_path_factory):
    return _convert(tmp_path_factory, tiny_llama, 8)


@pytest.fixture(scope="module")
def qwen_q8(tiny_qwen, tmp_path_factory):
    return _convert(tmp_path_factory, tiny_qwen, 8)


@pytest.fixture(scope="module")
def llama_q2(tiny_llama, tmp_path_factory):
    return _convert(tmp_path_factory, tiny_llama, 2)


def numpy_perplexity(reference: Reference, chunks: np.ndarray, first: int) -> tuple[float, float, int]:
    """ppl, its llama.cpp standard error and the count, written independently of edgeq.perplexity."""
    nll = []
    for chunk in chunks:
        reference.reset()
        logits = reference.forward(chunk).astype(np.float64)
        for pos in range(first, len(chunk) - 1):
            row = logits[pos]
            nll.append(np.logaddexp.reduce(row) - row[chunk[pos + 1]])
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    return ppl, ppl * nll.std() / math.sqrt(len(nll) - 1), len(nll)


# ---------------------------------------------------------------------------------------------
# the numbers

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("convention", ["llama", "gptq"])
def test_runtime_ppl_matches_numpy_reference(arch, convention, llama_q8, qwen_q8, text_file):
    path = llama_q8 if arch == "llama" else qwen_q8
    text = read_text(text_file)
    result = perplexity(path, text, ctx=CTX, convention=convention, threads=2, progress=False)

    file = ModelFile(path)
    tokens = Tokenizer(file.tokenizer).encode(text, add_special=False, special=False)   # tiny models: no BOS
    n_chunks = len(tokens) // CTX
    assert n_chunks >= 10
    chunks = np.array(tokens[:n_chunks * CTX]).reshape(n_chunks, CTX)
    first = CTX // 2 if convention == "llama" else 0
    ppl, stderr, count = numpy_perplexity(Reference(file.config, file.load), chunks, first)

    assert result.chunks == n_chunks and result.ctx == CTX and result.convention == convention
    assert result.text_tokens == len(tokens) and not result.bos_per_chunk
    # llama.cpp scores n_ctx - 1 - n_ctx/2 tokens per chunk (255 of 512); GPTQ every token but the first
    per_chunk = CTX - 1 - CTX // 2 if convention == "llama" else CTX - 1
    assert result.tokens_scored == count == n_chunks * per_chunk
    assert result.ppl == pytest.approx(ppl, rel=1e-4)         # measured ~1e-5: the fp16 KV cache
    assert result.ppl_stderr == pytest.approx(stderr, rel=1e-2)


def test_llama_cpp_scored_positions():
    assert scored_positions(512, "llama") == range(256, 511)      # 255 tokens: tokens 257..511 of the chunk
    assert scored_positions(2048, "gptq") == range(0, 2047)


def test_chunks_get_bos_only_when_the_model_adds_it():
    tokens = list(range(10, 31))                                   # 21 tokens -> 5 chunks of 4
    plain = make_chunks(tokens, 4, "llama", bos_id=1, add_bos=False)
    assert plain.shape == (5, 4) and plain.reshape(-1).tolist() == tokens[:20]
    with_bos = make_chunks(tokens, 4, "llama", bos_id=1, add_bos=True)
    assert with_bos[:, 0].tolist() == [1] * 5 and (with_bos[:, 1:] == plain[:, 1:]).all()
    assert (make_chunks(tokens, 4, "gptq", bos_id=1, add_bos=True) == plain).all()
    assert make_chunks(tokens, 4, "llama", bos_id=1, add_bos=False, limit=2).shape == (2, 4)


@pytest.fixture(scope="module")
def bos_llama(tiny_llama, tmp_path_factory):
    """tiny_llama with add_bos_token true (the llama-2 / sentencepiece case)."""
    folder = tmp_path_factory.mktemp("bos") / "llama-bos"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["add_bos_token"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_bos_model_text_and_chunks_start_with_bos(bos_llama, text_file):
    from edgeq.convert.sources import open_source
    source = open_source(bos_llama)
    tokenizer = Tokenizer(source.tokenizer)
    text = read_text(text_file)
    tokens = tokenize_text(tokenizer, text)
    # llama.cpp: common_tokenize(text, add_special=true) puts BOS first, then every chunk starts with BOS
    assert tokens[0] == tokenizer.bos_id and tokens[1:] == tokenizer.encode(text, add_special=False, special=False)
    result = perplexity(bos_llama, text, ctx=CTX, chunks=3, progress=False)
    assert result.bos_per_chunk and result.chunks == 3 and result.tokens_scored == 3 * (CTX - 1 - CTX // 2)
    chunks = np.array(tokens[:3 * CTX]).reshape(3, CTX)
    chunks[:, 0] = tokenizer.bos_id
    ppl, _, _ = numpy_perplexity(Reference(source.config, source.load), chunks, CTX // 2)
    assert result.ppl == pytest.approx(ppl, rel=1e-9)
    assert not perplexity(bos_llama, text, ctx=CTX, chunks=3, convention="gptq", progress=False).bos_per_chunk


def test_read_text_drops_one_trailing_newline(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a\n\n", encoding="utf-8")
    assert read_text(path) == "a\n"                            # llama.cpp's -f drops one '\n'


# ---------------------------------------------------------------------------------------------
# against a base

def test_model_against_itself(llama_q8, text_file):
    result = perplexity(llama_q8, read_text(text_file), ctx=CTX, base=llama_q8, chunks=20, threads=1, progress=False)
    assert abs(result.kld) < 1e-6 and result.top1_agreement == 1.0
    assert result.delta_ppl == pytest.approx(0.0, abs=1e-9) and result.base_ppl == pytest.approx(result.ppl)


def test_two_bit_against_the_float_folder(llama_q2, llama_q8, tiny_llama, text_file):
    text = read_text(text_file)
    low = perplexity(llama_q2, text, ctx=CTX, base=tiny_llama, chunks=20, threads=1, progress=False)
    high = perplexity(llama_q8, text, ctx=CTX, base=tiny_llama, chunks=20, threads=1, progress=False)
    assert low.base_ppl == pytest.approx(high.base_ppl, rel=1e-12)        # the same float numbers
    assert low.kld > 0.01 and low.kld > 100 * high.kld > 0
    assert low.ppl > low.base_ppl and low.delta_ppl == pytest.approx(low.ppl - low.base_ppl)
    assert low.top1_agreement < high.top1_agreement <= 1.0
    assert low.kld_stderr > 0 and low.tokens_scored == high.tokens_scored


# ---------------------------------------------------------------------------------------------
# the command line

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True)


def test_cli_json(llama_q8, tiny_llama, text_file):
    result = run_cli("perplexity", llama_q8, "--text", text_file, "--ctx", CTX, "--chunks", 4, "-t", 1,
                     "--base", tiny_llama, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("ppl", "ppl_stderr", "tokens_scored", "chunks", "ctx", "convention", "kld", "kld_stderr",
                "top1_agreement", "delta_ppl", "base_ppl"):
        assert key in out, key
    assert out["chunks"] == 4 and out["ctx"] == CTX and out["convention"] == "llama"
    assert out["tokens_scored"] == 4 * (CTX - 1 - CTX // 2) and out["ppl"] > 1


def test_cli_summary(llama_q8, text_file):
    result = run_cli("perplexity", llama_q8, "--text", text_file, "--ctx", CTX, "--chunks", 2,
                     "--convention", "gptq")
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout and "gptq convention: 2 chunks of 64 tokens" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_default_text_is_the_shipped_evaluation_text(llama_q8):
    """No --text: the evaluation text inside the package (not the calibration text), 1 chunk of 64."""
    from edgeq.data import text_path
    evaluation, calibration = text_path("evaluation"), text_path("calibration")
    assert evaluation.read_bytes() != calibration.read_bytes()
    default = run_cli("perplexity", llama_q8, "--ctx", CTX, "--chunks", 1, "-t", 1, "--json")
    assert default.returncode == 0, default.stderr
    explicit = run_cli("perplexity", llama_q8, "--text", evaluation, "--ctx", CTX, "--chunks", 1, "-t", 1, "--json")
    default, explicit = json.loads(default.stdout), json.loads(explicit.stdout)
    assert default["chunks"] == 1 and default["ctx"] == CTX
    assert default["ppl"] == explicit["ppl"] and default["text_tokens"] == explicit["text_tokens"]
    tokens = tokenize_text(Tokenizer(ModelFile(llama_q8).tokenizer), read_text(evaluation))
    assert default["text_tokens"] == len(tokens) > 50_000          # the whole novel, tokenized
    help_text = " ".join(run_cli("perplexity", "--help").stdout.split())
    assert "the evaluation text shipped with edgeq" in help_text and "evaluation.txt" in help_text


def test_threads_are_capped_once(llama_q8, text_file):
    import os
    result = run_cli("perplexity", llama_q8, "--text", text_file, "--ctx", CTX, "--chunks", 1, "-t", 1000,
                     "--base", llama_q8, "--json")
    assert result.returncode == 0
    assert result.stderr == (f"edgeq: warning: 1000 threads asked for, but this machine has {os.cpu_count()} "
                             f"logical CPUs: using {os.cpu_count()}\n")


def assert_clean_failure(result, *words):
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeq: error:"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.fixture(scope="module")
def other_tokenizer(tiny_llama, tmp_path_factory):
    """tiny_llama with a differently trained tokenizer (fewer merges)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    from tiny_models import SPECIAL_TOKENS, TOKENIZER_TEXT
    folder = tmp_path_factory.mktemp("other") / "llama-other"
    shutil.copytree(tiny_llama, folder)
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TOKENIZER_TEXT.splitlines(keepends=True), trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_cli_bad_input(llama_q8, other_tokenizer, text_file, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", short, "--ctx", CTX),
                         "the text has", "one chunk needs ctx=64", "--ctx")
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", tmp_path / "missing.txt"), "no such file")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", binary), "not UTF-8")
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", tmp_path), "folder")
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", text_file, "--ctx", CTX, "--base", other_tokenizer),
                         "tokenize the text differently")
    # the tiny models know 256 positions; the default ctx is 512
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", text_file), "512", "256")
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", text_file, "--ctx", CTX, "--base", other_tokenizer,
                                 "--ctx", 1024), "1024", "256")
    assert_clean_failure(run_cli("perplexity", llama_q8, "--text", text_file, "--ctx", CTX, "--chunks", 0), "chunks")
    assert_clean_failure(run_cli("perplexity", tmp_path / "nothing.q8", "--text", text_file), "nothing.q8")
