//! `y = x · Wᵀ` for a OneBit weight ([`OneBitLinear`]) without unpacking signs to floats.
//!
//! Each activation row is scaled by `b` once; then every output is a signed sum of those
//! inputs. With AVX2 a packed word is broadcast and shifted per lane (`vpsllvd`) so that
//! column `j`'s bit lands in bit 31, masked, and XORed into the inputs' float sign bits:
//! a shift, an AND, an XOR and an add per 8 weights, no multiplies and no unpacked weights.
//! Bands of output rows are split across threads; a row's few sign words stay in L1 while
//! every activation row (decode: 1; verification: a few) is summed against them.
//!
//! Many activation rows (prefill): a band of sign rows is expanded to ±1 floats and
//! multiplied by the blocked dense kernel, so a band, not the whole matrix, is ever unpacked.
//!
//! Both paths finish with [`OneBitLinear::finish_row`], the reference's own epilogue, so they
//! differ from [`matmul_onebit_nt_ref`](crate::packed::onebit::matmul_onebit_nt_ref) only in
//! the order of the additions: on inputs whose partial sums are exact in f32 they are
//! bit-identical to it.

use super::dense_f32::{gemm_nt_bands, WeightBands, GEMV_MAX_ROWS};
use crate::packed::onebit::{OneBitLinear, SIGNS_PER_WORD};

/// `x` is `[m, w.cols]`; returns `[m, w.rows]`.
pub fn matmul_onebit_nt(x: &[f32], w: &OneBitLinear, m: usize) -> Vec<f32> {
    let xb = padded_inputs(w, x, m);
    let n = w.rows;
    let mut y = if m <= GEMV_MAX_ROWS {
        gemv(&xb, w, m)
    } else {
        gemm_banded(&xb, w, m)
    };
    for row in y.chunks_exact_mut(n.max(1)) {
        w.finish_row(row);
    }
    y
}

/// `x ⊙ b`, each row padded with zeros to a whole number of words.
fn padded_inputs(w: &OneBitLinear, x: &[f32], m: usize) -> Vec<f32> {
    let scaled = w.scale_inputs(x, m);
    let kp = w.words_per_row() * SIGNS_PER_WORD;
    if kp == w.cols {
        return scaled;
    }
    let mut out = vec![0.0f32; m * kp];
    for (dst, src) in out.chunks_exact_mut(kp).zip(scaled.chunks_exact(w.cols)) {
        dst[..w.cols].copy_from_slice(src);
    }
    out
}

/// Raw sign sums `[m, rows]` for a few activation rows: one band of output rows per thread
/// on the decode team (no wake-up per call, as the other decode GEMVs).
fn gemv(xb: &[f32], w: &OneBitLinear, m: usize) -> Vec<f32> {
    let (n, wpr) = (w.rows, w.words_per_row());
    let kp = wpr * SIGNS_PER_WORD;
    let avx2 = has_avx2();
    // Computed `[rows, m]` (each band owns whole output rows), transposed at the end.
    let mut t = vec![0.0f32; n * m];
    super::team::for_each_row_band_mut(&mut t, m, |first, out| {
        for (i, dst) in out.chunks_exact_mut(m).enumerate() {
            let o = first + i;
            let words = &w.signs[o * wpr..(o + 1) * wpr];
            for (r, d) in dst.iter_mut().enumerate() {
                *d = signed_sum(words, &xb[r * kp..(r + 1) * kp], avx2);
            }
        }
    });
    super::dense_f32::from_row_major_out(t, n, m)
}

/// Raw sign sums `[m, rows]`: each thread expands bands of its sign rows to ±1 and
/// multiplies them densely.
fn gemm_banded(xb: &[f32], w: &OneBitLinear, m: usize) -> Vec<f32> {
    let kp = w.words_per_row() * SIGNS_PER_WORD;
    gemm_nt_bands(xb, m, kp, w.rows, w)
}

impl WeightBands for OneBitLinear {
    fn band<'s>(&'s self, o0: usize, rows: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let wpr = self.words_per_row();
        let kp = wpr * SIGNS_PER_WORD;
        scratch.resize(rows * kp, 0.0);
        for (i, dst) in scratch.chunks_exact_mut(kp).enumerate() {
            expand_signs(&self.signs[(o0 + i) * wpr..][..wpr], dst);
        }
        scratch
    }
}

/// One row of packed signs as ±1 floats (padding columns come out +1 against zero inputs).
fn expand_signs(words: &[u32], dst: &mut [f32]) {
    for (word, chunk) in words.iter().zip(dst.chunks_exact_mut(SIGNS_PER_WORD)) {
        for (j, d) in chunk.iter_mut().enumerate() {
            *d = f32::from_bits(1.0f32.to_bits() | (((word >> j) & 1) << 31));
        }
    }
}

/// `Σ_j S_j · x_j` for one row of packed signs against padded, scaled inputs.
fn signed_sum(words: &[u32], x: &[f32], avx2: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 was detected at run time; lengths are checked inside.
        return unsafe { signed_sum_avx2(words, x) };
    }
    let _ = avx2;
    signed_sum_portable(words, x)
}

