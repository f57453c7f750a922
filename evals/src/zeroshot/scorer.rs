//! Log-likelihood of each continuation given its context, as lm-eval's HF model computes it
//! (log-softmax of the logits at the positions that predict the continuation, summed; greedy
//! if every argmax is the continuation's token), from the runtime's model.
//!
//! Two ways, same figures up to float rounding (a test holds them together):
//! - [`Sharing::Prefix`]: a question's requests share their longest common token prefix (the
//!   context for multiple choice; the sentence up to the blank for Winogrande). It is run once
//!   into a KV cache, then all continuations run on top of it in one more pass, as chains of
//!   a tree whose mask keeps each from seeing the others. Only the rows that predict
//!   continuation tokens go through the vocabulary projection.
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
    /// Shared prefix in a KV cache, then one forward over all continuations.
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

    /// One question with its common prefix run once, then every request's remaining tokens
    /// in one more pass, as chains of a forest over the cached prefix (each chain sees the
    /// prefix and its own earlier tokens only). Falls back to separate scoring when the
    /// requests share no first token.
    fn score_shared(&mut self, reqs: &[Encoded]) -> Vec<Scored> {
        let inputs: Vec<Vec<u32>> = reqs.iter().map(Encoded::input).collect();
        let min_ctx = reqs.iter().map(|r| r.context.len()).min().unwrap_or(0);
        let p = common_prefix(&inputs).min(min_ctx);
        if p == 0 {
            let refs: Vec<&Encoded> = reqs.iter().collect();
            return self.score_separate(&refs);
        }
        let model = self.model;
        let rests: Vec<&[u32]> = inputs.iter().map(|i| &i[p..]).collect();
        let forest = Forest::of(&rests);
        if p + forest.tokens.len() > model.rope.max_positions() {
            let refs: Vec<&Encoded> = reqs.iter().collect();
            return self.score_separate(&refs);
        }
        let mut cache = model.new_cache(p + forest.tokens.len());
        let hidden = model.forward_hidden(self.ids(&inputs[0][..p]), Some(&mut cache));
        let d = hidden.dims()[2];
        let last = to_vec(model.logits(hidden.slice([0..1, p - 1..p, 0..d])));
        // Rows of the forest pass that predict continuation tokens, per request.
        let spans: Vec<std::ops::Range<usize>> = reqs
            .iter()
            .zip(&forest.starts)
            .zip(&rests)
            .map(|((req, &at), rest)| at + (req.context.len() - 1).max(p) - p..at + rest.len())
            .collect();
        let mut rows = Vec::new();
        if !forest.tokens.is_empty() {
            self.forward_tokens += forest.tokens.len();
            let h = model.forward_tree(&forest.tokens, &forest.depths, &forest.mask, &mut cache);
            let parts: Vec<Tensor<B, 3>> = spans
                .iter()
                .filter(|r| !r.is_empty())
                .map(|r| h.clone().slice([0..1, r.clone(), 0..d]))
                .collect();
            if !parts.is_empty() {
                rows = to_vec(model.logits(Tensor::cat(parts, 1)));
            }
        }
        let vocab = model.config.vocab_size;
        let mut offset = 0;
        reqs.iter()
            .zip(&spans)
            .map(|(req, span)| {
                let mut own = Vec::with_capacity(req.continuation.len() * vocab);
                if req.context.len() - 1 == p - 1 {
                    own.extend_from_slice(&last);
                }
                let n = span.len() * vocab;
                own.extend_from_slice(&rows[offset..offset + n]);
                offset += n;
                score_rows(&own, &req.continuation)
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

/// Several token chains laid out as one tree pass after a shared prefix: chain `c` holds
/// rows `starts[c]..starts[c] + len`, at depths `0..len`, each row seeing the rows before it
/// in its own chain and nothing of the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    pub tokens: Vec<u32>,
    pub depths: Vec<usize>,
    /// `[n, n]` row-major: `mask[j * n + i]`, row j may attend to row i.
    pub mask: Vec<bool>,
    pub starts: Vec<usize>,
}

impl Forest {
    /// The forest of `chains` (empty chains take no rows).
    pub fn of(chains: &[&[u32]]) -> Self {
        let n: usize = chains.iter().map(|c| c.len()).sum();
        let mut f = Forest {
            tokens: Vec::with_capacity(n),
            depths: Vec::with_capacity(n),
            mask: vec![false; n * n],
            starts: Vec::with_capacity(chains.len()),
        };
        for chain in chains {
            let at = f.tokens.len();
            f.starts.push(at);
            for (j, &t) in chain.iter().enumerate() {
                f.tokens.push(t);
                f.depths.push(j);
                let row = (at + j) * n;
                f.mask[row + at..=row + at + j].fill(true);
            }
        }
        f
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forest_chains_see_only_their_own_earlier_rows() {
        let f = Forest::of(&[&[5, 6], &[], &[7, 8, 9]]);
        assert_eq!(f.tokens, vec![5, 6, 7, 8, 9]);
        assert_eq!(f.depths, vec![0, 1, 0, 1, 2]);
        assert_eq!(f.starts, vec![0, 2, 2]);
        let n = 5;
        let seen = |j: usize| -> Vec<usize> { (0..n).filter(|&i| f.mask[j * n + i]).collect() };
        assert_eq!(seen(0), vec![0]);
        assert_eq!(seen(1), vec![0, 1]);
        assert_eq!(seen(2), vec![2]);
        assert_eq!(seen(4), vec![2, 3, 4]);
    }
}
