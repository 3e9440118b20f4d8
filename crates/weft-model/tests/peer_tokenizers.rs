//! llama.cpp's own tokenizer vectors (`test-tokenizer-0`): for every
//! `models/ggml-vocab-*.gguf` with `.inp`/`.out` files in llama.cpp's tree,
//! weft's tokenizer built from the GGUF must give the ids llama.cpp expects,
//! with no special tokens added and special-token text read as plain text
//! (`common_tokenize(ctx, text, add_special = false, parse_special = false)`).
//! A vocabulary weft does not support must be refused with an error naming
//! its tokenizer model.
//!
//! The files come from the llama-cpp-python 0.3.36 source package on PyPI,
//! fetched by `scripts/fetch-peer-suites.sh` into
//! `~/.cache/weft/peer/llama.cpp` (or `$WEFT_PEER_DIR`); nothing is committed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weft_model::Tokenizer;

fn peer_dir() -> PathBuf {
    if let Ok(d) = std::env::var("WEFT_PEER_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    let cache = std::env::var("WEFT_CACHE").unwrap_or_else(|_| format!("{home}/.cache/weft"));
    PathBuf::from(cache).join("peer/llama.cpp")
}

/// The test cases of one vocabulary, as `read_tests` in
/// `tests/test-tokenizer-0.cpp` reads them: inputs separated by
/// `\n__ggml_vocab_test__\n`, one line of space-separated ids per input
/// (duplicate inputs collapse, as in its `std::map`).
fn read_cases(inp: &str, out: &str) -> BTreeMap<String, Vec<u32>> {
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(SEP) {
            Some(n) => {
                inputs.push(inp[pos..pos + n].to_string());
                pos += n + SEP.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<&str> = out.lines().collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "inputs and outputs differ in count"
    );
    inputs
        .into_iter()
        .zip(outputs)
        .map(|(i, o)| {
            let ids = o
                .split_whitespace()
                .map(|t| t.parse().expect("an id"))
                .collect();
            (i, ids)
        })
        .collect()
}

/// Vocabularies weft refuses by name, with the tokenizer model the error
/// must name: BERT's WordPiece, Gemma 4's BPE over SentencePiece-escaped
/// whitespace, and T5's Unigram are not implemented.
const REFUSED: &[(&str, &str)] = &[
    ("ggml-vocab-bert-bge.gguf", "`bert`"),
    ("ggml-vocab-gemma-4.gguf", "`gemma4`"),
    ("ggml-vocab-nomic-bert-moe.gguf", "`t5`"),
];

#[test]
fn llama_cpp_tokenizer_vectors() {
    let models = peer_dir().join("models");
    assert!(
        models.is_dir(),
        "{} is missing: run scripts/fetch-peer-suites.sh",
        models.display()
    );
    let mut vocabs: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "out"))
        .collect();
    vocabs.sort();
    assert!(
        vocabs.len() >= 15,
        "expected llama.cpp's vector sets in {}",
        models.display()
    );
    let mut failures = Vec::new();
    for out in vocabs {
        let gguf = out.with_extension("");
        let name = gguf.file_name().unwrap().to_string_lossy().to_string();
        let inp = std::fs::read_to_string(gguf.with_extension("gguf.inp")).unwrap();
        let cases = read_cases(&inp, &std::fs::read_to_string(&out).unwrap());
        let refused = REFUSED.iter().find(|(v, _)| name == *v);
        let tok = match (Tokenizer::load(&gguf), refused) {
            (Ok(t), None) => t,
            (Err(e), Some((_, model))) => {
                let msg = e.to_string();
                assert!(msg.contains(model) && msg.contains(&name), "{name}: {msg}");
                println!("{name}: refused: {msg}");
                continue;
            }
            (Ok(_), Some(_)) => {
                failures.push(format!("{name}: loads, but is listed as refused"));
                continue;
            }
            (Err(e), None) => {
                failures.push(format!("{name}: does not load: {e}"));
                continue;
            }
        };
        let mut right = 0;
        for (text, want) in &cases {
            let got = tok.encode_literal(text).unwrap();
            if &got == want {
                right += 1;
            } else {
                failures.push(format!(
                    "{name}: {text:?}\n   want {want:?}\n    got {got:?}"
                ));
            }
        }
        println!("{name}: {right} of {} right", cases.len());
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The vocabularies without vector files (aquila, baichuan, gpt-neox, ...)
/// load, or are refused by their tokenizer model's name.
#[test]
fn every_llama_cpp_vocab_loads_or_is_refused_by_name() {
    let models = peer_dir().join("models");
    assert!(
        models.is_dir(),
        "{} is missing: run scripts/fetch-peer-suites.sh",
        models.display()
    );
    let mut n = 0;
    for e in std::fs::read_dir(&models).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("ggml-vocab-") && name.ends_with(".gguf")) {
            continue;
        }
        n += 1;
        let refused = REFUSED.iter().find(|(v, _)| name == *v);
        match (Tokenizer::load(&path), refused) {
            (Ok(t), None) => {
                // Something encodes and decodes back.
                let ids = t.encode_literal("Hello world").unwrap();
                assert!(!ids.is_empty(), "{name}");
                assert!(t.decode(&ids).unwrap().contains("world"), "{name}");
            }
            (Err(e), Some((_, model))) => {
                let msg = e.to_string();
                assert!(msg.contains(model) && msg.contains(&name), "{name}: {msg}");
            }
            (Ok(_), Some(_)) => panic!("{name} loads, but is listed as refused"),
            (Err(e), None) => panic!("{name} does not load: {e}"),
        }
    }
    assert!(n >= 19, "found {n} vocab files in {}", models.display());
}
