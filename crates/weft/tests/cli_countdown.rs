//! The Countdown loop end to end through the CLI, on a micro model trained in
//! the test: `weft data countdown` -> `weft train` (interrupted, resumed) ->
//! `weft eval countdown` (JSON report) -> `weft eval plot` -> `weft solve`.
//! Checks the contract (files, fields, consistency, exit codes), not skill:
//! a model trained for seconds solves little.

use std::path::{Path, PathBuf};
use std::process::Command;

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-cli-cd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train(model_cfg: &Path, data: &Path, out: &Path, extra: &[&str]) -> String {
    ok(weft()
        .args(["train", "--quiet", "--config"])
        .arg(model_cfg)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--steps", "40", "--batch-rows", "4", "--seq-len", "256"])
        .args([
            "--warmup",
            "5",
            "--eval-every",
            "20",
            "--checkpoint-every",
            "20",
        ])
        .args(extra))
}

#[test]
fn data_train_resume_eval_plot_solve() {
    let dir = tmp("loop");
    let data = dir.join("data");
    ok(weft()
        .args([
            "data",
            "countdown",
            "--kind",
            "apr",
            "--n",
            "200",
            "--val",
            "20",
        ])
        .args([
            "--count",
            "3",
            "--num-max",
            "12",
            "--max-intermediate",
            "60",
        ])
        .args(["--drills", "50", "--out"])
        .arg(&data));
    for f in [
        "train.jsonl",
        "val.jsonl",
        "drills.jsonl",
        "tokenizer.json",
        "val_problems.jsonl",
        "train_problems.jsonl",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    // The training problems, one line each, none of them a validation one.
    let problems = |f: &str| -> Vec<String> {
        std::fs::read_to_string(data.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["problem"].to_string())
            .collect()
    };
    let (train_split, val_split) = (
        problems("train_problems.jsonl"),
        problems("val_problems.jsonl"),
    );
    assert!(!train_split.is_empty() && !val_split.is_empty());
    assert!(
        train_split.iter().all(|p| !val_split.contains(p)),
        "a problem in both splits"
    );
    let cfg = dir.join("model.json");
    std::fs::write(
        &cfg,
        r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 512}"#,
    )
    .unwrap();
    let model = dir.join("model");
    // Stopped after no time at all, then resumed to the end.
    let first = train(&cfg, &data, &model, &["--max-minutes", "0"]);
    assert!(first.contains("stopped"), "{first}");
    let second = train(&cfg, &data, &model, &[]);
    assert!(second.contains("finished at step 40/40"), "{second}");
    // Other settings are refused, and nothing is lost.
    let out = weft()
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&model)
        .args(["--steps", "41", "--batch-rows", "4", "--seq-len", "256"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("other settings"));
    assert!(model.join("model.safetensors").exists());

    // Evaluate 3 problems at two budgets.
    let problems = dir.join("problems.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(data.join("val_problems.jsonl"))
        .unwrap()
        .lines()
        .take(3)
        .map(String::from)
        .collect();
    std::fs::write(&problems, lines.join("\n")).unwrap();
    let report = dir.join("report.json");
    ok(weft()
        .args(["eval", "countdown", "--model"])
        .arg(&model)
        .arg("--problems")
        .arg(&problems)
        .args(["--budgets", "32,64", "--json"])
        .arg(&report)
        .arg("--plot")
        .arg(dir.join("own.svg")));
    assert!(std::fs::read_to_string(dir.join("own.svg"))
        .unwrap()
        .contains("<svg"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let budgets = r["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    for (b, want) in budgets.iter().zip([32u64, 64]) {
        assert_eq!(b["budget"], want);
        assert_eq!(b["problems"], 3);
        let acc = b["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let outcomes = b["outcomes"].as_array().unwrap();
        assert_eq!(outcomes.len(), 3);
        for o in outcomes {
            let total = o["total_tokens"].as_u64().unwrap();
            let crit = o["critical_path_tokens"].as_u64().unwrap();
            assert!(crit <= total && total > 0, "{o}");
            // No thread generates past the budget.
            assert!(crit <= want * (1 + o["children"].as_u64().unwrap()), "{o}");
            assert_eq!(o["correct"], o["verdict"]["correct"]);
        }
    }
    let svg = dir.join("plot.svg");
    ok(weft()
        .args(["eval", "plot"])
        .arg(&report)
        .arg("--out")
        .arg(&svg));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    // `weft solve` runs the tree and exits 0 (verified) or 2 (not solved).
    let out = weft()
        .args([
            "solve",
            "3 4 5 -> 17",
            "--quiet",
            "--no-baseline",
            "--budget",
            "48",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    // 0: verified; 1: not solved (2 is a usage error).
    assert!(
        code == 0 || code == 1,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("problem:  3 4 5 -> 17"));
    // A malformed problem is a clean usage error (2).
    let out = weft()
        .args(["solve", "3 4 -> x", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    let _ = std::fs::remove_dir_all(dir);
}
