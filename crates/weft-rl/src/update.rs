//! The policy update: sampled segments become training sequences whose
//! sampled tokens carry their rollout's advantage (prompts and text the
//! engine wrote carry none), packed into rows, and AdamW steps on the
//! clipped policy loss ([`weft_train::kernels::PolicyLoss`]).

use candle_core::backprop::GradStore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weft_engine::SampledSegment;
use weft_train::kernels::{token_logprobs, PolicyLoss};
use weft_train::model::{Batch, LlamaParams};
use weft_train::optim::AdamW;

use crate::RlError;

/// One training sequence: `tokens`, and for each next-token prediction
/// `tokens[j] -> tokens[j + 1]` the advantage it is trained with, or `None`
/// for a token the policy did not sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub advantage: Vec<Option<f32>>,
}

impl Sequence {
    /// The sequence of one sampled segment: its context up to the last
    /// sampled token (a sampled end of sequence appended), each sampled
    /// token's prediction weighted by `advantage`. A sample whose token is
    /// no longer at its position (a token the engine took back) is left
    /// out. `None` when nothing sampled remains.
    pub fn of_segment(seg: &SampledSegment, advantage: f32) -> Option<Sequence> {
        Self::of_segment_with(seg, advantage, &[])
    }

    /// As [`Sequence::of_segment`], with `advantage + offset` at each
    /// sampled position of `offsets` (`(position in seg.tokens, offset)`:
    /// token-level credit, such as a penalty on the tokens that repeat the
    /// search). Offsets at positions that were not sampled are ignored.
    pub fn of_segment_with(
        seg: &SampledSegment,
        advantage: f32,
        offsets: &[(usize, f32)],
    ) -> Option<Sequence> {
        let last = seg.sampled.iter().map(|s| s.0).max()?;
        let mut tokens = seg.tokens[..(last + 1).min(seg.tokens.len())].to_vec();
        if let Some(&(_, eos)) = seg.sampled.iter().find(|s| s.0 == seg.tokens.len()) {
            tokens.push(eos);
        }
        let mut adv = vec![None; tokens.len().saturating_sub(1)];
        for &(pos, id) in &seg.sampled {
            if pos >= 1 && tokens.get(pos) == Some(&id) {
                adv[pos - 1] = Some(advantage);
            }
        }
        for &(pos, offset) in offsets {
            if let Some(Some(a)) = pos.checked_sub(1).and_then(|i| adv.get_mut(i)) {
                *a += offset;
            }
        }
        adv.iter().any(Option::is_some).then_some(Sequence {
            tokens,
            advantage: adv,
        })
    }

    /// Sampled tokens it trains on.
    pub fn sampled(&self) -> usize {
        self.advantage.iter().filter(|a| a.is_some()).count()
    }
}

/// Settings of one update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    pub lr: f64,
    /// PPO's clip range: ratios outside `[1 - eps, 1 + eps]` give no
    /// gradient on the side that would move them further.
    pub clip_eps: f32,
    /// Weight of the k3 KL estimate to the initial model (0: none).
    pub kl_coef: f32,
    /// Passes over the step's rollouts.
    pub epochs: usize,
    /// Optimizer steps per pass (the rollouts split evenly).
    pub minibatches: usize,
    /// Global gradient-norm clip (0: none).
    pub grad_clip: f64,
    /// Row length of packed sequences (a longer one is cut).
    pub seq_len: usize,
    /// Rows per forward pass (gradients accumulate across them).
    pub micro_rows: usize,
    /// Keep the token embeddings ([`EMBEDDINGS`]) as they are: their
    /// gradients are dropped before the norm and the AdamW step. With tied
    /// embeddings the output head is the input embedding, so a signal that
    /// pushes some number tokens down everywhere they are sampled also
    /// moves how every context reads those numbers; frozen, only the
    /// layers, which see the context, can learn it.
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// The rollouts' sampling temperature: the loss's log-probabilities are
    /// of the distribution the tokens were drawn from (set from the
    /// rollout settings; not a setting of its own).
    #[serde(skip, default = "one")]
    pub temperature: f32,
}

fn one() -> f32 {
    1.0
}

/// The parameters [`UpdateConfig::freeze_embeddings`] keeps: the token
/// embedding and, in an untied model, the output head (Hugging Face Llama
/// names).
pub const EMBEDDINGS: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateStats {
    /// The loss of the last optimizer step.
    pub loss: f32,
    pub grad_norm: f64,
    pub optimizer_steps: usize,
    /// Sampled tokens trained on (each pass counts them once).
    pub sampled_tokens: usize,
    /// Sequences longer than a row, cut.
    pub cut: usize,
}

