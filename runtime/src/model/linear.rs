//! A linear layer whose weight stays in the checkpoint's `[out, in]` layout: the matmul reads
//! it through a transposed view, so loading never copies or transposes a weight.

use burn::prelude::*;

/// `y = x · Wᵀ + b` with `W` stored `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[out, in]`
    pub weight: Tensor<B, 2>,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the layer to `[batch, tokens, in]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = self.weight.clone().transpose().unsqueeze::<3>();
        let y = x.matmul(w);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<3>(),
            None => y,
        }
    }
}
