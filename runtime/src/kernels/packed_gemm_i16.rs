//! Prefill GEMM for 4- and 8-bit `pack-quantized` weights on AVX-512 VNNI: the activations
//! coded as int16 per block of 32 columns (the decode GEMV's codes, [`super::block_codes`]),
//! the weights as int16 `u − z` (stored code minus stored zero: exact, |u − z| ≤ 383), and
//! `vpdpwssd` summing 32 int16 products into 16 i32 lanes per instruction, twice the
//! multiplies of an f32 FMA. The float GEMM it replaces first had to dequantize every weight.
//!
//! Each team task is one band of 48 output rows. It unpacks the band once into int16 lines
//! (`line[2j + i]` = row `16h + j`, column `2p + i`: a broadcast pair of activation codes
//! against one line gives 16 rows' partial sums), then runs every token past it in register
//! tiles of 4 tokens × 48 rows: 12 i32 accumulators for the current 32-column block, 12 f32
//! accumulators for the row so far. At each block's end the integer sums are scaled by
//! `sx[t][b] · s[o][g]` into the float ones. The i32 sums are exact (32 · 32639 · 383 < 2³¹);
//! only the float scaling rounds, so results match [`super::block_codes::matmul_block_codes_ref`]
//! to float accuracy (tested under a tolerance), and the codes' rounding is the decode
//! path's (perplexity within 0.002%).

use super::block_codes::{int_gemv_supported, stored_zero, BlockCodes};
use super::team::{self, SendPtr};
#[cfg(test)]
use crate::packed::pack_quantized::unpack_int32;
use crate::packed::PackedLinear;

/// Columns that share one activation scale (the decode GEMV's block).
pub const BLOCK: usize = super::packed_vnni::BLOCK;

/// Rows of one 64-byte line of int16 weights (two columns each).
const TILE_ROWS: usize = 16;

/// Lines per band: the register tile's rows are `TILE_ROWS · BAND_TILES`.
const BAND_TILES: usize = 3;

/// Output rows per team task.
pub const BAND_ROWS: usize = TILE_ROWS * BAND_TILES;

/// Tokens per register tile.
const TILE_TOKENS: usize = 4;

/// Whether this GEMM takes `w` on this CPU: the integer GEMVs' weights (4 or 8 bits, no
/// `g_idx`, whole groups of 32-byte loads), when [`enabled`].
pub fn supported(w: &PackedLinear) -> bool {
    enabled() && int_gemv_supported(w)
}

/// Whether prompts run through this GEMM at all: a CPU with AVX-512 VNNI, unless
/// `LMQ_PREFILL=dequantize` asks for the banded dequantize + f32 GEMM (for side-by-side
/// measurement). Read once per process.
pub fn enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        super::packed_vnni::available()
            && std::env::var("LMQ_PREFILL").as_deref() != Ok("dequantize")
    })
}

