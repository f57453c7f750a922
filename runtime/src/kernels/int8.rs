//! W8A8: `y = x · Wᵀ` for an int8 weight ([`Int8Linear`], per-output-channel scales) with
//! the activations quantized at run time to int8, one scale per token, and the products
//! summed in i32 — real integer arithmetic, not dequantized floats.
//!
//! Activation quantization is vLLM's dynamic per-token scheme (`scaled_int8_quant`):
//! `scale = absmax / 127`, `q = round_half_even(x / scale)`, codes in `[−127, 127]`; or,
//! for [`ActQuant::Asymmetric`], its zero-point variant: over the token's range widened to
//! hold zero, `scale = (max − min) / 255`, `z = round_half_even(−128 − min / scale)`, `q =
//! clamp(round_half_even(x / scale) + z, −128, 127)`, so `x ≈ scale · (q − z)`. Either way
//! a token is `(codes, scale, z)` (z = 0 when symmetric) and the product sums `(q − z) · w`.
//! The weights use compressed-tensors' full `[−128, 127]`.
//!
//! Where AVX-512 VNNI is present, `vpdpbusd` on the codes as bytes does 64 products per
//! instruction ([`super::int8_vnni`]); on AVX2 the byte kernel ([`super::int8_avx2`]:
//! `vpmaddubsw` with the sign trick, on the same tiled weight layout) does 32 per four
//! instructions. The older AVX2 path below (`LMQ_NO_AVX2_BYTES=1`, for comparison) works on
//! int16 copies (the activations widened once per call, each band of weight rows once per
//! band, into L1-resident scratch) and multiplies pairs with `vpmaddwd` over tiles of 2
//! tokens × 4 output rows; bands of output rows are split across threads. Every product and
//! partial sum is an exact integer (|(q_x − z)·q_w| ≤ 255·128, and `cols` < 2³¹ / 32640 is
//! asserted), so every fast path equals the scalar reference bit for bit: the i32 sums are
//! identical, and the float epilogue `acc · (s_x · s_w)` is computed the same way in all.

use rayon::prelude::*;

use super::int8_avx2;
use super::int8_vnni::{self, OffsetActs};
use crate::packed::{ActQuant, Int8Linear};

/// Largest activation code (vLLM's symmetric per-token range).
pub const ACT_QMAX: f32 = 127.0;

/// Steps between the smallest and largest asymmetric code (`−128..=127`).
pub const ACT_ASYM_LEVELS: f32 = 255.0;

/// Widest input for which an i32 accumulator cannot overflow: |q − z| ≤ 255 times |w| ≤
/// 128 per product.
const MAX_COLS: usize = (i32::MAX / (255 * 128)) as usize;

/// Output rows per task of the thread team.
const ROWS_PER_TASK: usize = 16;

/// Activations quantized per token: codes `[m, k]`, one scale and one zero point per row
/// (`x ≈ scale · (code − zero)`; zero is 0 when symmetric).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActs {
    pub codes: Vec<i8>,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
    pub rows: usize,
    pub cols: usize,
}

/// Per-token int8 quantization of `x` `[m, k]` as `mode` says (an all-zero row gets scale
/// 1, zero point 0 and zero codes).
pub fn quantize_per_token(x: &[f32], m: usize, k: usize, mode: ActQuant) -> QuantizedActs {
    assert_eq!(x.len(), m * k, "activation shape");
    let mut codes = vec![0i8; m * k];
    let mut scale = vec![0.0f32; m];
    let mut zero = vec![0i32; m];
    codes
        .par_chunks_mut(k.max(1))
        .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
        .zip(x.par_chunks(k.max(1)))
        .for_each(|((q, (s, z)), row)| (*s, *z) = quantize_row(row, q, |c| c, mode));
    if k == 0 {
        scale.fill(1.0);
    }
    QuantizedActs {
        codes,
        scale,
        zero,
        rows: m,
        cols: k,
    }
}

