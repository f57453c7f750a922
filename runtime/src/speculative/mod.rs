//! Speculative decoding: a proposer guesses the next few tokens cheaply, the target model
//! scores them all in one forward pass over its KV cache, and `verify` keeps the longest
//! acceptable prefix plus one token of the target's own. Greedy output is exactly plain
//! greedy decoding; sampled output has exactly the target's distribution.
//!
//! Proposers: [`lookup::PromptLookup`] (n-gram match in the prompt and output, no model),
//! [`draft::DraftModel`] (a smaller model with its own cache) and
//! [`crate::medusa::MedusaChain`] (Medusa heads' top guesses as a chain), and
//! [`cascade::Cascade`] (several of these, the first with a guess winning).

pub mod cascade;
pub mod choose;
pub mod decode;
pub mod draft;
pub mod gate;
pub mod lookup;
pub mod mt_bench;
pub mod pass_cost;
pub mod verify;

pub use decode::{generate_speculative, SpecStats};

use crate::sampling::SamplingParams;

/// One proposed token and the distribution it was drawn from (a point mass for a
/// deterministic guess).
pub type Proposed = (u32, Vec<(u32, f64)>);

/// Guesses continuations for the target to verify. Narrow on purpose: a proposer sees the
/// tokens so far and says what may come next; verification and the target's cache are not its
/// business.
pub trait Proposer {
    /// Up to `k` tokens continuing `context` (prompt and output so far). An empty answer
    /// means "no guess": the target then decodes one token as usual.
    fn propose(&mut self, context: &[u32], k: usize, params: &SamplingParams) -> Vec<Proposed>;

    /// The target's final hidden state at the last position it ran, whose own next token
    /// ends the context (now `context_len` tokens long). Medusa's heads guess from it;
    /// proposers that read tokens only ignore it.
    fn observe_hidden(&mut self, _context_len: usize, _hidden: &[f32]) {}
}
