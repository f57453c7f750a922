//! W8A8 on AVX2 with the codes kept as bytes: `vpmaddubsw` multiplies 32 unsigned bytes by 32
//! signed bytes and adds adjacent pairs into 16 i16 lanes, `vpmaddwd` against ones adds
//! those pairs into 8 i32 lanes, so 32 products cost four instructions with the sign step
//! below: the same instruction count per product as `vpmaddwd` on int16 copies, but half
//! the bytes per load, and one weight load feeds 8 output rows with no horizontal sum.
//!
//! `vpmaddubsw` saturates its i16 pair sums, so the operands must keep them within i16: an
//! unsigned activation `code + 128` (up to 255) against weights of ±128 would not. The sign
//! trick (llama.cpp's AVX2 `q8_0` dot) multiplies `|w|` (at most 128, unsigned) by
//! `sign(w)·q` (`vpsignb`): each pair lies in [−2·128·128, 2·128·127], inside i16, so every
//! sum is exact. `vpsignb` cannot negate a −128 activation code (only the zero-point mode
//! makes them, about one per token: its minimum): it stays −128, so such a product comes
//! out as `|w|·(−128)`, right for `w ≥ 0` and short by `256·|w|` for `w < 0`. The tile adds
//! `256·max(−w, 0)` for each of the token's −128 columns after its main loop (a few vector
//! instructions per token; none at all in the symmetric mode, whose codes stop at ±127).
//!
//! The sums are `Σ q·w`; a token with zero point `z` then takes off `z·Σ w` (the tiles'
//! `row_sum`), which is `Σ (q − z)·w` exactly. The weights are read in the VNNI kernel's
//! [`Int8Tiles`] layout: a 64-byte line holds 4 columns of 16 rows, two `ymm` halves of 8
//! rows each, against a broadcast of a token's 4 codes. A register tile is 4 tokens × 16
//! rows (8 accumulators); a team task is one band of `BAND_ROWS` rows over every token, so
//! the band's weights stay in L1/L2 while the tokens stream past. The float epilogue is
//! [`super::int8::matmul_i8_ref`]'s `acc · (s_x · s_w)` in the same order, so the results
//! equal the reference bit for bit.
//!
//! [`Int8Tiles`]: crate::packed::int_quantized::Int8Tiles

use super::int8::{asym_params, QuantizedActs, ACT_QMAX};
use super::int8_vnni::{by_bands, BAND_ROWS};
use super::team::{self, SendPtr};
use crate::packed::{ActQuant, Int8Linear};

/// Tokens per register tile.
const TILE_TOKENS: usize = 4;

/// Per-token activation codes as the sign-trick kernel reads them, each row padded with code
/// 0 to `stride` = 4 · groups columns, with the columns where a token's code is −128 (the
/// products `vpsignb` gets wrong; zero-point mode only).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedActs {
    pub codes: Vec<i8>,
    /// Per token, its −128 columns (usually none or one).
    pub min_cols: Vec<Vec<u32>>,
    /// One scale per token.
    pub scale: Vec<f32>,
    /// One zero point per token (0 when symmetric).
    pub zero: Vec<i32>,
    pub rows: usize,
    pub stride: usize,
}

/// Whether this CPU runs the kernel (AVX2; `LMQ_NO_AVX2_BYTES=1` turns it off so the int16
/// kernel runs instead, for side-by-side measurement).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::env::var_os("LMQ_NO_AVX2_BYTES").is_none_or(|v| v != "1")
                && is_x86_feature_detected!("avx2")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The columns of `row` holding −128.
fn min_columns(row: &[i8]) -> Vec<u32> {
    (0..row.len() as u32)
        .filter(|&c| row[c as usize] == i8::MIN)
        .collect()
}

