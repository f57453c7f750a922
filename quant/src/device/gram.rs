//! Σ x·xᵀ on a device. The host adds each window's f32 Gram matrix into an f64 sum
//! (`crate::pipeline::hessian`); f64 is slow on GPUs, so here each window's Xᵀ·X (an f32
//! matrix product) is added to an f32 sum with Kahan compensation, which keeps the
//! precision of a sum over 10⁵–10⁶ tokens within a few f32 ulps, as the host's f64 does.
//! Each operation is its own kernel, so no compiler reassociates the compensation away.

use burn::prelude::*;

use super::DeviceGram;

/// A Kahan-compensated running Σ x·xᵀ of width `n` on `B`'s device.
pub struct Gram<B: Backend> {
    n: usize,
    device: B::Device,
    sum: Tensor<B, 2>,
    /// Low-order parts lost from `sum` so far (Kahan's compensation term).
    lost: Tensor<B, 2>,
}

impl<B: Backend> Gram<B> {
    /// An empty sum for inputs of width `n`.
    pub fn new(n: usize, device: &B::Device) -> Self {
        Self {
            n,
            device: device.clone(),
            sum: Tensor::zeros([n, n], device),
            lost: Tensor::zeros([n, n], device),
        }
    }
}

impl<B: Backend> DeviceGram for Gram<B> {
    fn add(&mut self, x: &[f32]) {
        assert_eq!(x.len() % self.n.max(1), 0, "activation width");
        let t = x.len() / self.n.max(1);
        if t == 0 {
            return;
        }
        let x = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [t, self.n]), &self.device);
        let g = x.clone().transpose().matmul(x);
        let y = g - self.lost.clone();
        let total = self.sum.clone() + y.clone();
        self.lost = (total.clone() - self.sum.clone()) - y;
        self.sum = total;
    }

    fn sum(&self) -> Vec<f64> {
        let hi = self
            .sum
            .clone()
            .into_data()
            .into_vec::<f32>()
            .expect("f32 sum");
        let lo = self
            .lost
            .clone()
            .into_data()
            .into_vec::<f32>()
            .expect("f32 sum");
        hi.iter()
            .zip(&lo)
            .map(|(&h, &l)| f64::from(h) - f64::from(l))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_support::TestRng;
    use lmq_runtime::Cpu;

    /// Relative error allowed against an f64 sum: f32 Gram products (~1e-7 each) plus the
    /// compensated accumulation.
    const GRAM_REL_TOL: f64 = 1e-5;

    #[test]
    fn compensated_device_sum_matches_f64() {
        let (n, windows, t) = (24, 40, 64);
        let mut rng = TestRng::new(3);
        let mut gram = Gram::<Cpu>::new(n, &Default::default());
        let mut want = vec![0.0f64; n * n];
        for _ in 0..windows {
            // Features with very different scales, as calibration inputs have.
            let x: Vec<f32> = (0..t * n)
                .map(|i| (rng.normal() * (1.0 + (i % n) as f64).powi(2)) as f32)
                .collect();
            for r in 0..t {
                for i in 0..n {
                    for j in 0..n {
                        want[i * n + j] += f64::from(x[r * n + i]) * f64::from(x[r * n + j]);
                    }
                }
            }
            gram.add(&x);
        }
        let got = gram.sum();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= GRAM_REL_TOL * scale,
                "element {i}: {g} vs {w}"
            );
        }
    }
}
