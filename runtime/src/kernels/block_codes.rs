//! Activations coded per block of columns, for the integer GEMVs over `pack-quantized`
//! weights (`packed_i16` on AVX2, `packed_vnni` with AVX-512 VNNI): one definition of the
//! codes and of the product they stand for, which both kernels are tested against.
//!
//! `y[r][o] = Σ_g s[o][g] · Σ_{b ∈ g} sx[r][b] · Σ_{c ∈ b} (u[o][c] − z[o][g]) · q[r][c]`
//! with `u` the stored weight code, `z` the stored zero (zero point + storage offset), `q`
//! the activation code and `sx` the scale of its block.

use crate::packed::pack_quantized::{storage_offset, unpack_int32};
use crate::packed::PackedLinear;

/// Columns one 32-byte weight load covers: 64 four-bit or 32 eight-bit codes.
pub const fn load_cols(bits: u8) -> usize {
    if bits == 4 {
        64
    } else {
        32
    }
}

/// Whether the integer GEMVs handle `w`: 4 or 8 bits, no `g_idx`, and groups (and the
/// width) made of whole 32-byte loads.
pub fn int_gemv_supported(w: &PackedLinear) -> bool {
    let b = load_cols(w.bits);
    matches!(w.bits, 4 | 8)
        && w.g_idx.is_none()
        && w.group_size.is_multiple_of(b)
        && w.cols.is_multiple_of(b)
        && w.cols > 0
}

/// Activations of one GEMV as integer codes: `codes` `[m, k]` in column order, `scale`
/// `[m, k / block]` (value = code · scale), and each block's code sum (for zero points).
#[derive(Debug, Clone)]
pub struct BlockCodes {
    pub m: usize,
    pub k: usize,
    pub block: usize,
    pub codes: Vec<i16>,
    pub scale: Vec<f32>,
    pub code_sums: Vec<i32>,
}

impl BlockCodes {
    /// Rows `first..first + m` as codes of their own: coding is per row, so a group of rows
    /// is coded exactly as when it came alone.
    pub fn rows(&self, first: usize, m: usize) -> BlockCodes {
        assert!(
            first + m <= self.m,
            "rows {first}..{} of {}",
            first + m,
            self.m
        );
        let nb = self.k / self.block;
        BlockCodes {
            m,
            k: self.k,
            block: self.block,
            codes: self.codes[first * self.k..(first + m) * self.k].to_vec(),
            scale: self.scale[first * nb..(first + m) * nb].to_vec(),
            code_sums: self.code_sums[first * nb..(first + m) * nb].to_vec(),
        }
    }
}

/// Quantizes `x` (`[m, k]`, `k` a multiple of `block`) per row and per `block` columns:
/// scale = absmax / `code_max`, codes rounded to nearest (ties to even). An all-zero block
/// has scale 0 and codes 0.
pub fn quantize_blocks(x: &[f32], m: usize, k: usize, block: usize, code_max: f32) -> BlockCodes {
    assert_eq!(x.len(), m * k, "activation shape");
    assert!(
        block > 0 && k.is_multiple_of(block),
        "{k} columns in blocks of {block}"
    );
    assert!((1.0..=32767.0).contains(&code_max), "int16 code range");
    let nb = k / block;
    let mut codes = vec![0i16; m * k];
    let mut scale = vec![0.0f32; m * nb];
    let mut code_sums = vec![0i32; m * nb];
    if k > 0 {
        let simd = block.is_multiple_of(16) && super::packed_vnni::available();
        let row = |(((q, s), sum), xs): RowParts| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX-512 F/BW/VL checked (`packed_vnni::available`).
                return unsafe { avx512::quantize_row(xs, q, s, sum, block, code_max) };
            }
            let _ = simd;
            quantize_row(xs, q, s, sum, block, code_max)
        };
        // A prompt's worth of rows is worth spreading over the threads; a decode step's is
        // not (waking them would cost more than the work).
        if m >= PARALLEL_ROWS {
            use rayon::prelude::*;
            codes
                .par_chunks_mut(k)
                .zip(scale.par_chunks_mut(nb))
                .zip(code_sums.par_chunks_mut(nb))
                .zip(x.par_chunks(k))
                .with_min_len(8)
                .for_each(row);
        } else {
            codes
                .chunks_mut(k)
                .zip(scale.chunks_mut(nb))
                .zip(code_sums.chunks_mut(nb))
                .zip(x.chunks(k))
                .for_each(row);
        }
    }
    BlockCodes {
        m,
        k,
        block,
        codes,
        scale,
        code_sums,
    }
}

