//! Decode steps over long contexts take the split ("flash-decoding") path
//! (`kernels::decode`). Against the same model attending in one pass, the
//! logits agree to rounding and pick the same token, on both sides of the
//! threshold; against the dense reference forward, to the level the rest of
//! the forward already differs at.

use weft_model::kernels::decode::{split_steps, SPLIT_MIN};
use weft_model::session::Session;
use weft_model::{LoadOptions, Model};

fn load(one_pass: bool) -> Model {
    let home = std::env::var_os("HOME").expect("HOME");
    let path =
        std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let opts = LoadOptions {
        one_pass_decode_attention: one_pass,
        ..Default::default()
    };
    Model::load(&path, &opts).unwrap()
}

fn decode_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let ctx = tokens.len() - 1;
    let mut s = Session::new(model, tokens.len());
    s.feed(&tokens[..ctx], false).unwrap();
    s.feed(&tokens[ctx..], false).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (worst, scale)
}

#[test]
fn long_context_decode_matches_one_pass_attention_and_the_reference() {
    let split = load(false);
    let one_pass = load(true);
    let vocab = split.config.vocab_size;
    let argmax = weft_model::sampling::argmax;
    // Cached contexts whose decode step attends to (ctx + 1 slots) just
    // under, at and well past the threshold, and one that does not divide
    // evenly into parts.
    for ctx in [SPLIT_MIN - 2, SPLIT_MIN - 1, 3 * SPLIT_MIN + 7] {
        let tokens: Vec<u32> = (0..ctx as u32 + 1)
            .map(|i| (i * 7919 + 13) % vocab as u32)
            .collect();
        let before = split_steps();
        let got = decode_logits(&split, &tokens);
        let split_ran = split_steps() > before;
        let plain = decode_logits(&one_pass, &tokens);
        let (worst, scale) = max_diff(&got, &plain);
        assert!(scale > 1.0, "degenerate logits");
        if ctx + 1 < SPLIT_MIN {
            assert!(
                !split_ran,
                "ctx {ctx}: below the threshold the split path ran"
            );
            assert_eq!(worst, 0.0, "ctx {ctx}: below the threshold nothing changes");
        } else {
            // (The logits may still be equal to the bit: 8-bit activations
            // often round both attention results to the same values.)
            assert!(split_ran, "ctx {ctx}: the split path did not run");
            // Rounding in one step's attention, moved through 30 layers of
            // 8-bit activations: the level any change of summation order
            // gives on this model.
            assert!(worst <= 0.05 * scale, "ctx {ctx}: {worst} (scale {scale})");
        }
        assert_eq!(argmax(&got), argmax(&plain), "ctx {ctx}");

        let positions: Vec<usize> = (0..tokens.len()).collect();
        let dense = split
            .forward_masked(&tokens, &positions, &|i, j| j <= i)
            .unwrap();
        let want = &dense[ctx * vocab..(ctx + 1) * vocab];
        let (worst, scale) = max_diff(&got, want);
        assert!(worst <= 0.05 * scale, "ctx {ctx}: {worst} (scale {scale})");
        assert_eq!(argmax(&got), argmax(want), "ctx {ctx}");
    }
}
