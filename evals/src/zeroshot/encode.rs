//! Tokenizing a request the way lm-eval's `TemplateLM._encode_pair` does for causal models:
//! trailing whitespace of the context moves to the continuation, the whole string and the
//! context are encoded, and the continuation's tokens are the whole encoding past the
//! context's length. Matching this matters: encoding the continuation on its own gives other
//! tokens at the boundary (a leading space merges differently) and so other log-likelihoods.

use lmq_runtime::tokenizer::{Tokenizer, TokenizerError};

/// Token ids of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

impl Encoded {
    /// What the model reads: context + continuation without its last token.
    pub fn input(&self) -> Vec<u32> {
        let mut v = self.context.clone();
        v.extend_from_slice(&self.continuation[..self.continuation.len().saturating_sub(1)]);
        v
    }

    /// Tokens the model reads (`context + continuation − 1`).
    pub fn input_len(&self) -> usize {
        self.context.len() + self.continuation.len().saturating_sub(1)
    }
}

/// lm-eval's `_encode_pair(context, continuation)` (no special tokens, as lm-eval's HF model
/// encodes when `add_bos_token` is off, its default).
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<Encoded, TokenizerError> {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tokenizer.encode(&format!("{trimmed}{continuation}"), false)?;
    let context = tokenizer.encode(trimmed, false)?;
    let continuation = whole.get(context.len()..).unwrap_or_default().to_vec();
    Ok(Encoded {
        context,
        continuation,
    })
}
