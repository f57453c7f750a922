//! Few-row f32 products `y = x · Wᵀ` on AVX2 + FMA: a decode step (one row), a speculative
//! chain or a Medusa tree (a few to a few dozen rows). Tiles of 4 weight rows × 3 activation
//! rows keep 12 independent FMA chains in registers and load 7 vectors per 12 FMAs (× 2: 6
//! per 8); the pairwise dot products they replaced loaded 3 per 2, which left a verification
//! row costing as much as a tenth of a decode step in loads alone.
//!
//! Every output is one FMA chain over the 8-lane chunks of its dot product, then the same
//! horizontal sum, then the scalar tail, in whichever tile it falls: a row's results are the
//! same bits whether it is decoded alone or verified among others, so speculative decoding
//! reproduces plain greedy decoding exactly.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::panel_f32::{PanelF32, TileLayout, PANEL_ROWS};

/// Weight rows per tile: a panel block.
const TILE_W: usize = PANEL_ROWS;
/// Activation rows per tile, at most (then 2, then 1 for the rest): 12 accumulators, 3
/// activations and a weight vector fill the 16 registers.
const TILE_X: usize = 3;

/// Whether this CPU runs the kernel (AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The scalar definition of one output, in the kernel's order: lane `l` of an 8-lane
/// accumulator sums `a[8c + l] · b[8c + l]` over chunks `c` (fused multiply-adds), the
/// lanes are added as the kernel's horizontal sum adds them, then the tail in order.
pub fn dot_ref(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let chunks = a.len() / 8;
    let mut acc = [0.0f32; 8];
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] = a[c * 8 + l].mul_add(b[c * 8 + l], acc[l]);
        }
    }
    // hi + lo halves, then (0+2, 1+3), then 0 + 1: `hsum`'s order.
    let s4: [f32; 4] = std::array::from_fn(|l| acc[l + 4] + acc[l]);
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    let mut total = s2[0] + s2[1];
    for i in chunks * 8..a.len() {
        total += a[i] * b[i];
    }
    total
}

/// `yt[o * m + r] = Σ_i x[r][i] · w[o][i]` for the `rows` weight rows of `w` (`[rows, k]`)
/// and the `m` rows of `x` (`[m, k]`): one thread's band of a GEMV, output-row major.
pub fn gemv_band(x: &[f32], m: usize, k: usize, w: &[f32], yt: &mut [f32]) {
    assert_eq!(x.len(), m * k, "activation shape");
    assert_eq!(w.len() % k.max(1), 0, "weight band shape");
    let rows = w.len().checked_div(k).unwrap_or(0);
    assert_eq!(yt.len(), rows * m, "output band shape");
    assert!(available(), "gemv_f32_avx2 needs AVX2 and FMA");
    let tiles = |o: usize| (TileLayout::row_major(o, k), TILE_W.min(rows - o));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted); shapes are checked above, and every
    // row-major tile lies inside `w`.
    unsafe {
        band(x, m, k, w, rows, &tiles, yt)
    }
}

/// [`gemv_band`] for rows `first..first + yt.len() / m` of a panel matrix `w`; `first` must
/// begin a panel block (or lie past the full blocks), as thread bands of
/// [`PANEL_ROWS`]-multiples do.
pub fn gemv_panel_band(x: &[f32], m: usize, w: &PanelF32, first: usize, yt: &mut [f32]) {
    let (n, k) = w.dims();
    assert_eq!(x.len(), m * k, "activation shape");
    assert_eq!(yt.len() % m.max(1), 0, "output band shape");
    let rows = yt.len().checked_div(m).unwrap_or(0);
    assert!(first + rows <= n, "band outside the matrix");
    assert!(
        first.is_multiple_of(PANEL_ROWS) || first >= w.full_block_rows(),
        "band starts inside a panel block"
    );
    assert!(available(), "gemv_f32_avx2 needs AVX2 and FMA");
    let full = w.full_block_rows();
    let tiles = |o: usize| {
        let row = first + o;
        let count = if row < full && o + PANEL_ROWS <= rows {
            PANEL_ROWS
        } else {
            1
        };
        (w.tile_layout(row), count)
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted); the panel layout's tiles lie inside its
    // storage.
    unsafe {
        band(x, m, k, w.data(), rows, &tiles, yt)
    }
}

/// The band's tiles in order: `tiles(o)` says where the tile of band rows from `o` sits and
/// how many rows (`TILE_W`, or fewer) it holds.
///
/// # Safety
/// AVX2 + FMA; every tile `tiles` describes lies inside `w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn band(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    rows: usize,
    tiles: &dyn Fn(usize) -> (TileLayout, usize),
    yt: &mut [f32],
) {
    // No software prefetch: the weight band streams in order, and prefetching 8–32 rows
    // ahead measured 2–7% slower than the hardware prefetcher alone.
    let mut o = 0;
    while o < rows {
        let (t, nw) = tiles(o);
        let nw = nw.min(rows - o);
        let mut r = 0;
        while r < m {
            let nx = TILE_X.min(m - r);
            // SAFETY: rows r..r + nx of x exist (loop bounds); the caller vouches for the
            // tile and its rows single tiles cover.
            unsafe {
                match (nw, nx) {
                    (4, 3) => tile::<4, 3>(x, r, k, w, t, o, m, yt),
                    (4, 2) => tile::<4, 2>(x, r, k, w, t, o, m, yt),
                    (4, _) => tile::<4, 1>(x, r, k, w, t, o, m, yt),
                    (_, 3) => {
                        for j in 0..nw {
                            tile::<1, 3>(x, r, k, w, tiles(o + j).0, o + j, m, yt)
                        }
                    }
                    (_, 2) => {
                        for j in 0..nw {
                            tile::<1, 2>(x, r, k, w, tiles(o + j).0, o + j, m, yt)
                        }
                    }
                    _ => {
                        for j in 0..nw {
                            tile::<1, 1>(x, r, k, w, tiles(o + j).0, o + j, m, yt)
                        }
                    }
                }
            }
            r += nx;
        }
        o += nw;
    }
}