/// The same quantization straight into the VNNI kernel's operand (`code + 128`, rows padded
/// to a multiple of 4 columns with code 0), one row per team task: prefill quantizes every
/// linear's input, and a separate pass to offset the codes would read them all again.
pub fn quantize_per_token_offset(x: &[f32], m: usize, k: usize, mode: ActQuant) -> OffsetActs {
    assert_eq!(x.len(), m * k, "activation shape");
    let stride = k.div_ceil(4) * 4;
    let vnni = super::packed_vnni::available();
    let mut codes = vec![128u8; m * stride];
    let mut scale = vec![0.0f32; m];
    let mut zero = vec![0i32; m];
    if k > 0 {
        let scales = super::team::SendPtr(scale.as_mut_ptr());
        let zeros = super::team::SendPtr(zero.as_mut_ptr());
        super::team::for_each_chunk_mut(&mut codes, stride, |t, q| {
            let row = &x[t * k..(t + 1) * k];
            let (s, z) = match vnni {
                true => int8_vnni::quantize_row_offset(row, &mut q[..k], mode),
                false => quantize_row(row, &mut q[..k], offset_code, mode),
            };
            // The whole wrappers, not their raw fields, into the closure.
            let (ps, pz) = (scales, zeros);
            // SAFETY: each token t is one task, so each scale and zero point is written
            // once, and both vectors outlive the loop.
            unsafe {
                *ps.0.add(t) = s;
                *pz.0.add(t) = z;
            }
        });
    } else {
        scale.fill(1.0);
    }
    OffsetActs {
        codes,
        scale,
        zero,
        rows: m,
        stride,
    }
}

/// A code as the VNNI kernel's unsigned operand: `code + 128`.
#[inline]
fn offset_code(c: i8) -> u8 {
    (c as u8) ^ 0x80
}

/// One token's codes as `mode` says (see the module docs; `x / scale` is computed as
/// `x · (1 / scale)`), each written through `store`; returns the scale and zero point. The
/// single definition every layout and kernel uses.
#[inline]
fn quantize_row<T>(
    row: &[f32],
    q: &mut [T],
    store: impl Fn(i8) -> T,
    mode: ActQuant,
) -> (f32, i32) {
    match mode {
        ActQuant::Symmetric => {
            let amax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let s = if amax > 0.0 { amax / ACT_QMAX } else { 1.0 };
            let inv = 1.0 / s;
            for (c, v) in q.iter_mut().zip(row) {
                *c = store(round_half_even((v * inv).clamp(-ACT_QMAX, ACT_QMAX)) as i8);
            }
            (s, 0)
        }
        ActQuant::Asymmetric => {
            let (lo, hi) = row
                .iter()
                .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let (s, z) = asym_params(lo, hi);
            let inv = 1.0 / s;
            for (c, v) in q.iter_mut().zip(row) {
                *c = store((round_half_even(v * inv) as i32 + z).clamp(-128, 127) as i8);
            }
            (s, z)
        }
    }
}

/// Scale and zero point of an asymmetric token whose values (and zero) span `[lo, hi]`
/// (`lo ≤ 0 ≤ hi`): the zero point is in `[−128, 127]` because the range holds zero, which
/// keeps every `q − z` within ±255. An all-zero token gets scale 1, zero point 0.
#[inline]
pub(super) fn asym_params(lo: f32, hi: f32) -> (f32, i32) {
    if hi <= lo {
        return (1.0, 0);
    }
    let s = (hi - lo) / ACT_ASYM_LEVELS;
    let z = round_half_even(-128.0 - lo * (1.0 / s)) as i32;
    (s, z.clamp(-128, 127))
}

/// Round half to even for |v| < 2²²: adding and removing 1.5·2²³ leaves the integer the FPU
/// rounds to (round-to-nearest-even, the default mode). The same as `f32::round_ties_even`,
/// which is a library call without SSE4.1 at compile time; this one vectorizes.
#[inline]
fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The float result of one integer dot product: `acc · (s_x · s_w)`, shared by the reference
/// and the fast path so both round identically.
#[inline]
fn epilogue(acc: i32, sx: f32, sw: f32) -> f32 {
    acc as f32 * (sx * sw)
}

