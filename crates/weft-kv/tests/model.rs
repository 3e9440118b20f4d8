//! Property tests: random sequences of requests, forks, appends, prefix
//! registrations and frees (eviction happens whenever a small pool runs out of
//! free blocks), checked against a simulated KV memory and the architecture
//! invariants after every step.
//!
//! The simulated memory holds, in each slot, an id of the whole token prefix
//! that produced it, the way real KV depends on every earlier token. A table
//! must read back exactly its own sequence's ids: a missed copy-on-write, a
//! write into a shared or cached block, a wrong prefix hit or a block reused
//! while still held all show up as a wrong id.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use weft_kv::{BlockPool, BlockState, BlockTable, KvError};

/// The KV a slot would hold after `prev` when fed `token`.
fn content(prev: u64, token: u32) -> u64 {
    let mut h = DefaultHasher::new();
    (prev, token).hash(&mut h);
    h.finish()
}

/// One thread: its table, its tokens and the KV ids its slots must hold.
struct Thread {
    table: BlockTable,
    tokens: Vec<u32>,
    contents: Vec<u64>,
    request: u32,
}

struct Sim {
    pool: BlockPool,
    /// `memory[block][slot]`: the simulated KV of every slot.
    memory: Vec<Vec<Option<u64>>>,
    threads: Vec<Thread>,
    next_request: u32,
}

#[derive(Debug, Clone)]
enum Op {
    /// A new request: look up its prompt in the prefix cache (or not),
    /// prefill the rest, maybe register its full blocks.
    Start {
        prompt: Vec<u32>,
        from_cache: bool,
        register: bool,
    },
    Fork {
        pick: Index,
    },
    Append {
        pick: Index,
        tokens: Vec<u32>,
        register: bool,
    },
    Register {
        pick: Index,
    },
    Free {
        pick: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // A three-letter alphabet makes shared prefixes, and so cache hits, common.
    let tokens = |n| vec(0u32..3, n);
    prop_oneof![
        2 => (tokens(0..14), any::<bool>(), any::<bool>())
            .prop_map(|(prompt, from_cache, register)| Op::Start { prompt, from_cache, register }),
        2 => any::<Index>().prop_map(|pick| Op::Fork { pick }),
        4 => (any::<Index>(), tokens(1..7), any::<bool>())
            .prop_map(|(pick, tokens, register)| Op::Append { pick, tokens, register }),
        1 => any::<Index>().prop_map(|pick| Op::Register { pick }),
        2 => any::<Index>().prop_map(|pick| Op::Free { pick }),
    ]
}

/// Everything a refused operation must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    states: Vec<Option<BlockState>>,
    n_cached: usize,
    tables: Vec<(Vec<u32>, usize)>,
}

impl Sim {
    fn new(n_blocks: usize, block_size: usize) -> Sim {
        Sim {
            pool: BlockPool::new(n_blocks, block_size).unwrap(),
            memory: vec![vec![None; block_size]; n_blocks],
            threads: Vec::new(),
            next_request: 0,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            states: (0..self.pool.n_blocks() as u32)
                .map(|b| self.pool.block_state(b))
                .collect(),
            n_cached: self.pool.n_cached(),
            tables: self
                .threads
                .iter()
                .map(|t| (t.table.blocks().to_vec(), t.table.len()))
                .collect(),
        }
    }

