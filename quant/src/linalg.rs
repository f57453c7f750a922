//! Dense linear algebra that GPTQ needs: Cholesky factorisation, the inverse of a symmetric
//! positive-definite matrix from its factor, the upper Cholesky factor of an inverse, and a
//! blocked matrix product for the lazy batch updates.
//!
//! Everything is row-major over plain slices. The factorisations are f64 only: a Hessian
//! accumulated from activations with outlier channels easily has a condition number of
//! 1e6..1e8, beyond what f32 round-off in an O(n³) factorisation tolerates. The matrix product is generic over f32/f64 because GPTQ's weight updates run in
//! f32 (see `gptq.rs`) while tests and factorisation checks want f64.
//!
//! No function here panics on inconsistent sizes; they return [`LinalgError`].

use std::ops::{Add, AddAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use rayon::prelude::*;

/// A pivot of a Cholesky factorisation must exceed this fraction of the largest diagonal
/// entry. LAPACK only rejects pivots ≤ 0, which lets an exactly singular matrix "succeed" with
/// a round-off-sized pivot (≈1e-16 relative) and an inverse full of 1e16s; GPTQ would then
/// propagate garbage instead of retrying with more dampening. Any Hessian that GPTQ's default
/// dampening (1% of the mean diagonal) makes usable has pivots far above this bound (≥ 0.01/n
/// of the largest diagonal entry), so the bound only catches numerically singular matrices.
pub const PIVOT_RELATIVE_TOLERANCE: f64 = 1e-10;

/// Why a linear-algebra routine refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinalgError {
    /// The matrix is not (numerically) positive definite: the Cholesky pivot at `pivot` came
    /// out as `value`, not above `tolerance`. Callers such as GPTQ react by adding dampening.
    #[error(
        "matrix is not positive definite: Cholesky pivot {pivot} is {value:e} \
         (must exceed {tolerance:e})"
    )]
    NotPositiveDefinite {
        /// Row/column index of the failing pivot.
        pivot: usize,
        /// The pivot's value before the square root.
        value: f64,
        /// The bound it had to exceed.
        tolerance: f64,
    },
    /// A slice is shorter (or longer) than the dimensions passed with it say it must be.
    #[error("{what}: expected {expected} elements, got {got}")]
    Shape {
        /// Which operand.
        what: &'static str,
        /// Elements the dimensions require.
        expected: usize,
        /// Elements the slice has.
        got: usize,
    },
    /// A leading dimension (row stride) is smaller than the row length it must hold.
    #[error("{what}: leading dimension {ld} is smaller than the row length {cols}")]
    Stride {
        /// Which operand.
        what: &'static str,
        /// The row stride given.
        ld: usize,
        /// The row length it must hold.
        cols: usize,
    },
}

/// Element types the matrix product works on; exists so one kernel serves f32 (GPTQ's
/// updates) and f64 (checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    /// Additive identity, for zero-initialised outputs.
    const ZERO: Self;
    /// Multiplicative identity, for a plain product through the accumulate kernel.
    const ONE: Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), LinalgError> {
    if expected == got {
        Ok(())
    } else {
        Err(LinalgError::Shape {
            what,
            expected,
            got,
        })
    }
}

