//! Verification of proposed tokens as small pure functions (the target model's distributions
//! in, accepted count and next token out), so exactness can be tested without a model.
//!
//! Greedy: accept the longest prefix of the proposal that equals the target's argmax at each
//! position, then emit the target's argmax after it. Output is token-for-token plain greedy
//! decoding.
//!
//! Sampling (Leviathan et al. 2023, Chen et al. 2023): accept proposal token x with
//! probability min(1, p(x)/q(x)); at the first rejection emit a sample of norm(max(0, p − q));
//! when everything is accepted, a bonus sample from the target's next distribution. Each
//! emitted token is distributed exactly as the target's. A deterministic proposer (prompt
//! lookup) has q = a point mass on x.

use rand::Rng;

use crate::sampling::{argmax, draw};

/// A distribution over the vocabulary as (token, probability) pairs with positive
/// probabilities (what `sampling::filtered_distribution` returns).
pub type Dist = [(u32, f64)];

/// Probability of `tok` under `d` (0 outside its support).
pub fn prob(d: &Dist, tok: u32) -> f64 {
    d.iter().find(|e| e.0 == tok).map_or(0.0, |e| e.1)
}

/// Greedy verification. `target_logits[i]` are the target's logits after the context plus
/// the first `i` proposed tokens (`proposal.len() + 1` rows). Returns how many proposed
/// tokens are accepted and the target's own next token after them.
pub fn verify_greedy(proposal: &[u32], target_logits: &[&[f32]]) -> (usize, u32) {
    assert_eq!(
        target_logits.len(),
        proposal.len() + 1,
        "one row per proposed token + 1"
    );
    let mut n = 0;
    while n < proposal.len() && argmax(target_logits[n]) == proposal[n] {
        n += 1;
    }
    (n, argmax(target_logits[n]))
}

/// norm(max(0, p − q)): where the target has more mass than the proposer.
pub fn residual(p: &Dist, q: &Dist) -> Vec<(u32, f64)> {
    let mut r: Vec<(u32, f64)> = p
        .iter()
        .map(|&(t, pt)| (t, (pt - prob(q, t)).max(0.0)))
        .filter(|e| e.1 > 0.0)
        .collect();
    if r.is_empty() {
        // p == q up to rounding: any sample of p is right.
        return p.to_vec();
    }
    let total: f64 = r.iter().map(|e| e.1).sum();
    r.iter_mut().for_each(|e| e.1 /= total);
    r
}

/// Sampling verification. `q[i]` is the proposer's distribution for `proposal[i]` (a point
/// mass for deterministic proposers), `p[i]` the target's after the context plus the first
/// `i` proposed tokens (`proposal.len() + 1` rows). Returns the accepted count and the next
/// token (a residual sample at the first rejection, else a bonus sample from the last row).
pub fn verify_sampling(
    proposal: &[u32],
    q: &[Vec<(u32, f64)>],
    p: &[Vec<(u32, f64)>],
    rng: &mut impl Rng,
) -> (usize, u32) {
    assert_eq!(q.len(), proposal.len());
    assert_eq!(p.len(), proposal.len() + 1);
    for (i, &x) in proposal.iter().enumerate() {
        let (px, qx) = (prob(&p[i], x), prob(&q[i], x));
        let accept = qx > 0.0 && px > 0.0 && rng.gen::<f64>() < (px / qx).min(1.0);
        if !accept {
            return (i, draw(&residual(&p[i], &q[i]), rng.gen()));
        }
    }
    let n = proposal.len();
    (n, draw(&p[n], rng.gen()))
}

/// A point mass on `tok`: the proposal distribution of a deterministic proposer.
pub fn point_mass(tok: u32) -> Vec<(u32, f64)> {
    vec![(tok, 1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn greedy_accepts_the_matching_prefix() {
        let rows: Vec<Vec<f32>> = vec![
            vec![0.0, 5.0, 1.0], // argmax 1
            vec![3.0, 0.0, 1.0], // argmax 0
            vec![0.0, 0.0, 9.0], // argmax 2
        ];
        let r: Vec<&[f32]> = rows.iter().map(|v| v.as_slice()).collect();
        assert_eq!(verify_greedy(&[1, 0], &r), (2, 2));
        assert_eq!(verify_greedy(&[1, 2], &r), (1, 0));
        assert_eq!(verify_greedy(&[2, 0], &r), (0, 1));
    }

    /// Chi-square statistic of `counts` against `probs` (n samples).
    fn chi2(counts: &[usize], probs: &[f64], n: usize) -> f64 {
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// 99.9th percentile of chi-square with 7 degrees of freedom.
    const CHI2_7_999: f64 = 24.32;

    #[test]
    fn rejection_sampling_reproduces_the_target_distribution() {
        // Vocabulary of 8; target p and a deliberately different proposer q; two proposed
        // tokens drawn from q (the second from a second q), 20k trials. The first emitted
        // token (accepted proposal or residual sample) must follow p[0], and the second
        // emitted token, given the first was the accepted proposal, must follow p[1].
        let p0 = [0.30, 0.05, 0.20, 0.10, 0.15, 0.05, 0.10, 0.05];
        let q0 = [0.05, 0.30, 0.10, 0.20, 0.05, 0.15, 0.05, 0.10];
        let p1 = [0.10, 0.10, 0.40, 0.05, 0.05, 0.10, 0.10, 0.10];
        let q1 = [0.125; 8];
        let p2 = [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let dist = |v: &[f64]| -> Vec<(u32, f64)> {
            v.iter()
                .enumerate()
                .filter(|e| *e.1 > 0.0)
                .map(|(i, &x)| (i as u32, x))
                .collect()
        };
        let mut rng = StdRng::seed_from_u64(11);
        let n = 20_000;
        let mut first = [0usize; 8];
        let (mut second, mut second_n) = ([0usize; 8], 0usize);
        for _ in 0..n {
            let x0 = draw(&dist(&q0), rng.gen());
            let x1 = draw(&dist(&q1), rng.gen());
            let (acc, next) = verify_sampling(
                &[x0, x1],
                &[dist(&q0), dist(&q1)],
                &[dist(&p0), dist(&p1), dist(&p2)],
                &mut rng,
            );
            let emitted: Vec<u32> = [x0, x1][..acc].iter().copied().chain([next]).collect();
            first[emitted[0] as usize] += 1;
            if acc >= 1 {
                second[emitted[1] as usize] += 1;
                second_n += 1;
            }
        }
        let c = chi2(&first, &p0, n);
        assert!(c < CHI2_7_999, "first token: chi2 {c:.1}, counts {first:?}");
        let c = chi2(&second, &p1, second_n);
        assert!(
            c < CHI2_7_999,
            "second token: chi2 {c:.1}, counts {second:?}"
        );
        // Against a wrong reference the same statistic is huge (the test can fail).
        assert!(chi2(&first, &q0, n) > 1000.0);
    }

    #[test]
    fn point_mass_proposals_keep_the_target_distribution() {
        let p0 = [0.6, 0.3, 0.1];
        let dist: Vec<(u32, f64)> = p0.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            let (acc, next) = verify_sampling(
                &[1],
                &[point_mass(1)],
                &[dist.clone(), dist.clone()],
                &mut rng,
            );
            counts[if acc == 1 { 1 } else { next as usize }] += 1;
        }
        let c = chi2(&counts, &p0, n);
        assert!(c < 13.8, "chi2 {c:.1} (2 dof, 99.9%), counts {counts:?}");
    }
}
