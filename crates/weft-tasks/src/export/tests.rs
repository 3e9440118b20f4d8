use super::*;
use crate::generator::{generate_splits, GeneratorConfig};
use crate::tokenizer::NumberMode;
use crate::verifier::verify;

fn problems(n: usize) -> Vec<Problem> {
    generate_splits(&GeneratorConfig::default(), 5, n, 0)
        .unwrap()
        .train
}

fn traces(kind: TraceKind, condition: Option<Condition>, n: usize) -> Vec<ProblemTraces> {
    let tok = TraceTokenizer::new(NumberMode::Whole);
    let config = TraceConfig {
        condition,
        ..TraceConfig::reference(kind)
    };
    problems(n)
        .iter()
        .enumerate()
        .map(|(i, p)| problem_traces(p, &format!("t-{i}"), 9, 0, i as u64, &config, &tok).unwrap())
        .collect()
}

#[test]
fn every_claimed_solution_verifies() {
    for kind in [TraceKind::Apr, TraceKind::Sosp] {
        let all = traces(kind, None, 300);
        let solved = all.iter().filter(|t| t.solved).count();
        assert!(solved > 100, "{kind:?}: only {solved} of 300 solved");
        for t in &all {
            for r in &t.records {
                let problem: Problem = r.problem.parse().unwrap();
                let verdict = verify(&problem, &r.text);
                if r.role == Role::Parent {
                    // A parent claims the goal exactly when it is solved.
                    assert_eq!(verdict.correct, r.solved, "{}: {verdict:?}", r.call);
                } else if r.solved {
                    // A child's path starts at its node; its Operations list
                    // carries the path from the root, so it verifies too.
                    assert!(verdict.correct, "{}: {verdict:?}", r.call);
                }
            }
        }
    }
}

#[test]
fn every_joined_parent_is_the_protocol_join_of_its_children() {
    let all = traces(TraceKind::Apr, None, 300);
    let mut joins = 0;
    for t in &all {
        let parents: Vec<&Record> = t
            .records
            .iter()
            .filter(|r| r.role == Role::Parent)
            .collect();
        for (k, pair) in parents.windows(2).enumerate() {
            let children: Vec<&Record> = t
                .records
                .iter()
                .filter(|r| r.call.starts_with(&format!("sub_call {k}.")))
                .collect();
            let results: Vec<Option<&str>> = children
                .iter()
                .map(|c| protocol::child_result(&c.text))
                .collect();
            let joined = protocol::join(&pair[0].text, &results).unwrap();
            assert!(pair[1].text.starts_with(&joined), "{}", pair[1].id);
            assert_eq!(pair[1].prompt_chars, joined.len());
            // The engine-built child prompts start the children's texts.
            let specs = protocol::parse_fork(&pair[0].text).unwrap();
            assert_eq!(specs.len(), children.len());
            for (spec, child) in specs.iter().zip(&children) {
                assert!(child.text.starts_with(&format!("{}\n", spec.prompt(None))));
            }
            joins += 1;
        }
    }
    assert!(joins > 100, "{joins}");
}

#[test]
fn prompts_and_prefixes() {
    for t in traces(TraceKind::Apr, Some(Condition::SubCalls), 50) {
        let p = &t.records[0];
        let prompt = protocol::root_prompt(
            p.target,
            &p.nums,
            Some(Conditioning::SubCallBudget(t.children as u64)),
        );
        assert!(p.text.starts_with(&format!("{prompt}\n")));
        assert_eq!(p.prompt_chars, prompt.len());
        for r in t.records.iter().filter(|r| r.role == Role::Child) {
            assert!(
                r.text.starts_with("Moving to Node #0,"),
                "children carry no budget"
            );
        }
    }
    let tok = TraceTokenizer::new(NumberMode::Whole);
    for t in traces(TraceKind::Sosp, Some(Condition::Tokens), 50) {
        let r = &t.records[0];
        let (budget, rest) = r
            .text
            .strip_prefix("Token Budget: ")
            .unwrap()
            .split_once(' ')
            .unwrap();
        let budget: usize = budget.parse().unwrap();
        assert_eq!(budget % 512, 0);
        let tokens = tok.count(rest) + 2;
        assert!(
            tokens <= budget && budget < tokens + 512,
            "{tokens} {budget}"
        );
        assert!(rest.starts_with("Current State: "));
    }
}

