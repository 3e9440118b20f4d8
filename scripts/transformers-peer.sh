#!/usr/bin/env bash
# The transformers peer suite (issue 15): tiny random Llama / Qwen2 / Qwen3
# checkpoints that transformers itself builds and saves, their logits, and
# the RoPE inverse frequencies transformers computes for each RoPE type.
# Writes ~/.cache/weft/peer/transformers (or $WEFT_CACHE/peer/transformers),
# regenerated when scripts/transformers_peer.py changes. Needs a venv with
# torch and transformers under ~/.cache/weft/torch-venv (made here, once;
# PyPI's torch wheel is large, ~5 GB with its CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
VENV="$CACHE/torch-venv"
OUT="$CACHE/peer/transformers"
TORCH="2.15.0"
TRANSFORMERS="5.24.0"
if ! "$VENV/bin/python" -c "import torch, transformers, sys; sys.exit(0 if (torch.__version__.split('+')[0], transformers.__version__) == ('$TORCH', '$TRANSFORMERS') else 1)" 2>/dev/null; then
  echo "installing torch $TORCH and transformers $TRANSFORMERS into $VENV (one time)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH" "transformers==$TRANSFORMERS" >&2
fi
stamp="$(sha256sum scripts/transformers_peer.py | cut -d' ' -f1) $TORCH $TRANSFORMERS"
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$stamp" ]; then
  exit 0
fi
rm -rf "$OUT.part"
"$VENV/bin/python" scripts/transformers_peer.py "$OUT.part" 2>&1 | grep -v 'Writing model shards' >&2 || true
[ -f "$OUT.part/rope.json" ] || { echo "transformers peer suite failed to build" >&2; exit 1; }
echo "$stamp" > "$OUT.part/.stamp"
rm -rf "$OUT"
mv "$OUT.part" "$OUT"
echo "transformers peer suite ready: $OUT" >&2
