//! Random interleavings of `add`, `step` and `abort` on a tiny random model
//! (SmolLM2's tokenizer, so prompts can hold every protocol's fork
//! triggers), across all five protocols and plain requests. After every
//! operation the KV pool's invariants hold; every request ends exactly
//! once, with the right reason; nothing panics; the pool returns to idle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use weft_engine::{Engine, EngineConfig, Event, FinishReason, RequestId, RequestSpec, Sampling};
use weft_model::{LoadOptions, Model, Tokenizer};

mod common;
use common::{unguarded, write_tiny};

fn tiny() -> &'static (Model, Tokenizer) {
    static TINY: OnceLock<(Model, Tokenizer)> = OnceLock::new();
    TINY.get_or_init(|| {
        let home = std::env::var_os("HOME").expect("HOME");
        let gguf = Path::new(&home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let tok = Tokenizer::load(&gguf).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), tok.vocab_size(), None);
        let opts = LoadOptions {
            threads: Some(1),
            ..Default::default()
        };
        (Model::load(dir.path(), &opts).unwrap(), tok)
    })
}

/// Prompts that end in each protocol's fork trigger (so a random model
/// forks), one that forks past the limits, and plain text.
const PROMPTS: &[(Option<&str>, &str)] = &[
    (Some("apr"), "Moving to Node #0\nCurrent State: 63:[62, 7, 8], Operations: []\nExploring Operation: 62+7=69, Resulting Numbers: [8, 69]\nGenerated Node #0,0: 63:[8, 69] Operation: 62+7=69\nExploring Operation: 8-7=1, Resulting Numbers: [62, 1]\nGenerated Node #0,1: 63:[62, 1] Operation: 8-7=1\n<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,1\n<Start Sub Search 1 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>"),
    (Some("multiverse"), "Q: 17 * 23?\n<Parallel>\n<Goal>\n<Outline>1: 17 * 20.</Outline>\n<Outline>2: 17 * 3.</Outline>\n</Goal>"),
    (Some("threadweaver"), "Q: distance?\n<Parallel>\n<Outlines>\n<Outline>1: dx.</Outline>\n<Outline>2: dy.</Outline>\n<Outline>3: sum.</Outline>\n</Outlines>"),
    (Some("npr"), "<guideline>\n<plan>1: Try x = 1.</plan>\n<plan>2: Try x = 2.</plan>\n</guideline>"),
    (Some("parallel-r1"), "Let me check both ways. <Parallel>"),
    (Some("threadweaver"), "Q: many?\n<Parallel>\n<Outlines>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n<Outline>3: c</Outline>\n<Outline>4: d</Outline>\n<Outline>5: e</Outline>\n<Outline>6: f</Outline>\n<Outline>7: g</Outline>\n</Outlines>"),
    (None, "The quick brown fox"),
    (Some("npr"), "plain text that never forks"),
];

#[derive(Debug, Clone)]
enum Op {
    Add {
        prompt: usize,
        seed: u64,
        sample: bool,
        max_tokens: usize,
        thread_tokens: usize,
        stop: bool,
    },
    Step(usize),
    /// Abort the k-th request added so far (it may have finished already).
    Abort(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..PROMPTS.len(),
            any::<u64>(),
            any::<bool>(),
            1..24usize,
            1..12usize,
            any::<bool>()
        )
            .prop_map(
                |(prompt, seed, sample, max_tokens, thread_tokens, stop)| Op::Add {
                    prompt,
                    seed,
                    sample,
                    max_tokens,
                    thread_tokens,
                    stop,
                }
            ),
        (1..6usize).prop_map(Op::Step),
        (0..8usize).prop_map(Op::Abort),
    ]
}

fn spec(
    prompt: usize,
    seed: u64,
    sample: bool,
    max_tokens: usize,
    thread_tokens: usize,
    stop: bool,
) -> RequestSpec {
    let (protocol, text) = PROMPTS[prompt];
    let mut s = RequestSpec::text(text);
    if let Some(p) = protocol {
        // Budgets of a few tokens: the engines' budget guards would refuse
        // every Multiverse and NPR fork (`special_tokens.rs` tests them).
        s = s.with_protocol(Arc::from(unguarded(p)));
    }
    s.max_tokens = Some(max_tokens);
    s.max_thread_tokens = Some(thread_tokens);
    s.sampling = Sampling {
        temperature: if sample { 0.9 } else { 0.0 },
        top_k: 40,
        seed,
        ..Default::default()
    };
    if stop {
        s.stop = vec!["e".into(), "</".into()];
    }
    s
}

/// Checks what a batch of events says against what was asked.
fn record(events: Vec<Event>, ended: &mut HashMap<RequestId, FinishReason>) {
    for e in events {
        if let Event::Finished {
            request,
            reason,
            response,
        } = e
        {
            assert_eq!(response.finish_reason, reason);
            assert!(
                ended.insert(request, reason).is_none(),
                "request {request} finished twice"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_keeps_the_invariants(
        ops in proptest::collection::vec(op(), 1..40),
        kv_mib in prop_oneof![Just(1usize), Just(4)],
        max_live in 1..12usize,
    ) {
        let (model, tok) = tiny();
        let cfg = EngineConfig {
            kv_budget_mib: kv_mib,
            max_live_threads: max_live,
            max_children_per_fork: 4,
            max_depth: 2,
            prefill_chunk: 32,
            max_batch_tokens: 64,
            ..Default::default()
        };
        let mut engine = Engine::new(model, tok, cfg).unwrap();
        let idle = engine.kv_blocks_available();
        let mut added = Vec::new();
        let mut aborted = Vec::new();
        let mut ended = HashMap::new();
        for op in ops {
            match op {
                Op::Add { prompt, seed, sample, max_tokens, thread_tokens, stop } => {
                    added.push(engine.add(spec(prompt, seed, sample, max_tokens, thread_tokens, stop)).unwrap());
                }
                Op::Step(n) => {
                    for _ in 0..n {
                        record(engine.step().unwrap(), &mut ended);
                    }
                }
                Op::Abort(k) => {
                    if let Some(&id) = added.get(k) {
                        if engine.abort(id) {
                            prop_assert!(!ended.contains_key(&id));
                            aborted.push(id);
                        }
                    }
                }
            }
            engine.audit().unwrap();
        }
        // Every request ends, in bounded time.
        let mut steps = 0;
        while engine.has_work() {
            record(engine.step().unwrap(), &mut ended);
            engine.audit().unwrap();
            steps += 1;
            prop_assert!(steps < 5000, "the engine does not finish");
        }
        prop_assert_eq!(ended.len(), added.len());
        for id in &aborted {
            prop_assert_eq!(ended[id], FinishReason::Abort);
        }
        prop_assert_eq!(engine.kv_blocks_available(), idle);
        prop_assert_eq!(engine.num_requests(), 0);
    }
}

/// The prompts above really fork and join on the tiny model, for every
/// protocol (else the property test would only exercise plain decoding).
#[test]
fn every_protocol_prompt_forks_and_joins() {
    let (model, tok) = tiny();
    let mut engine = Engine::new(model, tok, EngineConfig::default()).unwrap();
    for (i, (protocol, _)) in PROMPTS.iter().enumerate().take(5) {
        let r = engine
            .run(vec![spec(i, 1, false, 8, 4, false)], &mut |_| {})
            .unwrap()
            .remove(0);
        assert!(r.stats.forks >= 1, "{protocol:?}: {:?}", r.stats);
        assert!(r.threads.len() >= 3, "{protocol:?}");
    }
}
