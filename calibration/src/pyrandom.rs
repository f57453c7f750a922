//! Python's `random` module (CPython's MT19937 and its integer helpers), bit for bit.
//!
//! GPTQ, AWQ and llm-compressor pick calibration windows with `random.seed(seed)` followed by
//! `random.randint(0, n - seqlen - 1)`; to reproduce their calibration sets (and the reference
//! files in `shared/reference/`) exactly, we need the same generator, seeding and rejection
//! sampling, not just "a Mersenne Twister".

use crate::CalibrationError;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython's `random.Random` for integer seeds, with the methods calibration sampling needs.
///
/// Only integer seeds are supported (Python hashes other seed types differently), and only
/// ranges below 2^32 (`getrandbits(k)` for `k <= 32`), which covers any token count.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer: `init_by_array` with the seed's 32-bit
    /// words, least significant first (seed 0 gives the key `[0]`).
    pub fn new(seed: u64) -> Self {
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        if hi == 0 {
            Self::from_key(&[lo])
        } else {
            Self::from_key(&[lo, hi])
        }
    }

    /// CPython's `init_by_array(key)`.
    fn from_key(key: &[u32]) -> Self {
        let mut r = Self::from_u32(19_650_218);
        let mt = &mut r.mt;
        let mut i = 1usize;
        let mut j = 0usize;
        for _ in 0..N.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        r
    }

    /// CPython's `init_genrand(s)`.
    fn from_u32(s: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = s;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, index: N }
    }

    fn twist(&mut self) {
        let mt = &mut self.mt;
        for kk in 0..N {
            let y = (mt[kk] & UPPER_MASK) | (mt[(kk + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            mt[kk] = mt[(kk + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// CPython's `genrand_uint32()`: the next raw 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.getrandbits(k)` for `1 <= k <= 32` (the top `k` bits of one output).
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.next_u32() >> (32 - k)
    }

    /// `random._randbelow(n)`: uniform in `0..n` by rejection on `n.bit_length()` bits.
    /// Errors for `n == 0` (Python raises) and `n >= 2^32` (would need more than 32 bits).
    pub fn randbelow(&mut self, n: u64) -> Result<u64, CalibrationError> {
        if n == 0 || n > u64::from(u32::MAX) {
            return Err(CalibrationError::InvalidArgument(format!(
                "random range of size {n} is empty or needs more than 32 random bits"
            )));
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = u64::from(self.getrandbits(k));
            if r < n {
                return Ok(r);
            }
        }
    }

    /// `random.randint(a, b)`: uniform in `a..=b`, consuming the generator exactly like
    /// Python (`a + _randbelow(b - a + 1)`).
    pub fn randint(&mut self, a: u64, b: u64) -> Result<u64, CalibrationError> {
        if b < a {
            return Err(CalibrationError::InvalidArgument(format!(
                "empty range for randint({a}, {b})"
            )));
        }
        Ok(a + self.randbelow(b - a + 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(seed: u64, a: u64, b: u64, n: usize) -> Vec<u64> {
        let mut r = PyRandom::new(seed);
        (0..n).map(|_| r.randint(a, b).unwrap()).collect()
    }

    /// Values printed by CPython 3.11 (`random.seed(S); [random.randint(A, B) for ...]`).
    #[test]
    fn randint_matches_cpython() {
        assert_eq!(
            draws(0, 0, 535_381 - 513, 5),
            [403958, 441001, 42450, 271493, 509532]
        );
        assert_eq!(
            draws(42, 0, 1000, 8),
            [654, 114, 25, 759, 281, 250, 228, 142]
        );
        assert_eq!(draws(1, 0, 1, 10), [0, 0, 1, 0, 1, 1, 1, 1, 0, 0]);
        // Seeds above 2^32 use a two-word key.
        assert_eq!(draws((1 << 32) + 7, 0, 99, 6), [28, 97, 45, 43, 7, 49]);
        assert_eq!(draws(u64::MAX, 0, 99, 4), [2, 31, 43, 79]);
    }

    #[test]
    fn raw_outputs_match_cpython() {
        let mut r = PyRandom::new(0);
        let got: Vec<u32> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [3626764237, 1654615998, 3255389356]);
    }

    /// `randint(5, 5)` still consumes draws (k = 1, rejection until 0), and a range of
    /// 2^32 - 1 values uses all 32 bits.
    #[test]
    fn degenerate_and_widest_ranges_consume_like_cpython() {
        let mut r = PyRandom::new(123_456_789);
        assert_eq!(r.randint(5, 5).unwrap(), 5);
        assert_eq!(r.randint(5, 5).unwrap(), 5);
        assert_eq!(r.randint(0, 1).unwrap(), 1);
        let wide: Vec<u64> = (0..3)
            .map(|_| r.randint(0, (1u64 << 32) - 2).unwrap())
            .collect();
        assert_eq!(wide, [2959673361, 2004409099, 1705576544]);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut r = PyRandom::new(0);
        assert!(r.randint(0, u64::from(u32::MAX)).is_err());
        assert!(r.randint(3, 2).is_err());
    }
}
