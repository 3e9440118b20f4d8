//! The research loop's guard rails (issue 19): task rules travel from
//! `weft data countdown --task` to the data folder; evaluation refuses
//! training data and a protocol the model was not trained on, warns about
//! problems outside the model's task, and keeps full traces on request;
//! `solve` says what the model knows; `--help` lists values.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weft() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(repo_root());
    cmd
}

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-cli-task-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(cmd: &mut Command) -> (String, String) {
    let o = cmd.output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{cmd:?} failed: {out}\n{err}");
    (out, err)
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn data_takes_its_settings_from_a_task_file_and_writes_them_back() {
    let dir = tmp("data");
    let task = dir.join("task.json");
    std::fs::write(
        &task,
        r#"{"kind": "sosp", "n": 30, "val": 8, "count": 3, "num_max": 20, "max_intermediate": 60, "drills": 4}"#,
    )
    .unwrap();
    let out = dir.join("data");
    // The file gives every setting; a flag overrides one.
    ok(weft()
        .args(["data", "countdown", "--task"])
        .arg(&task)
        .args(["--seed", "7", "--out"])
        .arg(&out));
    let written = read_json(&out.join("task.json"));
    assert_eq!(written["kind"], "sosp");
    assert_eq!(written["count"], 3);
    assert_eq!(written["num_max"], 20);
    assert_eq!(written["max_intermediate"], 60);
    assert_eq!(written["seed"], 7, "the flag overrides the file");
    assert_eq!(
        written["max_beam"], 5,
        "defaults are written resolved (SoS+: 5)"
    );
    for line in std::fs::read_to_string(out.join("val_problems.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let nums = v["nums"].as_array().unwrap();
        assert_eq!(nums.len(), 3, "{line}");
        assert!(nums.iter().all(|n| n.as_u64().unwrap() <= 20), "{line}");
    }
    assert!(out.join("drills.jsonl").exists());
    // The written file reproduces the folder; without drills, a stale
    // drills.jsonl from the earlier run is removed, not mixed in.
    let (_, err) = ok(weft()
        .args(["data", "countdown", "--task"])
        .arg(out.join("task.json"))
        .args(["--drills", "0", "--out"])
        .arg(&out));
    assert!(err.contains("removed"), "{err}");
    assert!(!out.join("drills.jsonl").exists());
    // Typos and missing settings are refused by name.
    std::fs::write(&task, r#"{"kind": "apr", "n": 5, "num_maxx": 9}"#).unwrap();
    let o = weft()
        .args(["data", "countdown", "--task"])
        .arg(&task)
        .arg("--out")
        .arg(dir.join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("num_maxx"), "{}", text(&o).1);
    let o = weft()
        .args(["data", "countdown", "--n", "5", "--out"])
        .arg(dir.join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--kind"), "{}", text(&o).1);
}

#[test]
fn eval_refuses_mistakes_and_keeps_samples() {
    let dir = tmp("eval");
    let data = dir.join("data");
    ok(weft()
        .args([
            "data",
            "countdown",
            "--kind",
            "apr",
            "--n",
            "10",
            "--val",
            "6",
        ])
        .args([
            "--count",
            "3",
            "--num-max",
            "50",
            "--max-intermediate",
            "100",
            "--out",
        ])
        .arg(&data));
    let apr = repo_root().join("models/countdown-apr");
    let sosp = repo_root().join("models/countdown-sosp");
    // Training data is not a problems file.
    let o = weft()
        .args(["eval", "countdown", "--model"])
        .arg(&apr)
        .arg("--problems")
        .arg(data.join("train.jsonl"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("training data"), "{}", text(&o).1);
    // The SoS+ model under APR is refused unless forced.
    let problems = dir.join("problems.jsonl");
    std::fs::write(
        &problems,
        "{\"nums\": [50, 39, 1], \"target\": 11}\n{\"nums\": [9, 3, 4, 7], \"target\": 24}\n",
    )
    .unwrap();
    let o = weft()
        .args(["eval", "countdown", "--model"])
        .arg(&sosp)
        .arg("--problems")
        .arg(&problems)
        .args(["--protocol", "apr"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("sosp") && err.contains("--protocol sequential"),
        "{err}"
    );
    // The protocol defaults to the model's; a problem outside its task is
    // named; --samples keeps full traces; the report records the task.
    let report = dir.join("report.json");
    let plot = dir.join("plot.svg");
    let (_, err) = ok(weft()
        .args(["eval", "countdown", "--model"])
        .arg(&apr)
        .arg("--problems")
        .arg(&problems)
        .args([
            "--budgets",
            "64,128",
            "--samples",
            "1",
            "--threads",
            "1",
            "--json",
        ])
        .arg(&report)
        .arg("--plot")
        .arg(&plot));
    assert!(
        err.contains("1 of 2 problems are outside the model's task"),
        "{err}"
    );
    let r = read_json(&report);
    assert_eq!(r["protocol"], "apr");
    assert_eq!(r["task"]["kind"], "apr");
    assert_eq!(r["rules"]["max_intermediate"], 100);
    assert_eq!(r["outside_task"], 1);
    for b in r["budgets"].as_array().unwrap() {
        assert_eq!(b["outcomes"].as_array().unwrap().len(), 2);
        assert!(b["outcomes"][0].get("trace").is_none());
        let samples = b["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 1);
        let root = &samples[0]["trace"][0];
        assert!(
            root["prompt"].as_str().unwrap().contains("[50, 39, 1]"),
            "{root}"
        );
        assert!(root["parent"].is_null());
    }
    // The plot uses the table's unit and labels points with their budget.
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("latency per problem (ms)"));
    let labels: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(content, _)| content.trim())
        .collect();
    assert!(
        labels.contains(&"64") && labels.contains(&"128"),
        "budget labels: {labels:?}"
    );
}

#[test]
fn solve_says_what_the_model_knows() {
    // Inside the task: solved, exit 0.
    let o = weft()
        .args(["solve", "9 3 4 -> 24", "--quiet", "--no-baseline"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(err.contains("3 numbers in 1..50"), "{err}");
    // Outside: said plainly, with the exact solver's answer; not solved is
    // exit 1, not the usage error's 2.
    let o = weft()
        .args(["solve", "9 3 4 7 -> 24", "--quiet", "--no-baseline"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        err.contains("outside the model's task (it has 4 numbers, the task 3)"),
        "{err}"
    );
    assert!(err.contains("the exact solver"), "{err}");
    if !o.status.success() {
        assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
        assert!(!out.contains("{\""), "the reason is in words: {out}");
    }
    let o = weft().args(["solve", "nonsense"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "a usage error");
    // A refused fork shows in the live tree where it happened and in the
    // summary, in words. (The shipped model, greedy, forks to a node it
    // never wrote on this out-of-task problem.)
    let o = weft()
        .args(["solve", "9 3 4 7 -> 24", "--no-baseline"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        err.contains("[0] ── refused fork: fork names node #"),
        "{err}"
    );
    assert!(out.contains("refused fork: fork names node #"), "{out}");
    assert!(
        !out.contains("Malformed(") && !err.contains("Malformed("),
        "no debug dump"
    );
}

#[test]
fn help_lists_the_values() {
    let (out, _) = ok(weft().args(["data", "countdown", "--help"]));
    assert!(out.contains("[possible values: mult, sum]"), "{out}");
    assert!(out.contains("[possible values: whole, digits]"), "{out}");
    let (out, _) = ok(weft().args(["data", "tokenizer", "--help"]));
    assert!(out.contains("[possible values: whole, digits]"), "{out}");
    let (out, _) = ok(weft().args(["solve", "--help"]));
    assert!(out.contains("Exit status"), "{out}");
}

#[test]
fn eval_warns_about_an_unfinished_run() {
    let dir = tmp("unfinished");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(repo_root().join("models/countdown-apr")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        model.join("weft_train.json"),
        r#"{"finished": false, "status": "interrupted", "step": 300, "steps": 400}"#,
    )
    .unwrap();
    let problems = dir.join("problems.jsonl");
    std::fs::write(&problems, "{\"nums\": [50, 39, 1], \"target\": 11}\n").unwrap();
    let (_, err) = ok(weft()
        .args(["eval", "countdown", "--model"])
        .arg(&model)
        .arg("--problems")
        .arg(&problems)
        .args(["--budgets", "32", "--threads", "1"]));
    assert!(err.contains("unfinished run: step 300 of 400"), "{err}");
    // A finished record: no warning.
    std::fs::write(
        model.join("weft_train.json"),
        r#"{"finished": true, "status": "finished", "step": 400, "steps": 400}"#,
    )
    .unwrap();
    let (_, err) = ok(weft()
        .args(["eval", "countdown", "--model"])
        .arg(&model)
        .arg("--problems")
        .arg(&problems)
        .args(["--budgets", "32", "--threads", "1"]));
    assert!(!err.contains("unfinished"), "{err}");
}

#[test]
fn two_trainings_into_one_folder_are_refused() {
    let dir = tmp("lock");
    let data = dir.join("data");
    ok(weft()
        .args([
            "data",
            "countdown",
            "--kind",
            "apr",
            "--n",
            "20",
            "--val",
            "4",
        ])
        .args(["--count", "3", "--num-max", "12", "--out"])
        .arg(&data));
    let cfg = dir.join("m.json");
    std::fs::write(
        &cfg,
        r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 512}"#,
    )
    .unwrap();
    let out = dir.join("model");
    // Another run holds the folder's lock (as a running `weft train` does).
    std::fs::create_dir_all(dir.join("model.train")).unwrap();
    let lock = std::fs::File::create(dir.join("model.train/lock")).unwrap();
    lock.lock().unwrap();
    let train = |out: &Path| {
        weft()
            .args([
                "train",
                "--quiet",
                "--steps",
                "2",
                "--batch-rows",
                "1",
                "--seq-len",
                "64",
            ])
            .arg("--config")
            .arg(&cfg)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let o = train(&out);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("another `weft train` is using"),
        "{}",
        text(&o).1
    );
    assert!(!out.join("model.safetensors").exists(), "nothing written");
    lock.unlock().unwrap();
    let o = train(&out);
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn newcomer_mistakes_are_named() {
    let dir = tmp("mistakes");
    let data = dir.join("data");
    ok(weft()
        .args([
            "data",
            "countdown",
            "--kind",
            "apr",
            "--n",
            "10",
            "--val",
            "4",
        ])
        .args(["--count", "3", "--num-max", "12", "--out"])
        .arg(&data));
    let cfg = dir.join("m.json");
    std::fs::write(
        &cfg,
        r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 512}"#,
    )
    .unwrap();
    // Training into the data folder is refused; a warm-up longer than the
    // run is said.
    let o = weft()
        .args([
            "train",
            "--quiet",
            "--steps",
            "2",
            "--batch-rows",
            "1",
            "--seq-len",
            "64",
        ])
        .arg("--config")
        .arg(&cfg)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(err.contains("is the data folder"), "{err}");
    assert!(err.contains("--warmup 50 is not below --steps 2"), "{err}");
    assert!(!data.join("model.safetensors").exists());
    // Budgets and --limit of 0, and --pick past the end, are usage errors.
    for args in [
        &[
            "eval",
            "countdown",
            "--model",
            "models/countdown-apr",
            "--problems",
            "models/heldout.jsonl",
            "--budgets",
            "0",
        ][..],
        &[
            "eval",
            "countdown",
            "--model",
            "models/countdown-apr",
            "--problems",
            "models/heldout.jsonl",
            "--limit",
            "0",
        ][..],
        &["demo", "--pick", "500"][..],
    ] {
        let o = weft().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o).1);
    }
    // A problem the model does not solve: solve says whether an answer
    // exists.
    let o = weft()
        .args(["solve", "9 3 4 7 -> 24", "--quiet", "--no-baseline"])
        .output()
        .unwrap();
    if o.status.code() == Some(1) {
        let out = text(&o).0;
        assert!(out.contains("exact:    9*3=27"), "{out}");
    }
    // A model trained on the other traces is refused as --model.
    let o = weft()
        .args([
            "solve",
            "9 3 4 -> 24",
            "--quiet",
            "--no-baseline",
            "--model",
            "models/countdown-sosp",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("trained on sosp traces"),
        "{}",
        text(&o).1
    );
}

/// Every option of every command says what it does in `--help`.
#[test]
fn every_option_is_described() {
    let commands: &[&[&str]] = &[
        &["run"],
        &["serve"],
        &["bench", "decode"],
        &["bench", "threads"],
        &["bench", "train"],
        &["bench", "serve"],
        &["countdown", "solve"],
        &["countdown", "trace"],
        &["data", "countdown"],
        &["data", "tokenizer"],
        &["eval", "countdown"],
        &["eval", "plot"],
        &["solve"],
        &["demo"],
        &["train"],
    ];
    let mut bare = Vec::new();
    for c in commands {
        let (out, _) = ok(weft().args(*c).arg("--help"));
        let lines: Vec<&str> = out.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // Options are indented 2-6 spaces, their descriptions deeper (an
            // after-help paragraph starts at 0).
            let indent = l.len() - t.len();
            if !t.starts_with('-')
                || !(2..=6).contains(&indent)
                || t.contains("--help")
                || t.contains("--version")
            {
                continue;
            }
            // `--name <VALUE>` alone on its line, and nothing under it.
            let described_inline = t.split("  ").filter(|s| !s.is_empty()).count() > 1;
            let next = lines.get(i + 1).copied().unwrap_or("");
            let next_indent = next.len() - next.trim_start().len();
            let described_below = !next.trim().is_empty() && next_indent > 6;
            if !described_inline && !described_below {
                bare.push(format!("weft {}: {t}", c.join(" ")));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "options without a description:\n{}",
        bare.join("\n")
    );
}
