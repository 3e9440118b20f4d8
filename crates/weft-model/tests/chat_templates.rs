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

/// SHA-256 (FIPS 180-4) of `data` as lowercase hex; the workspace has no
/// hashing crate, and this checks only that the fetched templates are the
/// ones the golden file was rendered from.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_matches_the_standard_vectors() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Two blocks (56 bytes: the padding spills over).
    assert_eq!(
        sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}
