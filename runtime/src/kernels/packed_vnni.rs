//! Decode GEMV for 4- and 8-bit `pack-quantized` weights whose products are all int8:
//! `vpdpbusd` (AVX-512 VNNI on 256-bit vectors) multiplies 32 unsigned weight codes by 32
//! signed int8 activation codes and sums them four to a lane, with no widening of the
//! weights. The activations come in one of two precisions ([`ActCodes`]):
//! - `Int16`: an int16 code per value, split into two int8 planes (`q = 256·hi + lo`); two
//!   `vpdpbusd` per weight vector and a shift recombine `Σ u·q` exactly. Rounding error
//!   ~2^-16 of the block's absmax: perplexity does not move (the runtime's default).
//! - `Int8`: one plane (llama.cpp's Q8 activations), half the multiplies, 256× the rounding
//!   error.
//!
//! The definition ([`quantize_acts`], `block_codes::matmul_block_codes_ref`), blocks of [`BLOCK`]
//! columns sharing one activation scale `sx`:
//! `y[r][o] = Σ_g s[o][g] · Σ_{b ∈ g} sx[r][b] · Σ_{c ∈ b} (u[o][c] − z[o][g]) · q[r][c]`
//! with `u` the stored code, `z` the stored zero (zero point + storage offset) and `q` the
//! activation code. The kernel takes `Σ u·q` exactly in i32 lanes and subtracts
//! `z · Σ_{b∈g} sx·Σq` per group once, after the loop.

use super::block_codes::{int_gemv_supported, load_cols, quantize_blocks, BlockCodes};
use super::dense_f32::GEMV_MAX_ROWS;
use crate::packed::pack_quantized::storage_offset;
use crate::packed::PackedLinear;

/// The activation precision the runtime's packed GEMVs use: `Int16`, unless
/// `LMQ_ACT_CODES=int8` asks for int8 (llama.cpp's precision), which is how the README's
/// perplexity cost of int8 activations is measured. Read once per process.
pub fn runtime_act_codes() -> ActCodes {
    use std::sync::OnceLock;
    static KIND: OnceLock<ActCodes> = OnceLock::new();
    *KIND.get_or_init(|| match std::env::var("LMQ_ACT_CODES").as_deref() {
        Ok("int8") => ActCodes::Int8,
        _ => ActCodes::Int16,
    })
}

/// Columns that share one activation scale.
pub const BLOCK: usize = 32;

/// How finely a GEMV's activations are coded (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActCodes {
    /// int8 codes, `−127..=127`.
    Int8,
    /// int16 codes, `−32639..=32639` (so both int8 planes stay in range).
    Int16,
}

impl ActCodes {
    /// Largest code magnitude.
    pub const fn code_max(self) -> f32 {
        match self {
            ActCodes::Int8 => 127.0,
            ActCodes::Int16 => 32639.0,
        }
    }

    /// int8 planes per value in the kernel.
    pub const fn planes(self) -> usize {
        match self {
            ActCodes::Int8 => 1,
            ActCodes::Int16 => 2,
        }
    }
}

/// Quantizes `x` (`[m, k]`, `k` a multiple of [`BLOCK`]) to `kind` codes per block.
pub fn quantize_acts(x: &[f32], m: usize, k: usize, kind: ActCodes) -> BlockCodes {
    quantize_blocks(x, m, k, BLOCK, kind.code_max())
}

/// Whether this CPU runs the VNNI kernel (AVX-512 F/BW/VL/VNNI and FMA).
/// `LMQ_NO_AVX512=1` turns it off (the AVX2 int16 kernel runs instead), for side-by-side
/// measurement.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::env::var_os("LMQ_NO_AVX512").is_none_or(|v| v != "1")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Column (within one 32-byte load's columns) of the `p`-th activation code the kernel
/// multiplies: for 4-bit codes, the low nibbles of the 32 bytes (even columns) and then the
/// high ones (odd columns); 8-bit codes stay in column order. Lane `j` of a `vpdpbusd` sums
/// kernel positions `4j..4j + 4` (and, for 4-bit, `32 + 4j..`), which all lie in activation
/// block `j / 4` (4-bit: columns `0..32` or `32..64`) or the load's single block (8-bit).
fn kernel_column(bits: u8, p: usize) -> usize {
    if bits == 4 {
        if p < 32 {
            2 * p
        } else {
            2 * (p - 32) + 1
        }
    } else {
        p
    }
}