/// `[x.m, w.rows]` = the block-code product (callers check [`supported`]).
pub fn matmul(x: &BlockCodes, w: &PackedLinear) -> Vec<f32> {
    assert!(supported(w), "weight not supported by the int16 GEMM");
    assert_eq!((x.k, x.block), (w.cols, BLOCK), "activation codes");
    let (m, n) = (x.m, w.rows);
    let mut y = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    let out = SendPtr(y.as_mut_ptr());
    team::global().run(n.div_ceil(BAND_ROWS), &|b| {
        let p = out; // the whole wrapper, not its raw field, into the closure
        let band = Band::new(w, b);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported` checked AVX-512 VNNI; band b writes only its own rows' columns
        // of `y`, which outlives the loop.
        unsafe {
            avx512::band(x, &band, n, p.0)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the VNNI GEMM on a non-x86 CPU ({}, {:p})", band.r0, p.0);
    });
    y
}

/// One line of int16 weights: `[TILE_ROWS][2]`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i16; 2 * TILE_ROWS]);

/// A band of 48 weight rows unpacked for the kernel: `lines[h · pairs + p]` (tile `h`,
/// column pair `p`), zero past the last row; `scale[g · BAND_ROWS + j]` for row `r0 + j`.
struct Band {
    r0: usize,
    pairs: usize,
    lines: Vec<Line>,
    scale: Vec<f32>,
    group_size: usize,
}

impl Band {
    /// Band `b` of `w`: the scalar definition of the lines (see [`Band::new`] for the fast
    /// one), kept beside it as its test reference.
    #[cfg(test)]
    fn new_ref(w: &PackedLinear, b: usize) -> Self {
        let (k, ng) = (w.cols, w.n_groups());
        let mut band = Self::empty(w, b);
        let rows = BAND_ROWS.min(w.rows - band.r0);
        let wpr = w.words_per_row();
        for j in 0..rows {
            let o = band.r0 + j;
            let u = unpack_int32(&w.packed[o * wpr..(o + 1) * wpr], 1, k, w.bits)
                .expect("a validated weight");
            for (c, &u) in u.iter().enumerate() {
                let line = &mut band.lines[(j / TILE_ROWS) * band.pairs + c / 2].0;
                line[2 * (j % TILE_ROWS) + c % 2] =
                    (i32::from(u) - stored_zero(w, o, c / w.group_size)) as i16;
            }
            for g in 0..ng {
                band.scale[g * BAND_ROWS + j] = w.scale[o * ng + g];
            }
        }
        band
    }

    /// Zero lines and scales for band `b` of `w`.
    fn empty(w: &PackedLinear, b: usize) -> Self {
        let pairs = w.cols / 2;
        Self {
            r0: b * BAND_ROWS,
            pairs,
            lines: vec![Line([0; 2 * TILE_ROWS]); BAND_TILES * pairs],
            scale: vec![0.0f32; w.n_groups() * BAND_ROWS],
            group_size: w.group_size,
        }
    }

    /// Band `b` of `w`, unpacked with gathers: 16 rows' next 4 packed bytes per gather (8
    /// or 4 columns each), split into lines with shifts and masks and the stored zeros taken
    /// off in each 16-bit half. Equal to [`Band::new_ref`] (tested); the scalar unpack cost
    /// as much as the products themselves on an MLP-sized weight.
    fn new(w: &PackedLinear, b: usize) -> Self {
        let mut band = Self::empty(w, b);
        let ng = w.n_groups();
        let rows = BAND_ROWS.min(w.rows - band.r0);
        let mut zero = vec![0i32; ng * BAND_ROWS];
        for j in 0..rows {
            let o = band.r0 + j;
            for g in 0..ng {
                band.scale[g * BAND_ROWS + j] = w.scale[o * ng + g];
                zero[g * BAND_ROWS + j] = stored_zero(w, o, g);
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers of `matmul` checked AVX-512 (`supported`); the weight is validated,
        // so every row holds `words_per_row` words.
        unsafe {
            avx512::unpack(w, &mut band, rows, &zero)
        };
        band
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Band, BlockCodes, BAND_ROWS, BAND_TILES, BLOCK, TILE_ROWS, TILE_TOKENS};
    use crate::packed::PackedLinear;

    /// Fills `band`'s lines from `w`'s packed rows `r0..r0 + rows` (see [`Band::new`]);
    /// `zero[g · BAND_ROWS + j]` is row `r0 + j`'s stored zero in group `g`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn unpack(w: &PackedLinear, band: &mut Band, rows: usize, zero: &[i32]) {
        let row_bytes = w.words_per_row() * 4;
        let base = w.packed.as_ptr() as *const u8;
        // Pairs of columns per gathered 4 bytes: 4 for 4-bit codes (a byte is a pair, low
        // nibble first), 2 for 8-bit ones.
        let per_gather = if w.bits == 4 { 4 } else { 2 };
        let pairs_per_group = w.group_size / 2;
        for h in 0..BAND_TILES {
            let j0 = h * TILE_ROWS;
            if j0 >= rows {
                break;
            }
            let mask: __mmask16 = crate::kernels::simd::lane_mask16(rows - j0);
            let lanes: [i32; TILE_ROWS] =
                std::array::from_fn(|j| ((band.r0 + j0 + j) * row_bytes) as i32);
            // SAFETY: 16 i32 offsets.
            let offsets = unsafe { _mm512_loadu_si512(lanes.as_ptr() as *const _) };
            let mut zz = _mm512_setzero_si512();
            for p0 in (0..band.pairs).step_by(per_gather) {
                if p0 % pairs_per_group == 0 {
                    let g = p0 / pairs_per_group;
                    // SAFETY: group g's zeros for the band's rows j0..j0 + 16.
                    let z = unsafe {
                        _mm512_loadu_si512(zero[g * BAND_ROWS + j0..].as_ptr() as *const _)
                    };
                    zz = _mm512_or_si512(z, _mm512_slli_epi32(z, 16));
                }
                let byte = if w.bits == 4 { p0 } else { 2 * p0 };
                // SAFETY: 4 bytes at `byte` of each live row, inside its packed words (the
                // width is a whole number of 32-byte loads); dead lanes are not read.
                let v = unsafe {
                    _mm512_mask_i32gather_epi32::<1>(
                        _mm512_setzero_si512(),
                        mask,
                        offsets,
                        base.add(byte) as *const _,
                    )
                };
                let lo8 = _mm512_set1_epi32(0xff);
                for q in 0..per_gather {
                    // Lane j of line p0 + q: column 2(p0 + q) in the low 16 bits and the next
                    // column in the high ones, each as its unsigned stored code.
                    let t = if w.bits == 4 {
                        let byte = _mm512_and_si512(
                            _mm512_srlv_epi32(v, _mm512_set1_epi32(8 * q as i32)),
                            lo8,
                        );
                        _mm512_or_si512(
                            _mm512_and_si512(byte, _mm512_set1_epi32(0x0f)),
                            _mm512_slli_epi32(_mm512_and_si512(byte, _mm512_set1_epi32(0xf0)), 12),
                        )
                    } else {
                        let two = _mm512_srlv_epi32(v, _mm512_set1_epi32(16 * q as i32));
                        _mm512_or_si512(
                            _mm512_and_si512(two, lo8),
                            _mm512_slli_epi32(_mm512_and_si512(two, _mm512_set1_epi32(0xff00)), 8),
                        )
                    };
                    // Dead lanes: code 0 (masked gather) minus zero 0 (padding rows).
                    let line = _mm512_sub_epi16(t, zz);
                    // SAFETY: line h · pairs + p0 + q < BAND_TILES · pairs.
                    unsafe {
                        _mm512_store_si512(
                            band.lines.as_mut_ptr().add(h * band.pairs + p0 + q) as *mut _,
                            line,
                        )
                    };
                }
            }
        }
    }

    /// Every token against the band, into `y` `[m, n]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn band(x: &BlockCodes, band: &Band, n: usize, y: *mut f32) {
        let mut t = 0;
        while t < x.m {
            // SAFETY: tokens t..t + T exist.
            unsafe {
                match x.m - t {
                    1 => tile::<1>(x, band, n, t, y),
                    2 => tile::<2>(x, band, n, t, y),
                    3 => tile::<3>(x, band, n, t, y),
                    _ => tile::<TILE_TOKENS>(x, band, n, t, y),
                }
            }
            t += TILE_TOKENS;
        }
    }

    /// Tokens `t..t + T` against the band's 48 rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const T: usize>(x: &BlockCodes, band: &Band, n: usize, t: usize, y: *mut f32) {
        let k = x.k;
        let nb = k / BLOCK;
        let mut out = [[_mm512_setzero_ps(); BAND_TILES]; T];
        let lines = band.lines.as_ptr();
        let codes = x.codes[t * k..].as_ptr();
        for blk in 0..nb {
            let mut acc = [[_mm512_setzero_si512(); BAND_TILES]; T];
            for p in blk * BLOCK / 2..(blk + 1) * BLOCK / 2 {
                // SAFETY: line h · pairs + p of the band, and the code pair at column 2p of
                // rows t..t + T, all in bounds (p < k / 2).
                unsafe {
                    let mut wv = [_mm512_setzero_si512(); BAND_TILES];
                    for (h, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_load_si512(lines.add(h * band.pairs + p) as *const _);
                    }
                    for (i, a) in acc.iter_mut().enumerate() {
                        let pair = (codes.add(i * k + 2 * p) as *const i32).read_unaligned();
                        let xb = _mm512_set1_epi32(pair);
                        for (ah, wh) in a.iter_mut().zip(&wv) {
                            *ah = _mm512_dpwssd_epi32(*ah, xb, *wh);
                        }
                    }
                }
            }
            let g = blk * BLOCK / band.group_size;
            let mut sw = [_mm512_setzero_ps(); BAND_TILES];
            for (h, s) in sw.iter_mut().enumerate() {
                // SAFETY: group g's scales for the band's 48 rows.
                *s = unsafe {
                    _mm512_loadu_ps(band.scale[g * BAND_ROWS + h * TILE_ROWS..].as_ptr())
                };
            }
            for (i, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
                let sx = _mm512_set1_ps(x.scale[(t + i) * nb + blk]);
                for h in 0..BAND_TILES {
                    let s = _mm512_mul_ps(sx, sw[h]);
                    o[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[h]), s, o[h]);
                }
            }
        }
        for h in 0..BAND_TILES {
            let r0 = band.r0 + h * TILE_ROWS;
            if r0 >= n {
                break;
            }
            let mask: __mmask16 = crate::kernels::simd::lane_mask16(n - r0);
            for (i, o) in out.iter().enumerate() {
                // SAFETY: rows < n of token t + i < m.
                unsafe { _mm512_mask_storeu_ps(y.add((t + i) * n + r0), mask, o[h]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::block_codes::tests::{activations, assert_matches_definition};
    use crate::kernels::packed_q::tests::weight;
    use crate::kernels::packed_vnni::{quantize_acts, ActCodes};

    #[test]
    fn gathered_bands_equal_the_scalar_unpack() {
        if !crate::kernels::packed_vnni::available() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for (bits, rows, cols, group, sym) in [
            (4u8, 48, 64, 64, true),
            (4, 50, 192, 64, false),
            (8, 17, 96, 32, false),
            (8, 100, 64, 64, true),
            (4, 97, 128, 128, false),
        ] {
            let w = weight(bits, rows, cols, group, sym);
            for b in 0..rows.div_ceil(BAND_ROWS) {
                let (fast, slow) = (Band::new(&w, b), Band::new_ref(&w, b));
                let what = format!("{bits}-bit {rows}x{cols} g{group} sym {sym} band {b}");
                assert!(
                    fast.lines.iter().zip(&slow.lines).all(|(a, b)| a.0 == b.0),
                    "{what}"
                );
                assert_eq!(fast.scale, slow.scale, "{what}");
            }
        }
    }

    #[test]
    fn gemm_matches_the_block_code_definition() {
        if !crate::kernels::packed_vnni::available() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        // Rows short of, at and past a band; tokens past a tile; 4 and 8 bits, sym and asym,
        // groups of one block and of several, per-channel.
        for (bits, rows, cols, group, sym, m) in [
            (4u8, 48, 64, 64, false, 4),
            (4, 50, 128, 64, true, 9),
            (8, 17, 96, 32, true, 3),
            (8, 100, 64, 64, false, 37),
            (4, 97, 192, 192, true, 5),
        ] {
            let w = weight(bits, rows, cols, group, sym);
            if !supported(&w) {
                continue;
            }
            let x = activations(m, cols, rows);
            for kind in [ActCodes::Int16, ActCodes::Int8] {
                let a = quantize_acts(&x, m, cols, kind);
                let got = matmul(&a, &w);
                let what = format!("{bits}-bit {rows}x{cols} g{group} sym {sym} m {m}");
                assert_matches_definition(&got, &a, &w, 1e-5, &what);
            }
        }
    }
}