/// Outputs `(o + a, r + b)` for `a < R`, `b < C`, the weight rows where `t` puts them.
///
/// # Safety
/// AVX2 + FMA; `t` addresses `R` rows of `k` values inside `w`; `x` holds rows `r..r + C` of
/// length `k`; `yt` is `[.., m]` with rows `o..o + R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const C: usize>(
    x: &[f32],
    r: usize,
    k: usize,
    w: &[f32],
    t: TileLayout,
    o: usize,
    m: usize,
    yt: &mut [f32],
) {
    let base = w.as_ptr();
    // SAFETY: the tile's rows start inside `w` (caller).
    let wp: [*const f32; R] =
        std::array::from_fn(|a| unsafe { base.add(t.start + a * t.row_stride) });
    let xp: [*const f32; C] = std::array::from_fn(|b| x[(r + b) * k..].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let chunks = k / 8;
    for c in 0..chunks {
        // SAFETY: chunk c of every tile row lies inside `w` (caller), and 8c + 8 <= k for
        // every activation row.
        unsafe {
            let xv: [__m256; C] = std::array::from_fn(|b| _mm256_loadu_ps(xp[b].add(c * 8)));
            for a in 0..R {
                let wv = _mm256_loadu_ps(wp[a].add(c * t.chunk_stride));
                for b in 0..C {
                    acc[a][b] = _mm256_fmadd_ps(wv, xv[b], acc[a][b]);
                }
            }
        }
    }
    for a in 0..R {
        let tail = &w[t.tail + a * t.tail_stride..][..k - chunks * 8];
        for b in 0..C {
            let mut total = hsum(acc[a][b]);
            for (i, wv) in tail.iter().enumerate() {
                total += wv * x[(r + b) * k + chunks * 8 + i];
            }
            yt[(o + a) * m + r + b] = total;
        }
    }
}

/// Lanes 4..8 onto 0..4, then (0 + 2, 1 + 3), then 0 + 1 (what [`dot_ref`] spells out).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2654435761).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_tile_shape_gives_the_definitions_bits() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA here");
            return;
        }
        // Weight-row and activation-row counts around the tile sizes, k with and without a
        // tail.
        for &(rows, m, k) in &[
            (1, 1, 8),
            (3, 1, 576),
            (4, 2, 576),
            (5, 3, 17),
            (7, 8, 64),
            (9, 16, 200),
            (6, 33, 576),
            (2, 5, 3),
        ] {
            let (x, w) = (data(m * k, 1), data(rows * k, 2));
            let mut yt = vec![0.0f32; rows * m];
            gemv_band(&x, m, k, &w, &mut yt);
            assert_definition_bits(&x, m, k, &w, &yt, &format!("rows {rows} m {m} k {k}"));
        }
    }

    /// `yt` (`[rows, m]`) holds, bit for bit, `dot_ref` of every activation row of `x` with
    /// every weight row of `w` (row-major `[rows, k]`).
    fn assert_definition_bits(x: &[f32], m: usize, k: usize, w: &[f32], yt: &[f32], what: &str) {
        for (o, wrow) in w.chunks_exact(k).enumerate() {
            for r in 0..m {
                let want = dot_ref(&x[r * k..][..k], wrow);
                assert_eq!(
                    yt[o * m + r].to_bits(),
                    want.to_bits(),
                    "{what}: output ({o}, {r})"
                );
            }
        }
    }

    /// The panel layout's tiles (whole blocks, the rows after them, tails) give the
    /// definition's bits too, for bands starting at any block.
    #[test]
    fn panel_bands_give_the_definitions_bits() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA here");
            return;
        }
        for &(n, m, k) in &[(4, 1, 8), (7, 2, 576), (13, 3, 17), (9, 5, 3), (16, 2, 64)] {
            let (x, w) = (data(m * k, 5), data(n * k, 6));
            let p = PanelF32::from_row_major(&w, n, k);
            for first in (0..n).step_by(PANEL_ROWS) {
                let rows = n - first;
                let mut yt = vec![0.0f32; rows * m];
                gemv_panel_band(&x, m, &p, first, &mut yt);
                let what = format!("n {n} m {m} k {k} band from {first}");
                assert_definition_bits(&x, m, k, &w[first * k..], &yt, &what);
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_and_among_others() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA here");
            return;
        }
        let (rows, k) = (11, 576);
        let w = data(rows * k, 3);
        let x = data(13 * k, 4);
        let mut all = vec![0.0f32; rows * 13];
        gemv_band(&x, 13, k, &w, &mut all);
        for r in 0..13 {
            let mut one = vec![0.0f32; rows];
            gemv_band(&x[r * k..][..k], 1, k, &w, &mut one);
            for o in 0..rows {
                assert_eq!(
                    one[o].to_bits(),
                    all[o * 13 + r].to_bits(),
                    "row {r} out {o}"
                );
            }
        }
    }
}
