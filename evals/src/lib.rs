//! Evaluations over the runtime: perplexity (GPTQ protocol) and zero-shot tasks scored the
//! lm-evaluation-harness way.

pub mod nll;
pub mod perplexity;
pub mod report;
pub mod text;
pub mod zeroshot;
