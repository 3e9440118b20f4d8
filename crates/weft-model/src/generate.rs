//! Generation for one sequence: prefill a prompt, then decode token by token,
//! streaming text, until a stop token, a stop string or the token limit. This
//! is the simple path used by `weft run` and `weft bench`; the engine batches
//! many sequences through the same [`Model::forward`].

use std::time::Instant;

use weft_kv::{BlockPool, BlockTable};

use crate::error::{ModelError, Result};
use crate::forward::{SeqStep, Workspace};
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

pub const BLOCK_SIZE: usize = 16;

/// One sequence's KV blocks and buffers.
pub struct Session<'m> {
    model: &'m Model,
    kv: KvCache,
    pool: BlockPool,
    table: BlockTable,
    ws: Workspace,
    /// Tokens whose KV is in the cache.
    pub tokens: Vec<u32>,
    /// Prompt tokens per forward step during prefill.
    pub prefill_chunk: usize,
}

impl<'m> Session<'m> {
    /// A session with room for `max_len` tokens.
    pub fn new(model: &'m Model, max_len: usize) -> Session<'m> {
        let n_blocks = max_len.div_ceil(BLOCK_SIZE).max(1);
        Session {
            model,
            kv: KvCache::new(&model.config, BLOCK_SIZE, n_blocks),
            pool: BlockPool::new(n_blocks, BLOCK_SIZE).expect("BLOCK_SIZE is not zero"),
            table: BlockTable::new(),
            ws: Workspace::default(),
            tokens: Vec::new(),
            prefill_chunk: 512,
        }
    }

    /// Forgets the context (keeps the memory).
    pub fn reset(&mut self) {
        // The table only ever takes blocks from this session's pool.
        let _ = self.table.free(&mut self.pool);
        self.tokens.clear();
    }

    /// Runs `tokens` after the current context; returns the last token's
    /// logits, or every token's logits (`tokens.len() * vocab`) with `all`.
    pub fn feed(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid("nothing to feed".into()));
        }
        let mut out = Vec::new();
        for chunk in tokens.chunks(self.prefill_chunk.max(1)) {
            let start = self.table.len();
            let copy = self.table.grow(&mut self.pool, chunk.len()).map_err(|e| {
                ModelError::Invalid(format!(
                    "context full ({} tokens): {e}",
                    self.pool.n_blocks() * BLOCK_SIZE
                ))
            })?;
            // Only forked tables share blocks, so this is a no-op here.
            if let Some(copy) = copy {
                self.kv.copy_block(copy.src, copy.dst, copy.n_slots);
            }
            let step = SeqStep {
                tokens: chunk,
                pos_start: start,
                kv_start: start,
                block_table: self.table.blocks(),
                all_logits: all,
                shared: &[],
            };
            let mut logits = self.model.forward(&mut self.kv, &[step], &mut self.ws)?;
            self.tokens.extend_from_slice(chunk);
            if all {
                out.append(&mut logits[0]);
            } else {
                out = std::mem::take(&mut logits[0]);
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not output.
    pub stop: Vec<String>,
    /// Extra token ids that stop generation (the tokenizer's EOS/EOT always do).
    pub stop_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    StopString,
    MaxTokens,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub decode_secs: f64,
    pub stop_reason: StopReason,
}

pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stats: GenerateStats,
}

/// Holds back text that might be the start of a stop string.
struct StopFilter<'a> {
    stops: &'a [String],
    pending: String,
}

impl StopFilter<'_> {
    /// Returns the text safe to emit, and whether a stop string was hit.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|k| s.is_char_boundary(*k))
                    .map(move |k| &s[..k])
            })
            .filter(|p| self.pending.ends_with(p))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }
}

/// Generates from `prompt` (token ids), calling `on_text` with each new piece.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::Invalid("the prompt is empty".into()));
    }
    let max_len = prompt.len() + params.max_tokens;
    if max_len > model.config.max_context {
        return Err(ModelError::Invalid(format!(
            "prompt ({} tokens) + max tokens ({}) exceeds the model's context of {} tokens",
            prompt.len(),
            params.max_tokens,
            model.config.max_context
        )));
    }
    let mut session = Session::new(model, max_len);
    let mut sampler = Sampler::new(params.sampling.clone());
    let t0 = Instant::now();
    let mut logits = session.feed(prompt, false)?;
    let prompt_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut decoder = StreamDecoder::default();
    let mut filter = StopFilter {
        stops: &params.stop,
        pending: String::new(),
    };
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut reason = StopReason::MaxTokens;
    while tokens.len() < params.max_tokens {
        let next = sampler.sample(&logits);
        if tokenizer.is_stop(next) || params.stop_ids.contains(&next) {
            reason = StopReason::StopToken;
            break;
        }
        tokens.push(next);
        if let Some(piece) = decoder.push(tokenizer, next)? {
            let (out, hit) = filter.push(&piece);
            text.push_str(&out);
            on_text(&out);
            if hit {
                reason = StopReason::StopString;
                break;
            }
        }
        if tokens.len() == params.max_tokens {
            break;
        }
        logits = session.feed(&[next], false)?;
    }
    if reason != StopReason::StopString && !filter.pending.is_empty() {
        text.push_str(&filter.pending);
        on_text(&filter.pending);
    }
    Ok(Generation {
        text,
        stats: GenerateStats {
            prompt_tokens: prompt.len(),
            prompt_secs,
            generated_tokens: tokens.len(),
            decode_secs: t1.elapsed().as_secs_f64(),
            stop_reason: reason,
        },
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_holds_back_partial_matches() {
        let stops = vec!["</s>".to_string()];
        let mut f = StopFilter {
            stops: &stops,
            pending: String::new(),
        };
        assert_eq!(f.push("hello <"), ("hello ".to_string(), false));
        assert_eq!(f.push("/"), (String::new(), false));
        assert_eq!(f.push("x"), ("</x".to_string(), false));
        assert_eq!(f.push("ab</s>cd"), ("ab".to_string(), true));
    }
}