#[test]
fn output_does_not_depend_on_threads_and_summarises() {
    let ps = problems(100);
    let tok = TraceTokenizer::new(NumberMode::Whole);
    let config = TraceConfig::reference(TraceKind::Apr);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = Vec::new();
            let mut summary = SummaryBuilder::default();
            write_split(
                &ps,
                "train",
                0,
                3,
                &config,
                &tok,
                &mut out,
                &mut summary,
                &|_| {},
            )
            .unwrap();
            (out, summary.finish())
        })
    };
    let (one, summary) = run(1);
    let (two, _) = run(2);
    assert_eq!(one, two);
    let text = String::from_utf8(one).unwrap();
    let lines: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summary.problems, 100);
    assert_eq!(
        summary.parent_sequences + summary.child_sequences,
        lines.len()
    );
    assert!(summary.solved_share > 0.3 && summary.solved_share <= 1.0);
    let children = summary.children_per_problem.unwrap();
    assert!(children.mean > 0.5, "{children}");
    let shown = summary.to_string();
    assert!(
        shown.contains("tokens per parent sequence: mean"),
        "{shown}"
    );
}

#[test]
fn percentiles_are_nearest_rank() {
    let p = Percentiles::of((1..=100).collect()).unwrap();
    assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
    assert_eq!(p.mean, 50.5);
    assert!(Percentiles::of(vec![]).is_none());
    assert_eq!(Percentiles::of(vec![7]).unwrap().p50, 7);
}

#[test]
fn bad_trace_settings_are_rejected() {
    let mut c = TraceConfig::reference(TraceKind::Apr);
    c.condition = Some(Condition::Tokens);
    assert!(c.validate().is_err());
    let mut c = TraceConfig::reference(TraceKind::Sosp);
    c.min_beam = 0;
    assert!(c.validate().is_err());
    c.min_beam = 6;
    assert!(c.validate().is_err());
}

/// Every line the symbolic APR search writes fits the trace grammar that
/// `weft train rl` holds sampled text to (`apr::malformed_lines`), with and
/// without the `Sub Call Budget` prefix, for parents, joined parents and
/// children alike: the grammar is the search's, not a guess at it.
#[test]
fn symbolic_traces_have_no_malformed_lines() {
    for (kind, condition) in [
        (TraceKind::Apr, None),
        (TraceKind::Apr, Some(Condition::SubCalls)),
    ] {
        let mut lines = 0;
        for t in traces(kind, condition, 150) {
            for r in &t.records {
                let text = format!("{}\n", r.text.trim_end_matches('\n'));
                lines += text.lines().count();
                let bad: Vec<&str> = weft_protocol::apr::malformed_lines(&text)
                    .into_iter()
                    .map(|s| &text[s])
                    .collect();
                assert!(
                    bad.is_empty(),
                    "{kind:?} {condition:?} {}: {bad:?}\n{text}",
                    r.call
                );
            }
        }
        assert!(lines > 1000, "{kind:?} {condition:?}: {lines} lines");
    }
}

/// The symbolic search explores each operation once per node, so in its
/// traces no search line is invalid, and none repeats the search by
/// writing a line it wrote before: the path written out again after `Goal
/// Reached` (a child's answer, the parent's final answer after the join)
/// is not search. (It may still reach the same numbers twice, by `19*1`
/// and `19/1`; those lines differ.)
#[test]
fn symbolic_traces_have_no_repeated_or_invalid_search_lines() {
    // Where a state holds equal numbers, one line may rightly repeat
    // another at its node: `59-28`, for each of two 28s.
    let equal_numbers = |text: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix("Current State: "))
            .filter_map(|s| weft_protocol::apr::parse_target_nums(s.split(", Operations").next()?))
            .any(|(_, mut n)| {
                n.sort_unstable();
                n.windows(2).any(|w| w[0] == w[1])
            })
    };
    let mut checked = 0;
    for condition in [None, Some(Condition::SubCalls)] {
        for t in traces(TraceKind::Apr, condition, 150) {
            for r in t.records.iter().filter(|r| !equal_numbers(&r.text)) {
                let lines = weft_protocol::apr::search_lines_checked(
                    &r.text,
                    &crate::verifier::legal_exploration,
                );
                checked += lines.len();
                let bad: Vec<&str> = lines
                    .iter()
                    .filter(|l| {
                        l.invalid
                            || (l.repeated
                                && r.text[..l.span.start].contains(&r.text[l.span.clone()]))
                    })
                    .map(|l| &r.text[l.span.clone()])
                    .collect();
                assert!(
                    bad.is_empty(),
                    "{condition:?} {}: {bad:?}\n{}",
                    r.call,
                    r.text
                );
            }
        }
    }
    assert!(checked > 1000, "{checked} lines");
}