/// One row's codes, scales and code sums, zipped with its activations.
type RowParts<'a> = (((&'a mut [i16], &'a mut [f32]), &'a mut [i32]), &'a [f32]);

/// Rows from which [`quantize_blocks`] runs in parallel.
const PARALLEL_ROWS: usize = 64;

/// One row's blocks (see [`quantize_blocks`]).
fn quantize_row(
    x: &[f32],
    codes: &mut [i16],
    scale: &mut [f32],
    code_sums: &mut [i32],
    block: usize,
    code_max: f32,
) {
    for ((xs, qs), (s, sum)) in x
        .chunks_exact(block)
        .zip(codes.chunks_exact_mut(block))
        .zip(scale.iter_mut().zip(code_sums.iter_mut()))
    {
        let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            // Zero block: codes stay 0. A non-finite block keeps its infinity/NaN visible.
            *s = if amax == 0.0 { 0.0 } else { amax };
            continue;
        }
        *s = amax / code_max;
        let inv = code_max / amax;
        let mut acc = 0i32;
        for (q, &v) in qs.iter_mut().zip(xs) {
            let c = round_ties_even_small((v * inv).clamp(-code_max, code_max)) as i16;
            *q = c;
            acc += i32::from(c);
        }
        *sum = acc;
    }
}

/// [`quantize_row`] on 16 lanes at a time: the same operations in the same order (absmax,
/// `amax / code_max`, `v · (code_max / amax)`, clamp, round half to even by `vcvtps2dq` in
/// the default rounding mode), so the codes are identical (tested). Prefill codes every
/// linear's input; the scalar loop took a tenth of the int16 GEMM's time.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_row(
        x: &[f32],
        codes: &mut [i16],
        scale: &mut [f32],
        code_sums: &mut [i32],
        block: usize,
        code_max: f32,
    ) {
        for ((xs, qs), (s, sum)) in x
            .chunks_exact(block)
            .zip(codes.chunks_exact_mut(block))
            .zip(scale.iter_mut().zip(code_sums.iter_mut()))
        {
            let mut m = _mm512_setzero_ps();
            for v in xs.chunks_exact(16) {
                // SAFETY: 16 floats.
                let v = unsafe { _mm512_loadu_ps(v.as_ptr()) };
                m = _mm512_max_ps(m, _mm512_abs_ps(v));
            }
            let amax = _mm512_reduce_max_ps(m);
            if amax == 0.0 || !amax.is_finite() {
                // The scalar path's special blocks, decided by the scalar path.
                super::quantize_row(
                    xs,
                    qs,
                    std::slice::from_mut(s),
                    std::slice::from_mut(sum),
                    block,
                    code_max,
                );
                continue;
            }
            *s = amax / code_max;
            let inv = _mm512_set1_ps(code_max / amax);
            let (lo, hi) = (_mm512_set1_ps(-code_max), _mm512_set1_ps(code_max));
            let mut acc = _mm512_setzero_si512();
            for (v, q) in xs.chunks_exact(16).zip(qs.chunks_exact_mut(16)) {
                // SAFETY: 16 floats in, 16 i16 out.
                unsafe {
                    let v = _mm512_mul_ps(_mm512_loadu_ps(v.as_ptr()), inv);
                    let c = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
                    acc = _mm512_add_epi32(acc, c);
                    _mm256_storeu_si256(q.as_mut_ptr() as *mut _, _mm512_cvtepi32_epi16(c));
                }
            }
            *sum = _mm512_reduce_add_epi32(acc);
        }
    }
}

