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
BUSY_LOG="$(mktemp)"
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --served-model-name smollm2 \
  --api-key test-key 2>"$LOG" &
PID=$!
# A second server that takes one request at a time (for the 503 check).
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --served-model-name smollm2 \
  --max-concurrent-requests 1 2>"$BUSY_LOG" &
BUSY_PID=$!
trap 'kill $PID $BUSY_PID 2>/dev/null || true; rm -f "$LOG" "$BUSY_LOG"' EXIT
# Waits for a server's address in its log; prints it.
address() {
  local log=$1 pid=$2 url=""
  for _ in $(seq 1 300); do
    url="$(grep -o 'http://127.0.0.1:[0-9]*' "$log" || true)"
    [ -n "$url" ] && { echo "$url"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "weft serve did not start" >&2
  cat "$log" >&2
  return 1
}
URL="$(address "$LOG" $PID)"
BUSY_URL="$(address "$BUSY_LOG" $BUSY_PID)"
timeout 300 "$VENV/bin/python" scripts/openai_client_test.py "$URL" test-key smollm2 "$BUSY_URL"
mkdir -p "$CACHE/artifacts"
timeout 300 "$VENV/bin/python" scripts/tree_page_test.py "$URL" test-key smollm2 \
  "$CACHE/artifacts/tree-page.png"