/// Weight rows the decode kernel multiplies per step (sharing activation loads).
const ROW_TILE: usize = 4;

/// Rows ahead of the tile whose bytes are prefetched: a decode GEMV is a short stream (tens
/// of KB per thread), over before the hardware prefetcher has ramped up.
const PREFETCH_ROWS: usize = 8;

/// [`BlockCodes`] as the kernel reads them: per activation row its int8 planes in kernel
/// order (`[m, planes, k]`; two planes: high bytes, then low), the eight lane scales of
/// each load (`[m, loads, 8]`), and the per-group zero-point sum `Σ_{b∈g} sx[b] · Σq[b]`
/// spread over the eight lanes of an accumulator (`[m, groups]`, divided by 8: exact).
struct KernelActs {
    planes: usize,
    k: usize,
    codes: Vec<i8>,
    lane_scale: Vec<f32>,
    zlane: Vec<f32>,
}

fn kernel_acts(x: &BlockCodes, kind: ActCodes, w: &PackedLinear) -> KernelActs {
    assert_eq!(x.block, BLOCK, "activation block");
    let lc = load_cols(w.bits);
    let (k, nb, loads, planes) = (x.k, x.k / BLOCK, x.k / lc, kind.planes());
    let order: Vec<usize> = (0..lc).map(|p| kernel_column(w.bits, p)).collect();
    let mut codes = vec![0i8; x.m * planes * k];
    for (src, dst) in x
        .codes
        .chunks_exact(k)
        .zip(codes.chunks_exact_mut(planes * k))
    {
        let (first, second) = dst.split_at_mut(k);
        for ((s, a), b) in src.chunks_exact(lc).zip(first.chunks_exact_mut(lc)).zip(
            second
                .chunks_exact_mut(lc)
                .chain(std::iter::repeat_with(|| &mut [][..])),
        ) {
            if planes == 1 {
                for (d, &c) in a.iter_mut().zip(&order) {
                    *d = s[c] as i8;
                }
            } else {
                for ((hi, lo), &c) in a.iter_mut().zip(b.iter_mut()).zip(&order) {
                    // q = 256·hi + lo with lo the low byte read as signed.
                    let q = s[c];
                    *lo = q as i8;
                    *hi = ((i32::from(q) - i32::from(*lo)) >> 8) as i8;
                }
            }
        }
    }
    let mut lane_scale = vec![0.0f32; x.m * loads * 8];
    for r in 0..x.m {
        for l in 0..loads {
            for j in 0..8 {
                // The block of lane j's columns (4-bit: j < 4 the load's first 32 columns).
                let b = (l * lc + if lc == 64 { (j / 4) * 32 } else { 0 }) / BLOCK;
                lane_scale[(r * loads + l) * 8 + j] = x.scale[r * nb + b];
            }
        }
    }
    let ng = w.n_groups();
    let mut zlane = vec![0.0f32; x.m * ng];
    for r in 0..x.m {
        for b in 0..nb {
            let g = b * BLOCK / w.group_size;
            zlane[r * ng + g] += x.scale[r * nb + b] * x.code_sums[r * nb + b] as f32;
        }
    }
    zlane.iter_mut().for_each(|z| *z /= 8.0);
    KernelActs {
        planes,
        k,
        codes,
        lane_scale,
        zlane,
    }
}

/// Rows up to which the grouped GEMV beats dequantizing for the dense GEMM (4-bit SmolLM2,
/// `bench --prompt m` side by side on an idle 2-core machine: 16 rows 2.2×, 32 rows 1.24×,
/// 48 rows 0.82×); a short prompt, a speculative chain or a Medusa tree.
pub const VNNI_MAX_ROWS: usize = 4 * GEMV_MAX_ROWS;

