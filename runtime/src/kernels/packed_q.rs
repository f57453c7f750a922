//! `y = x · Wᵀ` for a `pack-quantized` weight ([`PackedLinear`], `[out, in]`), keeping the
//! weight packed in memory.
//!
//! Few rows (decode): a streaming GEMV, parallel over bands of output rows, that unpacks each
//! int32 word, subtracts the group's zero point (plus the storage offset) and multiplies
//! against every activation row while the word is in a register; each group's partial dot is
//! scaled once, so a weight value costs a shift, a mask, a convert, a subtract and one FMA
//! per activation row. 4-bit and 8-bit weights without `g_idx`, with group sizes and widths
//! that are multiples of 8, take this path (AVX2/FMA where the CPU has it, portable code
//! otherwise). Decode is memory-bound, so reading 4 bits instead of 32 per weight is the point.
//!
//! Many rows (prefill), and every other weight (`g_idx`, 2/3-bit, ragged groups): each thread
//! dequantizes bands of its share of the output rows to f32 (the same arithmetic as the
//! scalar reference) and multiplies them with the dense GEMM, so the extra memory is a band
//! per thread, never the whole f32 weight.

use super::dense_f32::GEMV_MAX_ROWS;
use super::packed_vnni::runtime_act_codes;
use crate::packed::pack_quantized::storage_offset;
use crate::packed::PackedLinear;

/// f32 values per dequantized band on the prefill path (4 MiB): large enough for the blocked
/// GEMM to run at full speed, small enough that the transient copy stays in L3.
pub const PACKED_BAND_FLOATS: usize = 1 << 20;

/// Values one SIMD step of the GEMV handles; group sizes and widths must be multiples of it
/// for the fast path.
const LANES: usize = 8;

/// Plain definition: `y[r][o] = Σ_c x[r][c] · W[o][c]` with `W` from
/// [`PackedLinear::dequantize_ref`], accumulated in f64. `x` is `[m, cols]`; returns
/// `[m, rows]`.
pub fn matmul_packed_nt_ref(x: &[f32], w: &PackedLinear, m: usize) -> Vec<f32> {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "activation shape");
    let wd = w.dequantize_ref();
    let mut y = vec![0.0f32; m * n];
    for r in 0..m {
        for o in 0..n {
            let mut s = 0.0f64;
            for i in 0..k {
                s += f64::from(x[r * k + i]) * f64::from(wd[o * k + i]);
            }
            y[r * n + o] = s as f32;
        }
    }
    y
}

/// `x` is `[m, w.cols]`; returns `[m, w.rows]`. Where the CPU has AVX-512 VNNI, the
/// int8-product GEMV with int16 activations (`packed_vnni`) up to `VNNI_MAX_ROWS` rows, in
/// groups of `GEMV_MAX_ROWS` (each row gets a decode step's arithmetic). Otherwise, for
/// decode-sized `m`, the AVX2 int16 GEMV (`packed_i16`), else the fused float GEMV on weights
/// it supports ([`gemv_supported`]). Past those rows, the int16 VNNI GEMM on the same codes
/// (`packed_gemm_i16`) where it applies; the banded dequantize + dense GEMM for the rest.
pub fn matmul_packed_nt(x: &[f32], w: &PackedLinear, m: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * w.cols, "activation shape");
    if let Some(y) = super::packed_vnni::gemv_packed_vnni(x, w, m, runtime_act_codes()) {
        y
    } else if let Some(y) = super::packed_i16::gemv_packed_i16(x, w, m) {
        y
    } else if (1..=GEMV_MAX_ROWS).contains(&m) && gemv_supported(w) {
        gemv_packed(x, w, m, has_avx2_fma())
    } else if super::packed_gemm_i16::supported(w) {
        let codes = super::packed_vnni::quantize_acts(x, m, w.cols, runtime_act_codes());
        super::packed_gemm_i16::matmul(&codes, w)
    } else {
        matmul_banded(x, w, m)
    }
}

