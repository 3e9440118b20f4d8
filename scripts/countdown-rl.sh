#!/usr/bin/env bash
# RL (GRPO, `weft train rl`) of the two supervised Countdown models
# (models/countdown-{apr,sosp}-sft, which scripts/countdown-models.sh
# trains) on their own rollouts, with the same compute for both; evaluation
# before and after on the 500 held-out problems; installing the RL models
# as models/countdown-{apr,sosp}, the ones `weft demo` and `weft solve` run.
#
#   bash scripts/countdown-rl.sh data          # the models' training problems (seconds)
#   bash scripts/countdown-rl.sh train apr     # resumable; at most 3 CPU-hours
#   bash scripts/countdown-rl.sh train sosp    # resumable; the same budget
#   bash scripts/countdown-rl.sh eval [apr|sosp]  # before / after (both by default), budgets 512, 1024, 2048
#   bash scripts/countdown-rl.sh install [apr|sosp]  # copy the RL models into models/
#
# Everything lives under $WEFT_RL (default ~/.cache/weft/rl): each model
# folder (KIND-rl) beside its training folder (KIND-rl.rl: checkpoint,
# rl_log.jsonl). THREADS (default 1) sets each run's threads, so both runs
# can train side by side on a 2-core machine. Rerun a `train` stage to
# resume it: it continues exactly where its last checkpoint stood.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
RL="${WEFT_RL:-$HOME/.cache/weft/rl}"
DATA="$HOME/.cache/weft/data"
WEFT="$CARGO_TARGET_DIR/release/weft"
mkdir -p "$RL" "$DATA"

# The same settings and budget for both models: 16 problems x 8 rollouts a
# step, sampled at temperature 0.8 (the loss's log-probabilities are of the
# distribution sampled from), every thread up to 2048 tokens (so that a
# child that runs long is scored, and the model learns to end it),
# ThreadWeaver's reward (correct + 0.5 min(eta - 1, 0.2)), 0.5 off the
# advantage of every sampled token in a line that repeats the search
# (--repeated-search-penalty: token-level credit), a KL term to the initial
# model (0.05), lr 2e-5 (AdamW, constant), one policy-gradient step per
# batch of rollouts. 180 CPU-minutes each, rollouts and updates together.
# (Earlier settings, kept under ~/.cache/weft/rl for the record: T 0.8 with
# the loss at T 1, lr 3e-5; T 1.0, lr 5e-5, no KL, which lost arithmetic
# accuracy by step 60; and these settings with a rollout-level penalty
# (--duplicate-penalty 1.0) instead of the token-level one, flat for 24
# steps: apr-rl-rollout-penalty.)
RL_ARGS=(--steps 1000 --problems-per-step 16 --group 8 --temperature 0.8 --budget 2048
  --lr 2e-5 --kl-coef 0.05 --reward-parallel 0.5 --parallel-cap 0.2 --repeated-search-penalty 0.5
  --checkpoint-every 5 --max-cpu-minutes 180 --seed 0)
BUDGETS="${BUDGETS:-512,1024,2048}"

build() { cargo build --release --locked -p weft; }

case "${1:-}" in
  data)
    build
    # The models' own training problems (the task files hold the seed):
    # the held-out set never occurs here, by its construction.
    for kind in apr sosp; do
      "$WEFT" data countdown --task "models/countdown-$kind/task.json" --n 20000 --val 2000 \
        --out "$DATA/rl-$kind" > /dev/null
    done
    ;;
  train)
    kind="${2:?train apr|sosp}"
    build
    # A copy of the binary per run, so rebuilding weft does not touch a
    # running job.
    cp "$WEFT" "$RL/weft-bin-$kind"
    "$RL/weft-bin-$kind" train rl --init-from "models/countdown-$kind-sft" \
      --problems "$DATA/rl-$kind/train_problems.jsonl" --out "$RL/$kind-rl" \
      --threads "${THREADS:-1}" "${RL_ARGS[@]}" ${QUIET:+--quiet}
    ;;
  eval)
    build
    # One problem at a time, one forward-pass thread, the four models two
    # at a time side by side (one core each), as models/MODEL.md measures.
    for kind in ${2:-apr sosp}; do
      proto=apr; [ "$kind" = sosp ] && proto=sequential
      "$WEFT" eval countdown --model "models/countdown-$kind-sft" --protocol "$proto" \
        --problems models/heldout.jsonl --budgets "$BUDGETS" --threads 1 \
        --label "$kind" --json "$RL/eval-$kind.json" &
      a=$!
      "$WEFT" eval countdown --model "$RL/$kind-rl" --protocol "$proto" \
        --problems models/heldout.jsonl --budgets "$BUDGETS" --threads 1 \
        --label "$kind+RL" --json "$RL/eval-$kind-rl.json" &
      b=$!
      wait "$a"; wait "$b"
    done
    # The plot once all four models have figures.
    if [ -f "$RL/eval-apr-rl.json" ] && [ -f "$RL/eval-sosp-rl.json" ]; then
      "$WEFT" eval plot --out "$RL/accuracy.svg" "$RL"/eval-{apr,apr-rl,sosp,sosp-rl}.json
    fi
    ;;
  install)
    # The RL model of each kind that has one (KIND as a second argument:
    # that one only).
    for kind in ${2:-apr sosp}; do
      [ -f "$RL/$kind-rl/weft_rl.json" ] || { echo "no RL model at $RL/$kind-rl" >&2; exit 1; }
      cp "$RL/$kind-rl"/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json,task.json,weft_rl.json} \
        "models/countdown-$kind/"
    done
    ;;
  *)
    sed -n '2,18p' "$0"
    exit 2
    ;;
esac
