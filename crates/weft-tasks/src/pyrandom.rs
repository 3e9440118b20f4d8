//! A bit-exact port of CPython's `random` module (MT19937) for the calls the
//! APR reference makes: `seed(int)`, `random()`, `shuffle`, `randint`,
//! `choice`. With it our trace writers consume randomness exactly as
//! `src/data/search.py` does, so a given seed gives the reference's bytes.

const N: usize = 624;
const M: usize = 397;

/// Python's `random.Random`, seeded from an integer.
#[derive(Clone)]
pub struct PyRandom {
    mt: Box<[u32; N]>,
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom")
            .field("index", &self.index)
            .finish()
    }
}

impl PyRandom {
    /// Same state as Python's `random.seed(seed)` for a non-negative int.
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut rng = PyRandom {
            mt: Box::new([0; N]),
            index: N,
        };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    /// The next raw 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for k in 0..N {
            let y = (self.mt[k] & UPPER) | (self.mt[(k + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// `random.random()`: a float in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.getrandbits(k)` for k <= 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        if k == 0 {
            0
        } else {
            self.next_u32() >> (32 - k)
        }
    }

    /// `random._randbelow(n)`: uniform in [0, n), by rejection. `n` must be
    /// below 2^32 (ours are list lengths and small ranges).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        debug_assert!(n <= u32::MAX as u64 + 1);
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as u64;
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(lo, hi)`, both ends included (`lo <= hi`).
    pub fn randint(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.randbelow(hi - lo + 1)
    }

    /// `random.shuffle(items)`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11's `random` module.
    #[test]
    fn matches_cpython_seed_0() {
        let mut r = PyRandom::new(0);
        let bits: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(bits, [3626764237, 1654615998, 3255389356]);
        assert_eq!(r.random(), 0.890243920837131);
    }

    #[test]
    fn matches_cpython_multiword_seeds() {
        let mut r = PyRandom::new(12345678901234);
        assert_eq!([r.next_u32(), r.next_u32()], [107551873, 2403399316]);
        assert_eq!(r.random(), 0.14532691110186335);
        let mut r = PyRandom::new((1 << 40) + 5);
        assert_eq!(r.next_u32(), 2166296868);
    }

    #[test]
    fn shuffle_and_randint_match_cpython() {
        let mut r = PyRandom::new(7);
        let mut l: Vec<u32> = (0..10).collect();
        r.shuffle(&mut l);
        assert_eq!(l, [8, 3, 1, 4, 7, 0, 9, 6, 2, 5]);
        assert_eq!(r.randint(1, 99), 65);
        assert_eq!(r.random(), 0.21469818083566172);
    }
}
