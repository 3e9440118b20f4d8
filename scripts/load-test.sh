#!/usr/bin/env bash
# Starts `weft serve` on a free loopback port and puts it under load with the
# official `openai` Python client (scripts/load_test.py): WEFT_LOAD_CLIENTS
# (default 32) threads of streamed plain, forking and chat requests for
# WEFT_LOAD_SECONDS (default 60), some disconnecting mid-stream; then checks
# no failures, the KV cache back at idle and the RSS flat. The venv is the
# one serve-client-test.sh uses (~/.cache/weft/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
VENV="$CACHE/venv"
OPENAI_VERSION=3.57.0
DURATION="${WEFT_LOAD_SECONDS:-60}"
CLIENTS="${WEFT_LOAD_CLIENTS:-32}"
if ! "$VENV/bin/python" -c "
import sys, openai
sys.exit(openai.__version__ != '$OPENAI_VERSION')
" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openai==$OPENAI_VERSION"
fi
BIN="${CARGO_TARGET_DIR:-$CACHE/target}/release/weft"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LOG="$(mktemp)"
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --served-model-name smollm2 \
  2>"$LOG" &
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
# The load, then up to 150 s for requests in flight and 10 s for idle.
if ! timeout $((${DURATION%.*} + 200)) "$VENV/bin/python" scripts/load_test.py "$URL" $PID \
  --clients "$CLIENTS" --seconds "$DURATION"; then
  echo "--- weft serve log (last 30 lines)" >&2
  tail -n 30 "$LOG" >&2
  exit 1
fi
