//! RMSNorm as Llama defines it: `x / sqrt(mean(x²) + eps) · w`, computed in f32.

use burn::prelude::*;

/// Normalizes the last dimension of `[batch, tokens, hidden]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let mean_sq = x.clone().powi_scalar(2).mean_dim(2);
    let inv = (mean_sq + eps).sqrt().recip();
    x * inv * weight.clone().unsqueeze::<3>()
}