/// Minimum slice length for an `rows × cols` matrix stored with row stride `ld`.
fn strided_len(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

fn check_strided(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<(), LinalgError> {
    if rows > 1 && ld < cols {
        return Err(LinalgError::Stride { what, ld, cols });
    }
    let need = strided_len(rows, cols, ld);
    if len < need {
        return Err(LinalgError::Shape {
            what,
            expected: need,
            got: len,
        });
    }
    Ok(())
}

/// Dot product with four independent accumulators: the sequential dependency of a single
/// accumulator, not the arithmetic, is what limits a naive loop.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Columns per panel of the blocked Cholesky: the diagonal block (64 × 64 f64 = 32 KiB) fits
/// L1, and the panel copies that feed the trailing update stay in L2 for Hessian sizes.
const CHOLESKY_BLOCK: usize = 64;
/// Rows of the trailing matrix per parallel task in the blocked Cholesky.
const CHOLESKY_ROWS_PER_TASK: usize = 32;
/// Columns of the inverse per parallel task in [`lower_triangular_inverse`]: a 32-wide
/// accumulator row fits in registers and the panel of solved rows stays in L2.
const TRIANGULAR_INVERSE_COLUMNS_PER_TASK: usize = 32;

/// Factors the symmetric positive-definite `a` (`n × n`, row-major) as `L·Lᵀ` in place: on
/// success the lower triangle holds `L` and the strict upper triangle is zeroed.
///
/// Only the lower triangle of the input is read (as LAPACK's `potrf` with `uplo = L`), so a
/// Hessian whose upper half carries accumulation round-off is fine. Pivots must exceed
/// [`PIVOT_RELATIVE_TOLERANCE`] × the largest diagonal entry; otherwise the matrix is reported
/// as not positive definite and `a` is left partially overwritten.
///
/// Blocked right-looking algorithm, parallel over rows: a row-by-row Cholesky re-reads every
/// earlier row for each new one and is memory-bound once the matrix leaves the cache (a
/// 4864² Hessian is 189 MB), while here the O(n³) part is a matrix product
/// (`A₂₂ −= L₂₁·L₂₁ᵀ`) over panels that stay in cache.
pub fn cholesky_lower_in_place(a: &mut [f64], n: usize) -> Result<(), LinalgError> {
    check_len("cholesky input", n * n, a.len())?;
    let max_diag = (0..n)
        .map(|i| a[i * n + i])
        .fold(0.0f64, |m, d| m.max(d.abs()));
    let tolerance = max_diag * PIVOT_RELATIVE_TOLERANCE;
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + CHOLESKY_BLOCK).min(n);
        let nb = k1 - k0;
        factor_diagonal_block(a, n, k0, k1, tolerance)?;
        if k1 < n {
            let (top, bottom) = a.split_at_mut(k1 * n);
            // Panel: L₂₁ = A₂₁ · L₁₁⁻ᵀ, one forward substitution per row.
            let mut l11 = vec![0.0f64; nb * nb];
            for (i, dst) in l11.chunks_mut(nb).enumerate() {
                dst.copy_from_slice(&top[(k0 + i) * n + k0..(k0 + i) * n + k1]);
            }
            bottom.par_chunks_mut(n).for_each(|row| {
                let x = &mut row[k0..k1];
                for j in 0..nb {
                    let s = x[j] - dot(&x[..j], &l11[j * nb..j * nb + j]);
                    x[j] = s / l11[j * nb + j];
                }
            });
            // Trailing update of the lower part: A₂₂ −= L₂₁ · L₂₁ᵀ, through contiguous copies
            // of the panel and its transpose.
            let m = n - k1;
            let mut panel = vec![0.0f64; m * nb];
            for (i, dst) in panel.chunks_mut(nb).enumerate() {
                dst.copy_from_slice(&bottom[i * n + k0..i * n + k1]);
            }
            let panel_t = transpose(&panel, m, nb)?;
            bottom
                .par_chunks_mut(CHOLESKY_ROWS_PER_TASK * n)
                .enumerate()
                .try_for_each(|(t, chunk)| {
                    let r0 = t * CHOLESKY_ROWS_PER_TASK;
                    let rows = chunk.len() / n;
                    // Columns k1 .. k1 + r0 + rows cover this row block's lower triangle (and a
                    // little of the strict upper one, which is never read and zeroed at the end).
                    gemm_acc(
                        &mut chunk[k1..],
                        n,
                        &panel[r0 * nb..],
                        nb,
                        &panel_t,
                        m,
                        rows,
                        nb,
                        r0 + rows,
                        -1.0,
                    )
                })?;
        }
        k0 = k1;
    }
    a.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        if i + 1 < row.len() {
            row[i + 1..].fill(0.0);
        }
    });
    Ok(())
}

