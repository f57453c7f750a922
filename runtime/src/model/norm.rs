//! RMSNorm as Llama defines it: `x / sqrt(mean(x²) + eps) · w`, computed in f32.

use burn::prelude::*;

/// Normalizes the last dimension of `[batch, tokens, hidden]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let mean_sq = x.clone().powi_scalar(2).mean_dim(2);
    let inv = (mean_sq + eps).sqrt().recip();
    x * inv * weight.clone().unsqueeze::<3>()
}

/// LayerNorm without scale or shift over the last dimension of `[rows, features]` (OneBit's
/// output normalization; biased variance, as PyTorch).
pub fn layer_norm_no_affine<B: Backend>(x: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    let centered = x.clone() - x.mean_dim(1);
    let var = centered.clone().powi_scalar(2).mean_dim(1);
    centered * (var + eps).sqrt().recip()
}