/// Whether the fused GEMV handles `w`: 4 or 8 bits, no `g_idx`, and group size and input
/// width multiples of 8 (so every SIMD step is whole words inside one group).
pub fn gemv_supported(w: &PackedLinear) -> bool {
    matches!(w.bits, 4 | 8)
        && w.g_idx.is_none()
        && w.group_size.is_multiple_of(LANES)
        && w.cols.is_multiple_of(LANES)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2_fma() -> bool {
    false
}

/// Each thread dequantizes bands of its share of the output rows (at most
/// `PACKED_BAND_FLOATS` values at a time) and multiplies them with the dense GEMM: the path
/// for any weight, public so benchmarks can time it beside the integer kernels.
pub fn matmul_banded(x: &[f32], w: &PackedLinear, m: usize) -> Vec<f32> {
    super::dense_f32::gemm_nt_bands(x, m, w.cols, w.rows, w)
}

impl super::dense_f32::WeightBands for PackedLinear {
    fn band<'s>(&'s self, o0: usize, rows: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        scratch.resize(rows * self.cols, 0.0);
        self.dequantize_rows_into(o0, scratch);
        scratch
    }
}

/// The fused GEMV; `simd` selects the AVX2/FMA row kernel (callers check the CPU).
fn gemv_packed(x: &[f32], w: &PackedLinear, m: usize, simd: bool) -> Vec<f32> {
    debug_assert!(gemv_supported(w) && (1..=GEMV_MAX_ROWS).contains(&m));
    let (n, k) = (w.rows, w.cols);
    let (wpr, n_groups) = (w.words_per_row(), w.n_groups());
    let off = storage_offset(w.bits) as f32;
    // The SIMD loads below rely on these (the fields are public, so check, not trust): O(1).
    assert_eq!(x.len(), m * k, "activation shape");
    assert_eq!(w.packed.len(), n * wpr, "weight_packed shape");
    assert_eq!(w.scale.len(), n * n_groups, "weight_scale shape");
    if let Some(z) = &w.zero {
        assert_eq!(z.len(), n * n_groups, "weight_zero_point shape");
    }
    // Output stored [n, m] while computing (each band writes contiguous memory), then
    // transposed: m is tiny so that costs nothing.
    let mut yt = vec![0.0f32; n * m];
    super::team::for_each_row_band_mut(&mut yt, m, |first, ys| {
        let mut zoff = vec![off; n_groups];
        for (i, yrow) in ys.chunks_exact_mut(m).enumerate() {
            let o = first + i;
            if let Some(z) = &w.zero {
                for (d, &zp) in zoff.iter_mut().zip(&z[o * n_groups..(o + 1) * n_groups]) {
                    *d = off + f32::from(zp);
                }
            }
            let row = Row {
                words: &w.packed[o * wpr..(o + 1) * wpr],
                scales: &w.scale[o * n_groups..(o + 1) * n_groups],
                zoff: &zoff,
                group: w.group_size,
            };
            row_dots(w.bits, &row, x, k, yrow, simd);
        }
    });
    super::dense_f32::from_row_major_out(yt, n, m)
}

/// One output row's packed words and per-group parameters; `zoff[g]` is the stored value
/// that means 0 in group `g` (zero point + storage offset), as f32.
struct Row<'a> {
    words: &'a [i32],
    scales: &'a [f32],
    zoff: &'a [f32],
    group: usize,
}

