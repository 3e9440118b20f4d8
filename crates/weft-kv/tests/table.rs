//! Unit tests at the crate boundary: fork, copy-on-write, free, prefix hits,
//! eviction order, budgets and refusals.

use weft_kv::{BlockPool, BlockState, BlockTable, BudgetConfig, CopyOp, KvError};

fn pool(n_blocks: usize, block_size: usize) -> BlockPool {
    BlockPool::new(n_blocks, block_size).unwrap()
}

/// A table holding `tokens`, computed (not cached) and registered.
fn prefill(pool: &mut BlockPool, tokens: &[u32]) -> BlockTable {
    let mut table = BlockTable::new();
    table.grow(pool, tokens.len()).unwrap();
    table.register_full_blocks(pool, tokens).unwrap();
    table
}

#[test]
fn grow_and_free_return_the_pool() {
    let mut pool = pool(4, 16);
    let mut t = BlockTable::new();
    t.grow(&mut pool, 17).unwrap();
    assert_eq!(t.blocks(), &[0, 1]);
    assert_eq!(pool.n_free(), 2);
    t.grow(&mut pool, 15).unwrap();
    assert_eq!(t.blocks().len(), 2);
    let err = t.grow(&mut pool, 64).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            needed: 4,
            available: 2
        }
    );
    assert_eq!(t.len(), 32, "a failed grow changes nothing");
    t.free(&mut pool).unwrap();
    assert_eq!(pool.n_free(), 4);
    assert!((0..4).all(|b| pool.block_state(b) == Some(BlockState::Free)));
    pool.audit([&t]).unwrap();
}

#[test]
fn fork_shares_every_block_and_copies_nothing() {
    let mut pool = pool(8, 4);
    let mut parent = BlockTable::new();
    parent.grow(&mut pool, 10).unwrap();
    let free_before = pool.n_free();
    let child = parent.fork(&mut pool).unwrap();
    assert_eq!(child.blocks(), parent.blocks());
    assert_eq!(child.len(), 10);
    assert_eq!(pool.n_free(), free_before, "a fork takes no blocks");
    for &b in parent.blocks() {
        assert_eq!(pool.ref_count(b), Some(2));
    }
    pool.audit([&parent, &child]).unwrap();
}

#[test]
fn first_append_to_a_shared_partial_block_copies_it() {
    let mut pool = pool(8, 4);
    let mut parent = BlockTable::new();
    parent.grow(&mut pool, 6).unwrap(); // blocks [0, 1], 2 slots of block 1 used
    let mut child = parent.fork(&mut pool).unwrap();

    let copy = child.grow(&mut pool, 3).unwrap();
    assert_eq!(
        copy,
        Some(CopyOp {
            src: 1,
            dst: 2,
            n_slots: 2
        })
    );
    assert_eq!(child.blocks(), &[0, 2, 3], "new last block, then one more");
    assert_eq!(child.len(), 9);
    assert_eq!(pool.ref_count(0), Some(2), "full blocks stay shared");
    assert_eq!(
        pool.ref_count(1),
        Some(1),
        "the parent now holds block 1 alone"
    );

    // The parent writes into its own block in place: no second copy.
    assert_eq!(parent.grow(&mut pool, 1).unwrap(), None);
    assert_eq!(parent.blocks(), &[0, 1]);
    assert_eq!(pool.stats().copy_on_writes, 1);
    pool.audit([&parent, &child]).unwrap();
}

#[test]
fn appending_after_a_shared_full_block_copies_nothing() {
    let mut pool = pool(8, 4);
    let mut parent = BlockTable::new();
    parent.grow(&mut pool, 8).unwrap();
    let mut child = parent.fork(&mut pool).unwrap();
    assert_eq!(child.grow(&mut pool, 1).unwrap(), None);
    assert_eq!(parent.grow(&mut pool, 1).unwrap(), None);
    assert_eq!(child.blocks(), &[0, 1, 2]);
    assert_eq!(parent.blocks(), &[0, 1, 3]);
    pool.audit([&parent, &child]).unwrap();
}

#[test]
fn copy_on_write_without_room_is_refused_and_changes_nothing() {
    let mut pool = pool(2, 4);
    let mut parent = BlockTable::new();
    parent.grow(&mut pool, 6).unwrap();
    let mut child = parent.fork(&mut pool).unwrap();
    let err = child.grow(&mut pool, 1).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            needed: 1,
            available: 0
        }
    );
    assert_eq!(child.blocks(), parent.blocks());
    assert_eq!(child.len(), 6);
    assert_eq!(pool.ref_count(1), Some(2));
    // Once the parent finishes the child owns the block and writes in place.
    parent.free(&mut pool).unwrap();
    assert_eq!(child.grow(&mut pool, 2).unwrap(), None);
    pool.audit([&child]).unwrap();
}

