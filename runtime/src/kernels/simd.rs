//! Dot products with runtime CPU feature detection (AVX2+FMA where present, portable code
//! with independent accumulators elsewhere).

/// Σ a[i]·b[i] over equal-length slices.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_portable(a, b)
}

/// `[Σ w·x0, Σ w·x1]`: two activation rows against one weight row, loading the weight
/// once. Each result is bit-for-bit [`dot_f32`] of its row (same accumulators, same order),
/// so a batch of rows gives exactly what the rows give one at a time.
#[inline]
pub fn dot2_f32(w: &[f32], x0: &[f32], x1: &[f32]) -> [f32; 2] {
    debug_assert!(w.len() == x0.len() && w.len() == x1.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot2_f32_avx2(w, x0, x1) };
        }
    }
    [dot_f32_portable(x0, w), dot_f32_portable(x1, w)]
}

/// The AVX-512 lane mask of the first `min(n, 16)` of 16 lanes: the tails of the masked
/// loads and stores in the integer kernels.
#[inline]
pub fn lane_mask16(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Asks for every cache line of `data` to be loaded into L1 (a hint: no effect on results).
#[inline]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = data.as_ptr() as *const i8;
        let bytes = std::mem::size_of_val(data);
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch never faults, and the address lies inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Eight independent partial sums so the compiler can vectorize without reassociating.
pub fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n, or i + 8 <= n below, so every load is in bounds.
    while i + 32 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            acc2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
                acc2,
            );
            acc3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
                acc3,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        }
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let hi = _mm256_extractf128_ps(acc, 1);
    let lo = _mm256_castps256_ps128(acc);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    let mut total = _mm_cvtss_f32(s);
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// Horizontal sum in [`dot_f32_avx2`]'s order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(acc: [std::arch::x86_64::__m256; 4]) -> f32 {
    use std::arch::x86_64::*;
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let hi = _mm256_extractf128_ps(acc, 1);
    let lo = _mm256_castps256_ps128(acc);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot2_f32_avx2(w: &[f32], x0: &[f32], x1: &[f32]) -> [f32; 2] {
    use std::arch::x86_64::*;
    let n = w.len();
    let (pw, p0, p1) = (w.as_ptr(), x0.as_ptr(), x1.as_ptr());
    let mut a = [_mm256_setzero_ps(); 4];
    let mut b = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n, or i + 8 <= n below, so every load is in bounds.
    while i + 32 <= n {
        for j in 0..4 {
            unsafe {
                let wv = _mm256_loadu_ps(pw.add(i + 8 * j));
                // dot_f32(x, w) multiplies x by w: keep the operand order.
                a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i + 8 * j)), wv, a[j]);
                b[j] = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i + 8 * j)), wv, b[j]);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        unsafe {
            let wv = _mm256_loadu_ps(pw.add(i));
            a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i)), wv, a[0]);
            b[0] = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i)), wv, b[0]);
        }
        i += 8;
    }
    let (mut s0, mut s1) = unsafe { (hsum(a), hsum(b)) };
    while i < n {
        s0 += x0[i] * w[i];
        s1 += x1[i] * w[i];
        i += 1;
    }
    [s0, s1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot2_is_two_dots_bit_for_bit() {
        for n in [0usize, 1, 7, 8, 31, 32, 33, 576, 1537] {
            let g = |m: usize, d: f32| -> Vec<f32> {
                (0..n).map(|i| ((i * m % 97) as f32 - 48.0) / d).collect()
            };
            let (w, x0, x1) = (g(37, 7.0), g(53, 5.0), g(11, 3.0));
            let [a, b] = dot2_f32(&w, &x0, &x1);
            assert_eq!(a.to_bits(), dot_f32(&x0, &w).to_bits(), "n={n}");
            assert_eq!(b.to_bits(), dot_f32(&x1, &w).to_bits(), "n={n}");
        }
    }

    #[test]
    fn simd_dot_matches_f64_reference() {
        for n in [0usize, 1, 7, 8, 31, 32, 33, 576, 1537] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 5.0)
                .collect();
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum::<f64>()
                .max(1.0);
            for got in [dot_f32(&a, &b), dot_f32_portable(&a, &b)] {
                assert!(
                    ((got as f64 - want) / scale).abs() < 1e-6,
                    "n={n}: {got} vs {want}"
                );
            }
        }
    }
}
