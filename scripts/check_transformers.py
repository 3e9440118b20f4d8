"""Loads a weft-train model folder with Hugging Face transformers and prints
the mean next-token loss of a text's first 300 tokens, to compare with
`cargo run --release -p weft-train --example compare -- DIR TEXT`.

    python scripts/check_transformers.py MODEL_DIR TEXT_FILE
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text_file = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.eval()
ids = tok(open(text_file).read(), return_tensors="pt").input_ids[:, :300]
with torch.no_grad():
    logits = model(ids).logits[0]
loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
print(f"{ids.shape[1]} tokens, first {ids[0, :8].tolist()}, mean nll transformers {loss.item():.4f}")
