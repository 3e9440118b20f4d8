//! Attention over a KV prefix that several sequences of a batch share.
//!
//! Threads forked from one parent read the same physical KV blocks for the
//! parent's context. Attending thread by thread converts every shared f16
//! key and value once per thread and head; here the shared run is converted
//! once per step and kv head, and the scores of every query of every member
//! (all their tokens, all heads of the kv group) come out of one small GEMM
//! against it, as do the weighted values. Each query keeps the partial
//! softmax state (running max, sum, unnormalised output), and the per-token
//! pass over the rest of its context (its own tokens) finishes it.
//!
//! A prefill chunk of one sequence is handled the same way: every token of
//! the chunk sees all the context before it, so that part is one GEMM too.

use crate::kernels::gather_f16_rows;
use rayon::prelude::*;

use crate::kv_cache::LayerKv;

/// Shared runs shorter than this are attended the ordinary way.
pub(crate) const MIN_SHARED: usize = 32;

/// Sequences reading the same first `len` context slots.
#[derive(Debug, Clone)]
pub(crate) struct SharedRun {
    pub members: Vec<usize>,
    pub len: usize,
}

/// Sequences with at least this many new tokens (a prefill chunk) form a
/// run on their own: all their tokens see the context before the chunk.
pub(crate) const MIN_CHUNK: usize = 4;

/// Groups sequences by a common slot prefix. `visible[i]` is how many
/// context slots every new token of sequence `i` sees at least, `tokens[i]`
/// how many new tokens it has. Returns the runs and, per sequence, the
/// length of the run it belongs to (0: none).
pub(crate) fn shared_runs(
    slots: &[Vec<usize>],
    visible: &[usize],
    tokens: &[usize],
) -> (Vec<SharedRun>, Vec<usize>) {
    let mut by_first: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, s) in slots.iter().enumerate() {
        if visible[i] >= MIN_SHARED {
            by_first.entry(s[0]).or_default().push(i);
        }
    }
    let mut runs = Vec::new();
    let mut run_len = vec![0; slots.len()];
    for (_, members) in by_first {
        let queries: usize = members.iter().map(|&m| tokens[m]).sum();
        if members.len() < 2 && queries < MIN_CHUNK {
            continue;
        }
        let lead = &slots[members[0]];
        let len = members
            .iter()
            .map(|&m| {
                let common = lead
                    .iter()
                    .zip(&slots[m])
                    .take_while(|(a, b)| a == b)
                    .count();
                common.min(visible[m])
            })
            .min()
            .unwrap_or(0);
        if len < MIN_SHARED {
            continue;
        }
        for &m in &members {
            run_len[m] = len;
        }
        runs.push(SharedRun { members, len });
    }
    (runs, run_len)
}

/// One slice's queries: ids, running max, sum, unnormalised output.
type SliceState = (Vec<usize>, Vec<f32>, Vec<f32>, Vec<f32>);

/// Partial softmax state of every (token, head) query: running max, sum of
/// exponentials, and the unnormalised weighted value sum.
pub(crate) struct Partial {
    pub max: Vec<f32>,
    pub sum: Vec<f32>,
    pub out: Vec<f32>,
}

/// Shapes the prefix pass needs.
pub(crate) struct Dims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub qkv_width: usize,
    pub kv_dim: usize,
    pub scale: f32,
}

/// Query rows per score block in [`attend_runs`].
const QUERY_BLOCK: usize = 128;

