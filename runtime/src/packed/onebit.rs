//! OneBit's 1-bit linear layout (Xu et al. 2024, "OneBit: Towards Extremely Low-bit Large
//! Language Models"): a sign matrix and two full-precision value vectors,
//!
//! `y = LayerNorm( [(x ⊙ b) · Sᵀ] ⊙ a )`,  `S ∈ {−1, +1}^{out × in}`, `a ∈ R^out`, `b ∈ R^in`,
//!
//! where the LayerNorm has no parameters (mean 0, variance 1 over the output features,
//! eps [`LAYER_NORM_EPS`]) and is present when `output_norm` is set. The reference
//! implementation (`BitLinear` in the authors' code) normalizes every 1-bit linear's output
//! this way: the value vectors cannot restore the scale a full-precision matrix had after
//! one bit per weight, and the normalization keeps training stable. A bias, where the model
//! has one, is added after the normalization (by the runtime's `Linear`).
//!
//! On disk (safetensors, our own `quant_method: onebit` in `config.json`):
//! - `{prefix}.weight_sign`: int32 `[out, ceil(in / 32)]`; bit `j` of word `w` in row `o` is
//!   column `32·w + j`; a set bit means −1 (the float sign-bit convention, so the kernels flip
//!   an activation's sign with one XOR), a clear bit +1; padding bits past `in` are zero.
//! - `{prefix}.weight_out_scale`: `a`, f32 `[out]`; `{prefix}.weight_in_scale`: `b`, f32 `[in]`.

use super::PackError;

/// Signs per packed word.
pub const SIGNS_PER_WORD: usize = 32;