/// Plain definition: i32 sums of code products, then [`epilogue`]. Returns `[m, rows]`.
pub fn matmul_i8_ref(x: &QuantizedActs, w: &Int8Linear) -> Vec<f32> {
    assert_eq!(x.cols, w.cols, "activation width");
    let (m, n, k) = (x.rows, w.rows, w.cols);
    let mut y = vec![0.0f32; m * n];
    for t in 0..m {
        for o in 0..n {
            let mut acc = 0i32;
            for c in 0..k {
                acc += (i32::from(x.codes[t * k + c]) - x.zero[t]) * i32::from(w.codes[o * k + c]);
            }
            y[t * n + o] = epilogue(acc, x.scale[t], w.scale[o]);
        }
    }
    y
}

/// The integer sums `acc[t][o]` for output rows `o0..o0+rows` (into `out`, `[m, rows]`).
fn int_sums_portable(x: &QuantizedActs, w: &Int8Linear, o0: usize, rows: usize, out: &mut [i32]) {
    let k = w.cols;
    for t in 0..x.rows {
        let xr = &x.codes[t * k..(t + 1) * k];
        let z = x.zero[t];
        for r in 0..rows {
            let wr = &w.codes[(o0 + r) * k..(o0 + r + 1) * k];
            out[t * rows + r] = xr
                .iter()
                .zip(wr)
                .map(|(a, b)| (i32::from(*a) - z) * i32::from(*b))
                .sum();
        }
    }
}

/// `x · Wᵀ` with `x` `[m, w.cols]` f32: quantizes `x` per token (as `w.activations`
/// says), multiplies in integers, rescales. Returns `[m, w.rows]`.
pub fn matmul_i8_nt(x: &[f32], w: &Int8Linear, m: usize) -> Vec<f32> {
    if super::packed_vnni::available() {
        check_width(w);
        return int8_vnni::matmul(&quantize_per_token_offset(x, m, w.cols, w.activations), w);
    }
    if int8_avx2::available() {
        check_width(w);
        let xq = int8_avx2::quantize_per_token_signed(x, m, w.cols, w.activations);
        return int8_avx2::matmul(&xq, w);
    }
    let xq = quantize_per_token(x, m, w.cols, w.activations);
    matmul_i8(&xq, w)
}

/// Panics if `w` is wider than i32 sums allow.
fn check_width(w: &Int8Linear) {
    assert!(
        w.cols <= MAX_COLS,
        "{} inputs could overflow i32 sums",
        w.cols
    );
}

/// The fast integer matmul on already quantized activations (equal to [`matmul_i8_ref`]).
pub fn matmul_i8(x: &QuantizedActs, w: &Int8Linear) -> Vec<f32> {
    assert_eq!(x.cols, w.cols, "activation width");
    check_width(w);
    if super::packed_vnni::available() {
        return int8_vnni::matmul(&offset_codes(x), w);
    }
    if int8_avx2::available() {
        return int8_avx2::matmul(&int8_avx2::signed_codes(x), w);
    }
    let (m, n) = (x.rows, w.rows);
    let avx2 = has_avx2();
    // The activations less their zero points (within ±255), widened to i16 once per call,
    // so the inner loops load them as they are.
    let xw: Vec<i16> = if avx2 { widen_centered(x) } else { Vec::new() };
    // Bands of output rows on the decode team (no wake-up per call); band b's sums are
    // the [m, rows] block at offset o0·m, o0 = b · ROWS_PER_TASK.
    let mut sums = vec![0i32; m * n];
    if m > 0 {
        super::team::for_each_chunk_mut(&mut sums, ROWS_PER_TASK * m, |b, block| {
            let (o0, rows) = (b * ROWS_PER_TASK, block.len() / m);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 presence checked at run time.
                unsafe { avx2_kernel::int_sums(&xw, m, w, o0, rows, block) };
                return;
            }
            let _ = avx2;
            int_sums_portable(x, w, o0, rows, block);
        });
    }
    let mut y = vec![0.0f32; m * n];
    for (b, block) in sums.chunks(ROWS_PER_TASK * m.max(1)).enumerate() {
        let (o0, rows) = (b * ROWS_PER_TASK, block.len() / m.max(1));
        for t in 0..m {
            for r in 0..rows {
                y[t * n + o0 + r] = epilogue(block[t * rows + r], x.scale[t], w.scale[o0 + r]);
            }
        }
    }
    y
}

