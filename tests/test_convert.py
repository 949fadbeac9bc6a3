"""Convert tiny HF folders at every bit width and read the files back: metadata, weights, logits."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeq import _ffi, quant_types
from edgeq.convert import MethodSettings, PlanSettings, convert
from edgeq.convert.quantize import quantize
from edgeq.convert.sources import open_source
from edgeq.fileformat import FORMAT_VERSION, ModelFile
from edgeq.reference import Reference

# upper bounds on ||W - Q(W)|| / ||W|| for random normal weights, groups of 64, asymmetric
MAX_REL_ERROR = {2: 0.40, 3: 0.20, 4: 0.10, 5: 0.05, 6: 0.025, 8: 0.007}


def _convert(source, tmp_path, method="rtn", **settings):
    """Plain rtn by default: the bounds here are RTN's (GPTQ trades weight error for output error,
    tests/test_calibration.py checks the calibrated methods)."""
    out = tmp_path / f"model-{'-'.join(f'{k}{v}' for k, v in settings.items())}-{method}.edgeq"
    convert(source, out, PlanSettings(**settings), progress=False, method=MethodSettings(method=method))
    return ModelFile(out)


def _relative_logit_error(source, model, prompt):
    src = Reference(source.config, source.load).forward(prompt)
    got = Reference(model.config, model.load).forward(prompt)
    return float(np.abs(src - got).max() / np.ptp(src)), src, got


@pytest.mark.parametrize("bits", quant_types.BITS)
def test_every_bit_width_round_trips(tiny_model, tmp_path, bits):
    source = open_source(tiny_model)
    model = _convert(tiny_model, tmp_path, bits=bits, head_bits=bits, embed_bits=bits)
    assert model.config == source.config
    assert model.tokenizer == source.tokenizer
    assert model.provenance["source"] == str(tiny_model)
    assert model.get("general.architecture") == "edgeq"
    assert model.get("edgeq.format_version") == FORMAT_VERSION
    assert set(model.tensors) == set(source.config.tensor_names())
    for name, info in model.tensors.items():
        for key in ("type", "shape", "bits", "group", "symmetric", "method"):
            assert model.get(f"edgeq.tensor.{name}.{key}") is not None, (name, key)
        weight = source.load(name)
        assert info.shape == weight.shape
        restored = model.load(name)
        if weight.ndim == 1:
            assert info.qtype.name == "f32" and np.array_equal(restored, weight)
            continue
        # the default group, and the layout --layout auto picks for this width
        assert info.qtype == quant_types.uniform_type(bits, 32 if bits <= 3 else 64, False, PlanSettings().family_for(bits))
        error = np.linalg.norm(restored - weight) / np.linalg.norm(weight)
        assert error < MAX_REL_ERROR[bits], (name, error)
        assert info.data.ctypes.data % 64 == 0, f"{name} data is not 64-byte aligned"


def test_error_shrinks_as_bits_grow(tiny_model, tmp_path):
    source = open_source(tiny_model)
    prompt = list(range(3, 40))
    weight_errors, logit_errors = [], []
    for bits in quant_types.BITS:
        model = _convert(tiny_model, tmp_path, bits=bits, head_bits=bits, embed_bits=bits)
        w = source.load("blk.0.ffn_up.weight")
        weight_errors.append(np.linalg.norm(model.load("blk.0.ffn_up.weight") - w) / np.linalg.norm(w))
        logit_errors.append(_relative_logit_error(source, model, prompt)[0])
    assert weight_errors == sorted(weight_errors, reverse=True), weight_errors
    assert logit_errors == sorted(logit_errors, reverse=True), logit_errors
    assert logit_errors[-1] < 0.01 and logit_errors[quant_types.BITS.index(4)] < 0.2, logit_errors


def test_8bit_logits_and_greedy_match_the_source(tiny_model, tmp_path):
    source = open_source(tiny_model)
    model = _convert(tiny_model, tmp_path, bits=8)
    error, src, got = _relative_logit_error(source, model, list(range(5, 30)))
    assert error < 0.01
    assert (src.argmax(-1) == got.argmax(-1)).mean() > 0.9


def test_group_size_symmetry_and_defaults(tiny_qwen, tmp_path):
    model = _convert(tiny_qwen, tmp_path, bits=3, group=32, symmetric=True)
    assert model.tensors["blk.0.attn_q.weight"].qtype.name == "p3g32s"   # --layout auto packs every width
    assert model.tensors["output.weight"].qtype.name == "p6g32s"       # head: max(bits, 6)
    assert model.tensors["token_embd.weight"].qtype.name == "p4g32s"   # embeddings: max(bits, 4)
    assert model.tensors["blk.1.attn_q.bias"].qtype.name == "f32"
    data_bytes = sum(t.nbytes for t in model.tensors.values())
    assert data_bytes < model.file_size() < data_bytes + 64 * len(model.tensors) + 200_000
    plain = _convert(tiny_qwen, tmp_path, bits=16, head_bits=32, embed_bits=16)
    assert plain.tensors["blk.0.ffn_up.weight"].qtype.name == "f16"
    assert plain.tensors["output.weight"].qtype.name == "f32"
    source = open_source(tiny_qwen)
    assert np.array_equal(plain.load("output.weight"), source.load("output.weight"))


def test_tied_head_takes_the_higher_precision(tiny_llama, tmp_path):
    model = _convert(tiny_llama, tmp_path, bits=2, head_bits=8, embed_bits=3)
    assert "output.weight" not in model.tensors
    assert model.tensors["token_embd.weight"].qtype.name == "p8g32a"   # groups of 32 at 2-3 bits
    assert model.tensors["blk.0.ffn_up.weight"].qtype.name == "p2g32a"
    assert _convert(tiny_llama, tmp_path, bits=3, group=64).tensors["blk.0.ffn_up.weight"].qtype.name == "p3g64a"


def test_file_is_readable_by_gguf_tools(tiny_qwen, tmp_path):
    model = _convert(tiny_qwen, tmp_path, bits=4)
    dump = shutil.which("gguf-dump")
    assert dump, "gguf-dump (from the gguf package) is not on PATH"
    result = subprocess.run([dump, str(model.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "edgeq.tensor.blk.0.attn_q.weight.type" in result.stdout
    assert "general.architecture" in result.stdout


def test_padding_when_shapes_do_not_divide(tmp_path):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((37, 200)).astype(np.float32)      # 37 % 16 != 0, 200 % 128 != 0
    for name in ("u4g128a", "u3g32s", "u8g64a"):
        qtype = quant_types.TYPES[name]
        tensor = quantize(weight, qtype)
        assert tensor.data.nbytes == qtype.nbytes(37, 200)
        restored = quant_types.dequantize(qtype, tensor.data, 37, 200)
        assert restored.shape == weight.shape
        assert np.linalg.norm(restored - weight) / np.linalg.norm(weight) < MAX_REL_ERROR[qtype.bits]


def test_clip_search_beats_min_max_rounding():
    rng = np.random.default_rng(2)
    weight = rng.standard_t(4, size=(64, 256)).astype(np.float32)    # heavy tails, where clipping pays
    qtype = quant_types.TYPES["u3g64a"]
    searched = quantize(weight, qtype).rel_error
    groups = weight.reshape(-1, 64)
    lo, hi = groups.min(1, keepdims=True), groups.max(1, keepdims=True)
    scale = (hi - lo) / 7
    naive = np.clip(np.round((groups - lo) / scale), 0, 7) * scale + lo
    naive_error = np.linalg.norm(naive - groups) / np.linalg.norm(groups)
    assert searched < 0.9 * naive_error, (searched, naive_error)


def test_hub_id_through_a_prefilled_cache(tiny_llama, tmp_path, monkeypatch):
    """`edgeq convert owner/name` goes through huggingface_hub (offline here: a pre-filled cache)."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "hub.edgeq"
    result = subprocess.run([sys.executable, "-m", "edgeq", "convert", "tiny-org/tiny-llama", "-o", str(out), "-q"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = ModelFile(out)
    assert model.provenance["source"] == "tiny-org/tiny-llama"
    assert model.provenance["source_kind"] == "hf-hub"
    missing = subprocess.run([sys.executable, "-m", "edgeq", "convert", "tiny-org/not-cached", "-o",
                              str(tmp_path / "x.edgeq")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "tiny-org/not-cached" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_cli_convert_and_info(tiny_qwen, tmp_path):
    out = tmp_path / "cli.edgeq"
    result = subprocess.run([sys.executable, "-m", "edgeq", "convert", str(tiny_qwen), "-o", str(out),
                             "--bits", "3", "--group", "128", "--sym", "--head-bits", "8", "--embed-bits", "5"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    info = subprocess.run([sys.executable, "-m", "edgeq", "info", str(out), "--ctx", "128"],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    text = info.stdout
    assert "qwen2: 2 layers, dim 64" in text
    assert "blk.1.ffn_down.weight" in text and "p3g128s" in text and "p8g128s" in text and "p5g128s" in text
    model = ModelFile(out)
    blocks = [t for t in model.tensors.values() if t.name.startswith("blk.") and len(t.shape) == 2]
    bpw = 8 * sum(t.nbytes for t in blocks) / sum(t.shape[0] * t.shape[1] for t in blocks)
    assert f"{bpw:.3f} bits per weight" in text
    kv = 2 * 2 * 128 * 2 * 16 * 2   # k+v, layers, ctx, kv heads, head dim, fp16
    assert f"KV cache fp16 {kv / 1e6:.1f} MB" in text
    assert f"kernels       {_ffi.isa()} on this machine" in text
    assert json.loads(model.get("edgeq.generation"))["eos_token_id"] == [2, 0]


@pytest.mark.parametrize("method", ["rtn", "hqq", "gptq"])
def test_both_layouts_store_the_same_numbers_with_every_method(tiny_llama, tmp_path, method):
    """--layout only changes how levels are stored: every method's bit-plane and packed files
    dequantize to the same values, tensor by tensor (packing is a step after quantizing)."""
    files = {layout: _convert(tiny_llama, tmp_path, method=method, bits=5, layout=layout)
             for layout in ("bitplane", "packed")}
    for name, info in files["packed"].tensors.items():
        other = files["bitplane"].tensors[name]
        if info.qtype.family == quant_types.PLAIN:
            assert other.qtype == info.qtype
            continue
        assert (info.qtype.family, other.qtype.family) == (quant_types.UNIFORM_PACKED, quant_types.UNIFORM_BITPLANE)
        assert info.qtype == quant_types.with_family(other.qtype, quant_types.UNIFORM_PACKED)
        assert np.array_equal(files["packed"].load(name), files["bitplane"].load(name)), name
    assert files["packed"].settings["layout"] == "packed"


def test_layout_auto_and_its_limits(tiny_qwen, tmp_path):
    """auto packs at the AUTO_PACKED_BITS widths (the head and embeddings too), bit-planes elsewhere;
    packed exists at every width, at the size of the bit-plane type."""
    from edgeq.convert.plan import AUTO_PACKED_BITS
    from edgeq.errors import EdgeqError

    def family(bits):
        return quant_types.UNIFORM_PACKED if bits in AUTO_PACKED_BITS else quant_types.UNIFORM_BITPLANE
    model = _convert(tiny_qwen, tmp_path, bits=3, head_bits=8)
    assert model.tensors["blk.0.ffn_up.weight"].qtype.family == family(3)
    assert model.tensors["token_embd.weight"].qtype.family == family(4)
    assert model.tensors["output.weight"].qtype.name == ("p8g32a" if 8 in AUTO_PACKED_BITS else "u8g32a")
    for bits in quant_types.BITS:
        assert PlanSettings(bits=bits).family_for(bits) == family(bits)
        assert PlanSettings(bits=bits, layout="packed").family_for(bits) == quant_types.UNIFORM_PACKED
        for group in quant_types.GROUPS:
            packed = quant_types.uniform_type(bits, group, False, quant_types.UNIFORM_PACKED)
            bitplane = quant_types.uniform_type(bits, group, False)
            assert packed.nbytes(48, 96) == bitplane.nbytes(48, 96), packed.name
    with pytest.raises(EdgeqError, match="--layout sideways"):
        PlanSettings(layout="sideways").validate()


def test_p5_p6_files_before_packed_fields_are_refused(tiny_llama, tmp_path, monkeypatch):
    """Files before "packed-fields" stored p5/p6 levels a byte each: a file with a p6 tensor names
    the feature, and one that does not (as those files) is refused by ModelFile and the C loader with
    one line that says to convert again. A file without p5/p6 tensors does not name it."""
    from edgeq import fileformat
    from edgeq.errors import EdgeqError
    new, old, p8 = tmp_path / "new.p6", tmp_path / "old.p6", tmp_path / "new.p8"
    convert(tiny_llama, new, PlanSettings(bits=6, layout="packed"), progress=False)
    convert(tiny_llama, p8, PlanSettings(bits=8, layout="packed"), progress=False)
    assert "packed-fields" in ModelFile(new).get("edgeq.required_features")
    assert "packed-fields" not in (ModelFile(p8).get("edgeq.required_features") or [])
    with monkeypatch.context() as patched:
        patched.setattr(fileformat, "required_features", lambda entries: [])
        convert(tiny_llama, old, PlanSettings(bits=6, layout="packed"), progress=False)
    words = "p6g64a stored a byte per level (written by edgeq"
    with pytest.raises(EdgeqError, match=r"tensor \S+: p6g64a stored a byte per level .*convert the model again"):
        ModelFile(old)
    with pytest.raises(EdgeqError) as error:
        _ffi.model_open(old, threads=1, ctx=64)
    assert words in str(error.value) and str(error.value).endswith("convert the model again")
    assert "\n" not in str(error.value)


def test_packed_file_runs_and_info_names_the_multiply_add_route(tiny_llama, tmp_path):
    """`edgeq convert --layout packed` end to end: the CLI writes p*g* types, `edgeq info` shows them
    with the multiply-add route, and `edgeq run` generates."""
    out = tmp_path / "tiny.p6"
    env = dict(os.environ, EDGEQ_ISA="")
    converted = subprocess.run([sys.executable, "-m", "edgeq", "convert", str(tiny_llama), "-o", str(out), "--bits", "6",
                                "--layout", "packed", "--method", "rtn", "-q"], capture_output=True, text=True, env=env)
    assert converted.returncode == 0, converted.stderr
    info = subprocess.run([sys.executable, "-m", "edgeq", "info", str(out)], capture_output=True, text=True, env=env)
    assert info.returncode == 0, info.stderr
    route = next(line for line in info.stdout.splitlines() if line.strip().startswith("p6g64a"))
    assert f"decode: {_ffi.kernel_sets()[0]} multiply-add (int8 multiply-add" in route, route
    assert "blk.0.ffn_up.weight" in info.stdout and "layout packed" in info.stdout
    run = subprocess.run([sys.executable, "-m", "edgeq", "run", str(out), "-p", "Hello", "-n", "4", "--temp", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
