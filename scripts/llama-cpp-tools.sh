#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the peer the remote-backend tests run
# against) from the llama-cpp-python source package on PyPI, CPU only, into
# ~/.cache/llama-cpp-anchor: the folder and flags of
# ../shared/tools/llama-cpp-anchor.sh, so either script reuses the other's
# build. Minutes on 2 cores the first time, nothing after. Prints the bin
# folder. Nothing of llama.cpp is committed.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${LLAMA_ANCHOR_DIR:-$HOME/.cache/llama-cpp-anchor}"
BIN="$DIR/build/bin"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$BIN/llama-server" ]; then
  echo "$BIN"; exit 0
fi
if ! command -v cmake >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq cmake g++ >/dev/null
fi
mkdir -p "$DIR"
cd "$DIR"
if [ ! -d src ]; then
  echo "llama-cpp-tools: downloading llama-cpp-python $VERSION (sdist) from PyPI" >&2
  python3 "$ROOT/scripts/pypi_sdist.py" llama-cpp-python "$VERSION" dl >/dev/null
  mkdir -p src && tar xzf dl/llama_cpp_python-"$VERSION".tar.gz -C src --strip-components=3 \
    "llama_cpp_python-$VERSION/vendor/llama.cpp"
fi
echo "llama-cpp-tools: building llama-server in $DIR/build (once, minutes)" >&2
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build build -j"$(nproc)" --target llama-server >&2
echo "$BIN"