/// Per-token quantization of `x` `[m, k]` as `mode` says, into the kernel's operand: the
/// same codes, scales and zero points as [`super::int8::quantize_per_token`] (checked by the
/// tests), one row per team task. The caller checks [`available`].
pub fn quantize_per_token_signed(x: &[f32], m: usize, k: usize, mode: ActQuant) -> SignedActs {
    assert_eq!(x.len(), m * k, "activation shape");
    let stride = k.div_ceil(4) * 4;
    let mut codes = vec![0i8; m * stride];
    let mut min_cols = vec![Vec::new(); m];
    let mut scale = vec![1.0f32; m];
    let mut zero = vec![0i32; m];
    if k > 0 && m > 0 {
        let (ps, pz, pm) = (
            SendPtr(scale.as_mut_ptr()),
            SendPtr(zero.as_mut_ptr()),
            SendPtr(min_cols.as_mut_ptr()),
        );
        team::for_each_chunk_mut(&mut codes, stride, |t, q| {
            let row = &x[t * k..(t + 1) * k];
            let (ps, pz, pm) = (ps, pz, pm); // the whole wrappers into the closure
                                             // SAFETY: token t is one task, so its scale, zero point and column list are
                                             // written once; all three vectors outlive the loop.
            unsafe {
                let mins = &mut *pm.0.add(t);
                #[cfg(target_arch = "x86_64")]
                // The caller checked AVX2.
                let (s, z) = avx2::quantize_row(row, &mut q[..k], mins, mode);
                #[cfg(not(target_arch = "x86_64"))]
                let (s, z) =
                    unreachable!("AVX2 on a non-x86 CPU ({} {mode:?} {mins:?})", row.len());
                *ps.0.add(t) = s;
                *pz.0.add(t) = z;
            }
        });
    }
    SignedActs {
        codes,
        min_cols,
        scale,
        zero,
        rows: m,
        stride,
    }
}

/// Already quantized activations as the kernel's operand.
pub fn signed_codes(x: &QuantizedActs) -> SignedActs {
    let stride = x.cols.div_ceil(4) * 4;
    let mut codes = vec![0i8; x.rows * stride];
    for (dst, src) in codes
        .chunks_exact_mut(stride.max(1))
        .zip(x.codes.chunks_exact(x.cols.max(1)))
    {
        dst[..src.len()].copy_from_slice(src);
    }
    let min_cols = codes.chunks_exact(stride.max(1)).map(min_columns).collect();
    SignedActs {
        codes,
        min_cols,
        scale: x.scale.clone(),
        zero: x.zero.clone(),
        rows: x.rows,
        stride,
    }
}

