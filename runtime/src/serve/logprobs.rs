//! Log-probabilities the API reports: of the raw model distribution (before temperature and
//! top-k/top-p, as OpenAI and vLLM report them), in f64 so a token's value and the same token
//! in the top list are the identical number (lm-eval's `is_greedy` compares them exactly).

/// One position's log-probability of the chosen token and the `n` most likely ones.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// `(token, logprob)` sorted by decreasing probability (first on ties: lowest id).
    pub top: Vec<(u32, f32)>,
}

/// log Σ exp(logits), computed in f64 around the maximum.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln()
}

/// The chosen token's log-probability and the top `n` under `logits`.
pub fn token_logprob(logits: &[f32], chosen: u32, n: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    let mut top: Vec<u32> = Vec::with_capacity(n + 1);
    if n > 0 {
        // Partial selection: keep the n best seen so far, sorted.
        for (i, &x) in logits.iter().enumerate() {
            if top.len() == n && x <= logits[top[n - 1] as usize] {
                continue;
            }
            let at = top.partition_point(|&j| logits[j as usize] >= x);
            top.insert(at, i as u32);
            top.truncate(n);
        }
    }
    TokenLogprob {
        id: chosen,
        logprob: lp(chosen as usize),
        top: top.into_iter().map(|i| (i, lp(i as usize))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_softmax_and_sorts_top() {
        let logits = [0.0f32, 2.0, 1.0, 2.0, -3.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let t = token_logprob(&logits, 2, 3);
        assert!((t.logprob as f64 - (1.0f64.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        // The chosen token's value equals its entry in the top list exactly.
        assert_eq!(t.top[2].1, t.logprob);
        let probs: f64 = (0..5)
            .map(|i| (token_logprob(&logits, i, 0).logprob as f64).exp())
            .sum();
        assert!((probs - 1.0).abs() < 1e-6);
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
    }
}
