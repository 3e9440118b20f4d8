//! `weft train` as a researcher drives it, on a micro model: progress in a
//! log (stderr is a pipe here), resumes that say what changed, Ctrl-C,
//! `--threads`, `--config` with Hugging Face configs, and error wording.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-cli-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A data folder: a word-level tokenizer over `<pad> <s> </s> <unk>` and
/// 0..=99, and counting documents (`s s+1 ... s+11`, the first number the
/// prompt).
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let specials = ["<pad>", "<s>", "</s>", "<unk>"];
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for n in 0..100 {
        vocab.insert(n.to_string(), (n + 4).into());
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    for (name, n, offset) in [("train.jsonl", 120u64, 0u64), ("val.jsonl", 8, 7)] {
        let mut f = std::fs::File::create(dir.join(name)).unwrap();
        for i in 0..n {
            let start = (i * 37 + offset) % 60;
            let words: Vec<String> = (start..start + 12).map(|x| x.to_string()).collect();
            let line = serde_json::json!({"text": words.join(" "), "prompt_chars": words[0].len()});
            writeln!(f, "{line}").unwrap();
        }
    }
}

const SHAPE: &str = r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 128}"#;

/// `weft train` on `data` into `out` with the micro settings and `extra`.
fn train_cmd(config: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = weft();
    c.arg("train")
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--batch-rows", "2", "--seq-len", "64", "--warmup", "3"])
        .args(["--checkpoint-every", "10", "--eval-rows", "4"])
        .args(extra);
    c
}

