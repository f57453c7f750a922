//! The GPU kernels checked against the CPU's scalar references on seeded random weights,
//! with named tolerances. CI has no GPU and cubecl's CPU runtime does not build offline, so
//! these run where a GPU is: `gpu-check` prints them, and `runtime/tests/gpu_kernels.rs`
//! runs them under `LMQ_GPU=1`.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{CudaDevice, Gpu};
use crate::kernels::int8::{matmul_i8_ref, quantize_per_token};
use crate::kernels::packed_q::matmul_packed_nt_ref;
use crate::model::{DenseWeight, HostWeight, LinearBackend};
use crate::packed::onebit::{matmul_onebit_nt_ref, pack_signs, OneBitLinear};
use crate::packed::{ActQuant, Int8Linear, PackedLinear};

/// Packed GEMV against the f64 reference: f32 sums of up to a few
/// thousand terms in another order, relative to the output's largest magnitude.
pub const PACKED_REL_TOL: f32 = 1e-5;
/// Dense f32 GEMM against the f64 reference, same measure. burn-cuda runs f32 matmuls on
/// tensor cores in TF32 (10-bit mantissa inputs, f32 sums: cubek-matmul `adjust_dtypes`), so
/// this is TF32 rounding, not f32.
pub const TF32_REL_TOL: f32 = 5e-3;
/// Fused elementwise kernels (RMSNorm, rotary embedding) and the decode attention against
/// f64 host references: f32 arithmetic in another order.
pub const FUSED_REL_TOL: f32 = 1e-5;
/// W8A8: integer sums are exact and the float epilogue is the CPU's, so the results must be
/// identical up to the last bit of the epilogue.
pub const INT8_REL_TOL: f32 = 1e-6;

/// One comparison.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// max |gpu − ref| / max |ref|.
    pub rel_err: f32,
    pub tolerance: f32,
}

impl Check {
    /// Whether the error is inside the tolerance.
    pub fn passed(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.tolerance
    }
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "result length");
    let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-30);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |a, (g, w)| a.max((g - w).abs()));
    if got.iter().any(|v| !v.is_finite()) {
        f32::NAN
    } else {
        diff / scale
    }
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// A random packed weight: codes over the whole range, scales ~1e-2, optional zero points.
pub fn random_packed(
    rng: &mut StdRng,
    bits: u8,
    rows: usize,
    cols: usize,
    group: usize,
    asym: bool,
) -> PackedLinear {
    let (lo, hi) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
    let codes: Vec<i8> = (0..rows * cols)
        .map(|_| rng.gen_range(lo..=hi) as i8)
        .collect();
    let n_groups = cols.div_ceil(group);
    let scale: Vec<f32> = (0..rows * n_groups)
        .map(|_| rng.gen_range(0.005f32..0.02))
        .collect();
    let zero = asym.then(|| {
        (0..rows * n_groups)
            .map(|_| rng.gen_range(lo..=hi) as i8)
            .collect()
    });
    PackedLinear::from_codes(bits, rows, cols, group, &codes, scale, zero, None)
        .expect("valid random packed weight")
}

fn gpu_apply(x: &[f32], m: usize, k: usize, w: HostWeight, device: &CudaDevice) -> Vec<f32> {
    let gw = Gpu::upload(w, device);
    let xt = Tensor::<Gpu, 2>::from_data(TensorData::new(x.to_vec(), [m, k]), device);
    Gpu::apply_linear(xt, &gw)
        .into_data()
        .into_vec::<f32>()
        .expect("f32 output")
}

