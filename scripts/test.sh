#!/usr/bin/env bash
# The test command (the README's second command, and what CI runs): fetches
# the test model, then checks formatting, lints and runs every test in release
# mode (the model tests run real inference). Build outputs go to
# ~/.cache/weft/target so repeated runs are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
bash scripts/fetch-model.sh
cargo fmt --all -- --check
# The protocol fixtures derived from the reference implementations are
# what scripts/protocol_reference_fixtures.py writes.
python3 scripts/protocol_reference_fixtures.py --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked
# The server against the official `openai` Python client (venv under ~/.cache/weft).
bash scripts/serve-client-test.sh
# 32 streaming clients for 60 s (plain, forking, chat; 10% disconnect):
# no failures, KV back at idle, RSS flat.
bash scripts/load-test.sh
