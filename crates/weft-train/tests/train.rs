//! End-to-end checks of `weft-train`: a micro run that must learn, exact
//! checkpoint round-trips and resume, and that the exported model loads in
//! `weft-model` with the same logits.

use candle_core::Device;
use std::path::{Path, PathBuf};
use weft_train::model::Batch;
use weft_train::trainer::load_model;
use weft_train::{train, DataPaths, RunOptions, TrainConfig};

mod common;
use common::{cfg, remove, shape, tmp, train_dir, write_counting};

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
    // The model folder holds the model and its record, nothing else; the
    // checkpoint, cache and log are beside it.
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "weft_train.json"
        ]
    );
    for f in ["checkpoint/state.json", "tokens.cache", "train_log.jsonl"] {
        assert!(train_dir(&out).join(f).exists(), "{f} missing");
    }
    let record = weft_train::TrainRecord::load(&out).unwrap().unwrap();
    assert!(record.finished);
    assert_eq!(record.status, weft_train::Status::Finished);
    assert_eq!((record.step, record.steps), (400, 400));
    let _ = std::fs::remove_dir_all(&data);
    remove(&out);
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
    let other = TrainConfig {
        lr: 2e-2,
        ..cfg(40)
    };
    let err = train(&b, &paths, &shape(), &other, &RunOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("other settings"), "{err}");
    remove(&b);

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
    let a_state: weft_train::State = serde_json::from_str(
        &std::fs::read_to_string(train_dir(&a).join("checkpoint/state.json")).unwrap(),
    )
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
        remove(dir);
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
    let ck = train_dir(&a).join("checkpoint");
    let m2 = load_model_from_checkpoint(&ck, &a);
    let l2 = m2
        .forward(&batch)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(l1, l2, "checkpoint and export disagree");
    remove(&a);
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
    remove(&out);
}