/// Unblocked Cholesky of the diagonal block `[k0, k1)²`, whose entries already carry the
/// updates from all earlier panels.
fn factor_diagonal_block(
    a: &mut [f64],
    n: usize,
    k0: usize,
    k1: usize,
    tolerance: f64,
) -> Result<(), LinalgError> {
    for i in k0..k1 {
        let (done, rest) = a.split_at_mut(i * n);
        let row_i = &mut rest[..n];
        for j in k0..i {
            let row_j = &done[j * n..j * n + j + 1];
            let s = row_i[j] - dot(&row_i[k0..j], &row_j[k0..j]);
            row_i[j] = s / row_j[j];
        }
        let s = row_i[i] - dot(&row_i[k0..i], &row_i[k0..i]);
        // Written so that NaN is rejected too.
        let acceptable = s.is_finite() && s > tolerance;
        if !acceptable {
            return Err(LinalgError::NotPositiveDefinite {
                pivot: i,
                value: s,
                tolerance,
            });
        }
        row_i[i] = s.sqrt();
    }
    Ok(())
}

/// Inverse of a lower-triangular `l` (`n × n`, row-major, non-zero diagonal), lower
/// triangular again. Exists so the inverse of an SPD matrix can be formed from its Cholesky
/// factor without a general (pivoting) solver.
///
/// Columns of the inverse are independent (column j solves `L·x = e_j`), so blocks of
/// [`TRIANGULAR_INVERSE_COLUMNS_PER_TASK`] columns are solved in parallel, each by forward
/// substitution with the block as a multi-column right-hand side.
pub fn lower_triangular_inverse(l: &[f64], n: usize) -> Result<Vec<f64>, LinalgError> {
    check_len("triangular inverse input", n * n, l.len())?;
    let mut inv = vec![0.0f64; n * n];
    for (j0, w, x) in triangular_inverse_panels(l, n) {
        for (r, src) in x.chunks_exact(w).enumerate() {
            let i = j0 + r;
            inv[i * n + j0..i * n + j0 + w].copy_from_slice(src);
        }
    }
    Ok(inv)
}

/// Column blocks of `l⁻¹` as `(first column j0, width w, rows j0..n of the block, row-major)`;
/// rows above `j0` are zero and not stored, so the panels take about half of `n²`.
fn triangular_inverse_panels(l: &[f64], n: usize) -> Vec<(usize, usize, Vec<f64>)> {
    let w_max = TRIANGULAR_INVERSE_COLUMNS_PER_TASK;
    let starts: Vec<usize> = (0..n).step_by(w_max).collect();
    starts
        .par_iter()
        .map(|&j0| {
            let w = w_max.min(n - j0);
            let mut x = vec![0.0f64; (n - j0) * w];
            for i in j0..n {
                let li = &l[i * n..i * n + i + 1];
                let (done, cur) = x.split_at_mut((i - j0) * w);
                let acc = &mut cur[..w];
                if i - j0 < w {
                    acc[i - j0] = 1.0;
                }
                for (k, xk) in done.chunks_exact(w).enumerate() {
                    let lik = li[j0 + k];
                    if lik != 0.0 {
                        for (av, &xv) in acc.iter_mut().zip(xk) {
                            *av -= lik * xv;
                        }
                    }
                }
                let d = 1.0 / li[i];
                for av in acc.iter_mut() {
                    *av *= d;
                }
            }
            (j0, w, x)
        })
        .collect()
}

