//! SmoothQuant (Xiao et al. 2023) as pure functions: move the activations' outlier channels
//! into the weights so both quantize to int8. Per input channel `j` of the linears reading
//! one norm's output, `s_j = range(X_j)^α / range(W_j)^(1−α)`; the norm's weight is divided
//! by `s` and the linears' columns multiplied by it (the fold in `pipeline::mappings`), which
//! leaves the float function unchanged. Ranges as llm-compressor's `SmoothQuantModifier`
//! computes them: the activation's `max − min` over calibration tokens, and `2·max|W_j|`
//! over the rows of every balanced linear.

use lmq_runtime::kernels::int8::quantize_per_token;
use lmq_runtime::packed::ActQuant;

/// Default migration strength (the paper's and the default; llm-compressor's
/// examples use 0.8).
pub const DEFAULT_ALPHA: f32 = 0.5;

/// Steps of the per-layer `α` search over `[0, 1]` (0.1 apart).
pub const DEFAULT_ALPHA_GRID: usize = 10;

/// What W8A8 makes of activations `x` (`[t, cols]`): the runtime's per-token int8 codes
/// (`lmq_runtime::kernels::int8::quantize_per_token`, the one definition), dequantized.
pub fn fake_quantize_per_token(x: &[f32], cols: usize, mode: ActQuant) -> Vec<f32> {
    let q = quantize_per_token(x, x.len() / cols, cols, mode);
    q.codes
        .chunks_exact(cols)
        .zip(q.scale.iter().zip(&q.zero))
        .flat_map(|(row, (&s, &z))| row.iter().map(move |&c| (i32::from(c) - z) as f32 * s))
        .collect()
}

/// The outcome of one mapping's `α` search.
#[derive(Debug, Clone)]
pub struct AlphaChoice {
    /// The strength chosen (`None`: leaving the channels alone was best).
    pub alpha: Option<f32>,
    /// Its scales (all 1 for `None`).
    pub scales: Vec<f32>,
    /// The loss without smoothing and at the choice.
    pub loss_unsmoothed: f64,
    pub loss: f64,
}

