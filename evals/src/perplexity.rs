//! Perplexity with the GPTQ paper's protocol: tokenize the whole text once (no BOS),
//! non-overlapping windows of `seqlen`, remainder dropped, each window scored from position 0,
//! ppl = exp(Σ NLL / predicted tokens) with `seqlen − 1` predictions per window.

use burn::prelude::*;
use lmq_runtime::model::{LinearBackend, Llama};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::nll::{nll_sum, row_nll};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PplOptions {
    pub seqlen: usize,
    /// Stop after this many windows (quick runs).
    pub max_windows: Option<usize>,
    /// Score each window one token at a time through the KV cache, as generation runs
    /// (decode kernels, fused decode step), instead of one forward pass: the check that the
    /// decode path computes the same model.
    pub through_decode: bool,
}

/// The measured figures, including what is needed to compare against a reference run.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    pub seqlen: usize,
    /// Tokens in the whole text.
    pub tokens: usize,
    /// sha256 of all token ids as little-endian int32 (the reference's fingerprint).
    pub ids_sha256: String,
    pub windows: usize,
    pub predicted_tokens: usize,
    pub nll_sum: f64,
    pub ppl: f64,
    pub per_window_nll: Vec<f64>,
    pub seconds: f64,
}

/// Why perplexity cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum PplError {
    #[error("text has {tokens} tokens, fewer than one window of {seqlen}")]
    TooShort { tokens: usize, seqlen: usize },
    #[error("seqlen {seqlen} exceeds the model context {context}")]
    SeqlenTooLong { seqlen: usize, context: usize },
    #[error("seqlen must be at least 2")]
    SeqlenTooShort,
}

/// sha256 of token ids as little-endian int32.
pub fn ids_sha256(ids: &[u32]) -> String {
    let mut h = Sha256::new();
    for &id in ids {
        h.update((id as i32).to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Σ NLL of `window[1..]` given its prefixes, from one forward pass.
pub fn window_nll<B: LinearBackend>(model: &Llama<B>, window: &[u32]) -> f64 {
    // The last position predicts nothing inside the window: skip its vocabulary projection.
    rows_nll(model, window, 0..window.len() - 1, &window[1..])
}

/// One forward pass over `input` (from position 0); Σ NLL of `targets` at the positions
/// `rows` (one target per row). Only those rows go through the vocabulary projection.
pub fn rows_nll<B: LinearBackend>(
    model: &Llama<B>,
    input: &[u32],
    rows: std::ops::Range<usize>,
    targets: &[u32],
) -> f64 {
    let t = input.len();
    let ids: Vec<i32> = input.iter().map(|&x| x as i32).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &model.device());
    let hidden = model.forward_hidden(tokens, None);
    let d = hidden.dims()[2];
    let logits = model.logits(hidden.slice([0..1, rows, 0..d]));
    let vocab = logits.dims()[2];
    let data = logits.into_data().into_vec::<f32>().expect("f32 logits");
    nll_sum(&data, vocab, targets)
}

/// [`window_nll`] computed as generation does: each token appended to a KV cache by
/// `Llama::forward_last`, the next token's NLL read from its logits.
pub fn window_nll_decode<B: LinearBackend>(model: &Llama<B>, window: &[u32]) -> f64 {
    let device = model.device();
    let mut cache = model.new_cache(window.len());
    window
        .windows(2)
        .map(|pair| {
            let input = Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![pair[0] as i32], [1, 1]),
                &device,
            );
            let logits = model.forward_last(input, Some(&mut cache));
            row_nll(&logits, pair[1] as usize)
        })
        .sum()
}

/// Runs the protocol over `ids`; `on_window` is called after each window (progress).
pub fn perplexity<B: LinearBackend>(
    model: &Llama<B>,
    ids: &[u32],
    opts: &PplOptions,
    mut on_window: impl FnMut(usize, usize),
) -> Result<PplReport, PplError> {
    let started = std::time::Instant::now();
    let context = model.rope.max_positions();
    if opts.seqlen < 2 {
        return Err(PplError::SeqlenTooShort);
    }
    if opts.seqlen > context {
        return Err(PplError::SeqlenTooLong {
            seqlen: opts.seqlen,
            context,
        });
    }
    let available = ids.len() / opts.seqlen;
    if available == 0 {
        return Err(PplError::TooShort {
            tokens: ids.len(),
            seqlen: opts.seqlen,
        });
    }
    let windows = opts.max_windows.map_or(available, |m| m.min(available));
    let mut per_window = Vec::with_capacity(windows);
    for i in 0..windows {
        let window = &ids[i * opts.seqlen..(i + 1) * opts.seqlen];
        per_window.push(if opts.through_decode {
            window_nll_decode(model, window)
        } else {
            window_nll(model, window)
        });
        on_window(i + 1, windows);
    }
    let nll: f64 = per_window.iter().sum();
    let predicted = windows * (opts.seqlen - 1);
    Ok(PplReport {
        seqlen: opts.seqlen,
        tokens: ids.len(),
        ids_sha256: ids_sha256(ids),
        windows,
        predicted_tokens: predicted,
        nll_sum: nll,
        ppl: (nll / predicted as f64).exp(),
        per_window_nll: per_window,
        seconds: started.elapsed().as_secs_f64(),
    })
}