/// The upper-triangular `U` with `Uᵀ·U = (A + λI)⁻¹` for a symmetric positive-definite
/// `A + λI` (only the lower triangle of `a` is read; `a` is not modified, so a caller can
/// retry with a larger `lambda`): exactly the factor GPTQ needs, without forming the inverse.
///
/// GPTQ as published computes it as Cholesky of A, inverse, upper Cholesky of the inverse
/// ([`cholesky_lower_in_place`] → [`cholesky_inverse`] → [`cholesky_upper`]). With `J` the
/// order-reversing permutation, `J·A·J = L̃·L̃ᵀ` gives `A = V·Vᵀ` with `V = J·L̃·J` upper
/// triangular, hence `A⁻¹ = V⁻ᵀ·V⁻¹` and `U = V⁻¹ = J·L̃⁻¹·J` — the same unique factor
/// (positive diagonal) from one factorisation and one triangular inverse: half the O(n³)
/// work, no second factorisation of an explicitly inverted, worse-conditioned matrix, and a
/// peak of about 2.5·n² f64 besides `a` (the reversed copy being factored plus the
/// half-size panels of its inverse).
pub fn upper_cholesky_of_inverse(
    a: &[f64],
    n: usize,
    lambda: f64,
) -> Result<Vec<f64>, LinalgError> {
    check_len("cholesky input", n * n, a.len())?;
    // r = J·(A + λI)·J, read from A's lower triangle.
    let mut r = vec![0.0f64; n * n];
    r.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        let ai = n - 1 - i;
        for (j, v) in row.iter_mut().enumerate() {
            let aj = n - 1 - j;
            let (p, q) = if ai >= aj { (ai, aj) } else { (aj, ai) };
            *v = a[p * n + q];
        }
        row[i] += lambda;
    });
    cholesky_lower_in_place(&mut r, n)?;
    let panels = triangular_inverse_panels(&r, n);
    drop(r);
    // U = J·X·J: X[i][j] lands at U[n−1−i][n−1−j].
    let mut u = vec![0.0f64; n * n];
    for (j0, w, x) in panels {
        for (rr, src) in x.chunks_exact(w).enumerate() {
            let ui = n - 1 - (j0 + rr);
            for (c, &v) in src.iter().enumerate() {
                u[ui * n + (n - 1 - (j0 + c))] = v;
            }
        }
    }
    Ok(u)
}

/// `A⁻¹` for `A = L·Lᵀ`, given the lower Cholesky factor `l` (the role of
/// `torch.cholesky_inverse`). The result is full and exactly symmetric (the upper triangle is
/// a mirror of the lower one), which the following upper Cholesky of GPTQ relies on.
pub fn cholesky_inverse(l: &[f64], n: usize) -> Result<Vec<f64>, LinalgError> {
    let linv = lower_triangular_inverse(l, n)?;
    // (A⁻¹)_ij = Σ_{k ≥ max(i,j)} Linv_ki · Linv_kj; row i (j ≤ i) accumulates rows k ≥ i.
    let mut out = vec![0.0f64; n * n];
    if n == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for k in i..n {
            let a = linv[k * n + i];
            if a != 0.0 {
                let src = &linv[k * n..k * n + i + 1];
                for (r, &s) in row[..=i].iter_mut().zip(src) {
                    *r += a * s;
                }
            }
        }
    });
    for i in 0..n {
        for j in 0..i {
            out[j * n + i] = out[i * n + j];
        }
    }
    Ok(out)
}

/// Upper Cholesky factor `U` of the SPD `a` (`a = Uᵀ·U`, as `torch.linalg.cholesky(a,
/// upper=True)`). GPTQ needs the upper factor of H⁻¹: its row j holds the weights with which
/// the error of column j is spread over the later columns.
pub fn cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, LinalgError> {
    check_len("cholesky input", n * n, a.len())?;
    let mut l = a.to_vec();
    cholesky_lower_in_place(&mut l, n)?;
    transpose(&l, n, n)
}

/// Transpose of a `rows × cols` row-major matrix.
pub fn transpose<T: Real>(a: &[T], rows: usize, cols: usize) -> Result<Vec<T>, LinalgError> {
    check_len("transpose input", rows * cols, a.len())?;
    let mut out = vec![T::ZERO; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = a[i * cols + j];
        }
    }
    Ok(out)
}

/// Columns of `C` (and `B`) handled per pass: a `k × NC` panel of `B` (128 × 256 f32 =
/// 128 KiB) stays in L2 while every row of `C` streams over it.
const GEMM_COLUMN_PANEL: usize = 256;

