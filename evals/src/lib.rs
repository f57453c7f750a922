//! Evaluations over the runtime: perplexity (GPTQ protocol, or lm-eval's word/byte
//! perplexity) and zero-shot tasks scored the lm-evaluation-harness way.

pub mod nll;
pub mod perplexity;
pub mod report;
pub mod rolling;
pub mod text;
pub mod wikitext;
pub mod zeroshot;
