//! Evaluations over the runtime: perplexity (GPTQ protocol) now, zero-shot tasks next.

pub mod nll;
pub mod perplexity;
pub mod text;
