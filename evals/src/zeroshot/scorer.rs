//! Log-likelihood of each continuation given its context, as lm-eval's HF model computes it
//! (log-softmax of the logits at the positions that predict the continuation, summed; greedy
//! if every argmax is the continuation's token), from the runtime's model.
//!
//! Two ways, same figures up to float rounding (a test holds them together):
//! - [`Sharing::Prefix`]: a question's requests share their longest common token prefix (the
//!   context for multiple choice; the sentence up to the blank for Winogrande). It is run once
//!   into a KV cache, then each continuation runs on top of it and the cache is truncated back.
//!   Only the rows that predict continuation tokens go through the vocabulary projection.
//! - [`Sharing::Separate`]: every request is its own forward pass over context + continuation,
//!   as lm-eval does, right-padded into batches of `batch_size` rows (padding after the last
//!   real token changes nothing under the causal mask).

use burn::prelude::*;
use lmq_runtime::model::{LinearBackend, Llama};

use super::encode::Encoded;
use crate::nll::row_nll;

/// How requests are run through the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Shared prefix in a KV cache, one forward per continuation.
    Prefix,
    /// One full forward per request (lm-eval's way), batched.
    Separate,
}

impl Sharing {
    /// `prefix` / `separate`, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Sharing::Prefix => "prefix",
            Sharing::Separate => "separate",
        }
    }
}

/// One request's result: lm-eval's `(logprob, is_greedy)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub ll: f64,
    pub greedy: bool,
}

/// Scores requests with one model; counts the token positions it runs.
pub struct Scorer<'a, B: LinearBackend> {
    model: &'a Llama<B>,
    sharing: Sharing,
    batch_size: usize,
    /// Token positions run through the model so far (padding included).
    pub forward_tokens: usize,
}

impl<'a, B: LinearBackend> Scorer<'a, B> {
    /// A scorer; `batch_size` (rows per forward in [`Sharing::Separate`]) is at least 1.
    pub fn new(model: &'a Llama<B>, sharing: Sharing, batch_size: usize) -> Self {
        Self {
            model,
            sharing,
            batch_size: batch_size.max(1),
            forward_tokens: 0,
        }
    }

    /// Scores several questions' requests (`docs[i]` = the requests of question i), returning
    /// the scores in the same nesting. Every continuation must be non-empty.
    pub fn score_docs(&mut self, docs: &[Vec<Encoded>]) -> Vec<Vec<Scored>> {
        match self.sharing {
            Sharing::Prefix => docs.iter().map(|d| self.score_shared(d)).collect(),
            Sharing::Separate => {
                let flat: Vec<&Encoded> = docs.iter().flatten().collect();
                let mut scores = self.score_separate(&flat).into_iter();
                docs.iter()
                    .map(|d| scores.by_ref().take(d.len()).collect())
                    .collect()
            }
        }
    }

    /// One question with its common prefix run once (falls back to separate scoring when the
    /// requests share no first token).
    fn score_shared(&mut self, reqs: &[Encoded]) -> Vec<Scored> {
        let inputs: Vec<Vec<u32>> = reqs.iter().map(Encoded::input).collect();
        let min_ctx = reqs.iter().map(|r| r.context.len()).min().unwrap_or(0);
        let p = common_prefix(&inputs).min(min_ctx);
        if p == 0 {
            let refs: Vec<&Encoded> = reqs.iter().collect();
            return self.score_separate(&refs);
        }
        let max_len = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let model = self.model;
        let mut cache = model.new_cache(max_len);
        let hidden = model.forward_hidden(self.ids(&inputs[0][..p]), Some(&mut cache));
        let d = hidden.dims()[2];
        let last = to_vec(model.logits(hidden.slice([0..1, p - 1..p, 0..d])));
        reqs.iter()
            .zip(&inputs)
            .map(|(req, input)| {
                cache.truncate(p);
                let first = req.context.len() - 1;
                let mut rows = Vec::new();
                if first == p - 1 {
                    rows.extend_from_slice(&last);
                }
                let rest = &input[p..];
                if !rest.is_empty() {
                    let h = model.forward_hidden(self.ids(rest), Some(&mut cache));
                    let from = first.max(p) - p;
                    rows.extend(to_vec(model.logits(h.slice([
                        0..1,
                        from..rest.len(),
                        0..d,
                    ]))));
                }
                score_rows(&rows, &req.continuation)
            })
            .collect()
    }

    /// Each request on its own, longest first, `batch_size` rows per forward.
    fn score_separate(&mut self, reqs: &[&Encoded]) -> Vec<Scored> {
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(reqs[i].input_len()));
        let mut out = vec![
            Scored {
                ll: 0.0,
                greedy: false
            };
            reqs.len()
        ];
        for chunk in order.chunks(self.batch_size) {
            let inputs: Vec<Vec<u32>> = chunk.iter().map(|&i| reqs[i].input()).collect();
            let t = inputs.iter().map(Vec::len).max().unwrap_or(0);
            let b = inputs.len();
            let mut ids = Vec::with_capacity(b * t);
            for inp in &inputs {
                ids.extend(inp.iter().map(|&x| x as i32));
                ids.extend(std::iter::repeat_n(0, t - inp.len()));
            }
            self.forward_tokens += b * t;
            let model = self.model;
            let tokens =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &model.device());
            let hidden = model.forward_hidden(tokens, None);
            let d = hidden.dims()[2];
            let parts: Vec<Tensor<B, 3>> = chunk
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    let first = reqs[i].context.len() - 1;
                    hidden
                        .clone()
                        .slice([j..j + 1, first..inputs[j].len(), 0..d])
                })
                .collect();
            let logits = to_vec(model.logits(Tensor::cat(parts, 1)));
            let vocab = model.config.vocab_size;
            let mut offset = 0;
            for &i in chunk {
                let n = reqs[i].continuation.len() * vocab;
                out[i] = score_rows(&logits[offset..offset + n], &reqs[i].continuation);
                offset += n;
            }
        }
        out
    }

    /// `[1, n]` token tensor, counted in `forward_tokens`.
    fn ids(&mut self, ids: &[u32]) -> Tensor<B, 2, Int> {
        self.forward_tokens += ids.len();
        let data: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
        Tensor::from_data(TensorData::new(data, [1, ids.len()]), &self.model.device())
    }
}

/// Σ log p(target) over rows and whether every row's argmax is its target; `rows` is
/// `[targets.len(), vocab]` row-major.
pub fn score_rows(rows: &[f32], targets: &[u32]) -> Scored {
    assert!(!targets.is_empty(), "empty continuation");
    let vocab = rows.len() / targets.len();
    assert_eq!(
        rows.len(),
        vocab * targets.len(),
        "logits/targets shape mismatch"
    );
    let mut ll = 0.0;
    let mut greedy = true;
    for (row, &t) in rows.chunks_exact(vocab).zip(targets) {
        ll -= row_nll(row, t as usize);
        let best = row
            .iter()
            .enumerate()
            .fold(0, |b, (i, &x)| if x > row[b] { i } else { b });
        greedy &= best == t as usize;
    }
    Scored { ll, greedy }
}

/// Length of the longest prefix shared by every sequence.
pub fn common_prefix(seqs: &[Vec<u32>]) -> usize {
    let Some(first) = seqs.first() else { return 0 };
    seqs[1..].iter().fold(first.len(), |n, s| {
        n.min(first.iter().zip(s).take_while(|(a, b)| a == b).count())
    })
}

fn to_vec<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32 logits")
}
