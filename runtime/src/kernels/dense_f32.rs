//! `y = x · Wᵀ` for f32 weights, stored `[out, in]` (the checkpoint layout, for offline
//! products) or as row panels (`panel_f32`, how the model holds them).
//! Few rows (decode, speculative verification): each thread streams a band of weight rows and
//! dots every activation row with it while the weight row is in cache (AVX2: the tiles of
//! `gemv_f32_avx2`). Many rows (prefill):
//! the `gemm` crate's blocked kernel, parallel over both cores.

use rayon::prelude::*;

use super::panel_f32::{PanelF32, PANEL_ROWS};
use super::simd::{dot2_f32, dot_f32};
use super::team::SendPtr;

/// Up to this many activation rows, the streaming GEMV kernels beat blocked GEMM (the weight
/// is read once either way; below this, GEMM's packing costs more than it saves); the
/// packed and 1-bit kernels group rows by it.
pub const GEMV_MAX_ROWS: usize = 8;

/// The same bound for f32 weights with the AVX2 tile kernel: SmolLM2's whole pass over
/// 12/16/24/32 rows took 41/48/63/79 ms against 52/66/74/89 ms through GEMM (`bench
/// --prompt m`, 2 threads, Zen 3), and a speculative chain or Medusa tree of up to 32 rows
/// stays bit-identical to decoding its rows one by one.
pub const DENSE_GEMV_MAX_ROWS: usize = 32;

/// Weight rows ahead of the one being multiplied whose bytes are prefetched.
const PREFETCH_ROWS: usize = 2;

/// A GEMV's output kept `[n, m]` while computing (each thread's band of output rows is
/// contiguous) as the `[m, n]` result; `m` is tiny, so the transpose costs nothing.
pub(crate) fn from_row_major_out(yt: Vec<f32>, n: usize, m: usize) -> Vec<f32> {
    if m == 1 {
        return yt;
    }
    let mut y = vec![0.0f32; m * n];
    for o in 0..n {
        for r in 0..m {
            y[r * n + o] = yt[o * m + r];
        }
    }
    y
}

/// Plain definition: `y[m][o] = Σ_i x[m][i] · w[o][i]`, accumulated in f64.
pub fn matmul_f32_nt_ref(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    let mut y = vec![0.0f32; m * n];
    for r in 0..m {
        for o in 0..n {
            let mut s = 0.0f64;
            for i in 0..k {
                s += x[r * k + i] as f64 * w[o * k + i] as f64;
            }
            y[r * n + o] = s as f32;
        }
    }
    y
}

/// `x` is `[m, k]`, `w` is `[n, k]`; returns `[m, n]`.
pub fn matmul_f32_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "activation shape");
    assert_eq!(w.len(), n * k, "weight shape");
    if m <= gemv_max_rows() {
        gemv_rows(x, w, m, k, n)
    } else {
        gemm_nt(x, w, m, k, n)
    }
}

/// Most activation rows the f32 GEMV takes before GEMM does, for either weight layout.
fn gemv_max_rows() -> usize {
    if super::gemv_f32_avx2::available() {
        DENSE_GEMV_MAX_ROWS
    } else {
        GEMV_MAX_ROWS
    }
}

/// [`matmul_f32_nt`] through the blocked GEMM whatever the row count: for offline products
/// (the quantization pipeline's layers on calibration windows), where a burn device's matmul
/// runs the same kind of blocked sums and the host and device pipelines are compared code
/// for code.
pub fn matmul_f32_nt_blocked(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "activation shape");
    assert_eq!(w.len(), n * k, "weight shape");
    gemm_nt(x, w, m, k, n)
}

fn gemv_rows(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    // Output stored [n, m] while computing (each band writes contiguous memory), then
    // transposed: m is tiny so that costs nothing.
    let mut yt = vec![0.0f32; n * m];
    if super::gemv_f32_avx2::available() {
        super::team::for_each_row_band_mut(&mut yt, m, |first, ys| {
            let rows = ys.len() / m;
            super::gemv_f32_avx2::gemv_band(x, m, k, &w[first * k..(first + rows) * k], ys);
        });
        return from_row_major_out(yt, n, m);
    }
    super::team::for_each_row_band_mut(&mut yt, m, |first, ys| {
        let rows = ys.len() / m;
        gemv_band_portable(x, m, k, &w[first * k..(first + rows) * k], ys);
    });
    from_row_major_out(yt, n, m)
}

