//! One forward step over many tokens gives every token the logits it gets
//! when the tokens are fed one at a time. The step runs its MLP over at most
//! 32 tokens at a time, and its buffers are sized per step, so lengths that
//! are not multiples of those pieces are the cases that can go wrong: a wrong
//! row offset gives a token another token's activations.

mod common;

use candle_core::quantized::GgmlDType;
use weft_model::session::Session;
use weft_model::{LoadOptions, Model};

#[test]
fn one_long_step_equals_token_by_token() {
    let tiny = common::Tiny {
        vocab: 96,
        d: 256,
        ff: 512,
        heads: 4,
        kv_heads: 2,
        layers: 2,
        ..common::Tiny::llama()
    };
    let dir = common::temp_dir("long-prefill");
    let opts = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    for (dtype, f32_weights) in [(GgmlDType::Q8_0, false), (GgmlDType::Q8_0, true)] {
        let path = dir.join(format!("m-{f32_weights}.gguf"));
        tiny.write_gguf_typed(&path, 11, &[], dtype, f32_weights);
        let model = Model::load(&path, &opts).unwrap();
        let vocab = model.config.vocab_size;
        for n in [1usize, 31, 32, 33, 65, 150] {
            let tokens: Vec<u32> = (0..n).map(|i| (i * 37 % 96) as u32).collect();
            let mut whole = Session::new(&model, n + 1);
            let all = whole.feed(&tokens, true).unwrap();
            assert_eq!(all.len(), n * vocab);
            let mut single = Session::new(&model, n + 1);
            for (i, &t) in tokens.iter().enumerate() {
                let one = single.feed(&[t], false).unwrap();
                let got = &all[i * vocab..(i + 1) * vocab];
                let scale = one.iter().fold(0f32, |m, x| m.max(x.abs()));
                let worst = got
                    .iter()
                    .zip(&one)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // The prefill and decode attention kernels round differently;
                // nothing else differs.
                assert!(
                    worst <= 1e-3 * scale.max(1.0),
                    "{} weights, {n} tokens: token {i} differs by {worst} (logit scale {scale})",
                    if f32_weights { "F32" } else { "Q8_0" }
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