#[test]
fn a_finished_tree_of_forks_returns_every_block() {
    let mut pool = pool(32, 4);
    let mut root = BlockTable::new();
    root.grow(&mut pool, 7).unwrap();
    let mut tables = vec![root];
    for i in 0..6 {
        let mut child = tables[i / 2].fork(&mut pool).unwrap();
        child.grow(&mut pool, i + 1).unwrap();
        tables.push(child);
    }
    pool.audit(&tables).unwrap();
    for t in &mut tables {
        t.free(&mut pool).unwrap();
    }
    assert_eq!(pool.n_free(), 32);
    pool.audit(&tables).unwrap();
}

#[test]
fn a_new_request_starts_from_its_longest_cached_prefix() {
    let mut pool = pool(16, 4);
    let prompt: Vec<u32> = (0..10).collect();
    let mut first = prefill(&mut pool, &prompt);
    assert_eq!(first.n_hashed_blocks(), 2, "only full blocks are cached");
    let cached = first.blocks()[..2].to_vec();

    // While the first request runs, the second shares its blocks.
    let mut same = BlockTable::from_prefix_cache(&mut pool, &prompt).unwrap();
    assert_eq!(same.len(), 8);
    assert_eq!(same.blocks(), &cached[..]);
    assert_eq!(pool.ref_count(cached[0]), Some(2));

    first.free(&mut pool).unwrap();
    same.free(&mut pool).unwrap();
    assert_eq!(pool.n_evictable(), 2, "finished blocks stay cached");
    assert_eq!(pool.n_available(), 16);
    assert_eq!(pool.block_state(cached[0]), Some(BlockState::Cached));

    // Same first block, different second block: one block hit.
    let other: Vec<u32> = vec![0, 1, 2, 3, 99, 5, 6, 7, 8];
    assert_eq!(pool.cached_prefix_len(&other), 4);
    let mut t = BlockTable::from_prefix_cache(&mut pool, &other).unwrap();
    assert_eq!(t.blocks(), &cached[..1]);
    assert_eq!(
        pool.block_state(cached[0]),
        Some(BlockState::Used { ref_count: 1 })
    );
    assert_eq!(pool.block_state(cached[1]), Some(BlockState::Cached));
    t.grow(&mut pool, other.len() - t.len()).unwrap();
    t.register_full_blocks(&mut pool, &other).unwrap();
    pool.audit([&t]).unwrap();

    // A prompt differing in its first token shares nothing, even later blocks.
    let shifted: Vec<u32> = (1..11).collect();
    assert_eq!(pool.cached_prefix_len(&shifted), 0);
    assert_eq!(pool.stats().prefix_hit_blocks, 3);
}

#[test]
fn a_fork_continues_its_parents_hash_chain() {
    let mut pool = pool(16, 4);
    let prompt: Vec<u32> = (0..6).collect();
    let mut parent = prefill(&mut pool, &prompt);
    let mut child = parent.fork(&mut pool).unwrap();
    let mut child_tokens = prompt.clone();
    child_tokens.extend([40, 41, 42, 43]);
    child.grow(&mut pool, 4).unwrap();
    assert_eq!(
        child
            .register_full_blocks(&mut pool, &child_tokens)
            .unwrap(),
        1
    );
    let hit = BlockTable::from_prefix_cache(&mut pool, &child_tokens).unwrap();
    assert_eq!(hit.blocks(), &child.blocks()[..2]);
    pool.audit([&parent, &child, &hit]).unwrap();
    parent.free(&mut pool).unwrap();
    child.free(&mut pool).unwrap();
}

#[test]
fn eviction_takes_unreferenced_cached_blocks_tail_first() {
    let mut pool = pool(4, 2);
    let a = [1, 2, 3, 4, 5, 6];
    let mut t = prefill(&mut pool, &a);
    let blocks = t.blocks().to_vec();
    t.free(&mut pool).unwrap();
    assert_eq!((pool.n_free(), pool.n_evictable()), (1, 3));

    // Two new blocks: the free one, then the cached tail of `a`.
    let mut u = BlockTable::new();
    u.grow(&mut pool, 4).unwrap();
    assert_eq!(pool.stats().evictions, 1);
    assert_eq!(
        pool.block_state(blocks[2]),
        Some(BlockState::Used { ref_count: 1 })
    );
    assert_eq!(
        pool.cached_prefix_len(&a),
        4,
        "the head of the prefix survives"
    );
    u.grow(&mut pool, 2).unwrap();
    assert_eq!(pool.cached_prefix_len(&a), 2);
    pool.audit([&u]).unwrap();
}

