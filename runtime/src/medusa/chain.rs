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
use crate::speculative::verify::point_mass;
use crate::speculative::{Proposed, Proposer};

/// The heads, the target they were trained on (its lm_head scores their states), and the
/// last hidden state the target reported.
pub struct MedusaChain<B: LinearBackend> {
    model: Llama<B>,
    heads: MedusaHeads,
    projection: HeadProjection,
    /// Stop proposing after a guess its head gave less than this probability (0: never).
    p_min: f64,
    /// Propose only guesses their head gives at least this probability (0: all).
    guess_p_min: f64,
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
            p_min: 0.0,
            guess_p_min: 0.0,
            last: None,
        }
    }

    /// Proposals end after a guess whose head's probability is below `p_min` (that guess is
    /// still proposed), as a draft's do: on a CPU every verified row costs about a tenth of
    /// a decode step, and the later heads' unsure guesses mostly fail. Which guesses are
    /// made does not depend on the target, so output is unchanged.
    pub fn with_p_min(mut self, p_min: f64) -> Self {
        self.p_min = p_min;
        self
    }

    /// Proposals end before a guess whose head's probability is below `guess_p_min`, the
    /// first included, so a step the heads are unsure of costs no verification row: a guess
    /// pays where its chance of being right exceeds what its row costs (a tenth to a
    /// quarter of a decode step on a CPU). Output is unchanged, as with `p_min`.
    pub fn with_guess_p_min(mut self, guess_p_min: f64) -> Self {
        self.guess_p_min = guess_p_min;
        self
    }

    /// The guesses `guesses` yields (token, probability) that the two gates let through:
    /// none from the first under `guess_p_min` on, none after the first under `p_min`.
    /// Read lazily, so a recurrent head's later steps are not computed past a gate.
    fn gated(&self, guesses: impl Iterator<Item = (u32, f64)>) -> Vec<Proposed> {
        let mut out = vec![];
        for (t, p) in guesses {
            if p < self.guess_p_min {
                break;
            }
            out.push((t, point_mass(t)));
            if p < self.p_min {
                break;
            }
        }
        out
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
        if self.heads.config.recurrent {
            return self.gated(self.recurrent_guesses(h.clone(), last).take(k));
        }
        let k = k.min(self.heads.config.num_heads);
        self.gated(
            self.projection
                .best_with_prob(&self.model, &self.heads, h, last, k)
                .into_iter(),
        )
    }

    fn observe_hidden(&mut self, context_len: usize, hidden: &[f32]) {
        self.last = Some((context_len, hidden.to_vec()));
    }
}