/// `x · Wᵀ` for `x` `[m, k]` (`m ≤ VNNI_MAX_ROWS`; past `GEMV_MAX_ROWS` rows in groups) with
/// activations coded as `kind`; `None` when the CPU, the weight or `m` does not take this
/// path.
pub fn gemv_packed_vnni(x: &[f32], w: &PackedLinear, m: usize, kind: ActCodes) -> Option<Vec<f32>> {
    gemv_packed_vnni_many(x, &[w], m, kind).map(|mut ys| ys.remove(0))
}

/// `x · Wᵢᵀ` for several weights that read the same input (q/k/v, gate/up): the activations
/// are coded once and one loop on the thread team covers the rows of all of them, which
/// saves a decode step the fixed cost of the other calls. `None` when the CPU does not take
/// this path or the weights differ in width, bits or group size.
pub fn gemv_packed_vnni_many(
    x: &[f32],
    ws: &[&PackedLinear],
    m: usize,
    kind: ActCodes,
) -> Option<Vec<Vec<f32>>> {
    let w0 = ws.first()?;
    let alike = ws.iter().all(|w| {
        int_gemv_supported(w) && (w.bits, w.cols, w.group_size) == (w0.bits, w0.cols, w0.group_size)
    });
    if !(available() && alike && (1..=VNNI_MAX_ROWS).contains(&m)) {
        return None;
    }
    Some(gemv_vnni_many(
        &quantize_acts(x, m, w0.cols, kind),
        kind,
        ws,
    ))
}

/// The kernel over bands of output rows on the thread team. Panics without AVX-512 VNNI.
pub fn gemv_vnni(x: &BlockCodes, kind: ActCodes, w: &PackedLinear) -> Vec<f32> {
    gemv_vnni_many(x, kind, &[w]).remove(0)
}

/// Weight bytes of a band that stay in L2 while every group of activation rows passes over
/// them (a prompt: hundreds of rows in groups of `GEMV_MAX_ROWS`).
const SUBBLOCK_BYTES: usize = 128 * 1024;

/// [`gemv_vnni`] for several weights of the same width, bits and group size, in one loop.
/// Rows past `GEMV_MAX_ROWS` go through in groups of that many (a prompt, a Medusa tree):
/// each group is the kernel's multi-row tile, every row gets exactly the result it gets alone
/// (a decode step's arithmetic), and each band's weights are read from memory once, then from
/// L2 by every group.
pub fn gemv_vnni_many(x: &BlockCodes, kind: ActCodes, ws: &[&PackedLinear]) -> Vec<Vec<f32>> {
    assert!(available(), "the VNNI GEMV needs AVX-512 VNNI");
    let w0 = ws[0];
    let m = x.m;
    assert!(m >= 1, "GEMV with no rows");
    let views: Vec<WeightView> = ws
        .iter()
        .map(|w| {
            assert!(
                int_gemv_supported(w) && x.k == w.cols,
                "weight shape for the VNNI GEMV"
            );
            assert_eq!(
                (w.bits, w.group_size),
                (w0.bits, w0.group_size),
                "mixed weights"
            );
            let (wpr, ng) = (w.words_per_row(), w.n_groups());
            assert_eq!(w.packed.len(), w.rows * wpr, "weight_packed shape");
            assert_eq!(w.scale.len(), w.rows * ng, "weight_scale shape");
            if let Some(z) = &w.zero {
                assert_eq!(z.len(), w.rows * ng, "weight_zero_point shape");
            }
            WeightView {
                packed: &w.packed,
                scale: &w.scale,
                zero: w.zero.as_deref(),
                wpr,
                ng,
                offset: storage_offset(w.bits) as f32,
                loads_per_group: w.group_size / load_cols(w.bits),
            }
        })
        .collect();
    // (first row, rows, coded activations) of each group of at most GEMV_MAX_ROWS rows.
    let groups: Vec<(usize, usize, KernelActs)> = if m <= GEMV_MAX_ROWS {
        vec![(0, m, kernel_acts(x, kind, w0))]
    } else {
        (0..m)
            .step_by(GEMV_MAX_ROWS)
            .map(|r0| {
                let mg = GEMV_MAX_ROWS.min(m - r0);
                (r0, mg, kernel_acts(&x.rows(r0, mg), kind, w0))
            })
            .collect()
    };
    // Output rows of all weights one after another; a band may cross from one to the next.
    let starts: Vec<usize> = ws
        .iter()
        .scan(0, |acc, w| {
            let s = *acc;
            *acc += w.rows;
            Some(s)
        })
        .collect();
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let mut yt = vec![0.0f32; total * m];
    super::team::for_each_row_band_mut(&mut yt, m, |first, ys| {
        let end = first + ys.len() / m;
        let mut tmp = vec![];
        for ((view, w), &s) in views.iter().zip(ws).zip(&starts) {
            let (lo, hi) = (first.max(s), end.min(s + w.rows));
            if lo >= hi {
                continue;
            }
            if let [(_, _, acts)] = &groups[..] {
                let part = &mut ys[(lo - first) * m..(hi - first) * m];
                // SAFETY: `available()` holds; the view and `acts` have the shapes checked
                // above, and `part` holds `m` outputs for each of rows `lo - s..hi - s`.
                unsafe { vnni::band(w0.bits, view, lo - s, acts, m, part) };
                continue;
            }
            let sub = (SUBBLOCK_BYTES / (view.wpr * 4)).max(ROW_TILE);
            for a in (lo..hi).step_by(sub) {
                let b = (a + sub).min(hi);
                for (r0, mg, acts) in &groups {
                    tmp.resize((b - a) * mg, 0.0);
                    // SAFETY: as above, for `mg` rows of activations and rows `a..b`.
                    unsafe { vnni::band(w0.bits, view, a - s, acts, *mg, &mut tmp) };
                    for (row, t) in tmp.chunks_exact(*mg).enumerate() {
                        ys[(a - first + row) * m + r0..][..*mg].copy_from_slice(t);
                    }
                }
            }
        }
    });
    ws.iter()
        .zip(&starts)
        .map(|(w, &s)| {
            let part = yt[s * m..(s + w.rows) * m].to_vec();
            super::dense_f32::from_row_major_out(part, w.rows, m)
        })
        .collect()
}