/// `code − zero` per token as i16, the AVX2 kernel's operand.
fn widen_centered(x: &QuantizedActs) -> Vec<i16> {
    x.codes
        .chunks_exact(x.cols.max(1))
        .zip(&x.zero)
        .flat_map(|(row, &z)| row.iter().map(move |&c| (i32::from(c) - z) as i16))
        .collect()
}

/// Already quantized activations as the VNNI kernel's operand (see
/// [`quantize_per_token_offset`]).
fn offset_codes(x: &QuantizedActs) -> OffsetActs {
    let stride = x.cols.div_ceil(4) * 4;
    let mut codes = vec![128u8; x.rows * stride];
    for (dst, src) in codes
        .chunks_exact_mut(stride.max(1))
        .zip(x.codes.chunks_exact(x.cols.max(1)))
    {
        for (d, &c) in dst.iter_mut().zip(src) {
            *d = offset_code(c);
        }
    }
    OffsetActs {
        codes,
        scale: x.scale.clone(),
        zero: x.zero.clone(),
        rows: x.rows,
        stride,
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2_kernel {
    use std::arch::x86_64::*;

    use crate::packed::Int8Linear;

    /// Horizontal sum of 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256(v, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// 16 int16 lanes at `p`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load16(p: *const i16) -> __m256i {
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    /// Integer sums for output rows `o0..o0+rows` and every token, into `out` `[m, rows]`.
    /// `xw` is the `m` tokens' activation codes less their zero points, as i16 (`[m, cols]`). The band's weight rows
    /// are widened to i16 once into a scratch buffer (it stays in L1), so the inner loop is
    /// loads, `vpmaddwd` and adds only. Full tiles of 2 tokens × 4 rows keep their 8
    /// accumulators in registers; leftover tokens and rows take a 1 × 1 vector loop, and
    /// the last `cols % 16` inputs a scalar one.
    #[target_feature(enable = "avx2")]
    pub unsafe fn int_sums(
        xw: &[i16],
        m: usize,
        w: &Int8Linear,
        o0: usize,
        rows: usize,
        out: &mut [i32],
    ) {
        let k = w.cols;
        let kv = k - k % 16;
        let ww: Vec<i16> = w.codes[o0 * k..(o0 + rows) * k]
            .iter()
            .map(|&c| i16::from(c))
            .collect();
        let xr = |t: usize| &xw[t * k..(t + 1) * k];
        let wr = |r: usize| &ww[r * k..(r + 1) * k];
        let tail = |a: &[i16], b: &[i16]| -> i32 {
            a[kv..]
                .iter()
                .zip(&b[kv..])
                .map(|(p, q)| i32::from(*p) * i32::from(*q))
                .sum()
        };
        let (mt, rt) = (m - m % 2, rows - rows % 4);
        for t in (0..mt).step_by(2) {
            let (x0, x1) = (xr(t).as_ptr(), xr(t + 1).as_ptr());
            for r in (0..rt).step_by(4) {
                let w0 = wr(r).as_ptr();
                let w1 = wr(r + 1).as_ptr();
                let w2 = wr(r + 2).as_ptr();
                let w3 = wr(r + 3).as_ptr();
                let z = _mm256_setzero_si256();
                let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
                let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
                let mut c = 0;
                while c < kv {
                    // SAFETY: c + 16 ≤ kv ≤ k, inside every row.
                    unsafe {
                        let p = load16(x0.add(c));
                        let q = load16(x1.add(c));
                        let v = load16(w0.add(c));
                        a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(p, v));
                        a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(q, v));
                        let v = load16(w1.add(c));
                        a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(p, v));
                        a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(q, v));
                        let v = load16(w2.add(c));
                        a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(p, v));
                        a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(q, v));
                        let v = load16(w3.add(c));
                        a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(p, v));
                        a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(q, v));
                    }
                    c += 16;
                }
                for (j, (a0, a1)) in [(a00, a10), (a01, a11), (a02, a12), (a03, a13)]
                    .into_iter()
                    .enumerate()
                {
                    out[t * rows + r + j] = hsum(a0) + tail(xr(t), wr(r + j));
                    out[(t + 1) * rows + r + j] = hsum(a1) + tail(xr(t + 1), wr(r + j));
                }
            }
        }
        // Leftovers: the last token (odd m) against every row, the last rows (rows % 4)
        // against every token.
        let single = |t: usize, r: usize| -> i32 {
            let (a, b) = (xr(t), wr(r));
            let mut acc = _mm256_setzero_si256();
            let mut c = 0;
            while c < kv {
                // SAFETY: as above.
                unsafe {
                    let p = load16(a.as_ptr().add(c));
                    let v = load16(b.as_ptr().add(c));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, v));
                }
                c += 16;
            }
            hsum(acc) + tail(a, b)
        };
        for t in 0..m {
            let r_from = if t < mt { rt } else { 0 };
            for r in r_from..rows {
                out[t * rows + r] = single(t, r);
            }
        }
    }
}