/// Eight partial sums per word position, in the same lane layout as the AVX2 kernel.
fn signed_sum_portable(words: &[u32], x: &[f32]) -> f32 {
    let mut acc = [[0.0f32; 8]; 4];
    for (word, chunk) in words.iter().zip(x.chunks_exact(SIGNS_PER_WORD)) {
        for (k, lanes) in acc.iter_mut().enumerate() {
            for (l, a) in lanes.iter_mut().enumerate() {
                let j = 8 * k + l;
                *a += f32::from_bits(chunk[j].to_bits() ^ (((word >> j) & 1) << 31));
            }
        }
    }
    let mut s = [0.0f32; 8];
    for lanes in &acc {
        for (t, a) in s.iter_mut().zip(lanes) {
            *t += a;
        }
    }
    s.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signed_sum_avx2(words: &[u32], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    assert!(
        x.len() >= words.len() * SIGNS_PER_WORD,
        "input row too short"
    );
    // Lane l of step k shifts bit 8k + l up to bit 31.
    let shifts: [__m256i; 4] = std::array::from_fn(|k| {
        let c = |l: i32| 31 - (8 * k as i32 + l);
        _mm256_setr_epi32(c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7))
    });
    let sign_bit = _mm256_set1_epi32(i32::MIN);
    let mut acc = [_mm256_setzero_ps(); 4];
    let p = x.as_ptr();
    for (i, &word) in words.iter().enumerate() {
        let wv = _mm256_set1_epi32(word as i32);
        for k in 0..4 {
            let flip = _mm256_and_si256(_mm256_sllv_epi32(wv, shifts[k]), sign_bit);
            // SAFETY: word i's 32 inputs lie inside `x` (asserted above).
            let v = unsafe { _mm256_loadu_ps(p.add(i * SIGNS_PER_WORD + 8 * k)) };
            acc[k] = _mm256_add_ps(acc[k], _mm256_xor_ps(v, _mm256_castsi256_ps(flip)));
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::onebit::{matmul_onebit_nt_ref, pack_signs};

    /// Relative error allowed against the f64 reference on general float inputs: f32
    /// accumulation over at most a few thousand terms.
    const ONEBIT_F32_TOL: f32 = 1e-5;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        /// A multiple of 1/64 in [−4, 4): sums of a few thousand stay exact in f32.
        fn dyadic(&mut self) -> f32 {
            (self.next() % 512) as f32 / 64.0 - 4.0
        }
        fn float(&mut self) -> f32 {
            (self.next() as f32 / u32::MAX as f32) * 2.0 - 1.0
        }
    }

    fn layer(rng: &mut Lcg, rows: usize, cols: usize, norm: bool, dyadic: bool) -> OneBitLinear {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.float()).collect();
        let mut v = |n| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    if dyadic {
                        0.5 + (rng.next() % 4) as f32 * 0.25
                    } else {
                        0.1 + rng.float().abs()
                    }
                })
                .collect()
        };
        let (a, b) = (v(rows), v(cols));
        OneBitLinear::new(rows, cols, pack_signs(&w, rows, cols), a, b, norm).unwrap()
    }

    /// Every path (AVX2 and portable GEMV, banded prefill, ragged widths, with and without
    /// the output norm) equals the reference exactly where every partial sum is exact.
    #[test]
    fn kernels_equal_the_reference_exactly_on_dyadic_inputs() {
        let mut rng = Lcg(7);
        for &(rows, cols) in &[(64, 576), (33, 100), (300, 64), (5, 1536)] {
            for norm in [false, true] {
                let w = layer(&mut rng, rows, cols, norm, true);
                for m in [1, 3, GEMV_MAX_ROWS, 17] {
                    let x: Vec<f32> = (0..m * cols).map(|_| rng.dyadic()).collect();
                    let want = matmul_onebit_nt_ref(&x, &w, m);
                    let got = matmul_onebit_nt(&x, &w, m);
                    assert_eq!(got, want, "{rows}x{cols} m={m} norm={norm}");
                }
                let xb = padded_inputs(&w, &vec![1.0; cols], 1);
                let words = &w.signs[..w.words_per_row()];
                assert_eq!(
                    signed_sum_portable(words, &xb),
                    signed_sum(words, &xb, has_avx2())
                );
            }
        }
    }

    #[test]
    fn kernels_match_the_reference_on_random_floats() {
        let mut rng = Lcg(11);
        let (rows, cols) = (96, 1536);
        let w = layer(&mut rng, rows, cols, false, false);
        for m in [1, 4, 40] {
            let x: Vec<f32> = (0..m * cols).map(|_| rng.float()).collect();
            let want = matmul_onebit_nt_ref(&x, &w, m);
            let got = matmul_onebit_nt(&x, &w, m);
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= ONEBIT_F32_TOL * scale, "{g} vs {e}");
            }
        }
    }
}
