//! End to end: after a KV-merge join the engine's parent decodes exactly
//! what one dense forward over the same tokens predicts, with the merge
//! layout's attention mask (children masked from each other) and position
//! ids (children from the fork position p, the parent from p + longest
//! child). `weft-model/tests/kv_merge.rs` checks the logits of the layout
//! itself; this checks that the engine builds that layout.

use std::sync::Arc;

use weft_engine::{Engine, EngineConfig, RequestSpec};
use weft_model::sampling::argmax;
use weft_model::{LoadOptions, Model, Tokenizer};

mod common;

const MV_PROMPT: &str = "Question: what is 17 * 23?\n<Parallel>\n<Goal>\n<Outline>1: Compute 17 * 20.</Outline>\n<Outline>2: Compute 17 * 3.</Outline>\n<Outline>3: Add the two parts.</Outline>\n</Goal>";

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Prefix,
    /// The lead `\n` every child's KV begins with (kept once, child 0's):
    /// every child saw its own identical copy, so all see this one.
    Lead,
    Child(usize),
    Parent,
}

/// Greedy tokens of the parent after the join that the dense reference
/// with this mask and these positions does not predict.
fn mismatches(
    model: &Model,
    tokens: &[u32],
    positions: &[usize],
    mask: &dyn Fn(usize, usize) -> bool,
    parent_at: usize,
    first_sampled: usize,
) -> usize {
    let vocab = model.config.vocab_size;
    let logits = model.forward_masked(tokens, positions, mask).unwrap();
    (parent_at + first_sampled..tokens.len())
        .filter(|&i| argmax(&logits[(i - 1) * vocab..i * vocab]) != tokens[i])
        .count()
}

#[test]
fn parent_after_a_kv_merge_join_decodes_as_the_masked_dense_forward() {
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
    let cfg = EngineConfig {
        max_tokens_per_thread: 10,
        max_depth: 1,
        ..Default::default()
    };
    let mut engine = Engine::new(&model, &tok, cfg).unwrap();
    let request = RequestSpec::text(MV_PROMPT.to_string())
        // A 10-token budget: without Multiverse-Engine's guard (no fork
        // within 30 tokens of it).
        .with_protocol(Arc::from(common::unguarded("multiverse")));
    let r = engine.run(vec![request], &mut |_| {}).unwrap().remove(0);
    assert_eq!(r.stats.kv_merge_joins, 1, "{:?}", r.stats);
    assert_eq!(r.threads.len(), 4);

    let prefix = tok.encode(MV_PROMPT, true).unwrap();
    let p = prefix.len();
    let mut tokens = prefix.clone();
    let mut positions: Vec<usize> = (0..p).collect();
    let mut parts = vec![Part::Prefix; p];
    let mut longest = 0;
    // The authors' engine keeps the lead `\n` of the child prompt once
    // (child 0's): children 1.. are merged from their `<Path>` on, at the
    // same positions (Multiverse-Engine `scheduler.py` 1536-1577).
    let lead = tok.encode("\n", false).unwrap().len();
    for (i, child) in r.threads[1..].iter().enumerate() {
        assert_eq!(
            child.tokens[..p],
            prefix[..],
            "child {i} did not fork from the prompt"
        );
        let own = &child.tokens[p..];
        let skip = if i == 0 { 0 } else { lead };
        tokens.extend(&own[skip..]);
        positions.extend(p + skip..p + own.len());
        if i == 0 {
            parts.extend(std::iter::repeat_n(Part::Lead, lead));
        }
        let first = if i == 0 { lead } else { skip };
        parts.extend(std::iter::repeat_n(Part::Child(i), own.len() - first));
        longest = longest.max(own.len());
    }
    let root = &r.threads[0];
    let append = tok.encode("<Conclusion>\n", false).unwrap();
    assert_eq!(root.tokens[..append.len()], append[..]);
    assert!(
        root.tokens.len() >= append.len() + 3,
        "the root decoded too little after the join to check: {:?}",
        r.text
    );
    let parent_at = tokens.len();
    tokens.extend(&root.tokens);
    positions.extend(p + longest..p + longest + root.tokens.len());
    parts.extend(std::iter::repeat_n(Part::Parent, root.tokens.len()));

    let merged = |i: usize, j: usize| {
        j <= i
            && match (parts[i], parts[j]) {
                (Part::Child(a), Part::Child(b)) => a == b,
                _ => true,
            }
    };
    let wrong = mismatches(
        &model,
        &tokens,
        &positions,
        &merged,
        parent_at,
        append.len(),
    );
    assert_eq!(
        wrong,
        0,
        "{wrong} of the root's {} tokens after the join are not the merged layout's greedy tokens",
        root.tokens.len() - append.len()
    );

    // The check can fail: the same tokens read as one sequence (children
    // seeing each other at sequential positions) predict other tokens.
    let sequential: Vec<usize> = (0..tokens.len()).collect();
    let wrong = mismatches(
        &model,
        &tokens,
        &sequential,
        &|i, j| j <= i,
        parent_at,
        append.len(),
    );
    eprintln!("sequential layout: {wrong} mismatches");
    assert!(wrong > 0, "this prompt does not tell the layouts apart");
}
