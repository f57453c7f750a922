//! Decode GEMV for 4- and 8-bit `pack-quantized` weights with the activations quantized to
//! int16, so each 32-byte load of weights is multiplied in integers (AVX2 `vpmaddwd`): per
//! 64 weights a handful of integer instructions instead of a convert, a subtract and an FMA
//! per eight. The float kernel in `packed_q` spent about three cycles per eight 4-bit
//! weights and was compute-bound well below the memory bandwidth. CPUs with AVX-512 VNNI
//! run `packed_vnni` instead (the same int16 activations, multiplied as two int8 planes with
//! no widening of the weights); this is the kernel for AVX2 machines without it.
//!
//! Why int16 and not llama.cpp's int8: an int8 code per 32 activations moved SmolLM2's
//! perplexity by 0.12%, above the 0.05% the speed work may cost. An int16 code per block of
//! 64 (4-bit) or 32 (8-bit) columns has 258× less rounding error, bounded per output by
//! `Σ_c |w_c| · sx_block / 2` (tested below), and still keeps every product in `i16 × i16`.
//!
//! The definition ([`quantize_acts_i16`], `block_codes::matmul_block_codes_ref`):
//! `y[r][o] = Σ_g s[o][g] · Σ_{b ∈ g} sx[r][b] · Σ_{c ∈ b} (u[o][c] − z[o][g]) · q[r][c]`
//! with `u` the stored code, `z` the stored zero (zero point + storage offset), `q` the int16
//! activation code and `sx` its block scale. The kernel computes `Σ u·q` exactly in i32 lanes
//! and subtracts `z · Σ_{b∈g} sx·Σq` once per group, from sums taken once per call.

use super::block_codes::{int_gemv_supported, load_cols, quantize_blocks, BlockCodes};
use super::dense_f32::GEMV_MAX_ROWS;
use crate::packed::pack_quantized::storage_offset;
use crate::packed::PackedLinear;

/// Largest int16 activation code (symmetric: −32767..=32767).
const CODE_MAX: f32 = 32767.0;

/// Quantizes `x` (`[m, k]`) to int16 codes per `block` columns (scale = absmax / 32767).
/// The kernel takes blocks of one 32-byte weight load (`load_cols`: 64 four-bit or 32
/// eight-bit columns).
pub fn quantize_acts_i16(x: &[f32], m: usize, k: usize, block: usize) -> BlockCodes {
    quantize_blocks(x, m, k, block, CODE_MAX)
}

/// Whether this CPU runs the int16 kernel (AVX2 and FMA; otherwise the float GEMV runs).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Column of the `p`-th int16 value the kernel unpacks from one 32-byte block load (4-bit
/// codes sit two to a byte, low nibble first): four (4-bit) or two (8-bit) 16-lane vectors
/// from `vpunpck{l,h}bw`, which work per 128-bit lane. The activations are laid out in this
/// order so the kernel never shuffles.
fn kernel_column(bits: u8, p: usize) -> usize {
    let (i, e) = (p / 16, p % 16);
    let byte = (e / 8) * 16 + (i % 2) * 8 + e % 8;
    if bits == 4 {
        let nibble = i / 2;
        8 * (byte / 4) + 2 * (byte % 4) + nibble
    } else {
        byte
    }
}

/// Rows ahead of the one being multiplied whose bytes are prefetched: a decode GEMV is a
/// short stream (tens of KB per thread), over before the hardware prefetcher has ramped up.
const PREFETCH_ROWS: usize = 8;

/// `BlockCodes` codes of each row reordered block by block into kernel order, plus the
/// per-row, per-group correction `Σ_{b∈g} sx[b] · Σq[b]` (f32).
struct KernelActs {
    codes: Vec<i16>,
    zsum: Vec<f32>,
}

