//! Medusa heads as a [`Proposer`] for `generate` and `serve-local`: from the target's last
//! hidden state, head `j`'s top token guesses position `j + 2` ahead, and the guesses go to
//! the usual chain verification. A chain, not a tree: it fits the one proposer interface the
//! server speculates with (and sampling, whose verification takes a point-mass guess
//! exactly); `spec-bench` and [`super::generate_medusa`] verify whole candidate trees.

use super::decode::head_logits;
use super::heads::MedusaHeads;
use crate::model::{LinearBackend, Llama};
use crate::sampling::{argmax, SamplingParams};
use crate::speculative::verify::point_mass;
use crate::speculative::{Proposed, Proposer};

/// The heads, the target they were trained on (its lm_head scores their states), and the
/// last hidden state the target reported.
pub struct MedusaChain<B: LinearBackend> {
    model: Llama<B>,
    heads: MedusaHeads,
    /// The context length the stored state belongs to, and the state.
    last: Option<(usize, Vec<f32>)>,
}

impl<B: LinearBackend> MedusaChain<B> {
    /// Heads for `model` (their hidden size must be the model's).
    pub fn new(model: Llama<B>, heads: MedusaHeads) -> Self {
        assert_eq!(
            heads.config.hidden_size, model.config.hidden_size,
            "Medusa heads for another hidden size"
        );
        Self {
            model,
            heads,
            last: None,
        }
    }
}

impl<B: LinearBackend> Proposer for MedusaChain<B> {
    fn propose(&mut self, context: &[u32], k: usize, _params: &SamplingParams) -> Vec<Proposed> {
        // No state yet (the first step after a prompt) or a stale one (the server decoded
        // in a batch since): no guess this step; its verification reports a fresh state.
        let Some((len, h)) = &self.last else {
            return vec![];
        };
        let k = k.min(self.heads.config.num_heads);
        if *len != context.len() || k == 0 {
            return vec![];
        }
        head_logits(&self.model, &self.heads, h, k)
            .chunks_exact(self.model.config.vocab_size)
            .map(|row| {
                let t = argmax(row);
                (t, point_mass(t))
            })
            .collect()
    }

    fn observe_hidden(&mut self, context_len: usize, hidden: &[f32]) {
        self.last = Some((context_len, hidden.to_vec()));
    }
}
