//! A full consistency check of a pool against the tables that use it, for
//! tests here and in the crates above (the engine's property tests).

use crate::{BlockPool, BlockTable, KvError};

impl BlockPool {
    /// Checks every architecture invariant of the crate docs, given every
    /// live table that holds blocks of this pool. Costs O(blocks + total
    /// table length); meant for tests and debug checks, not the hot path.
    pub fn audit<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a BlockTable>,
    ) -> Result<(), KvError> {
        let fail = |msg: String| Err(KvError::Inconsistent(msg));
        let n_blocks = self.n_blocks();
        let block_size = self.block_size();

        let mut holders = vec![0u64; n_blocks];
        for (i, table) in tables.into_iter().enumerate() {
            if !table.blocks().is_empty() && table.pool_id() != Some(self.id()) {
                return fail(format!("table {i} holds blocks of another pool"));
            }
            if table.blocks().len() != table.len().div_ceil(block_size) {
                return fail(format!(
                    "table {i} has {} blocks for {} slots",
                    table.blocks().len(),
                    table.len()
                ));
            }
            if table.n_hashed() > table.len() / block_size {
                return fail(format!("table {i} hashes more blocks than are full"));
            }
            let mut seen = table.blocks().to_vec();
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return fail(format!("table {i} holds a block twice"));
            }
            for &block in table.blocks() {
                match holders.get_mut(block as usize) {
                    Some(count) => *count += 1,
                    None => return fail(format!("table {i} holds unknown block {block}")),
                }
            }
        }

        // 0: unreferenced and not yet seen, 1: on the free list, 2: parked.
        let mut place = vec![0u8; n_blocks];
        for (block, &held) in holders.iter().enumerate() {
            let count = self.ref_count(block as u32).unwrap_or(0);
            if u64::from(count) != held {
                return fail(format!(
                    "block {block} has ref-count {count} but {held} tables hold it"
                ));
            }
        }
        for &block in self.free_list() {
            if self.ref_count(block) != Some(0) {
                return fail(format!("block {block} is free but referenced"));
            }
            if self.cache().hash_of(block).is_some() {
                return fail(format!("block {block} is free but cached"));
            }
            if std::mem::replace(&mut place[block as usize], 1) != 0 {
                return fail(format!("block {block} is on the free list twice"));
            }
        }
        for block in self.cache().parked() {
            if self.ref_count(block) != Some(0) {
                return fail(format!("block {block} is evictable but referenced"));
            }
            if std::mem::replace(&mut place[block as usize], 2) != 0 {
                return fail(format!("block {block} is parked twice or also free"));
            }
        }
        for (block, &p) in place.iter().enumerate() {
            let unreferenced = self.ref_count(block as u32) == Some(0);
            if unreferenced != (p != 0) {
                return fail(format!(
                    "block {block}: unreferenced is {unreferenced} but free-or-evictable is {}",
                    p != 0
                ));
            }
        }

        let mut n_hashed_blocks = 0;
        for block in 0..n_blocks as u32 {
            if let Some(hash) = self.cache().hash_of(block) {
                n_hashed_blocks += 1;
                if self.cache().lookup(hash) != Some(block) {
                    return fail(format!("block {block}'s hash maps elsewhere"));
                }
            }
        }
        for (hash, block) in self.cache().mapped() {
            if self.cache().hash_of(block) != Some(hash) {
                return fail(format!(
                    "the cache maps a hash to block {block}, which lacks it"
                ));
            }
        }
        if n_hashed_blocks != self.n_cached() {
            return fail("cached block count disagrees with the hash map".into());
        }
        Ok(())
    }
}
