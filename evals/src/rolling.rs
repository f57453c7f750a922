//! Word and byte perplexity the lm-evaluation-harness way (`loglikelihood_rolling`, as its
//! `wikitext` task uses it): every document is scored whole, from a prefix token, in
//! disjoint windows of at most `max_len` tokens; the last window takes the tokens before it
//! as context so it is full. Log-likelihoods are summed per document and divided by the
//! document's words or bytes, not its tokens, so figures compare across tokenizers, and not
//! with the token-level perplexity of [`crate::perplexity`].

use lmq_runtime::model::{LinearBackend, Llama};
use lmq_runtime::tokenizer::{Tokenizer, TokenizerError};
use serde::Serialize;

use crate::perplexity::rows_nll;

/// One forward pass: `seq[start..end]` goes in, the last `scored` positions are scored
/// against the tokens that follow them, where `seq` is the prefix token then the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub scored: usize,
}

/// lm-eval's `get_rolling_token_windows(tokens, prefix, max_len, context_len=1)` followed
/// by `make_disjoint_window`, as index ranges over `[prefix] + tokens` (length `n + 1`).
/// Every document token is scored exactly once.
pub fn rolling_windows(n: usize, max_len: usize) -> Vec<Window> {
    assert!(max_len >= 1, "window length must be at least 1");
    if n == 0 {
        return Vec::new();
    }
    let first = n.min(max_len);
    let mut windows = vec![Window {
        start: 0,
        end: first,
        scored: first,
    }];
    let mut predicted = first;
    while predicted < n {
        let scored = (n - predicted).min(max_len);
        let end = predicted + scored;
        windows.push(Window {
            start: end - max_len,
            end,
            scored,
        });
        predicted = end;
    }
    windows
}

/// One document's share of the figures.
#[derive(Debug, Clone, Serialize)]
pub struct DocScore {
    pub tokens: usize,
    pub words: usize,
    pub bytes: usize,
    pub windows: usize,
    /// Σ log p over the document's tokens (lm-eval's `loglikelihood_rolling` value).
    pub loglikelihood: f64,
}

/// A document ready to score: its token ids (without the prefix token) and the word and
/// byte counts its metric divides by.
#[derive(Debug, Clone)]
pub struct Doc {
    pub ids: Vec<u32>,
    pub words: usize,
    pub bytes: usize,
}

impl Doc {
    /// A whole text as one document, read as it is (no detokenization).
    pub fn whole(text: &str, tokenizer: &Tokenizer) -> Result<Self, TokenizerError> {
        Ok(Self {
            ids: tokenizer.encode(text, false)?,
            words: crate::wikitext::word_count(text),
            bytes: text.len(),
        })
    }
}

/// The aggregated figures, named as lm-eval names them.
#[derive(Debug, Clone, Serialize)]
pub struct RollingReport {
    pub documents: usize,
    pub window_len: usize,
    pub prefix_token: u32,
    pub tokens: usize,
    pub words: usize,
    pub bytes: usize,
    pub word_perplexity: f64,
    pub byte_perplexity: f64,
    pub bits_per_byte: f64,
    /// exp(−Σ log p / tokens) over the same windows, for reference only: token-level, but
    /// neither the GPTQ protocol's windows nor its figure.
    pub token_perplexity: f64,
    pub per_doc: Vec<DocScore>,
    pub seconds: f64,
}

/// Scores `docs` in rolling windows of `max_len`; `on_doc(done, total)` after each document.
pub fn rolling_perplexity<B: LinearBackend>(
    model: &Llama<B>,
    docs: &[Doc],
    prefix_token: u32,
    max_len: usize,
    mut on_doc: impl FnMut(usize, usize),
) -> RollingReport {
    let started = std::time::Instant::now();
    let mut per_doc = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let mut seq = Vec::with_capacity(doc.ids.len() + 1);
        seq.push(prefix_token);
        seq.extend_from_slice(&doc.ids);
        let windows = rolling_windows(doc.ids.len(), max_len);
        let nll: f64 = windows.iter().map(|w| window_nll(model, &seq, w)).sum();
        per_doc.push(DocScore {
            tokens: doc.ids.len(),
            words: doc.words,
            bytes: doc.bytes,
            windows: windows.len(),
            loglikelihood: -nll,
        });
        on_doc(i + 1, docs.len());
    }
    aggregate(
        per_doc,
        prefix_token,
        max_len,
        started.elapsed().as_secs_f64(),
    )
}

