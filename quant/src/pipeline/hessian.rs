//! GPTQ's per-linear statistic: H = 2/n · Σ x·xᵀ over the n calibration tokens that reach the
//! linear's input. Each window's Gram matrix is computed in f32 by a blocked GEMM and added
//! into an f64 sum, so the total over 10⁵–10⁶ tokens does not lose precision.

use std::borrow::Cow;

use lmq_runtime::kernels::dense_f32::gram_lower_acc_f32;

use crate::device::{DeviceGram, QuantDevice};

/// Default [`HessianOptions::token_clip`]: on SmolLM2 W4 g64 (32 HellaSwag windows, wiki2
/// first 16 × 512) clipping at 3× the median token norm took GPTQ from 53.8 to 48.8 ppl
/// (RTN 52.0); 1.5× and 10× gave 48.6 and 49.0, dropping the first token entirely 57.0.
pub const DEFAULT_TOKEN_CLIP: f32 = 3.0;

/// Default [`WindowStarts`]: on SmolLM2 W4 g64 (32 × 2048 HellaSwag tokens, wiki2 first
/// 40 × 512) weighting the first 4 positions as in 512-token windows took GPTQ from 42.06 to
/// 37.73 ppl, the figure the same tokens give as 128 × 512 windows (37.70); the first
/// position alone gave 38.72.
pub const DEFAULT_WINDOW_STARTS: WindowStarts = WindowStarts {
    positions: 4,
    reference_len: 512,
};

/// How calibration tokens enter a Hessian.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HessianOptions {
    /// Scale a token's input down to `token_clip` × the median token norm of its window
    /// when it is larger (`None`: every token as it is, plain GPTQ).
    pub token_clip: Option<f32>,
    /// Weight the first positions of every window so their share of H does not shrink as
    /// windows grow (`None`: every position counts once).
    pub window_starts: Option<WindowStarts>,
}

/// The first `positions` tokens of a window carry the model's massive activations (attention
/// sinks) into some inputs, and every later token depends on them. A window of `t` tokens
/// has one such start per `t` positions, so without this their share of H falls as windows
/// grow and GPTQ stops protecting their directions; weighting their rows by
/// max(1, t / `reference_len`) gives them the share they have in `reference_len`-token
/// windows, whatever the calibration length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStarts {
    pub positions: usize,
    pub reference_len: usize,
}

impl WindowStarts {
    /// The weight of each start row's x·xᵀ in a window of `window_len` tokens (never below 1).
    pub fn weight(&self, window_len: usize) -> f32 {
        (window_len as f32 / self.reference_len as f32).max(1.0)
    }
}

/// Running Σ x·xᵀ for one input dimension, on the host or on a device.
pub struct HessianAccumulator {
    n: usize,
    sum: Sum,
    tokens: usize,
}

/// Where the sum lives: the host's f64 lower triangle (with an f32 scratch for each
/// window's Gram matrix), or a device accumulator.
enum Sum {
    Host { sum: Vec<f64>, scratch: Vec<f32> },
    Device(Box<dyn DeviceGram>),
}

