//! Compares weft-train's forward with weft-model's on a model folder and a text file:
//! max logit difference and mean next-token loss under each
//! (`cargo run --release -p weft-train --example compare -- MODEL_DIR TEXT_FILE`).
use candle_core::Device;
use std::path::Path;
use weft_model::{KvCache, LoadOptions, Model, SeqStep, Tokenizer, Workspace};
use weft_train::model::Batch;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let text = std::fs::read_to_string(&args[2]).unwrap();
    let tok = Tokenizer::load(dir).unwrap();
    let tokens = tok.encode(&text, true).unwrap();
    let n = tokens.len().min(300);
    let tokens = &tokens[..n];
    println!("{} tokens, first {:?}", n, &tokens[..8]);
    let ours = weft_train::trainer::load_model(dir, &Device::Cpu).unwrap();
    let batch = Batch {
        rows: 1,
        len: n,
        input: tokens.to_vec(),
        target: tokens.to_vec(),
        weight: vec![1.0; n],
        position: (0..n as u32).collect(),
        segment: vec![0; n],
        real_tokens: n,
    };
    let want = ours.forward(&batch).unwrap().to_vec2::<f32>().unwrap();
    let model = Model::load(dir, &LoadOptions::default()).unwrap();
    let mut kv = KvCache::new(&model.config, 16, 64);
    let table: Vec<u32> = (0..64).collect();
    let mut ws = Workspace::default();
    let got = model
        .forward(
            &mut kv,
            &[SeqStep {
                tokens,
                block_table: &table,
                all_logits: true,
                ..Default::default()
            }],
            &mut ws,
        )
        .unwrap();
    let v = want[0].len();
    let (mut nll_a, mut nll_b, mut worst) = (0f64, 0f64, 0f32);
    for i in 0..n - 1 {
        let a = &want[i];
        let b = &got[0][i * v..(i + 1) * v];
        for j in 0..v {
            worst = worst.max((a[j] - b[j]).abs());
        }
        let lse = |r: &[f32]| {
            let m = r.iter().cloned().fold(f32::MIN, f32::max);
            m + r.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
        };
        let t = tokens[i + 1] as usize;
        nll_a += (lse(a) - a[t]) as f64;
        nll_b += (lse(b) - b[t]) as f64;
    }
    println!(
        "max |logit diff| {worst}, mean nll train-forward {:.4}, weft-model {:.4}",
        nll_a / (n - 1) as f64,
        nll_b / (n - 1) as f64
    );
}
