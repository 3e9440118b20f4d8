#!/usr/bin/env bash
# Reproduces the two Countdown models (SoS+ sequential and APR parallel):
# data, training (checkpointed: rerun the same stage to resume), evaluation
# on held-out problems, plots, and installing the models into models/.
#
#   bash scripts/countdown-models.sh data          # ~1 min
#   bash scripts/countdown-models.sh train sosp    # resumable; at most 3 CPU-hours
#   bash scripts/countdown-models.sh train apr     # resumable; under 3 CPU-hours
#   bash scripts/countdown-models.sh eval          # 500 held-out problems, both models
#   bash scripts/countdown-models.sh install       # copy into models/countdown-{apr,sosp}
#
# Everything lives under $WEFT_RUNS (default ~/.cache/weft/runs); the data
# under ~/.cache/weft/data. THREADS (default 1) sets each run's threads, so
# the two runs can train side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
RUNS="${WEFT_RUNS:-$HOME/.cache/weft/runs2}"
DATA="$HOME/.cache/weft/data"
WEFT="$CARGO_TARGET_DIR/release/weft"
mkdir -p "$RUNS" "$DATA"

# The task: 4 numbers in 1..15, targets 10..100, no intermediate result
# above 100; search beams 5..10 (APR sub-call beam up to 10).
TASK='{"count": 4, "num_min": 1, "num_max": 15, "target_min": 10, "target_max": 100, "max_intermediate": 100, "min_beam": 5, "max_beam": 10, "max_sub_beam": 10, "heuristic": "mult", "seed": 1}'
DATA_ARGS=(--n 15000 --val 1000 --seed 1 --count 4 --num-min 1 --num-max 15 --target-min 10
  --target-max 100 --max-intermediate 100 --min-beam 5 --max-beam 10 --max-sub-beam 10
  --drills 30000 --drill-lines 32 --state-drills 20000 --state-drill-nodes 6)
MODEL='{"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 6, "num_attention_heads": 4, "max_position_embeddings": 4096}'
TRAIN_ARGS=(--steps 2200 --batch-rows 4 --seq-len 2048 --lr 3e-3 --min-lr 3e-4 --warmup 100
  --eval-every 200 --eval-rows 16 --checkpoint-every 50 --log-every 10)

build() { cargo build --release --locked -p weft; }

case "${1:-}" in
  data)
    build
    for kind in sosp apr; do
      "$WEFT" data countdown --kind "$kind" "${DATA_ARGS[@]}" --out "$DATA/cd4s-$kind"
      echo "$TASK" > "$DATA/cd4s-$kind/task.json"
    done
    # Same seed and counts: both kinds hold-out the same validation problems.
    cmp "$DATA/cd4s-sosp/val_problems.jsonl" "$DATA/cd4s-apr/val_problems.jsonl"
    ;;
  train)
    kind="${2:?train sosp|apr}"
    build
    echo "$MODEL" > "$RUNS/model.json"
    # A copy of the binary per run, so rebuilding weft (or starting the
    # other run) does not touch a running job.
    cp "$WEFT" "$RUNS/weft-bin-$kind"
    RAYON_NUM_THREADS="${THREADS:-1}" "$RUNS/weft-bin-$kind" train --config "$RUNS/model.json" \
      --data "$DATA/cd4s-$kind" --out "$RUNS/$kind" "${TRAIN_ARGS[@]}" ${QUIET:+--quiet}
    echo "$TASK" > "$RUNS/$kind/task.json"
    ;;
  eval)
    build
    head -500 "$DATA/cd4s-sosp/val_problems.jsonl" > "$RUNS/heldout500.jsonl"
    for kind in sosp apr; do echo "$TASK" > "$RUNS/$kind/task.json"; done
    "$WEFT" eval countdown --model "$RUNS/apr" --protocol apr --problems "$RUNS/heldout500.jsonl" \
      --budgets 512,1024,2048 --label APR --json "$RUNS/eval-apr.json"
    "$WEFT" eval countdown --model "$RUNS/sosp" --protocol sequential --problems "$RUNS/heldout500.jsonl" \
      --budgets 512,1024,2048 --label SoS+ --json "$RUNS/eval-sosp.json" \
      --plot "$RUNS/accuracy.svg" --with "$RUNS/eval-apr.json"
    # APR's original distribution (4 numbers in 1..99, targets 10..100, no
    # cap): far outside what these models were trained on; reported as is.
    "$WEFT" data countdown --kind apr --n 10 --val 200 --seed 2 --out "$RUNS/apr-original" > /dev/null
    "$WEFT" eval countdown --model "$RUNS/apr" --protocol apr --problems "$RUNS/apr-original/val_problems.jsonl" \
      --budgets 2048 --no-cap --label APR --json "$RUNS/eval-apr-original.json"
    "$WEFT" eval countdown --model "$RUNS/sosp" --protocol sequential --problems "$RUNS/apr-original/val_problems.jsonl" \
      --budgets 2048 --no-cap --label SoS+ --json "$RUNS/eval-sosp-original.json"
    ;;
  install)
    for kind in sosp apr; do
      dest="models/countdown-$kind"
      mkdir -p "$dest"
      cp "$RUNS/$kind"/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,task.json} "$dest/"
    done
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
