//! KV-merge exactness: children computed in their own block tables at the
//! fork position, then a parent step that sees the prefix plus every
//! child's KV through `SeqStep::shared`, gives the same logits as one dense
//! forward over the same tokens with the matching attention mask and
//! position ids (`Model::forward_masked`).
//!
//! The layout (PROTOCOLS.md, "position layouts"): the prefix sits at
//! positions 0..p; child i at p..p+L_i and sees the prefix and itself only;
//! the parent continues at p + max L_i and sees everything.

use weft_model::sampling::argmax;
use weft_model::{KvCache, KvSpan, LoadOptions, Model, SeqStep, Tokenizer, Workspace};

/// Largest absolute logit difference allowed between the paged merged path
/// and the dense masked reference (SmolLM2's logits span about 40). Both
/// use the same arithmetic primitives and take keys in the same order, so a
/// correct layout matches to the bit (measured: 0.0); the tolerance only
/// leaves room for summation-order changes. It must stay tight: with 8-bit
/// activations, one rounding flip early on moves late logits by ~0.5, so a
/// loose tolerance would not tell a bug from noise.
const TOLERANCE: f32 = 1e-4;

fn model_path() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Which part of the merged layout a token belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Prefix,
    Child(usize),
    Parent,
}

struct Layout {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    parts: Vec<Part>,
}

impl Layout {
    /// The KV-merge mask: causal, and a child does not see its siblings.
    fn merged(&self, i: usize, j: usize) -> bool {
        j <= i
            && match (self.parts[i], self.parts[j]) {
                (Part::Child(a), Part::Child(b)) => a == b,
                _ => true,
            }
    }
}

#[test]
fn merged_kv_matches_a_dense_forward_with_the_merge_mask() {
    let path = model_path();
    let model = Model::load(
        &path,
        &LoadOptions {
            batch_invariant: true,
            ..Default::default()
        },
    )
    .unwrap();
    let tok = Tokenizer::load(&path).unwrap();
    let vocab = model.config.vocab_size;

    let prefix = tok
        .encode(
            "Question: what is 17 * 23?\n<Parallel>\n<Goal>\n<Outline>1: tens</Outline>\n<Outline>2: units</Outline>\n<Outline>3: check</Outline>\n</Goal>",
            true,
        )
        .unwrap();
    let children: Vec<Vec<u32>> = [
        "<Path>1: 17 * 20 = 340.</Path>",
        "<Path>2: 17 * 3 = 51, so the units part adds fifty-one.</Path>",
        "<Path>3: 340 + 51 = 391</Path>",
    ]
    .iter()
    .map(|t| tok.encode(t, false).unwrap())
    .collect();
    let append = tok.encode("<Conclusion> The answer is", false).unwrap();
    let p = prefix.len();
    let longest = children.iter().map(Vec::len).max().unwrap();
    assert!(
        children.iter().any(|c| c.len() != longest),
        "children of different lengths make the position rule matter"
    );

    // Paged: block size 4, so the fork point falls inside a block that each
    // child copies before writing (copy-on-write by hand here).
    let bs = 4;
    let n_blocks = 64;
    let mut kv = KvCache::new(&model.config, bs, n_blocks);
    let mut ws = Workspace::default();
    let mut next_block = 0u32;
    let mut alloc = |n: usize| -> Vec<u32> {
        let v = (next_block..next_block + n as u32).collect();
        next_block += n as u32;
        v
    };
    let prefix_table = alloc(p.div_ceil(bs));
    model
        .forward(
            &mut kv,
            &[SeqStep {
                tokens: &prefix,
                block_table: &prefix_table,
                ..Default::default()
            }],
            &mut ws,
        )
        .unwrap();
    let full = p / bs;
    let child_tables: Vec<Vec<u32>> = children
        .iter()
        .map(|c| {
            let mut t = prefix_table[..full].to_vec();
            let own = alloc((p + c.len()).div_ceil(bs) - full);
            if !p.is_multiple_of(bs) {
                kv.copy_block(prefix_table[full], own[0], p % bs);
            }
            t.extend(own);
            t
        })
        .collect();
    let steps: Vec<SeqStep> = children
        .iter()
        .zip(&child_tables)
        .map(|(c, t)| SeqStep {
            tokens: c,
            pos_start: p,
            kv_start: p,
            block_table: t,
            all_logits: true,
            shared: &[],
        })
        .collect();
    let child_logits = model.forward(&mut kv, &steps, &mut ws).unwrap();

    let mut shared = vec![KvSpan {
        block_table: &prefix_table,
        start: 0,
        end: p,
    }];
    for (c, t) in children.iter().zip(&child_tables) {
        shared.push(KvSpan {
            block_table: t,
            start: p,
            end: p + c.len(),
        });
    }
    let parent_table = alloc((append.len() + 1).div_ceil(bs));
    let base = p + longest;
    let mut parent_logits = model
        .forward(
            &mut kv,
            &[SeqStep {
                tokens: &append,
                pos_start: base,
                kv_start: 0,
                block_table: &parent_table,
                all_logits: true,
                shared: &shared,
            }],
            &mut ws,
        )
        .unwrap()
        .remove(0);
    // One decode step after the join, as the engine's next step would be.
    let next = argmax(&parent_logits[(append.len() - 1) * vocab..]);
    let step_logits = model
        .forward(
            &mut kv,
            &[SeqStep {
                tokens: &[next],
                pos_start: base + append.len(),
                kv_start: append.len(),
                block_table: &parent_table,
                all_logits: false,
                shared: &shared,
            }],
            &mut ws,
        )
        .unwrap()
        .remove(0);
    parent_logits.extend(step_logits);

    // Dense reference over the same tokens, positions and mask.
    let mut layout = Layout {
        tokens: prefix.clone(),
        positions: (0..p).collect(),
        parts: vec![Part::Prefix; p],
    };
    for (i, c) in children.iter().enumerate() {
        layout.tokens.extend(c);
        layout.positions.extend(p..p + c.len());
        layout
            .parts
            .extend(std::iter::repeat_n(Part::Child(i), c.len()));
    }
    let parent_at = layout.tokens.len();
    layout.tokens.extend(&append);
    layout.tokens.push(next);
    layout.positions.extend(base..base + append.len() + 1);
    layout
        .parts
        .extend(std::iter::repeat_n(Part::Parent, append.len() + 1));
    let reference = model
        .forward_masked(&layout.tokens, &layout.positions, &|i, j| {
            layout.merged(i, j)
        })
        .unwrap();

    let rows =
        |from: usize, n: usize, logits: &[f32]| logits[from * vocab..(from + n) * vocab].to_vec();
    let parent_ref = rows(parent_at, append.len() + 1, &reference);
    let parent_diff = max_abs_diff(&parent_logits, &parent_ref);
    let mut child_diff = 0.0f32;
    let mut at = p;
    for (c, logits) in children.iter().zip(&child_logits) {
        child_diff = child_diff.max(max_abs_diff(logits, &rows(at, c.len(), &reference)));
        at += c.len();
    }
    eprintln!("KV-merge vs dense masked reference: parent max |diff| {parent_diff:.5}, children {child_diff:.5} (tolerance {TOLERANCE})");
    assert!(
        parent_diff <= TOLERANCE,
        "parent logits differ by {parent_diff}"
    );
    assert!(
        child_diff <= TOLERANCE,
        "child logits differ by {child_diff}"
    );
    for r in 0..=append.len() {
        assert_eq!(
            argmax(&parent_logits[r * vocab..(r + 1) * vocab]),
            argmax(&parent_ref[r * vocab..(r + 1) * vocab]),
            "greedy token {r} after the join differs"
        );
    }

    // The test can tell layouts apart: letting children see each other, or
    // laying everything out at sequential positions, moves the parent's
    // logits far past the tolerance.
    let unmasked = model
        .forward_masked(&layout.tokens, &layout.positions, &|i, j| j <= i)
        .unwrap();
    let sequential: Vec<usize> = (0..layout.tokens.len()).collect();
    let resequenced = model
        .forward_masked(&layout.tokens, &sequential, &|i, j| layout.merged(i, j))
        .unwrap();
    for (name, other) in [
        ("unmasked", &unmasked),
        ("sequential positions", &resequenced),
    ] {
        let d = max_abs_diff(&parent_logits, &rows(parent_at, append.len() + 1, other));
        eprintln!("control {name}: parent max |diff| {d:.3}");
        assert!(
            d > 10.0 * TOLERANCE,
            "{name}: the merged logits are within {d} of a different layout"
        );
    }
}

