//! GPTQ's column loop on a burn device: the same algorithm as [`crate::gptq::quantize`]
//! (which stays the reference and the CPU path), with the weight, the factor U and the
//! lazy-batch products on the device.
//!
//! The set-up (options, dead columns, activation order, the f64 factorisation of the damped
//! inverse Hessian, static qparams) is the host's own [`crate::gptq::prepare`]: it is
//! O(n³) once per linear and needs f64, which GPUs run slowly. What moves is the O(rows·n²)
//! part: every row of W is processed in parallel by tensor operations, one column at a time
//! inside a block (quantize, error, rank-1 update of the block's remaining columns), then the
//! block's errors update all later columns in one matrix product. Dynamic groups download
//! the group's columns on entering it and compute its qparams with the host's own function,
//! so both paths round with the very same scales.
//!
//! Summation order is the device's, so a code sitting on a rounding edge can differ from the
//! host's; the test holds the fraction of such codes and the loss to named tolerances.

use burn::prelude::*;

use crate::gptq::{prepare, GptqOptions, GptqResult};
use crate::rtn::row_qparams;
use crate::scheme::{QuantError, WeightMatrix};

fn upload<B: Backend>(data: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn download<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32 tensor data")
}

/// [`crate::gptq::quantize`] with the column loop on `device`. Same contract and result type.
pub fn quantize_on<B: Backend>(
    weight: &WeightMatrix,
    hessian: &[f64],
    opts: &GptqOptions,
    device: &B::Device,
) -> Result<GptqResult, QuantError> {
    let mut prep = prepare(weight, hessian, opts)?;
    let (rows, n, g, n_groups) = (prep.rows, prep.n, prep.g, prep.n_groups);
    let (qmin, qmax) = prep.scheme.qrange();
    let (qmin, qmax) = (qmin as f32, qmax as f32);

    let u = upload::<B>(prep.u.clone(), [n, n], device);
    let mut rest = upload::<B>(std::mem::take(&mut prep.wp), [rows, n], device);
    // Per-group scale and zero point as `[rows, 1]` columns: static ones now, dynamic ones
    // when their group is entered.
    let column = |v: Vec<f32>| upload::<B>(v, [rows, 1], device);
    let group_column = |q: &crate::scheme::QParams, k: usize, zero: bool| -> Vec<f32> {
        (0..rows)
            .map(|r| {
                let i = r * n_groups + k;
                if zero {
                    f32::from(q.zero[i])
                } else {
                    q.scale[i]
                }
            })
            .collect()
    };
    let mut group_qp: Vec<Option<(Tensor<B, 2>, Tensor<B, 2>)>> = (0..n_groups)
        .map(|k| {
            (!prep.dynamic).then(|| {
                (
                    column(group_column(&prep.qparams, k, false)),
                    column(group_column(&prep.qparams, k, true)),
                )
            })
        })
        .collect();

    let mut dq_blocks = Vec::with_capacity(prep.blocks.len());
    let mut code_blocks = Vec::with_capacity(prep.blocks.len());
    let mut loss = Tensor::<B, 2>::zeros([rows, 1], device);
    for &(i1, i2) in &prep.blocks {
        let bw = i2 - i1;
        // The block's columns, and everything after it.
        let mut block = rest.clone().slice([0..rows, 0..bw]);
        rest = rest.slice([0..rows, bw..n - i1]);
        let mut dq_cols = Vec::with_capacity(bw);
        let mut code_cols = Vec::with_capacity(bw);
        let mut err_cols = Vec::with_capacity(bw);
        for j in i1..i2 {
            let left = i2 - j;
            let grp = prep.col_group[j];
            if prep.dynamic && j % g == 0 {
                // The group's current weights, as the host reads them: the block's columns
                // with their in-block updates, and (a whole-row group longer than the block)
                // later columns without this block's pending lazy update.
                let cols = if g <= left {
                    block.clone().slice([0..rows, 0..g])
                } else {
                    Tensor::cat(
                        vec![block.clone(), rest.clone().slice([0..rows, 0..g - left])],
                        1,
                    )
                };
                let cols = download(cols);
                for r in 0..rows {
                    let k = r * n_groups + grp;
                    row_qparams(
                        &cols[r * g..(r + 1) * g],
                        g,
                        &prep.scheme,
                        &mut prep.qparams.scale[k..k + 1],
                        &mut prep.qparams.zero[k..k + 1],
                    );
                }
                group_qp[grp] = Some((
                    column(group_column(&prep.qparams, grp, false)),
                    column(group_column(&prep.qparams, grp, true)),
                ));
            }
            let (s, z) = group_qp[grp]
                .clone()
                .expect("qparams of a group are set before its first column");
            let x = block.clone().slice([0..rows, 0..1]);
            // compressed-tensors' rounding: round_half_even(clamp(x / s + z)).
            let q = (x.clone() / s.clone() + z.clone())
                .clamp(qmin, qmax)
                .round();
            let dq = (q.clone() - z) * s;
            let d = prep.u[j * n + j];
            let e = (x - dq.clone()).div_scalar(d);
            loss = loss + e.clone() * e.clone();
            if left > 1 {
                let u_row = u.clone().slice([j..j + 1, j + 1..i2]);
                block = block.slice([0..rows, 1..left]) - e.clone().matmul(u_row);
            }
            dq_cols.push(dq);
            code_cols.push(q);
            err_cols.push(e);
        }
        if i2 < n {
            // W[:, i2..] -= Err · U[i1..i2, i2..]
            let err = Tensor::cat(err_cols, 1);
            rest = rest - err.matmul(u.clone().slice([i1..i2, i2..n]));
        }
        dq_blocks.push(Tensor::cat(dq_cols, 1));
        code_blocks.push(Tensor::cat(code_cols, 1));
    }
    let wp = download(Tensor::cat(dq_blocks, 1));
    let codes_p: Vec<i8> = download(Tensor::cat(code_blocks, 1))
        .into_iter()
        .map(|c| c as i8)
        .collect();
    // Row losses summed in row order on the host, as the host loop does.
    let loss_sum = download(loss).iter().map(|&l| f64::from(l)).sum();
    Ok(prep.finish(codes_p, wp, loss_sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq;
    use crate::linalg::test_support::TestRng;
    use crate::scheme::QuantScheme;
    use lmq_runtime::Cpu;

    /// Fraction of codes allowed to differ from the host loop: the two sum the updates in
    /// different orders, which can move a value across a rounding edge (and then its
    /// neighbours' errors differ slightly too).
    const CODE_MISMATCH_MAX: f64 = 0.01;
    /// Relative difference allowed between the two losses.
    const LOSS_REL_TOL: f64 = 1e-3;

    /// A correlated layer (AR(1) features) so the error feedback matters.
    fn layer(rows: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
        let mut rng = TestRng::new(seed);
        let w: Vec<f32> = (0..rows * n)
            .map(|_| (rng.normal() * 0.05) as f32)
            .collect();
        let samples = 4 * n;
        let mut x = vec![0.0f64; n * samples];
        for s in 0..samples {
            let mut prev = 0.0;
            for i in 0..n {
                let v = 0.9 * prev + rng.normal() * (1.0 - 0.81f64).sqrt();
                x[i * samples + s] = v * (1.0 + (i % 7) as f64);
                prev = v;
            }
        }
        let mut h = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v: f64 = (0..samples)
                    .map(|s| x[i * samples + s] * x[j * samples + s])
                    .sum::<f64>()
                    * 2.0
                    / samples as f64;
                h[i * n + j] = v;
                h[j * n + i] = v;
            }
        }
        (w, h)
    }

    fn compare(opts: GptqOptions, rows: usize, n: usize, seed: u64) {
        let (w, h) = layer(rows, n, seed);
        let wm = WeightMatrix::new("t.weight", &w, rows, n).unwrap();
        let host = gptq::quantize(&wm, &h, &opts).unwrap();
        let dev = quantize_on::<Cpu>(&wm, &h, &opts, &Default::default()).unwrap();
        let differ = host
            .quantized
            .codes
            .iter()
            .zip(&dev.quantized.codes)
            .filter(|(a, b)| a != b)
            .count();
        let frac = differ as f64 / (rows * n) as f64;
        assert!(
            frac <= CODE_MISMATCH_MAX,
            "{opts:?}: {differ} of {} codes differ",
            rows * n
        );
        let rel = (host.loss - dev.loss).abs() / host.loss;
        assert!(
            rel <= LOSS_REL_TOL,
            "{opts:?}: loss {} vs {}",
            host.loss,
            dev.loss
        );
        assert_eq!(host.quantized.g_idx, dev.quantized.g_idx);
        assert_eq!(host.dead_columns, dev.dead_columns);
        // The dequantized weight is the codes' own dequantization on both paths.
        let dq = crate::rtn::dequantize(&dev.quantized).unwrap();
        assert_eq!(dq, dev.dequantized);
    }

    #[test]
    fn device_loop_matches_the_host_loop() {
        let sym4 = QuantScheme {
            bits: 4,
            group_size: Some(16),
            symmetric: true,
        };
        let asym8 = QuantScheme {
            bits: 8,
            group_size: None,
            symmetric: false,
        };
        let asym3 = QuantScheme {
            bits: 3,
            group_size: Some(32),
            symmetric: false,
        };
        for (scheme, act_order, static_groups, block) in [
            (sym4, false, false, 32),
            (sym4, true, true, 24),
            (sym4, true, false, 32),
            (asym8, true, false, 128),
            (asym3, false, false, 16),
        ] {
            let opts = GptqOptions {
                act_order,
                static_groups,
                block_size: block,
                ..GptqOptions::new(scheme)
            };
            compare(opts, 24, 96, 7);
        }
    }
}
