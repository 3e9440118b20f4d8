//! The crate's one error type.

use crate::BlockId;

/// Everything that can go wrong in `weft-kv`. Every variant is a refusal:
/// the operation that returned it changed nothing, except where noted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KvError {
    /// Not enough free or evictable blocks for the request.
    #[error(
        "KV cache is full: {needed} more blocks needed, {available} available; \
         raise the KV budget, or run fewer or shorter threads"
    )]
    OutOfBlocks { needed: usize, available: usize },

    /// A pool with zero tokens per block cannot hold anything.
    #[error("the KV block size must be at least one token")]
    ZeroBlockSize,

    /// Each block must take at least one byte for a byte budget to mean anything.
    #[error("bytes per KV block must be at least one")]
    ZeroBytesPerBlock,

    /// The budget does not cover a single block.
    #[error(
        "a KV budget of {budget_mib} MiB does not fit one block of {bytes_per_block} bytes; \
         raise the budget"
    )]
    BudgetTooSmall {
        budget_mib: usize,
        bytes_per_block: usize,
    },

    /// Block ids are `u32`.
    #[error("{n_blocks} KV blocks are more than the {max} a pool can address")]
    TooManyBlocks { n_blocks: usize, max: usize },

    /// A table was used with a pool other than the one its blocks came from.
    #[error("this block table belongs to another block pool")]
    WrongPool,

    /// A table would hold more token slots than `usize` can count.
    #[error("block table length overflows")]
    LengthOverflow,

    /// More token ids were given than the table has slots.
    #[error("{tokens} token ids given for a block table of {len} slots")]
    TokensBeyondTable { tokens: usize, len: usize },

    /// A block was registered under two different prefix hashes, which means
    /// the token ids given for it differ from those given before. Blocks
    /// registered earlier in the same call stay registered.
    #[error("block {block} is already cached under a different prefix hash")]
    HashConflict { block: BlockId },

    /// A block's reference count would exceed `u32::MAX`.
    #[error("block {block} has too many references")]
    RefCountOverflow { block: BlockId },

    /// [`crate::BlockPool::audit`] found a broken invariant (a bug in this
    /// crate or a table dropped without being freed).
    #[error("KV pool invariant broken: {0}")]
    Inconsistent(String),
}
