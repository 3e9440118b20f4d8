//! Forked sequences that share a KV prefix are attended once for the prefix
//! (one GEMM for all their queries) and then over their own tokens. On an
//! f32 model (no activation rounding to amplify summation-order effects) the
//! logits must equal attending each sequence alone, to float rounding.

mod common;

use weft_model::{KvCache, LoadOptions, Model, SeqStep, Workspace};

fn run(model: &Model, prefix: &[u32], tails: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let bs = 16;
    let n_prefix_blocks = prefix.len().div_ceil(bs);
    let mut kv = KvCache::new(&model.config, bs, 64);
    let mut ws = Workspace::default();
    // Prefill the prefix into blocks 0..n.
    let prefix_table: Vec<u32> = (0..n_prefix_blocks as u32).collect();
    model
        .forward(
            &mut kv,
            &[SeqStep {
                tokens: prefix,
                block_table: &prefix_table,
                ..Default::default()
            }],
            &mut ws,
        )
        .unwrap();
    // Each tail continues in its own blocks after the (block-aligned) prefix.
    let tables: Vec<Vec<u32>> = (0..tails.len())
        .map(|i| {
            let mut t = prefix_table.clone();
            t.extend((0..3).map(|b| (n_prefix_blocks + 3 * i + b) as u32));
            t
        })
        .collect();
    let steps: Vec<SeqStep> = tails
        .iter()
        .zip(&tables)
        .map(|(tail, table)| SeqStep {
            tokens: tail,
            pos_start: prefix.len(),
            kv_start: prefix.len(),
            block_table: table,
            all_logits: true,
            shared: &[],
        })
        .collect();
    model.forward(&mut kv, &steps, &mut ws).unwrap()
}

#[test]
fn shared_prefix_attention_equals_attending_alone() {
    let tiny = common::Tiny {
        heads: 4,
        kv_heads: 2,
        ..common::Tiny::llama()
    };
    let dir = common::temp_dir("shared-prefix");
    tiny.write_hf(&dir, 5);
    let shared = Model::load(&dir, &LoadOptions::default()).unwrap();
    let alone = Model::load(
        &dir,
        &LoadOptions {
            batch_invariant: true,
            ..Default::default()
        },
    )
    .unwrap();
    // 48 prefix tokens (above the shared-run threshold), 5 tails of 1-4 tokens.
    let prefix: Vec<u32> = (0..48).map(|i| (i * 29 % 96) as u32).collect();
    let tails: Vec<Vec<u32>> = (0..5)
        .map(|i| {
            (0..1 + i % 4)
                .map(|j| ((i * 7 + j * 3) % 96) as u32)
                .collect()
        })
        .collect();
    let a = run(&shared, &prefix, &tails);
    let b = run(&alone, &prefix, &tails);
    let mut worst = 0f32;
    let mut scale = 0f32;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
            scale = scale.max(p.abs());
        }
    }
    assert!(scale > 0.1, "degenerate logits");
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "max |diff| {worst} (scale {scale})"
    );
    // And the shared path really ran: a tail that sees a different prefix
    // (a control) changes the logits.
    let other: Vec<u32> = prefix.iter().map(|t| (t + 1) % 96).collect();
    let c = run(&shared, &other, &tails);
    let moved = a[0]
        .iter()
        .zip(&c[0])
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "a different prefix did not change the logits");
    let _ = std::fs::remove_dir_all(dir);
}