/// A packed weight as the kernel reads it.
struct WeightView<'a> {
    packed: &'a [i32],
    scale: &'a [f32],
    zero: Option<&'a [i8]>,
    wpr: usize,
    ng: usize,
    offset: f32,
    loads_per_group: usize,
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{KernelActs, WeightView, PREFETCH_ROWS, ROW_TILE};

    /// Output rows `first..first + y.len() / m` for `m` activation rows: four-row tiles for
    /// a decode step, single rows otherwise.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI and FMA; `w` and `acts` consistent (as `gemv_vnni` checks), `m`
    /// in `1..=8`, the rows inside the weight.
    pub(super) unsafe fn band(
        bits: u8,
        w: &WeightView,
        first: usize,
        acts: &KernelActs,
        m: usize,
        y: &mut [f32],
    ) {
        macro_rules! by_m {
            ($bits:literal, $p:literal) => {
                match m {
                    1 => band_kernel::<$bits, $p, 1>(w, first, acts, y),
                    2 => band_kernel::<$bits, $p, 2>(w, first, acts, y),
                    3 => band_kernel::<$bits, $p, 3>(w, first, acts, y),
                    4 => band_kernel::<$bits, $p, 4>(w, first, acts, y),
                    5 => band_kernel::<$bits, $p, 5>(w, first, acts, y),
                    6 => band_kernel::<$bits, $p, 6>(w, first, acts, y),
                    7 => band_kernel::<$bits, $p, 7>(w, first, acts, y),
                    8 => band_kernel::<$bits, $p, 8>(w, first, acts, y),
                    m => unreachable!("GEMV with {m} rows"),
                }
            };
        }
        unsafe {
            match (bits, acts.planes) {
                (4, 1) => by_m!(4, 1),
                (4, _) => by_m!(4, 2),
                (_, 1) => by_m!(8, 1),
                _ => by_m!(8, 2),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn band_kernel<const BITS: u32, const P: usize, const M: usize>(
        w: &WeightView,
        first: usize,
        acts: &KernelActs,
        y: &mut [f32],
    ) {
        let rows = y.len() / M;
        let mut i = 0;
        if M == 1 {
            while i + ROW_TILE <= rows {
                unsafe {
                    tile::<BITS, P, ROW_TILE, 1>(w, first + i, first + rows, acts, &mut y[i..])
                };
                i += ROW_TILE;
            }
        }
        while i < rows {
            unsafe { tile::<BITS, P, 1, M>(w, first + i, first + rows, acts, &mut y[i * M..]) };
            i += 1;
        }
    }

    /// `y[j·M + r] = Σ_g s_j[g] · (Σ_{load∈g} Σ_lanes ls[r] · Σ u_j·q_r − z_j[g] · zsum[r][g])`
    /// for the `R` weight rows from `o` and `M` activation rows. Per 32-byte load the weight bytes
    /// are `vpdpbusd`'s unsigned operand as they are (8-bit) or as their low and high
    /// nibbles (4-bit); with two planes the high plane's sum is shifted left by 8 and the
    /// low plane's added, which is `Σ u·q` exactly in i32. Each lane then is converted and
    /// scaled by its block's scale once. The zero-point term is subtracted from the group's
    /// accumulator, an eighth in each lane, before the group scale multiplies it.
    ///
    /// # Safety
    /// As `band`; `o + R <= end <= rows of the weight`, `y.len() >= R·M`.
    // The loops index [row][activation row] arrays by both indices at once.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const BITS: u32, const P: usize, const R: usize, const M: usize>(
        w: &WeightView,
        o: usize,
        end: usize,
        acts: &KernelActs,
        y: &mut [f32],
    ) {
        let lc = if BITS == 4 { 64 } else { 32 };
        let (k, loads) = (acts.k, acts.k / lc);
        debug_assert!(acts.codes.len() >= M * P * k && y.len() >= R * M && o + R <= end);
        let base = w.packed.as_ptr() as *const u8;
        let row_bytes = w.wpr * 4;
        let bp: [*const u8; R] = std::array::from_fn(|j| unsafe { base.add((o + j) * row_bytes) });
        // Prefetch the rows PREFETCH_ROWS ahead (inside this band), a line at a time.
        let ahead = (o + PREFETCH_ROWS).min(end);
        let ahead_end = (o + PREFETCH_ROWS + R).min(end);
        let pf = base.wrapping_add(ahead * row_bytes);
        let pf_len = (ahead_end - ahead) * row_bytes;
        let xp = acts.codes.as_ptr();
        let lsp = acts.lane_scale.as_ptr();
        let low = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let mut total = [[_mm256_setzero_ps(); M]; R];
        let mut l = 0;
        for g in 0..w.ng {
            let mut gacc = [[_mm256_setzero_ps(); M]; R];
            for _ in 0..w.loads_per_group {
                let off = l * 32 * R;
                if off < pf_len {
                    for c in (0..32 * R).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(off + c) as *const i8);
                    }
                }
                // SAFETY: load l's 32 bytes lie inside each row (l < loads).
                let wv: [[__m256i; 2]; R] = std::array::from_fn(|j| {
                    let v = unsafe { _mm256_loadu_si256(bp[j].add(l * 32) as *const __m256i) };
                    if BITS == 4 {
                        [
                            _mm256_and_si256(v, low),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
                        ]
                    } else {
                        [v, v]
                    }
                });
                for r in 0..M {
                    // SAFETY: plane p of row r holds k codes from (r·P + p)·k; lane scales
                    // (r·loads + l)·8 .. + 8.
                    let (x, ls) = unsafe {
                        let x: [[__m256i; 2]; P] = std::array::from_fn(|p| {
                            let q = xp.add((r * P + p) * k + l * lc) as *const __m256i;
                            let x0 = _mm256_loadu_si256(q);
                            [
                                x0,
                                if BITS == 4 {
                                    _mm256_loadu_si256(q.add(1))
                                } else {
                                    x0
                                },
                            ]
                        });
                        (x, _mm256_loadu_ps(lsp.add((r * loads + l) * 8)))
                    };
                    for j in 0..R {
                        let dot = |x: &[__m256i; 2]| {
                            let a = _mm256_dpbusd_epi32(zero, wv[j][0], x[0]);
                            if BITS == 4 {
                                _mm256_dpbusd_epi32(a, wv[j][1], x[1])
                            } else {
                                a
                            }
                        };
                        let a = if P == 1 {
                            dot(&x[0])
                        } else {
                            _mm256_add_epi32(_mm256_slli_epi32(dot(&x[0]), 8), dot(&x[P - 1]))
                        };
                        gacc[j][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), ls, gacc[j][r]);
                    }
                }
                l += 1;
            }
            let zl: [__m256; M] = std::array::from_fn(|r| _mm256_set1_ps(acts.zlane[r * w.ng + g]));
            for j in 0..R {
                let s = _mm256_set1_ps(w.scale[(o + j) * w.ng + g]);
                let z = w.offset + w.zero.map_or(0.0, |z| f32::from(z[(o + j) * w.ng + g]));
                let z = _mm256_set1_ps(z);
                for r in 0..M {
                    let acc = _mm256_fnmadd_ps(z, zl[r], gacc[j][r]);
                    total[j][r] = _mm256_fmadd_ps(acc, s, total[j][r]);
                }
            }
        }
        debug_assert_eq!(l, loads);
        for j in 0..R {
            for r in 0..M {
                let t = total[j][r];
                let s = _mm_add_ps(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                y[j * M + r] = _mm_cvtss_f32(s);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vnni {
    use super::{KernelActs, WeightView};
    pub(super) unsafe fn band(
        _: u8,
        _: &WeightView,
        _: usize,
        _: &KernelActs,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("VNNI GEMV without AVX-512")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::block_codes::tests::{activations, assert_matches_definition};
    use crate::kernels::packed_q::tests::weight;

    /// The kernel's f32 sums against the f64 definition of the same scheme, relative to
    /// `Σ_c |x̂_c · w_c|` (the float error of a dot product scales with that sum).
    const VNNI_KERNEL_REL_TOL: f64 = 2e-6;

    const KINDS: [ActCodes; 2] = [ActCodes::Int8, ActCodes::Int16];

    #[test]
    fn codes_use_absmax_over_the_code_range_per_block() {
        let mut x = vec![0.0f32; 64];
        (x[0], x[1], x[2], x[40], x[41]) = (0.5, -1.0, 0.25, 2.0, -0.01);
        let a = quantize_acts(&x, 1, 64, ActCodes::Int8);
        assert_eq!(a.scale, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(&a.codes[..3], &[64, -127, 32]);
        assert_eq!((a.codes[40], a.codes[41]), (127, -1));
        assert_eq!(a.code_sums, vec![64 - 127 + 32, 126]);
        let a = quantize_acts(&x, 1, 64, ActCodes::Int16);
        assert_eq!(a.scale[1], 2.0 / 32639.0);
        assert_eq!((a.codes[0], a.codes[1], a.codes[41]), (16320, -32639, -163));
        let z = quantize_acts(&[0.0; 32], 1, 32, ActCodes::Int16);
        assert_eq!((z.scale[0], z.code_sums[0]), (0.0, 0));
    }

    #[test]
    fn int16_codes_split_into_two_int8_planes_exactly() {
        for q in -32639i32..=32639 {
            let lo = q as i16 as i8;
            let hi = (q - i32::from(lo)) >> 8;
            assert!((-128..=127).contains(&hi), "{q}");
            assert_eq!(256 * hi + i32::from(lo), q);
        }
    }

    #[test]
    fn kernel_order_is_a_permutation_and_lanes_stay_in_one_block() {
        for bits in [4u8, 8] {
            let lc = load_cols(bits);
            let cols: Vec<usize> = (0..lc).map(|p| kernel_column(bits, p)).collect();
            let mut seen = cols.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..lc).collect::<Vec<_>>(), "{bits}-bit");
            // Lane j of each vpdpbusd: positions 4j..4j+4 (and 32+4j.. for the high nibbles).
            for j in 0..8 {
                let block = cols[4 * j] / BLOCK;
                let high = (lc > 32).then_some(32 + 4 * j..36 + 4 * j);
                for p in (4 * j..4 * j + 4).chain(high.into_iter().flatten()) {
                    assert_eq!(cols[p] / BLOCK, block, "{bits}-bit lane {j}");
                }
            }
        }
    }

    #[test]
    fn kernel_matches_the_definition() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for kind in KINDS {
            for bits in [4u8, 8] {
                let lc = load_cols(bits);
                for symmetric in [true, false] {
                    for (cols, group) in
                        [(2 * lc, lc), (6 * lc, 2 * lc), (5 * lc, 5 * lc), (576, 64)]
                    {
                        if !group.is_multiple_of(lc) || !cols.is_multiple_of(lc) {
                            continue;
                        }
                        // 45 rows: four-row tiles, a remainder, bands on every thread.
                        let w = weight(bits, 45, cols, group, symmetric);
                        assert!(int_gemv_supported(&w));
                        for m in [1, 2, 3, 8, 13] {
                            let x = activations(m, cols, m + cols);
                            let a = quantize_acts(&x, m, cols, kind);
                            let what = format!(
                                "{kind:?} bits {bits} sym {symmetric} cols {cols} group {group} m {m}"
                            );
                            let got = gemv_vnni(&a, kind, &w);
                            assert_matches_definition(&got, &a, &w, VNNI_KERNEL_REL_TOL, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rows_of_a_batch_match_the_same_rows_alone() {
        // Speculative verification multiplies several rows at once; each must equal its own
        // decode step bit for bit, or greedy output could differ from plain decoding.
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        // 19 rows: two groups of GEMV_MAX_ROWS and a group of 3 (a prompt); and a weight tall
        // enough (1200 rows of 256 bytes at 8 bits) that bands split into L2 sub-blocks.
        for kind in KINDS {
            for bits in [4u8, 8] {
                for (m, rows) in [(5, 37), (19, 37), (19, 1200)] {
                    let w = weight(bits, rows, 256, 64, false);
                    let x = activations(m, 256, 3);
                    let batch = gemv_packed_vnni(&x, &w, m, kind).unwrap();
                    for r in 0..m {
                        let one =
                            gemv_packed_vnni(&x[r * 256..(r + 1) * 256], &w, 1, kind).unwrap();
                        assert_eq!(
                            &batch[r * rows..(r + 1) * rows],
                            &one[..],
                            "{kind:?} {bits}-bit m {m} rows {rows}: row {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weights_in_one_call_match_each_alone() {
        // q/k/v in one loop: bands cross from one weight to the next and tiles start at
        // other rows, which must not change a single output.
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for bits in [4u8, 8] {
            let ws = [
                weight(bits, 37, 256, 64, false),
                weight(bits, 6, 256, 64, true),
                weight(bits, 21, 256, 64, false),
            ];
            let refs: Vec<&PackedLinear> = ws.iter().collect();
            for m in [1, 3, 11] {
                let x = activations(m, 256, 11);
                let many = gemv_packed_vnni_many(&x, &refs, m, ActCodes::Int16).unwrap();
                for (w, got) in ws.iter().zip(&many) {
                    let alone = gemv_packed_vnni(&x, w, m, ActCodes::Int16).unwrap();
                    assert_eq!(got, &alone, "{bits}-bit m {m}");
                }
            }
        }
        let (a, b) = (weight(4, 8, 256, 64, true), weight(4, 8, 256, 128, true));
        assert!(gemv_packed_vnni_many(&[0.0; 256], &[&a, &b], 1, ActCodes::Int16).is_none());
    }

    #[test]
    fn weights_it_cannot_take_are_declined() {
        // 3 bits: no kernel column order for it.
        let three = gemv_packed_vnni(
            &[0.0; 64 * 9],
            &weight(3, 3, 64, 64, true),
            9,
            ActCodes::Int8,
        );
        assert!(three.is_none());
        let many_rows = VNNI_MAX_ROWS + 1;
        let tall = gemv_packed_vnni(
            &vec![0.0; 64 * many_rows],
            &weight(4, 3, 64, 64, true),
            many_rows,
            ActCodes::Int16,
        );
        assert!(tall.is_none());
    }
}