/// epsilon of the parameter-free output LayerNorm (PyTorch's `nn.LayerNorm` default, as in the
/// reference implementation).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A OneBit linear as the runtime keeps it: signs packed 32 per word.
#[derive(Debug, Clone, PartialEq)]
pub struct OneBitLinear {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, words_per_row]`, see the module doc for the bit order.
    pub signs: Vec<u32>,
    /// `a`: `[rows]`.
    pub out_scale: Vec<f32>,
    /// `b`: `[cols]`.
    pub in_scale: Vec<f32>,
    /// Whether the output passes through the parameter-free LayerNorm.
    pub output_norm: bool,
}

/// Words per row for `cols` inputs.
pub fn words_per_row(cols: usize) -> usize {
    cols.div_ceil(SIGNS_PER_WORD)
}

/// Packs the signs of a `[rows, cols]` matrix: bit set where the value is negative (zero
/// and +0.0 count as +1, −0.0 as −1: the float's own sign bit).
pub fn pack_signs(w: &[f32], rows: usize, cols: usize) -> Vec<u32> {
    assert_eq!(w.len(), rows * cols, "sign matrix shape");
    let wpr = words_per_row(cols);
    let mut out = vec![0u32; rows * wpr];
    for (r, row) in w.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, v) in row.iter().enumerate() {
            out[r * wpr + c / SIGNS_PER_WORD] |= (v.to_bits() >> 31) << (c % SIGNS_PER_WORD);
        }
    }
    out
}

impl OneBitLinear {
    /// Checks the parts against the shape (and that padding bits are clear).
    pub fn new(
        rows: usize,
        cols: usize,
        signs: Vec<u32>,
        out_scale: Vec<f32>,
        in_scale: Vec<f32>,
        output_norm: bool,
    ) -> Result<Self, PackError> {
        let wpr = words_per_row(cols);
        for (what, expected, got) in [
            ("weight_sign", rows * wpr, signs.len()),
            ("weight_out_scale", rows, out_scale.len()),
            ("weight_in_scale", cols, in_scale.len()),
        ] {
            if expected != got {
                return Err(PackError::ShapeMismatch {
                    what,
                    expected,
                    got,
                });
            }
        }
        let tail = cols % SIGNS_PER_WORD;
        if tail != 0 {
            let pad = !((1u32 << tail) - 1);
            for r in 0..rows {
                let index = r * wpr + wpr - 1;
                if signs[index] & pad != 0 {
                    return Err(PackError::NonZeroPadding {
                        what: "weight_sign",
                        index,
                        word: signs[index],
                    });
                }
            }
        }
        Ok(Self {
            rows,
            cols,
            signs,
            out_scale,
            in_scale,
            output_norm,
        })
    }

    /// Words per row.
    pub fn words_per_row(&self) -> usize {
        words_per_row(self.cols)
    }

    /// `S[o][c]` as ±1.
    pub fn sign(&self, o: usize, c: usize) -> f32 {
        let w = self.signs[o * self.words_per_row() + c / SIGNS_PER_WORD];
        if (w >> (c % SIGNS_PER_WORD)) & 1 == 1 {
            -1.0
        } else {
            1.0
        }
    }

    /// The `[rows, cols]` sign matrix as ±1 floats.
    pub fn unpack_signs(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for o in 0..self.rows {
            for c in 0..self.cols {
                out[o * self.cols + c] = self.sign(o, c);
            }
        }
        out
    }

    /// The matrix the layer applies before its output norm, `a[o] · S[o][c] · b[c]`, for
    /// backends that run a dense matmul (and for lookups of its rows).
    pub fn dequantize_rows_into(&self, o: usize, dst: &mut [f32]) {
        for (c, d) in dst.iter_mut().enumerate().take(self.cols) {
            *d = self.out_scale[o] * self.sign(o, c) * self.in_scale[c];
        }
    }

    /// [`OneBitLinear::dequantize_rows_into`] for every row, `[rows, cols]`.
    pub fn dequantize_ref(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for (o, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_rows_into(o, row);
        }
        out
    }

    /// `x ⊙ b` for `x` `[m, cols]`: the one multiply the kernels do per input, before the
    /// sign sums.
    pub fn scale_inputs(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "activation shape");
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(self.cols.max(1)) {
            for (v, b) in row.iter_mut().zip(&self.in_scale) {
                *v *= b;
            }
        }
        out
    }

    /// From one activation row's sign sums `Σ_c S[o][c]·(x⊙b)[c]` to the layer's output: the
    /// `a` scale, then the output norm. Shared by the reference and every kernel, so that
    /// they differ only in how the sums are added up.
    pub fn finish_row(&self, sums: &mut [f32]) {
        assert_eq!(sums.len(), self.rows, "output row length");
        for (y, a) in sums.iter_mut().zip(&self.out_scale) {
            *y *= a;
        }
        if self.output_norm {
            layer_norm_in_place(sums);
        }
    }
}

/// Parameter-free LayerNorm of one row (statistics in f64; biased variance, as PyTorch).
pub fn layer_norm_in_place(y: &mut [f32]) {
    let n = y.len() as f64;
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = y
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
    for v in y.iter_mut() {
        *v = ((f64::from(*v) - mean) * inv) as f32;
    }
}

/// Plain definition: `y = finish_row(Σ_c S[o][c] · (x[c]·b[c]))` with the sums in f64 and
/// rounded once to f32. `x` is `[m, cols]`; returns `[m, rows]`.
pub fn matmul_onebit_nt_ref(x: &[f32], w: &OneBitLinear, m: usize) -> Vec<f32> {
    let xb = w.scale_inputs(x, m);
    let (n, k) = (w.rows, w.cols);
    let mut y = vec![0.0f32; m * n];
    for r in 0..m {
        let row = &mut y[r * n..(r + 1) * n];
        for (o, out) in row.iter_mut().enumerate() {
            let mut s = 0.0f64;
            for c in 0..k {
                s += f64::from(w.sign(o, c)) * f64::from(xb[r * k + c]);
            }
            *out = s as f32;
        }
        w.finish_row(row);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_round_trip_with_ragged_width() {
        let (rows, cols) = (3, 37);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| if (i * 7) % 5 < 2 { -0.5 } else { 0.25 })
            .collect();
        let signs = pack_signs(&w, rows, cols);
        assert_eq!(signs.len(), rows * 2);
        let l =
            OneBitLinear::new(rows, cols, signs, vec![1.0; rows], vec![1.0; cols], false).unwrap();
        let back = l.unpack_signs();
        for (a, b) in w.iter().zip(&back) {
            assert_eq!(a.signum(), *b);
        }
    }

    #[test]
    fn dirty_padding_and_wrong_lengths_are_refused() {
        let err = OneBitLinear::new(1, 33, vec![0, 1 << 5], vec![1.0], vec![1.0; 33], false);
        assert!(matches!(err, Err(PackError::NonZeroPadding { .. })));
        let err = OneBitLinear::new(2, 32, vec![0], vec![1.0; 2], vec![1.0; 32], false);
        assert!(matches!(
            err,
            Err(PackError::ShapeMismatch {
                what: "weight_sign",
                ..
            })
        ));
    }

    #[test]
    fn reference_without_norm_is_the_dequantized_matmul() {
        let (rows, cols) = (4, 40);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 13 % 7) as f32) - 3.0)
            .collect();
        let l = OneBitLinear::new(
            rows,
            cols,
            pack_signs(&w, rows, cols),
            vec![0.5, 2.0, 1.0, 0.25],
            (0..cols).map(|c| 1.0 + c as f32 / 64.0).collect(),
            false,
        )
        .unwrap();
        let x: Vec<f32> = (0..cols).map(|c| (c as f32 * 0.37).sin()).collect();
        let y = matmul_onebit_nt_ref(&x, &l, 1);
        let d = l.dequantize_ref();
        for o in 0..rows {
            let want: f64 = (0..cols)
                .map(|c| f64::from(x[c]) * f64::from(d[o * cols + c]))
                .sum();
            assert!((f64::from(y[o]) - want).abs() < 1e-5 * want.abs().max(1.0));
        }
    }

    #[test]
    fn output_norm_gives_zero_mean_unit_variance() {
        let mut y: Vec<f32> = (0..64).map(|i| (i as f32).powf(1.3) - 7.0).collect();
        layer_norm_in_place(&mut y);
        let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / 64.0;
        let var = y
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 64.0;
        assert!(mean.abs() < 1e-6, "{mean}");
        assert!((var - 1.0).abs() < 1e-4, "{var}");
    }
}
