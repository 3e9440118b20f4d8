#!/usr/bin/env bash
# Reproduces the two Countdown models (SoS+ sequential and APR parallel):
# data, training (checkpointed: rerun the same stage to resume), evaluation
# on held-out problems, plots, and installing the models into
# models/countdown-{apr,sosp}-sft. scripts/countdown-rl.sh then trains them
# further with RL into models/countdown-{apr,sosp}, the shipped ones.
#
#   bash scripts/countdown-models.sh data          # ~1 min
#   bash scripts/countdown-models.sh train sosp    # resumable; at most 3 CPU-hours
#   bash scripts/countdown-models.sh train apr     # resumable; under 3 CPU-hours
#   bash scripts/countdown-models.sh eval          # 500 held-out problems, both models
#   bash scripts/countdown-models.sh install       # copy into models/countdown-{apr,sosp}-sft
#
# Everything lives under $WEFT_RUNS (default ~/.cache/weft/runs3, or runs4
# with NUMBERS=digits): each model folder (KIND, KIND-cont) beside its
# checkpoint, token cache and log (KIND.train, KIND-cont.train); the data
# under ~/.cache/weft/data. THREADS (default 1) sets each run's threads, so
# the two runs can train side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
# NUMBERS=whole (default: each number up to 999 is one token) or digits (one
# token per digit); each has its own data and runs folders.
NUMBERS="${NUMBERS:-whole}"
case "$NUMBERS" in
  whole) SET=cd3; RUNS="${WEFT_RUNS:-$HOME/.cache/weft/runs3}" ;;
  digits) SET=cd3d; RUNS="${WEFT_RUNS:-$HOME/.cache/weft/runs4}" ;;
  *) echo "NUMBERS must be whole or digits" >&2; exit 2 ;;
esac
DATA="$HOME/.cache/weft/data"
WEFT="$CARGO_TARGET_DIR/release/weft"
mkdir -p "$RUNS" "$DATA"

# The task: 3 numbers in 1..50, targets 10..100, no intermediate result
# above 100; wide search beams 8..10 (APR sub-call beam up to 10), so the
# traces solve almost every problem and the sequential trace is long
# (SoS+ mean ~480 tokens) while APR's critical path stays short.
DATA_ARGS=(--n 20000 --val 2000 --seed 1 --count 3 --num-min 1 --num-max 50 --target-min 10
  --target-max 100 --max-intermediate 100 --min-beam 8 --max-beam 10 --max-sub-beam 10
  --drills 40000 --drill-lines 32 --numbers "$NUMBERS")
# The model's shape, as a Hugging Face config.json (vocab_size comes from
# the tokenizer).
MODEL=examples/countdown-model.json
# The compute budget: at most 3 CPU-hours per model, both stages together
# (the stage-2 run counts stage 1's CPU time and stops before passing it).
COMMON_ARGS=(--batch-rows 8 --seq-len 1024 --eval-every 200 --eval-rows 16 --checkpoint-every 50
  --log-every 10 --max-cpu-minutes 180)
# Stage 1 (from random weights, into $RUNS/KIND), then stage 2: a second
# cosine from stage 1's weights (into $RUNS/KIND-cont), which is the model
# evaluated and shipped.
TRAIN_ARGS=(--steps 2400 --lr 3e-3 --min-lr 3e-4 --warmup 60 "${COMMON_ARGS[@]}")
CONT_ARGS=(--steps 2200 --lr 1e-3 --min-lr 5e-5 --warmup 50 --seed 1 "${COMMON_ARGS[@]}")

# Context budgets of the evaluation (most tokens a thread may generate).
BUDGETS=256,512,1024

build() { cargo build --release --locked -p weft; }

case "${1:-}" in
  data)
    build
    for kind in sosp apr; do
      # Writes DIR/task.json (every setting, resolved), which training
      # copies into the model folder.
      "$WEFT" data countdown --kind "$kind" "${DATA_ARGS[@]}" --out "$DATA/$SET-$kind"
    done
    # Same seed and counts: both kinds hold-out the same validation problems.
    cmp "$DATA/$SET-sosp/val_problems.jsonl" "$DATA/$SET-apr/val_problems.jsonl"
    # Held out: validation problems whose numbers (as a multiset) never occur
    # in training with any target; the first 500 are the evaluation set.
    python3 - "$DATA/$SET-sosp" <<'PY'
