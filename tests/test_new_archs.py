"""qwen3 and gemma3 (text) end to end on tiny random models: the C runtime against transformers (logits
and greedy ids), the converter's layer-by-layer float pass (calibration, mixed precision) against the
reference, the attention soft cap, and what the sources refuse."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeq import _ffi
from edgeq.convert import PlanSettings, convert
from edgeq.convert.sources import config_from_hf, open_source
from edgeq.errors import EdgeqError
from edgeq.fileformat import ModelFile
from edgeq.reference import Reference

PROMPT = [5, 17, 33, 2, 120, 77, 8, 250, 1, 64, 300, 42, 9, 199, 3, 88, 61, 7, 150, 222]   # > the window, 6


@pytest.fixture(params=["qwen3", "gemma3"])
def tiny_new(request, tiny_qwen3, tiny_gemma3):
    return request.param, tiny_qwen3 if request.param == "qwen3" else tiny_gemma3


def transformers_model(path):
    torch = pytest.importorskip("torch", reason="torch is needed for the transformers cross-check")
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the cross-check")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return torch, model.eval()


def c_logits(path, tokens, chunks):
    handle = _ffi.model_open(path, threads=2, kv_fp32=True)
    try:
        parts, start = [], 0
        for size in chunks:
            parts.append(_ffi.model_eval(handle, tokens[start:start + size], all_logits=True))
            start += size
        return np.concatenate(parts)
    finally:
        _ffi.model_close(handle)


def c_greedy(path, prompt, n):
    handle = _ffi.model_open(path, threads=2)
    try:
        logits, out = _ffi.model_eval(handle, prompt), []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = _ffi.model_eval(handle, out[-1:])
        return out
    finally:
        _ffi.model_close(handle)


def test_c_runtime_matches_transformers(tiny_new, tmp_path):
    """f32 weights: the C forward pass (decode, a batch, both across the window) against transformers."""
    arch, folder = tiny_new
    torch, model = transformers_model(folder)
    path = tmp_path / f"{arch}.f32"
    convert(folder, path, PlanSettings(bits=32), progress=False)
    assert ModelFile(path).config.arch == arch
    with torch.no_grad():
        expected = model(torch.tensor([PROMPT])).logits[0].numpy()        # (20, vocab)
    span = float(np.ptp(expected))
    assert span > 1.0, "logits too flat to tell implementations apart"
    for chunks in ([1] * len(PROMPT), [13, 7]):
        got = c_logits(path, PROMPT, chunks)
        assert np.abs(got - expected).max() < 1e-4 * span, chunks
    prompt, ids = PROMPT[:8], list(PROMPT[:8])
    with torch.no_grad():   # greedy by hand: generate() would stop at an eos id
        for _ in range(16):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert c_greedy(path, prompt, 16) == ids[len(prompt):]


def test_float_layer_pass_matches_the_reference(tiny_new):
    """convert.calibrate's layer forward (calibration, GPTQ, the mixed-precision KL) is the reference's math."""
    from edgeq.convert.allocate import FloatRunner
    arch, folder = tiny_new
    source = open_source(folder)
    tokens = np.array([PROMPT[:16], PROMPT[4:]])                         # (2 sequences, 16)
    runner = FloatRunner(source.load, source.config, tokens)
    logits = runner._head(runner.final, None).reshape(2, 16, -1)
    reference = Reference(source.config, source.load)
    for row, sequence in enumerate(tokens):
        reference.reset()
        expected = reference.forward(sequence)
        assert np.abs(logits[row] - expected).max() < 1e-4 * np.ptp(expected)


def test_gptq_conversion_of_gemma3_runs(tiny_gemma3, tmp_path):
    from edgeq.convert.calibrate import MethodSettings
    path = tmp_path / "gemma3.gptq3"
    convert(tiny_gemma3, path, PlanSettings(bits=3, group=32, layout="bitplane"), progress=False,
            method=MethodSettings(method="gptq", calib_tokens=256, calib_ctx=64))
    model = ModelFile(path)
    expected = Reference(model.config, model.load).forward(PROMPT)
    assert np.abs(c_logits(path, PROMPT, [20]) - expected).max() < 5e-4 * np.ptp(expected)


def test_attention_soft_cap(tiny_gemma3, tmp_path, monkeypatch):
    """Gemma 3 applies none (the converter writes 0), but the format, runtime and reference support one
    (Gemma 2 style): a file with a cap of 0.5 agrees between C and the reference and differs from no cap."""
    import sys
    convert_module = sys.modules["edgeq.convert.convert"]   # the package re-exports the function under this name
    opened = convert_module.open_source

    def capped(spec):
        source = opened(spec)
        source.config.attn_softcap = 0.5
        return source
    plain, path = tmp_path / "plain.f32", tmp_path / "capped.f32"
    convert(tiny_gemma3, plain, PlanSettings(bits=32), progress=False)
    monkeypatch.setattr(convert_module, "open_source", capped)
    convert(tiny_gemma3, path, PlanSettings(bits=32), progress=False)
    model = ModelFile(path)
    assert model.config.attn_softcap == 0.5 and ModelFile(plain).config.attn_softcap == 0.0
    expected = Reference(model.config, model.load).forward(PROMPT)
    got = c_logits(path, PROMPT, [1] * 10 + [10])
    assert np.abs(got - expected).max() < 1e-4 * np.ptp(expected)
    assert np.abs(got - c_logits(plain, PROMPT, [20])).max() > 1e-2 * np.ptp(expected)


def test_gemma3_config_fields(tiny_gemma3):
    config = open_source(tiny_gemma3).config
    assert (config.arch, config.qk_norm, config.post_norms, config.ffn_act) == ("gemma3", True, True, "gelu_tanh")
    assert config.layer_types == "sgs" and config.sliding_window == 6
    assert config.rope_theta == 1e6 and config.rope_local_theta == 1e4
    assert config.embed_scale == pytest.approx(8.0) and config.attn_scale == pytest.approx(24 ** -0.5)
    assert config.final_softcap == 3.0 and config.attn_softcap == 0.0


def test_unsupported_variants_are_refused(tiny_gemma3, tiny_qwen3):
    gemma = json.loads((tiny_gemma3 / "config.json").read_text())
    with pytest.raises(EdgeqError, match="multimodal gemma3"):
        config_from_hf({"model_type": "gemma3", "text_config": gemma}, "here")
    with pytest.raises(EdgeqError, match="'gemma2' is not supported"):
        config_from_hf({**gemma, "model_type": "gemma2"}, "here")
    with pytest.raises(EdgeqError, match="activation"):
        config_from_hf({**gemma, "hidden_activation": "silu"}, "here")
    qwen3 = json.loads((tiny_qwen3 / "config.json").read_text())
    with pytest.raises(EdgeqError, match="sliding-window attention is not supported for qwen3"):
        config_from_hf({**qwen3, "use_sliding_window": True, "sliding_window": 4}, "here")