impl std::fmt::Debug for HessianAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.sum {
            Sum::Host { .. } => "host",
            Sum::Device(_) => "device",
        };
        f.debug_struct("HessianAccumulator")
            .field("n", &self.n)
            .field("on", &place)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl HessianAccumulator {
    /// An empty accumulator for inputs of width `n`.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            sum: Sum::Host {
                sum: vec![0.0; n * n],
                scratch: vec![0.0; n * n],
            },
            tokens: 0,
        }
    }

    /// An empty accumulator whose sums are computed on `device`.
    pub fn on_device(n: usize, device: &dyn QuantDevice) -> Self {
        Self {
            n,
            sum: Sum::Device(device.gram(n)),
            tokens: 0,
        }
    }

    /// Adds the rows of `x` (`[t, n]`, one row per token).
    pub fn add(&mut self, x: &[f32]) {
        assert_eq!(x.len() % self.n, 0, "activation width");
        let t = x.len() / self.n;
        let n = self.n;
        match &mut self.sum {
            Sum::Host { sum, scratch } => {
                scratch.fill(0.0);
                gram_lower_acc_f32(x, t, n, scratch);
                for i in 0..n {
                    let (s, v) = (&mut sum[i * n..][..=i], &scratch[i * n..][..=i]);
                    for (s, v) in s.iter_mut().zip(v) {
                        *s += *v as f64;
                    }
                }
            }
            Sum::Device(g) => g.add(x),
        }
        self.tokens += t;
    }

    /// Adds one window's rows `x` as `opts` says: norm clipping against the median of these
    /// rows, then the window's first rows weighted.
    pub fn add_with(&mut self, x: &[f32], opts: &HessianOptions) {
        // Copied only when a step changes it (plain GPTQ adds the rows as they are).
        let mut x = match opts.token_clip {
            Some(c) => Cow::Owned(clip_token_norms(x, self.n, c)),
            None => Cow::Borrowed(x),
        };
        if let Some(starts) = opts.window_starts {
            if starts.weight(x.len() / self.n) > 1.0 {
                weight_window_starts(x.to_mut(), self.n, &starts);
            }
        }
        self.add(&x)
    }

    /// Tokens added so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// H = 2/n Σ x·xᵀ, `[n, n]` row-major and symmetric (zero when nothing was added).
    pub fn finish(self) -> Vec<f64> {
        // Only the lower triangle is read, from either kind of sum.
        let mut sum = match self.sum {
            Sum::Host { sum, .. } => sum,
            Sum::Device(g) => g.sum(),
        };
        let f = if self.tokens > 0 {
            2.0 / self.tokens as f64
        } else {
            0.0
        };
        let n = self.n;
        for i in 0..n {
            for j in 0..i {
                let v = sum[i * n + j] * f;
                sum[i * n + j] = v;
                sum[j * n + i] = v;
            }
            sum[i * n + i] *= f;
        }
        sum
    }
}

/// Rows of `x` (`[t, n]`) whose L2 norm exceeds `clip` × the median row norm, scaled down to
/// that norm; other rows unchanged.
pub fn clip_token_norms(x: &[f32], n: usize, clip: f32) -> Vec<f32> {
    let norms: Vec<f32> = x
        .chunks_exact(n)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    let mut y = x.to_vec();
    if norms.is_empty() {
        return y;
    }
    let mut sorted = norms.clone();
    sorted.sort_by(f32::total_cmp);
    let cap = clip * sorted[sorted.len() / 2];
    for (row, &norm) in y.chunks_exact_mut(n).zip(&norms) {
        if norm > cap && norm > 0.0 {
            let f = cap / norm;
            row.iter_mut().for_each(|v| *v *= f);
        }
    }
    y
}

/// Scales the first `starts.positions` rows of one window `x` (`[t, n]`) by √weight, so each
/// adds weight × x·xᵀ to H.
pub fn weight_window_starts(x: &mut [f32], n: usize, starts: &WindowStarts) {
    let t = x.len() / n;
    let f = starts.weight(t).sqrt();
    if f != 1.0 {
        let rows = starts.positions.min(t);
        x[..rows * n].iter_mut().for_each(|v| *v *= f);
    }
}

