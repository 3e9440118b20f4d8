//! `weft train rl` as a user meets it: a short run writes a model folder
//! that evaluates and resumes; the held-out set and bad settings are
//! refused with the reason.

use std::path::PathBuf;
use std::process::{Command, Output};

fn weft() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(repo_root());
    cmd
}

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Training problems of the APR model's task, written here.
fn problems(dir: &std::path::Path) -> PathBuf {
    let data = dir.join("data");
    let o = weft()
        .args([
            "data",
            "countdown",
            "--task",
            "models/countdown-apr/task.json",
        ])
        .args([
            "--n",
            "40",
            "--val",
            "10",
            "--drills",
            "0",
            "--state-drills",
            "0",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    data.join("train_problems.jsonl")
}

#[test]
fn a_short_run_writes_a_model_that_evaluates_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ps = problems(dir.path());
    let out = dir.path().join("apr-rl");
    let run = |steps: &str| {
        weft()
            .args([
                "train",
                "rl",
                "--init-from",
                "models/countdown-apr",
                "--problems",
            ])
            .arg(&ps)
            .arg("--out")
            .arg(&out)
            .args([
                "--steps",
                steps,
                "--problems-per-step",
                "2",
                "--group",
                "2",
                "--quiet",
            ])
            .output()
            .unwrap()
    };
    let o = run("1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("model: "));
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "task.json",
        "weft_rl.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(dir.path().join("apr-rl.rl/rl_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1);
    // Resuming with more steps goes on from step 1.
    let o = run("2");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed from step 1"), "{}", stderr(&o));
    let log = std::fs::read_to_string(dir.path().join("apr-rl.rl/rl_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    // The resume note comes first, before the step's line.
    let err = stderr(&o);
    assert!(
        err.find("resumed from").unwrap() < err.find("finished").unwrap(),
        "{err}"
    );
    // Fewer --steps than the checkpoint has done is refused, not "step 2/1".
    let o = run("1");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--steps 2 or more"), "{}", stderr(&o));
    // The model folder is an ordinary one: it evaluates.
    let o = weft()
        .args(["eval", "countdown", "--model"])
        .arg(&out)
        .args([
            "--problems",
            "models/heldout.jsonl",
            "--limit",
            "3",
            "--budgets",
            "512",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Another setting on resume is refused, by name.
    let o = weft()
        .args([
            "train",
            "rl",
            "--init-from",
            "models/countdown-apr",
            "--problems",
        ])
        .arg(&ps)
        .arg("--out")
        .arg(&out)
        .args([
            "--steps",
            "3",
            "--problems-per-step",
            "2",
            "--group",
            "2",
            "--lr",
            "0.001",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--lr"), "{}", stderr(&o));
    // The model folder's weights are readable by all, as its other files.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("model.safetensors"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn the_held_out_set_and_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = weft()
        .args(["train", "rl", "--init-from", "models/countdown-apr"])
        .args(["--problems", "models/heldout.jsonl", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("held-out"), "{}", stderr(&o));
    // A refused start leaves nothing behind: --out is a model folder.
    let model = dir.path().join("sosp");
    std::fs::create_dir_all(&model).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "task.json",
    ] {
        std::fs::copy(
            repo_root().join("models/countdown-sosp").join(f),
            model.join(f),
        )
        .unwrap();
    }
    let ps = problems(dir.path());
    let o = weft()
        .args([
            "train",
            "rl",
            "--init-from",
            "models/countdown-apr",
            "--problems",
        ])
        .arg(&ps)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("holds a model"), "{}", stderr(&o));
    assert!(
        !dir.path().join("sosp.rl").exists(),
        "a refused run left its folder"
    );
    // Every number setting: out of range, not a number, and negative
    // numbers written with a space (`--flag -1`) reach the range check.
    for (flag, value, says) in [
        ("--group", "1", "--group"),
        ("--temperature", "0", "--temperature"),
        ("--temperature", "inf", "--temperature"),
        ("--clip-eps", "1.5", "--clip-eps"),
        ("--reward-correct", "nan", "--reward-correct"),
        ("--reward-correct", "-1", "--reward-correct"),
        ("--reward-parallel", "nan", "--reward-parallel"),
        ("--parallel-cap", "-1", "--parallel-cap"),
        ("--reward-format", "nan", "--reward-format"),
        ("--length-penalty", "-1", "--length-penalty"),
        ("--length-penalty", "nan", "--length-penalty"),
        ("--duplicate-penalty", "-0.5", "--duplicate-penalty"),
        (
            "--repeated-search-penalty",
            "-1",
            "--repeated-search-penalty",
        ),
        (
            "--repeated-search-penalty",
            "nan",
            "--repeated-search-penalty",
        ),
        ("--weight-decay", "-1", "--weight-decay"),
        ("--grad-clip", "nan", "--grad-clip"),
        ("--kl-coef", "-1", "--kl-coef"),
    ] {
        let o = weft()
            .args([
                "train",
                "rl",
                "--init-from",
                "models/countdown-apr",
                "--problems",
            ])
            .arg(&ps)
            .arg("--out")
            .arg(dir.path().join("y"))
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{flag}: {}", stderr(&o));
        assert!(
            !dir.path().join("y.rl").exists(),
            "{flag} {value} left y.rl"
        );
    }
    // Clap's own refusals (exit 2): a CPU budget of no minutes.
    for value in ["0", "-1", "nan"] {
        let o = weft()
            .args(["train", "rl", "--init-from", "models/countdown-apr"])
            .arg("--problems")
            .arg(&ps)
            .arg("--out")
            .arg(dir.path().join("y"))
            .args(["--max-cpu-minutes", value])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "--max-cpu-minutes {value}");
        assert!(stderr(&o).contains("--max-cpu-minutes"), "{}", stderr(&o));
    }
    // An --out that is a file is refused before any rollout.
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    let o = weft()
        .args(["train", "rl", "--init-from", "models/countdown-apr"])
        .arg("--problems")
        .arg(&ps)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a folder"), "{}", stderr(&o));
    assert!(!dir.path().join("afile.rl").exists());
}