fn kernel_acts(x: &BlockCodes, w: &PackedLinear) -> KernelActs {
    let (k, b) = (x.k, x.block);
    let nb = k / b;
    let order: Vec<usize> = (0..b).map(|p| kernel_column(w.bits, p)).collect();
    let mut codes = vec![0i16; x.codes.len()];
    for (dst, src) in codes.chunks_exact_mut(b).zip(x.codes.chunks_exact(b)) {
        for (d, &c) in dst.iter_mut().zip(&order) {
            *d = src[c];
        }
    }
    let ng = w.n_groups();
    let mut zsum = vec![0.0f32; x.m * ng];
    for r in 0..x.m {
        for blk in 0..nb {
            let g = blk * b / w.group_size;
            zsum[r * ng + g] += x.scale[r * nb + blk] * x.code_sums[r * nb + blk] as f32;
        }
    }
    KernelActs { codes, zsum }
}

/// `x · Wᵀ` for `x` `[m, k]` (`m ≤ GEMV_MAX_ROWS`) through the int16 scheme; `None` when the
/// CPU or the weight does not take this path.
pub fn gemv_packed_i16(x: &[f32], w: &PackedLinear, m: usize) -> Option<Vec<f32>> {
    if !(available() && int_gemv_supported(w) && (1..=GEMV_MAX_ROWS).contains(&m)) {
        return None;
    }
    let acts = quantize_acts_i16(x, m, w.cols, load_cols(w.bits));
    Some(gemv_i16(&acts, w))
}

/// The AVX2 kernel over bands of output rows, in parallel. Panics if the CPU lacks AVX2.
pub fn gemv_i16(x: &BlockCodes, w: &PackedLinear) -> Vec<f32> {
    assert!(available(), "int16 GEMV needs AVX2");
    assert!(int_gemv_supported(w) && x.block == load_cols(w.bits) && x.k == w.cols);
    let (n, k, m) = (w.rows, w.cols, x.m);
    assert!((1..=GEMV_MAX_ROWS).contains(&m), "GEMV with {m} rows");
    let (wpr, ng) = (w.words_per_row(), w.n_groups());
    assert_eq!(w.packed.len(), n * wpr, "weight_packed shape");
    assert_eq!(w.scale.len(), n * ng, "weight_scale shape");
    if let Some(z) = &w.zero {
        assert_eq!(z.len(), n * ng, "weight_zero_point shape");
    }
    let ka = kernel_acts(x, w);
    let off = storage_offset(w.bits) as f32;
    let nb = k / x.block;
    let mut yt = vec![0.0f32; n * m];
    super::team::for_each_row_band_mut(&mut yt, m, |first, ys| {
        let rows = ys.len() / m;
        let prefetch_row = |o: usize| {
            if o < first + rows {
                super::simd::prefetch(&w.packed[o * wpr..(o + 1) * wpr]);
                super::simd::prefetch(&w.scale[o * ng..(o + 1) * ng]);
            }
        };
        (first..first + PREFETCH_ROWS).for_each(prefetch_row);
        for (i, yrow) in ys.chunks_exact_mut(m).enumerate() {
            let o = first + i;
            prefetch_row(o + PREFETCH_ROWS);
            let row = RowI16 {
                words: &w.packed[o * wpr..(o + 1) * wpr],
                scales: &w.scale[o * ng..(o + 1) * ng],
                zeros: w.zero.as_ref().map(|z| &z[o * ng..(o + 1) * ng]),
                offset: off,
                zsum: &ka.zsum,
                blocks_per_group: w.group_size / x.block,
            };
            // SAFETY: `available()` holds; the row holds k codes (wpr words), `ka.codes`
            // m·k values, `x.scale` m·nb, `ka.zsum` m·ng, and m ≤ 8.
            unsafe { avx2::row_dispatch(w.bits, &row, &ka.codes, &x.scale, k, nb, yrow) };
        }
    });
    super::dense_f32::from_row_major_out(yt, n, m)
}

impl RowI16<'_> {
    /// Adds group `g`'s zero-point term `s · z · Σ_{b∈g} sx·Σq` for each activation row to
    /// `corr` (one entry per row): what the kernels subtract from their sums of `u · q`.
    #[inline]
    fn add_zero_terms(&self, g: usize, corr: &mut [f32]) {
        let ng = self.scales.len();
        let zoff = self.scales[g] * (self.offset + self.zeros.map_or(0.0, |z| f32::from(z[g])));
        for (r, c) in corr.iter_mut().enumerate() {
            *c += zoff * self.zsum[r * ng + g];
        }
    }
}

