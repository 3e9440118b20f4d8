#!/usr/bin/env bash
# Starts `weft serve` on a free loopback port and runs, against it, the
# official `openai` Python client (scripts/openai_client_test.py) and the
# thread-tree page in headless Chromium (scripts/tree_page_test.py; needs
# Debian's `chromium` and `chromium-driver`, which .ci/run installs). The
# Python packages go into a venv under ~/.cache/weft on first use; the
# page's screenshot is kept at ~/.cache/weft/artifacts/tree-page.png. Part
# of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
VENV="$CACHE/venv"
OPENAI_VERSION=3.57.0
SELENIUM_VERSION=4.50.0
if ! "$VENV/bin/python" -c "
import sys, openai, selenium
sys.exit(openai.__version__ != '$OPENAI_VERSION' or selenium.__version__ != '$SELENIUM_VERSION')
" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openai==$OPENAI_VERSION" "selenium==$SELENIUM_VERSION"
fi
BIN="${CARGO_TARGET_DIR:-$CACHE/target}/release/weft"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LOG="$(mktemp)"
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --served-model-name smollm2 \
  --api-key test-key 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
URL=""
for _ in $(seq 1 100); do
  URL="$(grep -o 'http://127.0.0.1:[0-9]*' "$LOG" || true)"
  [ -n "$URL" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "weft serve did not start" >&2; cat "$LOG" >&2; exit 1; }
timeout 300 "$VENV/bin/python" scripts/openai_client_test.py "$URL" test-key smollm2
mkdir -p "$CACHE/artifacts"
timeout 300 "$VENV/bin/python" scripts/tree_page_test.py "$URL" test-key smollm2 \
  "$CACHE/artifacts/tree-page.png"