/// Runs every kernel check on `device`.
pub fn run_all(device: &CudaDevice) -> Vec<Check> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut checks = Vec::new();
    // (bits, rows, cols, group, asym): SmolLM2/Qwen-like widths, a per-channel row whose
    // width is not a multiple of the pack factor, and 2-bit.
    let shapes = [
        (4u8, 1536usize, 576usize, 64usize, false),
        (4, 576, 1536, 128, true),
        (8, 896, 896, 128, false),
        (8, 300, 100, 100, true),
        (2, 256, 512, 64, true),
        (4, 200, 100, 100, false),
        // Wider than the shared-memory GEMV stages: the plain kernel.
        (4, 64, 12800, 128, true),
    ];
    for &(bits, rows, cols, group, asym) in &shapes {
        let w = random_packed(&mut rng, bits, rows, cols, group, asym);
        for m in [1usize, 5, 16, 17, 64] {
            let x = random(&mut rng, m * cols);
            let want = matmul_packed_nt_ref(&x, &w, m);
            let got = gpu_apply(&x, m, cols, HostWeight::Packed(w.clone().into()), device);
            let gemv = m <= super::linear::GEMV_MAX_ROWS;
            checks.push(Check {
                name: format!(
                    "packed w{bits}{} g{group} {rows}x{cols}, m={m} ({})",
                    if asym { " asym" } else { "" },
                    if gemv { "gemv" } else { "dequant+gemm, tf32" }
                ),
                rel_err: rel_err(&got, &want),
                tolerance: if gemv { PACKED_REL_TOL } else { TF32_REL_TOL },
            });
        }
    }
    for &(rows, cols) in &[(576usize, 1536usize), (1536, 576), (64, 101)] {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| rng.gen_range(-128i32..=127) as i8)
            .collect();
        let scale: Vec<f32> = (0..rows).map(|_| rng.gen_range(0.001f32..0.01)).collect();
        let w = Int8Linear::new(rows, cols, codes, scale).expect("int8 weight");
        for m in [1usize, 7, 64] {
            let x = random(&mut rng, m * cols);
            let want = matmul_i8_ref(&quantize_per_token(&x, m, cols, ActQuant::Symmetric), &w);
            let got = gpu_apply(&x, m, cols, HostWeight::Int8(w.clone().into()), device);
            checks.push(Check {
                name: format!("int8 W8A8 {rows}x{cols}, m={m}"),
                rel_err: rel_err(&got, &want),
                tolerance: INT8_REL_TOL,
            });
        }
    }
    // OneBit: widths with and without a ragged last word, with and without the output norm.
    for &(rows, cols, norm) in &[
        (576usize, 1536usize, true),
        (1536, 576, false),
        (64, 100, true),
    ] {
        let w = OneBitLinear::new(
            rows,
            cols,
            pack_signs(&random(&mut rng, rows * cols), rows, cols),
            (0..rows).map(|_| rng.gen_range(0.01f32..0.1)).collect(),
            (0..cols).map(|_| rng.gen_range(0.5f32..2.0)).collect(),
            norm,
        )
        .expect("onebit weight");
        for m in [1usize, 5, 64] {
            let x = random(&mut rng, m * cols);
            let want = matmul_onebit_nt_ref(&x, &w, m);
            let got = gpu_apply(&x, m, cols, HostWeight::OneBit(w.clone().into()), device);
            let gemv = m <= super::linear::GEMV_MAX_ROWS;
            checks.push(Check {
                name: format!(
                    "onebit {rows}x{cols}{}, m={m} ({})",
                    if norm { " +norm" } else { "" },
                    if gemv {
                        "sign gemv"
                    } else {
                        "signs+gemm, tf32"
                    }
                ),
                rel_err: rel_err(&got, &want),
                tolerance: if gemv { PACKED_REL_TOL } else { TF32_REL_TOL },
            });
        }
    }
    for m in [1usize, 64] {
        let (rows, cols) = (576usize, 1536usize);
        let wd = random(&mut rng, rows * cols);
        let x = random(&mut rng, m * cols);
        let mut want = vec![0.0f32; m * rows];
        for r in 0..m {
            for o in 0..rows {
                let s: f64 = (0..cols)
                    .map(|c| f64::from(x[r * cols + c]) * f64::from(wd[o * cols + c]))
                    .sum();
                want[r * rows + o] = s as f32;
            }
        }
        let got = gpu_apply(
            &x,
            m,
            cols,
            HostWeight::Dense(DenseWeight::new(wd, rows, cols)),
            device,
        );
        checks.push(Check {
            name: format!("dense f32 {rows}x{cols}, m={m} (tf32)"),
            rel_err: rel_err(&got, &want),
            tolerance: TF32_REL_TOL,
        });
    }
    checks.extend(fused_checks(&mut rng, device));
    checks
}

fn to_host<const D: usize>(t: Tensor<Gpu, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32")
}