    /// Index of the thread `pick` chooses among those of `request` (any request if `None`).
    fn pick(&self, pick: &Index, request: Option<u32>) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.threads.len())
            .filter(|&i| request.is_none_or(|r| self.threads[i].request == r))
            .collect();
        (!candidates.is_empty()).then(|| candidates[pick.index(candidates.len())])
    }

    fn new_request(&mut self) -> u32 {
        self.next_request += 1;
        self.next_request
    }

    /// Appends `tokens` to thread `i`: grow, apply the copy, write the new
    /// slots. Returns false (having checked that nothing changed) when the
    /// pool is out of blocks.
    fn append(&mut self, i: usize, tokens: &[u32]) -> Result<bool, TestCaseError> {
        let before = self.snapshot();
        let copy = match self.threads[i].table.grow(&mut self.pool, tokens.len()) {
            Ok(copy) => copy,
            Err(KvError::OutOfBlocks { needed, available }) => {
                prop_assert!(needed > available);
                prop_assert_eq!(available, self.pool.n_available());
                prop_assert_eq!(
                    &before,
                    &self.snapshot(),
                    "a refused grow changed something"
                );
                return Ok(false);
            }
            Err(e) => return Err(TestCaseError::fail(format!("grow: {e}"))),
        };
        let block_size = self.pool.block_size();
        if let Some(copy) = copy {
            prop_assert!(copy.n_slots > 0 && copy.n_slots < block_size);
            prop_assert!(
                self.pool.ref_count(copy.src) >= Some(1),
                "copy source was freed"
            );
            for slot in 0..copy.n_slots {
                self.memory[copy.dst as usize][slot] = self.memory[copy.src as usize][slot];
            }
        }
        let thread = &mut self.threads[i];
        for &token in tokens {
            let pos = thread.contents.len();
            let prev = thread.contents.last().copied().unwrap_or(0);
            let value = content(prev, token);
            let block = thread.table.blocks()[pos / block_size];
            // The copy-on-write invariant itself: writes only go to blocks
            // this table holds alone and that are not cached.
            prop_assert_eq!(
                self.pool.ref_count(block),
                Some(1),
                "write into a shared block"
            );
            prop_assert!(
                self.pool.block_hash(block).is_none(),
                "write into a cached block"
            );
            self.memory[block as usize][pos % block_size] = Some(value);
            thread.tokens.push(token);
            thread.contents.push(value);
        }
        Ok(true)
    }

    fn register(&mut self, i: usize) -> Result<(), TestCaseError> {
        let thread = &mut self.threads[i];
        let result = thread
            .table
            .register_full_blocks(&mut self.pool, &thread.tokens);
        prop_assert!(result.is_ok(), "register: {:?}", result);
        Ok(())
    }

    fn free(&mut self, i: usize) -> Result<(), TestCaseError> {
        let mut thread = self.threads.swap_remove(i);
        prop_assert_eq!(thread.table.free(&mut self.pool), Ok(()));
        prop_assert!(thread.table.is_empty() && thread.table.blocks().is_empty());
        Ok(())
    }

    /// Applies `op`, restricted to threads of `request` when given (new
    /// requests then join it).
    fn apply(&mut self, op: &Op, request: Option<u32>) -> Result<(), TestCaseError> {
        match op {
            Op::Start {
                prompt,
                from_cache,
                register,
            } => {
                let request = request.unwrap_or_else(|| self.new_request());
                let table = if *from_cache {
                    let expected = self.pool.cached_prefix_len(prompt);
                    let table = BlockTable::from_prefix_cache(&mut self.pool, prompt).unwrap();
                    prop_assert_eq!(table.len(), expected);
                    prop_assert!(table.len() <= prompt.len());
                    table
                } else {
                    BlockTable::new()
                };
                let hit = table.len();
                let mut contents = Vec::new();
                for &token in &prompt[..hit] {
                    contents.push(content(contents.last().copied().unwrap_or(0), token));
                }
                self.threads.push(Thread {
                    table,
                    tokens: prompt[..hit].to_vec(),
                    contents,
                    request,
                });
                let i = self.threads.len() - 1;
                // Check what the cache served before the new thread writes.
                self.check()?;
                if !self.append(i, &prompt[hit..])? {
                    return self.free(i); // refused: the request gives its hits back
                }
                if *register {
                    self.register(i)?;
                }
            }
            Op::Fork { pick } => {
                if let Some(i) = self.pick(pick, request) {
                    let free_before = self.pool.n_available();
                    let parent = &self.threads[i];
                    let table = parent.table.fork(&mut self.pool).unwrap();
                    prop_assert_eq!(table.blocks(), parent.table.blocks());
                    prop_assert_eq!(self.pool.n_available(), free_before, "a fork took blocks");
                    let child = Thread {
                        table,
                        tokens: parent.tokens.clone(),
                        contents: parent.contents.clone(),
                        request: parent.request,
                    };
                    self.threads.push(child);
                }
            }
            Op::Append {
                pick,
                tokens,
                register,
            } => {
                if let Some(i) = self.pick(pick, request) {
                    if self.append(i, tokens)? && *register {
                        self.register(i)?;
                    }
                }
            }
            Op::Register { pick } => {
                if let Some(i) = self.pick(pick, request) {
                    self.register(i)?;
                }
            }
            Op::Free { pick } => {
                if let Some(i) = self.pick(pick, request) {
                    self.free(i)?;
                }
            }
        }
        self.check()
    }

    /// The invariants, checked from outside the pool, plus the pool's own audit.
    fn check(&self) -> Result<(), TestCaseError> {
        let n_blocks = self.pool.n_blocks();
        let block_size = self.pool.block_size();
        let mut holders = vec![0u32; n_blocks];
        for thread in &self.threads {
            let table = &thread.table;
            prop_assert_eq!(table.len(), thread.tokens.len());
            prop_assert_eq!(table.blocks().len(), table.len().div_ceil(block_size));
            for &b in table.blocks() {
                holders[b as usize] += 1;
            }
            for (pos, &want) in thread.contents.iter().enumerate() {
                let block = table.blocks()[pos / block_size] as usize;
                prop_assert_eq!(
                    self.memory[block][pos % block_size],
                    Some(want),
                    "slot {} reads someone else's KV",
                    pos
                );
            }
        }
        let mut unreferenced = 0;
        for (b, &held) in holders.iter().enumerate() {
            let b = b as u32;
            // A table holding a block twice would make this exceed the count.
            prop_assert_eq!(self.pool.ref_count(b), Some(held), "block {} ref-count", b);
            match self.pool.block_state(b) {
                Some(BlockState::Used { ref_count }) => prop_assert_eq!(ref_count, held),
                Some(BlockState::Free) => {
                    prop_assert!(held == 0 && self.pool.block_hash(b).is_none())
                }
                Some(BlockState::Cached) => {
                    prop_assert!(held == 0 && self.pool.block_hash(b).is_some())
                }
                None => prop_assert!(false, "block {} unknown", b),
            }
            unreferenced += usize::from(held == 0);
        }
        prop_assert_eq!(self.pool.n_available(), unreferenced);
        prop_assert_eq!(self.pool.n_free() + self.pool.n_evictable(), unreferenced);
        prop_assert_eq!(self.pool.n_used(), n_blocks - unreferenced);
        let audit = self.pool.audit(self.threads.iter().map(|t| &t.table));
        prop_assert!(audit.is_ok(), "{:?}", audit);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Any interleaving of requests keeps the invariants and every thread's KV.
    #[test]
    fn random_operations_keep_the_invariants(
        n_blocks in 3usize..20,
        block_size in 1usize..5,
        ops in vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(n_blocks, block_size);
        for op in &ops {
            sim.apply(op, None)?;
        }
        while !sim.threads.is_empty() {
            sim.free(sim.threads.len() - 1)?;
            sim.check()?;
        }
        prop_assert_eq!(sim.pool.n_available(), n_blocks);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever else is running, a request that forks, grows, hits and fills
    /// the cache and then finishes leaves the pool as available as it found it.
    #[test]
    fn a_finished_request_returns_the_pool(
        n_blocks in 3usize..20,
        block_size in 1usize..5,
        background in vec(op(), 0..40),
        prompt in vec(0u32..3, 0..14),
        request_ops in vec(op(), 0..40),
    ) {
        let mut sim = Sim::new(n_blocks, block_size);
        for op in &background {
            sim.apply(op, None)?;
        }
        let available = sim.pool.n_available();
        let request = sim.new_request();
        let start = Op::Start { prompt, from_cache: true, register: true };
        sim.apply(&start, Some(request))?;
        for op in &request_ops {
            sim.apply(op, Some(request))?;
        }
        while let Some(i) = sim.threads.iter().position(|t| t.request == request) {
            sim.free(i)?;
            sim.check()?;
        }
        prop_assert_eq!(sim.pool.n_available(), available);
    }
}
