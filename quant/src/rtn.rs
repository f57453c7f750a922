//! Round-to-nearest (RTN) weight quantization: every group's scale and zero point from its
//! min/max, every weight rounded independently. The baseline GPTQ must beat, the fallback
//! for layers without calibration statistics, and — through [`dequantize`] — the reference
//! for what a packed checkpoint means.

use rayon::prelude::*;

use crate::scheme::{
    compute_qparams, dequantize_value, min_max, quantize_value, QParams, QuantError, QuantScheme,
    QuantizedWeight, WeightMatrix,
};

/// Rows per rayon task: one row of a small linear is too little work to schedule alone.
const ROWS_PER_TASK: usize = 8;

/// Quantizes `weight` (`[out, in]`) with `scheme` by rounding to nearest, parallel over
/// rows. Errors if the scheme is invalid or its group size does not divide `in`.
pub fn quantize(
    weight: &WeightMatrix,
    scheme: &QuantScheme,
) -> Result<QuantizedWeight, QuantError> {
    let (rows, cols) = (weight.rows(), weight.cols());
    let g = scheme.validate_for(weight.name(), cols)?;
    let n_groups = cols / g;
    let mut codes = vec![0i8; rows * cols];
    let mut qparams = QParams::zeros(rows, n_groups);
    codes
        .par_chunks_mut(cols)
        .zip(qparams.scale.par_chunks_mut(n_groups))
        .zip(qparams.zero.par_chunks_mut(n_groups))
        .zip(weight.data().par_chunks(cols))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((c, s), z), w)| {
            row_qparams(w, g, scheme, s, z);
            for (k, (cg, wg)) in c.chunks_mut(g).zip(w.chunks(g)).enumerate() {
                let zero = i32::from(z[k]);
                for (q, &v) in cg.iter_mut().zip(wg) {
                    *q = quantize_value(v, s[k], zero, scheme) as i8;
                }
            }
        });
    Ok(QuantizedWeight {
        scheme: *scheme,
        rows,
        cols,
        group_size: g,
        codes,
        qparams,
        g_idx: None,
    })
}

/// Fills one row's scales and zero points from the min/max of each contiguous group of
/// `g` values; shared with GPTQ's static groups so both use the identical definition.
pub(crate) fn row_qparams(
    row: &[f32],
    g: usize,
    scheme: &QuantScheme,
    scale: &mut [f32],
    zero: &mut [i8],
) {
    for ((group, s), z) in row.chunks(g).zip(scale.iter_mut()).zip(zero.iter_mut()) {
        let (lo, hi) = min_max(group);
        let (sc, zp) = compute_qparams(lo, hi, scheme);
        *s = sc;
        *z = zp as i8;
    }
}

