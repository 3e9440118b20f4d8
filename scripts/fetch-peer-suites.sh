#!/usr/bin/env bash
# Fetches llama.cpp's own test data from the llama-cpp-python 0.3.36 source
# package on PyPI into ~/.cache/weft/peer/llama.cpp (or $WEFT_CACHE/peer):
#   models/ggml-vocab-*.gguf + .inp/.out   tokenizer vectors (test-tokenizer-0)
#   models/templates/*.jinja                published chat templates
# Nothing fetched here is committed. Idempotent: a complete folder is kept;
# the sdist is checked against its PyPI sha256.
set -euo pipefail
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
DEST="$CACHE/peer/llama.cpp"
VERSION="0.3.36"
SDIST="llama_cpp_python-$VERSION.tar.gz"
if [ -f "$DEST/.complete" ]; then
  exit 0
fi
mkdir -p "$CACHE/peer/dl"
if [ ! -s "$CACHE/peer/dl/$SDIST" ]; then
  # Reuse the llama.cpp anchor's download when it is there (same file).
  if [ -s "$HOME/.cache/llama-cpp-anchor/dl/$SDIST" ]; then
    cp "$HOME/.cache/llama-cpp-anchor/dl/$SDIST" "$CACHE/peer/dl/$SDIST"
  else
    echo "fetching llama-cpp-python $VERSION sdist from PyPI (~77 MB) for llama.cpp's test data" >&2
    python3 "$(dirname "$0")/pypi_sdist.py" llama-cpp-python "$VERSION" "$CACHE/peer/dl" >/dev/null
  fi
fi
rm -rf "$DEST.part"
mkdir -p "$DEST.part"
tar xzf "$CACHE/peer/dl/$SDIST" -C "$DEST.part" --strip-components=3 \
  --wildcards "llama_cpp_python-$VERSION/vendor/llama.cpp/models/ggml-vocab-*" \
  "llama_cpp_python-$VERSION/vendor/llama.cpp/models/templates" \
  "llama_cpp_python-$VERSION/vendor/llama.cpp/tests/test-gguf.cpp"
rm -rf "$DEST"
mv "$DEST.part" "$DEST"
touch "$DEST/.complete"
echo "peer suites ready: $DEST" >&2
