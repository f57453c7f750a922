//! Decoding with Medusa heads and tree verification. Greedy: output is token-for-token plain
//! greedy decoding whatever the heads guess (they only change how many tokens a step yields).
//! Sampling: Medusa's typical acceptance, which accepts more but does not keep the target's
//! exact distribution (the chain proposer, `MedusaChain`, does, by rejection sampling).

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::heads::MedusaHeads;
use super::projection::HeadProjection;
use super::tree::{Tree, Typical};
use crate::generate::{check_request, host_f32, token_row, GenerateError};
use crate::model::{LinearBackend, Llama};
use crate::sampling::{argmax, draw, filtered_distribution, SamplingParams};
use crate::speculative::SpecStats;

/// How a Medusa step accepts tree candidates and picks the token after them.
#[derive(Debug, Clone)]
pub enum Acceptance {
    /// The longest path the target's argmax agrees with, then its argmax: exactly plain
    /// greedy decoding.
    Greedy,
    /// [`Typical`] acceptance on the target's distributions under `params`, then the next
    /// token drawn from the distribution at the last accepted node (seeded by `params`).
    Typical {
        params: SamplingParams,
        typical: Typical,
    },
}

/// Generates up to `max_new` tokens greedily, verifying a `tree` of head guesses per step.
pub fn generate_medusa<B: LinearBackend>(
    model: &Llama<B>,
    heads: &MedusaHeads,
    tree: &Tree,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, SpecStats), GenerateError> {
    let greedy = Acceptance::Greedy;
    generate_medusa_with(
        model, heads, tree, &greedy, prompt, max_new, stop_ids, on_token,
    )
}

/// [`generate_medusa`] with the acceptance rule given (typical acceptance for sampling).
#[allow(clippy::too_many_arguments)]
pub fn generate_medusa_with<B: LinearBackend>(
    model: &Llama<B>,
    heads: &MedusaHeads,
    tree: &Tree,
    acceptance: &Acceptance,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, SpecStats), GenerateError> {
    if B::KV_ON_DEVICE && matches!(acceptance, Acceptance::Greedy) {
        // Only token ids cross to the host (the GPU).
        return super::device_decode::generate_medusa_on_device(
            model, heads, tree, prompt, max_new, stop_ids, on_token,
        );
    }
    let depth = tree.depth();
    assert!(
        depth <= heads.config.num_heads,
        "tree deeper than the heads"
    );
    // The last step's tree may reach `depth` positions past the last kept token.
    check_request(model, prompt, max_new + depth)?;
    let (d, vocab) = (model.config.hidden_size, model.config.vocab_size);
    let device = model.device();
    let mut cache = model.new_growable_cache(
        prompt.len() + 64 + tree.len(),
        prompt.len() + max_new + tree.len(),
    );
    let hidden = model.forward_hidden(token_row(prompt, &device), Some(&mut cache));
    let t = prompt.len();
    let mut h_last = host_f32(hidden.slice([0..1, t - 1..t, 0..d]));
    let mut rng = StdRng::seed_from_u64(match acceptance {
        Acceptance::Greedy => 0,
        Acceptance::Typical { params, .. } => params.seed,
    });
    // The token after a row of logits: its argmax, or a draw from its distribution.
    let pick = |row: &[f32], rng: &mut StdRng| match acceptance {
        Acceptance::Greedy => argmax(row),
        Acceptance::Typical { params, .. } => {
            draw(&filtered_distribution(row, params), rng.gen::<f64>())
        }
    };
    let first = pick(
        &host_f32(model.logits(Tensor::from_data(
            TensorData::new(h_last.clone(), [1, 1, d]),
            &device,
        ))),
        &mut rng,
    );
    let mut out = vec![first];
    on_token(first);
    let mut stats = SpecStats::default();
    // How many alternatives each depth needs.
    let mut need = vec![0usize; depth];
    for n in &tree.nodes[1..] {
        need[n.depth - 1] = need[n.depth - 1].max(n.rank + 1);
    }
    let depths: Vec<usize> = tree.nodes.iter().map(|n| n.depth).collect();
    let mask = tree.attention_mask();
    let projection = HeadProjection::new(model, heads);
    while out.len() < max_new && !stop_ids.contains(out.last().unwrap()) {
        let topk = projection.top_tokens(model, heads, &h_last, *out.last().unwrap(), &need);
        let tokens = tree.tokens(*out.last().unwrap(), &topk);
        let before = cache.len();
        let hidden = host_f32(model.forward_tree(&tokens, &depths, &mask, &mut cache));
        let logits = host_f32(model.logits(Tensor::from_data(
            TensorData::new(hidden.clone(), [1, tokens.len(), d]),
            &device,
        )));
        let (path, next) = match acceptance {
            Acceptance::Greedy => {
                let best: Vec<u32> = logits.chunks_exact(vocab).map(argmax).collect();
                tree.accept_greedy(&tokens, &best)
            }
            Acceptance::Typical { params, typical } => {
                let dists: Vec<Vec<(u32, f64)>> = logits
                    .chunks_exact(vocab)
                    .map(|row| filtered_distribution(row, params))
                    .collect();
                let path = tree.accept_typical(&tokens, &dists, *typical);
                let last = *path.last().expect("the root");
                let next = pick(&logits[last * vocab..(last + 1) * vocab], &mut rng);
                (path, next)
            }
        };
        cache.keep_rows::<B>(before, &path);
        h_last = hidden[path.last().unwrap() * d..][..d].to_vec();
        let step = AcceptedStep {
            tokens: &tokens,
            path: &path,
            next,
            depth,
        };
        step.emit(&mut out, &mut stats, max_new, stop_ids, &mut on_token);
    }
    Ok((out, stats))
}

/// One verified Medusa step: the tree's tokens, the accepted path through them (node indices,
/// root first) and the model's token after it; both decode loops record it the same way.
pub(super) struct AcceptedStep<'a> {
    pub tokens: &'a [u32],
    pub path: &'a [usize],
    pub next: u32,
    /// Guesses proposed this step (the tree's depth).
    pub depth: usize,
}

impl AcceptedStep<'_> {
    /// Counts the step and appends the accepted tokens and `next` to `out`, stopping at a
    /// stop token or at `max_new`.
    pub fn emit(
        &self,
        out: &mut Vec<u32>,
        stats: &mut SpecStats,
        max_new: usize,
        stop_ids: &[u32],
        on_token: &mut impl FnMut(u32),
    ) {
        stats.steps += 1;
        stats.proposed += self.depth;
        stats.accepted += self.path.len() - 1;
        let accepted = self.path[1..].iter().map(|&i| self.tokens[i]);
        for tok in accepted.chain([self.next]) {
            out.push(tok);
            stats.generated += 1;
            on_token(tok);
            if stop_ids.contains(&tok) || out.len() == max_new {
                break;
            }
        }
    }
}
