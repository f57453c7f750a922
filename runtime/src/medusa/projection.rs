//! Head states to token guesses: through the model's own lm_head, over the whole vocabulary
//! or over the heads' shortlist ([`MedusaHeads::vocab`]). On a small model the whole-vocabulary
//! projection of four head states costs about as much as the model's own lm_head does in a
//! decode step; the shortlist's rows (a few thousand, gathered once per request) cost a
//! fraction of that. Guesses only steer which candidates get verified, so output is the same
//! either way.

use burn::prelude::*;

use super::heads::MedusaHeads;
use crate::generate::host_f32;
use crate::kernels::dense_f32::matmul_f32_nt;
use crate::model::{LinearBackend, Llama};
use crate::sampling::argmax;
use crate::serve::logprobs::log_sum_exp;

/// The `k` largest entries' indices, best first (ties: the lower index).
pub(crate) fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    idx
}

/// The vocabulary projection's weight and bias: the separate lm_head, or the tied embedding.
pub(crate) fn lm_head_parts<B: LinearBackend>(
    model: &Llama<B>,
) -> (&B::Weight, Option<&Tensor<B, 1>>) {
    match &model.lm_head {
        Some(l) => (&l.weight, l.bias.as_ref()),
        None => (&model.embed_tokens, None),
    }
}

/// The embedding of `token`, the one token-aware heads read beside the hidden state it was
/// chosen from (empty for Medusa-1 heads, which read none).
pub(crate) fn token_embedding<B: LinearBackend>(
    model: &Llama<B>,
    heads: &MedusaHeads,
    token: u32,
) -> Vec<f32> {
    if !heads.config.token_input {
        return vec![];
    }
    host_f32(B::gather_rows(
        &[token],
        &model.embed_tokens,
        &model.device(),
    ))
}

/// A row of scores' best token (through `ids` where the columns are a shortlist) and the
/// probability the row's softmax gives it.
fn best_in_row(row: &[f32], ids: Option<&[u32]>) -> (u32, f64) {
    let best = argmax(row);
    let p = (row[best as usize] as f64 - log_sum_exp(row)).exp();
    (ids.map_or(best, |ids| ids[best as usize]), p)
}

/// Where `token` ranks in a row of scores (0 = the best; ties ordered as [`top_k`] orders
/// them), or `None` where the row is a shortlist without it: the rank a Medusa tree node
/// needs to hold that token, which bounds what any tree over these guesses can accept.
pub fn rank_in_row(row: &[f32], ids: Option<&[u32]>, token: u32) -> Option<usize> {
    let c = match ids {
        Some(ids) => ids.iter().position(|&i| i == token)?,
        None => token as usize,
    };
    let v = *row.get(c)?;
    Some(
        row.iter()
            .enumerate()
            .filter(|&(i, &x)| x > v || (x == v && i < c))
            .count(),
    )
}

/// The shortlist's token ids and their lm_head rows `[ids.len(), hidden]` (plus bias).
struct Shortlist {
    ids: Vec<u32>,
    rows: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// How one request scores head states; build it once per request (it copies the
/// shortlist's rows out of the lm_head).
pub struct HeadProjection {
    shortlist: Option<Shortlist>,
}

impl HeadProjection {
    /// The projection `heads` ask for on `model`: its lm_head's rows of their shortlist, or
    /// the whole lm_head.
    pub fn new<B: LinearBackend>(model: &Llama<B>, heads: &MedusaHeads) -> Self {
        let shortlist = heads.vocab.as_ref().map(|ids| {
            let (weight, bias) = lm_head_parts(model);
            let rows = host_f32(B::gather_rows(ids, weight, &model.device()));
            let bias = bias.map(|b| {
                let b = host_f32(b.clone());
                ids.iter().map(|&i| b[i as usize]).collect()
            });
            Shortlist {
                ids: ids.clone(),
                rows,
                bias,
            }
        });
        Self { shortlist }
    }

    /// Scores `[n, width]` of the first `n` heads for the target's final hidden state `h`
    /// and the token chosen from it, `last` (width: the vocabulary, or the shortlist), and
    /// the token id of each column where that is not the column itself.
    pub fn scores<B: LinearBackend>(
        &self,
        model: &Llama<B>,
        heads: &MedusaHeads,
        h: &[f32],
        last: u32,
        n: usize,
    ) -> (Vec<f32>, Option<&[u32]>) {
        let e = token_embedding(model, heads, last);
        let states: Vec<f32> = (0..n).flat_map(|k| heads.hidden(k, h, &e)).collect();
        self.scores_of_states(model, &states, n)
    }