#[test]
fn bad_shared_spans_are_errors() {
    let path = model_path();
    let model = Model::load(
        &path,
        &LoadOptions {
            batch_invariant: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut kv = KvCache::new(&model.config, 4, 4);
    let mut ws = Workspace::default();
    let table = [0u32, 1];
    let own = [2u32];
    for span in [
        KvSpan {
            block_table: &table,
            start: 0,
            end: 9,
        },
        KvSpan {
            block_table: &table,
            start: 5,
            end: 3,
        },
        KvSpan {
            block_table: &[7],
            start: 0,
            end: 1,
        },
    ] {
        let shared = [span];
        let step = SeqStep {
            tokens: &[1],
            block_table: &own,
            shared: &shared,
            ..Default::default()
        };
        assert!(
            model.forward(&mut kv, &[step], &mut ws).is_err(),
            "{span:?}"
        );
    }
    // mask that hides a token from itself, and mismatched positions
    assert!(model
        .forward_masked(&[1, 2], &[0, 1], &|i, j| j < i)
        .is_err());
    assert!(model.forward_masked(&[1, 2], &[0], &|i, j| j <= i).is_err());
}

/// The reference itself: with a causal mask and sequential positions it is
/// the ordinary forward pass.
#[test]
fn dense_reference_matches_the_paged_forward_on_a_causal_sequence() {
    let path = model_path();
    let model = Model::load(
        &path,
        &LoadOptions {
            batch_invariant: true,
            ..Default::default()
        },
    )
    .unwrap();
    let tok = Tokenizer::load(&path).unwrap();
    let tokens = tok
        .encode("Water boils at 100 degrees Celsius at sea level, and", true)
        .unwrap();
    let mut kv = KvCache::new(&model.config, 16, 4);
    let mut ws = Workspace::default();
    let table: Vec<u32> = (0..4).collect();
    let step = SeqStep {
        tokens: &tokens,
        block_table: &table,
        all_logits: true,
        ..Default::default()
    };
    let paged = model.forward(&mut kv, &[step], &mut ws).unwrap().remove(0);
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let dense = model
        .forward_masked(&tokens, &positions, &|i, j| j <= i)
        .unwrap();
    let diff = max_abs_diff(&paged, &dense);
    assert!(diff <= TOLERANCE, "causal reference differs by {diff}");
}
