"""Builds the transformers peer suite for weft (issue 15) into a folder:

  OUT/models/<name>/   tiny random Llama / Qwen2 / Qwen3 checkpoints, saved by
                       transformers itself (config.json in its own v5 form,
                       model.safetensors in float32, generation_config.json)
  OUT/models/<name>/expected.json
                       {"ids": [...], "logits": [[vocab floats] per position]}
  OUT/rope.json        inverse frequencies and attention factors that
                       transformers' ROPE_INIT_FUNCTIONS compute for a set of
                       RoPE configurations (default, linear, llama3, yarn,
                       dynamic), in v4 (`rope_scaling`) and v5
                       (`rope_parameters`) spellings, plus types weft refuses

Run with the venv that scripts/transformers-peer.sh makes:
    python scripts/transformers_peer.py OUT
"""
import json
import os
import sys

import torch
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

OUT = sys.argv[1]
torch.manual_seed(0)

COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    vocab_size=300,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
)

MODELS = {
    # Llama, untied, explicit head_dim (32, not hidden/heads = 16), llama3 scaling.
    "llama-gqa-untied-headdim-llama3": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            head_dim=32,
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    # Llama, tied, default RoPE with a non-default base.
    "llama-gqa-tied": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=500000.0)),
    ),
    # Llama with YaRN (attention factor applied to cos and sin).
    "llama-yarn": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=128),
        ),
    ),
    # Qwen2: q/k/v biases; tied and untied.
    "qwen2-gqa-tied": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    ),
    "qwen2-gqa-untied-linear": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(tie_word_embeddings=False, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    ),
    # Qwen3: q/k norms, explicit head_dim.
    "qwen3-gqa-untied-headdim": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(head_dim=24, tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    ),
    "qwen3-gqa-tied-llama3": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(
            head_dim=32,
            tie_word_embeddings=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=1000000.0,
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=128,
            ),
        ),
    ),
}

IDS = [1, 17, 42, 255, 3, 99, 150, 7, 7, 299, 0, 64, 128, 200, 31, 5]


def build_models():
    for name, (cfg_cls, model_cls, extra) in MODELS.items():
        kwargs = dict(COMMON)
        kwargs.update(extra)
        if cfg_cls is Qwen2Config:
            kwargs.pop("head_dim", None)
        cfg = cfg_cls(**kwargs)
        model = model_cls(cfg).to(torch.float32).eval()
        # Non-trivial norms, so a wrong norm shows in the logits.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                if n.endswith(".bias"):
                    p.copy_(0.1 * torch.randn_like(p))
        d = os.path.join(OUT, "models", name)
        model.save_pretrained(d, safe_serialization=True)
        with torch.no_grad():
            logits = model(torch.tensor([IDS])).logits[0]
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"ids": IDS, "logits": logits.tolist()}, f)


ROPE_CASES = [
    ("default-v5", dict(rope_parameters=dict(rope_type="default", rope_theta=500000.0))),
    ("default-v4", dict(rope_theta=500000.0)),
    ("linear-v4", dict(rope_theta=10000.0, rope_scaling=dict(type="linear", factor=4.0))),
    ("linear-v5", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.5))),
    (
        "llama3-v4",
        dict(
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
            ),
        ),
    ),
    (
        "llama3-v5",
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            )
        ),
    ),
    ("yarn-v5", dict(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=4096))),
    (
        "yarn-v4-betas",
        dict(
            rope_theta=1000000.0,
            rope_scaling=dict(type="yarn", factor=8.0, beta_fast=16, beta_slow=2, original_max_position_embeddings=2048),
        ),
    ),
    (
        "yarn-mscale",
        dict(
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=40.0,
                mscale=1.0,
                mscale_all_dim=0.707,
                original_max_position_embeddings=4096,
            )
        ),
    ),
    (
        "yarn-attention-factor-no-truncate",
        dict(
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                attention_factor=1.5,
                truncate=False,
                original_max_position_embeddings=4096,
            )
        ),
    ),
    ("dynamic-v4", dict(rope_theta=10000.0, rope_scaling=dict(type="dynamic", factor=2.0))),
    ("dynamic-v5", dict(rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=4.0))),
]

REFUSED = [
    (
        "longrope",
        dict(
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                short_factor=[1.0] * 16,
                long_factor=[2.0] * 16,
                original_max_position_embeddings=4096,
            )
        ),
    ),
]


def rope_cases():
    out = {"transformers": transformers.__version__, "cases": [], "refused": []}
    for name, extra in ROPE_CASES:
        cfg = LlamaConfig(hidden_size=256, num_attention_heads=8, head_dim=32, max_position_embeddings=16384, **extra)
        # The module the model itself builds its cos/sin from.
        emb = LlamaRotaryEmbedding(config=cfg)
        inv, att = emb.inv_freq, emb.attention_scaling
        config = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "head_dim": 32,
                  "max_position_embeddings": 16384, "intermediate_size": 512, "num_hidden_layers": 1,
                  "vocab_size": 32}
        config.update(extra)
        out["cases"].append({"name": name, "config": config, "inv_freq": inv.tolist(), "attention_factor": float(att)})
    for ty, extra in REFUSED:
        config = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "head_dim": 32,
                  "max_position_embeddings": 16384, "intermediate_size": 512, "num_hidden_layers": 1, "vocab_size": 32}
        config.update(extra)
        out["refused"].append({"type": ty, "config": config})
    with open(os.path.join(OUT, "rope.json"), "w") as f:
        json.dump(out, f, indent=1)


