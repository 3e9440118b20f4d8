//! The 70 chat templates published with real models that llama.cpp keeps in
//! `models/templates/`, rendered by weft, must equal what `transformers`
//! renders: `tests/golden/chat_templates.json`, written by
//! `scripts/chat_template_references.py` (Python jinja2 configured as
//! transformers configures it; `strftime_now` on 2024-07-26, bos `<s>`, eos
//! `</s>`, `tools` and `documents` none). Each template is rendered for the
//! conversations recorded in the golden file, with `add_generation_prompt`
//! on and off.
//!
//! The templates come from the llama-cpp-python 0.3.36 source package on
//! PyPI, fetched by `scripts/fetch-peer-suites.sh` into
//! `~/.cache/weft/peer/llama.cpp` (or `$WEFT_PEER_DIR`); nothing of theirs
//! is committed, and their sha256 is checked against the golden file so a
//! different copy cannot pass silently.
//!
//! Where the reference raises, weft must fail too; where the reference's
//! error is the template's own `raise_exception(message)`, weft's error must
//! contain that message. Other reference errors (jinja2's own, like
//! "'NoneType' object is not iterable") are worded by the engine, so only
//! the failure itself is compared.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use weft_model::chat::{render, Message};

const GOLDEN: &str = include_str!("golden/chat_templates.json");
const BOS: &str = "<s>";
const EOS: &str = "</s>";

/// Cases weft cannot match with minijinja, with the reason: (template file,
/// case key, reason). Each must still differ, so the list cannot go stale.
const KNOWN_DIFFERENT: &[(&str, &str, &str)] = &[];

fn peer_dir() -> PathBuf {
    if let Ok(d) = std::env::var("WEFT_PEER_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    let cache = std::env::var("WEFT_CACHE").unwrap_or_else(|_| format!("{home}/.cache/weft"));
    PathBuf::from(cache).join("peer/llama.cpp")
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Identical,
    Different,
    WeftOnlyError,
    ReferenceOnlyError,
    BothError,
}

#[test]
fn chat_templates_render_as_transformers_does() {
    let golden: Value = serde_json::from_str(GOLDEN).expect("golden JSON parses");
    let dir = peer_dir().join("models/templates");
    assert!(
        dir.is_dir(),
        "{} is missing: run `bash scripts/fetch-peer-suites.sh` (scripts/test.sh does)",
        dir.display()
    );
    let conversations: BTreeMap<String, Vec<Message>> = golden["conversations"]
        .as_object()
        .expect("conversations")
        .iter()
        .map(|(name, turns)| {
            let messages = turns
                .as_array()
                .expect("a conversation is a list")
                .iter()
                .map(|m| {
                    Message::new(
                        m["role"].as_str().expect("role"),
                        m["content"].as_str().expect("content"),
                    )
                })
                .collect();
            (name.clone(), messages)
        })
        .collect();
    let templates = golden["templates"].as_object().expect("templates");
    assert_eq!(
        templates.len(),
        70,
        "the golden file covers the 70 templates"
    );

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut known_seen = Vec::new();
    for (file, entry) in templates {
        let bytes = std::fs::read(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
        assert_eq!(
            sha256_hex(&bytes),
            entry["sha256"].as_str().expect("sha256"),
            "{file} is not the template the references were rendered from"
        );
        let source = String::from_utf8(bytes).expect("templates are UTF-8");
        for (case, expected) in entry["cases"].as_object().expect("cases") {
            let (conversation, flag) = case.split_once('/').expect("case key");
            let add_generation_prompt = match flag {
                "add_generation_prompt=true" => true,
                "add_generation_prompt=false" => false,
                other => panic!("{file} {case}: unknown flag {other}"),
            };
            let messages = &conversations[conversation];
            let got = render(&source, messages, add_generation_prompt, BOS, EOS);
            let (outcome, detail) = match (expected, &got) {
                (Value::String(want), Ok(got)) if want == got => {
                    (Outcome::Identical, String::new())
                }
                (Value::String(want), Ok(got)) => (
                    Outcome::Different,
                    format!("first difference:\n{}", first_difference(want, got)),
                ),
                (Value::String(_), Err(e)) => (Outcome::WeftOnlyError, e.to_string()),
                (_, Ok(got)) => (
                    Outcome::ReferenceOnlyError,
                    format!("reference raised {expected}, weft rendered {got:?}"),
                ),
                (_, Err(e)) => {
                    let message = expected["error"].as_str().expect("error message");
                    let from_template = expected["type"] == "TemplateError";
                    if from_template && !e.to_string().contains(message) {
                        (
                            Outcome::Different,
                            format!("reference raised {message:?}, weft: {e}"),
                        )
                    } else {
                        (Outcome::BothError, String::new())
                    }
                }
            };
            *counts.entry(format!("{outcome:?}")).or_default() += 1;
            let known = KNOWN_DIFFERENT
                .iter()
                .any(|(f, c, _)| *f == file && *c == case);
            match (
                outcome == Outcome::Identical || outcome == Outcome::BothError,
                known,
            ) {
                (true, true) => failures.push(format!(
                    "{file} {case} is listed in KNOWN_DIFFERENT but now matches: remove it"
                )),
                (false, false) => failures.push(format!("{file} {case}: {outcome:?}: {detail}")),
                (false, true) => known_seen.push(format!("{file} {case}")),
                (true, false) => {}
            }
        }
    }
    println!("chat templates: {counts:?}");
    println!("known differences: {known_seen:?}");
    assert!(
        failures.is_empty(),
        "{} of the renderings differ from transformers':\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Where `want` and `got` part, with some context, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let at = want
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(want.len().min(got.len()));
    let at = (0..=at)
        .rev()
        .find(|&i| want.is_char_boundary(i))
        .unwrap_or(0);
    let from = (0..=at.saturating_sub(60))
        .rev()
        .find(|&i| want.is_char_boundary(i) && got.is_char_boundary(i))
        .unwrap_or(0);
    let end = |s: &str| {
        (at + 80..=s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len())
            .min(s.len())
    };
    format!(
        "  transformers: {:?}\n  weft:         {:?}",
        &want[from..end(want).max(from)],
        &got[from.min(got.len())..end(got).max(from.min(got.len()))]
    )
}

/// SHA-256 of `data` as lowercase hex (checks that the fetched templates
/// are the ones the golden file was rendered from).
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