/// `y[r] = Σ_c x[r][c] · W[row][c]` for the `y.len()` activation rows of `x` (`[m, k]`).
fn row_dots(bits: u8, row: &Row, x: &[f32], k: usize, y: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        macro_rules! dispatch {
            ($bits:literal) => {
                // SAFETY: `simd` is only true when the CPU has AVX2 and FMA; the row and
                // `x` have the lengths `gemv_packed` derives from a validated weight.
                unsafe {
                    match y.len() {
                        1 => avx2_row::<$bits, 1>(row, x, k, y),
                        2 => avx2_row::<$bits, 2>(row, x, k, y),
                        3 => avx2_row::<$bits, 3>(row, x, k, y),
                        4 => avx2_row::<$bits, 4>(row, x, k, y),
                        5 => avx2_row::<$bits, 5>(row, x, k, y),
                        6 => avx2_row::<$bits, 6>(row, x, k, y),
                        7 => avx2_row::<$bits, 7>(row, x, k, y),
                        8 => avx2_row::<$bits, 8>(row, x, k, y),
                        m => unreachable!("GEMV with {m} rows"),
                    }
                }
            };
        }
        match bits {
            4 => dispatch!(4),
            8 => dispatch!(8),
            b => unreachable!("fused GEMV for {b} bits"),
        }
        return;
    }
    let _ = simd;
    portable_row(bits, row, x, k, y);
}

/// Eight stored values starting at column `c` (a multiple of 8) as f32.
#[inline]
fn unpack8(bits: u8, words: &[i32], c: usize, v: &mut [f32; LANES]) {
    if bits == 4 {
        let w = words[c / 8] as u32;
        for (j, v) in v.iter_mut().enumerate() {
            *v = ((w >> (4 * j)) & 0xF) as f32;
        }
    } else {
        let (w0, w1) = (words[c / 4] as u32, words[c / 4 + 1] as u32);
        for (j, v) in v.iter_mut().enumerate() {
            let w = if j < 4 { w0 } else { w1 };
            *v = ((w >> (8 * (j % 4))) & 0xFF) as f32;
        }
    }
}

/// Portable row kernel: eight independent lanes per activation row so the compiler can
/// vectorize without reassociating.
fn portable_row(bits: u8, row: &Row, x: &[f32], k: usize, y: &mut [f32]) {
    let m = y.len();
    y.fill(0.0);
    let mut v = [0.0f32; LANES];
    let mut acc = [[0.0f32; LANES]; GEMV_MAX_ROWS];
    for (g, c0) in (0..k).step_by(row.group).enumerate() {
        let c1 = (c0 + row.group).min(k);
        for a in &mut acc[..m] {
            *a = [0.0; LANES];
        }
        for c in (c0..c1).step_by(LANES) {
            unpack8(bits, row.words, c, &mut v);
            for e in &mut v {
                *e -= row.zoff[g];
            }
            for (r, a) in acc[..m].iter_mut().enumerate() {
                let xs = &x[r * k + c..r * k + c + LANES];
                for j in 0..LANES {
                    a[j] += v[j] * xs[j];
                }
            }
        }
        for (yr, a) in y.iter_mut().zip(&acc[..m]) {
            *yr += row.scales[g] * a.iter().sum::<f32>();
        }
    }
}

