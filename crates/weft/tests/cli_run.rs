//! `weft run` end to end: text on stdout only, clean errors on bad input.

use std::process::Command;

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn model() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn run_streams_only_generated_text_to_stdout() {
    let out = weft()
        .args(["run", "--model"])
        .arg(model())
        .args([
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "8",
            "--stats",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // llama.cpp's greedy continuation starts " Paris." (tests/golden).
    assert!(stdout.starts_with(" Paris."), "{stdout:?}");
    assert!(!stdout.contains("tok/s"), "stats leaked to stdout");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tok/s"));
}

#[test]
fn chat_mode_stops_at_end_of_turn() {
    let out = weft()
        .args(["run", "--chat", "--model"])
        .arg(model())
        .args(["--prompt", "What is 2+2?", "--max-tokens", "64"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains('4') && !stdout.contains("<|im_end|>"),
        "{stdout:?}"
    );
}

#[test]
fn broken_model_file_is_a_clean_error() {
    let dir = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let out = weft()
        .args(["run", "--prompt", "hi", "--model"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("broken.gguf"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_prompt_is_explained() {
    let out = weft()
        .args(["run", "--model"])
        .arg(model())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt"));
}

/// `weft run ... | head -c 40`: the reader goes away, decoding stops at
/// once and the exit is quiet (no error, status 0).
#[test]
fn a_closed_stdout_stops_decoding_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = weft()
        .args(["run", "--model"])
        .arg(model())
        .args(["--prompt", "Once upon a time", "--ignore-eos", "--stats"])
        .args(["--max-tokens", "1500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 40];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    let n: usize = stderr
        .split("stdout closed after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    // It decoded what it printed, then stopped (without the abort it would
    // decode all 1500).
    assert!((1..1500).contains(&n), "decoded {n} tokens");
}

#[test]
fn options_that_cannot_work_are_refused_with_the_field_named() {
    for (flags, field) in [
        (&["--stop", ""][..], "stop"),
        (&["--top-p", "5"][..], "top_p"),
        (&["--temperature", "-1"][..], "temperature"),
        (&["--top-k", "-2"][..], "top_k"),
        (&["--max-tokens", "100000"][..], "context"),
        (&["--protocol", "tree-of-thought"][..], "protocol"),
    ] {
        let out = weft()
            .args(["run", "--model"])
            .arg(model())
            .args(["--prompt", "Hi"])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(field),
            "{flags:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{flags:?}");
    }
}

/// `--stop` applies with a protocol too: the root's text ends before it.
#[test]
fn stop_works_in_protocol_mode() {
    let prompt = "Q: distance?\n<Parallel>\n<Outlines>\n<Outline>1: dx.</Outline>\n<Outline>2: dy.</Outline>\n</Outlines>";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.txt");
    std::fs::write(&file, prompt).unwrap();
    let run = |extra: &[&str]| {
        let out = weft()
            .args(["run", "--quiet", "--protocol", "threadweaver", "--model"])
            .arg(model())
            .arg("--prompt-file")
            .arg(&file)
            .args(["--max-tokens", "24"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let full = run(&[]);
    // The join ends with the last `</Thread>` and `\n` (the released
    // checkpoints' `no_conclusion`); the root writes after it.
    // Two outlines: the join ends at the second `</Thread>` and its `\n`.
    let second = full
        .match_indices("</Thread>")
        .nth(1)
        .map(|(at, _)| at)
        .expect(&full);
    let after = second + "</Thread>\n".len();
    let stop: String = full[after..].trim_start().chars().take(4).collect();
    assert!(!stop.is_empty(), "{full:?}");
    let stopped = run(&["--stop", &stop]);
    assert!(stopped.len() < full.len(), "{stopped:?} vs {full:?}");
    assert_eq!(
        stopped.trim_end(),
        full[..full[after..].find(&stop).unwrap() + after].trim_end()
    );
}

/// In protocol mode the text is written at the end; a reader that goes away
/// before then still stops the decoding (standard output is polled).
#[test]
fn a_reader_gone_in_protocol_mode_stops_decoding() {
    use std::process::Stdio;
    let mut child = weft()
        .args(["run", "--quiet", "--protocol", "threadweaver", "--model"])
        .arg(model())
        .args(["--prompt", "Once upon a time", "--ignore-eos", "--stats"])
        .args(["--max-tokens", "1500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let n: usize = stderr
        .split("stdout closed after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(n < 1500, "decoded {n} tokens");
}