/// Tries no smoothing and `α = i / grid` for `i = 0..=grid`, keeping the scales whose
/// `loss` (the quantized block's output error) is lowest: a per-layer choice in place of
/// one global strength, as SmoothQuant's later auto-tuning does.
pub fn search_alpha(
    act_range: &[f32],
    w_range: &[f32],
    grid: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> AlphaChoice {
    let ones = vec![1.0f32; act_range.len()];
    let loss_unsmoothed = loss(&ones);
    let mut best = AlphaChoice {
        alpha: None,
        scales: ones,
        loss_unsmoothed,
        loss: loss_unsmoothed,
    };
    let grid = grid.max(1);
    for i in 0..=grid {
        let alpha = i as f32 / grid as f32;
        let s = smoothing_scales(act_range, w_range, alpha);
        let l = loss(&s);
        if l < best.loss {
            best = AlphaChoice {
                alpha: Some(alpha),
                scales: s,
                loss_unsmoothed,
                loss: l,
            };
        }
    }
    best
}

/// Running per-channel minimum and maximum of activations.
#[derive(Debug, Clone)]
pub struct ChannelRange {
    min: Vec<f32>,
    max: Vec<f32>,
}

impl ChannelRange {
    /// An empty range for `n` channels.
    pub fn new(n: usize) -> Self {
        Self {
            min: vec![f32::INFINITY; n],
            max: vec![f32::NEG_INFINITY; n],
        }
    }

    /// Adds the rows of `x` (`[t, n]`).
    pub fn add(&mut self, x: &[f32]) {
        let n = self.min.len();
        assert_eq!(x.len() % n, 0, "input is not a whole number of rows");
        for row in x.chunks_exact(n) {
            for ((lo, hi), &v) in self.min.iter_mut().zip(self.max.iter_mut()).zip(row) {
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        }
    }

    /// `max − min` per channel (0 for channels never seen).
    pub fn range(&self) -> Vec<f32> {
        self.min
            .iter()
            .zip(&self.max)
            .map(|(lo, hi)| if hi >= lo { hi - lo } else { 0.0 })
            .collect()
    }
}

/// `2·max_rows |W[:, j]|` over every row of every weight (`[rows_i, cols]`).
pub fn weight_channel_range(weights: &[&[f32]], cols: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; cols];
    for w in weights {
        assert_eq!(w.len() % cols, 0, "weight is not [rows, cols]");
        for row in w.chunks_exact(cols) {
            for (a, v) in m.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    }
    m.iter().map(|v| 2.0 * v).collect()
}

/// The smoothing scales: `act^α / w^(1−α)` where the weight range is positive, the
/// activation range itself where it is not (llm-compressor's rule), and 1 where that would
/// be zero or not finite (a channel that never fires is left alone).
pub fn smoothing_scales(act_range: &[f32], w_range: &[f32], alpha: f32) -> Vec<f32> {
    act_range
        .iter()
        .zip(w_range)
        .map(|(&a, &w)| {
            let s = if w > 0.0 {
                a.powf(alpha) / w.powf(1.0 - alpha)
            } else {
                a
            };
            if s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_scales_follow_the_definitions() {
        let mut r = ChannelRange::new(3);
        r.add(&[1.0, -2.0, 0.0, 3.0, 4.0, 0.0]);
        assert_eq!(r.range(), vec![2.0, 6.0, 0.0]);
        let w = weight_channel_range(&[&[0.5, -1.0, 0.0], &[0.25, 0.5, 0.0]], 3);
        assert_eq!(w, vec![1.0, 2.0, 0.0]);
        let s = smoothing_scales(&r.range(), &w, 0.5);
        assert!((s[0] - (2.0f32).sqrt()).abs() < 1e-6);
        assert!((s[1] - (6.0f32 / 2.0).sqrt()).abs() < 1e-6);
        assert_eq!(s[2], 1.0, "a dead channel is not scaled");
        // α = 1 moves everything into the weights: s is the activation range.
        assert_eq!(smoothing_scales(&[4.0], &[2.0], 1.0), vec![4.0]);
    }

    #[test]
    fn per_token_fake_quantization_keeps_each_rows_absmax_and_grid() {
        let x = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 3.0, 1.0, -2.0];
        let q = fake_quantize_per_token(&x, 3, ActQuant::Symmetric);
        // The absmax of each row is exact; the rest lies on its row's grid of absmax / 127.
        assert_eq!(q[0], 1.0);
        assert_eq!(&q[3..6], &[0.0, 0.0, 0.0], "a zero row stays zero");
        assert_eq!(q[6], 3.0);
        for (row, amax) in [(0, 1.0f32), (2, 3.0)] {
            for j in 0..3 {
                let v = q[row * 3 + j];
                let step = amax / 127.0;
                assert!((v / step - (v / step).round()).abs() < 1e-4, "{v}");
                assert!((v - x[row * 3 + j]).abs() <= step / 2.0 + 1e-6);
            }
        }
        // Asymmetric: each row's ends are exact (0 too), the rest within half of the
        // row's (max − min) / 255.
        let q = fake_quantize_per_token(&x, 3, ActQuant::Asymmetric);
        assert_eq!(&q[3..6], &[0.0, 0.0, 0.0], "a zero row stays zero");
        for (row, lo, hi) in [(0, -0.5f32, 1.0f32), (2, -2.0, 3.0)] {
            let step = (hi - lo) / 255.0;
            for j in 0..3 {
                assert!((q[row * 3 + j] - x[row * 3 + j]).abs() <= step / 2.0 + 1e-6);
            }
        }
    }

    #[test]
    fn alpha_search_keeps_the_lowest_loss_and_can_leave_channels_alone() {
        let act = [4.0, 1.0];
        let w = [1.0, 1.0];
        // A loss that is lowest where s[0] = 4^0.3.
        let target = 4.0f32.powf(0.3);
        let c = search_alpha(&act, &w, 10, |s| ((s[0] - target) as f64).powi(2));
        assert_eq!(c.alpha, Some(0.3));
        assert!(c.loss < c.loss_unsmoothed);
        assert_eq!(c.scales, smoothing_scales(&act, &w, 0.3));
        // A loss that every smoothing makes worse keeps unit scales.
        let c = search_alpha(&act, &w, 10, |s| {
            s.iter().map(|v| (v - 1.0).abs() as f64).sum()
        });
        assert_eq!(c.alpha, None);
        assert_eq!(c.scales, vec![1.0, 1.0]);
        assert_eq!(c.loss, 0.0);
    }

    #[test]
    fn smoothing_flattens_outlier_channels() {
        // One channel 50x the others: after dividing by s its range is close to theirs.
        let act = [1.0, 1.2, 50.0, 0.8];
        let w = [0.1, 0.1, 0.1, 0.1];
        let s = smoothing_scales(&act, &w, 0.5);
        let smoothed: Vec<f32> = act.iter().zip(&s).map(|(a, s)| a / s).collect();
        let spread = |v: &[f32]| {
            v.iter().cloned().fold(f32::MIN, f32::max) / v.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(
            spread(&smoothed) < spread(&act).sqrt() + 1e-3,
            "{smoothed:?}"
        );
    }
}