/// Packed rows: a [`Batch`] and each target's advantage.
struct Micro {
    batch: Batch,
    advantage: Vec<Option<f32>>,
    sampled: usize,
}

/// Packs `seqs` in order into rows of `len` (a sequence that does not fit
/// the row starts the next; padding is its own document, as
/// `weft_train::data::pack` does), `rows` rows per micro-batch.
fn pack(seqs: &[Sequence], len: usize, rows: usize, pad: u32) -> (Vec<Micro>, usize) {
    let mut out: Vec<Micro> = Vec::new();
    let mut cut = 0;
    let new_micro = || Micro {
        batch: Batch {
            rows: 0,
            len,
            input: Vec::new(),
            target: Vec::new(),
            weight: Vec::new(),
            position: Vec::new(),
            segment: Vec::new(),
            real_tokens: 0,
        },
        advantage: Vec::new(),
        sampled: 0,
    };
    let mut cur = new_micro();
    let (mut used, mut seg) = (0usize, 0u32);
    let finish_row = |m: &mut Micro, used: &mut usize, seg: &mut u32| {
        while m.batch.input.len() < (m.batch.rows + 1) * len {
            m.batch.input.push(pad);
            m.batch.target.push(pad);
            m.batch.weight.push(0.0);
            m.batch.position.push(0);
            m.batch.segment.push(*seg);
            m.advantage.push(None);
            *seg += 1;
        }
        m.batch.rows += 1;
        *used = 0;
        *seg = 0;
    };
    for s in seqs {
        let mut pairs = s.tokens.len().saturating_sub(1);
        if pairs == 0 {
            continue;
        }
        if pairs > len {
            cut += 1;
            pairs = len;
        }
        if used + pairs > len {
            finish_row(&mut cur, &mut used, &mut seg);
            if cur.batch.rows == rows {
                out.push(std::mem::replace(&mut cur, new_micro()));
            }
        }
        for j in 0..pairs {
            cur.batch.input.push(s.tokens[j]);
            cur.batch.target.push(s.tokens[j + 1]);
            cur.batch
                .weight
                .push(if s.advantage[j].is_some() { 1.0 } else { 0.0 });
            cur.batch.position.push(j as u32);
            cur.batch.segment.push(seg);
            cur.advantage.push(s.advantage[j]);
            cur.sampled += usize::from(s.advantage[j].is_some());
        }
        cur.batch.real_tokens += pairs;
        seg += 1;
        used += pairs;
    }
    if used > 0 {
        finish_row(&mut cur, &mut used, &mut seg);
    }
    if cur.batch.rows > 0 {
        out.push(cur);
    }
    (out, cut)
}

