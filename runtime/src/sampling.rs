//! Choosing the next token from logits: greedy, or temperature with top-k / top-p, from a
//! seeded generator so a run can be reproduced.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = no limit).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The distribution sampling draws from: softmax(logits / T) restricted to top-k and
/// top-p, renormalized. Returned as (token, probability) sorted by probability.
pub fn filtered_distribution(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    let t = params.temperature.max(1e-6) as f64;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if params.top_k > 0 {
        idx.truncate(params.top_k);
    }
    let max = logits[idx[0] as usize] as f64;
    let mut probs: Vec<(u32, f64)> = idx
        .into_iter()
        .map(|i| (i, ((logits[i as usize] as f64 - max) / t).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            acc += p.1;
            if acc >= params.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
    }
    probs
}

/// The token of a normalized (token, probability) list that the uniform `u` in [0, 1) falls
/// on (the last one when rounding leaves the sum just below `u`).
pub fn draw(dist: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(tok, p) in dist {
        acc += p;
        if u < acc {
            return tok;
        }
    }
    dist.last().map(|d| d.0).unwrap_or(0)
}

/// Stateful sampler: one per generation, so the seed fixes the whole sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// The parameters it samples with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Its generator (speculative verification draws from the same stream).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let dist = filtered_distribution(logits, &self.params);
        draw(&dist, self.rng.gen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_support() {
        let logits = [1.0, 4.0, 3.0, 2.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        let d = filtered_distribution(&logits, &p);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let d = filtered_distribution(&logits, &p);
        assert_eq!(d.len(), 1); // p(token 1) = 0.64 already reaches 0.5
    }

    #[test]
    fn same_seed_same_samples_and_frequencies_follow_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // probs 1/6, 2/6, 3/6
        let params = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let (mut a, mut b) = (Sampler::new(params.clone()), Sampler::new(params));
        let mut counts = [0usize; 3];
        for _ in 0..60_000 {
            let x = a.sample(&logits);
            assert_eq!(x, b.sample(&logits));
            counts[x as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let expected = 60_000.0 * (i + 1) as f64 / 6.0;
            assert!(
                (c as f64 - expected).abs() < 5.0 * expected.sqrt(),
                "{counts:?}"
            );
        }
    }
}
