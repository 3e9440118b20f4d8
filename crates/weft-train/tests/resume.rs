//! Resuming as a researcher does it: changing what may change, extending a
//! run, being told flag by flag what may not; the log after a crash; an
//! interrupted run's folders; runs from before the training folder existed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use weft_train::{train, DataPaths, RunOptions, Status, TrainConfig, TrainRecord};

mod common;
use common::{cfg, remove, shape, tmp, train_dir, write_counting};

fn weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model.safetensors")).unwrap()
}

/// A line in the log for every step.
fn every_step() -> RunOptions {
    RunOptions {
        log_every: 1,
        ..Default::default()
    }
}

fn stop_at(step: usize) -> RunOptions {
    RunOptions {
        stop_at_step: Some(step),
        ..every_step()
    }
}

fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(train_dir(out).join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of a run (model folder and training folder) into `to`.
fn copy_run(from: &Path, to: &Path) {
    remove(to);
    copy_dir(from, to);
    copy_dir(&train_dir(from), &train_dir(to));
}

/// Validation and checkpoint frequency and the validation rows change on
/// resume without a word of refusal, and the weights are those of a run
/// that never stopped, to the bit.
#[test]
fn free_settings_change_on_resume_and_the_weights_do_not() {
    let data = tmp("free-data");
    write_counting(&data, 120, 4);
    let paths = DataPaths::from_dir(&data);
    let straight = tmp("free-straight");
    train(
        &straight,
        &paths,
        &shape(),
        &cfg(40),
        &RunOptions::default(),
    )
    .unwrap();

    let resumed = tmp("free-resumed");
    let first = TrainConfig {
        eval_every: 5,
        eval_rows: 2,
        checkpoint_every: 5,
        ..cfg(40)
    };
    train(&resumed, &paths, &shape(), &first, &stop_at(15)).unwrap();
    let second = TrainConfig {
        eval_every: 10,
        eval_rows: 16,
        checkpoint_every: 7,
        ..cfg(40)
    };
    let o = train(&resumed, &paths, &shape(), &second, &RunOptions::default()).unwrap();
    assert_eq!(o.resumed_from, Some(15));
    let named: Vec<String> = o.changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        named,
        [
            "--eval-every 5 (checkpoint) vs 10 (now)",
            "--eval-rows 2 (checkpoint) vs 16 (now)",
            "--checkpoint-every 5 (checkpoint) vs 7 (now)"
        ]
    );
    assert!(weights(&straight) == weights(&resumed), "weights differ");
    // The checkpoint now holds the new settings.
    let record = TrainRecord::load(&resumed).unwrap().unwrap();
    assert_eq!(record.config.unwrap().eval_every, 10);
    remove(&straight);
    remove(&resumed);
    let _ = std::fs::remove_dir_all(&data);
}