/// `row_kernel::<BITS, M>` for the runtime number of activation rows `y.len()` (1..=8), in
/// whichever kernel module invokes it.
macro_rules! rows {
    ($bits:literal, $row:expr, $xq:expr, $sx:expr, $k:expr, $nb:expr, $y:expr) => {
        match $y.len() {
            1 => row_kernel::<$bits, 1>($row, $xq, $sx, $k, $nb, $y),
            2 => row_kernel::<$bits, 2>($row, $xq, $sx, $k, $nb, $y),
            3 => row_kernel::<$bits, 3>($row, $xq, $sx, $k, $nb, $y),
            4 => row_kernel::<$bits, 4>($row, $xq, $sx, $k, $nb, $y),
            5 => row_kernel::<$bits, 5>($row, $xq, $sx, $k, $nb, $y),
            6 => row_kernel::<$bits, 6>($row, $xq, $sx, $k, $nb, $y),
            7 => row_kernel::<$bits, 7>($row, $xq, $sx, $k, $nb, $y),
            8 => row_kernel::<$bits, 8>($row, $xq, $sx, $k, $nb, $y),
            m => unreachable!("GEMV with {m} rows"),
        }
    };
}

/// One output row: its packed words, group scales and zero points, the storage offset, the
/// activations' per-group correction sums (`[m, groups]`), and activation blocks per group.
struct RowI16<'a> {
    words: &'a [i32],
    scales: &'a [f32],
    zeros: Option<&'a [i8]>,
    offset: f32,
    zsum: &'a [f32],
    blocks_per_group: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::RowI16;

    /// Dispatches on bits and rows. # Safety: see `row_kernel`.
    pub(super) unsafe fn row_dispatch(
        bits: u8,
        row: &RowI16,
        xq: &[i16],
        sx: &[f32],
        k: usize,
        nb: usize,
        y: &mut [f32],
    ) {
        unsafe {
            if bits == 4 {
                rows!(4, row, xq, sx, k, nb, y)
            } else {
                rows!(8, row, xq, sx, k, nb, y)
            }
        }
    }

    /// `y[r] = Σ_g s[g] · (Σ_{b∈g} sx[r][b] · Σ_{c∈b} u[c] · q[r][c] − z[g] · zsum[r][g])`:
    /// per 32-byte block the codes become int16 lanes (`vpunpck{l,h}bw` against zero) and
    /// `vpmaddwd` multiplies them with the activation codes (already in kernel order); the
    /// block's i32 lanes are converted and scaled by `sx` once.
    ///
    /// # Safety
    /// AVX2; `row.words` holds `k` codes of `BITS` bits, `xq` at least `M·k` codes, `sx`
    /// `M·nb` scales, `row.scales` `nb / blocks_per_group` entries, `y` exactly `M`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row_kernel<const BITS: u32, const M: usize>(
        row: &RowI16,
        xq: &[i16],
        sx: &[f32],
        k: usize,
        nb: usize,
        y: &mut [f32],
    ) {
        debug_assert!(xq.len() >= M * k && sx.len() >= M * nb && y.len() == M);
        let bp = row.words.as_ptr() as *const u8;
        let xp = xq.as_ptr();
        let block = if BITS == 4 { 64 } else { 32 };
        let low = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let mut total = [_mm256_setzero_ps(); M];
        let mut corr = [0.0f32; M];
        let mut b = 0;
        for (g, &s) in row.scales.iter().enumerate() {
            row.add_zero_terms(g, &mut corr);
            let mut gacc = [_mm256_setzero_ps(); M];
            for _ in 0..row.blocks_per_group {
                // SAFETY: block b's 32 bytes lie inside the row (b < nb = k / block).
                let v = unsafe { _mm256_loadu_si256(bp.add(b * 32) as *const __m256i) };
                let c0 = b * block;
                if BITS == 4 {
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    let w = [
                        _mm256_unpacklo_epi8(lo, zero),
                        _mm256_unpackhi_epi8(lo, zero),
                        _mm256_unpacklo_epi8(hi, zero),
                        _mm256_unpackhi_epi8(hi, zero),
                    ];
                    for r in 0..M {
                        // SAFETY: r·k + c0 + 64 <= M·k.
                        let p = unsafe { xp.add(r * k + c0) } as *const __m256i;
                        let (x0, x1, x2, x3) = unsafe {
                            (
                                _mm256_loadu_si256(p),
                                _mm256_loadu_si256(p.add(1)),
                                _mm256_loadu_si256(p.add(2)),
                                _mm256_loadu_si256(p.add(3)),
                            )
                        };
                        let a = _mm256_add_epi32(
                            _mm256_add_epi32(
                                _mm256_madd_epi16(w[0], x0),
                                _mm256_madd_epi16(w[1], x1),
                            ),
                            _mm256_add_epi32(
                                _mm256_madd_epi16(w[2], x2),
                                _mm256_madd_epi16(w[3], x3),
                            ),
                        );
                        let scale = _mm256_set1_ps(sx[r * nb + b]);
                        gacc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), scale, gacc[r]);
                    }
                } else {
                    let w = [_mm256_unpacklo_epi8(v, zero), _mm256_unpackhi_epi8(v, zero)];
                    for r in 0..M {
                        // SAFETY: r·k + c0 + 32 <= M·k.
                        let p = unsafe { xp.add(r * k + c0) } as *const __m256i;
                        let (x0, x1) =
                            unsafe { (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))) };
                        let a = _mm256_add_epi32(
                            _mm256_madd_epi16(w[0], x0),
                            _mm256_madd_epi16(w[1], x1),
                        );
                        let scale = _mm256_set1_ps(sx[r * nb + b]);
                        gacc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), scale, gacc[r]);
                    }
                }
                b += 1;
            }
            let s = _mm256_set1_ps(s);
            for r in 0..M {
                total[r] = _mm256_fmadd_ps(gacc[r], s, total[r]);
            }
        }
        for ((yr, t), c) in y.iter_mut().zip(&total).zip(corr) {
            let hi = _mm256_extractf128_ps(*t, 1);
            let lo = _mm256_castps256_ps128(*t);
            let s = _mm_add_ps(hi, lo);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *yr = _mm_cvtss_f32(s) - c;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    use super::RowI16;
    pub(super) unsafe fn row_dispatch(
        _: u8,
        _: &RowI16,
        _: &[i16],
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("int16 GEMV without AVX2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::block_codes::tests::{activations, assert_matches_definition};
    // The same deterministic weights as the float kernels' tests.
    use crate::kernels::packed_q::tests::weight;

    /// The kernel's f32 sums against the f64 definition of the same int16 scheme, relative to
    /// `Σ_c |x̂_c · w_c|` (the float error of a dot product scales with that sum).
    const I16_KERNEL_REL_TOL: f64 = 2e-6;

    #[test]
    fn kernel_order_is_a_permutation_of_each_block() {
        for bits in [4u8, 8] {
            let b = load_cols(bits);
            let mut seen: Vec<usize> = (0..b).map(|p| kernel_column(bits, p)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..b).collect::<Vec<_>>(), "{bits}-bit");
        }
    }

    #[test]
    fn kernel_matches_the_int16_definition() {
        if !available() {
            eprintln!("skipped: no AVX2");
            return;
        }
        for bits in [4u8, 8] {
            let b = load_cols(bits);
            for symmetric in [true, false] {
                for (cols, group) in [(2 * b, b), (6 * b, 2 * b), (5 * b, 5 * b), (576, 64)] {
                    if !group.is_multiple_of(b) || !cols.is_multiple_of(b) {
                        continue;
                    }
                    let w = weight(bits, 45, cols, group, symmetric);
                    assert!(int_gemv_supported(&w));
                    for m in [1, 2, 3, 8] {
                        let x = activations(m, cols, m + cols);
                        let a = quantize_acts_i16(&x, m, cols, b);
                        let what =
                            format!("bits {bits} sym {symmetric} cols {cols} group {group} m {m}");
                        assert_matches_definition(
                            &gemv_i16(&a, &w),
                            &a,
                            &w,
                            I16_KERNEL_REL_TOL,
                            &what,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weights_it_cannot_take_are_declined() {
        assert!(gemv_packed_i16(&[0.0; 64 * 9], &weight(4, 3, 64, 64, true), 9).is_none());
    }
}