    /// Scores `[n, width]` of `n` head states `[n, hidden]`, as [`HeadProjection::scores`].
    pub fn scores_of_states<B: LinearBackend>(
        &self,
        model: &Llama<B>,
        states: &[f32],
        n: usize,
    ) -> (Vec<f32>, Option<&[u32]>) {
        let d = model.config.hidden_size;
        match &self.shortlist {
            None => (
                host_f32(model.logits(Tensor::from_data(
                    TensorData::new(states.to_vec(), [1, n, d]),
                    &model.device(),
                ))),
                None,
            ),
            Some(s) => {
                let width = s.ids.len();
                let mut y = matmul_f32_nt(states, &s.rows, n, d, width);
                if let Some(b) = &s.bias {
                    for row in y.chunks_exact_mut(width) {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                }
                (y, Some(&s.ids))
            }
        }
    }

    /// The best token of one head state and the probability its softmax gives it: a
    /// recurrent head's guess and how sure it is.
    pub fn best_of_state<B: LinearBackend>(&self, model: &Llama<B>, state: &[f32]) -> (u32, f64) {
        let (row, ids) = self.scores_of_states(model, state, 1);
        best_in_row(&row, ids)
    }

    /// Each of the first `n` heads' best token and the probability its softmax gives it (over
    /// the shortlist where the heads have one): how sure a head is of its guess.
    pub fn best_with_prob<B: LinearBackend>(
        &self,
        model: &Llama<B>,
        heads: &MedusaHeads,
        h: &[f32],
        last: u32,
        n: usize,
    ) -> Vec<(u32, f64)> {
        if n == 0 {
            return vec![];
        }
        let (scores, ids) = self.scores(model, heads, h, last, n);
        scores
            .chunks_exact(scores.len() / n)
            .map(|row| best_in_row(row, ids))
            .collect()
    }

    /// The `need[j]` best tokens of head `j` for each of the first `need.len()` heads, best
    /// first.
    pub fn top_tokens<B: LinearBackend>(
        &self,
        model: &Llama<B>,
        heads: &MedusaHeads,
        h: &[f32],
        last: u32,
        need: &[usize],
    ) -> Vec<Vec<u32>> {
        let (scores, ids) = self.scores(model, heads, h, last, need.len());
        let width = scores.len() / need.len().max(1);
        need.iter()
            .zip(scores.chunks_exact(width.max(1)))
            .map(|(&k, row)| {
                let best = top_k(row, k);
                match ids {
                    Some(ids) => best.iter().map(|&i| ids[i as usize]).collect(),
                    None => best,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Arch;
    use crate::medusa::MedusaConfig;
    use crate::weights::{tiny_config, MemorySource};
    use crate::Cpu;

    /// Scores agree with the full projection's to this (the same dot products, another
    /// kernel).
    const SCORE_TOL: f32 = 1e-5;

    fn heads_for(m: &Llama<Cpu>, vocab: Option<Vec<u32>>) -> MedusaHeads {
        let h = m.config.hidden_size;
        let mut heads = MedusaHeads::zeros(MedusaConfig {
            num_heads: 3,
            num_layers: 1,
            hidden_size: h,
            token_input: false,
            recurrent: false,
        });
        // Non-trivial blocks, so each head scores differently.
        for (k, head) in heads.blocks.iter_mut().enumerate() {
            for (i, w) in head[0].weight.iter_mut().enumerate() {
                *w = (((i * 7 + k * 13) % 23) as f32 - 11.0) / 40.0;
            }
        }
        heads.vocab = vocab;
        heads
    }

    #[test]
    fn shortlist_scores_are_the_full_scores_of_its_tokens() {
        for arch in [Arch::Llama, Arch::Qwen2] {
            let c = tiny_config(arch);
            let m = Llama::<Cpu>::load(
                &c,
                &MemorySource::random(&c, 3),
                Path::new("<tiny>"),
                &Default::default(),
            )
            .unwrap();
            let x: Vec<f32> = (0..c.hidden_size)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let full = heads_for(&m, None);
            let whole = HeadProjection::new(&m, &full);
            let (all, ids) = whole.scores(&m, &full, &x, 0, 3);
            assert!(ids.is_none());
            let list = vec![17u32, 3, 42, 0, 8, 29, 31];
            let short = heads_for(&m, Some(list.clone()));
            let p = HeadProjection::new(&m, &short);
            let (some, ids) = p.scores(&m, &short, &x, 0, 3);
            assert_eq!(ids, Some(&list[..]));
            let v = c.vocab_size;
            for k in 0..3 {
                for (j, &t) in list.iter().enumerate() {
                    let (a, b) = (some[k * list.len() + j], all[k * v + t as usize]);
                    assert!(
                        (a - b).abs() <= SCORE_TOL * b.abs().max(1.0),
                        "{arch:?} head {k} token {t}: {a} vs {b}"
                    );
                }
            }
            // Top tokens: the best of the shortlist by the full scores, as token ids.
            let top = p.top_tokens(&m, &short, &x, 0, &[3, 1, 2]);
            for (k, want_n) in [3usize, 1, 2].into_iter().enumerate() {
                let mut by_score = list.clone();
                by_score
                    .sort_by(|&a, &b| all[k * v + b as usize].total_cmp(&all[k * v + a as usize]));
                assert_eq!(top[k], by_score[..want_n], "{arch:?} head {k}");
            }
        }
    }

    #[test]
    fn a_tokens_rank_is_its_place_in_top_k() {
        let row = [1.0, 3.0, 3.0, 2.0, 3.0];
        let order = top_k(&row, row.len());
        for (place, &col) in order.iter().enumerate() {
            assert_eq!(rank_in_row(&row, None, col), Some(place));
        }
        // Through a shortlist: the token's column, and no rank for a token not on it.
        let ids = [40, 10, 30, 20, 50];
        assert_eq!(rank_in_row(&row, Some(&ids), 20), Some(3));
        assert_eq!(rank_in_row(&row, Some(&ids), 99), None);
        assert_eq!(rank_in_row(&row, None, 9), None);
    }

    #[test]
    fn top_k_breaks_ties_by_the_lower_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[1.0, 3.0], 5), vec![1, 0]);
        assert!(top_k(&[1.0], 0).is_empty());
    }
}
