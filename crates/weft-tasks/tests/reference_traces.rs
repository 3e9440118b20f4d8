//! The trace writers against the reference: the two real traces in
//! `shared/reference/countdown/` (copied to `tests/fixtures/`) and traces
//! written by Parallel-Reasoning/APR `src/data/search.py` itself for random
//! problems, seeds and parameters (`tests/fixtures/oracle_traces.jsonl`).
//! Every comparison is byte for byte.
//!
//! Set `WEFT_ORACLE_TRACES=/path/file.jsonl` to check a larger oracle file
//! made the same way.

use serde::Deserialize;
use weft_tasks::search::{apr::apr, sosp::sosp};
use weft_tasks::{AprParams, Heuristic, Problem, PyRandom, Rules, SospParams};

#[derive(Deserialize)]
struct OracleCase {
    kind: String,
    seed: u64,
    nums: Vec<u64>,
    target: u64,
    heuristic: Heuristic,
    beam_size: usize,
    #[serde(default)]
    sub_call_beam_size: usize,
    promising_threshold: f64,
    #[serde(default)]
    main_calls: Vec<String>,
    #[serde(default)]
    forks: Vec<Vec<String>>,
    #[serde(default)]
    text: String,
}

fn check_case(case: &OracleCase, line: usize) {
    let problem = Problem {
        nums: case.nums.clone(),
        target: case.target,
    };
    let mut rng = PyRandom::new(case.seed);
    match case.kind.as_str() {
        "apr" => {
            let params = AprParams {
                beam_size: case.beam_size,
                sub_call_beam_size: case.sub_call_beam_size,
                promising_threshold: case.promising_threshold,
                heuristic: case.heuristic,
                rules: Rules::default(),
            };
            let trace = apr(&problem, &params, &mut rng).unwrap();
            assert_eq!(trace.main_calls, case.main_calls, "line {line}: {problem}");
            let forks: Vec<Vec<String>> = trace
                .forks
                .iter()
                .map(|f| f.children.iter().map(|c| c.text.clone()).collect())
                .collect();
            assert_eq!(forks, case.forks, "line {line}: {problem}");
        }
        "sosp" => {
            let params = SospParams {
                beam_size: case.beam_size,
                promising_threshold: case.promising_threshold,
                heuristic: case.heuristic,
                ..SospParams::default()
            };
            let trace = sosp(&problem, &params, &mut rng).unwrap();
            assert_eq!(trace.text, case.text, "line {line}: {problem}");
        }
        other => panic!("unknown kind {other}"),
    }
}

fn check_file(text: &str) -> usize {
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let case: OracleCase = serde_json::from_str(line).unwrap();
        check_case(&case, i + 1);
        n += 1;
    }
    n
}

#[test]
fn oracle_traces_are_reproduced_byte_for_byte() {
    let n = check_file(include_str!("fixtures/oracle_traces.jsonl"));
    assert!(n >= 50, "{n}");
    if let Ok(path) = std::env::var("WEFT_ORACLE_TRACES") {
        let text = std::fs::read_to_string(&path).unwrap();
        let n = check_file(&text);
        eprintln!("checked {n} oracle traces from {path}");
    }
}

/// Splits the example file at its `===== name =====` headers.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix("===== ") {
            out.push((
                name.trim_end().trim_end_matches(" =====").to_string(),
                String::new(),
            ));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
        }
    }
    // The file separates sections with a blank line.
    for (_, body) in &mut out {
        if body.ends_with("\n\n") {
            body.pop();
        }
    }
    out
}

#[test]
fn the_real_apr_example_is_reproduced_byte_for_byte() {
    // Seed 37 was found by running the reference over seeds 0..3000 with the
    // parameters the trace implies (beam 2, sub-call beam 2, mult heuristic,
    // threshold 0.9); our port gives the same bytes for it.
    let example = sections(include_str!("fixtures/apr_trace_example.txt"));
    let problem: Problem = "17 62 25 7 -> 63".parse().unwrap();
    let params = AprParams {
        beam_size: 2,
        sub_call_beam_size: 2,
        promising_threshold: 0.9,
        heuristic: Heuristic::Mult,
        rules: Rules::default(),
    };
    let trace = apr(&problem, &params, &mut PyRandom::new(37)).unwrap();
    let mut ours = Vec::new();
    for (i, call) in trace.main_calls.iter().enumerate() {
        ours.push((format!("main_call {i}"), call.clone()));
    }
    for (f, fork) in trace.forks.iter().enumerate() {
        for (c, child) in fork.children.iter().enumerate() {
            ours.push((format!("sub_call {f}.{c}"), child.text.clone()));
        }
    }
    assert_eq!(ours, example);
}

#[test]
fn the_real_sosp_example_is_reproduced_byte_for_byte() {
    // Seed 33: beam 2, mult heuristic, promising threshold 0.5 (the
    // reference's default). The file adds one blank line at the end.
    let example = include_str!("fixtures/sosp_trace_example.txt");
    let problem: Problem = "92 2 58 6 -> 23".parse().unwrap();
    let params = SospParams {
        beam_size: 2,
        ..SospParams::default()
    };
    let trace = sosp(&problem, &params, &mut PyRandom::new(33)).unwrap();
    assert_eq!(format!("{}\n", trace.text), example);
}