/// Seeded weights and activations for the int8 kernels' tests.
#[cfg(test)]
pub(super) mod testing {
    use crate::packed::{ActQuant, Int8Linear};

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    /// Codes over the full int8 range, −128 included.
    pub fn weight(rows: usize, cols: usize, seed: u64) -> Int8Linear {
        let mut r = lcg(seed);
        let codes = (0..rows * cols).map(|_| (r() % 256) as i64 as i8).collect();
        let scale = (0..rows).map(|i| 0.01 + i as f32 * 1e-3).collect();
        Int8Linear::new(rows, cols, codes, scale).unwrap()
    }

    /// Values in [−10, 10].
    pub fn acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = lcg(seed);
        (0..m * k)
            .map(|_| (r() % 20001) as f32 / 1000.0 - 10.0)
            .collect()
    }

    pub const MODES: [ActQuant; 2] = [ActQuant::Symmetric, ActQuant::Asymmetric];
}

#[cfg(test)]
mod tests {
    use super::testing::{acts, weight, MODES};
    use super::*;

    #[test]
    fn per_token_codes_use_absmax_over_127_and_round_half_even() {
        let q = quantize_per_token(
            &[1.0, -2.54, 0.01, 0.0, 0.0, 0.0],
            2,
            3,
            ActQuant::Symmetric,
        );
        assert_eq!(q.scale[0], 2.54 / 127.0);
        assert_eq!(&q.codes[..3], &[50, -127, 0]);
        assert_eq!(q.scale[1], 1.0);
        assert_eq!(&q.codes[3..], &[0, 0, 0]);
        assert_eq!(q.zero, vec![0, 0]);
        let q = quantize_per_token(&[0.5, 127.0], 1, 2, ActQuant::Symmetric);
        assert_eq!(q.codes, vec![0, 127], "0.5 rounds to the even 0");
        for v in [-2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 3.49, -126.5, 126.5] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn asymmetric_codes_span_the_token_range_with_a_zero_point() {
        // [−1, 3]: scale 4/255, z = round(−128 + 63.75) = −64; the ends map to −128 and 127.
        let q = quantize_per_token(&[-1.0, 3.0, 0.0, 1.0], 1, 4, ActQuant::Asymmetric);
        let s = 4.0f32 / 255.0;
        assert_eq!(q.scale, vec![s]);
        assert_eq!(q.zero, vec![-64]);
        let want: Vec<i8> = [-1.0f32, 3.0, 0.0, 1.0]
            .iter()
            .map(|v| ((v * (1.0 / s)).round_ties_even() as i32 - 64).clamp(-128, 127) as i8)
            .collect();
        assert_eq!(q.codes, want);
        assert_eq!(
            (q.codes[0], q.codes[1], q.codes[2]),
            (-128, 127, -64),
            "0 is exact"
        );
        // All positive: the range is widened to 0, so z = −128 and 0 is still exact.
        let q = quantize_per_token(&[2.0, 4.0, 0.0, 0.0], 2, 2, ActQuant::Asymmetric);
        assert_eq!((q.scale[0], q.zero[0]), (4.0 / 255.0, -128));
        assert_eq!(
            (q.scale[1], q.zero[1], &q.codes[2..]),
            (1.0, 0, &[0i8, 0][..])
        );
        // Every value within half a step of its dequantized code, and a skewed token gets
        // about twice the symmetric resolution.
        let x = acts(6, 97, 11).iter().map(|v| v + 6.0).collect::<Vec<_>>();
        let (a, s) = (
            quantize_per_token(&x, 6, 97, ActQuant::Asymmetric),
            quantize_per_token(&x, 6, 97, ActQuant::Symmetric),
        );
        for t in 0..6 {
            for c in 0..97 {
                let back = a.scale[t] * (f32::from(a.codes[t * 97 + c]) - a.zero[t] as f32);
                assert!(
                    (back - x[t * 97 + c]).abs() <= a.scale[t] * 0.5001,
                    "{t},{c}"
                );
            }
            assert!(
                a.scale[t] < 0.7 * s.scale[t],
                "{} vs {}",
                a.scale[t],
                s.scale[t]
            );
        }
    }

    #[test]
    fn fast_path_equals_the_reference_exactly_on_every_tile_shape() {
        // Extreme codes (−128 weights against ±127 activations) included by the generator;
        // odd sizes exercise token, row and column tails.
        for (m, n, k) in [
            (1, 5, 7),
            (2, 4, 16),
            (3, 9, 40),
            (7, 33, 96),
            (8, 16, 576),
            (37, 50, 64),
        ] {
            let w = weight(n, k, (m * n + k) as u64);
            for mode in MODES {
                let xq = quantize_per_token(&acts(m, k, k as u64), m, k, mode);
                assert_eq!(
                    matmul_i8(&xq, &w),
                    matmul_i8_ref(&xq, &w),
                    "{m}x{n}x{k} {mode:?}"
                );
            }
        }
        // All-extreme values: the largest sums the kernel must hold.
        let k = 160;
        let w = Int8Linear::new(3, k, vec![-128; 3 * k], vec![1.0; 3]).unwrap();
        let xq = QuantizedActs {
            codes: vec![-127; 2 * k],
            scale: vec![1.0; 2],
            zero: vec![0; 2],
            rows: 2,
            cols: k,
        };
        let y = matmul_i8(&xq, &w);
        assert_eq!(y, vec![(127 * 128 * k) as f32; 6]);
        assert_eq!(y, matmul_i8_ref(&xq, &w));
        // Asymmetric extremes: code −128 at zero point 127 is −255 per input.
        let xq = QuantizedActs {
            codes: vec![-128; 2 * k],
            zero: vec![127; 2],
            ..xq
        };
        let y = matmul_i8(&xq, &w);
        assert_eq!(y, vec![(255 * 128 * k) as f32; 6]);
        assert_eq!(y, matmul_i8_ref(&xq, &w));
    }

    #[test]
    fn each_simd_kernel_equals_the_reference_on_whole_and_partial_bands() {
        // Rows past one 16-row block and past a block pair, tokens past a 4-token tile,
        // widths that are not a multiple of 4 or 16.
        for (m, n, k) in [(1, 16, 64), (5, 33, 70), (9, 50, 576), (4, 17, 3)] {
            let w = weight(n, k, (m + n * k) as u64);
            for mode in MODES {
                let x: Vec<f32> = acts(m, k, n as u64).iter().map(|v| v + 3.0).collect();
                let xq = quantize_per_token(&x, m, k, mode);
                let want = matmul_i8_ref(&xq, &w);
                let check = |name: &str, sums: Vec<i32>, o0: usize, rows: usize| {
                    for t in 0..m {
                        for r in 0..rows {
                            let got = epilogue(sums[t * rows + r], xq.scale[t], w.scale[o0 + r]);
                            assert_eq!(
                                got,
                                want[t * n + o0 + r],
                                "{name} {mode:?} {m}x{n}x{k} t{t} r{r}"
                            );
                        }
                    }
                };
                for (o0, rows) in [(0, n), (1, n - 1)] {
                    #[cfg(target_arch = "x86_64")]
                    if has_avx2() {
                        let xw = widen_centered(&xq);
                        let mut sums = vec![0; m * rows];
                        // SAFETY: availability checked above.
                        unsafe { avx2_kernel::int_sums(&xw, m, &w, o0, rows, &mut sums) };
                        check("avx2", sums, o0, rows);
                    }
                    let mut sums = vec![0; m * rows];
                    int_sums_portable(&xq, &w, o0, rows, &mut sums);
                    check("portable", sums, o0, rows);
                }
            }
        }
    }

    #[test]
    fn offset_quantization_rounds_ties_to_even_like_the_definition() {
        // s = 1: x / s lands exactly on the ties; a clamp and the all-zero row too.
        let x = [
            127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -126.5, 3.49, -3.51, 0.0, 7.0, 9.5, -9.5,
            11.5, 12.5, 13.5, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let xq = quantize_per_token(&x, 2, 17, ActQuant::Symmetric);
        assert_eq!(&xq.codes[..4], &[127, 0, 2, 2]);
        assert_eq!(
            quantize_per_token_offset(&x, 2, 17, ActQuant::Symmetric),
            offset_codes(&xq)
        );
        // Asymmetric with s = 1 (range [−128, 127]) and z = 0: ties land on x · (1 / s) too.
        let mut y = x;
        y[1] = -128.0;
        let yq = quantize_per_token(&y, 2, 17, ActQuant::Asymmetric);
        assert_eq!((yq.scale[0], yq.zero[0]), (1.0, 0));
        assert_eq!(&yq.codes[..4], &[127, -128, 2, 2]);
        assert_eq!(
            quantize_per_token_offset(&y, 2, 17, ActQuant::Asymmetric),
            offset_codes(&yq)
        );
    }

    #[test]
    fn vnni_kernel_equals_the_reference_on_band_and_token_tails() {
        // Rows short of, at and past a 48-row band (and a 16-row tile inside it), tokens
        // short of and past the 8-token tile, widths that are not a multiple of 4.
        for (m, n, k) in [
            (1, 1, 1),
            (1, 48, 576),
            (3, 47, 7),
            (8, 49, 64),
            (9, 96, 130),
            (17, 150, 36),
            (16, 16, 4),
        ] {
            let x: Vec<f32> = acts(m, k, (m * k) as u64).iter().map(|v| v - 4.0).collect();
            for mode in MODES {
                let w = weight(n, k, (n + k) as u64).with_activations(mode);
                let xq = quantize_per_token(&x, m, k, mode);
                let xo = quantize_per_token_offset(&x, m, k, mode);
                assert_eq!(
                    xo,
                    offset_codes(&xq),
                    "one quantization, two layouts ({mode:?})"
                );
                if !super::super::packed_vnni::available() {
                    continue;
                }
                let want = matmul_i8_ref(&xq, &w);
                assert_eq!(int8_vnni::matmul(&xo, &w), want, "{m}x{n}x{k} {mode:?}");
                assert_eq!(
                    matmul_i8_nt(&x, &w, m),
                    want,
                    "{m}x{n}x{k} {mode:?} from floats"
                );
            }
        }
    }

    #[test]
    fn int8_matmul_approximates_the_float_product() {
        let (m, n, k) = (4, 8, 256);
        for mode in MODES {
            let w = weight(n, k, 3).with_activations(mode);
            let x = acts(m, k, 4);
            let y = matmul_i8_nt(&x, &w, m);
            let wd = w.dequantize_ref();
            for t in 0..m {
                for o in 0..n {
                    let exact: f64 = (0..k)
                        .map(|c| x[t * k + c] as f64 * wd[o * k + c] as f64)
                        .sum();
                    let norm: f64 = (0..k)
                        .map(|c| (x[t * k + c] * wd[o * k + c]).abs() as f64)
                        .sum();
                    // Activation rounding: at most half a step (absmax/254) per element.
                    assert!(
                        (y[t * n + o] as f64 - exact).abs() <= norm / 127.0,
                        "{mode:?} {t},{o}: {} vs {exact}",
                        y[t * n + o]
                    );
                }
            }
        }
    }
}
