//! Rotary position embeddings in the HF ("rotate half") layout, with cos/sin tables built the
//! way transformers builds them (f32 inverse frequencies, f32 angles) so long windows agree
//! with the reference to the last bits.

use std::sync::Arc;

use burn::prelude::*;

/// Precomputed cos/sin tables `[max_positions, head_dim]`, as tensors for whole-sequence
/// passes and on the host for batched decoding, where every sequence sits at its own
/// position.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    host: Arc<(Vec<f32>, Vec<f32>)>,
    head_dim: usize,
}

/// cos/sin tables as plain vectors, `[positions, head_dim]` row-major.
pub fn rope_tables(theta: f64, head_dim: usize, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    let mut cos = vec![0.0f32; positions * head_dim];
    let mut sin = vec![0.0f32; positions * head_dim];
    for p in 0..positions {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = (p as f32 * f) as f64;
            let (s, c) = angle.sin_cos();
            for j in [i, i + half] {
                cos[p * head_dim + j] = c as f32;
                sin[p * head_dim + j] = s as f32;
            }
        }
    }
    (cos, sin)
}

impl<B: Backend> Rope<B> {
    /// Builds tables for positions `0..positions`.
    pub fn new(theta: f64, head_dim: usize, positions: usize, device: &B::Device) -> Self {
        let (cos, sin) = rope_tables(theta, head_dim, positions);
        let shape = [positions, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos.clone(), shape), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), shape), device),
            host: Arc::new((cos, sin)),
            head_dim,
        }
    }

    /// Rotates, in place, one token's heads (`[heads, head_dim]` row-major) at position
    /// `pos`: the same arithmetic as [`Rope::apply`] (`x·cos + rotate_half(x)·sin`).
    pub fn apply_host(&self, x: &mut [f32], pos: usize) {
        let d = self.head_dim;
        let half = d / 2;
        let cos = &self.host.0[pos * d..][..d];
        let sin = &self.host.1[pos * d..][..d];
        for head in x.chunks_exact_mut(d) {
            for j in 0..half {
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * cos[j] + -b * sin[j];
                head[j + half] = b * cos[j + half] + a * sin[j + half];
            }
        }
    }

    /// Number of positions the tables cover.
    /// Dimensions per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The `[positions, head_dim]` cos and sin tables on the device (fused kernels read them).
    pub fn tables(&self) -> (&Tensor<B, 2>, &Tensor<B, 2>) {
        (&self.cos, &self.sin)
    }

    /// Splits `[b, t, heads·hd]` into heads `[b, heads, t, hd]` and applies [`Rope::apply`]:
    /// the generic form of `LinearBackend::rope_heads`.
    pub fn apply_split(&self, x: Tensor<B, 3>, heads: usize, start: usize) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        self.apply(
            x.reshape([b, t, heads, self.head_dim]).swap_dims(1, 2),
            start,
        )
    }

    /// [`Rope::apply`] with each of the `n` tokens of `x` (`[b, heads, n, hd]`) at its own
    /// position (Medusa tree nodes sit at their depth).
    pub fn apply_positions(&self, x: Tensor<B, 4>, positions: &[usize]) -> Tensor<B, 4> {
        let half = self.head_dim / 2;
        let device = x.device();
        let idx: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [positions.len()]), &device);
        let cos = self.cos.clone().select(0, idx.clone()).unsqueeze::<4>();
        let sin = self.sin.clone().select(0, idx).unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `[batch, heads, tokens, head_dim]` whose first token sits at `start`.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let t = x.dims()[2];
        let half = self.head_dim / 2;
        let cos = self.cos.clone().narrow(0, start, t).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, start, t).unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}
