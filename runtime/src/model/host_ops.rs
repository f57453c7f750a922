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

/// Elements from which [`silu_mul_in_place`] splits its work over the thread team.
const SILU_PARALLEL: usize = 1 << 16;

/// `silu(gate) · up`, elementwise into `gate` (the vectorizable `exp`). A prompt's MLP is
/// hundreds of thousands of elements: those are split over the thread team and run with
/// AVX-512 where the CPU has it (7% of a 512-token prefill on one SSE2 thread). The
/// arithmetic per element is the same whatever the split or vector width, so every element
/// equals the plain loop's bit for bit.
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up widths");
    if gate.len() >= SILU_PARALLEL {
        let chunk = gate
            .len()
            .div_ceil(crate::kernels::team::global().threads());
        crate::kernels::team::for_each_chunk_mut(gate, chunk, |i, g| {
            silu_mul_simd(g, &up[i * chunk..][..g.len()])
        });
    } else {
        silu_mul_simd(gate, up);
    }
}

fn silu_mul_simd(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::packed_vnni::available() {
        // SAFETY: AVX-512 F checked at run time.
        unsafe { silu_mul_avx512(gate, up) };
        return;
    }
    silu_mul_plain(gate, up);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    silu_mul_plain(gate, up);
}

/// The definition, inlined into each instruction-set variant.
#[inline(always)]
fn silu_mul_plain(gate: &mut [f32], up: &[f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_vector_silu_equals_the_plain_loop() {
        for len in [7, 1000, SILU_PARALLEL + 13] {
            let g: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 97.0)
                .collect();
            let u: Vec<f32> = (0..len)
                .map(|i| ((i * 104_729 % 2001) as f32 - 1000.0) / 500.0)
                .collect();
            let mut want = g.clone();
            silu_mul_plain(&mut want, &u);
            let mut got = g;
            silu_mul_in_place(&mut got, &u);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{len}"
            );
        }
    }
}
