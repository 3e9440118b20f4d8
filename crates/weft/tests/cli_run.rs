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