fn accumulate(acc: &mut GradStore, params: &LlamaParams, grads: GradStore) -> Result<(), RlError> {
    for var in params.vars.values() {
        if let Some(g) = grads.get(var.as_tensor()) {
            let g = g.detach();
            let sum = match acc.get(var.as_tensor()) {
                Some(a) => (a + &g)?,
                None => g,
            };
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(())
}

/// Trains `params` on `seqs`: `cfg.epochs` passes of `cfg.minibatches`
/// AdamW steps each. With more than one step the ratios are against the
/// log-probabilities before the first (PPO's old policy); with one step
/// they are 1 and the loss is the plain policy gradient. With `kl_coef` > 0
/// `reference` (the initial model) gives the KL term's log-probabilities.
/// Each step's loss is a mean over its sampled tokens.
pub fn update(
    params: &LlamaParams,
    opt: &mut AdamW,
    reference: Option<&LlamaParams>,
    seqs: &[Sequence],
    cfg: &UpdateConfig,
    pad: u32,
) -> Result<UpdateStats, RlError> {
    let (micros, cut) = pack(seqs, cfg.seq_len, cfg.micro_rows.max(1), pad);
    let mut stats = UpdateStats {
        cut,
        ..UpdateStats::default()
    };
    if micros.is_empty() {
        return Ok(stats);
    }
    let steps = cfg.epochs.max(1) * cfg.minibatches.max(1);
    let logprobs = |p: &LlamaParams, m: &Micro| -> Result<Arc<Vec<f32>>, RlError> {
        let logits = p.forward(&m.batch)?;
        Ok(Arc::new(token_logprobs(
            &logits,
            &m.batch.target,
            cfg.temperature,
        )?))
    };
    let old: Option<Vec<Arc<Vec<f32>>>> = if steps > 1 {
        Some(
            micros
                .iter()
                .map(|m| logprobs(params, m))
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    let refs: Option<Vec<Arc<Vec<f32>>>> = match reference {
        Some(r) if cfg.kl_coef != 0.0 => Some(
            micros
                .iter()
                .map(|m| logprobs(r, m))
                .collect::<Result<_, _>>()?,
        ),
        _ => None,
    };
    // Minibatches: contiguous runs of micro-batches, as even as they come.
    let per = micros.len().div_ceil(cfg.minibatches.max(1));
    for _ in 0..cfg.epochs.max(1) {
        for (mb, chunk) in micros.chunks(per).enumerate() {
            let tokens: usize = chunk.iter().map(|m| m.sampled).sum();
            if tokens == 0 {
                continue;
            }
            let mut acc = GradStore::default();
            let mut loss_sum = 0f32;
            for (k, m) in chunk.iter().enumerate() {
                if m.sampled == 0 {
                    continue;
                }
                let idx = mb * per + k;
                let logits = params.forward(&m.batch)?;
                let loss = logits.apply_op1(PolicyLoss {
                    target: Arc::new(m.batch.target.clone()),
                    advantage: Arc::new(m.advantage.clone()),
                    old_logp: old.as_ref().map(|o| o[idx].clone()),
                    ref_logp: refs.as_ref().map(|r| r[idx].clone()),
                    clip_eps: cfg.clip_eps,
                    kl_coef: cfg.kl_coef,
                    normalizer: tokens as f32,
                    temperature: cfg.temperature,
                })?;
                let value = loss.to_scalar::<f32>()?;
                if !value.is_finite() {
                    return Err(RlError::Diverged(value));
                }
                loss_sum += value;
                accumulate(&mut acc, params, loss.backward()?)?;
            }
            if cfg.freeze_embeddings {
                for name in EMBEDDINGS {
                    if let Some(v) = params.vars.get(name) {
                        acc.remove(v.as_tensor());
                    }
                }
            }
            let norm = AdamW::grad_norm(&params.vars, &acc)?;
            let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
                cfg.grad_clip / norm
            } else {
                1.0
            };
            opt.step(&params.vars, &acc, cfg.lr, scale)?;
            stats.loss = loss_sum;
            stats.grad_norm = norm;
            stats.optimizer_steps += 1;
            stats.sampled_tokens += tokens;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(tokens: &[u32], sampled: &[(usize, u32)]) -> SampledSegment {
        SampledSegment {
            tokens: tokens.to_vec(),
            sampled: sampled.to_vec(),
        }
    }

    #[test]
    fn segments_become_sequences_with_only_sampled_tokens_weighted() {
        // Prompt [1, 5, 6], sampled 7 and 8, then the engine wrote 9, 10
        // (join text), then sampled 11, then a sampled end of sequence (2).
        let s = seg(
            &[1, 5, 6, 7, 8, 9, 10, 11],
            &[(3, 7), (4, 8), (7, 11), (8, 2)],
        );
        let q = Sequence::of_segment(&s, 0.5).unwrap();
        assert_eq!(q.tokens, vec![1, 5, 6, 7, 8, 9, 10, 11, 2]);
        let a = Some(0.5);
        assert_eq!(q.advantage, vec![None, None, a, a, None, None, a, a]);
        assert_eq!(q.sampled(), 4);
        // A sample taken back (its position now holds another token) is
        // not trained on; text after the last sample is cut.
        let s = seg(&[1, 5, 6, 7, 4, 4], &[(3, 7), (4, 8)]);
        let q = Sequence::of_segment(&s, -1.0).unwrap();
        assert_eq!(q.tokens, vec![1, 5, 6, 7, 4]);
        assert_eq!(q.advantage, vec![None, None, Some(-1.0), None]);
        assert!(Sequence::of_segment(&seg(&[1, 2], &[]), 1.0).is_none());
    }

    #[test]
    fn token_penalties_land_on_their_sampled_positions_only() {
        let s = seg(
            &[1, 5, 6, 7, 8, 9, 10, 11],
            &[(3, 7), (4, 8), (7, 11), (8, 2)],
        );
        // 4 and 7 are sampled; 5 is engine text, 0 the prompt, 20 nowhere.
        let at = |pos: &[usize], off: f32| pos.iter().map(|&p| (p, off)).collect::<Vec<_>>();
        let q = Sequence::of_segment_with(&s, 0.5, &at(&[0, 4, 5, 7, 20], -0.25)).unwrap();
        let (a, p) = (Some(0.5), Some(0.25));
        assert_eq!(q.advantage, vec![None, None, a, p, None, None, p, a]);
        // A bonus adds.
        let q = Sequence::of_segment_with(&s, 0.5, &at(&[4], 0.5)).unwrap();
        assert_eq!(q.advantage[3], Some(1.0));
        // With advantage 0 the penalty alone is the signal.
        let q = Sequence::of_segment_with(&s, 0.0, &at(&[4], -1.0)).unwrap();
        assert_eq!(q.advantage[3], Some(-1.0));
        assert_eq!(q.advantage[2], Some(0.0));
    }

    /// `freeze_embeddings` leaves the embedding bit for bit, and only it:
    /// the same update without the flag changes it, and the layers change
    /// either way.
    #[test]
    fn frozen_embeddings_do_not_move() {
        let shape = weft_train::ModelShape {
            vocab_size: 16,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: None,
            max_position_embeddings: 32,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        };
        let seqs = [Sequence {
            tokens: vec![1, 5, 6, 7, 8],
            advantage: vec![None, Some(-1.0), Some(1.0), Some(-2.0)],
        }];
        let run = |freeze_embeddings: bool| {
            let dev = candle_core::Device::Cpu;
            let params = LlamaParams::init(&shape, 3, &dev).unwrap();
            let before: Vec<(String, Vec<f32>)> = params
                .vars
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                    )
                })
                .collect();
            let mut opt = AdamW::new(&params.vars, 0.9, 0.95, 1e-8, 0.1).unwrap();
            let cfg = UpdateConfig {
                lr: 1e-2,
                clip_eps: 0.2,
                kl_coef: 0.0,
                epochs: 1,
                minibatches: 1,
                grad_clip: 1.0,
                seq_len: 16,
                micro_rows: 1,
                freeze_embeddings,
                temperature: 1.0,
            };
            let stats = update(&params, &mut opt, None, &seqs, &cfg, 0).unwrap();
            assert_eq!(stats.optimizer_steps, 1);
            before
                .into_iter()
                .map(|(n, b)| {
                    let after: Vec<f32> = params.vars[&n]
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    (n, b != after)
                })
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let frozen = run(true);
        let free = run(false);
        assert!(!frozen["model.embed_tokens.weight"]);
        assert!(free["model.embed_tokens.weight"]);
        let layers = |m: &std::collections::BTreeMap<String, bool>| {
            let proj: Vec<bool> = m
                .iter()
                .filter(|(n, _)| n.contains("layers.") && n.ends_with("proj.weight"))
                .map(|(_, &moved)| moved)
                .collect();
            proj.len() == 7 && proj.iter().all(|&moved| moved)
        };
        assert!(layers(&frozen) && layers(&free), "{frozen:?}");
    }

    #[test]
    fn packing_keeps_advantages_aligned_with_targets() {
        let a = Sequence {
            tokens: vec![1, 2, 3, 4],
            advantage: vec![None, Some(1.0), Some(1.0)],
        };
        let b = Sequence {
            tokens: vec![1, 7, 8],
            advantage: vec![Some(-1.0), None],
        };
        let (micros, cut) = pack(&[a.clone(), b.clone(), a.clone()], 6, 2, 0);
        assert_eq!(cut, 0);
        // Row 1: a (3 pairs) + b (2 pairs) + pad; row 2: a + pad; one micro.
        assert_eq!(micros.len(), 1);
        let m = &micros[0];
        assert_eq!(m.batch.rows, 2);
        assert_eq!(m.batch.target, vec![2, 3, 4, 7, 8, 0, 2, 3, 4, 0, 0, 0]);
        assert_eq!(
            m.advantage,
            vec![
                None,
                Some(1.0),
                Some(1.0),
                Some(-1.0),
                None,
                None,
                None,
                Some(1.0),
                Some(1.0),
                None,
                None,
                None
            ]
        );
        assert_eq!(m.batch.position, vec![0, 1, 2, 0, 1, 0, 0, 1, 2, 0, 0, 0]);
        assert_eq!(m.batch.segment[..6], [0, 0, 0, 1, 1, 2]);
        assert_eq!(m.sampled, 5);
        // One row per micro-batch: two micro-batches.
        assert_eq!(pack(&[a.clone(), b, a], 6, 1, 0).0.len(), 2);
    }
}
