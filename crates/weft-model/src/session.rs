//! One sequence's logits, for tests and tools that compare weft's numbers
//! with another implementation's (llama.cpp parity, HF against GGUF).
//!
//! This is not a decode path: every generation (`weft run`, `weft bench`,
//! evaluation, the server) goes through `weft-engine`, which batches many
//! sequences through the same [`Model::forward`].

use weft_kv::{BlockPool, BlockTable};

use crate::error::{ModelError, Result};
use crate::forward::{SeqStep, Workspace};
use crate::kv_cache::KvCache;
use crate::model::Model;

/// Token slots per KV block of a [`Session`].
pub const BLOCK_SIZE: usize = 16;

/// One sequence's KV blocks and buffers: feed tokens, read logits.
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
