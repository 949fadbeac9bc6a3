#!/usr/bin/env bash
# Builds llama.cpp (through llama-cpp-python from PyPI) once per machine into a cached virtualenv
# outside the repository, for benchmarks and tokenizer cross-checks. Compiling takes ~20 min on 2 cores.
# Usage: benchmarks/setup_llamacpp.sh   -> prints the venv's python path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# the version pinned by pyproject.toml's `llamacpp` extra, unless LLAMA_CPP_PYTHON_VERSION says otherwise
PINNED="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml")"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-${PINNED:-0.3.36}}"
VENV="${EDGEQ_LLAMACPP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeq/llamacpp-$VERSION}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "$VENV/bin/python"; exit 0
fi
echo "building llama-cpp-python==$VERSION from source into $VENV (about 20 minutes on 2 cores)" >&2
python3 -m venv --system-site-packages "$VENV"
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "$VENV/bin/pip" install --no-cache-dir "llama-cpp-python==$VERSION" >&2
echo "$VENV/bin/python"
