//! Block tables: the blocks one sequence (thread) reads and writes its KV
//! through, with fork, growth with copy-on-write, prefix registration and free.

use crate::pool::{BlockPool, PoolId};
use crate::prefix_cache::BlockHash;
use crate::{BlockId, KvError};

/// A copy the caller must make in the KV memory before writing to `dst`:
/// the first `n_slots` token slots of block `src`, in every layer, into block
/// `dst` (weft-model's `KvCache::copy_block(src, dst, n_slots)`).
///
/// `src` stays referenced by another table, so it keeps its content until that
/// table is freed; apply the copy before freeing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOp {
    pub src: BlockId,
    pub dst: BlockId,
    pub n_slots: usize,
}

/// The ordered blocks one sequence reads its KV through, and how many token
/// slots of them are in use: slot `i` is slot `i % block_size` of block
/// `blocks()[i / block_size]`.
///
/// A table holds one reference to each of its blocks. It is deliberately not
/// `Clone` (a copy would hold blocks without references): use [`Self::fork`].
/// Give its blocks back with [`Self::free`]; dropping a table that still holds
/// blocks leaks them (and [`BlockPool::audit`] reports it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// The pool the blocks come from; `None` while the table holds none.
    pool: Option<PoolId>,
    blocks: Vec<BlockId>,
    len: usize,
    /// Leading full blocks whose prefix hash is known (registered, or found
    /// in the cache); the chain continues from `last_hash`.
    n_hashed: usize,
    last_hash: Option<BlockHash>,
}

impl BlockTable {
    /// An empty table, not yet tied to a pool.
    pub fn new() -> BlockTable {
        BlockTable::default()
    }

