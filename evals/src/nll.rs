//! Negative log-likelihood of targets under logits, with the reference's precision:
//! log-softmax per row in f32 arithmetic on the max-shifted logits, sums in f64.

/// Σ −log softmax(row)[target] over rows; `logits` is `[rows, vocab]` row-major.
pub fn nll_sum(logits: &[f32], vocab: usize, targets: &[u32]) -> f64 {
    assert_eq!(
        logits.len(),
        targets.len() * vocab,
        "logits/targets shape mismatch"
    );
    logits
        .chunks_exact(vocab)
        .zip(targets)
        .map(|(row, &t)| row_nll(row, t as usize))
        .sum()
}

/// −log softmax(row)[target] for one row.
pub fn row_nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    log_z - row[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_vocab() {
        let logits = vec![0.5f32; 8 * 3];
        let nll = nll_sum(&logits, 8, &[0, 3, 7]);
        assert!((nll - 3.0 * (8f64).ln()).abs() < 1e-12);
    }

    #[test]
    fn stable_for_large_logits() {
        let row = [1000.0f32, 0.0, -1000.0];
        assert!(row_nll(&row, 0).abs() < 1e-12);
        assert!((row_nll(&row, 1) - 1000.0).abs() < 1e-9);
    }
}