/// Attends every query of every run's members over the run. `queries[i]`
/// lists the token rows of sequence `i` (indices into `qkv`).
pub(crate) fn attend_runs(
    kv: &LayerKv,
    qkv: &[f32],
    runs: &[SharedRun],
    slots: &[Vec<usize>],
    token_rows: &[std::ops::Range<usize>],
    n_tok: usize,
    dims: &Dims,
) -> Partial {
    let hd = dims.head_dim;
    let group = dims.n_heads / dims.n_kv_heads;
    // Tasks split a run's slots (not its members), so every shared key and
    // value is converted once; partial states of the slices merge below.
    // The split depends on the run's length alone (never on the core
    // count), so results do not depend on the machine. 256: for a
    // 512-token prefix and 3 KV heads, 6 tasks, which 2 cores balance
    // (192 gave 9, and B=8 decoding 10-20% slower).
    const SLICE: usize = 256;
    let mut tasks = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let slices = run.len.div_ceil(SLICE);
        let step = run.len.div_ceil(slices);
        for g in 0..dims.n_kv_heads {
            for a in (0..run.len).step_by(step) {
                tasks.push((r, g, a, (a + step).min(run.len)));
            }
        }
    }
    // Each task returns (query ids, max, sum, out) for its queries.
    let results: Vec<SliceState> = tasks
        .par_iter()
        .map(|&(r, g, a, b)| {
            let run = &runs[r];
            let n = b - a;
            let lead = &slots[run.members[0]][a..b];
            let mut kf = vec![0f32; n * hd];
            let mut vf = vec![0f32; n * hd];
            gather_f16_rows(&kv.k, lead, dims.kv_dim, g * hd, hd, &mut kf);
            gather_f16_rows(&kv.v, lead, dims.kv_dim, g * hd, hd, &mut vf);
            // Sized up front: a growing buffer would leave a trail of freed
            // smaller ones in the worker's heap.
            let n_rows: usize = run.members.iter().map(|&m| token_rows[m].len()).sum();
            let mut ids = Vec::with_capacity(n_rows * group);
            let mut q = Vec::with_capacity(n_rows * group * hd);
            for &m in &run.members {
                for t in token_rows[m].clone() {
                    for h in g * group..(g + 1) * group {
                        ids.push(t * dims.n_heads + h);
                        let at = t * dims.qkv_width + h * hd;
                        q.extend_from_slice(&qkv[at..at + hd]);
                    }
                }
            }
            let nq = ids.len();
            let mut max = vec![0f32; nq];
            let mut sum = vec![0f32; nq];
            let mut o = vec![0f32; nq * hd];
            // Queries in blocks of QUERY_BLOCK rows, so the score matrix is
            // QUERY_BLOCK x n, not nq x n (a 256-token prefill chunk has 768
            // query rows per KV head). Each row's result is the same bits as
            // in one GEMM over all rows (`row_blocks_are_bit_identical`).
            let mut s = vec![0f32; QUERY_BLOCK.min(nq) * n];
            for r0 in (0..nq).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(nq - r0);
                let s = &mut s[..rows * n];
                // S = scale * Q K^T
                matmul(rows, n, hd, &q[r0 * hd..], hd, 1, &kf, 1, hd, s, dims.scale);
                for (row, (m, l)) in s.chunks_exact_mut(n).zip(
                    max[r0..r0 + rows]
                        .iter_mut()
                        .zip(sum[r0..r0 + rows].iter_mut()),
                ) {
                    *m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    // Eight exponentials at a time (the split decode path's exp).
                    *l = crate::kernels::decode::exp_shifted(row, *m);
                }
                let out = &mut o[r0 * hd..(r0 + rows) * hd];
                matmul(rows, hd, n, s, n, 1, &vf, hd, 1, out, 1.0);
            }
            (ids, max, sum, o)
        })
        .collect();
    let nq_all = n_tok * dims.n_heads;
    let mut p = Partial {
        max: vec![f32::NEG_INFINITY; nq_all],
        sum: vec![0.0; nq_all],
        out: vec![0.0; nq_all * hd],
    };
    for (ids, max, sum, out) in results {
        for (k, &id) in ids.iter().enumerate() {
            // Merge this slice's state into the query's (online softmax).
            let m = p.max[id].max(max[k]);
            let (wa, wb) = ((p.max[id] - m).exp(), (max[k] - m).exp());
            p.max[id] = m;
            p.sum[id] = p.sum[id] * wa + sum[k] * wb;
            for (o, x) in p.out[id * hd..(id + 1) * hd]
                .iter_mut()
                .zip(&out[k * hd..(k + 1) * hd])
            {
                *o = *o * wa + x * wb;
            }
        }
    }
    p
}

/// `out[m, n] = alpha * a[m, k] b[k, n]` (row-major `out`; `a`, `b` given by
/// row and column strides).
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    out: &mut [f32],
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(out.len() >= m * n);
    assert!(k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts keep every element gemm reads or writes inside the
    // slices, and `out` is borrowed exclusively.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_need_two_members_and_a_long_common_prefix() {
        let a: Vec<usize> = (0..100).collect();
        let mut b: Vec<usize> = (0..80).collect();
        b.extend(500..510);
        let c: Vec<usize> = (1000..1100).collect();
        let slots = vec![a, b, c];
        let one = [1, 1, 1];
        let (runs, len) = shared_runs(&slots, &[99, 89, 99], &one);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].members, vec![0, 1]);
        assert_eq!(runs[0].len, 80);
        assert_eq!(len, vec![80, 80, 0]);
        // A member that sees fewer slots than the common prefix caps it.
        let (runs, _) = shared_runs(&slots, &[99, 40, 99], &one);
        assert_eq!(runs[0].len, 40);
        // Too short to bother.
        let (runs, len) = shared_runs(&slots, &[99, 20, 99], &one);
        assert!(runs.is_empty());
        assert_eq!(len, vec![0, 0, 0]);
        // A prefill chunk is a run by itself.
        let (runs, len) = shared_runs(&slots, &[99, 20, 99], &[1, 1, 16]);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].members, vec![2]);
        assert_eq!(len, vec![0, 0, 99]);
    }
}

#[cfg(test)]
mod blocking {
    use super::matmul;

    /// What `attend_runs`' query blocks rely on: a GEMM over a block of rows
    /// gives those rows the same bits as the GEMM over all rows.
    #[test]
    fn row_blocks_are_bit_identical() {
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        };
        for &(m, n, k) in &[
            (768usize, 256usize, 64usize),
            (300, 200, 64),
            (768, 64, 256),
            (24, 256, 64),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let mut full = vec![0f32; m * n];
            matmul(m, n, k, &a, k, 1, &b, 1, k, &mut full, 0.125);
            for qb in [super::QUERY_BLOCK, 64, 100] {
                let mut blocked = vec![0f32; m * n];
                for r0 in (0..m).step_by(qb) {
                    let r = qb.min(m - r0);
                    let out = &mut blocked[r0 * n..(r0 + r) * n];
                    matmul(r, n, k, &a[r0 * k..], k, 1, &b, 1, k, out, 0.125);
                }
                let same = full
                    .iter()
                    .zip(&blocked)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{m}x{n}x{k} in blocks of {qb} rows differs");
            }
        }
    }
}