fn log_steps(out: &Path) -> Vec<u64> {
    let log = PathBuf::from(format!("{}.train/train_log.jsonl", out.display()));
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["loss"].is_number())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// With stderr not a terminal, progress comes as plain lines (step, loss,
/// lr, tok/s, ETA); a resume says so first, then what changed, flag by
/// flag; --steps extends the run; settings that change the weights are
/// refused by flag, without a dump of the settings struct.
#[test]
fn progress_lines_and_resumes_that_say_what_changed() {
    let dir = tmp("progress");
    let data = dir.join("data");
    write_data(&data);
    let config = dir.join("model.json");
    std::fs::write(&config, SHAPE).unwrap();
    let model = dir.join("model");
    let every = ["--progress-every", "0"];
    let out = train_cmd(&config, &data, &model, &["--steps", "12"])
        .args(every)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("finished at step 12/12"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].starts_with("training "), "{stderr}");
    for step in 1..=12 {
        let prefix = format!("step {step}/12 (");
        let line = lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no progress line for step {step}: {stderr}"));
        for field in ["loss ", "lr ", "tok/s", "elapsed ", "eta "] {
            assert!(line.contains(field), "{field:?} missing: {line}");
        }
    }

    let out = train_cmd(
        &config,
        &data,
        &model,
        &["--steps", "20", "--eval-every", "4"],
    )
    .args(every)
    .output()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("finished at step 20/20"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("resumed from step 12 of 20"),
        "{stderr}"
    );
    assert_eq!(lines[1], "  --steps 12 (checkpoint) vs 20 (now)");
    assert_eq!(lines[2], "  --eval-every 200 (checkpoint) vs 4 (now)");
    assert!(lines[3].contains("trains on at --min-lr"), "{stderr}");
    assert!(lines[4].starts_with("step 13/20 ("), "{stderr}");
    assert!(stderr.contains("step 16/20: validation loss"), "{stderr}");
    assert_eq!(log_steps(&model), [10, 12, 20]);

    // --lr and --seed would change the weights: refused, each by flag.
    let out = train_cmd(
        &config,
        &data,
        &model,
        &["--steps", "20", "--lr", "0.002", "--seed", "3"],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("  --lr 0.003 (checkpoint) vs 0.002 (now)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  --seed 0 (checkpoint) vs 3 (now)"),
        "{stderr}"
    );
    assert!(!stderr.contains("TrainConfig"), "{stderr}");

    // --quiet: what happened, but no progress lines.
    let out = train_cmd(&config, &data, &model, &["--steps", "22", "--quiet"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.starts_with("resumed from step 20 of 22"), "{stderr}");
    assert!(!stderr.contains("step 21/22 ("), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C: a checkpoint at the next step boundary, the way to resume,
/// status 130, a model marked unfinished; the same command with more or
/// fewer steps resumes, and the log holds every step once.
#[test]
fn ctrl_c_writes_a_checkpoint_and_says_how_to_resume() {
    let dir = tmp("sigint");
    let data = dir.join("data");
    write_data(&data);
    let config = dir.join("model.json");
    std::fs::write(&config, SHAPE).unwrap();
    let model = dir.join("model");
    let mut child = train_cmd(
        &config,
        &data,
        &model,
        &["--steps", "20000", "--log-every", "1"],
    )
    .args(["--progress-every", "0"])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let mut seen = Vec::new();
    // Wait until training runs, then interrupt.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.starts_with("step 3/");
        seen.push(line);
        if started {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{stderr}");
    let at = seen
        .iter()
        .find_map(|l| l.strip_prefix("error: interrupted at step "))
        .unwrap_or_else(|| panic!("no interrupt message: {stderr}"));
    let step: u64 = at.split('/').next().unwrap().parse().unwrap();
    assert!(at.contains("checkpoint written to"), "{stderr}");
    let how = seen
        .iter()
        .position(|l| l == "resume with the same command:")
        .unwrap_or_else(|| panic!("{stderr}"));
    let command = &seen[how + 1];
    assert!(
        command.contains(" train --config ") && command.contains("--steps 20000"),
        "{command}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("weft_train.json")).unwrap())
            .unwrap();
    assert_eq!(record["finished"], false);
    assert_eq!(record["status"], "interrupted");
    assert_eq!(record["step"], step);
    assert_eq!(log_steps(&model), (1..=step).collect::<Vec<_>>());

    // Resumed (with fewer steps, so the test ends): every step logged once.
    let end = (step + 4).to_string();
    let out = train_cmd(
        &config,
        &data,
        &model,
        &["--steps", &end, "--log-every", "1", "--quiet"],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!("resumed from step {step} of {end}")),
        "{stderr}"
    );
    assert_eq!(log_steps(&model), (1..=step + 4).collect::<Vec<_>>());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("weft_train.json")).unwrap())
            .unwrap();
    assert_eq!(record["finished"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// --threads sets the worker threads; the weights do not depend on them.
#[test]
fn threads_do_not_change_the_weights() {
    let dir = tmp("threads");
    let data = dir.join("data");
    write_data(&data);
    let config = dir.join("model.json");
    std::fs::write(&config, SHAPE).unwrap();
    let mut weights = Vec::new();
    for t in ["1", "2"] {
        let model = dir.join(format!("model-{t}"));
        let out = train_cmd(&config, &data, &model, &["--steps", "8", "--quiet"])
            .args(["--threads", t])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
        weights.push(std::fs::read(model.join("model.safetensors")).unwrap());
    }
    assert!(weights[0] == weights[1], "--threads changed the weights");
    let out = train_cmd(&config, &data, &dir.join("x"), &["--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("--threads must be between 1 and"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// --config takes a trained model's own config.json and refuses, by key,
/// what it cannot train; a missing file is named with its cause once.
#[test]
fn config_takes_hf_configs_and_names_what_it_refuses() {
    let dir = tmp("config");
    let data = dir.join("data");
    write_data(&data);
    let config = dir.join("model.json");
    std::fs::write(&config, SHAPE).unwrap();
    let first = dir.join("first");
    let out = train_cmd(&config, &data, &first, &["--steps", "2", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    // The model's own config.json, as --config for a new run and for a
    // resume of the first.
    let own = first.join("config.json");
    for (out_dir, steps) in [(dir.join("second"), "2"), (first.clone(), "3")] {
        let out = train_cmd(&own, &data, &out_dir, &["--steps", steps, "--quiet"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let mut hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).unwrap();
    hf["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
    let scaled = dir.join("scaled.json");
    std::fs::write(&scaled, hf.to_string()).unwrap();
    let out = train_cmd(&scaled, &data, &dir.join("third"), &["--steps", "2"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("bad config: rope_scaling {"), "{stderr}");

    let missing = dir.join("missing.json");
    let out = train_cmd(&missing, &data, &dir.join("fourth"), &[])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("missing.json"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
