//! End-to-end checks of `weft-train`: a micro run that must learn, exact
//! checkpoint round-trips and resume, and that the exported model loads in
//! `weft-model` with the same logits.

use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};
use weft_train::model::Batch;
use weft_train::trainer::load_model;
use weft_train::{train, DataPaths, ModelShape, RunOptions, TrainConfig};

/// A word-level tokenizer over `<pad> <s> </s> <unk>` and the numbers 0..=99.
fn write_tokenizer(path: &Path) {
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
fn write_counting(dir: &Path, docs: usize, seed: u64) {
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

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-train-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn shape() -> ModelShape {
    serde_json::from_str(
        r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}"#,
    )
    .unwrap()
}

fn cfg(steps: usize) -> TrainConfig {
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

#[test]
fn micro_run_learns_counting() {
    let data = tmp("micro-data");
    write_counting(&data, 300, 1);
    let out = tmp("micro-out");
    let started = std::time::Instant::now();
    let o = train(
        &out,
        &DataPaths::from_dir(&data),
        &shape(),
        &cfg(400),
        &RunOptions::default(),
    )
    .unwrap();
    assert!(o.finished);
    let val = o.state.last_val_loss.unwrap();
    // ln(104) = 4.64 at chance; a model that learned to count is near 0.
    assert!(val < 0.5, "validation loss {val} did not fall below 0.5");
    // Sized to take well under 2 minutes on 2 free cores; the time is
    // printed, not asserted (timings never gate a test).
    eprintln!(
        "micro run: validation loss {val:.3} in {:?}",
        started.elapsed()
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resume_continues_exactly_and_checkpoints_round_trip() {
    let data = tmp("resume-data");
    write_counting(&data, 120, 2);
    let paths = DataPaths::from_dir(&data);
    // Straight through.
    let a = tmp("resume-a");
    train(&a, &paths, &shape(), &cfg(40), &RunOptions::default()).unwrap();
    // Stopped after step 20 (as a kill after the step-20 checkpoint would
    // leave it), then resumed by a second call with the same settings.
    let b = tmp("resume-b");
    let first = train(
        &b,
        &paths,
        &shape(),
        &cfg(40),
        &RunOptions {
            stop_at_step: Some(20),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!first.finished);
    assert_eq!(first.state.step, 20);
    let second = train(&b, &paths, &shape(), &cfg(40), &RunOptions::default()).unwrap();
    assert_eq!(second.resumed_from, Some(20));
    assert!(second.finished);
    let ta = candle_core::safetensors::load(a.join("model.safetensors"), &Device::Cpu).unwrap();
    let tb = candle_core::safetensors::load(b.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let d = (x - &tb[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-6, "{name} differs by {d} after resume");
    }
    // Other settings refuse to resume.
    let err = train(&b, &paths, &shape(), &cfg(50), &RunOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&b);

    // --init-from: a new run starts from `a`'s weights, so its first step's
    // loss is `a`'s trained loss, far below a random start's; its counters
    // carry `a`'s cost.
    let one = |dir: &PathBuf, init: Option<PathBuf>| {
        train(
            dir,
            &paths,
            &shape(),
            &cfg(1),
            &RunOptions {
                init_from: init,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let c = tmp("init-c");
    let d = tmp("init-d");
    let warm = one(&c, Some(a.clone()));
    let cold = one(&d, None);
    let a_state: weft_train::State =
        serde_json::from_str(&std::fs::read_to_string(a.join("checkpoint/state.json")).unwrap())
            .unwrap();
    let (lw, lc) = (warm.state.last_loss.unwrap(), cold.state.last_loss.unwrap());
    assert!(lw < 0.5 * lc, "init-from loss {lw} vs random start {lc}");
    let from = warm.state.init_from.as_ref().unwrap();
    assert_eq!(from.steps, 40);
    assert_eq!(from.tokens, a_state.tokens);
    assert!(warm.state.tokens > a_state.tokens);
    assert!(warm.state.cpu_seconds >= a_state.cpu_seconds);
    assert!(cold.state.init_from.is_none());
    // Another shape is refused with the tensor named.
    let mut wide = shape();
    wide.hidden_size = 128;
    let err = train(
        &tmp("init-e"),
        &paths,
        &wide,
        &cfg(1),
        &RunOptions {
            init_from: Some(a.clone()),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("shape"), "{err}");
    // A CPU budget ends training early, within budget, and a rerun trains
    // no further.
    let f = tmp("budget-f");
    let limit = weft_train::CPU_RESERVE_SECONDS + 3.0;
    let opts = RunOptions {
        max_cpu_seconds: Some(limit),
        ..Default::default()
    };
    let spent = train(&f, &paths, &shape(), &cfg(100_000), &opts).unwrap();
    assert!(spent.budget_spent);
    assert!(spent.state.step > 0 && spent.state.step < 100_000);
    assert!(
        spent.state.cpu_seconds <= limit,
        "{}",
        spent.state.cpu_seconds
    );
    let again = train(&f, &paths, &shape(), &cfg(100_000), &opts).unwrap();
    assert!(again.budget_spent);
    assert_eq!(again.state.step, spent.state.step);
    for dir in [&c, &d, &f, &tmp("init-e")] {
        let _ = std::fs::remove_dir_all(dir);
    }

    // Round trip: the exported model reloads to the same logits.
    let dev = Device::Cpu;
    let m = load_model(&a, &dev).unwrap();
    let batch = Batch {
        rows: 1,
        len: 6,
        input: vec![1, 10, 11, 12, 13, 14],
        target: vec![10, 11, 12, 13, 14, 15],
        weight: vec![1.0; 6],
        position: (0..6).collect(),
        segment: vec![0; 6],
        real_tokens: 6,
    };
    let l1 = m
        .forward(&batch)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let ck = a.join("checkpoint");
    let m2 = load_model_from_checkpoint(&ck, &a);
    let l2 = m2
        .forward(&batch)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(l1, l2, "checkpoint and export disagree");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&data);
}

fn load_model_from_checkpoint(ck: &Path, export: &Path) -> weft_train::model::LlamaParams {
    let tmpdir = tmp("ck-view");
    std::fs::create_dir_all(&tmpdir).unwrap();
    std::fs::copy(export.join("config.json"), tmpdir.join("config.json")).unwrap();
    std::fs::copy(
        ck.join("model.safetensors"),
        tmpdir.join("model.safetensors"),
    )
    .unwrap();
    let m = load_model(&tmpdir, &Device::Cpu).unwrap();
    let _ = std::fs::remove_dir_all(&tmpdir);
    m
}

#[test]
fn exported_model_loads_in_weft_model_with_the_same_logits() {
    use weft_model::{KvCache, LoadOptions, Model, SeqStep, Workspace};
    let data = tmp("export-data");
    write_counting(&data, 60, 3);
    let out = tmp("export-out");
    train(
        &out,
        &DataPaths::from_dir(&data),
        &shape(),
        &cfg(20),
        &RunOptions::default(),
    )
    .unwrap();
    let ours = load_model(&out, &Device::Cpu).unwrap();
    let tokens: Vec<u32> = vec![1, 30, 31, 32, 33, 34, 35, 36, 37];
    let n = tokens.len();
    let batch = Batch {
        rows: 1,
        len: n,
        input: tokens.clone(),
        target: tokens.clone(),
        weight: vec![1.0; n],
        position: (0..n as u32).collect(),
        segment: vec![0; n],
        real_tokens: n,
    };
    let want = ours.forward(&batch).unwrap().to_vec2::<f32>().unwrap();

    let model = Model::load(&out, &LoadOptions::default()).unwrap();
    let tok = weft_model::Tokenizer::load(&out).unwrap();
    assert_eq!(tok.encode("30 31", true).unwrap(), vec![1, 30 + 4, 31 + 4]);
    let mut kv = KvCache::new(&model.config, 16, 4);
    let table: Vec<u32> = (0..4).collect();
    let mut ws = Workspace::default();
    let got = model
        .forward(
            &mut kv,
            &[SeqStep {
                tokens: &tokens,
                pos_start: 0,
                kv_start: 0,
                block_table: &table,
                all_logits: true,
                shared: &[],
            }],
            &mut ws,
        )
        .unwrap();
    let got = &got[0];
    let v = want[0].len();
    assert_eq!(got.len(), n * v);
    let mut worst = 0f32;
    for (i, row) in want.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            worst = worst.max((x - got[i * v + j]).abs() / (1.0 + x.abs()));
        }
    }
    // weft-model keeps KV in f16; the training forward is f32 throughout.
    assert!(worst < 2e-2, "logits differ by {worst}");
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&out);
}