    /// A table that starts with the longest block-aligned prefix of `tokens`
    /// whose KV is already cached, sharing those blocks instead of computing
    /// them again. Its [`len`](Self::len) is the number of cached tokens: the
    /// caller computes only `tokens[len..]`.
    ///
    /// The caller needs at least one token to compute to get logits: look up
    /// `&prompt[..prompt.len() - 1]` when the whole prompt might be cached.
    pub fn from_prefix_cache(pool: &mut BlockPool, tokens: &[u32]) -> Result<BlockTable, KvError> {
        let hits: Vec<(BlockId, BlockHash)> = pool.match_prefix(tokens).collect();
        let mut table = BlockTable::new();
        for &(block, hash) in &hits {
            if let Err(e) = pool.retain(block) {
                table.free(pool)?;
                return Err(e);
            }
            table.pool = Some(pool.id());
            table.blocks.push(block);
            table.len += pool.block_size();
            table.n_hashed += 1;
            table.last_hash = Some(hash);
        }
        pool.stats_mut().prefix_hit_blocks += hits.len() as u64;
        Ok(table)
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Token slots in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Leading full blocks whose prefix hash is known, so registered in the
    /// cache or found there.
    pub fn n_hashed_blocks(&self) -> usize {
        self.n_hashed
    }

    /// A child table sharing every block of this one: each block gains one
    /// reference and no KV is copied, so the cost is linear in the number of
    /// blocks and independent of everything else. A shared partial last block
    /// is copied later, by whichever table first appends to it (see
    /// [`Self::grow`]).
    pub fn fork(&self, pool: &mut BlockPool) -> Result<BlockTable, KvError> {
        self.check_pool(pool)?;
        for (i, &block) in self.blocks.iter().enumerate() {
            if let Err(e) = pool.retain(block) {
                for &done in &self.blocks[..i] {
                    pool.release(done);
                }
                return Err(e);
            }
        }
        Ok(BlockTable {
            pool: self.pool,
            blocks: self.blocks.clone(),
            len: self.len,
            n_hashed: self.n_hashed,
            last_hash: self.last_hash,
        })
    }

    /// Makes room for `n` more tokens, taking blocks from the pool as needed
    /// (free ones first, then evicting the least recently used cached ones).
    ///
    /// If the last block is partial and shared with another table, this table
    /// first moves to a fresh block: the returned [`CopyOp`] names the copy
    /// the caller must make in the KV memory before writing the new slots.
    /// There is at most one, because only the last block can be partial.
    ///
    /// On error nothing changes, in this table or in the pool.
    pub fn grow(&mut self, pool: &mut BlockPool, n: usize) -> Result<Option<CopyOp>, KvError> {
        self.check_pool(pool)?;
        if n == 0 {
            return Ok(None);
        }
        let block_size = pool.block_size();
        let new_len = self.len.checked_add(n).ok_or(KvError::LengthOverflow)?;
        let new_blocks = new_len.div_ceil(block_size) - self.blocks.len();
        let used_in_last = self.len % block_size;
        let shared_partial = match self.blocks.last() {
            Some(&last) if used_in_last > 0 && pool.ref_count(last) > Some(1) => Some(last),
            _ => None,
        };
        let needed = new_blocks + usize::from(shared_partial.is_some());
        if needed > pool.n_available() {
            return Err(KvError::OutOfBlocks {
                needed,
                available: pool.n_available(),
            });
        }
        self.pool = Some(pool.id());
        let copy = match shared_partial {
            Some(src) => {
                let dst = pool.allocate()?;
                // Another table still holds `src`, so this never frees it.
                pool.release(src);
                if let Some(last) = self.blocks.last_mut() {
                    *last = dst;
                }
                pool.stats_mut().copy_on_writes += 1;
                Some(CopyOp {
                    src,
                    dst,
                    n_slots: used_in_last,
                })
            }
            None => None,
        };
        for _ in 0..new_blocks {
            let block = pool.allocate()?;
            self.blocks.push(block);
        }
        self.len = new_len;
        Ok(copy)
    }

    /// Registers this table's full blocks in the prefix cache, so later
    /// requests with the same prefix can share them. `tokens` are the token
    /// ids in this table's slots from slot 0, for as many slots as have their
    /// KV written (a prefix of the table: call this after the forward pass).
    ///
    /// Only blocks whose slots hold tokens at positions equal to their slot
    /// index may be registered; a layout with shifted positions (KV-merge
    /// joins) must not be. Returns how many blocks were newly cached (a block
    /// whose content another block already caches is not).
    pub fn register_full_blocks(
        &mut self,
        pool: &mut BlockPool,
        tokens: &[u32],
    ) -> Result<usize, KvError> {
        self.check_pool(pool)?;
        if tokens.len() > self.len {
            return Err(KvError::TokensBeyondTable {
                tokens: tokens.len(),
                len: self.len,
            });
        }
        let block_size = pool.block_size();
        let full = tokens.len() / block_size;
        let mut newly_cached = 0;
        for i in self.n_hashed..full {
            let hash = BlockHash::chain(self.last_hash, &tokens[i * block_size..][..block_size]);
            newly_cached += usize::from(pool.register(self.blocks[i], hash)?);
            self.n_hashed = i + 1;
            self.last_hash = Some(hash);
        }
        Ok(newly_cached)
    }

    /// Returns every block to the pool and leaves the table empty (and free to
    /// be used with any pool); freeing an empty table does nothing. Cached
    /// blocks stay cached: the last blocks of the sequence are released first,
    /// so they are evicted first and a prefix never outlives its start.
    pub fn free(&mut self, pool: &mut BlockPool) -> Result<(), KvError> {
        self.check_pool(pool)?;
        for block in self.blocks.drain(..).rev() {
            pool.release(block);
        }
        *self = BlockTable::new();
        Ok(())
    }

    pub(crate) fn pool_id(&self) -> Option<PoolId> {
        self.pool
    }

    pub(crate) fn n_hashed(&self) -> usize {
        self.n_hashed
    }

    fn check_pool(&self, pool: &BlockPool) -> Result<(), KvError> {
        match self.pool {
            Some(id) if id != pool.id() => Err(KvError::WrongPool),
            _ => Ok(()),
        }
    }
}
