//! Training-step throughput on random tokens, for `weft bench train` (which
//! runs the PyTorch reference, `benches/train_torch.py`, beside it).

use crate::config::ModelShape;
use crate::error::Result;
use crate::model::{Batch, LlamaParams};
use crate::optim::AdamW;
use candle_core::Device;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

/// `rows` rows of `len` random tokens, one document per row (full causal
/// attention, as the reference computes it).
pub fn random_batch(rng: &mut StdRng, vocab: usize, rows: usize, len: usize) -> Batch {
    let n = rows * len;
    let tokens: Vec<u32> = (0..rows * (len + 1))
        .map(|_| rng.gen_range(0..vocab as u32))
        .collect();
    let mut b = Batch {
        rows,
        len,
        input: Vec::with_capacity(n),
        target: Vec::with_capacity(n),
        weight: vec![1.0; n],
        position: Vec::with_capacity(n),
        segment: vec![0; n],
        real_tokens: n,
    };
    for r in 0..rows {
        let row = &tokens[r * (len + 1)..(r + 1) * (len + 1)];
        b.input.extend_from_slice(&row[..len]);
        b.target.extend_from_slice(&row[1..]);
        b.position.extend(0..len as u32);
    }
    b
}

/// Tokens per second of full training steps (forward, backward, clipping,
/// AdamW) after `warmup` untimed steps.
pub fn steps_per_second(
    shape: &ModelShape,
    rows: usize,
    len: usize,
    steps: usize,
    warmup: usize,
) -> Result<f64> {
    crate::alloc::retain_freed_memory();
    let device = Device::Cpu;
    let params = LlamaParams::init(shape, 0, &device)?;
    let mut opt = AdamW::new(&params.vars, 0.9, 0.95, 1e-8, 0.1)?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut started = Instant::now();
    for s in 0..warmup + steps {
        if s == warmup {
            started = Instant::now();
        }
        let batch = random_batch(&mut rng, shape.vocab_size, rows, len);
        let Some((loss, _)) = params.loss(&batch)? else {
            continue;
        };
        let grads = loss.backward()?;
        let norm = AdamW::grad_norm(&params.vars, &grads)?;
        let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        opt.step(&params.vars, &grads, 1e-3, scale)?;
    }
    Ok((steps * rows * len) as f64 / started.elapsed().as_secs_f64())
}
