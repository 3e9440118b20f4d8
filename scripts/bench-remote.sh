#!/usr/bin/env bash
# Benchmarks of the remote backend (numbers, not tests; docs/scale-out.md
# quotes them). Two measurements, each against servers started here on
# loopback and stopped at the end:
#  1. Countdown through `weft serve --model models/countdown-apr` as a
#     remote backend against the native engine, on the first N held-out
#     problems (N=200 by default): accuracy and latency, side by side.
#  2. Forced ThreadWeaver forks (five questions, greedy) on llama-server (built by
#     scripts/llama-cpp-tools.sh) with `--metrics`: the prompt tokens the
#     server computed against what a server without a prefix cache would
#     compute (every segment's whole prompt), i.e. what re-prefill joins
#     cost once the cache carries the shared text.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
BIN="${CARGO_TARGET_DIR:-$CACHE/target}/release/weft"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
N="${N:-200}"
OUT="$(mktemp -d)"
[ -x "$BIN" ] || { echo "bench-remote: build weft first (cargo build --release)" >&2; exit 1; }
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1200); do
    curl -sf "$1/v1/models" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench-remote: no server at $1" >&2; exit 1
}

echo "== 1. Countdown: native engine against weft serve as a remote backend ($N problems, budget 512)"
P="$(port)"
"$BIN" serve --model models/countdown-apr --host 127.0.0.1 --port "$P" 2>/dev/null &
PIDS+=($!)
wait_up "http://127.0.0.1:$P"
"$BIN" eval countdown --model models/countdown-apr --problems models/heldout.jsonl \
  --limit "$N" --budgets 512 --json "$OUT/native.json" >/dev/null
"$BIN" eval countdown --model models/countdown-apr --problems models/heldout.jsonl \
  --limit "$N" --budgets 512 --json "$OUT/remote.json" --backend "http://127.0.0.1:$P" >/dev/null 2>&1
python3 - "$OUT/native.json" "$OUT/remote.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["budgets"][0] for p in sys.argv[1:3])
same = sum(x["correct"] == y["correct"] for x, y in zip(a["outcomes"], b["outcomes"]))
print(f"accuracy        native {a['accuracy']:.1%}   remote {b['accuracy']:.1%}   same verdict on {same}/{len(a['outcomes'])}")
for k in ("p50", "p90"):
    x, y = a["latency_ms"][k], b["latency_ms"][k]
    print(f"latency {k}     native {x:.0f} ms   remote {y:.0f} ms   remote/native {y / x:.2f}x")
print(f"children/problem native {a['children']['mean']:.2f}   remote {b['children']['mean']:.2f}")
PY

echo "== 2. Forced ThreadWeaver forks on llama-server: prompt tokens computed against no prefix cache"
LS="$(bash scripts/llama-cpp-tools.sh)/llama-server"
P2="$(port)"
"$LS" -m "$MODEL" --host 127.0.0.1 --port "$P2" -c 8192 -np 4 -t 2 --metrics --no-webui >/dev/null 2>&1 &
PIDS+=($!)
wait_up "http://127.0.0.1:$P2"
metric() { curl -sf "http://127.0.0.1:$P2/metrics" | awk -v k="llamacpp:$1" '$1 == k {print $2}'; }
before="$(metric prompt_tokens_total)"; cached_before="$(metric prompt_tokens_cached_total)"
# Five different questions (so no tree reuses another's text), greedy (so
# the trees are the same on every run).
for i in 1 2 3 4 5; do
  printf '%s' "Question: how far apart are ($i, 2) and (7, -$((i + 6)))?
<think>
<Parallel>
<Outlines>
<Outline>1: Compute (dx)^2.</Outline>
<Outline>2: Compute (dy)^2.</Outline>
<Outline>3: Add them.</Outline>
<Outline>4: Take the square root.</Outline>
</Outlines>" > "$OUT/tw$i.txt"
  "$BIN" run --model "$MODEL" --backend "http://127.0.0.1:$P2" --protocol threadweaver \
    --prompt-file "$OUT/tw$i.txt" -n 48 --temperature 0 --quiet \
    --trace "$OUT/tw$i.json" >/dev/null 2>&1
done
after="$(metric prompt_tokens_total)"; cached_after="$(metric prompt_tokens_cached_total)"
python3 - "$before" "$after" "$cached_before" "$cached_after" "$OUT"/tw?.json <<'PY'
import json, sys
before, after, cb, ca = map(float, sys.argv[1:5])
stats = [json.load(open(p))["stats"] for p in sys.argv[5:]]
sent = sum(s["remote_prompt_tokens"] for s in stats)
segs = sum(s["remote_segments"] for s in stats)
print("segments per tree", [s["remote_segments"] for s in stats], "forks", [s["forks"] for s in stats])
threads = sum(s.get("forks", 0) for s in stats)
computed = after - before
print(f"requests        {len(stats)} trees, {segs} streamed segments")
print(f"prompt tokens   without a cache {sent:.0f}   computed by llama-server {computed:.0f}   "
      f"({computed / sent:.1%} of it; cached {ca - cb:.0f})")
# The same split as weft's stats add it up from the servers' per-chunk
# `timings` (prefill_tokens / prefill_tokens_saved), against /metrics.
covered = sum(s.get("remote_cache_segments", 0) for s in stats)
mine = sum(s["prefill_tokens"] for s in stats)
saved = sum(s["prefill_tokens_saved"] for s in stats)
print(f"weft's stats    computed {mine}   cached {saved}   from {covered} of {segs} segments   "
      f"(computed: stats / metrics {mine / computed:.3f})")
PY
