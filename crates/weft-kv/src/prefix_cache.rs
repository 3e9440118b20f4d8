//! Prefix caching across requests: chained block hashes, the map from hash to
//! cached block, and the LRU order of cached blocks nobody references.
//!
//! A full block's [`BlockHash`] covers its own token ids and, through its
//! parent's hash, every token before it, so equal hashes mean equal prefixes
//! (up to a 128-bit collision) and therefore equal KV. A cached block stays in
//! the map while referenced; when its last reference goes it is *parked* in the
//! LRU instead of being freed, and a later request may pick it up again. When
//! the pool runs out of free blocks it evicts the least recently parked one.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::{BlockId, KvError};

/// The identity of a full block's content: a hash of its parent block's hash
/// (none for the first block) and its own token ids, vLLM style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(u128);

impl BlockHash {
    /// The hash of a block holding `tokens` after the block hashed `parent`.
    pub fn chain(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        // Two independently seeded 64-bit SipHashes: a collision would silently
        // serve one prompt another prompt's KV, so 64 bits alone is too few.
        let lane = |seed: u8| {
            // `DefaultHasher::new` uses fixed keys, so hashes agree within a process.
            let mut h = DefaultHasher::new();
            seed.hash(&mut h);
            parent.hash(&mut h);
            tokens.hash(&mut h);
            h.finish()
        };
        BlockHash((u128::from(lane(0)) << 64) | u128::from(lane(1)))
    }

    /// The chained hashes of every full block of `tokens`.
    pub fn chain_all(tokens: &[u32], block_size: usize) -> impl Iterator<Item = BlockHash> + '_ {
        let mut parent = None;
        tokens.chunks_exact(block_size.max(1)).map(move |block| {
            let hash = BlockHash::chain(parent, block);
            parent = Some(hash);
            hash
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct CacheEntry {
    hash: BlockHash,
    /// `Some` exactly while the block is unreferenced (parked in the LRU).
    parked_at: Option<u64>,
}

/// Which blocks hold cached prefixes, and in what order to evict them.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    by_hash: HashMap<BlockHash, BlockId>,
    /// Indexed by block id.
    entries: Vec<Option<CacheEntry>>,
    /// Unreferenced cached blocks by the time they were parked, oldest first.
    lru: BTreeMap<u64, BlockId>,
    next_tick: u64,
}

impl PrefixCache {
    pub(crate) fn new(n_blocks: usize) -> PrefixCache {
        PrefixCache {
            by_hash: HashMap::new(),
            entries: vec![None; n_blocks],
            lru: BTreeMap::new(),
            next_tick: 0,
        }
    }

    pub(crate) fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.by_hash.get(&hash).copied()
    }

    pub(crate) fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.entry(block).map(|e| e.hash)
    }

    pub(crate) fn is_parked(&self, block: BlockId) -> bool {
        self.entry(block).is_some_and(|e| e.parked_at.is_some())
    }

    pub(crate) fn n_parked(&self) -> usize {
        self.lru.len()
    }

    pub(crate) fn n_cached(&self) -> usize {
        self.by_hash.len()
    }

    /// Records that referenced `block` holds the content `hash`. Returns
    /// whether it was newly cached: when another block already holds the same
    /// content the first one stays the cached copy and this is a no-op.
    pub(crate) fn insert(&mut self, block: BlockId, hash: BlockHash) -> Result<bool, KvError> {
        if let Some(entry) = self.entry(block) {
            return if entry.hash == hash {
                Ok(false)
            } else {
                Err(KvError::HashConflict { block })
            };
        }
        if self.by_hash.contains_key(&hash) {
            return Ok(false);
        }
        self.by_hash.insert(hash, block);
        self.entries[block as usize] = Some(CacheEntry {
            hash,
            parked_at: None,
        });
        Ok(true)
    }

    /// The cached `block` lost its last reference: make it evictable, newest last.
    pub(crate) fn park(&mut self, block: BlockId) {
        let tick = self.next_tick;
        if let Some(entry) = self.entry_mut(block) {
            if entry.parked_at.is_none() {
                entry.parked_at = Some(tick);
                self.lru.insert(tick, block);
                self.next_tick += 1;
            }
        }
    }

    /// The parked `block` is referenced again: it may no longer be evicted.
    pub(crate) fn unpark(&mut self, block: BlockId) {
        if let Some(tick) = self.entry_mut(block).and_then(|e| e.parked_at.take()) {
            self.lru.remove(&tick);
        }
    }

    /// Forgets the least recently parked block and returns it for reuse.
    pub(crate) fn evict_oldest(&mut self) -> Option<BlockId> {
        let (_, block) = self.lru.pop_first()?;
        if let Some(entry) = self.entries[block as usize].take() {
            self.by_hash.remove(&entry.hash);
        }
        Some(block)
    }

    /// Blocks parked in the LRU, oldest first (for audits and tests).
    pub(crate) fn parked(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.lru.values().copied()
    }

    /// Every `(hash, block)` in the map (for audits).
    pub(crate) fn mapped(&self) -> impl Iterator<Item = (BlockHash, BlockId)> + '_ {
        self.by_hash.iter().map(|(h, b)| (*h, *b))
    }

    fn entry(&self, block: BlockId) -> Option<&CacheEntry> {
        self.entries.get(block as usize)?.as_ref()
    }

    fn entry_mut(&mut self, block: BlockId) -> Option<&mut CacheEntry> {
        self.entries.get_mut(block as usize)?.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_hash_depends_on_every_earlier_token() {
        let a = BlockHash::chain_all(&[1, 2, 3, 4, 5, 6], 2).collect::<Vec<_>>();
        let b = BlockHash::chain_all(&[9, 2, 3, 4, 5, 6], 2).collect::<Vec<_>>();
        assert_eq!(a.len(), 3);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        assert_eq!(a[2], BlockHash::chain(Some(a[1]), &[5, 6]));
        assert_ne!(BlockHash::chain(None, &[5, 6]), a[2]);
    }

    #[test]
    fn eviction_takes_the_least_recently_parked_block() {
        let mut cache = PrefixCache::new(4);
        for b in 0..3 {
            assert_eq!(cache.insert(b, BlockHash::chain(None, &[b])), Ok(true));
        }
        cache.park(2);
        cache.park(0);
        cache.park(1);
        cache.unpark(0);
        assert_eq!(cache.evict_oldest(), Some(2));
        assert_eq!(cache.lookup(BlockHash::chain(None, &[2])), None);
        assert_eq!(cache.evict_oldest(), Some(1));
        assert_eq!(cache.evict_oldest(), None, "block 0 is referenced again");
        assert_eq!(cache.n_cached(), 1);
    }

    #[test]
    fn the_first_block_with_some_content_stays_the_cached_one() {
        let mut cache = PrefixCache::new(2);
        let h = BlockHash::chain(None, &[7]);
        assert_eq!(cache.insert(0, h), Ok(true));
        assert_eq!(cache.insert(1, h), Ok(false));
        assert_eq!(cache.insert(0, h), Ok(false));
        let other = BlockHash::chain(None, &[8]);
        assert_eq!(
            cache.insert(0, other),
            Err(KvError::HashConflict { block: 0 })
        );
        assert_eq!(cache.lookup(h), Some(0));
        assert_eq!(cache.hash_of(1), None);
    }
}
