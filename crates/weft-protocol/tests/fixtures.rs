//! Data-driven protocol tests: each `tests/fixtures/*.fixture` gives a
//! protocol, a parent text, and what weft must build from it (children's
//! prompts, results, the joined text, or the refusal and its outcome).
//!
//! Format: `=== section` header lines; a section's content is the lines up
//! to the next header, joined by `\n` (end a section with an empty line to
//! give its content a trailing newline). Sections:
//! `protocol`, `ctx` (`depth rounds [own_start [position max_new_tokens]]`:
//! see `ForkContext`), `parent`, `expect` (`fork`,
//! `continue`, `refuse <reason> <action>`), `segment`, `labels`,
//! `child N prompt`, `child N output`, `child N end` (`stop|eos|length`),
//! `result N` (`<none>` for no result), `joined`, `layout`
//! (`sequential|merged`), `then` (`continue|finish|finish-at <stop>`),
//! `after` (the text after a rewrite or finish).

use std::collections::BTreeMap;
use std::path::Path;
use weft_protocol::{
    by_name, Action, AfterJoin, ChildEnd, Detector, ForkContext, Layout, Protocol, RefuseReason,
    Scan,
};

fn sections(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut name: Option<String> = None;
    let mut body: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if let Some(header) = line.strip_prefix("=== ") {
            if let Some(n) = name.take() {
                out.insert(n, body.join("\n"));
            }
            name = Some(header.trim().to_string());
            body.clear();
        } else {
            body.push(line);
        }
    }
    if let Some(n) = name {
        // The file's own final newline is not part of the last section.
        let mut content = body.join("\n");
        if content.ends_with('\n') {
            content.pop();
        }
        out.insert(n, content);
    }
    out
}

/// Feeds `text` to a fresh detector in chunks of `step` bytes (on char
/// boundaries), as the engine does token by token, until something happens.
fn stream(protocol: &dyn Protocol, text: &str, step: usize, ctx: ForkContext) -> (Scan, usize) {
    let mut detector = Detector::for_prompt(0);
    let mut fed = 0;
    loop {
        fed = (fed + step).min(text.len());
        while !text.is_char_boundary(fed) {
            fed += 1;
        }
        let scan = detector.scan(protocol, &text[..fed], ctx);
        let sequential = matches!(&scan, Scan::Refuse(r) if r.action == Action::Sequential);
        if !matches!(scan, Scan::Continue) && !sequential || fed == text.len() {
            return (scan, fed);
        }
    }
}

fn end_of(s: &str) -> ChildEnd {
    match s.trim() {
        "stop" => ChildEnd::Stop,
        "eos" => ChildEnd::Eos,
        "length" => ChildEnd::Length,
        other => panic!("unknown child end {other:?}"),
    }
}