import json, sys
d = sys.argv[1]
seen = {tuple(sorted(json.loads(l)["nums"])) for l in open(f"{d}/train.jsonl")}
val = [l for l in open(f"{d}/val_problems.jsonl") if tuple(sorted(json.loads(l)["nums"])) not in seen]
assert len(val) >= 500, f"only {len(val)} held-out problems with unseen numbers"
open(f"{d}/heldout.jsonl", "w").writelines(val[:500])
print(f"{len(val)} validation problems with unseen numbers; first 500 -> {d}/heldout.jsonl")
PY
    ;;
  train)
    kind="${2:?train sosp|apr}"
    build
    # A copy, as for the binary below: editing the example does not touch a
    # run that resumes.
    cp "$MODEL" "$RUNS/model.json"
    # A copy of the binary per run, so rebuilding weft (or starting the
    # other run) does not touch a running job.
    cp "$WEFT" "$RUNS/weft-bin-$kind"
    "$RUNS/weft-bin-$kind" train --config "$RUNS/model.json" --threads "${THREADS:-1}" \
      --data "$DATA/$SET-$kind" --out "$RUNS/$kind" "${TRAIN_ARGS[@]}" ${QUIET:+--quiet}
    "$RUNS/weft-bin-$kind" train --config "$RUNS/model.json" --threads "${THREADS:-1}" \
      --data "$DATA/$SET-$kind" --out "$RUNS/$kind-cont" --init-from "$RUNS/$kind" \
      "${CONT_ARGS[@]}" ${QUIET:+--quiet}
    ;;
  eval)
    build
    cp "$DATA/$SET-sosp/heldout.jsonl" "$RUNS/heldout500.jsonl"
    # One problem at a time, so each latency is that problem's alone; the
    # forward-pass threads per model are EVAL_THREADS (default 1). The two
    # models run side by side (one core each on a 2-core machine), so their
    # latencies are measured under the same load.
    "$WEFT" eval countdown --model "$RUNS/apr-cont" --protocol apr --problems "$RUNS/heldout500.jsonl" \
      --budgets "$BUDGETS" --threads "${EVAL_THREADS:-1}" --label APR --json "$RUNS/eval-apr.json" &
    apr_pid=$!
    "$WEFT" eval countdown --model "$RUNS/sosp-cont" --protocol sequential --problems "$RUNS/heldout500.jsonl" \
      --budgets "$BUDGETS" --threads "${EVAL_THREADS:-1}" --label SoS+ --json "$RUNS/eval-sosp.json" &
    sosp_pid=$!
    wait "$apr_pid"; wait "$sosp_pid"
    "$WEFT" eval plot --out "$RUNS/accuracy.svg" "$RUNS/eval-apr.json" "$RUNS/eval-sosp.json"
    # APR's original distribution (4 numbers in 1..99, targets 10..100, no
    # cap): far outside what these 3-number models were trained on; reported
    # as is.
    "$WEFT" data countdown --kind apr --n 10 --val 100 --seed 2 --out "$RUNS/apr-original" > /dev/null
    "$WEFT" eval countdown --model "$RUNS/apr-cont" --protocol apr --problems "$RUNS/apr-original/val_problems.jsonl" \
      --budgets 2048 --no-cap --threads "${EVAL_THREADS:-1}" --label APR --json "$RUNS/eval-apr-original.json" &
    apr_pid=$!
    "$WEFT" eval countdown --model "$RUNS/sosp-cont" --protocol sequential --problems "$RUNS/apr-original/val_problems.jsonl" \
      --budgets 2048 --no-cap --threads "${EVAL_THREADS:-1}" --label SoS+ --json "$RUNS/eval-sosp-original.json" &
    sosp_pid=$!
    wait "$apr_pid"; wait "$sosp_pid"
    ;;
  install)
    for kind in sosp apr; do
      dest="models/countdown-$kind-sft"
      mkdir -p "$dest"
      cp "$RUNS/$kind-cont"/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,task.json} "$dest/"
      # Written by weft train since issue 19 (the run's record, generation
      # defaults); runs trained before lack them.
      for f in generation_config.json weft_train.json; do
        if [ -e "$RUNS/$kind-cont/$f" ]; then cp "$RUNS/$kind-cont/$f" "$dest/"; fi
      done
    done
    ;;
  *)
    sed -n '2,18p' "$0"
    exit 2
    ;;
esac
