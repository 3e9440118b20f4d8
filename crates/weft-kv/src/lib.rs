//! `weft-kv`: bookkeeping for a paged KV cache shared by forking threads.
//!
//! The KV memory itself lives with the model (weft-model's `KvCache`); this
//! crate only decides which block of it each sequence uses, when blocks can
//! be shared, when one must be copied, and which can be reused across
//! requests. It is what makes a fork cost a block-table copy rather than a
//! copy of the context.
//!
//! # Main types
//! - [`BlockPool`]: a fixed set of blocks of `block_size` token slots, sized
//!   by count ([`BlockPool::new`]) or by a MiB budget ([`BlockPool::with_budget`]);
//!   reference counts, the free list and the prefix cache.
//! - [`BlockTable`]: the ordered blocks one thread reads its KV through.
//!   [`BlockTable::fork`] shares them; [`BlockTable::grow`] makes room for new
//!   tokens and returns the [`CopyOp`] the caller must apply when the last
//!   block was partial and shared (copy-on-write); [`BlockTable::free`] gives
//!   the blocks back.
//! - Prefix caching, vLLM style: a full block is known by a [`BlockHash`] of
//!   its parent block's hash and its own token ids.
//!   [`BlockTable::register_full_blocks`] publishes a table's computed blocks;
//!   [`BlockTable::from_prefix_cache`] starts a new request from the longest
//!   cached prefix of its prompt. Cached blocks nobody references stay cached
//!   until the free list runs out, then go least recently used first.
//! - [`KvError`]: the one error type.
//!
//! ```
//! use weft_kv::{BlockPool, BlockTable};
//!
//! let mut pool = BlockPool::new(8, 4)?;
//! let mut parent = BlockTable::new();
//! assert_eq!(parent.grow(&mut pool, 6)?, None); // 2 blocks, the second half full
//! let mut child = parent.fork(&mut pool)?; // shares both blocks
//! let copy = child.grow(&mut pool, 1)?.expect("the partial block is shared");
//! assert_eq!((copy.src, copy.n_slots), (parent.blocks()[1], 2));
//! // ... the caller copies those 2 slots of KV from copy.src to copy.dst ...
//! assert_eq!(parent.grow(&mut pool, 1)?, None); // parent's block is its own again
//! child.free(&mut pool)?;
//! parent.free(&mut pool)?;
//! assert_eq!(pool.n_free(), 8);
//! # Ok::<(), weft_kv::KvError>(())
//! ```
//!
//! # Architecture invariants
//! - Every block's reference count equals the number of live tables holding
//!   it; nothing else holds references (the prefix cache does not).
//! - A block is in exactly one place: held by tables (count > 0), on the free
//!   list, or parked evictable in the prefix cache's LRU; it is free or
//!   evictable exactly when its count is zero. No table holds a block twice.
//! - Only full blocks are cached, and a full block is never written again, so
//!   a cached block's content matches its hash for as long as it is cached.
//! - Writes go only to the last block, and only when this table holds it
//!   alone: a shared partial last block is replaced first (copy-on-write).
//! - Freeing all of a request's tables returns the pool to its earlier
//!   `n_available()` (free + evictable).
//! - Errors change nothing, so the scheduler can queue or preempt and retry.
//! - This crate does not know about models, tensors or protocols: it deals in
//!   block ids and token ids. [`BlockPool::audit`] checks all of the above.

mod audit;
mod error;
mod pool;
mod prefix_cache;
mod table;

pub use error::KvError;
pub use pool::{BlockPool, BlockState, BudgetConfig, PoolStats};
pub use prefix_cache::BlockHash;
pub use table::{BlockTable, CopyOp};

/// Index of a block in the pool (and in the model's KV memory).
pub type BlockId = u32;
