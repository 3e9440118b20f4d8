#!/usr/bin/env bash
# Makes the GGUF files `weft bench decode` is measured on: Q4_0, Q4_1, Q8_0,
# Q4_K_M, Q5_K_M and Q6_K, all requantized from one source with llama.cpp's
# own `llama-quantize` (built next to the anchor tools of
# ../shared/tools/llama-cpp-anchor.sh). Nothing here is committed.
#
#   bash scripts/bench-files.sh            # prints the folder with the files
#   SOURCE=path/to/model.gguf bash ...     # another source file
#
# The default source is the test model the test command downloads
# (SmolLM2-135M-Instruct Q4_1), so files are `--allow-requantize`d: fine for
# speed, not for quality. Files are made once and reused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
SOURCE="${SOURCE:-$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="$CACHE/bench-files"
ANCHOR="${LLAMA_ANCHOR_DIR:-$HOME/.cache/llama-cpp-anchor}"
[ -s "$SOURCE" ] || { echo "bench-files: no source model at $SOURCE (run the test command once, or set SOURCE)" >&2; exit 1; }
BIN="$ANCHOR/build/bin"
if [ ! -x "$BIN/llama-quantize" ]; then
  # llama.cpp's source and build folder come from the anchor script (it
  # downloads the llama-cpp-python sdist from PyPI and builds the reference
  # tools, minutes on 2 cores); llama-quantize is one more target there.
  if [ ! -d "$ANCHOR/build" ]; then
    TOOL="$ROOT/../shared/tools/llama-cpp-anchor.sh"
    [ -f "$TOOL" ] || { echo "bench-files: no llama.cpp build in $ANCHOR/build and no $TOOL to make one" >&2; exit 1; }
    echo "bench-files: building llama.cpp's reference tools with $TOOL (once, minutes)" >&2
    bash "$TOOL" >/dev/null
  fi
  echo "bench-files: building llama-quantize in $ANCHOR/build" >&2
  cmake --build "$ANCHOR/build" -j"$(nproc)" --target llama-quantize >&2
fi
mkdir -p "$OUT"
# Output names: the source's name without its type, plus each type; a
# stamp of the source's size and time makes a changed source remake them.
name="$(basename "$SOURCE" .gguf)"
name="${name%.*}"
stamp="$(stat -c '%s %Y' "$SOURCE") $SOURCE"
if [ "$(cat "$OUT/.source" 2>/dev/null)" != "$stamp" ]; then
  rm -f "$OUT"/*.gguf
  echo "$stamp" > "$OUT/.source"
fi
for t in Q4_0 Q4_1 Q8_0 Q4_K_M Q5_K_M Q6_K; do
  f="$OUT/$name.$t.gguf"
  if [ ! -s "$f" ]; then
    echo "bench-files: $t" >&2
    # The trailing 2 is llama-quantize's thread count.
    "$BIN/llama-quantize" --allow-requantize "$SOURCE" "$f.part" "$t" 2 > "$OUT/$t.log" 2>&1 \
      || { echo "bench-files: llama-quantize $t failed; see $OUT/$t.log" >&2; exit 1; }
    mv "$f.part" "$f"
  fi
done
echo "$OUT"
