//! Choosing the next token from logits: greedy, or temperature with top-k,
//! top-p and min-p filtering (applied in that order, as llama.cpp does), from
//! a seeded generator.

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    pub seed: u64,
    /// 1.0 disables. Applied as `transformers` and SGLang apply it, to the
    /// raw logits before temperature, once per distinct token of the
    /// history [`Sampler::sample_with_history`] is given: a positive logit
    /// is divided by it, a negative one multiplied.
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            repetition_penalty: 1.0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
    candidates: Vec<(u32, f32)>,
    /// Penalized logits (only with a repetition penalty).
    scratch: Vec<f32>,
}

/// Index of the largest value (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax probabilities of `logits`.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

impl Sampler {
    /// The parameters this sampler was made with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: rand::rngs::StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// [`Sampler::sample`] after the repetition penalty on the tokens of
    /// `history` (the thread's own generated tokens, as SGLang's penalizer
    /// counts them: its prompt is not penalized). Ids outside the
    /// vocabulary are skipped.
    pub fn sample_with_history(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_penalized(logits, history, self.params.repetition_penalty)
    }

    /// [`Sampler::sample_with_history`] with the repetition penalty given
    /// here instead of the sampler's own (one that changes while a thread
    /// decodes, as NPR's engine changes it at forks and merges).
    pub fn sample_penalized(&mut self, logits: &[f32], history: &[u32], penalty: f32) -> u32 {
        if penalty == 1.0 || history.is_empty() {
            return self.sample(logits);
        }
        let mut penalized = std::mem::take(&mut self.scratch);
        penalized.clear();
        penalized.extend_from_slice(logits);
        let mut seen = std::collections::HashSet::with_capacity(history.len());
        for &id in history {
            if let Some(v) = penalized.get_mut(id as usize) {
                if seen.insert(id) {
                    *v = if *v < 0.0 { *v * penalty } else { *v / penalty };
                }
            }
        }
        let next = self.sample(&penalized);
        self.scratch = penalized;
        next
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, v)| (i as u32, *v)));
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 && p.top_k < c.len() {
            c.truncate(p.top_k);
        }
        // Probabilities at temperature 1 for the nucleus and min-p filters.
        let max = c[0].1;
        let probs: Vec<f32> = c.iter().map(|x| (x.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, pr) in probs.iter().enumerate() {
                acc += pr / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            let keep = probs
                .iter()
                .take(c.len())
                .take_while(|pr| **pr >= floor)
                .count();
            c.truncate(keep.max(1));
        }
        let weights: Vec<f32> = c
            .iter()
            .map(|x| ((x.1 - max) / p.temperature).exp())
            .collect();
        let sum: f32 = weights.iter().sum();
        let mut r = self.rng.gen::<f32>() * sum;
        for (i, w) in weights.iter().enumerate() {
            r -= w;
            if r <= 0.0 {
                return c[i].0;
            }
        }
        c[c.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_scales_seen_tokens_once_each() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        // Greedy: token 0 (3.0) wins until penalized to 1.5 < 2.0.
        assert_eq!(s.sample_with_history(&[3.0, 2.0, -1.0], &[]), 0);
        assert_eq!(s.sample_with_history(&[3.0, 2.0, -1.0], &[0]), 1);
        // Once per distinct token, not per occurrence: 3.0 / 2 = 1.5 > 1.4.
        assert_eq!(s.sample_with_history(&[3.0, 1.4, -1.0], &[0, 0, 0]), 0);
        // A negative logit is multiplied: -1 * 2 < -1.5.
        assert_eq!(s.sample_with_history(&[-1.0, -1.5], &[0]), 1);
        // Ids outside the vocabulary are ignored.
        assert_eq!(s.sample_with_history(&[1.0, 0.0], &[7]), 0);
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            seed: 42,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        // The three largest logits are the three ids with i % 7 == 6 lowest first: 6, 13, 20 (stable order not
        // guaranteed), all with value 1.8.
        assert!(a.iter().all(|t| t % 7 == 6), "{a:?}");
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [10.0, 9.0, 0.0, -5.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.2,
            seed: 1,
            ..Default::default()
        });
        assert!((0..200).all(|_| s.sample(&logits) < 2));
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_p: 0.5,
            seed: 1,
            ..Default::default()
        });
        assert!((0..200).all(|_| s.sample(&logits) == 0));
    }
}
