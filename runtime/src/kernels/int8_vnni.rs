//! W8A8 on AVX-512 VNNI: `vpdpbusd` multiplies 64 unsigned activation bytes by 64 signed
//! weight bytes and adds each group of 4 products into an i32 lane, four times the products
//! per instruction of AVX2's `vpmaddwd`.
//!
//! The activations are offset to `code + 128` (unsigned), so a lane sums
//! `Σ (x + 128)·w = Σ (x − z)·w + (128 + z)·Σ w` for a token with zero point `z` (0 when
//! symmetric); `(128 + z)` times the weight row's `Σ w`
//! ([`Int8Tiles::row_sum`](crate::packed::int_quantized::Int8Tiles::row_sum)) is taken off
//! after. The weights are read in [`Int8Tiles`](crate::packed::int_quantized::Int8Tiles)' layout (built once per weight,
//! not per call): one aligned load holds 4 columns of 16 rows, and a broadcast of 4
//! activation bytes against it gives 16 rows' partial sums with no horizontal reduction.
//!
//! A register tile is 8 tokens × 48 rows: 24 accumulators, fed per 4 columns by 3 weight
//! loads and 8 broadcasts, so the loop is bound by `vpdpbusd`, not by loads (a 4 × 32 tile
//! did 8 products per 6 loads and ran at a fifth of the instruction's rate). Each team task
//! is one band of 48 output rows over every token: the band's weights stay in L1/L2 while
//! the tokens stream past, and a big weight (the vocabulary head) is read from memory once.
//! The float epilogue `acc · (s_x · s_w)` is vectorized in the same operation order as
//! [`super::int8::matmul_i8_ref`]'s, and all the integer arithmetic is exact (the true sums
//! fit in i32), so the results equal the reference bit for bit.

use super::team::{self, SendPtr};
use crate::packed::int_quantized::{BAND_TILES, TILE_ROWS};
use crate::packed::{ActQuant, Int8Linear};

/// Output rows per team task.
pub const BAND_ROWS: usize = TILE_ROWS * BAND_TILES;

/// Tokens per register tile.
const TILE_TOKENS: usize = 8;

/// Per-token activation codes as `vpdpbusd`'s unsigned operand: `code + 128` (codes in
/// −128..=127, so 0..=255), each row padded with 128 (code 0) to `stride` = 4 · groups
/// columns.
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetActs {
    pub codes: Vec<u8>,
    /// One scale per token.
    pub scale: Vec<f32>,
    /// One zero point per token (0 when symmetric).
    pub zero: Vec<i32>,
    pub rows: usize,
    pub stride: usize,
}

/// `[x.rows, w.rows]` = dequantized `x · Wᵀ` (the caller checks widths and availability).
pub fn matmul(x: &OffsetActs, w: &Int8Linear) -> Vec<f32> {
    let tiles = w.tiles();
    assert_eq!(x.stride, tiles.groups * 4, "activation stride");
    let n = w.rows;
    by_bands(x.rows, n, &|b, y| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked AVX-512 F/BW/VL/VNNI (`packed_vnni::available`); band
        // `b` writes only its own rows' columns of `y` (see `by_bands`).
        unsafe {
            avx512::band(x, tiles, &w.scale, n, b, y)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the VNNI kernel on a non-x86 CPU (band {b}, {y:p})");
    })
}

/// An `[m, n]` output filled by one team task per band of [`BAND_ROWS`] output rows:
/// `band(b, y)` may write columns `b · BAND_ROWS ..` (below `n`) of every row of `y`, and
/// nothing else. The integer kernels' driver: a band's weights stay in L1/L2 while every
/// token streams past.
pub(super) fn by_bands(m: usize, n: usize, band: &(dyn Fn(usize, *mut f32) + Sync)) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    if m == 0 {
        return y;
    }
    let out = SendPtr(y.as_mut_ptr());
    team::global().run(n.div_ceil(BAND_ROWS), &|b| {
        let p = out; // the whole wrapper, not its raw field, into the closure
        band(b, p.0)
    });
    y
}

