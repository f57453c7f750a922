//! The speculative generation loop: propose, verify in one target pass, roll the target's
//! cache back to the accepted tokens, repeat.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::verify::{verify_greedy, verify_sampling};
use super::{Proposed, Proposer};
use crate::generate::{check_request, host_f32, token_row, GenerateError};
use crate::model::{KvCache, LinearBackend, Llama};
use crate::sampling::{filtered_distribution, Sampler, SamplingParams};

/// What speculation bought.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecStats {
    /// Target forward passes after the prompt (each yields 1 + accepted tokens).
    pub steps: usize,
    pub proposed: usize,
    pub accepted: usize,
    /// Tokens generated after the first (which the prompt pass yields).
    pub generated: usize,
}

impl std::ops::AddAssign for SpecStats {
    fn add_assign(&mut self, o: Self) {
        self.steps += o.steps;
        self.proposed += o.proposed;
        self.accepted += o.accepted;
        self.generated += o.generated;
    }
}

impl SpecStats {
    /// Mean tokens per target step (τ in the Medusa/Spec-Bench tables); 1.0 is plain decoding.
    pub fn tau(&self) -> f64 {
        if self.steps == 0 {
            return 1.0;
        }
        self.generated as f64 / self.steps as f64
    }

    /// Fraction of proposed tokens accepted.
    pub fn acceptance(&self) -> f64 {
        if self.proposed == 0 {
            return 0.0;
        }
        self.accepted as f64 / self.proposed as f64
    }
}

/// One verified step: the tokens the target keeps (accepted guesses, then its own) and its
/// logits at each of them (`tokens.len()` rows of the vocabulary), for log-probabilities.
pub struct Verified {
    pub tokens: Vec<u32>,
    /// Guesses the proposer made.
    pub proposed: usize,
    pub logits: Vec<f32>,
    /// The final hidden state of the last position kept in the cache (the one whose logits
    /// gave the target's own token), for [`Proposer::observe_hidden`].
    pub hidden: Vec<f32>,
}

/// Runs `last` (not yet in `cache`) and the `proposal` through the target in one pass,
/// verifies the guesses (greedy for temperature 0, rejection sampling with `rng` otherwise)
/// and rolls `cache` back to `last` plus the accepted guesses.
pub fn verify_step<B: LinearBackend>(
    model: &Llama<B>,
    cache: &mut KvCache,
    last: u32,
    proposal: Vec<Proposed>,
    params: &SamplingParams,
    rng: &mut impl Rng,
) -> Verified {
    let guesses: Vec<u32> = proposal.iter().map(|p| p.0).collect();
    let mut input = vec![last];
    input.extend(&guesses);
    let before = cache.len();
    let hidden = model.forward_hidden(token_row(&input, &model.device()), Some(&mut *cache));
    let mut logits = host_f32(model.logits(hidden.clone()));
    let hidden = host_f32(hidden);
    let vocab = model.config.vocab_size;
    let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
    let (n, next) = if params.temperature <= 0.0 {
        verify_greedy(&guesses, &rows)
    } else {
        let q: Vec<Vec<(u32, f64)>> = proposal.into_iter().map(|p| p.1).collect();
        let p: Vec<Vec<(u32, f64)>> = rows
            .iter()
            .map(|r| filtered_distribution(r, params))
            .collect();
        verify_sampling(&guesses, &q, &p, rng)
    };
    cache.truncate(before + 1 + n);
    logits.truncate((n + 1) * vocab);
    let mut tokens = guesses[..n].to_vec();
    tokens.push(next);
    let d = model.config.hidden_size;
    Verified {
        tokens,
        proposed: guesses.len(),
        logits,
        hidden: hidden[n * d..(n + 1) * d].to_vec(),
    }
}

/// Generates up to `max_new` tokens after `prompt` with `proposer` guessing up to `k` tokens
/// per step; stops at any of `stop_ids` (emitted, as `generate` does). Same output as
/// `generate::generate` for greedy parameters; the target's distribution when sampling.
#[allow(clippy::too_many_arguments)]
pub fn generate_speculative<B: LinearBackend>(
    model: &Llama<B>,
    proposer: &mut dyn Proposer,
    prompt: &[u32],
    max_new: usize,
    k: usize,
    params: SamplingParams,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, SpecStats), GenerateError> {
    check_request(model, prompt, max_new)?;
    let device = model.device();
    let mut cache = model.new_growable_cache(prompt.len() + 64, prompt.len() + max_new + k + 1);
    let mut rng = StdRng::seed_from_u64(params.seed);
    let run = |tokens: &[u32], cache: &mut crate::model::KvCache| {
        model.forward_last(token_row(tokens, &device), Some(cache))
    };
    let first_logits = run(prompt, &mut cache);
    let first = Sampler::new(params.clone()).sample(&first_logits);
    let mut out = vec![first];
    let mut stats = SpecStats::default();
    on_token(first);
    let mut seq: Vec<u32> = prompt.to_vec();
    seq.push(first);
    while out.len() < max_new && !stop_ids.contains(out.last().unwrap()) {
        let room = max_new - out.len() - 1;
        let proposal = proposer.propose(&seq, k.min(room), &params);
        let v = verify_step(
            model,
            &mut cache,
            *out.last().unwrap(),
            proposal,
            &params,
            &mut rng,
        );
        let n = v.tokens.len() - 1;
        stats.steps += 1;
        stats.proposed += v.proposed;
        stats.accepted += n;
        for &t in &v.tokens {
            out.push(t);
            seq.push(t);
            stats.generated += 1;
            on_token(t);
            if stop_ids.contains(&t) || out.len() == max_new {
                break;
            }
        }
        proposer.observe_hidden(seq.len(), &v.hidden);
    }
    Ok((out, stats))
}
