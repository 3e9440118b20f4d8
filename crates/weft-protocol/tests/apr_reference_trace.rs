//! The real APR trace `shared/reference/countdown/apr_trace_example.txt`
//! (copied to `tests/fixtures/`): from its first parent segment, weft builds
//! exactly the children's prompts and the joined parent text shown there,
//! through the engine-facing [`Protocol`] trait and a streaming [`Detector`].

use std::path::Path;
use weft_protocol::{
    apr::Apr, ChildEnd, ChildPrompt, Detector, ForkContext, Layout, Protocol, Scan,
};

/// `===== name =====` sections, each without the blank line that ends it.
fn calls(trace: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in trace.split_inclusive('\n') {
        let header = line
            .trim_end()
            .strip_prefix("===== ")
            .and_then(|l| l.strip_suffix(" ====="));
        match (header, out.last_mut()) {
            (Some(name), _) => out.push((name.to_string(), String::new())),
            (None, Some((_, body))) => body.push_str(line),
            (None, None) => {}
        }
    }
    for (_, body) in &mut out {
        if body.ends_with("\n\n") {
            body.pop();
        }
    }
    out
}

#[test]
fn first_fork_of_the_reference_trace() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apr_trace_example.txt");
    let trace = std::fs::read_to_string(path).unwrap();
    let calls = calls(&trace);
    let body = |name: &str| {
        calls
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_str())
            .unwrap_or_else(|| panic!("no section {name}"))
    };
    let parent = body("main_call 0");
    let after_join = body("main_call 1");
    let children = [body("sub_call 0.0"), body("sub_call 0.1")];

    // The engine streams the parent's text token by token (here: 5 bytes).
    let apr = Apr::default();
    let root_prompt_len =
        "Moving to Node #0\nCurrent State: 63:[17, 62, 25, 7], Operations: []".len();
    let mut detector = Detector::for_prompt(root_prompt_len);
    let ctx = ForkContext::default();
    let mut fed = root_prompt_len;
    let fork = loop {
        fed = (fed + 5).min(parent.len());
        match detector.scan(&apr, &parent[..fed], ctx) {
            Scan::Continue => assert!(fed < parent.len(), "no fork found"),
            Scan::Fork(fork) => break fork,
            other => panic!("{other:?}"),
        }
    };
    assert!(parent[..fork.segment_end].ends_with("<End Calling Sub Searches>"));
    assert_eq!(fork.children.len(), 2);

    let mut results = Vec::new();
    for (spec, child_trace) in fork.children.iter().zip(children) {
        let ChildPrompt::Fresh { prompt } = &spec.prompt else {
            panic!("APR children start fresh sequences");
        };
        // The sub-call's trace is its prompt, a newline, then what it generated.
        let generated = child_trace
            .strip_prefix(prompt.as_str())
            .and_then(|rest| rest.strip_prefix('\n'))
            .unwrap_or_else(|| panic!("child prompt {prompt:?} is not how {child_trace:?} starts"));
        results.push(apr.child_result(generated, ChildEnd::Eos));
    }
    assert!(results[0].text.is_some() && results[1].text.is_none());

    let join = apr.join(parent, &fork, &results, ctx).unwrap();
    let end = after_join.find("<End Sub Searches>\n").unwrap() + "<End Sub Searches>\n".len();
    assert_eq!(join.text, after_join[..end]);
    let Layout::Sequential { kept_prefix } = join.layout else {
        panic!("APR re-prefills");
    };
    assert_eq!(join.text[..kept_prefix], parent[..kept_prefix]);
    assert_eq!(&parent[kept_prefix..], "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,1,1\n<Start Sub Search 1 at level 1> Moving to Node #0,1,0\n<End Calling Sub Searches>\n");
}
