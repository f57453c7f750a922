//! `y = x · Wᵀ` for f32 weights stored `[out, in]` (the checkpoint layout).
//! Few rows (decode, speculative verification): each thread streams a band of weight rows and
//! dots every activation row with it while the weight row is in cache. Many rows (prefill):
//! the `gemm` crate's blocked kernel, parallel over both cores.

use rayon::prelude::*;

use super::simd::dot_f32;

/// Up to this many activation rows, the streaming GEMV kernel beats blocked GEMM (the weight
/// is read once either way; below this, GEMM's packing costs more than it saves).
pub const GEMV_MAX_ROWS: usize = 8;

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
    if m <= GEMV_MAX_ROWS {
        gemv_rows(x, w, m, k, n)
    } else {
        gemm_nt(x, w, m, k, n)
    }
}

fn gemv_rows(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    // Output stored [n, m] while computing (each band writes contiguous memory), then
    // transposed: m is tiny so that costs nothing.
    let mut yt = vec![0.0f32; n * m];
    let band = (n / (rayon::current_num_threads() * 8)).clamp(16, 1024);
    yt.par_chunks_mut(band * m)
        .zip(w.par_chunks(band * k))
        .for_each(|(ys, ws)| {
            for (yrow, wrow) in ys.chunks_exact_mut(m).zip(ws.chunks_exact(k)) {
                for (r, y) in yrow.iter_mut().enumerate() {
                    *y = dot_f32(&x[r * k..(r + 1) * k], wrow);
                }
            }
        });
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

fn gemm_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    let par = if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst is [m, n] row-major (col stride 1, row stride n); lhs is [m, k] row-major;
    // rhs is Wᵀ, i.e. element (i, o) at w[o*k + i]: col stride k, row stride 1. All three
    // buffers have exactly those sizes (asserted by the caller).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 accumulation against the f64 reference, relative to the row's magnitude.
    const DENSE_F32_REL_TOL: f32 = 1e-5;

    fn check(m: usize, k: usize, n: usize) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 13.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 17 % 83) as f32 - 41.0) / 11.0)
            .collect();
        let want = matmul_f32_nt_ref(&x, &w, m, k, n);
        let got = matmul_f32_nt(&x, &w, m, k, n);
        let scale = want.iter().fold(1.0f32, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() / scale < DENSE_F32_REL_TOL,
                "m={m} k={k} n={n} at {i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn gemv_path_matches_reference() {
        for (m, k, n) in [(1, 576, 192), (1, 33, 5), (3, 64, 1000), (8, 100, 17)] {
            check(m, k, n);
        }
    }

    #[test]
    fn gemm_path_matches_reference() {
        for (m, k, n) in [(9, 64, 48), (64, 576, 200), (17, 31, 7)] {
            check(m, k, n);
        }
    }
}