/// lm-eval's `weighted_perplexity` and `bits_per_byte` over documents.
pub fn aggregate(
    per_doc: Vec<DocScore>,
    prefix_token: u32,
    window_len: usize,
    seconds: f64,
) -> RollingReport {
    let ll: f64 = per_doc.iter().map(|d| d.loglikelihood).sum();
    let tokens: usize = per_doc.iter().map(|d| d.tokens).sum();
    let words: usize = per_doc.iter().map(|d| d.words).sum();
    let bytes: usize = per_doc.iter().map(|d| d.bytes).sum();
    RollingReport {
        documents: per_doc.len(),
        window_len,
        prefix_token,
        tokens,
        words,
        bytes,
        word_perplexity: (-ll / words as f64).exp(),
        byte_perplexity: (-ll / bytes as f64).exp(),
        bits_per_byte: -ll / bytes as f64 / std::f64::consts::LN_2,
        token_perplexity: (-ll / tokens as f64).exp(),
        per_doc,
        seconds,
    }
}

/// Σ NLL of one window's scored positions.
fn window_nll<B: LinearBackend>(model: &Llama<B>, seq: &[u32], w: &Window) -> f64 {
    let t = w.end - w.start;
    let targets = &seq[w.end - w.scored + 1..w.end + 1];
    rows_nll(model, &seq[w.start..w.end], t - w.scored..t, targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lm-eval's generator, written out literally over token values (`prefix` = −1), to hold
    /// the index form to it.
    fn lm_eval_windows(tokens: &[i64], max_len: usize) -> Vec<(Vec<i64>, Vec<i64>)> {
        let mut out = Vec::new();
        if tokens.is_empty() {
            return out;
        }
        let first = max_len.min(tokens.len());
        let mut ctx = vec![-1];
        ctx.extend_from_slice(&tokens[..first - 1]);
        out.push((ctx, tokens[..first].to_vec()));
        let mut predicted = first;
        while predicted < tokens.len() {
            let pl = (tokens.len() - predicted).min(max_len);
            let end = predicted + pl;
            let a = tokens[end - max_len - 1..end - 1].to_vec();
            let b = tokens[end - pl..end].to_vec();
            // make_disjoint_window, then the model input: context + continuation[:-1].
            let mut input = a[..a.len() - (b.len() - 1)].to_vec();
            input.extend_from_slice(&b[..b.len() - 1]);
            out.push((input, b));
            predicted = end;
        }
        out
    }

    #[test]
    fn windows_match_lm_evals_generator() {
        for n in [0usize, 1, 2, 5, 7, 8, 9, 16, 17, 23] {
            for max_len in [1usize, 2, 3, 4, 8] {
                let tokens: Vec<i64> = (0..n as i64).collect();
                let mut seq = vec![-1];
                seq.extend_from_slice(&tokens);
                let ours: Vec<(Vec<i64>, Vec<i64>)> = rolling_windows(n, max_len)
                    .iter()
                    .map(|w| {
                        let input = seq[w.start..w.end].to_vec();
                        let targets = seq[w.end - w.scored + 1..w.end + 1].to_vec();
                        (input, targets)
                    })
                    .collect();
                assert_eq!(
                    ours,
                    lm_eval_windows(&tokens, max_len),
                    "n {n} len {max_len}"
                );
                let scored: usize = rolling_windows(n, max_len).iter().map(|w| w.scored).sum();
                assert_eq!(scored, n, "every token scored once");
                assert!(rolling_windows(n, max_len)
                    .iter()
                    .all(|w| w.end - w.start <= max_len));
            }
        }
    }

    #[test]
    fn aggregate_divides_by_words_and_bytes() {
        let docs = vec![
            DocScore {
                tokens: 10,
                words: 4,
                bytes: 20,
                windows: 1,
                loglikelihood: -8.0,
            },
            DocScore {
                tokens: 6,
                words: 4,
                bytes: 12,
                windows: 1,
                loglikelihood: -4.0,
            },
        ];
        let r = aggregate(docs, 0, 8, 0.0);
        assert!((r.word_perplexity - (12.0f64 / 8.0).exp()).abs() < 1e-12);
        assert!((r.byte_perplexity - (12.0f64 / 32.0).exp()).abs() < 1e-12);
        assert!((r.bits_per_byte - 12.0 / 32.0 / 2f64.ln()).abs() < 1e-12);
        assert!((r.token_perplexity - (12.0f64 / 16.0).exp()).abs() < 1e-12);
    }
}