/// `C += alpha · A · B` on strided sub-matrices: `A` is `m × k` with row stride `lda`, `B` is
/// `k × n` with stride `ldb`, `C` is `m × n` with stride `ldc`. Single-threaded: GPTQ already
/// runs one of these per tile of rows in parallel, and strides let it update
/// `W[:, i2..]` in place without copying.
///
/// Blocked for cache use: `B` is taken in panels of [`GEMM_COLUMN_PANEL`] columns, and four
/// rows of `C` share each loaded row of `B`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc<T: Real>(
    c: &mut [T],
    ldc: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
) -> Result<(), LinalgError> {
    check_strided("gemm C", c.len(), m, n, ldc)?;
    check_strided("gemm A", a.len(), m, k, lda)?;
    check_strided("gemm B", b.len(), k, n, ldb)?;
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    let mut jc = 0;
    while jc < n {
        let nc = GEMM_COLUMN_PANEL.min(n - jc);
        let mut i = 0;
        while i + 4 <= m {
            let base = i * ldc + jc;
            let (r0, rest) = c[base..].split_at_mut(ldc);
            let (r1, rest) = rest.split_at_mut(ldc);
            let (r2, rest) = rest.split_at_mut(ldc);
            let (c0, c1, c2, c3) = (&mut r0[..nc], &mut r1[..nc], &mut r2[..nc], &mut rest[..nc]);
            for p in 0..k {
                let a0 = alpha * a[i * lda + p];
                let a1 = alpha * a[(i + 1) * lda + p];
                let a2 = alpha * a[(i + 2) * lda + p];
                let a3 = alpha * a[(i + 3) * lda + p];
                let brow = &b[p * ldb + jc..p * ldb + jc + nc];
                for ((((x0, x1), x2), x3), &bv) in c0
                    .iter_mut()
                    .zip(c1.iter_mut())
                    .zip(c2.iter_mut())
                    .zip(c3.iter_mut())
                    .zip(brow)
                {
                    *x0 += a0 * bv;
                    *x1 += a1 * bv;
                    *x2 += a2 * bv;
                    *x3 += a3 * bv;
                }
            }
            i += 4;
        }
        while i < m {
            let crow = &mut c[i * ldc + jc..i * ldc + jc + nc];
            for p in 0..k {
                let av = alpha * a[i * lda + p];
                let brow = &b[p * ldb + jc..p * ldb + jc + nc];
                for (x, &bv) in crow.iter_mut().zip(brow) {
                    *x += av * bv;
                }
            }
            i += 1;
        }
        jc += nc;
    }
    Ok(())
}

/// Rows of `C` per parallel task in [`matmul`]: enough work per task to amortise scheduling,
/// small enough to balance over a few cores.
const MATMUL_ROWS_PER_TASK: usize = 16;

