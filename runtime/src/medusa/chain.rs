//! Medusa heads as a [`Proposer`] for `generate` and `serve-local`: from the target's last
//! hidden state, head `j`'s top token guesses position `j + 2` ahead, and the guesses go to
//! the usual chain verification. A chain, not a tree: it fits the one proposer interface the
//! server speculates with (and sampling, whose verification takes a point-mass guess
//! exactly); `spec-bench` and [`super::generate_medusa`] verify whole candidate trees.
//! A recurrent head ([`super::MedusaConfig::recurrent`]) guesses the same way, each guess from
//! the state after the guess before, as many as the step asks for.

use super::heads::MedusaHeads;
use super::projection::{token_embedding, HeadProjection};
use crate::model::{LinearBackend, Llama};
use crate::sampling::SamplingParams;
use crate::speculative::gate::Gates;
use crate::speculative::verify::point_mass;
use crate::speculative::{Proposed, Proposer};

/// The heads, the target they were trained on (its lm_head scores their states), and the
/// last hidden state the target reported.
pub struct MedusaChain<B: LinearBackend> {
    model: Llama<B>,
    heads: MedusaHeads,
    projection: HeadProjection,
    /// Where proposing stops, by the heads' own probabilities.
    gates: Gates,
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
        let projection = HeadProjection::new(&model, &heads);
        Self {
            model,
            heads,
            projection,
            gates: Gates::default(),
            last: None,
        }
    }

    /// The gates on the heads' guesses: on a CPU a verified row costs a tenth to a quarter
    /// of a decode step, and the heads' unsure guesses mostly fail.
    pub fn with_gates(mut self, gates: Gates) -> Self {
        self.gates = gates;
        self
    }

    /// A recurrent head's guesses from the target's state `state` and the token chosen from
    /// it, each made from the state after the guess before (endless: the caller takes k).
    fn recurrent_guesses(
        &self,
        mut state: Vec<f32>,
        mut token: u32,
    ) -> impl Iterator<Item = (u32, f64)> + '_ {
        std::iter::from_fn(move || {
            let e = token_embedding(&self.model, &self.heads, token);
            state = self.heads.next_state(&state, &e);
            let (t, p) = self.projection.best_of_state(&self.model, &state);
            token = t;
            Some((t, p))
        })
    }
}

impl<B: LinearBackend> Proposer for MedusaChain<B> {
    fn propose(&mut self, context: &[u32], k: usize, _params: &SamplingParams) -> Vec<Proposed> {
        // No state yet (the first step after a prompt) or a stale one (the server decoded
        // in a batch since): no guess this step; its verification reports a fresh state.
        let Some((len, h)) = &self.last else {
            return vec![];
        };
        if *len != context.len() || k == 0 {
            return vec![];
        }
        // The state is the one the context's last token was chosen from.
        let last = *context.last().expect("a context after the prompt");
        // A recurrent head's steps run lazily, so none runs past a gate.
        let guesses: Box<dyn Iterator<Item = (u32, f64)>> = if self.heads.config.recurrent {
            Box::new(self.recurrent_guesses(h.clone(), last).take(k))
        } else {
            let k = k.min(self.heads.config.num_heads);
            let best = self
                .projection
                .best_with_prob(&self.model, &self.heads, h, last, k);
            Box::new(best.into_iter())
        };
        self.gates
            .pass(guesses.map(|(t, p)| ((t, point_mass(t)), p)))
    }

    fn observe_hidden(&mut self, context_len: usize, hidden: &[f32]) {
        self.last = Some((context_len, hidden.to_vec()));
    }
}