/// Dequantizes codes back to `[out, in]` f32 (`(q − zero) · scale` per element, with the
/// column's group taken from `g_idx` when present): the meaning of a packed checkpoint that
/// the writer, the runtime's kernels and perplexity checks are compared against. Validates
/// the parts first, so a malformed weight is an error, not a panic.
pub fn dequantize(q: &QuantizedWeight) -> Result<Vec<f32>, QuantError> {
    q.validate("quantized weight")?;
    let (cols, n_groups) = (q.cols, q.n_groups());
    let mut out = vec![0.0f32; q.rows * cols];
    let groups: Vec<usize> = (0..cols).map(|c| q.group_of(c)).collect();
    out.par_chunks_mut(cols)
        .zip(q.codes.par_chunks(cols))
        .zip(q.qparams.scale.par_chunks(n_groups))
        .zip(q.qparams.zero.par_chunks(n_groups))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((o, c), s), z)| {
            for ((x, &code), &grp) in o.iter_mut().zip(c).zip(&groups) {
                *x = dequantize_value(i32::from(code), s[grp], i32::from(z[grp]));
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_support::TestRng;
    use crate::scheme::SUPPORTED_BITS;

    /// Slack on the half-step bound, as a fraction of the scale: f32 round-off in `w / scale +
    /// zero` and `(q − zero) · scale` with |q − zero| ≤ 255 is about 255 × 2⁻²⁴ ≈ 1.5e-5.
    const HALF_STEP_SLACK: f32 = 1e-4;

    /// A weight with the heavy-ish tails of real linears: normal entries, a few ×8 outliers.
    fn test_weight(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = TestRng::new(seed);
        (0..rows * cols)
            .map(|_| {
                let v = rng.normal() as f32 * 0.05;
                if rng.uniform() < 0.01 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn all_schemes() -> Vec<QuantScheme> {
        let mut out = Vec::new();
        for bits in SUPPORTED_BITS {
            for symmetric in [true, false] {
                for group_size in [None, Some(32)] {
                    out.push(QuantScheme {
                        bits,
                        group_size,
                        symmetric,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn error_is_at_most_half_a_step_for_every_width_symmetry_and_grouping() {
        let (rows, cols) = (16, 256);
        let w = test_weight(rows, cols, 1);
        let wm = WeightMatrix::new("w", &w, rows, cols).unwrap();
        for scheme in all_schemes() {
            let q = quantize(&wm, &scheme).unwrap();
            let deq = dequantize(&q).unwrap();
            let (qmin, qmax) = scheme.qrange();
            let mut in_range = 0usize;
            for r in 0..rows {
                for c in 0..cols {
                    let (s, z) = q.qparams.get(r, q.group_of(c)).unwrap();
                    let (lo, hi) = (dequantize_value(qmin, s, z), dequantize_value(qmax, s, z));
                    let x = w[r * cols + c];
                    let err = (x - deq[r * cols + c]).abs();
                    if (lo..=hi).contains(&x) {
                        in_range += 1;
                    }
                    // Holds inside the grid by rounding; outside it too, because the grid
                    // spans max − min and the zero-point rounding moves it by ≤ half a step.
                    assert!(
                        err <= s * (0.5 + HALF_STEP_SLACK),
                        "{scheme:?} [{r},{c}] w={x} err={err} scale={s}"
                    );
                }
            }
            assert!(in_range > rows * cols * 9 / 10, "{scheme:?}: {in_range}");
        }
    }

    #[test]
    fn codes_follow_the_scalar_definitions() {
        let (rows, cols) = (8, 64);
        let w = test_weight(rows, cols, 2);
        let wm = WeightMatrix::new("w", &w, rows, cols).unwrap();
        for scheme in all_schemes() {
            let q = quantize(&wm, &scheme).unwrap();
            let g = scheme.group_size.unwrap_or(cols);
            let (qmin, qmax) = scheme.qrange();
            for r in 0..rows {
                for k in 0..cols / g {
                    let group = &w[r * cols + k * g..r * cols + (k + 1) * g];
                    let (lo, hi) = min_max(group);
                    let (s, z) = compute_qparams(lo, hi, &scheme);
                    assert_eq!(q.qparams.get(r, k), Some((s, z)));
                    if scheme.symmetric {
                        assert_eq!(z, 0);
                    }
                    for (i, &x) in group.iter().enumerate() {
                        let code = i32::from(q.codes[r * cols + k * g + i]);
                        assert_eq!(code, quantize_value(x, s, z, &scheme));
                        assert!((qmin..=qmax).contains(&code));
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_follows_g_idx() {
        // Two groups of 2 over 4 columns, interleaved by g_idx.
        let q = QuantizedWeight {
            scheme: QuantScheme::W4A16.with_group_size(Some(2)),
            rows: 1,
            cols: 4,
            group_size: 2,
            codes: vec![1, 1, -2, 3],
            qparams: QParams {
                scale: vec![0.5, 2.0],
                zero: vec![0, 0],
                rows: 1,
                n_groups: 2,
            },
            g_idx: Some(vec![0, 1, 0, 1]),
        };
        assert_eq!(dequantize(&q).unwrap(), vec![0.5, 2.0, -1.0, 6.0]);
        let mut bad = q.clone();
        bad.g_idx = Some(vec![0, 2, 0, 1]);
        assert!(matches!(
            dequantize(&bad),
            Err(QuantError::GroupIndexOutOfRange { column: 1, .. })
        ));
        let mut short = q.clone();
        short.codes.pop();
        assert!(matches!(
            dequantize(&short),
            Err(QuantError::ShapeMismatch { what: "codes", .. })
        ));
        let mut out_of_range = q;
        out_of_range.codes[0] = 9;
        assert!(dequantize(&out_of_range).is_err());
    }

    #[test]
    fn non_dividing_group_is_an_error_naming_the_tensor() {
        let w = vec![0.1f32; 2 * 576];
        let wm = WeightMatrix::new("model.layers.3.mlp.up_proj.weight", &w, 2, 576).unwrap();
        let err = quantize(&wm, &QuantScheme::W4A16).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("model.layers.3.mlp.up_proj.weight"), "{msg}");
        assert!(msg.contains("32, 64, 96, 192, 288, 576"), "{msg}");
    }
}
