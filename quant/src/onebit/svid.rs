//! Sign-Value-Independent Decomposition (SVID), OneBit's initialization: `W ≈ S ⊙ (a·bᵀ)`
//! with `S = sign(W)` and `a·bᵀ` the best rank-1 approximation of `|W|`.
//!
//! The OneBit authors fit the rank-1 factor with NMF. For a non-negative matrix the two
//! coincide: by Perron–Frobenius the leading singular vectors of `|W|` can be taken
//! non-negative, so the truncated SVD `σ₁u₁v₁ᵀ` is already the best non-negative rank-1 fit
//! in Frobenius norm. It is found here by power iteration on `|W|ᵀ|W|` in f64, which is
//! deterministic (no random NMF restarts) and converges fast because `|W|` has a dominant
//! singular value (its entries share a sign).

use rayon::prelude::*;

/// Power-iteration steps at most; iteration stops earlier when `v` moves less than
/// [`SVID_TOL`].
pub const SVID_MAX_ITERS: usize = 200;

/// Convergence threshold on the change of the normalized right vector (L2).
pub const SVID_TOL: f64 = 1e-10;

/// The value vectors of one matrix: `|W[o][c]| ≈ a[o] · b[c]`, both non-negative.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank1 {
    /// `[rows]`
    pub a: Vec<f32>,
    /// `[cols]`
    pub b: Vec<f32>,
    /// Power-iteration steps taken.
    pub iterations: usize,
}

/// Best rank-1 approximation of `|W|` (`W` is `[rows, cols]` row-major), with the norm split
/// evenly between `a` and `b` (`‖a‖ = ‖b‖`), so neither vector starts out tiny in training.
pub fn rank1_abs(w: &[f32], rows: usize, cols: usize) -> Rank1 {
    assert_eq!(w.len(), rows * cols, "weight shape");
    assert!(rows > 0 && cols > 0, "empty weight");
    let abs_row = |o: usize| {
        w[o * cols..(o + 1) * cols]
            .iter()
            .map(|x| f64::from(x.abs()))
    };
    // Start from the column means: positive, and close to the Perron vector already.
    let mut v: Vec<f64> = vec![0.0; cols];
    for o in 0..rows {
        for (vi, x) in v.iter_mut().zip(abs_row(o)) {
            *vi += x;
        }
    }
    normalize(&mut v);
    let mut u = vec![0.0f64; rows];
    let mut iterations = 0;
    for it in 1..=SVID_MAX_ITERS {
        iterations = it;
        // u = |W| v
        u.par_iter_mut()
            .enumerate()
            .for_each(|(o, uo)| *uo = abs_row(o).zip(&v).map(|(x, vi)| x * vi).sum());
        // v' = |W|ᵀ u, accumulated over row chunks in parallel.
        let mut next = (0..rows)
            .into_par_iter()
            .fold(
                || vec![0.0f64; cols],
                |mut acc, o| {
                    for (a, x) in acc.iter_mut().zip(abs_row(o)) {
                        *a += x * u[o];
                    }
                    acc
                },
            )
            .reduce(
                || vec![0.0f64; cols],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    a
                },
            );
        normalize(&mut next);
        let delta: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).powi(2)).sum();
        v = next;
        if delta.sqrt() < SVID_TOL {
            break;
        }
    }
    // σ u₁ = |W| v₁; split σ evenly: a = √σ u₁, b = √σ v₁.
    for (o, uo) in u.iter_mut().enumerate() {
        *uo = abs_row(o).zip(&v).map(|(x, vi)| x * vi).sum();
    }
    let sigma = u.iter().map(|x| x * x).sum::<f64>().sqrt();
    let root = sigma.sqrt();
    let a = u
        .iter()
        .map(|x| {
            if sigma > 0.0 {
                (x / sigma * root) as f32
            } else {
                0.0
            }
        })
        .collect();
    let b = v.iter().map(|x| (x * root) as f32).collect();
    Rank1 { a, b, iterations }
}

fn normalize(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// `‖W − sign(W) ⊙ a·bᵀ‖_F / ‖W‖_F`: how much of the weight SVID keeps, for reports.
pub fn relative_error(w: &[f32], rows: usize, cols: usize, r: &Rank1) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for o in 0..rows {
        for c in 0..cols {
            let x = f64::from(w[o * cols + c]);
            let approx = if x < 0.0 { -1.0 } else { 1.0 } * f64::from(r.a[o]) * f64::from(r.b[c]);
            num += (x - approx).powi(2);
            den += x * x;
        }
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tolerance for recovering an exactly rank-1 `|W|`: f32 storage of the factors.
    const RANK1_TOL: f64 = 1e-5;

    #[test]
    fn exactly_rank_one_magnitudes_are_recovered() {
        let (rows, cols) = (23, 57);
        let a: Vec<f32> = (0..rows)
            .map(|i| 0.1 + (i as f32 * 0.7).sin().abs())
            .collect();
        let b: Vec<f32> = (0..cols)
            .map(|j| 0.05 + (j as f32 * 1.3).cos().abs())
            .collect();
        // Signs are arbitrary: SVID factors |W| only.
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let s = if (i * 31) % 7 < 3 { -1.0 } else { 1.0 };
                s * a[i / cols] * b[i % cols]
            })
            .collect();
        let r = rank1_abs(&w, rows, cols);
        for (o, (&ra, &ao)) in r.a.iter().zip(&a).enumerate() {
            for (c, (&rb, &bc)) in r.b.iter().zip(&b).enumerate() {
                let got = f64::from(ra) * f64::from(rb);
                let want = f64::from(ao) * f64::from(bc);
                assert!(
                    (got - want).abs() <= RANK1_TOL * want,
                    "({o},{c}) {got} vs {want}"
                );
            }
        }
        assert!(relative_error(&w, rows, cols, &r) < RANK1_TOL);
        let (na, nb) = (norm(&r.a), norm(&r.b));
        assert!((na - nb).abs() < 1e-5 * na, "norm split {na} vs {nb}");
    }

    /// On a general matrix the factor is the best rank-1 fit: no random non-negative rank-1
    /// candidate (nor a perturbation of the result) fits `|W|` better.
    #[test]
    fn general_matrices_get_the_best_rank_one_fit() {
        let (rows, cols) = (16, 40);
        let mut s = 12345u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let r = rank1_abs(&w, rows, cols);
        let err = |a: &[f32], b: &[f32]| -> f64 {
            (0..rows * cols)
                .map(|i| {
                    let x = f64::from(w[i].abs());
                    (x - f64::from(a[i / cols]) * f64::from(b[i % cols])).powi(2)
                })
                .sum()
        };
        let best = err(&r.a, &r.b);
        for k in 0..50 {
            let mut a = r.a.clone();
            let mut b = r.b.clone();
            a[k % rows] *= 1.0 + 0.01 * rnd();
            b[(k * 7) % cols] *= 1.0 + 0.01 * rnd();
            assert!(
                err(&a, &b) >= best - 1e-9,
                "perturbation {k} improved the fit"
            );
        }
        assert!(r.a.iter().chain(&r.b).all(|&x| x >= 0.0));
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
    }
}