fn check_fixture(path: &Path) {
    let name = path.display();
    let raw = std::fs::read_to_string(path).unwrap();
    let s = sections(&raw);
    let get = |k: &str| {
        s.get(k)
            .unwrap_or_else(|| panic!("{name}: no `{k}` section"))
    };
    let protocol = by_name(get("protocol").trim()).unwrap();
    let ctx = s.get("ctx").map_or(ForkContext::default(), |c| {
        let n: Vec<usize> = c.split_whitespace().map(|x| x.parse().unwrap()).collect();
        ForkContext {
            depth: n[0] as u32,
            rounds: n[1] as u32,
            own_start: n.get(2).copied().unwrap_or(0),
            position: n.get(3).copied().unwrap_or(0),
            max_new_tokens: n.get(4).copied(),
        }
    });
    let parent = get("parent");
    // One scan of the whole text and token-sized streaming agree.
    let (scan, fed) = stream(protocol.as_ref(), parent, parent.len().max(1), ctx);
    for step in [1, 3, 7] {
        let (streamed, _) = stream(protocol.as_ref(), parent, step, ctx);
        assert_eq!(streamed, scan, "{name}: streaming in steps of {step}");
    }
    let expect: Vec<&str> = get("expect").split_whitespace().collect();
    match (expect.as_slice(), scan) {
        (["continue"], Scan::Continue) => {}
        (["refuse", reason, action], Scan::Refuse(refusal)) => {
            let got_reason = match refusal.reason {
                RefuseReason::Malformed(_) => "malformed",
                RefuseReason::DepthLimit { .. } => "depth",
                RefuseReason::RoundLimit { .. } => "rounds",
                RefuseReason::TooManyChildren { .. } => "children",
                RefuseReason::HallucinatedJoin => "hallucinated-join",
                RefuseReason::TokenBudget { .. } => "budget",
            };
            assert_eq!(got_reason, *reason, "{name}: {:?}", refusal.reason);
            let seen = &parent[..fed];
            let (got_action, after) = match &refusal.action {
                Action::Sequential => ("sequential", seen.to_string()),
                Action::Rewrite {
                    truncate_to,
                    append,
                } => ("rewrite", format!("{}{append}", &seen[..*truncate_to])),
                Action::Finish { truncate_to } => ("finish", seen[..*truncate_to].to_string()),
            };
            assert_eq!(got_action, *action, "{name}");
            if let Some(expected) = s.get("after") {
                assert_eq!(&after, expected, "{name}: text after the refusal");
            }
        }
        (["fork"], Scan::Fork(fork)) => {
            check_fork(&name.to_string(), &s, protocol.as_ref(), parent, fork, ctx)
        }
        (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
    }
}

fn check_fork(
    name: &str,
    s: &BTreeMap<String, String>,
    protocol: &dyn Protocol,
    parent: &str,
    fork: weft_protocol::Fork,
    ctx: ForkContext,
) {
    if let Some(segment) = s.get("segment") {
        assert_eq!(&parent[..fork.segment_end], segment, "{name}: segment");
    }
    if let Some(labels) = s.get("labels") {
        let got: Vec<&str> = fork.children.iter().map(|c| c.label.as_str()).collect();
        let want: Vec<&str> = labels.split_whitespace().collect();
        assert_eq!(got, want, "{name}: labels");
    }
    let mut results = Vec::new();
    for child in &fork.children {
        let i = child.index;
        if let Some(prompt) = s.get(&format!("child {i} prompt")) {
            assert_eq!(
                &child.prompt.full_text(parent, fork.segment_end),
                prompt,
                "{name}: child {i} prompt"
            );
        }
        let output = s
            .get(&format!("child {i} output"))
            .map_or("", String::as_str);
        let end = s
            .get(&format!("child {i} end"))
            .map_or(ChildEnd::Stop, |e| end_of(e));
        let result = protocol.child_result(output, end);
        if let Some(expected) = s.get(&format!("result {i}")) {
            let got = result.text.as_deref().unwrap_or("<none>");
            assert_eq!(got, expected, "{name}: result {i}");
        }
        results.push(result);
    }
    let Some(joined) = s.get("joined") else {
        return;
    };
    // At a join the engine's count includes the fork being joined.
    let ctx = ForkContext {
        rounds: ctx.rounds + 1,
        ..ctx
    };
    let join = protocol.join(parent, &fork, &results, ctx).unwrap();
    assert_eq!(&join.text, joined, "{name}: joined text");
    match (&join.layout, s.get("layout").map(|l| l.trim())) {
        (Layout::Sequential { kept_prefix }, Some("sequential") | None) => {
            assert_eq!(join.text[..*kept_prefix], parent[..*kept_prefix], "{name}");
        }
        (
            Layout::Merged {
                fork_at, append, ..
            },
            Some("merged"),
        ) => {
            assert_eq!(*fork_at, fork.segment_end, "{name}");
            assert!(join.text.ends_with(append.as_str()), "{name}");
        }
        (layout, want) => panic!("{name}: layout {layout:?}, expected {want:?}"),
    }
    let then = match join.then {
        AfterJoin::Continue => "continue".to_string(),
        AfterJoin::Finish => "finish".to_string(),
        AfterJoin::FinishAt(stop) => format!("finish-at {stop}"),
    };
    assert_eq!(
        then,
        s.get("then").map_or("continue", |t| t.trim()),
        "{name}: then"
    );
    // A join with the wrong number of results is an error, not a panic.
    assert!(
        protocol.join(parent, &fork, &results[1..], ctx).is_err(),
        "{name}"
    );
}

#[test]
fn every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fixture"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 15, "fixtures missing: {paths:?}");
    for path in &paths {
        check_fixture(path);
    }
}