/// `[x.rows, w.rows]` = dequantized `x · Wᵀ`. The caller checks [`available`] and the width.
pub fn matmul(x: &SignedActs, w: &Int8Linear) -> Vec<f32> {
    let tiles = w.tiles();
    assert_eq!(x.stride, tiles.groups * 4, "activation stride");
    let n = w.rows;
    by_bands(x.rows, n, &|b, y| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked AVX2 (`available`); band `b` writes only its own rows'
        // columns of `y` (see `by_bands`).
        unsafe {
            avx2::band(x, tiles, &w.scale, n, b, y)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the AVX2 kernel on a non-x86 CPU (band {b}, {y:p})");
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{asym_params, ActQuant, SignedActs, ACT_QMAX, BAND_ROWS, TILE_TOKENS};
    use crate::packed::int_quantized::{Int8Tiles, BAND_TILES, TILE_ROWS};

    /// Largest of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }

    /// Smallest of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hmin(v: __m256) -> f32 {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }

    /// One token's codes into `q` (`row.len()` long), equal to the scalar definition
    /// (`int8::quantize_row`): the same scale and zero point, `x · (1 / s)`, rounded half to
    /// even by `vcvtps2dq` in the default rounding mode as the scalar `round_half_even` does.
    /// Clamping to ±127 before rounding (symmetric) is the definition's order; the
    /// asymmetric codes are clamped in i32 after adding `z`. The last `len % 32` values take
    /// the scalar definition. Returns the scale and the zero point; the columns of −128
    /// codes go to `mins`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row(
        row: &[f32],
        q: &mut [i8],
        mins: &mut Vec<u32>,
        mode: ActQuant,
    ) -> (f32, i32) {
        let k = row.len();
        assert_eq!(q.len(), k, "code row");
        let k8 = k - k % 8;
        let p = row.as_ptr();
        let (s, z) = match mode {
            ActQuant::Symmetric => {
                let sign = _mm256_set1_ps(-0.0);
                let mut m = _mm256_setzero_ps();
                for c in (0..k8).step_by(8) {
                    // SAFETY: c + 8 ≤ k.
                    let v = unsafe { _mm256_loadu_ps(p.add(c)) };
                    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
                }
                let amax = row[k8..].iter().fold(hmax(m), |a, v| a.max(v.abs()));
                (if amax > 0.0 { amax / ACT_QMAX } else { 1.0 }, 0)
            }
            ActQuant::Asymmetric => {
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for c in (0..k8).step_by(8) {
                    // SAFETY: c + 8 ≤ k.
                    let v = unsafe { _mm256_loadu_ps(p.add(c)) };
                    lo = _mm256_min_ps(lo, v);
                    hi = _mm256_max_ps(hi, v);
                }
                let (lo, hi) = row[k8..]
                    .iter()
                    .fold((hmin(lo), hmax(hi)), |(l, h), &v| (l.min(v), h.max(v)));
                asym_params(lo, hi)
            }
        };
        let inv = 1.0 / s;
        let invv = _mm256_set1_ps(inv);
        let (flo, fhi) = (_mm256_set1_ps(-ACT_QMAX), _mm256_set1_ps(ACT_QMAX));
        let zv = _mm256_set1_epi32(z);
        let (ilo, ihi) = (_mm256_set1_epi32(-128), _mm256_set1_epi32(127));
        // packs works within 128-bit lanes; this puts the 8-value groups back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let codes8 = |c: usize| -> __m256i {
            // SAFETY: the caller's loop keeps c + 8 ≤ k.
            let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(p.add(c)) }, invv);
            match mode {
                ActQuant::Symmetric => {
                    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, flo), fhi))
                }
                ActQuant::Asymmetric => {
                    let i = _mm256_add_epi32(_mm256_cvtps_epi32(v), zv);
                    _mm256_min_epi32(_mm256_max_epi32(i, ilo), ihi)
                }
            }
        };
        let min = _mm256_set1_epi8(i8::MIN);
        let k32 = k - k % 32;
        for c in (0..k32).step_by(32) {
            let ab = _mm256_packs_epi32(codes8(c), codes8(c + 8));
            let cd = _mm256_packs_epi32(codes8(c + 16), codes8(c + 24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
            // SAFETY: c + 32 ≤ k.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(c) as *mut __m256i, bytes) };
            let mut found = _mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, min)) as u32;
            while found != 0 {
                mins.push(c as u32 + found.trailing_zeros());
                found &= found - 1;
            }
        }
        for c in k32..k {
            q[c] = match mode {
                ActQuant::Symmetric => {
                    round_half_even((row[c] * inv).clamp(-ACT_QMAX, ACT_QMAX)) as i8
                }
                ActQuant::Asymmetric => {
                    (round_half_even(row[c] * inv) as i32 + z).clamp(-128, 127) as i8
                }
            };
            if q[c] == i8::MIN {
                mins.push(c as u32);
            }
        }
        (s, z)
    }

    /// The scalar definition's rounding (`int8::round_half_even`).
    #[inline]
    fn round_half_even(v: f32) -> f32 {
        const MAGIC: f32 = 12_582_912.0;
        (v + MAGIC) - MAGIC
    }

    /// Every token against output rows `b · BAND_ROWS ..` (at most `n`), into `y` `[m, n]`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn band(
        x: &SignedActs,
        t: &Int8Tiles,
        scale: &[f32],
        n: usize,
        b: usize,
        y: *mut f32,
    ) {
        let mut tok = 0;
        while tok < x.rows {
            for h in 0..BAND_TILES {
                if b * BAND_ROWS + h * TILE_ROWS >= n {
                    break;
                }
                // SAFETY: tokens tok..tok + T exist; tile h of band b lies inside the tiles.
                unsafe {
                    match x.rows - tok {
                        1 => tile::<1>(x, t, scale, n, b, h, tok, y),
                        2 => tile::<2>(x, t, scale, n, b, h, tok, y),
                        3 => tile::<3>(x, t, scale, n, b, h, tok, y),
                        _ => tile::<TILE_TOKENS>(x, t, scale, n, b, h, tok, y),
                    }
                }
            }
            tok += TILE_TOKENS;
        }
    }

    /// `256·max(−w, 0)` for column `c` of the 8 rows of a tile line half (`line` points at
    /// the half of the line holding column `c`'s group): what `vpsignb` lost on a −128
    /// activation code in that column (see the module docs).
    ///
    /// # Safety
    /// `line` must point at 32 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn min_code_fix(line: *const u8, c: usize) -> __m256i {
        // SAFETY: forwarded to the caller.
        let v = unsafe { _mm256_loadu_si256(line as *const __m256i) };
        // Row j's code for column c is byte c % 4 of lane j: to the top, then sign-extended.
        let up = _mm_cvtsi32_si128((24 - 8 * (c % 4)) as i32);
        let w = _mm256_srai_epi32(_mm256_sll_epi32(v, up), 24);
        let neg = _mm256_max_epi32(
            _mm256_sub_epi32(_mm256_setzero_si256(), w),
            _mm256_setzero_si256(),
        );
        _mm256_slli_epi32(neg, 8)
    }

    /// Tokens `tok..tok + T` against tile `h` (16 rows) of band `b`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const T: usize>(
        x: &SignedActs,
        t: &Int8Tiles,
        scale: &[f32],
        n: usize,
        b: usize,
        h: usize,
        tok: usize,
        y: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_si256(); 2]; T];
        let ones = _mm256_set1_epi16(1);
        let groups = t.groups;
        let lines = t.lines[(b * BAND_TILES + h) * groups..].as_ptr() as *const u8;
        let xs = x.codes[tok * x.stride..].as_ptr();
        for g in 0..groups {
            // SAFETY: line g of the tile (64 bytes, aligned), and 4 bytes at column 4g of
            // rows tok..tok + T, all in bounds (stride = 4 · groups).
            unsafe {
                let line = lines.add(64 * g);
                let w0 = _mm256_load_si256(line as *const __m256i);
                let w1 = _mm256_load_si256(line.add(32) as *const __m256i);
                let (u0, u1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
                for (i, a) in acc.iter_mut().enumerate() {
                    let p = xs.add(i * x.stride + 4 * g) as *const i32;
                    let s = _mm256_set1_epi32(p.read_unaligned());
                    let p0 = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(s, w0));
                    let p1 = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(s, w1));
                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(p0, ones));
                    a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(p1, ones));
                }
            }
        }
        for (i, a) in acc.iter_mut().enumerate() {
            for &c in &x.min_cols[tok + i] {
                let c = c as usize;
                // SAFETY: c < cols ≤ 4 · groups, so line c / 4 of the tile exists.
                unsafe {
                    let line = lines.add(64 * (c / 4));
                    a[0] = _mm256_add_epi32(a[0], min_code_fix(line, c));
                    a[1] = _mm256_add_epi32(a[1], min_code_fix(line.add(32), c));
                }
            }
        }
        for (half, _) in [(); 2].iter().enumerate() {
            let r0 = b * BAND_ROWS + h * TILE_ROWS + half * 8;
            if r0 >= n {
                break;
            }
            let live = (n - r0).min(8);
            // SAFETY: the row sums cover whole tiles; scales are read and outputs written for
            // rows < n only (the lane mask), in rows tok..tok + T < m of y.
            unsafe {
                let mask = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(live as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                let sums = _mm256_loadu_si256(t.row_sum[r0..r0 + 8].as_ptr() as *const __m256i);
                let sw = _mm256_maskload_ps(scale.as_ptr().add(r0), mask);
                for (i, a) in acc.iter().enumerate() {
                    let s = _mm256_mul_ps(_mm256_set1_ps(x.scale[tok + i]), sw);
                    let off = _mm256_mullo_epi32(_mm256_set1_epi32(x.zero[tok + i]), sums);
                    let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(a[half], off));
                    _mm256_maskstore_ps(y.add((tok + i) * n + r0), mask, _mm256_mul_ps(v, s));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::int8::testing::{acts, weight, MODES};
    use crate::kernels::int8::{matmul_i8, matmul_i8_nt, matmul_i8_ref, quantize_per_token};

    #[test]
    fn signed_quantization_equals_the_definition() {
        if !available() {
            return;
        }
        // Widths around the 8- and 32-value vector steps and the 4-column padding; skewed
        // tokens so the asymmetric zero points move.
        for k in [1, 3, 7, 8, 31, 32, 33, 64, 97, 576] {
            for (m, shift) in [(1, 0.0), (5, 4.0), (3, -7.0)] {
                let x = acts(m, k, (m * k) as u64)
                    .iter()
                    .map(|v| v + shift)
                    .collect::<Vec<_>>();
                for mode in MODES {
                    assert_eq!(
                        quantize_per_token_signed(&x, m, k, mode),
                        signed_codes(&quantize_per_token(&x, m, k, mode)),
                        "{m}x{k} {mode:?}"
                    );
                }
            }
        }
        // Ties at scale 1 (x · (1 / s) lands on .5), clamps and an all-zero token, past a
        // 32-value vector so both the vector and the scalar tail see them.
        let mut x: Vec<f32> = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -126.5, 3.49, -3.51]
            .into_iter()
            .cycle()
            .take(40)
            .collect();
        x.extend([0.0; 40]);
        for mode in MODES {
            let want = signed_codes(&quantize_per_token(&x, 2, 40, mode));
            assert_eq!(quantize_per_token_signed(&x, 2, 40, mode), want, "{mode:?}");
        }
        let q = quantize_per_token_signed(&x, 2, 40, ActQuant::Symmetric);
        assert_eq!(&q.codes[..4], &[127, 0, 2, 2]);
        assert!(
            q.min_cols.iter().all(Vec::is_empty),
            "symmetric codes stop at ±127"
        );
        let q = quantize_per_token_signed(&x, 2, 40, ActQuant::Asymmetric);
        assert_eq!(
            q.min_cols[0],
            vec![7, 17, 27, 37],
            "the token minimum −126.5 is −128"
        );
    }

    #[test]
    fn byte_kernel_equals_the_reference_on_band_and_token_tails() {
        if !available() {
            return;
        }
        // Rows short of, at and past a 48-row band and an 8-row half tile, tokens short of
        // and past the 4-token tile, widths that are not a multiple of 4.
        for (m, n, k) in [
            (1, 1, 1),
            (1, 48, 576),
            (3, 47, 7),
            (4, 8, 64),
            (5, 49, 130),
            (9, 100, 36),
            (16, 16, 4),
        ] {
            for mode in MODES {
                let x: Vec<f32> = acts(m, k, (m * k) as u64).iter().map(|v| v + 3.0).collect();
                let w = weight(n, k, (n + k) as u64).with_activations(mode);
                let xq = quantize_per_token(&x, m, k, mode);
                let want = matmul_i8_ref(&xq, &w);
                let xs = quantize_per_token_signed(&x, m, k, mode);
                assert_eq!(matmul(&xs, &w), want, "{m}x{n}x{k} {mode:?}");
                assert_eq!(
                    matmul_i8(&xq, &w),
                    want,
                    "{m}x{n}x{k} {mode:?} via matmul_i8"
                );
                assert_eq!(
                    matmul_i8_nt(&x, &w, m),
                    want,
                    "{m}x{n}x{k} {mode:?} from floats"
                );
            }
        }
    }

    #[test]
    fn extreme_codes_neither_saturate_nor_lose_the_minus_128_products() {
        if !available() {
            return;
        }
        // Pairs at the i16 limits: |w| 128 against codes 127 (2·16256) and −128 (2·−16384,
        // which vpsignb leaves at −128 whatever w's sign, so every such product needs the
        // fixup); zero points 0, 127 (each input then −255) and −128.
        let k = 160;
        let alternating: Vec<i8> = (0..3 * k)
            .map(|i| if i % 2 == 0 { 127 } else { -128 })
            .collect();
        for codes in [alternating, vec![-128; 3 * k], vec![127; 3 * k]] {
            let w = Int8Linear::new(3, k, codes, vec![1.0; 3]).unwrap();
            for (acts, zero) in [(-128, 127), (-128, 0), (127, -128), (-127, 0)] {
                let xq = crate::kernels::int8::QuantizedActs {
                    codes: (0..2 * k)
                        .map(|i| if i % 3 == 0 { 127 } else { acts })
                        .collect(),
                    scale: vec![1.0; 2],
                    zero: vec![zero; 2],
                    rows: 2,
                    cols: k,
                };
                let want = matmul_i8_ref(&xq, &w);
                assert_eq!(matmul(&signed_codes(&xq), &w), want, "{acts} z {zero}");
            }
        }
    }
}
