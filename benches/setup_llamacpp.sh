#!/usr/bin/env bash
# Builds the peer for the speed comparison: llama-cpp-python with AVX2/FMA and no AVX-512 or
# native tuning, the same instruction set Rapport is built for (x86-64-v3). The build compiles
# llama.cpp from source (~5–10 minutes on 2 cores); never run it beside a cargo build.
set -euo pipefail
VENV="${LLAMACPP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rapport/llamacpp-venv}"
VERSION="${LLAMACPP_PYTHON_VERSION:-0.3.36}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "$VENV/bin/python"; exit 0
fi
python3 -m venv "$VENV"
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF" \
  FORCE_CMAKE=1 "$VENV/bin/pip" install --no-cache-dir -q "llama-cpp-python==$VERSION" >&2
echo "$VENV/bin/python"
