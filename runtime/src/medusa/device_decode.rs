//! Greedy Medusa decoding that keeps its state on the backend's device: the heads' ResBlocks,
//! their vocabulary (or shortlist) projection and top-k, the tree pass, the target's argmax per node and
//! the accepted path's KV rows all stay there, and only token ids cross to the host (the
//! heads' top-k candidates and the target's argmax per tree node, a few dozen integers a
//! step) for the pure acceptance functions of [`Tree`]. [`super::generate_medusa`] takes this
//! path on backends whose KV cache lives on the device (the GPU); it is written for any
//! backend, so the CPU tests run the very code.

use burn::prelude::*;
use burn::tensor::activation::silu;

use super::decode::AcceptedStep;
use super::heads::MedusaHeads;
use super::projection::lm_head_parts;
use super::tree::Tree;
use crate::generate::{check_request, token_row, GenerateError};
use crate::model::{LinearBackend, Llama};
use crate::speculative::SpecStats;

/// The heads' ResBlocks as backend tensors: `(Wᵀ [h, h], b [1, h])` per block, and
/// token-aware heads' `Uᵀ [h, h]`.
pub struct HeadsOnDevice<B: Backend> {
    blocks: Vec<Vec<(Tensor<B, 2>, Tensor<B, 2>)>>,
    token_mix: Vec<Tensor<B, 2>>,
}

impl<B: Backend> HeadsOnDevice<B> {
    /// Uploads `heads` to `device`.
    pub fn new(heads: &MedusaHeads, device: &B::Device) -> Self {
        let h = heads.config.hidden_size;
        let blocks = heads
            .blocks
            .iter()
            .map(|head| {
                head.iter()
                    .map(|b| {
                        let w = Tensor::<B, 2>::from_data(
                            TensorData::new(b.weight.clone(), [h, h]),
                            device,
                        );
                        let bias = Tensor::<B, 2>::from_data(
                            TensorData::new(b.bias.clone(), [1, h]),
                            device,
                        );
                        (w.transpose(), bias)
                    })
                    .collect()
            })
            .collect();
        let token_mix = heads
            .token_mix
            .iter()
            .map(|u| {
                Tensor::<B, 2>::from_data(TensorData::new(u.clone(), [h, h]), device).transpose()
            })
            .collect();
        Self { blocks, token_mix }
    }

    /// Head `head`'s hidden states for rows `x` `[n, h]` and the embeddings `token` `[n, h]`
    /// of the tokens chosen from them (needed by token-aware heads only): `x + SiLU(x·Wᵀ +
    /// b)` per block, after `x + token·Uᵀ`, as [`MedusaHeads::hidden`] computes for one row
    /// on the host.
    pub fn hidden(
        &self,
        head: usize,
        x: Tensor<B, 2>,
        token: Option<&Tensor<B, 2>>,
    ) -> Tensor<B, 2> {
        let x = match self.token_mix.get(head) {
            Some(ut) => {
                let token = token.expect("token-aware heads need the token's embedding");
                x + token.clone().matmul(ut.clone())
            }
            None => x,
        };
        self.blocks[head].iter().fold(x, |y, (wt, b)| {
            y.clone() + silu(y.matmul(wt.clone()) + b.clone())
        })
    }
}

/// Token ids of a device tensor of ids.
fn ids_of<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<u32> {
    t.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("integer ids")
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// The argmax token of each row of `logits` `[1, n, vocab]`.
fn argmax_rows<B: Backend>(logits: Tensor<B, 3>) -> Vec<u32> {
    ids_of(logits.argmax(2))
}

/// Greedy Medusa decoding with device-resident state (see the module doc); the contract of
/// [`super::generate_medusa`]: the output is plain greedy decoding, token for token.
pub fn generate_medusa_on_device<B: LinearBackend>(
    model: &Llama<B>,
    heads: &MedusaHeads,
    tree: &Tree,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, SpecStats), GenerateError> {
    let depth = tree.depth();
    assert!(
        depth <= heads.config.num_heads,
        "tree deeper than the heads"
    );
    check_request(model, prompt, max_new + depth)?;
    let d = model.config.hidden_size;
    let device = model.device();
    let on_device = HeadsOnDevice::<B>::new(heads, &device);
    let mut cache = model.new_growable_cache(
        prompt.len() + 64 + tree.len(),
        prompt.len() + max_new + tree.len(),
    );
    let t = prompt.len();
    let mut h_last = model
        .forward_hidden(token_row(prompt, &device), Some(&mut cache))
        .slice([0..1, t - 1..t, 0..d]);
    let first = argmax_rows(model.logits(h_last.clone()))[0];
    let mut out = vec![first];
    on_token(first);
    let mut stats = SpecStats::default();
    // How many alternatives each depth needs.
    let mut need = vec![0usize; depth];
    for n in &tree.nodes[1..] {
        need[n.depth - 1] = need[n.depth - 1].max(n.rank + 1);
    }
    let widest = need.iter().copied().max().unwrap_or(1).max(1);
    let depths: Vec<usize> = tree.nodes.iter().map(|n| n.depth).collect();
    let mask = tree.attention_mask();
    // The heads' shortlist (if any) as a device matrix `[h, V']` (and bias `[1, V']`): their
    // logits over it, then column indices mapped back to token ids on the host.
    let shortlist = heads.vocab.as_ref().map(|ids| {
        let (weight, bias) = lm_head_parts(model);
        let rows = B::gather_rows(ids, weight, &device).transpose();
        let bias = bias.map(|b| {
            let cols = Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [ids.len()],
                ),
                &device,
            );
            b.clone().select(0, cols).reshape([1, ids.len()])
        });
        (rows, bias, ids)
    });
    while out.len() < max_new && !stop_ids.contains(out.last().unwrap()) {
        // All heads' states, their logits and top-k on the device; `widest` ids per head back.
        let x = h_last.clone().reshape([1, d]);
        // The token chosen from `x` (token-aware heads read its embedding; others, nothing).
        let e = heads
            .config
            .token_input
            .then(|| B::gather_rows(&[*out.last().unwrap()], &model.embed_tokens, &device));
        let states = Tensor::cat(
            (0..depth)
                .map(|k| on_device.hidden(k, x.clone(), e.as_ref()))
                .collect(),
            0,
        );
        let idx = match &shortlist {
            None => ids_of(
                model
                    .logits(states.reshape([1, depth, d]))
                    .topk_with_indices(widest, 2)
                    .1,
            ),
            Some((rows, bias, ids)) => {
                let mut scores = states.matmul(rows.clone());
                if let Some(b) = bias {
                    scores = scores + b.clone();
                }
                let (_, idx) = scores.topk_with_indices(widest, 1);
                ids_of(idx).into_iter().map(|i| ids[i as usize]).collect()
            }
        };
        let topk: Vec<Vec<u32>> = (0..depth)
            .map(|k| idx[k * widest..][..need[k]].to_vec())
            .collect();
        let tokens = tree.tokens(*out.last().unwrap(), &topk);
        let before = cache.len();
        let hidden = model.forward_tree(&tokens, &depths, &mask, &mut cache);
        let best = argmax_rows(model.logits(hidden.clone()));
        let (path, next) = tree.accept_greedy(&tokens, &best);
        cache.keep_rows::<B>(before, &path);
        let last = *path.last().expect("the root");
        h_last = hidden.slice([0..1, last..last + 1, 0..d]);
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
