#!/usr/bin/env bash
# The test command (the README's second command, and what CI runs): fetches
# the test model, then checks formatting, lints and runs every test in release
# mode (the model tests run real inference). Build outputs go to
# ~/.cache/weft/target so repeated runs are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
bash scripts/fetch-model.sh
# llama.cpp's tokenizer vectors and chat templates (not committed).
bash scripts/fetch-peer-suites.sh
# Tiny checkpoints, RoPE frequencies and tokenizer folders made by
# transformers itself (torch + transformers in ~/.cache/weft/torch-venv).
bash scripts/transformers-peer.sh
# llama-server, the peer of the remote-backend tests (built once into
# ~/.cache/llama-cpp-anchor).
bash scripts/llama-cpp-tools.sh >/dev/null
cargo fmt --all -- --check
# The protocol fixtures derived from the reference implementations are
# what scripts/protocol_reference_fixtures.py writes.
python3 scripts/protocol_reference_fixtures.py --check
# The chat template references are what scripts/chat_template_references.py
# renders from the fetched templates, with jinja2 pinned (the venv under
# ~/.cache/weft, as scripts/serve-client-test.sh sets it up).
JINJA_VENV="${WEFT_CACHE:-$HOME/.cache/weft}/venv"
if ! "$JINJA_VENV/bin/python" -c "
import sys, importlib.metadata as m
sys.exit(m.version('jinja2') != '3.1.6' or m.version('markupsafe') != '3.0.4')
" 2>/dev/null; then
  python3 -m venv "$JINJA_VENV"
  "$JINJA_VENV/bin/pip" install -q "jinja2==3.1.6" "markupsafe==3.0.4"
fi
"$JINJA_VENV/bin/python" scripts/chat_template_references.py --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked
# The kernel tests again, their output shown: which instruction-set paths
# (scalar, avx2, avx512) this CPU ran, and which it skipped.
cargo test --release --locked -p weft-model --lib kernels -- --nocapture 2>&1 \
  | grep -E "path (ran|skipped)|test result"
# The server against the official `openai` Python client (venv under ~/.cache/weft).
bash scripts/serve-client-test.sh
# Every example in README.md and in --help, run as a user types it.
python3 scripts/readme_examples.py "$CARGO_TARGET_DIR/release/weft" \
  "${WEFT_CACHE:-$HOME/.cache/weft}/venv/bin/python"
# 32 streaming clients for 60 s (plain, forking, chat; 10% disconnect):
# no failures, KV back at idle, RSS flat.
bash scripts/load-test.sh