/// Relative output error of replacing `w` by `q` on inputs with Hessian `h`:
/// tr((W−Q)·H·(W−Q)ᵀ) / tr(W·H·Wᵀ) = ‖(W−Q)X‖² / ‖WX‖². The figure that says how much of
/// the layer's output a quantizer destroyed, comparable across layers and methods.
pub fn relative_output_error(w: &[f32], q: &[f32], h: &[f32], rows: usize, n: usize) -> f64 {
    assert_eq!(w.len(), rows * n);
    assert_eq!(h.len(), n * n);
    let diff: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
    let quad = |m: &[f32]| -> f64 {
        // M·H is [rows, n]; H is symmetric, so matmul_nt(M, H) = M·Hᵀ = M·H.
        let mh = lmq_runtime::kernels::matmul_f32_nt(m, h, rows, n, n);
        mh.iter().zip(m).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let denom = quad(w);
    if denom > 0.0 {
        quad(&diff) / denom
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_is_two_over_n_gram() {
        let n = 7;
        let x: Vec<f32> = (0..5 * n)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0)
            .collect();
        let mut acc = HessianAccumulator::new(n);
        acc.add(&x[..2 * n]);
        acc.add(&x[2 * n..]);
        assert_eq!(acc.tokens(), 5);
        let h = acc.finish();
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..5)
                    .map(|t| x[t * n + i] as f64 * x[t * n + j] as f64)
                    .sum::<f64>()
                    * 2.0
                    / 5.0;
                assert!((h[i * n + j] - want).abs() < 1e-5 * want.abs().max(1.0));
            }
        }
    }

    #[test]
    fn clipping_caps_outlier_tokens_at_the_median_multiple() {
        // Norms 1, 2, 3, 100 (rows of [norm, 0]); median (upper) 3 → cap 6 at clip 2.
        let x = [1.0f32, 0.0, 0.0, 2.0, 3.0, 0.0, 60.0, 80.0];
        let y = clip_token_norms(&x, 2, 2.0);
        assert_eq!(&y[..6], &x[..6]);
        let norm = (y[6] * y[6] + y[7] * y[7]).sqrt();
        assert!((norm - 6.0).abs() < 1e-5, "{norm}");
        assert!((y[6] / y[7] - 0.75).abs() < 1e-6, "direction kept");
    }

    #[test]
    fn window_starts_weigh_as_in_reference_windows() {
        // Windows of 8 rows against a reference of 2: the first 3 rows count 4× in H; a
        // window no longer than the reference is added as it is.
        let n = 3;
        let starts = WindowStarts {
            positions: 3,
            reference_len: 2,
        };
        assert_eq!(
            (starts.weight(8), starts.weight(2), starts.weight(1)),
            (4.0, 1.0, 1.0)
        );
        let x: Vec<f32> = (0..8 * n).map(|i| (i as f32 * 0.53).sin()).collect();
        let opts = HessianOptions {
            token_clip: None,
            window_starts: Some(starts),
        };
        let mut acc = HessianAccumulator::new(n);
        acc.add_with(&x, &opts);
        let h = acc.finish();
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..8)
                    .map(|t| {
                        let w = if t < 3 { 4.0 } else { 1.0 };
                        w * x[t * n + i] as f64 * x[t * n + j] as f64
                    })
                    .sum::<f64>()
                    * 2.0
                    / 8.0;
                assert!((h[i * n + j] - want).abs() < 1e-5, "{i},{j}");
            }
        }
        let short = &x[..2 * n];
        let (mut a, mut b) = (HessianAccumulator::new(n), HessianAccumulator::new(n));
        a.add_with(short, &opts);
        b.add(short);
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn output_error_matches_direct_computation() {
        let (rows, n, t) = (3, 4, 6);
        let w: Vec<f32> = (0..rows * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let q: Vec<f32> = w.iter().map(|v| (v * 4.0).round() / 4.0).collect();
        let x: Vec<f32> = (0..t * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut acc = HessianAccumulator::new(n);
        acc.add(&x);
        let h: Vec<f32> = acc.finish().iter().map(|v| *v as f32).collect();
        let out = |m: &[f32]| -> Vec<f64> {
            (0..t)
                .flat_map(|s| {
                    let x = &x;
                    (0..rows).map(move |r| {
                        (0..n)
                            .map(|i| m[r * n + i] as f64 * x[s * n + i] as f64)
                            .sum()
                    })
                })
                .collect()
        };
        let (yw, yq) = (out(&w), out(&q));
        let num: f64 = yw.iter().zip(&yq).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f64 = yw.iter().map(|a| a * a).sum();
        let got = relative_output_error(&w, &q, &h, rows, n);
        assert!(
            (got - num / den).abs() < 1e-5 * (num / den),
            "{got} vs {}",
            num / den
        );
    }
}
