//! Shared by the weft-train integration tests: a word-level tokenizer, a
//! counting task, a micro shape and settings.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use weft_train::{ModelShape, TrainConfig};

/// A word-level tokenizer over `<pad> <s> </s> <unk>` and the numbers 0..=99.
pub fn write_tokenizer(path: &Path) {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<pad>", "<s>", "</s>", "<unk>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for n in 0..100 {
        vocab.insert(n.to_string(), (n + 4).into());
    }
    let added: Vec<_> = ["<pad>", "<s>", "</s>", "<unk>"]
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(path, serde_json::to_string(&tok).unwrap()).unwrap();
}

/// Counting task: `s s+1 ... s+11`; the first number is the prompt, the
/// rest (and where it ends) is fully determined by it.
pub fn write_counting(dir: &Path, docs: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    write_tokenizer(&dir.join("tokenizer.json"));
    for (name, n, offset) in [("train.jsonl", docs, 0u64), ("val.jsonl", 16, 7)] {
        let mut f = std::fs::File::create(dir.join(name)).unwrap();
        for i in 0..n as u64 {
            let start = (i * 37 + seed + offset) % 60;
            let len = 12;
            let words: Vec<String> = (start..start + len).map(|x| x.to_string()).collect();
            let text = words.join(" ");
            let prompt = words[0].len();
            writeln!(
                f,
                "{}",
                serde_json::json!({"text": text, "prompt_chars": prompt})
            )
            .unwrap();
        }
    }
}

pub fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-train-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(train_dir(&d));
    d
}

/// Where a run into `out` keeps its checkpoint, cache and log.
pub fn train_dir(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.train", out.display()))
}

pub fn remove(out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_dir_all(train_dir(out));
}

pub fn shape() -> ModelShape {
    serde_json::from_str(
        r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}"#,
    )
    .unwrap()
}

pub fn cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_rows: 4,
        seq_len: 128,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 10,
        eval_every: 0,
        eval_rows: 8,
        checkpoint_every: 20,
        ..TrainConfig::default()
    }
}
