//! KV-merge joins in depth and in rounds: a test protocol that forks on a
//! comma (which SmolLM2 writes often) and merges its children's KV, so
//! children fork again inside a merged layout and parents merge more than
//! once. Greedy decoding makes the run repeatable; the checks are that KV
//! merges nest without leaking a block, and that preemption under a small
//! budget leaves every thread's text unchanged.

use std::sync::Arc;

use weft_engine::{Engine, EngineConfig, RequestSpec, Response};
use weft_model::{LoadOptions, Model, Tokenizer};
use weft_protocol::{
    AfterJoin, ChildEnd, ChildPrompt, ChildResult, ChildSpec, ChildStop, Fork, ForkContext, Join,
    JoinMode, Layout, Protocol, ProtocolError, Rules, Scan,
};

/// Forks two children at every `,`; a child stops at `.`; the join merges
/// KV and appends ` so`.
#[derive(Debug)]
struct CommaFork;

impl Protocol for CommaFork {
    fn name(&self) -> &'static str {
        "comma-fork"
    }
    fn triggers(&self) -> &'static [&'static str] {
        &[","]
    }
    fn rules(&self) -> Rules {
        Rules {
            join_mode: JoinMode::KvMerge,
            max_depth: 2,
            fixed_children: Some(2),
            max_children: Some(2),
            max_fork_rounds: Some(4),
            child_temperature: None,
            child_repetition_penalty: None,
            fork_budget_margin: None,
        }
    }
    fn on_trigger(
        &self,
        _text: &str,
        _trigger: &'static str,
        end: usize,
        ctx: ForkContext,
    ) -> Scan {
        let seq = weft_protocol::Action::Sequential;
        if let Some(r) = self.rules().check(ctx, 2, end, seq.clone(), seq) {
            return Scan::Refuse(r);
        }
        let children = [" first", " second"]
            .iter()
            .enumerate()
            .map(|(index, s)| ChildSpec {
                index,
                label: index.to_string(),
                prompt: ChildPrompt::Continue {
                    suffix: s.to_string(),
                },
            })
            .collect();
        Scan::Fork(Fork {
            segment_end: end,
            children,
        })
    }
    fn child_stop(&self) -> ChildStop {
        ChildStop {
            stop: Some("."),
            keep_after: 0,
        }
    }
    fn child_result(&self, generated: &str, end: ChildEnd) -> ChildResult {
        ChildResult {
            text: Some(generated.to_string()),
            close: if generated.ends_with('.') { "" } else { "." }.to_string(),
            end,
        }
    }
    fn join(
        &self,
        parent: &str,
        fork: &Fork,
        children: &[ChildResult],
        _ctx: ForkContext,
    ) -> Result<Join, ProtocolError> {
        let mut text = parent
            .get(..fork.segment_end)
            .ok_or(ProtocolError::SegmentOutOfRange {
                segment_end: fork.segment_end,
                len: parent.len(),
            })?
            .to_string();
        for (spec, child) in fork.children.iter().zip(children) {
            if let ChildPrompt::Continue { suffix } = &spec.prompt {
                text.push_str(suffix);
            }
            text.push_str(child.text.as_deref().unwrap_or(""));
            text.push_str(&child.close);
        }
        text.push_str(" so");
        Ok(Join {
            text,
            layout: Layout::Merged {
                fork_at: fork.segment_end,
                append: " so".into(),
                lead: String::new(),
            },
            then: AfterJoin::Continue,
        })
    }
}

fn run(model: &Model, tok: &Tokenizer, cfg: EngineConfig) -> (Vec<Response>, usize, usize) {
    let mut engine = Engine::new(model, tok, cfg).unwrap();
    let before = engine.kv_blocks_available();
    let requests = ["List of fruits: apple", "Colors of the rainbow: red"]
        .iter()
        .map(|p| RequestSpec::text(p.to_string()).with_protocol(Arc::new(CommaFork)))
        .collect();
    let out = engine.run(requests, &mut |_| {}).unwrap();
    (out, before, engine.kv_blocks_available())
}

#[test]
fn merges_nest_and_repeat_without_leaks_and_survive_preemption() {
    let home = std::env::var_os("HOME").expect("HOME");
    let path =
        std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = Model::load(
        &path,
        &LoadOptions {
            batch_invariant: true,
            ..Default::default()
        },
    )
    .unwrap();
    let tok = Tokenizer::load(&path).unwrap();
    let base = EngineConfig {
        max_tokens_per_thread: 12,
        block_size: 4,
        ..Default::default()
    };
    let (free, before, after) = run(&model, &tok, base.clone());
    assert_eq!(before, after, "blocks leaked");
    for r in &free {
        assert!(r.stats.kv_merge_joins >= 3, "{:?}", r.stats);
        assert_eq!(r.stats.kv_merge_joins, r.stats.forks, "{:?}", r.stats);
        // A child forked (it merged inside its parent's merged layout) ...
        assert!(
            r.threads.iter().any(|t| t.parent.is_some_and(|p| p != 0)),
            "no child forked"
        );
        // ... and some thread merged twice (its second fork's children
        // inherited the first merge's segments).
        let twice = r
            .threads
            .iter()
            .any(|t| r.threads.iter().filter(|c| c.parent == Some(t.id)).count() > 2);
        assert!(twice, "no thread forked twice");
    }

    // 6 MiB: 68 blocks of 4 tokens; the two requests' pinned children do
    // not all fit, so newer threads are preempted and recomputed over their
    // segments, yet nothing is cut short.
    let tight = EngineConfig {
        kv_budget_mib: 6,
        ..base.clone()
    };
    let (constrained, before, after) = run(&model, &tok, tight);
    assert_eq!(before, after, "blocks leaked");
    let preemptions: usize = constrained.iter().map(|r| r.stats.preemptions).sum();
    assert!(preemptions > 0, "no preemption happened");
    for (a, b) in free.iter().zip(&constrained) {
        assert!(
            b.stats.refused_forks.iter().all(|f| !f.contains("stopped")),
            "{:?}",
            b.stats
        );
        assert_eq!(a.stats.kv_merge_joins, b.stats.kv_merge_joins);
        assert_eq!(a.threads.len(), b.threads.len());
        for (x, y) in a.threads.iter().zip(&b.threads) {
            assert_eq!(x.text, y.text, "thread {} differs after preemption", x.id);
        }
    }

    // Far too little KV: threads are cut short, joins fall back or merge
    // what there is, and every block still comes back.
    for mib in [1, 2] {
        let starved = EngineConfig {
            kv_budget_mib: mib,
            ..base.clone()
        };
        let (_, before, after) = run(&model, &tok, starved);
        assert_eq!(before, after, "blocks leaked at {mib} MiB");
    }
}