/// What changes the weights is refused, every differing flag named with
/// both values; so is another shape, by config key.
#[test]
fn settings_that_change_the_weights_are_refused_flag_by_flag() {
    let data = tmp("refuse-data");
    write_counting(&data, 60, 5);
    let paths = DataPaths::from_dir(&data);
    let out = tmp("refuse");
    train(&out, &paths, &shape(), &cfg(20), &stop_at(10)).unwrap();
    let other = TrainConfig {
        lr: 2e-2,
        warmup_steps: 3,
        seed: 7,
        eval_every: 4,
        ..cfg(20)
    };
    let err = train(&out, &paths, &shape(), &other, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    for line in [
        "  --lr 0.01 (checkpoint) vs 0.02 (now)",
        "  --warmup 10 (checkpoint) vs 3 (now)",
        "  --seed 0 (checkpoint) vs 7 (now)",
    ] {
        assert!(err.contains(line), "{line:?} not in {err}");
    }
    // Only what is refused is listed.
    assert!(!err.contains("--eval-every"), "{err}");
    assert!(!err.contains("TrainConfig"), "{err}");
    let mut deeper = shape();
    deeper.num_hidden_layers = 3;
    let err = train(&out, &paths, &deeper, &cfg(20), &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("num_hidden_layers 2 (checkpoint) vs 3 (now)"),
        "{err}"
    );
    // Fewer steps than already trained cannot be.
    let err = train(&out, &paths, &shape(), &cfg(5), &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--steps 5 is below the 10 steps"), "{err}");
    remove(&out);
    let _ = std::fs::remove_dir_all(&data);
}

/// Raising --steps extends a run: two runs extending the same checkpoint
/// the same way train the same weights, also when one of them is stopped
/// and resumed on the way; a finished run trains on at min_lr; the model
/// is unfinished until the new end.
#[test]
fn extending_a_run_is_defined_and_deterministic() {
    let data = tmp("extend-data");
    write_counting(&data, 120, 6);
    let paths = DataPaths::from_dir(&data);
    let base = tmp("extend-base");
    let done = train(&base, &paths, &shape(), &cfg(30), &every_step()).unwrap();
    assert!(done.finished);
    let (a, b) = (tmp("extend-a"), tmp("extend-b"));
    copy_run(&base, &a);
    copy_run(&base, &b);
    let o = train(&a, &paths, &shape(), &cfg(45), &every_step()).unwrap();
    assert_eq!(o.resumed_from, Some(30));
    assert_eq!(
        o.changes[0].to_string(),
        "--steps 30 (checkpoint) vs 45 (now)"
    );
    assert!(o.finished);
    // b: stopped on the way, then resumed with the same settings.
    let mid = train(&b, &paths, &shape(), &cfg(45), &stop_at(38)).unwrap();
    assert_eq!(mid.status, Status::Stopped);
    let r = TrainRecord::load(&b).unwrap().unwrap();
    assert!(!r.finished, "a model mid-extension must not look finished");
    assert_eq!((r.step, r.steps), (38, 45));
    train(&b, &paths, &shape(), &cfg(45), &every_step()).unwrap();
    assert!(weights(&a) == weights(&b), "extended runs differ");
    assert!(
        weights(&a) != weights(&base),
        "the extension trained nothing"
    );
    // The schedule had ended: the added steps train at min_lr.
    for line in log_lines(&a) {
        let step = line["step"].as_u64().unwrap();
        if let (true, Some(lr)) = (step > 30, line["lr"].as_f64()) {
            assert_eq!(lr, cfg(45).min_lr, "step {step}");
        }
    }
    let anchor = TrainRecord::load(&a)
        .unwrap()
        .unwrap()
        .cosine_anchor
        .unwrap();
    assert_eq!((anchor.step, anchor.progress), (30, 1.0));

    // Extending mid-run: the learning rate goes on from where it stood.
    let c = tmp("extend-c");
    train(&c, &paths, &shape(), &cfg(30), &stop_at(20)).unwrap();
    train(&c, &paths, &shape(), &cfg(60), &every_step()).unwrap();
    let lr_at = |step: u64| {
        log_lines(&c)
            .iter()
            .find(|l| l["step"] == step && l["lr"].is_number())
            .unwrap()["lr"]
            .as_f64()
            .unwrap()
    };
    // The log's lr at step k is the lr of step index k - 1.
    assert_eq!(lr_at(20), cfg(30).lr_at(19));
    let after = lr_at(25);
    assert!(after < lr_at(20) && after > cfg(30).lr_at(24), "{after}");
    for dir in [&base, &a, &b, &c] {
        remove(dir);
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// A run killed after a checkpoint leaves log lines past it; the resume
/// drops them, so every step appears once.
#[test]
fn the_log_never_holds_a_step_twice() {
    let data = tmp("log-data");
    write_counting(&data, 60, 7);
    let paths = DataPaths::from_dir(&data);
    let out = tmp("log");
    let every = RunOptions {
        log_every: 1,
        ..Default::default()
    };
    let stop = RunOptions {
        stop_at_step: Some(12),
        ..every.clone()
    };
    train(&out, &paths, &shape(), &cfg(30), &stop).unwrap();
    // Go on to step 25, then put step 12's checkpoint back: as if the
    // process had been killed after logging steps 13..=25.
    let saved = tmp("log-ckpt");
    copy_dir(&train_dir(&out).join("checkpoint"), &saved);
    train(
        &out,
        &paths,
        &shape(),
        &cfg(30),
        &RunOptions {
            stop_at_step: Some(25),
            ..every.clone()
        },
    )
    .unwrap();
    assert!(log_lines(&out).iter().any(|l| l["step"] == 25));
    let _ = std::fs::remove_dir_all(train_dir(&out).join("checkpoint"));
    copy_dir(&saved, &train_dir(&out).join("checkpoint"));
    train(&out, &paths, &shape(), &cfg(30), &every).unwrap();
    let steps: Vec<u64> = log_lines(&out)
        .iter()
        .filter(|l| l["loss"].is_number())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<u64>>());
    remove(&out);
    let _ = std::fs::remove_dir_all(&saved);
    let _ = std::fs::remove_dir_all(&data);
}

/// The stop flag (what Ctrl-C sets in `weft train`) ends a call at a step
/// boundary with a checkpoint; the model folder says it is unfinished and
/// holds only the model, its record and the data's task.json, all 0644;
/// the same call again finishes the run.
#[test]
fn an_interrupted_run_is_checkpointed_and_marked_unfinished() {
    let data = tmp("stop-data");
    write_counting(&data, 60, 8);
    let task = r#"{"count": 3, "num_min": 1, "num_max": 50}"#;
    std::fs::write(data.join("task.json"), task).unwrap();
    std::fs::write(data.join("summary.json"), r#"{"kind": "apr", "seed": 1}"#).unwrap();
    let paths = DataPaths::from_dir(&data);
    let out = tmp("stop");
    let flag = Arc::new(AtomicBool::new(true));
    let interrupt = RunOptions {
        stop: Some(flag.clone()),
        ..Default::default()
    };
    // Before the first step of a fresh run: nothing to keep, nothing kept.
    let o = train(&out, &paths, &shape(), &cfg(20), &interrupt).unwrap();
    assert!(o.interrupted && !o.saved && o.state.step == 0);
    assert!(!out.join("model.safetensors").exists());
    assert!(!train_dir(&out).join("checkpoint").exists());

    train(&out, &paths, &shape(), &cfg(20), &stop_at(7)).unwrap();
    let o = train(&out, &paths, &shape(), &cfg(20), &interrupt).unwrap();
    assert!(o.interrupted && o.saved);
    assert_eq!((o.status, o.state.step), (Status::Interrupted, 7));
    let r = TrainRecord::load(&out).unwrap().unwrap();
    assert!(!r.finished);
    assert_eq!(r.status, Status::Interrupted);
    assert_eq!(r.trace_kind.as_deref(), Some("apr"));
    assert!(r.task_json);
    let text = std::fs::read_to_string(out.join("weft_train.json")).unwrap();
    assert!(text.contains("\"finished\": false"), "{text}");
    assert!(text.contains("\"status\": \"interrupted\""), "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("task.json")).unwrap(),
        task
    );

    let o = train(&out, &paths, &shape(), &cfg(20), &RunOptions::default()).unwrap();
    assert!(o.finished);
    let r = TrainRecord::load(&out).unwrap().unwrap();
    assert!(r.finished && r.status == Status::Finished && r.step == 20);

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
            "task.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "weft_train.json"
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let ckpt = train_dir(&out).join("checkpoint");
    for dir in [&out, &ckpt] {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{} is {mode:o}", e.path().display());
        }
    }
    remove(&out);
    let _ = std::fs::remove_dir_all(&data);
}

/// A run from before the training folder kept its checkpoint, cache and
/// log inside the model folder: a resume moves them out and goes on as if
/// nothing had happened. A model folder with no checkpoint to resume is
/// never trained over.
#[test]
fn older_runs_resume_and_finished_models_are_not_overwritten() {
    let data = tmp("old-data");
    write_counting(&data, 60, 9);
    let paths = DataPaths::from_dir(&data);
    let straight = tmp("old-straight");
    train(
        &straight,
        &paths,
        &shape(),
        &cfg(30),
        &RunOptions::default(),
    )
    .unwrap();
    let old = tmp("old");
    train(&old, &paths, &shape(), &cfg(30), &stop_at(20)).unwrap();
    // The old layout: everything inside the model folder, no record.
    let td = train_dir(&old);
    for name in ["checkpoint", "tokens.cache", "train_log.jsonl"] {
        std::fs::rename(td.join(name), old.join(name)).unwrap();
    }
    std::fs::remove_dir_all(&td).unwrap();
    std::fs::remove_file(old.join("weft_train.json")).unwrap();
    let o = train(&old, &paths, &shape(), &cfg(30), &RunOptions::default()).unwrap();
    assert_eq!(o.resumed_from, Some(20));
    assert!(weights(&old) == weights(&straight));
    for name in ["checkpoint", "tokens.cache", "train_log.jsonl"] {
        assert!(!old.join(name).exists(), "{name} left in the model folder");
        assert!(td.join(name).exists(), "{name} not moved");
    }

    // A model whose checkpoint is gone is not trained over.
    std::fs::remove_dir_all(&td).unwrap();
    let err = train(&old, &paths, &shape(), &cfg(30), &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("holds a model"), "{err}");
    remove(&straight);
    remove(&old);
    let _ = std::fs::remove_dir_all(&data);
}

/// The example config in the repository is the shipped models' shape,
/// and a trained model's own config.json works as --config.
#[test]
fn the_example_config_is_the_shipped_models_shape() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut example =
        weft_train::ModelShape::load(&root.join("examples/countdown-model.json")).unwrap();
    let shipped = weft_train::export::load_shape(&root.join("models/countdown-apr")).unwrap();
    assert_eq!(example.vocab_size, 0, "vocab_size comes from the tokenizer");
    example.vocab_size = shipped.vocab_size;
    assert_eq!(example.changes(&shipped), []);
}
