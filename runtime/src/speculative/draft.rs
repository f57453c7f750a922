//! A smaller model as the proposer (Leviathan et al. 2023): it decodes `k` tokens with its own
//! KV cache, which it keeps in step with the accepted text by rolling back to the longest
//! common prefix before each proposal. Like llama.cpp's `--draft-p-min` and transformers'
//! `assistant_confidence_threshold`, it stops guessing once it is unsure of its own token: a
//! guess the target will likely reject costs a draft step and a verification row for nothing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::gate::Gates;
use super::verify::point_mass;
use super::{Proposed, Proposer};
use crate::generate::token_row;
use crate::model::{KvCache, LinearBackend, Llama};
use crate::sampling::{argmax, draw, filtered_distribution, SamplingParams};
use crate::serve::logprobs::log_sum_exp;

/// A draft model and its cache.
pub struct DraftModel<B: LinearBackend> {
    model: Llama<B>,
    cache: KvCache,
    /// Tokens whose keys and values the cache holds.
    cached: Vec<u32>,
    rng: StdRng,
    /// Where proposing stops, by the draft's own probabilities.
    gates: Gates,
}

impl<B: LinearBackend> DraftModel<B> {
    /// `seed` drives the draft's own sampling (independent of the target's).
    pub fn new(model: Llama<B>, seed: u64) -> Self {
        let max = model.rope.max_positions();
        let cache = model.new_growable_cache(256, max);
        Self {
            model,
            cache,
            cached: vec![],
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_d4af),
            gates: Gates::default(),
        }
    }

    /// The gates on the draft's guesses: a guess the target will likely reject costs a draft
    /// step and a verification row for nothing.
    pub fn with_gates(mut self, gates: Gates) -> Self {
        self.gates = gates;
        self
    }

    /// The draft's next token from `logits`, the distribution it was drawn from, and its
    /// probability there (1 for a greedy guess when no gate reads it).
    fn guess(&mut self, logits: &[f32], params: &SamplingParams) -> (Proposed, f64) {
        if params.temperature <= 0.0 {
            let t = argmax(logits);
            let p = if self.gates.active() {
                (logits[t as usize] as f64 - log_sum_exp(logits)).exp()
            } else {
                1.0
            };
            ((t, point_mass(t)), p)
        } else {
            let q = filtered_distribution(logits, params);
            let t = draw(&q, self.rng.gen());
            let p = q.iter().find(|&&(u, _)| u == t).map_or(0.0, |&(_, p)| p);
            ((t, q), p)
        }
    }

    /// Runs `tokens` after the cached ones and returns the last position's logits.
    fn feed(&mut self, tokens: &[u32]) -> Vec<f32> {
        let input = token_row(tokens, &self.model.device());
        self.cached.extend_from_slice(tokens);
        self.model.forward_last(input, Some(&mut self.cache))
    }
}

impl<B: LinearBackend> Proposer for DraftModel<B> {
    fn propose(&mut self, context: &[u32], k: usize, params: &SamplingParams) -> Vec<Proposed> {
        let room = self
            .model
            .rope
            .max_positions()
            .saturating_sub(context.len());
        let k = k.min(room);
        if k == 0 || context.is_empty() {
            return vec![];
        }
        // Keep the common prefix (at least one token must be fed to get logits).
        let common = self
            .cached
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count()
            .min(context.len() - 1);
        self.cached.truncate(common);
        self.cache.truncate(common);
        let gates = self.gates;
        let mut logits = self.feed(&context[common..]);
        // Each guess after the first is drafted after feeding the one before, lazily: past a
        // gate, nothing more is fed.
        let mut fed_next: Option<u32> = None;
        let guesses = std::iter::from_fn(|| {
            if let Some(t) = fed_next.take() {
                logits = self.feed(&[t]);
            }
            let (guess, p) = self.guess(&logits, params);
            fed_next = Some(guess.0);
            Some((guess, p))
        });
        gates.pass(guesses.take(k))
    }
}