/// One thread's band of [`gemv_rows`] without the AVX2 tile kernel: `ys` `[rows, m]` for the
/// weight rows `ws` `[rows, k]`.
fn gemv_band_portable(x: &[f32], m: usize, k: usize, ws: &[f32], ys: &mut [f32]) {
    for (i, (yrow, wrow)) in ys.chunks_exact_mut(m).zip(ws.chunks_exact(k)).enumerate() {
        if let Some(ahead) = ws.get((i + PREFETCH_ROWS) * k..(i + PREFETCH_ROWS + 1) * k) {
            super::simd::prefetch(ahead);
        }
        // Rows in pairs share each weight load (same sums as one row at a time).
        let mut r = 0;
        while r + 2 <= m {
            let [a, b] = dot2_f32(wrow, &x[r * k..(r + 1) * k], &x[(r + 1) * k..(r + 2) * k]);
            yrow[r] = a;
            yrow[r + 1] = b;
            r += 2;
        }
        if r < m {
            yrow[r] = dot_f32(&x[r * k..(r + 1) * k], wrow);
        }
    }
}

fn gemm_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    gemm_nt_bands(x, m, k, n, &DenseRows { w, k })
}

/// `x · Wᵀ` for `x` `[m, k]` and a panel-layout `W` `[n, k]`; returns `[m, n]`. Few rows:
/// the tile kernel reads each thread's band of panel blocks as one stream, with the same
/// sums, bit for bit, as [`matmul_f32_nt`] on the row-major matrix. Many rows: GEMM over
/// bands unpacked to row-major scratch.
pub fn matmul_panel_nt(x: &[f32], w: &PanelF32, m: usize) -> Vec<f32> {
    let (n, k) = w.dims();
    assert_eq!(x.len(), m * k, "activation shape");
    if m > gemv_max_rows() {
        return gemm_nt_bands(x, m, k, n, &PanelRows(w));
    }
    if !super::gemv_f32_avx2::available() {
        return gemv_panel_fallback(x, w, m);
    }
    let mut yt = vec![0.0f32; n * m];
    super::team::for_each_row_band_mut_aligned(&mut yt, m, PANEL_ROWS, |first, ys| {
        super::gemv_f32_avx2::gemv_panel_band(x, m, w, first, ys);
    });
    from_row_major_out(yt, n, m)
}

/// [`matmul_panel_nt`]'s few-row path where the tile kernel does not run: each band's rows
/// unpacked, then the row-major GEMV.
fn gemv_panel_fallback(x: &[f32], w: &PanelF32, m: usize) -> Vec<f32> {
    let (n, k) = w.dims();
    let mut yt = vec![0.0f32; n * m];
    super::team::for_each_row_band_mut_aligned(&mut yt, m, PANEL_ROWS, |first, ys| {
        let rows = ys.len() / m;
        let mut band = vec![0.0f32; rows * k];
        w.rows_into(first, rows, &mut band);
        gemv_band_portable(x, m, k, &band, ys);
    });
    from_row_major_out(yt, n, m)
}

/// A panel matrix's rows for the GEMM, unpacked one band at a time into the thread's scratch.
struct PanelRows<'a>(&'a PanelF32);

impl WeightBands for PanelRows<'_> {
    fn band<'s>(&'s self, o0: usize, rows: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let k = self.0.dims().1;
        scratch.resize(rows * k, 0.0);
        self.0.rows_into(o0, rows, &mut scratch[..rows * k]);
        &scratch[..rows * k]
    }
}

/// Weight rows of a prompt-sized GEMM, one band at a time: borrowed from dense weights, or
/// written into the calling thread's `scratch` (the packed path dequantizes there).
pub(crate) trait WeightBands: Sync {
    /// Most rows one band may hold: a written band is bounded so that the scratch stays
    /// `PACKED_BAND_FLOATS` (in L3); borrowed rows need no bound.
    fn max_band_rows(&self, k: usize) -> usize {
        (super::packed_q::PACKED_BAND_FLOATS / k.max(1)).max(16)
    }

    /// Rows `o0..o0 + rows`, `[rows, k]` row-major.
    fn band<'s>(&'s self, o0: usize, rows: usize, scratch: &'s mut Vec<f32>) -> &'s [f32];
}

