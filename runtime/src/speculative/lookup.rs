//! Prompt lookup decoding (Saxena 2023): when the last n tokens occurred before in the prompt
//! or output, propose what followed them then. No model, no training; it pays off on
//! summarization, editing and code, where output copies input.

use super::verify::point_mass;
use super::{Proposed, Proposer};
use crate::sampling::SamplingParams;

/// N-gram lookup over the context.
#[derive(Debug, Clone)]
pub struct PromptLookup {
    /// Longest n-gram tried first.
    pub max_ngram: usize,
    /// Shortest n-gram accepted as a match.
    pub min_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        Self {
            max_ngram: 3,
            min_ngram: 1,
        }
    }
}

/// The tokens that followed the most recent earlier occurrence of `context`'s last `n`
/// tokens, at most `k` of them.
pub fn lookup(context: &[u32], n: usize, k: usize) -> Option<&[u32]> {
    let len = context.len();
    if n == 0 || len <= n {
        return None;
    }
    let pattern = &context[len - n..];
    (0..len - n)
        .rev()
        .find(|&j| &context[j..j + n] == pattern)
        .map(|j| &context[j + n..(j + n + k).min(len)])
        .filter(|s| !s.is_empty())
}

impl Proposer for PromptLookup {
    fn propose(&mut self, context: &[u32], k: usize, _: &SamplingParams) -> Vec<Proposed> {
        if k == 0 {
            return vec![];
        }
        (self.min_ngram..=self.max_ngram)
            .rev()
            .find_map(|n| lookup(context, n, k))
            .map(|s| s.iter().map(|&t| (t, point_mass(t))).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_most_recent_longest_match() {
        let ctx = [5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2];
        assert_eq!(lookup(&ctx, 2, 3), Some(&[4, 7, 1][..]));
        assert_eq!(lookup(&ctx, 3, 3), None);
        let mut p = PromptLookup::default();
        let got: Vec<u32> = p
            .propose(&ctx, 2, &SamplingParams::default())
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(got, vec![4, 7]);
        assert!(p
            .propose(&[1, 2, 3], 4, &SamplingParams::default())
            .is_empty());
    }
}