/// One token quantized into `q` (`code + 128`), equal to the scalar definition
/// (`int8::quantize_row`); returns the scale and zero point. Callers check availability.
pub fn quantize_row_offset(row: &[f32], q: &mut [u8], mode: ActQuant) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked AVX-512 F/BW/VL (`packed_vnni::available`).
    return unsafe {
        match mode {
            ActQuant::Symmetric => (avx512::quantize_row_offset(row, q), 0),
            ActQuant::Asymmetric => avx512::quantize_row_offset_asym(row, q),
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the VNNI kernel on a non-x86 CPU ({} {} {mode:?})",
        row.len(),
        q.len()
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{OffsetActs, BAND_ROWS, TILE_TOKENS};
    use crate::kernels::int8::{asym_params, ACT_QMAX};
    use crate::packed::int_quantized::{Int8Tiles, BAND_TILES, TILE_ROWS};

    /// See [`super::quantize_row_offset`]. Clamping to ±127 before rounding equals clamping
    /// after (|x / s| exceeds 127 by rounding error only), and `vcvtps2dq` rounds half to
    /// even in the default rounding mode, as the scalar `round_half_even` does.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_row_offset(row: &[f32], q: &mut [u8]) -> f32 {
        assert!(q.len() >= row.len(), "code row");
        let k = row.len();
        let mask = |c: usize| -> __mmask16 { crate::kernels::simd::lane_mask16(k - c) };
        let mut amax = _mm512_setzero_ps();
        for c in (0..k).step_by(16) {
            // SAFETY: the mask stops at the row's end.
            let v = unsafe { _mm512_maskz_loadu_ps(mask(c), row.as_ptr().add(c)) };
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        }
        let amax = _mm512_reduce_max_ps(amax);
        let s = if amax > 0.0 { amax / ACT_QMAX } else { 1.0 };
        let inv = _mm512_set1_ps(1.0 / s);
        let (lo, hi) = (_mm512_set1_ps(-ACT_QMAX), _mm512_set1_ps(ACT_QMAX));
        let flip = _mm_set1_epi8(-128);
        for c in (0..k).step_by(16) {
            let m = mask(c);
            // SAFETY: masked to the row's end, in both `row` and the longer `q`.
            unsafe {
                let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row.as_ptr().add(c)), inv);
                let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                let codes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
                _mm_mask_storeu_epi8(
                    q.as_mut_ptr().add(c) as *mut _,
                    m,
                    _mm_xor_si128(codes, flip),
                );
            }
        }
        s
    }

    /// See [`super::quantize_row_offset`], asymmetric: the range over the row and zero, then
    /// `clamp(round(x · (1 / s)) + z, −128, 127)` in i32 lanes (`vcvtps2dq` rounds half to
    /// even, as the scalar definition does).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_row_offset_asym(row: &[f32], q: &mut [u8]) -> (f32, i32) {
        assert!(q.len() >= row.len(), "code row");
        let k = row.len();
        let mask = |c: usize| -> __mmask16 { crate::kernels::simd::lane_mask16(k - c) };
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for c in (0..k).step_by(16) {
            // SAFETY: the mask stops at the row's end (masked lanes load 0, inside the range).
            let v = unsafe { _mm512_maskz_loadu_ps(mask(c), row.as_ptr().add(c)) };
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (s, z) = asym_params(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let inv = _mm512_set1_ps(1.0 / s);
        let zv = _mm512_set1_epi32(z);
        let (cmin, cmax) = (_mm512_set1_epi32(-128), _mm512_set1_epi32(127));
        let flip = _mm_set1_epi8(-128);
        for c in (0..k).step_by(16) {
            let m = mask(c);
            // SAFETY: masked to the row's end, in both `row` and the longer `q`.
            unsafe {
                let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row.as_ptr().add(c)), inv);
                let i = _mm512_add_epi32(_mm512_cvtps_epi32(v), zv);
                let i = _mm512_min_epi32(_mm512_max_epi32(i, cmin), cmax);
                let codes = _mm512_cvtepi32_epi8(i);
                _mm_mask_storeu_epi8(
                    q.as_mut_ptr().add(c) as *mut _,
                    m,
                    _mm_xor_si128(codes, flip),
                );
            }
        }
        (s, z)
    }

    /// Every token against output rows `b · BAND_ROWS ..` (at most `n`), into `y` `[m, n]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn band(
        x: &OffsetActs,
        t: &Int8Tiles,
        scale: &[f32],
        n: usize,
        b: usize,
        y: *mut f32,
    ) {
        let mut tok = 0;
        while tok < x.rows {
            // SAFETY: tokens tok..tok + T exist; band b lies inside the tiles.
            unsafe {
                match x.rows - tok {
                    1 => tile::<1>(x, t, scale, n, b, tok, y),
                    2 => tile::<2>(x, t, scale, n, b, tok, y),
                    3 => tile::<3>(x, t, scale, n, b, tok, y),
                    4 => tile::<4>(x, t, scale, n, b, tok, y),
                    5 => tile::<5>(x, t, scale, n, b, tok, y),
                    6 => tile::<6>(x, t, scale, n, b, tok, y),
                    7 => tile::<7>(x, t, scale, n, b, tok, y),
                    _ => tile::<TILE_TOKENS>(x, t, scale, n, b, tok, y),
                }
            }
            tok += TILE_TOKENS;
        }
    }

    /// Tokens `tok..tok + T` against the band's `BAND_TILES` tiles of 16 rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const T: usize>(
        x: &OffsetActs,
        t: &Int8Tiles,
        scale: &[f32],
        n: usize,
        b: usize,
        tok: usize,
        y: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_si512(); BAND_TILES]; T];
        let groups = t.groups;
        let lines = t.lines[b * BAND_TILES * groups..].as_ptr();
        let xs = x.codes[tok * x.stride..].as_ptr();
        for g in 0..groups {
            // SAFETY: line h · groups + g of the band's tiles, and 4 bytes at column 4g of
            // rows tok..tok + T, all in bounds (g < groups, stride = 4 · groups).
            unsafe {
                let mut wv = [_mm512_setzero_si512(); BAND_TILES];
                for (h, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_load_si512(lines.add(h * groups + g) as *const _);
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    let p = xs.add(i * x.stride + 4 * g) as *const i32;
                    let xb = _mm512_set1_epi32(p.read_unaligned());
                    for (ah, wh) in a.iter_mut().zip(&wv) {
                        *ah = _mm512_dpbusd_epi32(*ah, xb, *wh);
                    }
                }
            }
        }
        for h in 0..BAND_TILES {
            let r0 = b * BAND_ROWS + h * TILE_ROWS;
            if r0 >= n {
                break;
            }
            let mask: __mmask16 = crate::kernels::simd::lane_mask16(n - r0);
            // SAFETY: the row sums cover whole tiles; the masked scale load and stores touch
            // rows < n only, of rows tok..tok + T < m of y.
            unsafe {
                let sums = _mm512_loadu_si512(t.row_sum[r0..r0 + TILE_ROWS].as_ptr() as *const _);
                let sw = _mm512_maskz_loadu_ps(mask, scale.as_ptr().add(r0));
                for (i, a) in acc.iter().enumerate() {
                    let s = _mm512_mul_ps(_mm512_set1_ps(x.scale[tok + i]), sw);
                    let off = _mm512_mullo_epi32(_mm512_set1_epi32(128 + x.zero[tok + i]), sums);
                    let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[h], off));
                    _mm512_mask_storeu_ps(y.add((tok + i) * n + r0), mask, _mm512_mul_ps(v, s));
                }
            }
        }
    }
}