#[test]
fn equal_content_is_cached_once() {
    let mut pool = pool(8, 2);
    let tokens = [5, 6, 7, 8];
    let mut a = prefill(&mut pool, &tokens);
    let mut b = BlockTable::new();
    b.grow(&mut pool, 4).unwrap();
    assert_eq!(b.register_full_blocks(&mut pool, &tokens).unwrap(), 0);
    assert_eq!(pool.n_cached(), 2);
    a.free(&mut pool).unwrap();
    b.free(&mut pool).unwrap();
    assert_eq!((pool.n_free(), pool.n_evictable()), (6, 2));
    pool.audit([&a, &b]).unwrap();
}

#[test]
fn registration_refuses_tokens_the_table_does_not_hold() {
    let mut pool = pool(8, 2);
    let mut t = BlockTable::new();
    t.grow(&mut pool, 3).unwrap();
    assert_eq!(
        t.register_full_blocks(&mut pool, &[1, 2, 3, 4]),
        Err(KvError::TokensBeyondTable { tokens: 4, len: 3 })
    );
    assert_eq!(t.register_full_blocks(&mut pool, &[1, 2, 3]), Ok(1));
    t.free(&mut pool).unwrap();

    // Two tables sharing unregistered blocks that then disagree about their
    // tokens: the second claim is refused.
    let mut a = BlockTable::new();
    a.grow(&mut pool, 4).unwrap();
    let mut b = a.fork(&mut pool).unwrap();
    assert_eq!(a.register_full_blocks(&mut pool, &[11, 12, 13, 14]), Ok(2));
    let block = b.blocks()[0];
    assert_eq!(
        b.register_full_blocks(&mut pool, &[9, 9, 9, 9]),
        Err(KvError::HashConflict { block })
    );
    a.free(&mut pool).unwrap();
    b.free(&mut pool).unwrap();
    pool.audit([&a, &b]).unwrap();
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let mut pool_a = pool(4, 2);
    let mut pool_b = pool(4, 2);
    let mut t = BlockTable::new();
    t.grow(&mut pool_a, 3).unwrap();
    assert_eq!(t.grow(&mut pool_b, 1), Err(KvError::WrongPool));
    assert_eq!(t.fork(&mut pool_b).unwrap_err(), KvError::WrongPool);
    assert_eq!(t.free(&mut pool_b), Err(KvError::WrongPool));
    assert_eq!(t.len(), 3);
    t.free(&mut pool_a).unwrap();
    t.free(&mut pool_a).unwrap(); // freeing twice frees nothing twice
    assert_eq!(pool_a.n_free(), 4);
    t.grow(&mut pool_b, 1).unwrap(); // an emptied table may change pools
    t.free(&mut pool_b).unwrap();

    assert_eq!(pool_a.ref_count(99), None);
    assert_eq!(pool_a.block_state(99), None);
    assert_eq!(BlockPool::new(4, 0).unwrap_err(), KvError::ZeroBlockSize);
    assert_eq!(
        t.grow(&mut pool_a, usize::MAX).unwrap_err(),
        KvError::OutOfBlocks {
            needed: usize::MAX / 2 + 1,
            available: 4
        }
    );
    let mut u = BlockTable::new();
    u.grow(&mut pool_a, 1).unwrap();
    assert_eq!(
        u.grow(&mut pool_a, usize::MAX),
        Err(KvError::LengthOverflow)
    );
    u.free(&mut pool_a).unwrap();
}

#[test]
fn a_budget_in_mib_sets_the_block_count() {
    let config = BudgetConfig {
        block_size: 16,
        bytes_per_block: 64 << 10,
        budget_mib: 3,
    };
    let pool = BlockPool::with_budget(config).unwrap();
    assert_eq!(pool.n_blocks(), 48);
    assert_eq!(pool.block_size(), 16);
    assert_eq!(
        BlockPool::with_budget(BudgetConfig {
            budget_mib: 0,
            ..config
        })
        .unwrap_err(),
        KvError::BudgetTooSmall {
            budget_mib: 0,
            bytes_per_block: 64 << 10
        }
    );
    assert_eq!(
        BlockPool::with_budget(BudgetConfig {
            bytes_per_block: 0,
            ..config
        })
        .unwrap_err(),
        KvError::ZeroBytesPerBlock
    );
    assert_eq!(
        BlockPool::with_budget(BudgetConfig {
            block_size: 0,
            ..config
        })
        .unwrap_err(),
        KvError::ZeroBlockSize
    );
}

#[test]
fn a_leaked_table_is_caught_by_the_audit() {
    let mut pool = pool(4, 2);
    let mut t = BlockTable::new();
    t.grow(&mut pool, 3).unwrap();
    let err = pool.audit([]).unwrap_err();
    assert!(matches!(err, KvError::Inconsistent(_)), "{err}");
    t.free(&mut pool).unwrap();
}