# Tokenizer folders that differ only in how they add special tokens; the
# reference is what transformers' AutoTokenizer encodes.
VOCAB = {"<s>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4, "[CLS]": 5, "[SEP]": 6, "<|eot|>": 7, "user": 8, ":": 9}
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
TOKENIZERS = {
    # Llama 3's form: BOS from a TemplateProcessing inside a Sequence, and
    # no add_bos_token in tokenizer_config.json.
    "template-bos-in-sequence": dict(
        post=dict(type="Sequence", processors=[
            dict(type="ByteLevel", add_prefix_space=True, trim_offsets=False, use_regex=True),
            dict(type="TemplateProcessing",
                 single=[dict(SpecialToken=dict(id="<s>", type_id=0)), dict(Sequence=dict(id="A", type_id=0))],
                 pair=[dict(SpecialToken=dict(id="<s>", type_id=0)), dict(Sequence=dict(id="A", type_id=0)),
                       dict(SpecialToken=dict(id="<s>", type_id=1)), dict(Sequence=dict(id="B", type_id=1))],
                 special_tokens={"<s>": dict(id="<s>", ids=[0], tokens=["<s>"])}),
        ]),
        config=dict(),
        eos=[1, 7],
    ),
    "template-bos-eos": dict(
        post=dict(type="TemplateProcessing",
                  single=[dict(SpecialToken=dict(id="<s>", type_id=0)), dict(Sequence=dict(id="A", type_id=0)),
                          dict(SpecialToken=dict(id="</s>", type_id=0))],
                  pair=[dict(Sequence=dict(id="A", type_id=0)), dict(Sequence=dict(id="B", type_id=1))],
                  special_tokens={"<s>": dict(id="<s>", ids=[0], tokens=["<s>"]),
                                  "</s>": dict(id="</s>", ids=[1], tokens=["</s>"])}),
        config=dict(),
        eos=1,
    ),
    "template-without-bos": dict(
        post=dict(type="TemplateProcessing", single=[dict(Sequence=dict(id="A", type_id=0))],
                  pair=[dict(Sequence=dict(id="A", type_id=0)), dict(Sequence=dict(id="B", type_id=1))],
                  special_tokens={}),
        config=dict(),
        eos=1,
    ),
    "bert-processing": dict(
        post=dict(type="BertProcessing", sep=["[SEP]", 6], cls=["[CLS]", 5]),
        config=dict(),
        eos=1,
    ),
    # Llama 2 / Mistral form: no post-processor, add_bos_token in
    # tokenizer_config.json (a class that reads the flag).
    # (add_bos_token without a post-processor is tested in Rust against
    # the rule itself: transformers 5.24's generic and Llama classes both
    # ignored the flag for such folders when tried, where 4.x added BOS.)
    # No post-processor and no flag: nothing is added.
    "no-post-processor-no-flag": dict(post=None, config=dict(), eos=1),
}
TEXTS = ["hello world", "world"]


def build_tokenizers():
    from transformers import AutoTokenizer

    out = {}
    for name, spec in TOKENIZERS.items():
        d = os.path.join(OUT, "tokenizers", name)
        os.makedirs(d, exist_ok=True)
        tj = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [
                dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
                for t, i in VOCAB.items() if t.startswith("<") or t.startswith("[")
            ],
            "normalizer": None,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": spec["post"],
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "<unk>"},
        }
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(tj, f)
        cfg = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=TEMPLATE,
                   tokenizer_class="PreTrainedTokenizerFast")
        cfg.update(spec["config"])
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f)
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 0, "eos_token_id": spec["eos"]}, f)
        tok = AutoTokenizer.from_pretrained(d)
        messages = [{"role": "user", "content": "hello world"}]
        out[name] = {
            "encode_special": [tok(t, add_special_tokens=True).input_ids for t in TEXTS],
            "encode_plain": [tok(t, add_special_tokens=False).input_ids for t in TEXTS],
            "chat_rendered": tok.apply_chat_template(messages, tokenize=False),
            "chat_ids": list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]),
            "eos": spec["eos"],
            "class": type(tok).__name__,
        }
    with open(os.path.join(OUT, "tokenizers.json"), "w") as f:
        json.dump({"texts": TEXTS, "cases": out}, f, indent=1)


os.makedirs(OUT, exist_ok=True)
build_models()
rope_cases()
build_tokenizers()
print(f"transformers {transformers.__version__}: {len(MODELS)} models, {len(ROPE_CASES)} RoPE cases, "
      f"{len(TOKENIZERS)} tokenizer folders in {OUT}")