/// `A · B` for contiguous row-major `A` (`m × k`) and `B` (`k × n`), parallel over row
/// blocks of the result. For Hessian-sized products (building `X·Xᵀ` in tests, checks of
/// inverses) where a full BLAS would be a heavy dependency.
pub fn matmul<T: Real>(
    a: &[T],
    b: &[T],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<T>, LinalgError> {
    check_len("matmul A", m * k, a.len())?;
    check_len("matmul B", k * n, b.len())?;
    let mut c = vec![T::ZERO; m * n];
    if m == 0 || n == 0 || k == 0 {
        return Ok(c);
    }
    c.par_chunks_mut(MATMUL_ROWS_PER_TASK * n)
        .zip(a.par_chunks(MATMUL_ROWS_PER_TASK * k))
        .try_for_each(|(cblk, ablk)| {
            let rows = cblk.len() / n;
            gemm_acc(cblk, n, ablk, k, b, n, rows, k, n, T::ONE)
        })?;
    Ok(c)
}

/// Seeded random inputs shared by the unit tests of this crate's quantization modules.
#[cfg(test)]
pub(crate) mod test_support {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Deterministic generator with the two distributions the tests need.
    pub(crate) struct TestRng(StdRng);

    impl TestRng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(StdRng::seed_from_u64(seed))
        }

        /// Uniform in [0, 1).
        pub(crate) fn uniform(&mut self) -> f64 {
            self.0.gen::<f64>()
        }

        /// Standard normal (Box–Muller).
        pub(crate) fn normal(&mut self) -> f64 {
            let u1 = 1.0 - self.uniform(); // (0, 1]
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }

        pub(crate) fn normal_vec(&mut self, len: usize) -> Vec<f64> {
            (0..len).map(|_| self.normal()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TestRng;
    use super::*;

    /// Absolute tolerance for reconstruction checks on well-conditioned matrices with O(1)
    /// entries (the brief's 1e-9; observed errors are ~1e-13).
    const RECONSTRUCTION_TOLERANCE: f64 = 1e-9;

    /// A well-conditioned SPD matrix: B·Bᵀ / n + I.
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = TestRng::new(seed);
        let b = rng.normal_vec(n * n);
        let bt = transpose(&b, n, n).unwrap();
        let mut a = matmul(&b, &bt, n, n, n).unwrap();
        for (i, v) in a.iter_mut().enumerate() {
            *v /= n as f64;
            if i % (n + 1) == 0 {
                *v += 1.0;
            }
        }
        a
    }

    fn naive_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn identity(n: usize) -> Vec<f64> {
        let mut e = vec![0.0; n * n];
        for i in 0..n {
            e[i * n + i] = 1.0;
        }
        e
    }

    #[test]
    fn cholesky_reconstructs_the_matrix() {
        for n in [1, 2, 7, 64, 65, 130, 300] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            cholesky_lower_in_place(&mut l, n).unwrap();
            for i in 0..n {
                for j in i + 1..n {
                    assert_eq!(l[i * n + j], 0.0);
                }
            }
            let lt = transpose(&l, n, n).unwrap();
            let llt = matmul(&l, &lt, n, n, n).unwrap();
            assert!(max_abs_diff(&llt, &a) < RECONSTRUCTION_TOLERANCE, "n={n}");
        }
    }

    #[test]
    fn cholesky_reads_only_the_lower_triangle() {
        let n = 5;
        let a = spd(n, 3);
        let mut garbage_upper = a.clone();
        for i in 0..n {
            for j in i + 1..n {
                garbage_upper[i * n + j] = 1e3;
            }
        }
        let mut l1 = a;
        let mut l2 = garbage_upper;
        cholesky_lower_in_place(&mut l1, n).unwrap();
        cholesky_lower_in_place(&mut l2, n).unwrap();
        assert_eq!(l1, l2);
    }

    #[test]
    fn inverse_times_matrix_is_identity() {
        for n in [1, 3, 33, 64, 129] {
            let a = spd(n, 10 + n as u64);
            let mut l = a.clone();
            cholesky_lower_in_place(&mut l, n).unwrap();
            let inv = cholesky_inverse(&l, n).unwrap();
            let prod = matmul(&a, &inv, n, n, n).unwrap();
            assert!(
                max_abs_diff(&prod, &identity(n)) < RECONSTRUCTION_TOLERANCE,
                "n={n}"
            );
            assert_eq!(inv, transpose(&inv, n, n).unwrap(), "exactly symmetric");
            let linv = lower_triangular_inverse(&l, n).unwrap();
            let prod = matmul(&l, &linv, n, n, n).unwrap();
            assert!(max_abs_diff(&prod, &identity(n)) < RECONSTRUCTION_TOLERANCE);
        }
    }

    #[test]
    fn upper_cholesky_reconstructs_as_ut_u() {
        let n = 40;
        let a = spd(n, 5);
        let u = cholesky_upper(&a, n).unwrap();
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        let ut = transpose(&u, n, n).unwrap();
        let utu = matmul(&ut, &u, n, n, n).unwrap();
        assert!(max_abs_diff(&utu, &a) < RECONSTRUCTION_TOLERANCE);
    }

    #[test]
    fn direct_upper_factor_of_the_inverse_equals_the_three_step_route() {
        for n in [1, 2, 31, 64, 65, 200] {
            let a = spd(n, 20 + n as u64);
            let mut l = a.clone();
            cholesky_lower_in_place(&mut l, n).unwrap();
            let three_step = cholesky_upper(&cholesky_inverse(&l, n).unwrap(), n).unwrap();
            let direct = upper_cholesky_of_inverse(&a, n, 0.0).unwrap();
            assert!(
                max_abs_diff(&three_step, &direct) < RECONSTRUCTION_TOLERANCE,
                "n={n}"
            );
            for i in 0..n {
                for j in 0..i {
                    assert_eq!(direct[i * n + j], 0.0);
                }
            }
            // Uᵀ·U·A = I.
            let ut = transpose(&direct, n, n).unwrap();
            let utu = matmul(&ut, &direct, n, n, n).unwrap();
            let prod = matmul(&utu, &a, n, n, n).unwrap();
            assert!(max_abs_diff(&prod, &identity(n)) < RECONSTRUCTION_TOLERANCE);
        }
        let mut indefinite = vec![1.0, 2.0, 2.0, 1.0];
        assert!(upper_cholesky_of_inverse(&indefinite, 2, 0.0).is_err());
        // ... and a shift that makes it definite is applied: [[3, 2], [2, 3]].
        assert!(upper_cholesky_of_inverse(&indefinite, 2, 2.0).is_ok());
        assert!(cholesky_lower_in_place(&mut indefinite, 2).is_err());
    }

    #[test]
    fn non_positive_definite_matrices_are_rejected() {
        // Indefinite.
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(matches!(
            cholesky_lower_in_place(&mut a, 2),
            Err(LinalgError::NotPositiveDefinite { pivot: 1, .. })
        ));
        // Exactly singular (rank 1): the second pivot is round-off, caught by the tolerance.
        let v = [0.3f64, 0.7, 1.1];
        let mut s: Vec<f64> = (0..9).map(|k| v[k / 3] * v[k % 3]).collect();
        assert!(cholesky_lower_in_place(&mut s, 3).is_err());
        // NaN.
        let mut nan = vec![f64::NAN];
        assert!(cholesky_lower_in_place(&mut nan, 1).is_err());
        // Wrong size.
        let mut short = vec![1.0; 3];
        assert!(matches!(
            cholesky_lower_in_place(&mut short, 2),
            Err(LinalgError::Shape { .. })
        ));
    }

    #[test]
    fn blocked_gemm_matches_the_naive_product() {
        let mut rng = TestRng::new(7);
        // Sizes that exercise the 4-row kernel, the row remainder and a partial panel.
        for (m, k, n) in [(1, 1, 1), (5, 3, 7), (9, 17, 300), (16, 128, 513)] {
            let a = rng.normal_vec(m * k);
            let b = rng.normal_vec(k * n);
            let c = matmul(&a, &b, m, k, n).unwrap();
            assert!(max_abs_diff(&c, &naive_matmul(&a, &b, m, k, n)) < 1e-12);
        }
    }

    #[test]
    fn strided_gemm_updates_only_the_addressed_block() {
        let mut rng = TestRng::new(8);
        let (m, k, n, ldc) = (6, 4, 5, 9);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(k * n);
        let mut c = vec![1.0f64; m * ldc];
        gemm_acc(&mut c[2..], ldc, &a, k, &b, n, m, k, n, -1.0).unwrap();
        let ab = naive_matmul(&a, &b, m, k, n);
        for i in 0..m {
            for j in 0..ldc {
                let v = c[i * ldc + j];
                if (2..2 + n).contains(&j) {
                    assert!((v - (1.0 - ab[i * n + j - 2])).abs() < 1e-12);
                } else {
                    assert_eq!(v, 1.0);
                }
            }
        }
        // Bad strides and short slices are errors.
        assert!(gemm_acc(&mut c, 3, &a, k, &b, n, m, k, n, 1.0).is_err());
        assert!(gemm_acc(&mut c[..10], ldc, &a, k, &b, n, m, k, n, 1.0).is_err());
        assert!(matmul(&a, &b, m, k + 1, n).is_err());
    }
}
