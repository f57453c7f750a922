//! A smaller model as the proposer (Leviathan et al. 2023): it decodes `k` tokens with its own
//! KV cache, which it keeps in step with the accepted text by rolling back to the longest
//! common prefix before each proposal.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::verify::point_mass;
use super::{Proposed, Proposer};
use crate::model::{KvCache, LinearBackend, Llama};
use crate::sampling::{argmax, draw, filtered_distribution, SamplingParams};

/// A draft model and its cache.
pub struct DraftModel<B: LinearBackend> {
    model: Llama<B>,
    cache: KvCache,
    /// Tokens whose keys and values the cache holds.
    cached: Vec<u32>,
    rng: StdRng,
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
        }
    }

    /// Runs `tokens` after the cached ones and returns the last position's logits.
    fn feed(&mut self, tokens: &[u32]) -> Vec<f32> {
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [1, tokens.len()]),
            &self.model.device(),
        );
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
        let mut logits = self.feed(&context[common..]);
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let (tok, q) = if params.temperature <= 0.0 {
                let t = argmax(&logits);
                (t, point_mass(t))
            } else {
                let q = filtered_distribution(&logits, params);
                (draw(&q, self.rng.gen()), q)
            };
            out.push((tok, q));
            if i + 1 < k {
                logits = self.feed(&[tok]);
            }
        }
        out
    }
}
