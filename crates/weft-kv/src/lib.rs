//! `weft-kv`: bookkeeping for a paged KV cache.
//!
//! The KV memory itself lives with the model; this crate decides which block
//! of it each sequence uses. Main types:
//! - [`BlockPool`]: a fixed set of block ids with reference counts;
//! - [`BlockTable`]: the ordered blocks one sequence reads its KV through.
//!
//! Invariant: every block's reference count equals the number of tables that
//! hold it, and a block is on the free list exactly when its count is zero.

/// Errors from the pool.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache is full: {needed} more blocks needed, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
}

/// A fixed number of KV blocks, each with a reference count.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    ref_counts: Vec<u32>,
    free: Vec<u32>,
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_size: usize) -> BlockPool {
        BlockPool {
            block_size,
            ref_counts: vec![0; n_blocks],
            // Reversed so blocks are handed out in ascending order.
            free: (0..n_blocks as u32).rev().collect(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    fn allocate(&mut self) -> Result<u32, KvError> {
        let b = self
            .free
            .pop()
            .ok_or(KvError::OutOfBlocks { needed: 1, free: 0 })?;
        self.ref_counts[b as usize] = 1;
        Ok(b)
    }

    fn release(&mut self, block: u32) {
        let rc = &mut self.ref_counts[block as usize];
        debug_assert!(*rc > 0, "release of a free block");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(block);
        }
    }
}

/// The blocks one sequence reads and writes its KV through, and how many
/// token slots of them are in use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<u32>,
    len: usize,
}

impl BlockTable {
    pub fn new() -> BlockTable {
        BlockTable::default()
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Token slots in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `n` more tokens, allocating blocks as needed. On error
    /// nothing changes.
    pub fn grow(&mut self, pool: &mut BlockPool, n: usize) -> Result<(), KvError> {
        let need_slots = self.len + n;
        let need_blocks = need_slots.div_ceil(pool.block_size);
        let extra = need_blocks.saturating_sub(self.blocks.len());
        if extra > pool.n_free() {
            return Err(KvError::OutOfBlocks {
                needed: extra,
                free: pool.n_free(),
            });
        }
        for _ in 0..extra {
            self.blocks.push(pool.allocate()?);
        }
        self.len = need_slots;
        Ok(())
    }

    /// Returns every block to the pool.
    pub fn free(&mut self, pool: &mut BlockPool) {
        for b in self.blocks.drain(..) {
            pool.release(b);
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_free_return_the_pool() {
        let mut pool = BlockPool::new(4, 16);
        let mut t = BlockTable::new();
        t.grow(&mut pool, 17).unwrap();
        assert_eq!(t.blocks(), &[0, 1]);
        assert_eq!(pool.n_free(), 2);
        t.grow(&mut pool, 15).unwrap();
        assert_eq!(t.blocks().len(), 2);
        let err = t.grow(&mut pool, 64).unwrap_err();
        assert_eq!(err, KvError::OutOfBlocks { needed: 4, free: 2 });
        assert_eq!(t.len(), 32, "a failed grow changes nothing");
        t.free(&mut pool);
        assert_eq!(pool.n_free(), 4);
        assert!((0..4).all(|b| pool.ref_count(b) == 0));
    }
}