/// Round half to even for |v| < 2^22 without a libm call (baseline x86-64 has no `roundss`):
/// adding and subtracting 1.5·2^23 leaves the nearest integer under the default rounding.
#[inline]
fn round_ties_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The stored zero of row `o`, group `g`: zero point plus storage offset (what a stored
/// code has subtracted before the group's scale multiplies it).
pub(crate) fn stored_zero(w: &PackedLinear, o: usize, g: usize) -> i32 {
    let zp = w
        .zero
        .as_ref()
        .map_or(0, |z| i32::from(z[o * w.n_groups() + g]));
    storage_offset(w.bits) + zp
}

/// Plain definition of the product (module docs), accumulated in f64. Returns `[m, rows]`.
pub fn matmul_block_codes_ref(x: &BlockCodes, w: &PackedLinear) -> Vec<f32> {
    assert_eq!(x.k, w.cols, "activation width");
    assert!(
        w.group_size.is_multiple_of(x.block) && w.g_idx.is_none(),
        "an activation block of {} columns must lie inside one weight group of {}",
        x.block,
        w.group_size
    );
    let (n, k, m) = (w.rows, w.cols, x.m);
    let nb = k / x.block;
    let wpr = w.words_per_row();
    let mut y = vec![0.0f32; m * n];
    for o in 0..n {
        let u = unpack_int32(&w.packed[o * wpr..(o + 1) * wpr], 1, k, w.bits)
            .expect("a validated weight");
        for r in 0..m {
            let mut total = 0.0f64;
            for b in 0..nb {
                let c0 = b * x.block;
                let g = c0 / w.group_size;
                let z = f64::from(stored_zero(w, o, g));
                let dot: f64 = (c0..c0 + x.block)
                    .map(|c| (f64::from(u[c]) - z) * f64::from(x.codes[r * k + c]))
                    .sum();
                total +=
                    f64::from(w.scale[o * w.n_groups() + g]) * f64::from(x.scale[r * nb + b]) * dot;
            }
            y[r * n + o] = total as f32;
        }
    }
    y
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::packed_q::matmul_packed_nt_ref;
    use crate::kernels::packed_q::tests::weight;

    /// Deterministic activations with a few outlier channels, as real hidden states have.
    pub(crate) fn activations(m: usize, k: usize, seed: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| {
                let v = (((i + seed) * 2654435761) % 10007) as f32 / 10007.0 - 0.5;
                if i % 97 == 5 {
                    v * 60.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// A kernel's outputs `got` (`[m, rows]`) against [`matmul_block_codes_ref`] on the same
    /// codes, each within `rel_tol` of `Σ_c |x̂_c · w_c|` (the float error of a dot product
    /// scales with that sum).
    pub(crate) fn assert_matches_definition(
        got: &[f32],
        a: &BlockCodes,
        w: &PackedLinear,
        rel_tol: f64,
        what: &str,
    ) {
        let want = matmul_block_codes_ref(a, w);
        let wd = w.dequantize_ref();
        let (k, nb) = (a.k, a.k / a.block);
        for r in 0..a.m {
            for o in 0..w.rows {
                let mag: f64 = (0..k)
                    .map(|c| {
                        let xh = f32::from(a.codes[r * k + c]) * a.scale[r * nb + c / a.block];
                        f64::from(xh * wd[o * k + c]).abs()
                    })
                    .sum();
                let (g, e) = (got[r * w.rows + o], want[r * w.rows + o]);
                assert!(
                    f64::from((g - e).abs()) <= rel_tol * mag.max(1e-30),
                    "{what} row {r} out {o}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn vector_codes_equal_the_scalar_definition() {
        // Ties (s = 1 when the block's absmax equals code_max), zero and outlier blocks,
        // prompt-sized (parallel) and decode-sized inputs.
        let mut x = activations(70, 128, 3);
        x[..32].copy_from_slice(&[0.0; 32]);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[63] = 127.0;
        for (m, block, code_max) in [
            (70, 32, 32639.0),
            (3, 32, 127.0),
            (70, 64, 127.0),
            (1, 16, 32767.0),
        ] {
            let x = &x[..m * 128];
            let got = quantize_blocks(x, m, 128, block, code_max);
            let (mut codes, mut scale, mut sums) = (
                vec![0i16; m * 128],
                vec![0.0f32; m * 128 / block],
                vec![0i32; m * 128 / block],
            );
            for r in 0..m {
                let nb = 128 / block;
                quantize_row(
                    &x[r * 128..(r + 1) * 128],
                    &mut codes[r * 128..(r + 1) * 128],
                    &mut scale[r * nb..(r + 1) * nb],
                    &mut sums[r * nb..(r + 1) * nb],
                    block,
                    code_max,
                );
            }
            assert_eq!(
                (got.codes, got.scale, got.code_sums),
                (codes, scale, sums),
                "m {m} block {block} max {code_max}"
            );
        }
    }

    #[test]
    fn magic_rounding_is_round_half_to_even() {
        for i in -70000..70000 {
            let v = i as f32 * 0.5 + if i % 3 == 0 { 0.0 } else { 0.13 };
            assert_eq!(round_ties_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn codes_use_absmax_over_the_code_range_per_block() {
        let x = [0.5f32, -1.0, 0.25, 0.0, 2.0, 2.0, -2.0, 1.0];
        let a = quantize_blocks(&x, 1, 8, 4, 32767.0);
        assert_eq!(a.scale, vec![1.0 / 32767.0, 2.0 / 32767.0]);
        assert_eq!(
            a.codes,
            vec![16384, -32767, 8192, 0, 32767, 32767, -32767, 16384]
        );
        assert_eq!(a.code_sums, vec![16384 - 32767 + 8192, 32767 + 16384]);
        let a = quantize_blocks(&x, 1, 8, 4, 127.0);
        assert_eq!(&a.codes[..4], &[64, -127, 32, 0]);
        let z = quantize_blocks(&[0.0; 4], 1, 4, 4, 127.0);
        assert_eq!((z.scale[0], z.codes.clone()), (0.0, vec![0; 4]));
    }

    #[test]
    fn rounding_stays_within_its_bound_of_the_float_product() {
        // |y − y_f32| ≤ Σ_c |w_c| · sx_block(c) / 2, plus float slop.
        let x = activations(2, 256, 7);
        for (block, code_max) in [(32, 127.0), (32, 32639.0), (64, 32767.0)] {
            for bits in [4u8, 8] {
                let (cols, m) = (256, 2);
                // Groups of 64: every activation block lies inside one weight group.
                let w = weight(bits, 30, cols, 64, false);
                let a = quantize_blocks(&x, m, cols, block, code_max);
                let got = matmul_block_codes_ref(&a, &w);
                let want = matmul_packed_nt_ref(&x, &w, m);
                let wd = w.dequantize_ref();
                let nb = cols / block;
                for r in 0..m {
                    for o in 0..w.rows {
                        let bound: f64 = (0..cols)
                            .map(|c| {
                                f64::from(wd[o * cols + c].abs())
                                    * f64::from(a.scale[r * nb + c / block])
                                    / 2.0
                            })
                            .sum();
                        let err = f64::from((got[r * w.rows + o] - want[r * w.rows + o]).abs());
                        assert!(
                            err <= bound * 1.01 + 1e-6,
                            "block {block} max {code_max} bits {bits} r {r} o {o}: {err} > {bound}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weights_the_integer_gemvs_cannot_take_are_declined() {
        assert!(!int_gemv_supported(&weight(4, 3, 64, 32, true)));
        assert!(!int_gemv_supported(&weight(3, 3, 64, 64, true)));
        assert!(int_gemv_supported(&weight(8, 3, 64, 32, true)));
    }
}