fn fused_checks(rng: &mut StdRng, device: &CudaDevice) -> Vec<Check> {
    use super::fused;
    let mut checks = Vec::new();
    // RMSNorm over [2, 3, 576].
    let (b, t, d, eps) = (2usize, 3usize, 576usize, 1e-5f64);
    let x = random(rng, b * t * d);
    let w = random(rng, d);
    let mut want = vec![0.0f32; x.len()];
    for (row, out) in x.chunks_exact(d).zip(want.chunks_exact_mut(d)) {
        let ms = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &wv) in out.iter_mut().zip(row).zip(&w) {
            *o = (f64::from(v) * inv * f64::from(wv)) as f32;
        }
    }
    let xt = Tensor::<Gpu, 3>::from_data(TensorData::new(x, [b, t, d]), device);
    let wt = Tensor::<Gpu, 1>::from_data(TensorData::new(w, [d]), device);
    checks.push(Check {
        name: format!("fused rms_norm [{b}, {t}, {d}]"),
        rel_err: rel_err(&to_host(fused::rms_norm(xt, &wt, eps)), &want),
        tolerance: FUSED_REL_TOL,
    });
    // silu(g) · u over [2, 3, 1536].
    let f = 1536usize;
    let g = random(rng, b * t * f);
    let u = random(rng, b * t * f);
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        })
        .collect();
    let gt = Tensor::<Gpu, 3>::from_data(TensorData::new(g, [b, t, f]), device);
    let ut = Tensor::<Gpu, 3>::from_data(TensorData::new(u, [b, t, f]), device);
    checks.push(Check {
        name: format!("fused silu·mul [{b}, {t}, {f}]"),
        rel_err: rel_err(&to_host(fused::silu_mul(gt, ut)), &want),
        tolerance: FUSED_REL_TOL,
    });
    // Rotary embedding of [2, 3, 9·64] from position 5, against the CPU's host rotation.
    let (heads, hd, start) = (9usize, 64usize, 5usize);
    let rope = crate::model::Rope::<Gpu>::new(1e5, hd, 64, device);
    let x = random(rng, b * t * heads * hd);
    let mut want = vec![0.0f32; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            let row = (bi * t + ti) * heads * hd;
            let mut r = x[row..row + heads * hd].to_vec();
            rope.apply_host(&mut r, start + ti);
            // Heads-major [b, heads, t, hd], the layout the fused op returns.
            for h in 0..heads {
                let dst = ((bi * heads + h) * t + ti) * hd;
                want[dst..dst + hd].copy_from_slice(&r[h * hd..(h + 1) * hd]);
            }
        }
    }
    let xt = Tensor::<Gpu, 3>::from_data(TensorData::new(x, [b, t, heads * hd]), device);
    let (cos, sin) = rope.tables();
    checks.push(Check {
        name: format!("fused rope [{b}, {t}, {heads}×{hd}] from {start}"),
        rel_err: rel_err(
            &to_host(fused::rope_heads(xt, cos, sin, heads, start)),
            &want,
        ),
        tolerance: FUSED_REL_TOL,
    });
    // Decode attention: 9 query heads over 3 KV heads, 11 of 16 cached positions.
    let (kvh, cap, len) = (3usize, 16usize, 11usize);
    let q = random(rng, heads * hd);
    let k = random(rng, kvh * cap * hd);
    let v = random(rng, kvh * cap * hd);
    let mut want = vec![0.0f32; heads * hd];
    let scale = 1.0 / (hd as f64).sqrt();
    for h in 0..heads {
        let g = h / (heads / kvh);
        let scores: Vec<f64> = (0..len)
            .map(|j| {
                (0..hd)
                    .map(|e| f64::from(q[h * hd + e]) * f64::from(k[(g * cap + j) * hd + e]))
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for dd in 0..hd {
            let acc: f64 = (0..len)
                .map(|j| e[j] * f64::from(v[(g * cap + j) * hd + dd]))
                .sum();
            want[h * hd + dd] = (acc / sum) as f32;
        }
    }
    let qt = Tensor::<Gpu, 4>::from_data(TensorData::new(q, [1, heads, 1, hd]), device);
    let kt = Tensor::<Gpu, 4>::from_data(TensorData::new(k, [1, kvh, cap, hd]), device);
    let vt = Tensor::<Gpu, 4>::from_data(TensorData::new(v, [1, kvh, cap, hd]), device);
    checks.push(Check {
        name: format!("fused decode attention {heads}/{kvh} heads, {len} of {cap} positions"),
        rel_err: rel_err(&to_host(fused::decode_attention(qt, &kt, &vt, len)), &want),
        tolerance: FUSED_REL_TOL,
    });
    checks
}
