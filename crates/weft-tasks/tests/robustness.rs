//! Bad input gives errors, never panics: arbitrary text and mutated real
//! traces through every parser (problem strings, verifier, APR protocol,
//! tokenizer).

use proptest::prelude::*;
use weft_protocol::apr;
use weft_tasks::tokenizer::{NumberMode, TraceTokenizer};
use weft_tasks::{arithmetic_stats, verify, Problem};

const EXAMPLE: &str = include_str!("fixtures/apr_trace_example.txt");

fn exercise(text: &str) {
    let problem: Problem = "17 62 25 7 -> 63".parse().unwrap();
    let verdict = verify(&problem, text);
    assert_eq!(verdict.correct, verdict.failure.is_none());
    let _ = arithmetic_stats(text);
    let _ = text.parse::<Problem>();
    let _ = apr::parse_fork(text);
    let _ = apr::child_result(text);
    let _ = apr::join(text, &[None, Some("x")]);
    let tok = TraceTokenizer::new(NumberMode::Whole);
    let ids = tok.encode(text);
    assert_eq!(ids.len(), tok.count(text));
}

/// Pieces a trace is made of, so random strings look like broken traces.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Goal Reached".to_string()),
        Just(" equal: Goal Reached\n".to_string()),
        Just("Current State: ".to_string()),
        Just(", Operations: ['".to_string()),
        Just("Exploring Operation: ".to_string()),
        Just("<Calling Sub Searches>\n".to_string()),
        Just("<Start Sub Search 0 at level 1> Moving to Node #0,1\n".to_string()),
        Just("<End Calling Sub Searches>".to_string()),
        Just("Generated Node #0,1: ".to_string()),
        Just("Moving to Node #".to_string()),
        Just("<answer>".to_string()),
        "[0-9]{1,25}",
        "[-+*/=(),:\\[\\]' \n#]{1,4}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(parts in prop::collection::vec(piece(), 0..24)) {
        exercise(&parts.concat());
    }

    #[test]
    fn truncated_and_spliced_traces_never_panic(cut in 0usize..2888, len in 0usize..400, junk in piece()) {
        let mut cut = cut.min(EXAMPLE.len());
        while !EXAMPLE.is_char_boundary(cut) { cut -= 1; }
        let end = (cut + len).min(EXAMPLE.len());
        exercise(&EXAMPLE[..cut]);
        exercise(&format!("{}{}{}", &EXAMPLE[..cut], junk, &EXAMPLE[end..]));
    }
}