/// AVX2/FMA row kernel for `M` activation rows and `BITS`-bit codes. Per group: an
/// accumulator per activation row (two when `M ≤ 2`, to hide FMA latency), then one FMA by
/// the group's scale into the row's total; horizontal sums only at the end.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `row.words` must hold `k / (32 / BITS)` words,
/// `row.scales`/`row.zoff` one entry per group of `row.group` columns, `x` at least `M · k`
/// values, `y` exactly `M`; `k` and `row.group` multiples of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_row<const BITS: u32, const M: usize>(row: &Row, x: &[f32], k: usize, y: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= M * k && y.len() == M);
    debug_assert_eq!(row.words.len() * (32 / BITS as usize), k);
    let wp = row.words.as_ptr();
    let bp = wp as *const u8;
    let xp = x.as_ptr();
    let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    let nibble = _mm256_set1_epi32(0xF);
    // Eight stored values from column c as f32, minus the group's zero offset.
    // SAFETY (all pointer reads below): c + 8 <= k, and the row holds k values: k / 8 words
    // for 4 bits, k bytes for 8 bits (x86 is little-endian, so byte order is value order).
    let load = |c: usize, z: __m256| -> __m256 {
        let u = if BITS == 4 {
            let w = _mm256_set1_epi32(unsafe { *wp.add(c / 8) });
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w, shifts), nibble))
        } else {
            let b = unsafe { _mm_loadl_epi64(bp.add(c) as *const __m128i) };
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
        };
        _mm256_sub_ps(u, z)
    };
    let mut total = [_mm256_setzero_ps(); M];
    let (mut c0, mut g) = (0, 0);
    while c0 < k {
        let c1 = (c0 + row.group).min(k);
        let z = _mm256_set1_ps(row.zoff[g]);
        let mut acc = [_mm256_setzero_ps(); M];
        let mut c = c0;
        if M <= 2 {
            let mut acc_b = [_mm256_setzero_ps(); M];
            while c + 16 <= c1 {
                let (va, vb) = (load(c, z), load(c + 8, z));
                for r in 0..M {
                    // SAFETY: r * k + c + 16 <= M * k <= x.len().
                    unsafe {
                        acc[r] = _mm256_fmadd_ps(va, _mm256_loadu_ps(xp.add(r * k + c)), acc[r]);
                        acc_b[r] =
                            _mm256_fmadd_ps(vb, _mm256_loadu_ps(xp.add(r * k + c + 8)), acc_b[r]);
                    }
                }
                c += 16;
            }
            for r in 0..M {
                acc[r] = _mm256_add_ps(acc[r], acc_b[r]);
            }
        }
        while c < c1 {
            let v = load(c, z);
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r * k + c + 8 <= M * k <= x.len().
                *a = _mm256_fmadd_ps(v, unsafe { _mm256_loadu_ps(xp.add(r * k + c)) }, *a);
            }
            c += 8;
        }
        let s = _mm256_set1_ps(row.scales[g]);
        for (t, a) in total.iter_mut().zip(&acc) {
            *t = _mm256_fmadd_ps(*a, s, *t);
        }
        c0 = c1;
        g += 1;
    }
    for (yr, t) in y.iter_mut().zip(&total) {
        let hi = _mm256_extractf128_ps(*t, 1);
        let lo = _mm256_castps256_ps128(*t);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        *yr = _mm_cvtss_f32(s);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::dense_f32::matmul_f32_nt;

    /// f32 accumulation (per-group partial sums, then scaled) against the f64 reference,
    /// relative to `Σ_c |x[c] · w[c]|` of the same output: the error bound of a float dot
    /// product scales with that sum, not with the (possibly cancelling) result.
    const PACKED_Q_REL_TOL: f64 = 1e-5;

    /// A deterministic packed weight with codes over the whole range and varied scales and
    /// zero points.
    pub(crate) fn weight(
        bits: u8,
        rows: usize,
        cols: usize,
        group: usize,
        symmetric: bool,
    ) -> PackedLinear {
        let off = storage_offset(bits);
        let codes: Vec<i8> = (0..rows * cols)
            .map(|i| ((((i * 7919) >> 2) % (2 * off as usize)) as i32 - off) as i8)
            .collect();
        let n_groups = cols.div_ceil(group);
        let scale: Vec<f32> = (0..rows * n_groups)
            .map(|i| 0.01 + ((i * 37 % 101) as f32) / 1000.0)
            .collect();
        let zero = (!symmetric).then(|| {
            (0..rows * n_groups)
                .map(|i| ((i * 13 % (2 * off as usize)) as i32 - off) as i8)
                .collect()
        });
        PackedLinear::from_codes(bits, rows, cols, group, &codes, scale, zero, None).unwrap()
    }

    fn activations(m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 40.0) / 13.0)
            .collect()
    }

    fn assert_close(got: &[f32], x: &[f32], w: &PackedLinear, m: usize, what: &str) {
        let (n, k) = (w.rows, w.cols);
        let want = matmul_packed_nt_ref(x, w, m);
        let wd = w.dequantize_ref();
        assert_eq!(got.len(), want.len(), "{what}");
        for r in 0..m {
            for o in 0..n {
                let mag: f64 = (0..k)
                    .map(|c| (f64::from(x[r * k + c]) * f64::from(wd[o * k + c])).abs())
                    .sum();
                let (a, b) = (f64::from(got[r * n + o]), f64::from(want[r * n + o]));
                assert!(
                    (a - b).abs() <= PACKED_Q_REL_TOL * mag.max(1e-30),
                    "{what}: row {r} out {o}: {a} vs {b} (magnitude {mag})"
                );
            }
        }
    }

    #[test]
    fn fused_and_banded_paths_match_the_reference() {
        let (rows, cols) = (37, 256);
        for bits in [4u8, 8] {
            for symmetric in [true, false] {
                for group in [32, 64, 128, cols] {
                    let w = weight(bits, rows, cols, group, symmetric);
                    assert!(gemv_supported(&w));
                    for m in [1, 3, 8, 33] {
                        let x = activations(m, cols);
                        let what = format!("bits {bits} sym {symmetric} group {group} m {m}");
                        assert_close(&matmul_packed_nt(&x, &w, m), &x, &w, m, &what);
                        if m <= GEMV_MAX_ROWS {
                            let p = gemv_packed(&x, &w, m, false);
                            assert_close(&p, &x, &w, m, &format!("portable {what}"));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn decode_shaped_weight_matches_the_reference() {
        // SmolLM2's width, many rows (several rayon bands), per-channel and group 64.
        for group in [64, 576] {
            let w = weight(4, 300, 576, group, false);
            for m in [1, 2] {
                let x = activations(m, 576);
                assert_close(&matmul_packed_nt(&x, &w, m), &x, &w, m, "decode shape");
            }
        }
    }

    #[test]
    fn other_weights_fall_back_to_the_banded_path() {
        // 3- and 2-bit, a ragged width, a group that is not a multiple of 8, and g_idx.
        let mut cases = vec![
            weight(3, 19, 100, 20, false),
            weight(2, 21, 64, 64, true),
            weight(4, 9, 30, 10, false),
            weight(8, 5, 36, 12, true),
        ];
        let mut w = weight(4, 11, 64, 16, false);
        w.g_idx = Some((0..64).map(|c: i32| (c * 5) % 4).collect());
        w.validate().unwrap();
        cases.push(w);
        for w in &cases {
            assert!(!gemv_supported(w));
            for m in [1, 3, 33] {
                let x = activations(m, w.cols);
                let what = format!("bits {} cols {} m {m}", w.bits, w.cols);
                assert_close(&matmul_packed_nt(&x, w, m), &x, w, m, &what);
            }
        }
    }

    #[test]
    fn no_activation_rows_give_an_empty_result() {
        let w = weight(4, 5, 64, 32, true);
        assert!(matmul_packed_nt(&[], &w, 0).is_empty());
    }

    #[test]
    fn banding_covers_every_row_when_the_band_is_smaller_than_the_weight() {
        // More rows than one band holds (PACKED_BAND_FLOATS / cols).
        let cols = 8192;
        let rows = PACKED_BAND_FLOATS / cols + 3;
        let w = weight(4, rows, cols, 128, true);
        let x = activations(1, cols);
        let got = matmul_banded(&x, &w, 1);
        let fused = matmul_packed_nt(&x, &w, 1);
        let wd = w.dequantize_ref();
        let want = matmul_f32_nt(&x, &wd, 1, cols, rows);
        for (o, ((a, b), f)) in got.iter().zip(&want).zip(&fused).enumerate() {
            let mag: f32 = x
                .iter()
                .zip(&wd[o * cols..])
                .map(|(p, q)| (p * q).abs())
                .sum();
            assert!((a - b).abs() <= 1e-5 * mag, "banded row {o}: {a} vs {b}");
            assert!((f - b).abs() <= 1e-5 * mag, "fused row {o}: {f} vs {b}");
        }
    }
}
