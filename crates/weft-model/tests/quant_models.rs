//! Whole models in each type weft repacks into bit planes (Q5_0, Q5_1, Q4_K,
//! Q5_K, Q6_K) and in Q4_0/Q4_1/Q8_0: a tiny random-weight model quantized
//! by candle loads through weft's own kernels (repacking, fused q/k/v and
//! gate/up stacking, embedding rows read from the packed layout) to the
//! logits of the same weights decoded to F32 by candle and run in f32. The
//! only difference left is weft's 8-bit activations.

mod common;

use candle_core::quantized::GgmlDType;
use weft_model::session::Session;
use weft_model::{LoadOptions, Model};

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut s = Session::new(model, 64);
    s.feed(tokens, true).unwrap()
}

#[test]
fn quantized_models_match_their_dequantized_weights() {
    // Rows of 256 and 512 so the K types apply; every row count a multiple
    // of 8 so every matrix is repacked.
    let tiny = common::Tiny {
        vocab: 96,
        d: 256,
        ff: 512,
        heads: 4,
        kv_heads: 2,
        layers: 2,
        ..common::Tiny::llama()
    };
    let dir = common::temp_dir("quant-models");
    let opts = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 % 96) as u32).collect();
    for (dtype, kind) in [
        (GgmlDType::Q5_0, "Q5_0"),
        (GgmlDType::Q5_1, "Q5_1"),
        (GgmlDType::Q4K, "Q4_K"),
        (GgmlDType::Q5K, "Q5_K"),
        (GgmlDType::Q6K, "Q6_K"),
        (GgmlDType::Q4_0, "Q4_0"),
        (GgmlDType::Q4_1, "Q4_1"),
        (GgmlDType::Q8_0, "Q8_0"),
    ] {
        let q = dir.join(format!("{kind}.gguf"));
        let f = dir.join(format!("{kind}-f32.gguf"));
        tiny.write_gguf_typed(&q, 5, &[], dtype, false);
        tiny.write_gguf_typed(&f, 5, &[], dtype, true);
        let mq = Model::load(&q, &opts).unwrap();
        let mf = Model::load(&f, &opts).unwrap();
        assert_eq!(mq.weight_kind, kind, "{kind}: not on weft's kernel");
        let (lq, lf) = (logits(&mq, &tokens), logits(&mf, &tokens));
        let scale = lf.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = lq
            .iter()
            .zip(&lf)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(scale > 0.1, "{kind}: degenerate logits");
        let mean_abs = lf.iter().map(|x| x.abs()).sum::<f32>() / lf.len() as f32;
        let mean_diff =
            lq.iter().zip(&lf).map(|(a, b)| (a - b).abs()).sum::<f32>() / lf.len() as f32;
        eprintln!(
            "{kind}: max |diff| {worst:.4} (logit scale {scale:.2}), mean |diff| {mean_diff:.4} (mean |logit| {mean_abs:.3})"
        );
        // 8-bit activations against f32 ones, through 2 layers of random
        // weights: up to ~9% of the largest logit, ~4% on average, for the
        // long-standing Q4_0/Q4_1/Q8_0 kernels as for the new ones. A wrong
        // layout, offset or stacking gives errors of the order of the logits.
        assert!(
            worst <= 0.15 * scale && mean_diff <= 0.06 * mean_abs,
            "{kind}: max |diff| {worst}, mean |diff| {mean_diff} against the dequantized model"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