struct DenseRows<'a> {
    w: &'a [f32],
    k: usize,
}

impl WeightBands for DenseRows<'_> {
    fn max_band_rows(&self, _: usize) -> usize {
        usize::MAX
    }

    fn band<'s>(&'s self, o0: usize, rows: usize, _: &'s mut Vec<f32>) -> &'s [f32] {
        &self.w[o0 * self.k..(o0 + rows) * self.k]
    }
}

/// `x · Wᵀ` (`x` `[m, k]`, `W` `[n, k]`) with the output columns split into one contiguous
/// band per thread, each run by a single-threaded GEMM on the rows `weights` gives. gemm's
/// own threading split these prompt-sized products (n and k of a few hundred) so that a
/// second core added about a third; bands with no synchronization inside keep both cores
/// busy.
pub(crate) fn gemm_nt_bands(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    weights: &dyn WeightBands,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "activation shape");
    let mut y = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    let threads = rayon::current_num_threads().clamp(1, n);
    // Bands of whole 16-column blocks (gemm's register tile).
    let per_thread = n.div_ceil(threads).div_ceil(16) * 16;
    let max_rows = weights.max_band_rows(k);
    let dst = SendPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (lo, hi) = (t * per_thread, ((t + 1) * per_thread).min(n));
        let mut scratch = Vec::new();
        let mut o0 = lo;
        while o0 < hi {
            let rows = max_rows.min(hi - o0);
            let w = weights.band(o0, rows, &mut scratch);
            assert_eq!(w.len(), rows * k, "weight band shape");
            let dst = &dst;
            // SAFETY: `dst` is `y` ([m, n] row-major, alive until the scope ends); this call
            // writes columns o0..o0 + rows of every row, which no other band touches. x is
            // [m, k] row-major and w is [rows, k] row-major, read as Wᵀ (col stride k).
            unsafe {
                gemm_serial(
                    (m, rows, k),
                    (dst.0.add(o0), n),
                    (x.as_ptr(), k),
                    (w.as_ptr(), 1, k),
                )
            };
            o0 += rows;
        }
    };
    let bands = n.div_ceil(per_thread);
    if bands == 1 {
        run(0);
    } else {
        (0..bands).into_par_iter().for_each(run);
    }
    y
}

