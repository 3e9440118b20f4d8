//! The block pool: a fixed set of KV blocks, their reference counts, the free
//! list, and the prefix cache of blocks whose content is known by hash.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::prefix_cache::{BlockHash, PrefixCache};
use crate::{BlockId, KvError};

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(0);

/// Tells pools apart, so a table used with the wrong pool is an error rather
/// than a corrupted reference count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolId(u64);

/// Sizes a pool from a memory budget instead of a block count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Token slots per block.
    pub block_size: usize,
    /// Bytes one block takes in the KV memory, over all layers, keys and values.
    pub bytes_per_block: usize,
    /// The KV memory budget in MiB (2^20 bytes).
    pub budget_mib: usize,
}

/// What a block is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Unreferenced and holding nothing worth keeping.
    Free,
    /// Unreferenced but holding a cached prefix; reclaimable by eviction.
    Cached,
    /// Held by `ref_count` block tables.
    Used { ref_count: u32 },
}

/// Counters since the pool was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Blocks taken from the prefix cache instead of being computed.
    pub prefix_hit_blocks: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
    /// Shared partial blocks copied on first write.
    pub copy_on_writes: u64,
}

/// A fixed number of KV blocks of `block_size` token slots each, with a
/// reference count per block. See the crate docs for the invariants.
#[derive(Debug)]
pub struct BlockPool {
    id: PoolId,
    block_size: usize,
    ref_counts: Vec<u32>,
    /// Unreferenced, uncached blocks; popped from the end.
    free: Vec<BlockId>,
    cache: PrefixCache,
    stats: PoolStats,
}

impl BlockPool {
    /// A pool of `n_blocks` blocks of `block_size` token slots.
    pub fn new(n_blocks: usize, block_size: usize) -> Result<BlockPool, KvError> {
        if block_size == 0 {
            return Err(KvError::ZeroBlockSize);
        }
        let max = u32::MAX as usize;
        if n_blocks > max {
            return Err(KvError::TooManyBlocks { n_blocks, max });
        }
        Ok(BlockPool {
            id: PoolId(NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed)),
            block_size,
            ref_counts: vec![0; n_blocks],
            // Reversed so blocks are handed out in ascending order.
            free: (0..n_blocks as BlockId).rev().collect(),
            cache: PrefixCache::new(n_blocks),
            stats: PoolStats::default(),
        })
    }

    /// A pool with as many blocks as fit in `config.budget_mib` MiB.
    pub fn with_budget(config: BudgetConfig) -> Result<BlockPool, KvError> {
        if config.bytes_per_block == 0 {
            return Err(KvError::ZeroBytesPerBlock);
        }
        let bytes = config.budget_mib.saturating_mul(1 << 20);
        let n_blocks = bytes / config.bytes_per_block;
        if n_blocks == 0 {
            return Err(KvError::BudgetTooSmall {
                budget_mib: config.budget_mib,
                bytes_per_block: config.bytes_per_block,
            });
        }
        BlockPool::new(n_blocks, config.block_size)
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks neither referenced nor cached.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Unreferenced cached blocks: evicted, oldest first, when `n_free` is zero.
    pub fn n_evictable(&self) -> usize {
        self.cache.n_parked()
    }

    /// Blocks an allocation can get: free plus evictable.
    pub fn n_available(&self) -> usize {
        self.n_free() + self.n_evictable()
    }

    /// Blocks held by at least one table.
    pub fn n_used(&self) -> usize {
        self.n_blocks() - self.n_available()
    }

    /// Blocks registered in the prefix cache, referenced or not.
    pub fn n_cached(&self) -> usize {
        self.cache.n_cached()
    }

    /// `None` for an id outside the pool.
    pub fn ref_count(&self, block: BlockId) -> Option<u32> {
        self.ref_counts.get(block as usize).copied()
    }

    /// `None` for an id outside the pool.
    pub fn block_state(&self, block: BlockId) -> Option<BlockState> {
        let ref_count = self.ref_count(block)?;
        Some(if ref_count > 0 {
            BlockState::Used { ref_count }
        } else if self.cache.is_parked(block) {
            BlockState::Cached
        } else {
            BlockState::Free
        })
    }

    /// The prefix hash a block is cached under, if any.
    pub fn block_hash(&self, block: BlockId) -> Option<BlockHash> {
        self.cache.hash_of(block)
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// How many leading tokens of `tokens` have their KV in the cache, in
    /// whole blocks. Changes nothing; see [`crate::BlockTable::from_prefix_cache`].
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        self.match_prefix(tokens).count() * self.block_size
    }

    /// The cached blocks holding the longest block-aligned prefix of `tokens`,
    /// with their hashes.
    pub(crate) fn match_prefix<'a>(
        &'a self,
        tokens: &'a [u32],
    ) -> impl Iterator<Item = (BlockId, BlockHash)> + 'a {
        BlockHash::chain_all(tokens, self.block_size)
            .map_while(|hash| self.cache.lookup(hash).map(|block| (block, hash)))
    }

    pub(crate) fn id(&self) -> PoolId {
        self.id
    }

    pub(crate) fn free_list(&self) -> &[BlockId] {
        &self.free
    }

    pub(crate) fn cache(&self) -> &PrefixCache {
        &self.cache
    }

    pub(crate) fn stats_mut(&mut self) -> &mut PoolStats {
        &mut self.stats
    }

    /// Takes a block with reference count one: a free one if any, else the
    /// least recently used cached one.
    pub(crate) fn allocate(&mut self) -> Result<BlockId, KvError> {
        let block = match self.free.pop() {
            Some(block) => block,
            None => {
                let block = self.cache.evict_oldest().ok_or(KvError::OutOfBlocks {
                    needed: 1,
                    available: 0,
                })?;
                self.stats.evictions += 1;
                block
            }
        };
        self.ref_counts[block as usize] = 1;
        Ok(block)
    }

    /// Adds a reference to a block that is in use or cached.
    pub(crate) fn retain(&mut self, block: BlockId) -> Result<(), KvError> {
        let count = self.ref_counts[block as usize];
        if count == 0 {
            self.cache.unpark(block);
        }
        self.ref_counts[block as usize] = count
            .checked_add(1)
            .ok_or(KvError::RefCountOverflow { block })?;
        Ok(())
    }

    /// Drops a reference; at zero the block is parked if cached, else freed.
    pub(crate) fn release(&mut self, block: BlockId) {
        let count = &mut self.ref_counts[block as usize];
        debug_assert!(*count > 0, "release of unreferenced block {block}");
        if *count == 0 {
            return;
        }
        *count -= 1;
        if *count == 0 {
            if self.cache.hash_of(block).is_some() {
                self.cache.park(block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Caches referenced `block` under `hash`; see [`PrefixCache::insert`].
    pub(crate) fn register(&mut self, block: BlockId, hash: BlockHash) -> Result<bool, KvError> {
        self.cache.insert(block, hash)
    }
}
