//! The decoder's elementwise and per-row ops on host slices, in f32 like the tensor path:
//! what the CPU's fused forward (`host_step`) and the calibration pipeline's host decoder
//! layer (`lmq-quant`) both compute.

use crate::kernels::fast_exp::exp_f32;

/// RMSNorm of each `w.len()`-wide row of `x`: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0.0f32; x.len()];
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * inv * wv;
        }
    }
    y
}

/// `silu(gate) · up`, elementwise into `gate` (the vectorizable `exp`).
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

/// `x += y`, elementwise (residual connections).
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