/// `dst = lhs · rhs` on the calling thread with gemm's kernels, for the products that are
/// already split across threads by their caller (column bands, attention heads). Shapes
/// `(m, n, k)`; `dst` `[m, n]` and `lhs` `[m, k]` are row-major with the given row strides;
/// `rhs` `[k, n]` has element `(i, j)` at `i · row_stride + j · col_stride`, so a row-major
/// `[n, k]` matrix read as its transpose is `(ptr, 1, k)`.
///
/// # Safety
/// Every element those strides address must lie inside its allocation, and no other thread
/// may touch the part of `dst` written.
pub(crate) unsafe fn gemm_serial(
    (m, n, k): (usize, usize, usize),
    (dst, dst_row_stride): (*mut f32, usize),
    (lhs, lhs_row_stride): (*const f32, usize),
    (rhs, rhs_row_stride, rhs_col_stride): (*const f32, usize, usize),
) {
    // SAFETY: forwarded to the caller; the column strides of dst and lhs are 1.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            false,
            lhs,
            1,
            lhs_row_stride as isize,
            rhs,
            rhs_col_stride as isize,
            rhs_row_stride as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Plain definition of [`gram_acc_f32`]: `acc[i][j] += Σ_t x[t][i] · x[t][j]`, in f64.
pub fn gram_acc_ref(x: &[f32], t: usize, n: usize, acc: &mut [f64]) {
    assert_eq!(x.len(), t * n, "activation shape");
    assert_eq!(acc.len(), n * n, "accumulator shape");
    for row in x.chunks_exact(n) {
        for i in 0..n {
            for j in 0..n {
                acc[i * n + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
}

/// `acc += xᵀ·x` for `x` `[t, n]` row-major and `acc` `[n, n]`: the Gram matrix of a batch of
/// activations, which is what a GPTQ Hessian accumulates per calibration window. Blocked and
/// parallel (gemm crate), f32 products and sums.
pub fn gram_acc_f32(x: &[f32], t: usize, n: usize, acc: &mut [f32]) {
    assert_eq!(x.len(), t * n, "activation shape");
    assert_eq!(acc.len(), n * n, "accumulator shape");
    if t == 0 {
        return;
    }
    let par = if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst is [n, n] row-major (col stride 1, row stride n). lhs is xᵀ, [n, t]:
    // element (i, s) at x[s*n + i] (col stride n, row stride 1). rhs is x, [t, n]: element
    // (s, j) at x[s*n + j] (col stride 1, row stride n). Sizes are asserted above.
    unsafe {
        gemm::gemm(
            n,
            n,
            t,
            acc.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            n as isize,
            1,
            x.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Column block of [`gram_lower_acc_f32`]: 192 columns of a 512-token window are 384 KiB,
/// so a block pair's operands stay in L2.
const GRAM_BLOCK: usize = 192;

/// Like [`gram_acc_f32`], but computes only the blocks on or below the diagonal (in
/// [`GRAM_BLOCK`]-column blocks; entries above the diagonal inside diagonal blocks are
/// computed too, those in blocks above it are left untouched). The Gram matrix is
/// symmetric, so this is all of it for about half the work; block pairs run in parallel.
pub fn gram_lower_acc_f32(x: &[f32], t: usize, n: usize, acc: &mut [f32]) {
    assert_eq!(x.len(), t * n, "activation shape");
    assert_eq!(acc.len(), n * n, "accumulator shape");
    if t == 0 {
        return;
    }
    let nb = n.div_ceil(GRAM_BLOCK);
    if nb <= 1 {
        return gram_acc_f32(x, t, n, acc);
    }
    let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|i| (0..=i).map(move |j| (i, j))).collect();
    // Each block pair writes a disjoint rectangle of `acc` (see below).
    let dst = SendPtr(acc.as_mut_ptr());
    pairs.par_iter().for_each(|&(bi, bj)| {
        let (r0, c0) = (bi * GRAM_BLOCK, bj * GRAM_BLOCK);
        let (rows, cols) = (GRAM_BLOCK.min(n - r0), GRAM_BLOCK.min(n - c0));
        let dst = &dst;
        // SAFETY: the destination is the rectangle rows r0..r0+rows, cols c0..c0+cols of the
        // [n, n] accumulator (row stride n), disjoint between block pairs. lhs is xᵀ rows
        // r0.. ([rows, t]: element (i, s) at x[s*n + r0 + i]); rhs is x columns c0.. ([t,
        // cols]: element (s, j) at x[s*n + c0 + j]); all offsets stay inside x.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                t,
                dst.0.add(r0 * n + c0),
                1,
                n as isize,
                true,
                x.as_ptr().add(r0),
                n as isize,
                1,
                x.as_ptr().add(c0),
                1,
                n as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 accumulation against the f64 reference, relative to the row's magnitude.
    const DENSE_F32_REL_TOL: f32 = 1e-5;

    /// Deterministic `x` `[m, k]` and `w` `[n, k]`.
    fn inputs(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 13.0)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 17 % 83) as f32 - 41.0) / 11.0)
            .collect();
        (x, w)
    }

    /// Runs `f` inside a rayon pool of `threads` threads.
    fn on_threads(threads: usize, f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    type Matmul = fn(&[f32], &[f32], usize, usize, usize) -> Vec<f32>;

    /// `matmul` against the f64 reference.
    fn check_with(matmul: Matmul, m: usize, k: usize, n: usize) {
        let (x, w) = inputs(m, k, n);
        let want = matmul_f32_nt_ref(&x, &w, m, k, n);
        let got = matmul(&x, &w, m, k, n);
        let scale = want.iter().fold(1.0f32, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() / scale < DENSE_F32_REL_TOL,
                "m={m} k={k} n={n} at {i}: {a} vs {b}"
            );
        }
    }

    fn check(m: usize, k: usize, n: usize) {
        check_with(matmul_f32_nt, m, k, n)
    }

    #[test]
    fn gemv_path_matches_reference() {
        for (m, k, n) in [
            (1, 576, 192),
            (1, 33, 5),
            (3, 64, 1000),
            (8, 100, 17),
            (17, 576, 37),
            (DENSE_GEMV_MAX_ROWS, 64, 9),
        ] {
            check(m, k, n);
        }
    }

    /// A row's outputs are the same bits whatever rows share its pass (the speculative
    /// verification's promise), on every thread count.
    #[test]
    fn gemv_rows_are_independent_of_their_neighbours() {
        let (k, n) = (200, 75);
        let (x, w) = inputs(DENSE_GEMV_MAX_ROWS, k, n);
        for threads in [1, 2] {
            on_threads(threads, || {
                let all = matmul_f32_nt(&x, &w, DENSE_GEMV_MAX_ROWS, k, n);
                for m in [1, 2, 5, 8, 13] {
                    let some = matmul_f32_nt(&x[..m * k], &w, m, k, n);
                    for (i, (a, b)) in some.iter().zip(&all).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "m={m} threads={threads} at {i}");
                    }
                }
            });
        }
    }

    /// Panel weights: the same bits as the row-major matrix through the few-row path on
    /// any thread count (bands split on panel blocks), and the f64 reference's values
    /// through the GEMM path (bands unpacked).
    #[test]
    fn panel_weights_give_the_row_major_results() {
        for threads in [1, 2, 3] {
            on_threads(threads, || {
                for (m, k, n) in [(1, 576, 192), (2, 17, 37), (5, 64, 101), (32, 8, 6)] {
                    let (x, w) = inputs(m, k, n);
                    let p = PanelF32::from_row_major(&w, n, k);
                    let got = matmul_panel_nt(&x, &p, m);
                    let want = matmul_f32_nt(&x, &w, m, k, n);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "m={m} k={k} n={n} at {i}");
                    }
                }
                check_with(
                    |x, w, m, k, n| matmul_panel_nt(x, &PanelF32::from_row_major(w, n, k), m),
                    DENSE_GEMV_MAX_ROWS + 7,
                    96,
                    77,
                );
            });
        }
    }

    /// The GEMM path in bands: one thread, two, and three (the last band short, a width that
    /// is not a multiple of the 16-column block, more threads than blocks).
    #[test]
    fn gemm_bands_match_reference_on_any_thread_count() {
        for threads in [1, 2, 3] {
            on_threads(threads, || {
                for (m, k, n) in [(9, 64, 100), (33, 17, 37), (64, 576, 192), (12, 8, 5)] {
                    check(m, k, n);
                }
            });
        }
    }

    #[test]
    fn gram_matches_reference() {
        for (t, n) in [(1, 5), (37, 64), (300, 96)] {
            let x: Vec<f32> = (0..t * n)
                .map(|i| ((i * 29 % 89) as f32 - 44.0) / 9.0)
                .collect();
            let mut want = vec![0.5f64; n * n];
            gram_acc_ref(&x, t, n, &mut want);
            let mut got = vec![0.5f32; n * n];
            gram_acc_f32(&x, t, n, &mut got);
            let scale = want.iter().fold(1.0f64, |a, b| a.max(b.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() / scale < DENSE_F32_REL_TOL as f64,
                    "t={t} n={n} at {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn lower_gram_matches_reference_below_the_diagonal() {
        for (t, n) in [(5, 100), (64, 400), (33, 577)] {
            let x: Vec<f32> = (0..t * n)
                .map(|i| ((i * 29 % 89) as f32 - 44.0) / 9.0)
                .collect();
            let mut want = vec![0.0f64; n * n];
            gram_acc_ref(&x, t, n, &mut want);
            let mut got = vec![0.0f32; n * n];
            gram_lower_acc_f32(&x, t, n, &mut got);
            let scale = want.iter().fold(1.0f64, |a, b| a.max(b.abs()));
            for i in 0..n {
                for j in 0..=i {
                    let (a, b) = (got[i * n + j] as f64, want[i * n + j]);
                    assert!(
                        (a - b).abs() / scale < DENSE_F32_REL_TOL as f64,
                        "t={t} n={n} ({i},{j}): {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn blocked_path_matches_reference_for_few_rows_too() {
        for (m, k, n) in [(1, 64, 33), (3, 576, 40), (24, 32, 48)] {
            check_with(matmul_f32_nt_blocked, m, k, n);
        }
    }

    #[test]
    fn gemm_path_matches_reference() {
        for (m, k, n) in [(9, 64, 48), (64, 576, 200), (17, 31, 7)] {
            check(m, k, n);
        }
    }
}
